//! Receiving: every arrival is admitted (known document, allowed sender or a sibling device of
//! the account, a device not removed, valid changes), merged and committed in one transaction together with its Message-ID and the
//! acknowledgement it calls for; only then is it moved out of the mailbox. A crash before the
//! commit leaves the mail to be read again; a crash after it finds the Message-ID already seen.
//! Refused mail is recorded (reason, sender, its changes) for `agent status` and `agent
//! quarantine`, where a person can merge it after all.

use std::collections::{BTreeMap, HashSet};

use crate::agent::health::{Findings, outgoing};
use crate::agent::{Agent, AgentError, PassReport, Result, new_message_id};
use crate::engine::{Changes, ClientId, Document, Envelope, RepairKind, compact};
use crate::store::{HealthChange, OutItem, PeerChange, Save, Store, health, now_ms};
use crate::transport::{Arrival, Delivery, DeviceTag, Sealed, Settle, Split};

/// Why an arrival was not merged.
pub(super) enum Refusal {
    /// Set aside for good (mail: moved to the quarantine folder).
    Quarantine(String),
    /// Read again next pass (a half-delivered shared folder).
    Retry(String),
}

/// An arrival that passed every check and waits to be merged with the others of its document.
struct Ready {
    /// Its place in the pass's arrivals.
    at: usize,
    doc: String,
    peer: String,
    sent_by: ClientId,
    changes: Vec<Changes>,
    message_id: Option<String>,
    wants_reply: bool,
    /// Read from a shared folder (no per-peer messages to answer with).
    shared: bool,
    /// Mail: the device of the sender's address that sent it.
    device: Option<DeviceTag>,
    /// Put together from a transfer of mail parts: (sender address, transfer id), dropped with
    /// the merge.
    transfer: Option<(String, String)>,
    /// The `writesTo` tags of the newest changes object (kept apart: the first one may have
    /// built the replica and left `changes`).
    writes_to: Vec<String>,
    /// When the sender says it sent it (see [`Arrival::sent_at`]).
    sent_at: Option<i64>,
}

/// Message-IDs that earlier arrivals of the same pass carry: a copy delivered twice is a
/// duplicate even before the first is committed.
#[derive(Default)]
struct PassMemory {
    message_ids: HashSet<String>,
    /// Arrivals left as deltas for a document not held yet: admitted again once an arrival of
    /// the same pass created the replica.
    waiting: Vec<usize>,
}

impl Agent {
    /// Receives everything waiting on one transport. Each arrival is admitted on its own; those
    /// that pass are merged per document in one transaction (one save of the replica per pass,
    /// not per mail), and only then moved out of the mailbox. Refused mail is recorded for
    /// `agent quarantine` and moved to the quarantine folder.
    pub(super) async fn receive_from(&mut self, ti: usize, report: &mut PassReport) -> Result<()> {
        let routes = self.routes(ti)?;
        if routes.is_empty() {
            return Ok(());
        }
        let transport = self.transports[ti].clone();
        let started = std::time::Instant::now();
        let arrivals = transport.receive(&routes).await?;
        if !arrivals.is_empty() {
            tracing::debug!(count = arrivals.len(), took = ?started.elapsed(), "fetched");
        }
        let spans = arrival_spans(transport.name(), &arrivals);
        let outcomes = self.take_in(ti, &arrivals, &spans, report);
        if !arrivals.is_empty() {
            tracing::debug!(took = ?started.elapsed(), "merged and committed");
        }
        for ((arrival, span), outcome) in arrivals.iter().zip(&spans).zip(outcomes) {
            let settle = match outcome {
                Ok(()) => Settle::Processed,
                Err(Refusal::Quarantine(reason)) => {
                    span.in_scope(|| tracing::warn!(%reason, "quarantined: not merged"));
                    report.quarantined += 1;
                    self.record_quarantine(arrival, &reason, report);
                    Settle::Quarantined(reason)
                }
                Err(Refusal::Retry(reason)) => {
                    span.in_scope(|| tracing::warn!(%reason, "not merged; will read again"));
                    report.deferred += 1;
                    Settle::Retry
                }
            };
            if let Err(e) = transport.settle(arrival, &settle).await {
                span.in_scope(|| tracing::warn!(error = %e, "could not move the message"));
                report.errors.push(e.to_string());
            }
        }
        if transport.delivery() == Delivery::PerPeer {
            self.take_in_transfers(ti, report)?;
        }
        Ok(())
    }

