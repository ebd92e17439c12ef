//! The mail transport: changes go out over SMTP as attachments and come in over IMAP.
//!
//! Receiving never touches mail that is not ours: headers are fetched with `BODY.PEEK` and only
//! messages carrying the `Minisync-Version` header are downloaded, merged and moved to the processed
//! (or quarantine) folder. The IMAP cursor (UIDVALIDITY + next UID) is kept in the agent's database;
//! it never moves past agent mail that has not been moved away yet, so a crash re-reads it (and the
//! agent's Message-ID table makes the second reading harmless).

pub mod envelope;
pub mod imap;
pub mod net;
pub mod smtp;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_imap::extensions::idle::IdleResponse;
use async_imap::types::UnsolicitedResponse;

use crate::config::Account;
use crate::store::Store;
use crate::transport::{
    Arrival, Delivery, Outgoing, Route, SendError, Settle, Transport, TransportError,
};

/// IMAP connection state, reused between passes.
#[derive(Default)]
struct ImapState {
    session: Option<imap::ImapSession>,
    has_idle: bool,
    has_move: bool,
    has_within: bool,
    has_uidplus: bool,
    folders_ready: bool,
    /// (UIDVALIDITY, UID) of messages the server failed to read; skipped until the agent restarts.
    unreadable: HashSet<(u32, u32)>,
    /// The server announced new mail while we read replies ourselves (see `imap::search`).
    news: bool,
}

/// Messages fetched per command.
const FETCH_BATCH: usize = 200;

/// Mail over one account.
pub struct MailTransport {
    account: Account,
    poll: Duration,
    /// Checks for news while IDLE waits (see [`crate::config::IdleCheck`]).
    idle_check: Option<Duration>,
    smtp: smtp::Smtp,
    imap: tokio::sync::Mutex<ImapState>,
    cursors: Mutex<Store>,
}

fn err(e: impl std::fmt::Display) -> TransportError {
    TransportError(e.to_string())
}

impl MailTransport {
    /// Sets up SMTP (resolving its password now) and the IMAP cursor store; IMAP connects lazily.
    pub fn new(
        account: Account,
        poll: Duration,
        database: &Path,
    ) -> Result<Self, crate::agent::AgentError> {
        let smtp = smtp::Smtp::new(&account.smtp, &account.address)
            .map_err(crate::agent::AgentError::Other)?;
        let idle_check = account.imap.idle_check_interval();
        if let Some(every) = idle_check {
            tracing::info!(host = %account.imap.host, ?every, "checking for news while IDLE waits");
        }
        Ok(MailTransport {
            poll,
            idle_check,
            smtp,
            imap: tokio::sync::Mutex::new(ImapState::default()),
            cursors: Mutex::new(Store::open(database)?),
            account,
        })
    }

