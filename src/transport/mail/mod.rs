//! The mail transport: changes go out over SMTP as attachments and come in over IMAP.
//!
//! Receiving never touches mail that is not ours, and trusts no search answer for that: every
//! message past the cursor is listed (`UID FETCH n:* (UID FLAGS)`), its `Minisync-Version` header
//! read with `BODY.PEEK` (nothing is marked read), and only messages carrying it are downloaded,
//! merged and moved to the processed (or quarantine) folder. The IMAP cursor (UIDVALIDITY + next
//! UID) is kept in the agent's database; it never moves past agent mail that has not been moved
//! away yet, nor past a message whose header did not come back, so a crash or a wrong answer
//! re-reads it (and the agent's Message-ID table makes the second reading harmless). A command the
//! server refuses (`NO`, `BAD`) is an error, never an empty answer.

pub mod autocrypt;
pub mod envelope;
pub mod imap;
pub mod net;
pub mod openpgp;
mod sending;
pub mod setup;
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

use imap::{Caps, ImapSession};

/// One logged-in IMAP connection and what its server announced; dropped whole on any error, and
/// the next use connects afresh.
struct Conn {
    session: ImapSession,
    caps: Caps,
    /// The processed and quarantine folders exist (checked once per connection).
    folders_ready: bool,
}

/// IMAP state, reused between passes.
#[derive(Default)]
struct ImapState {
    conn: Option<Conn>,
    /// (UIDVALIDITY, UID) of messages the server failed to read; skipped until the agent restarts.
    unreadable: HashSet<(u32, u32)>,
    /// The server announced new mail while we read replies ourselves (see `imap::checked`).
    news: bool,
    /// IDLE failed to start this many times in a row (reset when it starts).
    idle_failures: u32,
    /// IDLE is announced but cannot be started: the agent polls instead until it restarts.
    idle_off: bool,
    /// The outer Message-ID of each agent mail read from the watched mailbox in this pass, by
    /// UID: recorded as handled when it is settled.
    inbox_ids: std::collections::HashMap<u32, String>,
    /// The processed folder's (UIDVALIDITY, UIDNEXT) when this device last looked at it: grown
    /// since, another device may have moved mail there that this one never saw in the inbox.
    processed_seen: Option<(u32, u32)>,
}

impl ImapState {
    fn conn(&mut self) -> Result<&mut Conn, TransportError> {
        self.conn.as_mut().ok_or_else(|| err("no IMAP session"))
    }
}

/// The watched mailbox as SELECT described it.
#[derive(Debug, Clone, Copy)]
struct Selected {
    validity: u32,
    /// None when the server did not say (some do not): then every pass lists from the cursor on.
    uid_next: Option<u32>,
}

/// Messages fetched per command.
const FETCH_BATCH: usize = 200;

/// IDLE that fails to start this many times in a row, each time on a fresh connection, is taken
/// for refused (async-imap cannot tell a `BAD` from a closed connection there): the agent polls.
const IDLE_TRIES: u32 = 3;

/// Mail over one account.
pub struct MailTransport {
    account: Account,
    poll: Duration,
    /// Checks for news while IDLE waits (see [`crate::config::IdleCheck`]).
    idle_check: Option<Duration>,
    smtp: smtp::Smtp,
    /// The account's OpenPGP key: signs and decrypts every agent mail.
    key: openpgp::SecretKey,
    imap: tokio::sync::Mutex<ImapState>,
    cursors: Mutex<Store>,
}

fn err(e: impl std::fmt::Display) -> TransportError {
    TransportError(e.to_string())
}