    /// Admits and merges arrivals of one transport: every check on each one, then the merge of
    /// those that passed, per document. Returns each arrival's outcome, in order.
    pub(super) fn take_in(
        &mut self,
        ti: usize,
        arrivals: &[Arrival],
        spans: &[tracing::Span],
        report: &mut PassReport,
    ) -> Vec<std::result::Result<(), Refusal>> {
        let mut outcomes: Vec<Option<std::result::Result<(), Refusal>>> =
            arrivals.iter().map(|_| None).collect();
        let mut ready = Vec::new();
        let mut memory = PassMemory::default();
        for (at, a) in arrivals.iter().enumerate() {
            self.alive(); // a long drain is progress, not a hang
            let admitted = spans[at].in_scope(|| self.admit(ti, at, a, &mut memory, report));
            match admitted {
                Ok(Some(r)) => ready.push(r),
                Ok(None) => outcomes[at] = Some(Ok(())),
                Err(refusal) => outcomes[at] = Some(Err(refusal)),
            }
        }
        for at in std::mem::take(&mut memory.waiting) {
            if !self.store.has_doc(&arrivals[at].doc).unwrap_or(false) {
                continue;
            }
            let admitted =
                spans[at].in_scope(|| self.admit(ti, at, &arrivals[at], &mut memory, report));
            match admitted {
                Ok(Some(r)) => ready.push(r),
                Ok(None) => outcomes[at] = Some(Ok(())),
                Err(refusal) => outcomes[at] = Some(Err(refusal)),
            }
        }
        let mut docs: Vec<String> = ready.iter().map(|r| r.doc.clone()).collect();
        docs.sort();
        docs.dedup();
        for doc in docs {
            let items: Vec<Ready> = ready.extract_if(.., |r| r.doc == doc).collect();
            for (at, outcome) in self.merge(&doc, items, spans, report) {
                outcomes[at] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(Refusal::Retry("internal: never judged".into()))))
            .collect()
    }

    /// Keeps the agent's record of a quarantined message (for status and `agent quarantine`).
    pub(super) fn record_quarantine(&mut self, a: &Arrival, reason: &str, report: &mut PassReport) {
        let payloads = a.payloads.as_ref().ok().map(Vec::as_slice);
        let mid = a.message_id.as_deref();
        let signer = a.sealed.as_ref().map(|s| s.fingerprint.as_str());
        let conn = self.store.conn();
        if let Err(e) = Store::quarantine(conn, &a.doc, &a.from, mid, reason, payloads, signer) {
            report
                .errors
                .push(format!("recording a quarantined message: {e}"));
        }
    }

    /// Whether quarantined message `id` can be released: its document is configured, its
    /// sender is a peer of it now, and it carries changes. Returns the document's slot, the
    /// peer's address and the client that sent the changes.
    fn releasable(
        &self,
        id: i64,
        q: &crate::store::Quarantined,
    ) -> Result<(usize, String, crate::engine::ClientId)> {
        if q.doc.is_empty() {
            return Err(crate::agent::keys::nothing_to_release(
                id, &q.reason, &q.sender,
            ));
        }
        let slot = self
            .docs
            .iter()
            .position(|d| d.cfg.name == q.doc)
            .ok_or_else(|| {
                AgentError::Other(format!(
                    "document {:?} is not in the config: add it first",
                    q.doc
                ))
            })?;
        let peer = self.docs[slot]
            .cfg
            .peer(&q.sender)
            .cloned()
            .ok_or_else(|| {
                AgentError::Other(format!(
                    "{} is not a peer of {:?}: add it to the document's peers in the config first",
                    q.sender, q.doc
                ))
            })?;
        let first = q.payloads.first().ok_or_else(|| {
            AgentError::Other(format!(
                "message #{id} carries no changes to merge ({}). A stranger's attachment is never \
                 opened: now that {} is a peer, its next resend brings the changes again (or ask \
                 for one: `agent send --to YOUR-ADDRESS` on its side); then `agent quarantine drop {id}`",
                q.reason, q.sender
            ))
        })?;
        let sent_by = Changes::parse(first)
            .map_err(|e| AgentError::Other(format!("message #{id}: {e}")))?
            .sent_by();
        Ok((slot, peer, sent_by))
    }