    /// Runs one IMAP exchange, giving up after the configured timeout: a connection that died
    /// without a word (a laptop asleep, a NAT that forgot it) would otherwise hang the agent. The
    /// caller drops the connection on the error and the next pass reconnects.
    async fn step<T, E: std::fmt::Display>(
        &self,
        what: &str,
        work: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, TransportError> {
        let limit = self.account.imap.timeout;
        match tokio::time::timeout(limit, work).await {
            Ok(r) => r.map_err(err),
            Err(_) => Err(err(format!(
                "IMAP {what}: no answer from {} within {limit:?}",
                self.account.imap.host
            ))),
        }
    }

    /// Connects (if needed) and selects the watched mailbox; returns (UIDVALIDITY, UIDNEXT).
    async fn ready(&self, st: &mut ImapState) -> Result<(u32, u32), TransportError> {
        self.step("connect and select", self.ready_inner(st)).await
    }

    async fn ready_inner(&self, st: &mut ImapState) -> Result<(u32, u32), TransportError> {
        if st.session.is_none() {
            let mut s = imap::connect(&self.account.imap, &self.account.address)
                .await
                .map_err(err)?;
            let caps = s.capabilities().await.map_err(err)?;
            st.has_idle = caps.has_str("IDLE");
            st.has_move = caps.has_str("MOVE");
            st.has_within = caps.has_str("WITHIN");
            st.has_uidplus = caps.has_str("UIDPLUS");
            st.folders_ready = false;
            // Mail that came while we were not connected is counted in the SELECT reply below, not
            // announced: the next wait must look before it idles.
            st.news = true;
            tracing::info!(host = %self.account.imap.host, idle = st.has_idle, r#move = st.has_move, "IMAP connected");
            st.session = Some(s);
        }
        let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
        // What the server announced before this SELECT, the SELECT and the search after it cover.
        // Emptying the channel now keeps it from filling up (async-imap drops what does not fit).
        while session.unsolicited_responses.try_recv().is_ok() {}
        let mb = session
            .select(&self.account.imap.mailbox)
            .await
            .map_err(err)?;
        Ok((mb.uid_validity.unwrap_or(0), mb.uid_next.unwrap_or(1)))
    }

    async fn receive_inner(
        &self,
        st: &mut ImapState,
        routes: &[Route],
    ) -> Result<Vec<Arrival>, TransportError> {
        let (validity, uid_next) = self.ready(st).await?;
        let mailbox = &self.account.imap.mailbox;
        let cursor = self
            .cursors
            .lock()
            .map_err(|_| err("cursor store poisoned"))?
            .cursor(mailbox)
            .map_err(err)?;
        let from = match cursor {
            Some((v, n)) if v == validity && n <= uid_next => n,
            Some((v, _)) if v != validity => {
                tracing::info!(
                    mailbox,
                    old = v,
                    new = validity,
                    "UIDVALIDITY changed: rescanning (processed mail is recognised by Message-ID)"
                );
                1
            }
            Some(_) => {
                tracing::info!(mailbox, "UIDNEXT went backwards: rescanning");
                1
            }
            None => 1,
        };
        let mut arrivals = Vec::new();
        let mut next = from;
        // Whether `from` may send changes for `doc`: if not, the attachment stays unopened.
        let accept = |from: &str, doc: &str| {
            routes
                .iter()
                .any(|r| r.name == doc && crate::config::find_address(&r.peers, from).is_some())
        };
        if from < uid_next {
            let (ours, limit) = self.agent_mail(st, validity, from, uid_next).await?;
            // The cursor stays on the first agent mail until it has been moved away.
            next = ours.first().map_or(limit, |first| limit.min(*first));
            for (uid, raw) in self
                .fetch_isolating(st, validity, &ours, imap::Part::Whole)
                .await?
            {
                arrivals.push(envelope::parse(uid.to_string(), &raw, accept));
            }
        }
        self.cursors
            .lock()
            .map_err(|_| err("cursor store poisoned"))?
            .set_cursor(mailbox, validity, next)
            .map_err(err)?;
        Ok(arrivals)
    }

    /// UIDs of agent mail from `from` on, and where the cursor may go at most. The server finds
    /// agent mail (SEARCH on our header) unless it cannot, which happens when it fails to read one
    /// message in the range; then headers are fetched and read here, with
    /// [`Self::fetch_isolating`] setting the unreadable one aside. A header that did not come back
    /// for another reason holds the cursor before it, so that it is looked at again next pass.
    async fn agent_mail(
        &self,
        st: &mut ImapState,
        validity: u32,
        from: u32,
        uid_next: u32,
    ) -> Result<(Vec<u32>, u32), TransportError> {
        let mut limit = uid_next;
        let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
        let search = imap::search_header(session, from, envelope::VERSION_HEADER);
        let found = match self.step("search", search).await {
            Ok(found) => {
                st.news |= found.news;
                found.items
            }
            Err(e) => {
                tracing::warn!(error = %e, "the server cannot search the mailbox; reading headers here");
                self.reopen(st).await?;
                let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
                let all = self.step("search", imap::uids_from(session, from)).await?;
                st.news |= all.news;
                let all = all.items;
                let headers = self
                    .fetch_isolating(st, validity, &all, imap::Part::Header)
                    .await?;
                let got: HashSet<u32> = headers.iter().map(|(uid, _)| *uid).collect();
                if let Some(missing) = all
                    .iter()
                    .find(|uid| !got.contains(uid) && !st.unreadable.contains(&(validity, **uid)))
                {
                    limit = limit.min(*missing);
                }
                headers
                    .into_iter()
                    .filter(|(_, h)| envelope::is_agent_mail(h))
                    .map(|(uid, _)| uid)
                    .collect()
            }
        };
        let ours: Vec<u32> = found
            .into_iter()
            .filter(|uid| !st.unreadable.contains(&(validity, *uid)))
            .collect();
        Ok((ours, limit))
    }

    /// Fetches `part` of `uids` in batches. When a batch fails, its messages are fetched one at a
    /// time on a fresh connection (Dovecot drops the connection on a message it cannot read), so
    /// one broken message is logged, remembered and skipped instead of blocking every pass. If the
    /// server itself is unreachable, reconnecting fails and the error is returned as usual.
    async fn fetch_isolating(
        &self,
        st: &mut ImapState,
        validity: u32,
        uids: &[u32],
        part: imap::Part,
    ) -> Result<Vec<(u32, Vec<u8>)>, TransportError> {
        let mut out = Vec::with_capacity(uids.len());
        for batch in uids.chunks(FETCH_BATCH) {
            let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
            match self.step("fetch", imap::fetch(session, batch, part)).await {
                Ok(got) => {
                    st.news |= got.news;
                    out.extend(got.items);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a fetch failed; retrying its messages one at a time")
                }
            }
            let mut broken = true;
            for &uid in batch {
                if broken {
                    self.reopen(st).await?;
                }
                let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
                match self.step("fetch", imap::fetch(session, &[uid], part)).await {
                    Ok(got) => {
                        st.news |= got.news;
                        out.extend(got.items);
                        broken = false;
                    }
                    Err(e) => {
                        tracing::warn!(uid, error = %e, "the server cannot read this message; it is skipped until the agent restarts");
                        st.unreadable.insert((validity, uid));
                        broken = true;
                    }
                }
            }
            if broken {
                self.reopen(st).await?;
            }
        }
        Ok(out)
    }

    /// Drops the connection and opens a new one on the watched mailbox.
    async fn reopen(&self, st: &mut ImapState) -> Result<(u32, u32), TransportError> {
        st.session = None;
        self.ready(st).await
    }

    /// Creates the processed and quarantine folders once per connection.
    async fn folders(&self, st: &mut ImapState) -> Result<(), TransportError> {
        if st.session.is_none() {
            self.ready_inner(st).await?;
        }
        if !st.folders_ready {
            let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
            imap::ensure_folder(session, &self.account.imap.processed_folder)
                .await
                .map_err(err)?;
            imap::ensure_folder(session, &self.account.imap.quarantine_folder)
                .await
                .map_err(err)?;
            st.folders_ready = true;
        }
        Ok(())
    }

    async fn settle_inner(
        &self,
        st: &mut ImapState,
        uid: u32,
        folder: &str,
    ) -> Result<(), TransportError> {
        self.folders(st).await?;
        let has_move = st.has_move;
        let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
        imap::move_message(session, uid, folder, has_move)
            .await
            .map_err(err)
    }

    /// Deletes processed agent mail older than `keep`, then selects the watched mailbox again.
    async fn tidy_inner(
        &self,
        st: &mut ImapState,
        keep: Duration,
    ) -> Result<usize, TransportError> {
        self.folders(st).await?;
        let (within, uidplus) = (st.has_within, st.has_uidplus);
        let session = st.session.as_mut().ok_or_else(|| err("no IMAP session"))?;
        let folder = &self.account.imap.processed_folder;
        session
            .select(folder)
            .await
            .map_err(|e| err(format!("cannot open {folder}: {e}")))?;
        let old = imap::older_than(session, envelope::VERSION_HEADER, keep, within)
            .await
            .map_err(err)?;
        if !old.is_empty() {
            imap::delete(session, &old, uidplus).await.map_err(err)?;
        }
        self.ready_inner(st).await?;
        // Mail that came meanwhile is counted in that SELECT's reply, not announced: look again.
        st.news = true;
        Ok(old.len())
    }

    /// One IDLE wait of at most `max`: whether it ended because there may be news (or a local
    /// edit interrupted it) rather than by running out of time.
    async fn idle(
        &self,
        st: &mut ImapState,
        max: Duration,
        interrupt: &tokio::sync::Notify,
    ) -> Result<bool, TransportError> {
        let mut session = st.session.take().ok_or_else(|| err("no IMAP session"))?;
        // Mail that arrived since the last fetch may have been announced already, and a server that
        // holds IDLE notifications back reports at once on NOOP: look first.
        self.step("NOOP", session.noop()).await?;
        // A full channel may have dropped an announcement (a pass that moved over a hundred
        // mails fills it with EXPUNGEs): then look rather than trust it.
        let mut news = std::mem::take(&mut st.news) || session.unsolicited_responses.is_full();
        while let Ok(r) = session.unsolicited_responses.try_recv() {
            news |= matches!(
                r,
                UnsolicitedResponse::Exists(_) | UnsolicitedResponse::Recent(_)
            );
        }
        if news {
            st.session = Some(session);
            return Ok(true);
        }
        let mut handle = session.idle();
        self.step("IDLE", handle.init()).await?;
        let result = {
            let (wait, stop) = handle.wait_with_timeout(max);
            tokio::pin!(wait);
            let mut stop = Some(stop);
            loop {
                tokio::select! {
                    r = &mut wait => break r,
                    // Dropping the stop source ends the IDLE wait cleanly; DONE follows below.
                    _ = interrupt.notified(), if stop.is_some() => { stop.take(); }
                }
            }
        };
        let session = self.step("DONE", handle.done()).await?;
        st.session = Some(session);
        result
            .map(|r| !matches!(r, IdleResponse::Timeout))
            .map_err(err)
    }

    /// Waits in IDLE until news, an interrupt or `max`; with an idle check, IDLE is ended and
    /// re-entered (after a NOOP) every check interval within that time.
    async fn idle_until(
        &self,
        st: &mut ImapState,
        max: Duration,
        interrupt: &tokio::sync::Notify,
    ) -> Result<(), TransportError> {
        let deadline = tokio::time::Instant::now() + max;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let step = self.idle_check.map_or(left, |every| every.min(left));
            if self.idle(st, step, interrupt).await? {
                return Ok(());
            }
        }
    }
}

#[async_trait::async_trait]
impl Transport for MailTransport {
    fn name(&self) -> &'static str {
        "mail"
    }