impl MailTransport {
    /// Sets up SMTP (resolving its password now) and the IMAP cursor store; IMAP connects lazily.
    /// `key` is the account's OpenPGP key.
    ///
    /// # Errors
    ///
    /// The SMTP password cannot be resolved, or the database cannot be opened.
    pub fn new(
        account: Account,
        poll: Duration,
        database: &Path,
        key: openpgp::SecretKey,
    ) -> Result<Self, TransportError> {
        let smtp = smtp::Smtp::new(&account.smtp, &account.address).map_err(err)?;
        let idle_check = account.imap.idle_check_interval();
        if let Some(every) = idle_check {
            tracing::info!(host = %account.imap.host, ?every, "checking for news while IDLE waits");
        }
        let cursors = Store::open(database).map_err(|e| err(format!("IMAP cursors: {e}")))?;
        Ok(MailTransport {
            poll,
            idle_check,
            smtp,
            key,
            imap: tokio::sync::Mutex::new(ImapState::default()),
            cursors: Mutex::new(cursors),
            account,
        })
    }

    /// Who signs what this transport sends, from which device.
    fn sender<'a>(&'a self, device: &'a crate::transport::DeviceTag) -> envelope::Sender<'a> {
        envelope::Sender {
            address: &self.account.address,
            name: self.account.name.as_deref(),
            key: &self.key,
            device,
        }
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

    /// Connects (if needed) and selects the watched mailbox.
    async fn ready(&self, st: &mut ImapState) -> Result<Selected, TransportError> {
        self.step("connect and select", self.ready_inner(st)).await
    }

    async fn ready_inner(&self, st: &mut ImapState) -> Result<Selected, TransportError> {
        if st.conn.is_none() {
            let mut session = imap::connect(&self.account.imap, &self.account.address)
                .await
                .map_err(err)?;
            let caps = Caps::of(&mut session).await.map_err(err)?;
            // Mail that came while we were not connected is counted in the SELECT reply below, not
            // announced: the next wait must look before it idles.
            st.news = true;
            tracing::info!(host = %self.account.imap.host, idle = caps.idle, r#move = caps.r#move, uidplus = caps.uidplus, "IMAP connected");
            st.conn = Some(Conn {
                session,
                caps,
                folders_ready: false,
            });
        }
        let session = &mut st.conn()?.session;
        // What the server announced before this SELECT, the SELECT and the listing after it cover.
        // Emptying the channel now keeps it from filling up (async-imap drops what does not fit).
        while session.unsolicited_responses.try_recv().is_ok() {}
        let mailbox = &self.account.imap.mailbox;
        let mb = session
            .select(mailbox)
            .await
            .map_err(|e| err(format!("SELECT {mailbox}: {e}")))?;
        let validity = match mb.uid_validity {
            Some(v) => v,
            None => session
                .status(mailbox, "(UIDVALIDITY)")
                .await
                .map_err(|e| err(format!("STATUS {mailbox} (UIDVALIDITY): {e}")))?
                .uid_validity
                .ok_or_else(|| {
                    err(format!(
                        "{mailbox}: the server gives no UIDVALIDITY (neither in SELECT nor in \
                         STATUS), so the agent cannot tell whether the UIDs it remembers still \
                         mean the same messages"
                    ))
                })?,
        };
        Ok(Selected {
            validity,
            uid_next: mb.uid_next,
        })
    }

    /// The first UID to look at: the stored cursor, unless the mailbox was rebuilt since.
    fn start(&self, sel: Selected) -> Result<u32, TransportError> {
        let mailbox = &self.account.imap.mailbox;
        let cursor = self
            .cursors
            .lock()
            .map_err(|_| err("cursor store poisoned"))?
            .cursor(mailbox)
            .map_err(err)?;
        Ok(match cursor {
            Some((v, n)) if v == sel.validity && sel.uid_next.is_none_or(|next| n <= next) => n,
            Some((v, _)) if v != sel.validity => {
                tracing::info!(
                    mailbox,
                    old = v,
                    new = sel.validity,
                    "UIDVALIDITY changed: rescanning (processed mail is recognised by Message-ID)"
                );
                1
            }
            Some(_) => {
                tracing::info!(mailbox, "UIDNEXT went backwards: rescanning");
                1
            }
            None => 1,
        })
    }

    async fn receive_inner(
        &self,
        st: &mut ImapState,
        routes: &[Route],
    ) -> Result<Vec<Arrival>, TransportError> {
        let sel = self.ready(st).await?;
        let from = self.start(sel)?;
        let mut arrivals = Vec::new();
        let mut next = from;
        // A stranger's mail is not decrypted; a peer's changes only for the documents it shares.
        let own = self.account.address.as_str();
        // The account's other devices write to its own address, about any document.
        let known = |from: &str| {
            from.eq_ignore_ascii_case(own)
                || routes
                    .iter()
                    .any(|r| crate::config::find_address(&r.peers, from).is_some())
        };
        let accept = |from: &str, doc: &str| {
            from.eq_ignore_ascii_case(own)
                || routes
                    .iter()
                    .any(|r| r.name == doc && crate::config::find_address(&r.peers, from).is_some())
        };
        let rx = envelope::Receiver {
            own,
            key: &self.key,
            known: &known,
            accept: &accept,
        };
        st.inbox_ids.clear();
        if sel.uid_next.is_none_or(|n| from < n) {
            let (ours, limit) = self.agent_mail(st, sel, from).await?;
            // The cursor stays on the first agent mail until it has been moved away.
            next = ours.first().map_or(limit, |first| limit.min(*first));
            for (uid, raw) in self
                .fetch_isolating(st, sel.validity, &ours, imap::Part::Whole)
                .await?
            {
                // Checked again on what was downloaded: only agent mail is ever settled.
                if envelope::is_agent_mail(&raw) {
                    arrivals.push(envelope::parse(uid.to_string(), &raw, &rx));
                } else {
                    tracing::warn!(
                        uid,
                        "the server sent another message than it announced; left alone"
                    );
                }
            }
        }
        self.cursors
            .lock()
            .map_err(|_| err("cursor store poisoned"))?
            .set_cursor(&self.account.imap.mailbox, sel.validity, next)
            .map_err(err)?;
        let result = self.receive_processed(st, &rx).await;
        // Back on the watched mailbox; mail that came in the meantime is counted in this SELECT's
        // reply, not announced: look again before waiting.
        let again = self.ready_inner(st).await?;
        if again.uid_next != sel.uid_next {
            st.news = true;
        }
        arrivals.extend(result?);
        Ok(arrivals)
    }

    /// The name under which the cursor on the processed folder is kept.
    fn processed_cursor(&self) -> String {
        format!("processed:{}", self.account.imap.processed_folder)
    }

    /// Whether the processed folder grew since this device last looked at it (`seen`, updated;
    /// `STATUS (UIDNEXT UIDVALIDITY)`): mail another device moved away, or this device's own
    /// (skipped when read). A server that does not say is never taken for news.
    async fn processed_grew(
        &self,
        session: &mut ImapSession,
        seen: &mut Option<(u32, u32)>,
    ) -> Result<bool, TransportError> {
        let folder = &self.account.imap.processed_folder;
        let status = self
            .step("STATUS", session.status(folder, "(UIDNEXT UIDVALIDITY)"))
            .await?;
        let (Some(validity), Some(next)) = (status.uid_validity, status.uid_next) else {
            return Ok(false);
        };
        let grew = seen.is_some_and(|s| s != (validity, next));
        *seen = Some((validity, next));
        Ok(grew)
    }

    /// Agent mail the account's other devices moved to the processed folder since this device
    /// last looked there (its own cursor on that folder), except what this device settled
    /// itself: every device reads every agent mail, whichever device moved it out of the inbox.
    /// On first contact (and when the folder was rebuilt) it reads the folder from its start:
    /// what was merged already is recognised by Message-ID. Leaves the processed folder selected.
    async fn receive_processed(
        &self,
        st: &mut ImapState,
        rx: &envelope::Receiver<'_>,
    ) -> Result<Vec<Arrival>, TransportError> {
        self.folders(st).await?;
        let folder = &self.account.imap.processed_folder;
        let session = &mut st.conn()?.session;
        let mb = session
            .select(folder)
            .await
            .map_err(|e| err(format!("SELECT {folder}: {e}")))?;
        let Some(validity) = mb.uid_validity else {
            return Err(err(format!(
                "{folder}: the server gives no UIDVALIDITY, so the agent cannot keep its place there"
            )));
        };
        let uid_next = mb.uid_next;
        if let Some(next) = uid_next {
            st.processed_seen = Some((validity, next));
        }
        let name = self.processed_cursor();
        let cursor = self.with_store(|s| s.cursor(&name))?;
        let from = match cursor {
            Some((v, n)) if v == validity && uid_next.is_none_or(|next| n <= next) => n,
            _ => 1,
        };
        let (arrivals, next) = self.read_processed(st, from, rx).await?;
        self.with_store(|s| s.set_cursor(&name, validity, next))?;
        Ok(arrivals)
    }

    /// Reads the selected processed folder from `from` on: the arrivals not settled here yet,
    /// and where the cursor goes (before the first message whose header did not come back).
    async fn read_processed(
        &self,
        st: &mut ImapState,
        from: u32,
        rx: &envelope::Receiver<'_>,
    ) -> Result<(Vec<Arrival>, u32), TransportError> {
        let session = &mut st.conn()?.session;
        let listed = self.step("list", imap::list(session, from)).await?;
        let candidates: Vec<u32> = listed
            .items
            .iter()
            .filter(|(_, deleted)| !deleted)
            .map(|(uid, _)| *uid)
            .collect();
        let mut next = listed.items.last().map_or(from, |(uid, _)| uid + 1);
        let mut wanted = Vec::new();
        for batch in candidates.chunks(FETCH_BATCH) {
            let got = self
                .step("fetch", imap::fetch(session, batch, imap::Part::Marker))
                .await?;
            if let Some(missing) = batch
                .iter()
                .find(|u| !got.items.iter().any(|(g, _)| g == *u))
            {
                next = next.min(*missing);
            }
            for (uid, head) in got.items {
                let mine = envelope::outer_id(&head)
                    .map(|id| self.with_store(|s| s.handled(&id)))
                    .transpose()?
                    .unwrap_or(false);
                if envelope::is_agent_mail(&head) && !mine && uid < next {
                    wanted.push(uid);
                }
            }
        }
        let mut arrivals = Vec::new();
        for batch in wanted.chunks(FETCH_BATCH) {
            let got = self
                .step("fetch", imap::fetch(session, batch, imap::Part::Whole))
                .await?;
            for (uid, raw) in got.items {
                if envelope::is_agent_mail(&raw) {
                    arrivals.push(envelope::parse(format!("p{uid}"), &raw, rx));
                }
            }
        }
        Ok((arrivals, next))
    }

    /// Runs `f` on the agent's store (cursors, handled mail, this device).
    fn with_store<T>(
        &self,
        f: impl FnOnce(&Store) -> crate::store::Result<T>,
    ) -> Result<T, TransportError> {
        let store = self
            .cursors
            .lock()
            .map_err(|_| err("cursor store poisoned"))?;
        f(&store).map_err(err)
    }

    /// The sending device's tag: this device and the removed devices of the account.
    /// Whether this device knows of other devices of its account.
    fn has_siblings(&self) -> Result<bool, TransportError> {
        self.with_store(|s| {
            let me = s.this_device()?;
            s.knows_siblings(&self.account.address, &me.id)
        })
    }

    fn device_tag(&self) -> Result<crate::transport::DeviceTag, String> {
        self.with_store(|s| {
            let me = s.this_device()?;
            Ok(crate::transport::DeviceTag {
                id: me.id,
                name: Some(me.name),
                retired: s.retired(&self.account.address)?,
            })
        })
        .map_err(|e| e.0)
    }

    /// UIDs of agent mail from `from` on, and where the cursor may go at most. Every message
    /// listed from `from` on has its `Minisync-Version` header read here; no search answer is
    /// taken on trust (a server that ignores the empty value of `HEADER Minisync-Version ""`
    /// answers with every message). Messages flagged `\Deleted` are skipped: the agent's own
    /// already copied away on a server without MOVE, or the user's on their way out. A header that
    /// did not come back holds the cursor before it, so that it is looked at again next pass; one
    /// the server cannot read is set aside by [`Self::fetch_isolating`].
    async fn agent_mail(
        &self,
        st: &mut ImapState,
        sel: Selected,
        from: u32,
    ) -> Result<(Vec<u32>, u32), TransportError> {
        let session = &mut st.conn()?.session;
        let listed = self.step("list", imap::list(session, from)).await?;
        st.news |= listed.news;
        let highest = listed
            .items
            .last()
            .map_or(from, |(uid, _)| uid.saturating_add(1));
        let mut limit = sel.uid_next.map_or(highest, |n| n.max(highest));
        let candidates: Vec<u32> = listed
            .items
            .iter()
            .filter(|(uid, deleted)| !deleted && !st.unreadable.contains(&(sel.validity, *uid)))
            .map(|(uid, _)| *uid)
            .collect();
        let headers = self
            .fetch_isolating(st, sel.validity, &candidates, imap::Part::Marker)
            .await?;
        let got: HashSet<u32> = headers.iter().map(|(uid, _)| *uid).collect();
        if let Some(missing) = candidates
            .iter()
            .find(|uid| !got.contains(uid) && !st.unreadable.contains(&(sel.validity, **uid)))
        {
            limit = limit.min(*missing);
        }
        let mut ours = Vec::new();
        for (uid, h) in headers {
            if envelope::is_agent_mail(&h) {
                if let Some(id) = envelope::outer_id(&h) {
                    st.inbox_ids.insert(uid, id);
                }
                ours.push(uid);
            }
        }
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
            let session = &mut st.conn()?.session;
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
                let session = &mut st.conn()?.session;
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
    async fn reopen(&self, st: &mut ImapState) -> Result<Selected, TransportError> {
        st.conn = None;
        self.ready(st).await
    }

    /// Creates the processed and quarantine folders once per connection.
    async fn folders(&self, st: &mut ImapState) -> Result<(), TransportError> {
        if st.conn.is_none() {
            self.ready_inner(st).await?;
        }
        let conn = st.conn()?;
        if !conn.folders_ready {
            for folder in [
                &self.account.imap.processed_folder,
                &self.account.imap.quarantine_folder,
            ] {
                imap::ensure_folder(&mut conn.session, folder)
                    .await
                    .map_err(err)?;
            }
            conn.folders_ready = true;
        }
        Ok(())
    }

    /// Moves a settled message from the watched mailbox to the processed folder, where the
    /// account's other devices read it too; a refused one is first copied to the quarantine
    /// folder for the user to look at (another device may take it after all).
    async fn settle_inner(
        &self,
        st: &mut ImapState,
        uid: u32,
        quarantine: bool,
    ) -> Result<(), TransportError> {
        self.folders(st).await?;
        let conn = st.conn()?;
        let mut news = false;
        if quarantine {
            let folder = &self.account.imap.quarantine_folder;
            match imap::copy_message(&mut conn.session, uid, folder).await {
                Ok(n) => news |= n,
                Err(e) if gone(conn, uid).await? => {
                    taken(uid, &e);
                    return Ok(());
                }
                Err(e) => return Err(err(e)),
            }
        }
        let folder = &self.account.imap.processed_folder;
        match imap::move_message(&mut conn.session, uid, folder, conn.caps).await {
            Ok(n) => news |= n,
            Err(e) if gone(conn, uid).await? => taken(uid, &e),
            Err(e) => return Err(err(e)),
        }
        // Mail that came while this one was moved is announced in the MOVE's reply, once.
        st.news |= news;
        Ok(())
    }

    /// Settles a message read from the processed folder: it stays there; one to be read again
    /// holds this device's cursor on the folder before it.
    fn settle_processed(&self, uid: &str, how: &Settle) -> Result<(), TransportError> {
        let uid: u32 = uid
            .parse()
            .map_err(|_| err(format!("bad IMAP UID p{uid:?}")))?;
        if *how != Settle::Retry {
            return Ok(());
        }
        let name = self.processed_cursor();
        self.with_store(|s| {
            if let Some((v, n)) = s.cursor(&name)? {
                s.set_cursor(&name, v, n.min(uid))?;
            }
            Ok(())
        })
    }

    /// Deletes processed agent mail older than `keep` (only messages whose header the agent read
    /// itself), then selects the watched mailbox again.
    async fn tidy_inner(
        &self,
        st: &mut ImapState,
        keep: Duration,
    ) -> Result<usize, TransportError> {
        self.folders(st).await?;
        let conn = st.conn()?;
        let folder = &self.account.imap.processed_folder;
        conn.session
            .select(folder)
            .await
            .map_err(|e| err(format!("cannot open {folder}: {e}")))?;
        let old = imap::older_than(&mut conn.session, keep, conn.caps.within)
            .await
            .map_err(err)?;
        if !old.is_empty() {
            imap::delete(&mut conn.session, &old, conn.caps.uidplus)
                .await
                .map_err(err)?;
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
        let Conn {
            mut session,
            caps,
            folders_ready,
        } = st.conn.take().ok_or_else(|| err("no IMAP session"))?;
        let keep = |session| Conn {
            session,
            caps,
            folders_ready,
        };
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
        // Mail that another device of the account moved to the processed folder before this one
        // saw it in the inbox was announced here, if at all, while this session was busy
        // elsewhere: the folder having grown since this device looked is news too. Only another
        // device can do that: a device alone on its account does not ask.
        if !news && folders_ready && self.has_siblings()? {
            news = self
                .processed_grew(&mut session, &mut st.processed_seen)
                .await?;
        }
        if news {
            st.conn = Some(keep(session));
            return Ok(true);
        }
        let mut handle = session.idle();
        if let Err(e) = self.step("IDLE", handle.init()).await {
            st.idle_failures += 1;
            if st.idle_failures >= IDLE_TRIES {
                st.idle_off = true;
                tracing::warn!(error = %e, tries = st.idle_failures, "the server announces IDLE but does not start it; polling every poll-interval instead");
            }
            return Err(e);
        }
        st.idle_failures = 0;
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
        st.conn = Some(keep(session));
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
        self.send_changes(out).await
    }

    async fn hello(&self, peer: &str, message_id: &str, wants_key: bool) -> Result<(), SendError> {
        let device = self.device_tag().map_err(SendError::Temporary)?;
        let (env, raw) = envelope::build_hello(peer, message_id, wants_key, &self.sender(&device))
            .map_err(SendError::Permanent)?;
        self.smtp.send(&env, &raw).await.map_err(|f| f.error)
    }

    async fn receive(&self, routes: &[Route]) -> Result<Vec<Arrival>, TransportError> {
        let mut st = self.imap.lock().await;
        let r = self.receive_inner(&mut st, routes).await;
        if r.is_err() {
            st.conn = None;
        }
        r
    }

    async fn settle(&self, arrival: &Arrival, how: &Settle) -> Result<(), TransportError> {
        // Read again from the processed folder, where a sibling device moved it: nothing moves.
        if let Some(uid) = arrival.key.strip_prefix('p') {
            return self.settle_processed(uid, how);
        }
        let uid: u32 = arrival
            .key
            .parse()
            .map_err(|_| err(format!("bad IMAP UID {:?}", arrival.key)))?;
        if *how == Settle::Retry {
            return Ok(());
        }
        let mut st = self.imap.lock().await;
        let quarantine = matches!(how, Settle::Quarantined(_));
        let r = self
            .step("move", self.settle_inner(&mut st, uid, quarantine))
            .await;
        if r.is_err() {
            st.conn = None;
        } else if let Some(id) = st.inbox_ids.get(&uid) {
            self.with_store(|s| s.mark_handled(id))?;
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
            st.conn = None;
        }
        r
    }

    async fn wait(
        &self,
        max: Duration,
        interrupt: &tokio::sync::Notify,
    ) -> Result<(), TransportError> {
        let mut st = self.imap.lock().await;
        if st.conn.is_none()
            && let Err(e) = self.ready(&mut st).await
        {
            st.conn = None;
            return Err(e);
        }
        if st.idle_off || !st.conn.as_ref().is_some_and(|c| c.caps.idle) {
            drop(st);
            tokio::select! {
                _ = tokio::time::sleep(max.min(self.poll)) => {}
                _ = interrupt.notified() => {}
            }
            return Ok(());
        }
        let r = self.idle_until(&mut st, max, interrupt).await;
        if r.is_err() {
            st.conn = None;
        }
        r
    }
}

/// One finding of `agent check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// Works as the agent would have it.
    Ok(String),
    /// Missing or wrong on this server; says what the agent does instead.
    Instead(String),
    /// Does not work.
    Fail(String),
}

/// `agent check`: logs in to IMAP and SMTP and reports what works, and for each capability the
/// agent relies on, whether the server has it and what the agent does instead. Reads only: the
/// mailbox is opened with EXAMINE, and nothing is flagged, moved or created.
pub async fn check(
    account: &Account,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Vec<(String, Finding)> {
    let mut out = match check_imap(account, progress).await {
        Ok(lines) => lines,
        Err(e) => vec![("IMAP".to_string(), Finding::Fail(e))],
    };
    let smtp = match smtp::Smtp::new(&account.smtp, &account.address) {
        Ok(smtp) => smtp.check(progress).await,
        Err(e) => Err(e),
    };
    out.push((
        "SMTP".to_string(),
        smtp.map_or_else(Finding::Fail, Finding::Ok),
    ));
    out
}

async fn check_imap(
    account: &Account,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<Vec<(String, Finding)>, String> {
    let cfg = &account.imap;
    let mut s = imap::connect_showing(cfg, &account.address, progress).await?;
    let caps = Caps::of(&mut s).await?;
    let mb = s
        .examine(&cfg.mailbox)
        .await
        .map_err(|e| format!("cannot open mailbox {}: {e}", cfg.mailbox))?;
    let (search_right, search) = imap::check_header_search(&mut s).await?;
    let _ = s.logout().await;
    let line = |what: &str, yes: bool, instead: String| {
        let finding = if yes {
            Finding::Ok(instead)
        } else {
            Finding::Instead(instead)
        };
        (format!("IMAP {what}"), finding)
    };
    let has = |what: &str, yes: bool, instead: &str| {
        let text = if yes {
            "yes".to_string()
        } else {
            format!("no: {instead}")
        };
        line(what, yes, text)
    };
    let opened = format!(
        "{}:{} logged in; {} has {} messages",
        cfg.host, cfg.port, cfg.mailbox, mb.exists
    );
    Ok(vec![
        ("IMAP".to_string(), Finding::Ok(opened)),
        has("IDLE", caps.idle, "the agent polls every poll-interval"),
        has(
            "MOVE",
            caps.r#move,
            "the agent copies, flags \\Deleted and expunges; a flagged message is never copied again",
        ),
        has(
            "UIDPLUS",
            caps.uidplus,
            "the agent expunges with plain EXPUNGE, and only while every message flagged \\Deleted in the folder is agent mail",
        ),
        has(
            "UIDNEXT in SELECT",
            mb.uid_next.is_some(),
            "the agent lists every message from its cursor on (UID FETCH n:*)",
        ),
        line("header search", search_right, search),
    ])
}

/// Whether message `uid` is no longer in the selected mailbox: another device of the account
/// moved it to the processed folder first (a server answers a MOVE or COPY of it with `NO
/// [EXPUNGEISSUED]` or the like). Nothing is lost: every device reads that folder too.
async fn gone(conn: &mut Conn, uid: u32) -> Result<bool, TransportError> {
    let got = imap::fetch(&mut conn.session, &[uid], imap::Part::Marker)
        .await
        .map_err(err)?;
    Ok(got.items.is_empty())
}

/// Logs that another device took message `uid` first (what the server answered: `said`).
fn taken(uid: u32, said: &str) {
    tracing::debug!(uid, %said, "moved away by another device of the account meanwhile");
}