    /// Merges a quarantined message after all (`agent quarantine release`): it goes through every
    /// other check and the merge again (its sending client is recorded as a device of the sender).
    ///
    /// # Errors
    ///
    /// No such message, no readable changes in it, its document or sender not configured, or
    /// refused again (the record then carries the new reason).
    pub fn release(&mut self, id: i64) -> Result<String> {
        let q = self.store.quarantined_one(id)?.ok_or_else(|| {
            AgentError::Other(format!(
                "no quarantined message #{id} (see `agent quarantine list`)"
            ))
        })?;
        let (slot, peer, sent_by) = self.releasable(id, &q)?;
        Store::touch_peer(
            self.store.conn(),
            &q.doc,
            &peer,
            PeerChange::Pin(sent_by.to_string()),
        )?;
        let arrival = Arrival {
            key: format!("quarantine #{id}"),
            message_id: q.message_id.clone(),
            from: q.sender.clone(),
            doc: q.doc.clone(),
            in_reply_to: None,
            payloads: Ok(q.payloads.iter().map(|p| p.clone().into_bytes()).collect()),
            // Its signature verified when it came; the key must be the trusted one by now.
            sealed: q.signer.clone().map(|fingerprint| Sealed {
                fingerprint,
                key: Vec::new(),
                hello: None,
            }),
            device: None,
            want: false,
            split: crate::transport::Split::Whole,
            sent_at: None,
        };
        let ti = self.docs[slot].transport;
        let spans = arrival_spans("quarantine", std::slice::from_ref(&arrival));
        let mut report = PassReport::default();
        match self
            .take_in(ti, std::slice::from_ref(&arrival), &spans, &mut report)
            .pop()
        {
            Some(Ok(())) => {
                Store::unquarantine(self.store.conn(), id)?;
                Ok(format!(
                    "merged message #{id} from {} into {:?}",
                    q.sender, q.doc
                ))
            }
            Some(Err(Refusal::Quarantine(reason) | Refusal::Retry(reason))) => {
                Store::requarantine(self.store.conn(), id, &reason)?;
                Err(AgentError::Other(format!(
                    "message #{id} is still refused: {reason}"
                )))
            }
            None => Err(AgentError::Other(format!("message #{id} was not judged"))),
        }
    }