    fn delivery(&self) -> Delivery {
        Delivery::PerPeer
    }

    async fn send(&self, out: &Outgoing<'_>) -> Result<(), SendError> {
        let (env, raw) = envelope::build(out, &self.account.address, self.account.name.as_deref())
            .map_err(SendError::Permanent)?;
        self.smtp.send(&env, &raw).await
    }

    async fn receive(&self, routes: &[Route]) -> Result<Vec<Arrival>, TransportError> {
        let mut st = self.imap.lock().await;
        let r = self.receive_inner(&mut st, routes).await;
        if r.is_err() {
            st.session = None;
        }
        r
    }

    async fn settle(&self, arrival: &Arrival, how: &Settle) -> Result<(), TransportError> {
        let folder = match how {
            Settle::Processed => &self.account.imap.processed_folder,
            Settle::Quarantined(_) => &self.account.imap.quarantine_folder,
            Settle::Retry => return Ok(()),
        };
        let uid: u32 = arrival
            .key
            .parse()
            .map_err(|_| err(format!("bad IMAP UID {:?}", arrival.key)))?;
        let mut st = self.imap.lock().await;
        let r = self
            .step("move", self.settle_inner(&mut st, uid, folder))
            .await;
        if r.is_err() {
            st.session = None;
        }
        r
    }

