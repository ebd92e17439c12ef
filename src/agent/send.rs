//! Sending: deciding what is due (new changes after the send delay, unacknowledged changes after
//! the resend interval), putting it in the outbox, and delivering the outbox with retries.
//! Shared media get a publication instead: a base rewritten when the latest file grows past 30 %
//! of it, and a latest file rewritten whenever the replica changed.

use crate::agent::health::{address_tag, bare_ack, outgoing};
use crate::agent::receive::Route;
use crate::agent::{Agent, PassReport, Result, backoff_delay, new_message_id};
use crate::engine::ClientId;
use crate::store::{OutItem, PeerChange, Published, Store, now_ms};
use crate::transport::{Delivery, Outgoing, SendError};

/// The latest file is folded into a new base once it passes this share of the base's size.
const REBASE_RATIO: f64 = 0.3;

/// The clients whose changes reach address `peer` (whose devices are `clients`) without us:
/// the address's own devices (each writes its own changes to its siblings through their
/// mailbox); for the own address, the devices of the document's peers (they write to it
/// themselves); for a peer, our sibling devices (each writes its own changes to every address it
/// shares the document with), every other replica known to share the document with that peer's
/// devices (the same), and those that said they write to the address (`writesTo`), even before
/// anyone heard from it. `reaching` is the document's [`Document::authors_reaching`] for
/// `clients`.
///
/// # Errors
///
/// A database error.
///
/// [`Document::authors_reaching`]: crate::engine::Document::authors_reaching
pub(super) fn delivered_to(
    conn: &rusqlite::Connection,
    (doc_id, reaching): (&str, Vec<ClientId>),
    route: &Route<'_>,
    peer: &str,
    clients: &[ClientId],
) -> crate::store::Result<Vec<ClientId>> {
    let mut delivered = clients.to_vec();
    let mut add = |more: Vec<ClientId>| {
        for c in more {
            if !delivered.contains(&c) {
                delivered.push(c);
            }
        }
    };
    if peer.eq_ignore_ascii_case(route.address) {
        for p in route.peers {
            add(Store::clients_of(conn, route.name, p)?);
        }
        return Ok(delivered);
    }
    add(Store::clients_of(conn, route.name, route.address)?);
    // A client's `writesTo` says exactly where it writes; the client table it lists (which may
    // hold clients it only heard of through others) counts only for a client that never sent one
    // (an older agent).
    let listing = Store::listing_writers(conn, route.name)?;
    add(reaching
        .into_iter()
        .filter(|c| !listing.contains(c))
        .collect());
    add(Store::writers_to(
        conn,
        route.name,
        &address_tag(doc_id, peer),
    )?);
    Ok(delivered)
}

/// Who a mail to one address is for, and whose changes reach that address without us.
struct Audience {
    /// The client ids of the devices behind the address (empty: send everything).
    clients: Vec<ClientId>,
    /// Clients that write to that address themselves.
    delivered: Vec<ClientId>,
}

/// When changes are due to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// After the document's send delay, so that edits made close together travel in one mail
    /// (`agent run`).
    Batched,
    /// Every change not sent yet, at once (`agent sync`: a one-shot command sends what is there).
    Pending,
    /// Everything the peer lacks, even if it was sent before and the resend is not due yet
    /// (`agent send`).
    Now,
}