    /// Every check that needs no merge: not seen before, signed by the trusted key, not from a
    /// removed device, a configured document, a peer of it (or the account's own address: a
    /// sibling device), readable changes, the same document. A peer's first mail creates the
    /// replica (see `first_replica`). `Ok(None)`: nothing to merge (a duplicate, a hello, this
    /// device's own mail, a sibling's request or a document configured on another device only).
    fn admit(
        &mut self,
        ti: usize,
        at: usize,
        a: &Arrival,
        memory: &mut PassMemory,
        report: &mut PassReport,
    ) -> std::result::Result<Option<Ready>, Refusal> {
        let shared = self.transports[ti].delivery() == Delivery::Shared;
        let refuse = |msg: String| {
            if shared {
                Refusal::Retry(msg)
            } else {
                Refusal::Quarantine(msg)
            }
        };
        if let Some(mid) = &a.message_id
            && (memory.message_ids.contains(mid) || self.store.seen(mid).map_err(internal)?)
        {
            tracing::info!(message_id = %mid, "duplicate: already merged");
            report.duplicates += 1;
            return Ok(None);
        }
        if !shared && (self.signed_hello(a)? || self.device_done(a)?) {
            return Ok(None);
        }
        let Some((name, peer_key)) = self.addressee(ti, a, shared)? else {
            return Ok(None);
        };
        if let Split::Part(info) = &a.split {
            self.keep_part(a, info, &name)?;
            if let Some(mid) = &a.message_id {
                memory.message_ids.insert(mid.clone());
            }
            return Ok(None);
        }
        // A whole document for a replica not held here yet is made while its bytes are read.
        let new_whole = self.new_whole(&name, a)?;
        let mut changes = read_changes(a, shared, new_whole.as_ref()).map_err(refuse)?;
        let (sent_by, first_has_changes) = match (&new_whole, changes.first()) {
            (Some(e), _) => (e.sent_by, true),
            (None, Some(first)) => (first.sent_by(), first.has_changes()),
            (None, None) => return Err(refuse("no changes object in the message".into())),
        };
        let count = changes.len() + usize::from(new_whole.is_some());
        // Mail that carries changes is acknowledged by reply; a pure acknowledgement never is.
        let wants_reply = !shared && count == 1 && first_has_changes;
        if new_whole.is_none() && !shared && self.awaits_whole(&name, &changes[0])? {
            tracing::info!(
                "a delta for a document not held here yet: left (the whole document comes from a \
                 sibling device or the sender's next mail)"
            );
            memory.waiting.push(at);
            return Ok(None);
        }
        let writes_to = match (changes.last(), &new_whole) {
            (Some(c), _) => c.writes_to().to_vec(),
            (None, Some(e)) => e.writes_to.clone(),
            (None, None) => Vec::new(),
        };
        if new_whole.is_some() {
            self.replica_while_read(&name, a, refuse)?;
        } else if self.first_replica(&name, &peer_key, &changes, shared, refuse)? {
            changes.remove(0);
        }
        if let Some(mid) = &a.message_id {
            memory.message_ids.insert(mid.clone());
        }
        Ok(Some(Ready {
            at,
            doc: name,
            peer: peer_key,
            sent_by,
            changes,
            message_id: a.message_id.clone(),
            wants_reply,
            shared,
            device: a.device.clone(),
            transfer: match &a.split {
                Split::Assembled(id) => Some((a.from.clone(), id.clone())),
                Split::Whole | Split::Part(_) => None,
            },
            writes_to,
            sent_at: a.sent_at,
        }))
    }