    async fn tidy(&self) -> Result<usize, TransportError> {
        let Some(keep) = self.account.imap.keep_processed else {
            return Ok(0);
        };
        let mut st = self.imap.lock().await;
        let r = self.step("tidy", self.tidy_inner(&mut st, keep)).await;
        if r.is_err() {
            st.session = None;
        }
        r
    }

    async fn wait(
        &self,
        max: Duration,
        interrupt: &tokio::sync::Notify,
    ) -> Result<(), TransportError> {
        let mut st = self.imap.lock().await;
        if st.session.is_none()
            && let Err(e) = self.ready(&mut st).await
        {
            st.session = None;
            return Err(e);
        }
        if !st.has_idle {
            drop(st);
            tokio::select! {
                _ = tokio::time::sleep(max.min(self.poll)) => {}
                _ = interrupt.notified() => {}
            }
            return Ok(());
        }
        let r = self.idle_until(&mut st, max, interrupt).await;
        if r.is_err() {
            st.session = None;
        }
        r
    }
}

/// `agent check`: logs in to IMAP and SMTP and reports what works.
pub async fn check(account: &Account) -> Vec<(String, Result<String, String>)> {
    let mut out = Vec::new();
    let imap_result = async {
        let mut s = imap::connect(&account.imap, &account.address).await?;
        let caps = s.capabilities().await.map_err(|e| e.to_string())?;
        let mb = s
            .select(&account.imap.mailbox)
            .await
            .map_err(|e| format!("cannot open mailbox {}: {e}", account.imap.mailbox))?;
        let _ = s.logout().await;
        Ok(format!(
            "{}:{} logged in; {} has {} messages; IDLE {}, MOVE {}",
            account.imap.host,
            account.imap.port,
            account.imap.mailbox,
            mb.exists,
            if caps.has_str("IDLE") {
                "yes"
            } else {
                "no (polling)"
            },
            if caps.has_str("MOVE") {
                "yes"
            } else {
                "no (copy + expunge)"
            },
        ))
    }
    .await;
    out.push(("IMAP".to_string(), imap_result));
    out.push((
        "SMTP".to_string(),
        match smtp::Smtp::new(&account.smtp, &account.address) {
            Ok(smtp) => smtp.check().await,
            Err(e) => Err(e),
        },
    ));
    out
}