impl Agent {
    /// Queues what is due for every peer of every document, and publishes shared documents.
    pub(super) async fn schedule(&mut self, report: &mut PassReport) -> Result<()> {
        for i in 0..self.docs.len() {
            let name = self.docs[i].cfg.name.clone();
            if !self.store.has_doc(&name)? {
                continue;
            }
            match self.transports[self.docs[i].transport].delivery() {
                Delivery::Shared => {
                    let rev = self.store.doc_rev(&name)?.unwrap_or(0);
                    match self.publish(i).await {
                        // Published: nothing waits to go out (else the service's next wake,
                        // the edit's time plus the send delay, stays in the past and it
                        // loops without a pause).
                        Ok(()) => self.store.clear_edited(&name, rev)?,
                        Err(e) => {
                            report.send_failures += 1;
                            report.errors.push(e.to_string());
                        }
                    }
                }
                Delivery::PerPeer => {
                    let rev = self.store.doc_rev(&name)?.unwrap_or(0);
                    let mut all_queued = true;
                    let targets = self.targets(i)?;
                    self.announce(i, &targets)?;
                    for peer in targets {
                        all_queued &= self.queue_for_peer(i, &peer, self.due)?;
                    }
                    if all_queued && self.store.edited_at(&name)?.is_some() {
                        self.store.clear_edited(&name, rev)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Where document `i`'s changes go: its peers' addresses, and the account's own address
    /// when other devices of the account hold the document or asked for it (one mail serves
    /// them all). A document no other device of the account has stays on this one.
    pub(super) fn targets(&self, i: usize) -> Result<Vec<String>> {
        let cfg = &self.docs[i].cfg;
        let mut out = cfg.peers.clone();
        if let Some(own) = self.cfg.account.as_ref().map(|a| a.address.clone()) {
            let me = self.store.this_device()?;
            let siblings = !Store::clients_of(self.store.conn(), &cfg.name, &own)?.is_empty()
                || !self.store.wanting(&cfg.name, &own, &me.id)?.is_empty();
            if siblings && !out.iter().any(|p| p.eq_ignore_ascii_case(&own)) {
                out.push(own);
            }
        }
        Ok(out)
    }

    /// Tells the account's other devices, once, that this device holds document `i`: an
    /// acknowledgement (no changes) to the own address, so that they record this replica and
    /// keep it in step directly, not only through the peers. Only for a document shared with
    /// peers (a device may have got it from them, unknown to its siblings) while this device
    /// knows it has siblings and does not write to the own address for it already; a document
    /// configured on this device alone is never announced.
    fn announce(&mut self, i: usize, targets: &[String]) -> Result<()> {
        let cfg = &self.docs[i].cfg;
        let Some(own) = self.cfg.account.as_ref().map(|a| a.address.clone()) else {
            return Ok(());
        };
        let name = cfg.name.clone();
        let me = self.store.this_device()?;
        if cfg.peers.is_empty()
            || targets.iter().any(|t| t.eq_ignore_ascii_case(&own))
            || self.store.announced(&name)?
            || !self.store.knows_siblings(&own, &me.id)?
        {
            return Ok(());
        }
        let peers = cfg.peers.clone();
        let (body, version) = self
            .store
            .read_doc(&name, |d| (bare_ack(d, &peers), d.version()))?;
        let item = OutItem {
            id: 0,
            doc: name.clone(),
            peer: own.clone(),
            message_id: new_message_id(&own),
            in_reply_to: None,
            body,
            ack_only: true,
            version,
            attempts: 0,
        };
        Store::enqueue(self.store.conn(), &item)?;
        Store::set_announced(self.store.conn(), &name)?;
        tracing::info!(doc = %name, "told the account's other devices that this one holds it");
        Ok(())
    }

    /// The client ids behind `peer` for document `name` (every device behind the address), and
    /// the clients whose changes reach `peer` without us (see [`delivered_to`]). An empty list
    /// of clients while a sibling asked for the whole document: everything is sent.
    fn audience(&mut self, name: &str, peer: &str, peers: &[String]) -> Result<Audience> {
        let own = self.cfg.address();
        let me = self.store.this_device()?;
        if peer.eq_ignore_ascii_case(own) && !self.store.wanting(name, own, &me.id)?.is_empty() {
            return Ok(Audience {
                clients: Vec::new(),
                delivered: Vec::new(),
            });
        }
        let clients = Store::clients_of(self.store.conn(), name, peer)?;
        let (doc_id, reaching) = self
            .store
            .read_doc(name, |d| (d.id().to_string(), d.authors_reaching(&clients)))?;
        let route = Route {
            name,
            address: own,
            peers,
        };
        let conn = self.store.conn();
        let delivered = delivered_to(conn, (&doc_id, reaching), &route, peer, &clients)?;
        Ok(Audience { clients, delivered })
    }

    /// Queues a changes mail for one address if one is due (see [`Due`]); false when the send
    /// delay is still running. Changes that only others made (a sibling's, which it writes to
    /// every address itself; a peer's, which reached the own address directly) are held back
    /// for the resend interval and go out only if the address still lacks them then: a change
    /// costs one mail per address, whatever the number of devices.
    pub(super) fn queue_for_peer(&mut self, i: usize, peer: &str, due: Due) -> Result<bool> {
        let cfg = self.docs[i].cfg.clone();
        let row = self.store.peer(&cfg.name, peer)?;
        // A sibling's request newer than our last mail to the own address is answered at once.
        let now = due == Due::Now || self.unanswered_want(&cfg.name, peer, row.last_sent_at)?;
        let version = self.store.read_doc(&cfg.name, |d| d.version())?;
        let t = now_ms();
        let resend = cfg.resend_interval.as_millis() as i64;
        let mut fresh = version > row.sent_version;
        if fresh
            && due == Due::Batched
            && let Some(edited) = self.store.edited_at(&cfg.name)?
            && t < edited + cfg.send_delay.as_millis() as i64
        {
            return Ok(false);
        }
        let audience = self.audience(&cfg.name, peer, &cfg.peers)?;
        if fresh && !now {
            let news = self.store.read_doc(&cfg.name, |d| {
                d.news_for_all(&audience.clients, &audience.delivered, row.sent_version)
            })?;
            let held = self.store.deferred_since(&cfg.name, peer)?;
            // An address never heard from lacks only what its authors said they write to it
            // themselves: their resends cover a lost mail, so it is not forwarded later either.
            let unheard = audience.clients.is_empty();
            if !news && (unheard || held.is_none_or(|since| t < since + resend)) {
                self.store.set_deferred(&cfg.name, peer, true)?;
                return Ok(true);
            }
            fresh = news || held.is_some();
        }
        // A resend recovers what the address lacks of ours (or what we forward); what its
        // authors write to it themselves, they resend.
        let resend_due = row.last_sent_at.is_some_and(|s| t >= s + resend)
            && self.store.pending_for(&cfg.name, peer)? == 0
            && self.store.read_doc(&cfg.name, |d| {
                d.news_for_all(&audience.clients, &audience.delivered, 0)
            })?;
        if !fresh && !resend_due && !now {
            return Ok(true);
        }
        self.store.set_deferred(&cfg.name, peer, false)?;
        let repair = self.store.health(&cfg.name, peer)?.repair;
        let (body, has) = self.store.read_doc(&cfg.name, |d| {
            // Everything the address lacks: this mail may be the forwarding of others'
            // changes held back until the resend interval.
            let ch = outgoing(d, (&audience.clients, &[]), repair, &cfg.peers);
            (ch.to_compact(), ch.has_changes())
        })?;
        if has {
            let item = OutItem {
                id: 0,
                doc: cfg.name.clone(),
                peer: peer.to_string(),
                message_id: new_message_id(self.cfg.address()),
                in_reply_to: None,
                body,
                ack_only: false,
                version,
                attempts: 0,
            };
            Store::enqueue(self.store.conn(), &item)?;
            tracing::debug!(doc = %cfg.name, %peer, version, resend = !fresh, "queued changes");
        }
        Store::touch_peer(
            self.store.conn(),
            &cfg.name,
            peer,
            PeerChange::Queued(version),
        )?;
        Ok(true)
    }

    /// Whether `peer` is the own address and a sibling asked for document `name` after this
    /// device last wrote there (`last_sent`): the request is answered with the next pass, even if
    /// the document did not change since (a device added later than the others).
    fn unanswered_want(&self, name: &str, peer: &str, last_sent: Option<i64>) -> Result<bool> {
        let own = self.cfg.address();
        if !peer.eq_ignore_ascii_case(own) {
            return Ok(false);
        }
        let me = self.store.this_device()?;
        for device in self.store.wanting(name, own, &me.id)? {
            if self
                .store
                .want(name, &device)?
                .is_some_and(|at| last_sent.is_none_or(|sent| at > sent))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Asks the account's other devices for the whole of every mail document configured here
    /// with no replica yet, when there are other devices (this one joined with a setup code,
    /// or others of the account were heard from); again after the document's resend interval
    /// while none has come. A lone device waits for its peers as before.
    pub(super) async fn send_wants(&mut self, report: &mut PassReport) -> Result<()> {
        let Some(own) = self.cfg.account.as_ref().map(|a| a.address.clone()) else {
            return Ok(());
        };
        let me = self.store.this_device()?;
        let Ok(device) = ClientId::parse(&me.id) else {
            return Ok(());
        };
        let own_key = self.own_public_key();
        for i in 0..self.docs.len() {
            let slot = &self.docs[i];
            let transport = self.transports[slot.transport].clone();
            let name = slot.cfg.name.clone();
            let every = slot.cfg.resend_interval.as_millis() as i64;
            if transport.delivery() != Delivery::PerPeer || self.store.has_doc(&name)? {
                continue;
            }
            let asked = self.store.want(&name, &me.id)?;
            let siblings = self.store.knows_siblings(&own, &me.id)?;
            if (asked.is_none() && !siblings) || asked.is_some_and(|at| now_ms() < at + every) {
                continue;
            }
            let mid = new_message_id(&own);
            let out = Outgoing {
                doc_name: &name,
                doc_id: "",
                client_id: device,
                peer: &own,
                message_id: &mid,
                in_reply_to: None,
                body: b"",
                ack_only: true,
                version: 0,
                base: None,
                base_version: 0,
                base_len: 0,
                peer_key: own_key.as_deref(),
                want: true,
            };
            match transport.send(&out).await {
                Ok(()) => {
                    Store::set_want(self.store.conn(), &name, &me.id, now_ms())?;
                    tracing::info!(doc = %name, "asked the account's other devices for the document");
                }
                Err(e) => {
                    report.send_failures += 1;
                    report
                        .errors
                        .push(format!("asking other devices for {name:?}: {e}"));
                }
            }
        }
        Ok(())
    }

    /// The account's public key (binary): mail to the own address is encrypted to it.
    pub(super) fn own_public_key(&self) -> Option<Vec<u8>> {
        self.account_key
            .as_ref()
            .and_then(|k| k.public().to_bytes().ok())
    }

    /// Delivers due outbox items (only those for `only_peer` when given).
    pub(super) async fn flush(
        &mut self,
        report: &mut PassReport,
        only_peer: Option<&str>,
    ) -> Result<()> {
        for item in self.store.due(now_ms())? {
            if only_peer.is_some_and(|p| !p.eq_ignore_ascii_case(&item.peer)) {
                continue;
            }
            let Some(slot) = self.docs.iter().find(|s| s.cfg.name == item.doc) else {
                self.store
                    .mark_failed(item.id, "document no longer in the config")?;
                continue;
            };
            let transport = self.transports[slot.transport].clone();
            // Content travels only encrypted: without the peer's key it waits (a hello asks).
            // The account's other devices hold the account's key.
            let peer_key = if item.peer.eq_ignore_ascii_case(self.cfg.address()) {
                self.own_public_key()
            } else {
                crate::agent::keys::usable_key(&self.cfg, &self.store.peer_key(&item.peer)?)
            };
            if peer_key.is_none() && transport.delivery() == Delivery::PerPeer {
                let note = format!(
                    "waiting for the OpenPGP key of {} (a hello asks for it)",
                    item.peer
                );
                let later = now_ms() + crate::agent::keys::HELLO_EVERY.as_millis() as i64;
                self.store.postpone(item.id, later, &note)?;
                tracing::info!(peer = %item.peer, "no key yet: the changes wait");
                continue;
            }
            let (doc_id, client) = self
                .store
                .read_doc(&item.doc, |d| (d.id().to_string(), d.client_id()))?;
            let out = Outgoing {
                doc_name: &item.doc,
                doc_id: &doc_id,
                client_id: client,
                peer: &item.peer,
                message_id: &item.message_id,
                in_reply_to: item.in_reply_to.as_deref(),
                body: &item.body,
                ack_only: item.ack_only,
                version: item.version,
                base: None,
                base_version: 0,
                base_len: 0,
                peer_key: peer_key.as_deref(),
                want: false,
            };
            let span = tracing::info_span!("send", doc = %item.doc, peer = %item.peer, message_id = %item.message_id);
            let _guard = span.enter();
            match transport.send(&out).await {
                Ok(()) => {
                    self.store.mark_sent(item.id)?;
                    self.store.set_account_failure(None)?;
                    Store::touch_peer(self.store.conn(), &item.doc, &item.peer, PeerChange::Sent)?;
                    tracing::info!(bytes = item.body.len(), ack_only = item.ack_only, "sent");
                    report.sent += 1;
                }
                Err(failure) => {
                    if self.record_failure(&item, &failure, report)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Records a send that did not go through: retried with backoff (a temporary failure, or a
    /// refused login — the account's problem, not the message's, so it is never given up), or
    /// given up (a permanent refusal). Returns whether to stop sending in this pass: after a
    /// refused login every other message would fail the same way.
    fn record_failure(
        &mut self,
        item: &OutItem,
        failure: &SendError,
        report: &mut PassReport,
    ) -> Result<bool> {
        let retry_at =
            || now_ms() + backoff_delay(item.attempts.saturating_add(2)).as_millis() as i64;
        let (error, failing, stop) = match failure {
            SendError::Temporary(e) => {
                self.store.mark_retry(item.id, e, retry_at())?;
                tracing::warn!(error = %e, attempt = item.attempts + 1, "send failed; will retry");
                (e, item.attempts >= 3, false)
            }
            SendError::Permanent(e) => {
                self.store.mark_failed(item.id, e)?;
                tracing::error!(error = %e, "send refused by the server");
                (e, true, false)
            }
            SendError::Account(e) => {
                // It waits, as do the others, until the account's settings are fixed (a changed
                // config makes the next start send at once: see `Agent::new`).
                self.store.mark_retry(item.id, e, retry_at())?;
                self.store.set_account_failure(Some(now_ms()))?;
                tracing::error!(error = %e, "the SMTP server refused our login");
                report.errors.push(e.clone());
                (e, true, true)
            }
        };
        let change = PeerChange::Failed {
            error: error.clone(),
            failing,
        };
        Store::touch_peer(self.store.conn(), &item.doc, &item.peer, change)?;
        report.send_failures += 1;
        Ok(stop)
    }

    /// Writes this replica's publication to a shared medium when it changed.
    async fn publish(&mut self, i: usize) -> Result<()> {
        let name = self.docs[i].cfg.name.clone();
        let transport = self.transports[self.docs[i].transport].clone();
        let previous = self.store.published(&name)?.unwrap_or_default();
        let fingerprint = self.store.read_doc(&name, |d| {
            let acks: Vec<String> = d
                .peers()
                .iter()
                .map(|(c, p)| format!("{c}={}", p.last_received))
                .collect();
            format!("{}|{}", d.version(), acks.join(","))
        })?;
        if fingerprint == previous.fingerprint {
            return Ok(());
        }
        let (doc_id, client, version, latest, base) = self.store.read_doc(&name, |d| {
            let latest = d.changes_since(previous.base_version).to_json_string();
            let rebase = previous.base_len == 0
                || latest.len() as f64 > REBASE_RATIO * previous.base_len as f64;
            if rebase {
                let base = d.changes().to_json_string();
                (
                    d.id().to_string(),
                    d.client_id(),
                    d.version(),
                    d.changes_since(d.version()).to_json_string(),
                    Some(base),
                )
            } else {
                (d.id().to_string(), d.client_id(), d.version(), latest, None)
            }
        })?;
        let (base_version, base_len) = match &base {
            Some(b) => (version, b.len() as u64),
            None => (previous.base_version, previous.base_len),
        };
        let out = Outgoing {
            doc_name: &name,
            doc_id: &doc_id,
            client_id: client,
            peer: "",
            message_id: "",
            in_reply_to: None,
            body: latest.as_bytes(),
            ack_only: false,
            version,
            base: base.as_deref().map(str::as_bytes),
            base_version,
            base_len,
            peer_key: None,
            want: false,
        };
        transport
            .send(&out)
            .await
            .map_err(|e| crate::agent::AgentError::Other(format!("publishing {name:?}: {e}")))?;
        tracing::info!(doc = %name, version, rebased = base.is_some(), bytes = latest.len(), "published");
        self.store.set_published(
            &name,
            &Published {
                base_version,
                base_len,
                fingerprint,
            },
        )?;
        Ok(())
    }
}