    /// The device rules of a mail arrival, after its signature was checked: the removals it
    /// announces for its address are recorded; this device's own mail (read back from the own
    /// address) is done with; a removed device's mail is refused; a sibling's request for a
    /// whole document is recorded and done with. True when nothing more is to be done.
    fn device_done(&mut self, a: &Arrival) -> std::result::Result<bool, Refusal> {
        let Some(tag) = &a.device else {
            return Ok(false);
        };
        let me = self.store.this_device().map_err(internal)?;
        let own = a.from.eq_ignore_ascii_case(self.cfg.address());
        // A sibling may name this device: it learns that it was removed (and stops sending).
        let retired: Vec<String> = tag
            .retired
            .iter()
            .filter(|d| **d != tag.id)
            .cloned()
            .collect();
        let newly =
            Store::retire_devices(self.store.conn(), &a.from, &retired).map_err(internal)?;
        if newly > 0 {
            tracing::info!(address = %a.from, devices = ?retired, "devices removed by their owner");
            if own && retired.contains(&me.id) {
                tracing::warn!(by = %tag.id, "this device was removed from the account");
            }
        }
        if own && tag.id == me.id {
            tracing::debug!("our own mail to our address: nothing to merge");
            return Ok(true);
        }
        // Refused, but not quarantined: its owner removed it on purpose. `agent device list`
        // counts what it still sends (a lost device that still runs).
        if self.store.is_retired(&a.from, &tag.id).map_err(internal)? {
            Store::note_refused(self.store.conn(), &a.from, &tag.id).map_err(internal)?;
            tracing::warn!(device = %tag.id, address = %a.from, "mail of a removed device refused");
            return Ok(true);
        }
        if own {
            let heard = (tag.name.as_deref(), a.sent_at);
            Store::heard_of_device(self.store.conn(), &a.from, &tag.id, heard).map_err(internal)?;
        }
        if a.want {
            Store::set_want(self.store.conn(), &a.doc, &tag.id, now_ms()).map_err(internal)?;
            tracing::info!(device = %tag.id, doc = %a.doc, "a sibling device asks for the whole document");
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether a delta or an acknowledgement (not a whole document) arrived by mail for a
    /// document this device holds no replica of yet. It is then left, not quarantined: the whole
    /// document comes from a sibling device (answering a request) or with the sender's next mail
    /// (the sender never got an acknowledgement from this device, so it sends everything), and
    /// mail read out of order (the processed folder after the inbox) may bring it in the same
    /// pass.
    fn awaits_whole(&self, name: &str, first: &Changes) -> std::result::Result<bool, Refusal> {
        // An acknowledgement carries no document at all (changesSince 0 and nothing else).
        let part = first.changes_since() != 0 || !first.has_changes();
        Ok(part && !self.store.has_doc(name).map_err(internal)?)
    }

    /// The configured document an arrival is for, and its sender's key among that document's
    /// peers (the address as configured; the own address for a sibling device; a client id for
    /// a shared folder). None: a sibling's mail about a document not configured on this device,
    /// left to the devices that have it.
    fn addressee(
        &self,
        ti: usize,
        a: &Arrival,
        shared: bool,
    ) -> std::result::Result<Option<(String, String)>, Refusal> {
        let own = !shared && a.from.eq_ignore_ascii_case(self.cfg.address());
        let candidates: Vec<usize> = (0..self.docs.len())
            .filter(|i| self.docs[*i].transport == ti)
            .collect();
        let found = if shared && candidates.len() == 1 {
            Some(candidates[0])
        } else {
            candidates
                .iter()
                .find(|i| self.docs[**i].cfg.name == a.doc)
                .copied()
        };
        let slot = match found {
            Some(slot) => slot,
            None if own => return Ok(None),
            None => return Err(Refusal::Quarantine(format!("unknown document {:?}", a.doc))),
        };
        let name = self.docs[slot].cfg.name.clone();
        if shared {
            return Ok(Some((name, a.from.clone())));
        }
        if own {
            return Ok(Some((name, self.cfg.address().to_string())));
        }
        match self.docs[slot].cfg.peer(&a.from) {
            Some(p) => Ok(Some((name, p.clone()))),
            None => Err(Refusal::Quarantine(format!(
                "sender {} is not a peer of document {name:?}",
                a.from
            ))),
        }
    }

    /// Makes sure the arrival is for our replica of the document: refuses a peer's document of
    /// the same name created apart (see `forked`), and creates our replica from a peer's first
    /// full changes when we hold none yet. Returns whether the first changes object built it.
    fn first_replica(
        &mut self,
        name: &str,
        peer: &str,
        changes: &[Changes],
        shared: bool,
        refuse: impl Fn(String) -> Refusal,
    ) -> std::result::Result<bool, Refusal> {
        let first = &changes[0];
        let exists = self.store.has_doc(name).map_err(internal)?;
        if exists && !shared {
            let ours = self
                .store
                .read_doc(name, |d| d.id().to_string())
                .map_err(internal)?;
            if ours != first.doc_id() {
                return Err(self.forked(name, peer, &ours, first));
            }
        }
        if exists {
            return Ok(false);
        }
        let doc = Document::from_changes(first).map_err(|e| {
            refuse(format!(
                "cannot create document {name:?} from these changes: {e}"
            ))
        })?;
        self.keep_first_replica(name, &doc)?;
        Ok(true)
    }

    fn keep_first_replica(
        &mut self,
        name: &str,
        doc: &Document,
    ) -> std::result::Result<(), Refusal> {
        self.store.create_doc(name, doc, false).map_err(internal)?;
        tracing::info!(doc_id = %doc.id(), client = %doc.client_id(), "created replica from a peer's changes");
        Ok(())
    }

    /// The envelope of the arrival's first changes object when it makes a replica not held
    /// here yet: the whole document, in the compact form (see `replica_while_read`). `None`:
    /// read it the usual way (which also says what is wrong with one that cannot be read).
    fn new_whole(&self, name: &str, a: &Arrival) -> std::result::Result<Option<Envelope>, Refusal> {
        let Some(first) = a.payloads.as_ref().ok().and_then(|p| p.first()) else {
            return Ok(None);
        };
        if !compact::is_compact(first) || self.store.has_doc(name).map_err(internal)? {
            return Ok(None);
        }
        Ok(Changes::envelope(first).ok().filter(|e| e.whole))
    }

    /// Creates the replica from the arrival's first changes object while its bytes are read
    /// (`Document::from_bytes`): a peer's first full sync of a large document never holds the
    /// changes object parsed whole beside the replica.
    fn replica_while_read(
        &mut self,
        name: &str,
        a: &Arrival,
        refuse: impl Fn(String) -> Refusal,
    ) -> std::result::Result<(), Refusal> {
        let bytes = match a.payloads.as_ref().map(|p| p.first()) {
            Ok(Some(bytes)) => bytes,
            _ => return Err(refuse("no changes object in the message".into())),
        };
        let doc = Document::from_bytes(bytes).map_err(|e| match Changes::from_bytes(bytes) {
            // Worded as when the changes are read before the replica is made.
            Err(bad) => refuse(format!("bad changes: {bad}")),
            Ok(_) => refuse(format!(
                "cannot create document {name:?} from these changes: {e}"
            )),
        })?;
        self.keep_first_replica(name, &doc)
    }

    /// Merges the checked arrivals of one document in one transaction: each one's changes, its
    /// Message-ID, the sender's pin; then one acknowledgement per sender that asked for one. An
    /// arrival the engine refuses leaves the document untouched (the engine checks before it
    /// changes anything) and is quarantined; the others still merge. If the transaction itself
    /// fails, every arrival is read again next pass.
    fn merge(
        &mut self,
        name: &str,
        items: Vec<Ready>,
        spans: &[tracing::Span],
        report: &mut PassReport,
    ) -> Vec<(usize, std::result::Result<(), Refusal>)> {
        let peers = self
            .docs
            .iter()
            .find(|d| d.cfg.name == name)
            .map(|d| d.cfg.peers.clone())
            .unwrap_or_default();
        let route = Route {
            name,
            address: self.cfg.address(),
            peers: &peers,
        };
        let merged = self.store.update_doc::<_, AgentError>(name, |doc, tx| {
            let mut outcomes = Vec::with_capacity(items.len());
            // The last mail of each sender address that asked for a reply: its Message-ID (one
            // reply serves every device behind the address).
            let mut replies: BTreeMap<String, Option<String>> = BTreeMap::new();
            let mut any = false;
            for item in &items {
                let span = &spans[item.at];
                let before = doc.version();
                let owed = match apply_item(doc, tx, name, item)? {
                    Ok(owed) => owed,
                    Err(refusal) => {
                        outcomes.push((item.at, Err(refusal)));
                        continue;
                    }
                };
                record_merged(tx, name, item, doc.version() != before)?;
                if item.wants_reply || (owed && !item.shared) {
                    replies.insert(item.peer.clone(), item.message_id.clone());
                }
                span.in_scope(|| tracing::info!(changed = doc.version() != before, "merged"));
                any = true;
                outcomes.push((item.at, Ok(())));
            }
            for (peer, message_id) in &replies {
                let clients = Store::clients_of(tx, name, peer)?;
                queue_ack(tx, doc, &route, peer, &clients, message_id.as_deref())?;
            }
            let save = if any { Save::Merged } else { Save::No };
            Ok((outcomes, save))
        });
        match merged {
            Ok(outcomes) => {
                report.merged += outcomes.iter().filter(|(_, o)| o.is_ok()).count();
                outcomes
            }
            Err(e) => items
                .iter()
                .map(|item| (item.at, Err(Refusal::Retry(format!("internal: {e}")))))
                .collect(),
        }
    }
}

impl Agent {
    /// A peer's mail is for another document of the same name: both sides created it. Its
    /// changes are kept (when they hold the whole document) for `agent doc adopt`, and the mail
    /// is quarantined with a reason that says what to do.
    fn forked(&mut self, name: &str, peer: &str, ours: &str, first: &Changes) -> Refusal {
        let theirs = first.doc_id();
        let whole = Document::from_changes(first).is_ok();
        let text = first.to_json_string();
        if whole && let Err(e) = self.store.record_fork(name, peer, theirs, &text) {
            return Refusal::Retry(format!("internal: {e}"));
        }
        Refusal::Quarantine(format!(
            "{peer} has another document named {name:?} (id {theirs}; ours is {ours}): you each \
             created it. {}",
            if whole {
                let me = self
                    .cfg
                    .account
                    .as_ref()
                    .map_or("<your address>", |a| a.address.as_str());
                format!(
                    "To take theirs: `agent doc adopt {name} --from {peer}`; or they take ours \
                     with `agent doc adopt {name} --from {me}`"
                )
            } else {
                "Their next full mail can be adopted with `agent doc adopt`".to_string()
            }
        ))
    }
}

/// Merges one admitted arrival's changes into `doc` (each changes object is checked whole before
/// it changes anything; of a folder's base + latest, a refused latest leaves the base merged:
/// valid changes, merged again harmlessly next time) and records what the merge found. Returns
/// whether the peer is owed a message now, or why the arrival is refused.
fn apply_item(
    doc: &mut Document,
    tx: &rusqlite::Connection,
    name: &str,
    item: &Ready,
) -> Result<std::result::Result<bool, Refusal>> {
    let mut findings = Findings::default();
    // A shared folder has no messages to exchange: a repair merges the peer's whole publication
    // (base and latest, read again) by the repair's rule instead.
    let repairing = item.shared && health(tx, name, &item.peer)?.repair.is_some();
    let applied = item.changes.iter().try_for_each(|ch| {
        let marked;
        let ch = if repairing {
            marked = ch.clone().into_repair(RepairKind::Reply);
            &marked
        } else {
            ch
        };
        doc.apply(ch).map(|out| findings.add(ch, &out))
    });
    Ok(match applied {
        Ok(()) => Ok(findings.record(tx, doc, name, &item.peer, item.shared)?),
        // Another value under one of our stamps: not this message's fault but a divergence,
        // repaired by a full exchange (its changes come again in it).
        Err(e @ crate::engine::Error::Diverged { .. }) => {
            Ok(Findings::diverged_at(tx, name, &item.peer, &e.to_string())?)
        }
        Err(e) => {
            let reason = format!("changes refused by the engine: {e}");
            Store::set_health(tx, name, &item.peer, HealthChange::Notice(&reason))?;
            // A shared folder is read again when its writer publishes anew.
            Err(if item.shared {
                Refusal::Retry(reason)
            } else {
                Refusal::Quarantine(reason)
            })
        }
    })
}

/// What a merged arrival leaves in the store, in the merge's transaction: its Message-ID, the
/// sending device and its client id (a device never named, as in mail released from the
/// quarantine, goes under its client id), the time, forks and quarantined mail it settles, and
/// the document log.
fn record_merged(tx: &rusqlite::Connection, name: &str, item: &Ready, changed: bool) -> Result<()> {
    if let Some(mid) = &item.message_id {
        Store::mark_seen(tx, mid)?;
    }
    if let Some((sender, id)) = &item.transfer {
        Store::drop_transfer(tx, sender, id)?;
    }
    let client = item.sent_by.to_string();
    if !item.shared {
        let (device, device_name) = match &item.device {
            Some(t) => (t.id.as_str(), t.name.as_deref()),
            None => (client.as_str(), None),
        };
        let heard = (client.as_str(), item.sent_at);
        Store::heard_device(tx, name, &item.peer, device, device_name, heard)?;
        Store::clear_want(tx, name, device)?;
        Store::set_writes_to(tx, name, &client, &item.writes_to)?;
    }
    let pin = PeerChange::Pin(client);
    Store::touch_peer(tx, name, &item.peer, pin)?;
    Store::touch_peer(tx, name, &item.peer, PeerChange::Received)?;
    Store::clear_fork(tx, name, &item.peer)?;
    // Mail refused while the sender was not a peer, or encrypted to a key we no longer had: its
    // changes came again now.
    Store::unquarantine_peer(tx, name, &item.peer, crate::store::NOT_A_PEER)?;
    Store::unquarantine_peer(tx, "", &item.peer, crate::store::NOT_A_PEER)?;
    Store::unquarantine_peer(tx, "", &item.peer, crate::store::UNDECRYPTABLE)?;
    if changed {
        let who = format!("{} (client {})", item.peer, item.sent_by);
        Store::log_change(tx, name, &who, &touched(&item.changes))?;
    }
    Ok(())
}

/// The paths an arrival's changes touch, for the document log: at most ten, then "and more".
fn touched(changes: &[Changes]) -> String {
    const SHOWN: usize = 10;
    let mut paths: Vec<String> = changes
        .iter()
        .flat_map(|c| c.touched_paths(SHOWN + 1))
        .collect();
    paths.dedup();
    let more = paths.len() > SHOWN;
    paths.truncate(SHOWN);
    let mut text = paths.join(", ");
    if more {
        text.push_str(" and more");
    }
    text
}

/// A failure of our own state, not of the arrival: it is read again next pass.
pub(super) fn internal(e: impl Into<AgentError>) -> Refusal {
    Refusal::Retry(format!("internal: {}", e.into()))
}

/// One tracing span per arrival, so that every line logged about it names it.
pub(super) fn arrival_spans(transport: &str, arrivals: &[Arrival]) -> Vec<tracing::Span> {
    arrivals
        .iter()
        .map(|a| {
            tracing::info_span!(
                "arrival",
                transport,
                from = %a.from,
                doc = %a.doc,
                key = %a.key,
            )
        })
        .collect()
}

/// Where this replica writes a document: its name, our own address (for Message-IDs) and the
/// peers' addresses (listed in each changes object as `writesTo`).
pub(super) struct Route<'a> {
    pub name: &'a str,
    pub address: &'a str,
    pub peers: &'a [String],
}

/// Puts the reply that acknowledges a peer's mail in the outbox (inside the merge's transaction).
pub(super) fn queue_ack(
    tx: &rusqlite::Connection,
    doc: &Document,
    route: &Route<'_>,
    peer: &str,
    clients: &[ClientId],
    in_reply_to: Option<&str>,
) -> Result<()> {
    let (name, address) = (route.name, route.address);
    let repair = health(tx, name, peer)?.repair;
    // An acknowledgement goes out anyway: it does not carry again what reaches the address from
    // its authors (a sibling's change, a peer's that wrote to it too).
    let reaching = (doc.id(), doc.authors_reaching(clients));
    let delivered = super::send::delivered_to(tx, reaching, route, peer, clients)?;
    let changes = outgoing(doc, (clients, &delivered), repair, route.peers);
    if repair == Some(RepairKind::Reply) {
        Store::set_health(tx, name, peer, HealthChange::Repair(None))?;
    }
    let item = OutItem {
        id: 0,
        doc: name.to_string(),
        peer: peer.to_string(),
        message_id: new_message_id(address),
        in_reply_to: in_reply_to.map(str::to_string),
        body: changes.to_compact(),
        ack_only: !changes.has_changes(),
        version: doc.version(),
        attempts: 0,
    };
    Store::enqueue(tx, &item)?;
    Store::touch_peer(tx, name, peer, PeerChange::Queued(doc.version()))?;
    Ok(())
}

/// The changes objects an arrival carries (at least one, all from one client; in a shared folder
/// from the client whose directory holds them), or why they cannot be merged.
///
/// `new_whole`: the first one's envelope, when a new replica is made from its bytes while they
/// are read (`Agent::replica_while_read`): it is not read here.
fn read_changes(
    a: &Arrival,
    shared: bool,
    new_whole: Option<&Envelope>,
) -> std::result::Result<Vec<Changes>, String> {
    let payloads = a.payloads.as_ref().map_err(Clone::clone)?;
    let skip = usize::from(new_whole.is_some());
    let mut changes = Vec::with_capacity(payloads.len());
    for p in payloads.iter().skip(skip) {
        changes.push(Changes::from_bytes(p).map_err(|e| format!("bad changes: {e}"))?);
    }
    let sent_by = match (new_whole, changes.first()) {
        (Some(e), _) => e.sent_by,
        (None, Some(c)) => c.sent_by(),
        (None, None) => return Err("no changes object in the message".into()),
    };
    if changes.iter().any(|c| c.sent_by() != sent_by) {
        return Err("changes objects from different clients in one message".into());
    }
    if shared && a.from != sent_by.to_string() {
        return Err(format!(
            "the directory of client {} holds changes sent by {sent_by}",
            a.from
        ));
    }
    Ok(changes)
}
