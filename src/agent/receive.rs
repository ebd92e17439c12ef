//! Receiving: every arrival is checked (known document, allowed sender, pinned client id, valid
//! changes), merged and committed in one transaction together with its Message-ID and the
//! acknowledgement it calls for; only then is it moved out of the mailbox. A crash before the
//! commit leaves the mail to be read again; a crash after it finds the Message-ID already seen.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::agent::health::{Findings, outgoing};
use crate::agent::{Agent, AgentError, PassReport, Result, new_message_id};
use crate::engine::{Changes, ClientId, Document, RepairKind};
use crate::store::{HealthChange, OutItem, PeerChange, Save, Store, health};
use crate::transport::{Arrival, Delivery, Settle};

/// Why an arrival was not merged.
enum Refusal {
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
}

/// Message-IDs that earlier arrivals of the same pass carry: a copy delivered twice is a
/// duplicate even before the first is committed.
#[derive(Default)]
struct PassMemory {
    message_ids: HashSet<String>,
}

impl Agent {
    /// Receives everything waiting on one transport. Each arrival is checked on its own; those
    /// that pass are merged per document in one transaction (one save of the replica per pass,
    /// not per mail), and only then moved out of the mailbox.
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
        let spans: Vec<tracing::Span> = arrivals
            .iter()
            .map(|a| {
                tracing::info_span!(
                    "arrival",
                    transport = transport.name(),
                    from = %a.from,
                    doc = %a.doc,
                    key = %a.key,
                )
            })
            .collect();
        let mut outcomes: Vec<Option<std::result::Result<(), Refusal>>> =
            arrivals.iter().map(|_| None).collect();
        let mut ready = Vec::new();
        let mut memory = PassMemory::default();
        for (at, a) in arrivals.iter().enumerate() {
            self.alive(); // a long drain is progress, not a hang
            let checked = spans[at].in_scope(|| self.check(ti, at, a, &mut memory, report));
            match checked {
                Ok(Some(r)) => ready.push(r),
                Ok(None) => outcomes[at] = Some(Ok(())),
                Err(refusal) => outcomes[at] = Some(Err(refusal)),
            }
        }
        tracing::debug!(ready = ready.len(), took = ?started.elapsed(), "checked");
        let mut docs: Vec<String> = ready.iter().map(|r| r.doc.clone()).collect();
        docs.sort();
        docs.dedup();
        for doc in docs {
            let items: Vec<Ready> = ready.extract_if(.., |r| r.doc == doc).collect();
            for (at, outcome) in self.merge(&doc, items, &spans, report) {
                outcomes[at] = Some(outcome);
            }
        }
        if !arrivals.is_empty() {
            tracing::debug!(took = ?started.elapsed(), "merged and committed");
        }
        for (at, arrival) in arrivals.iter().enumerate() {
            let span = &spans[at];
            let outcome = outcomes[at]
                .take()
                .unwrap_or_else(|| Err(Refusal::Retry("internal: never judged".into())));
            let settle = match outcome {
                Ok(()) => Settle::Processed,
                Err(Refusal::Quarantine(reason)) => {
                    span.in_scope(|| tracing::warn!(%reason, "quarantined: not merged"));
                    report.quarantined += 1;
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
        Ok(())
    }

    /// Every check that does not need the merge itself: not seen before, a configured document,
    /// a peer of it, readable changes, the sender's pinned client id, the same document. Creates
    /// the replica from a peer's first mail. `Ok(None)`: a duplicate, nothing to do.
    fn check(
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
        let internal = |e: AgentError| Refusal::Retry(format!("internal: {e}"));
        if let Some(mid) = &a.message_id
            && (memory.message_ids.contains(mid)
                || self.store.seen(mid).map_err(|e| internal(e.into()))?)
        {
            tracing::info!(message_id = %mid, "duplicate: already merged");
            report.duplicates += 1;
            return Ok(None);
        }
        // Which configured document is it for?
        let candidates: Vec<usize> = (0..self.docs.len())
            .filter(|i| self.docs[*i].transport == ti)
            .collect();
        let slot = if shared && candidates.len() == 1 {
            candidates[0]
        } else {
            *candidates
                .iter()
                .find(|i| self.docs[**i].cfg.name == a.doc)
                .ok_or_else(|| Refusal::Quarantine(format!("unknown document {:?}", a.doc)))?
        };
        let name = self.docs[slot].cfg.name.clone();
        let peer_key = if shared {
            a.from.clone()
        } else {
            match self.docs[slot].cfg.peer(&a.from) {
                Some(p) => p.clone(),
                None => {
                    return Err(Refusal::Quarantine(format!(
                        "sender {} is not a peer of document {name:?}",
                        a.from
                    )));
                }
            }
        };
        let texts = a.payloads.clone().map_err(refuse)?;
        let mut changes = Vec::with_capacity(texts.len());
        for t in &texts {
            changes.push(Changes::parse(t).map_err(|e| refuse(format!("bad changes: {e}")))?);
        }
        let Some(first) = changes.first() else {
            return Err(refuse("no changes object in the message".into()));
        };
        let sent_by = first.sent_by();
        // Mail that carries changes is acknowledged by reply; a pure acknowledgement never is.
        let wants_reply = !shared && changes.len() == 1 && first.has_changes();
        if changes.iter().any(|c| c.sent_by() != sent_by) {
            return Err(refuse(
                "changes objects from different clients in one message".into(),
            ));
        }
        if shared && a.from != sent_by.to_string() {
            return Err(refuse(format!(
                "the directory of client {} holds changes sent by {sent_by}",
                a.from
            )));
        }
        let pinned = self
            .store
            .peer(&name, &peer_key)
            .map_err(|e| internal(e.into()))?
            .client_id;
        if let Some(pinned) = &pinned
            && *pinned != sent_by.to_string()
        {
            return Err(pin_refusal(&peer_key, pinned, sent_by));
        }
        let exists = self.store.has_doc(&name).map_err(|e| internal(e.into()))?;
        if exists && !shared {
            let ours = self
                .store
                .read_doc(&name, |d| d.id().to_string())
                .map_err(|e| internal(e.into()))?;
            if ours != first.doc_id() {
                return Err(self.forked(&name, &peer_key, &ours, first, &texts[0]));
            }
        }
        if !exists {
            let doc = Document::from_changes(first).map_err(|e| {
                refuse(format!(
                    "cannot create document {name:?} from these changes: {e}"
                ))
            })?;
            self.store
                .create_doc(&name, &doc, false)
                .map_err(|e| internal(e.into()))?;
            tracing::info!(doc_id = %doc.id(), client = %doc.client_id(), "created replica from a peer's changes");
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
        }))
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
        let address = self.cfg.address();
        let merged = self.store.update_doc::<_, AgentError>(name, |doc, tx| {
            let mut outcomes = Vec::with_capacity(items.len());
            // The last mail of each sender that asked for a reply: (client, its Message-ID).
            let mut replies: BTreeMap<String, (ClientId, Option<String>)> = BTreeMap::new();
            // Client ids pinned by this transaction (the checks saw only committed pins).
            let mut pins: HashMap<&str, ClientId> = HashMap::new();
            let mut any = false;
            for item in &items {
                let span = &spans[item.at];
                if let Some(pinned) = pins.get(item.peer.as_str())
                    && *pinned != item.sent_by
                {
                    let refusal = pin_refusal(&item.peer, &pinned.to_string(), item.sent_by);
                    outcomes.push((item.at, Err(refusal)));
                    continue;
                }
                let before = doc.version();
                // Each changes object is checked whole before it changes anything. Of a folder's
                // base + latest, a refused latest leaves the base merged: valid changes from that
                // client, merged again harmlessly when the folder is read next time.
                let mut findings = Findings::default();
                let applied = item
                    .changes
                    .iter()
                    .try_for_each(|ch| doc.apply(ch).map(|out| findings.add(ch, &out)));
                if let Err(e) = applied {
                    let reason = format!("changes refused by the engine: {e}");
                    Store::set_health(tx, name, &item.peer, HealthChange::Notice(&reason))?;
                    outcomes.push((item.at, Err(Refusal::Quarantine(reason))));
                    continue;
                }
                let owed = findings.record(tx, doc, name, &item.peer)?;
                if let Some(mid) = &item.message_id {
                    Store::mark_seen(tx, mid)?;
                }
                let pin = PeerChange::Pin(item.sent_by.to_string());
                Store::touch_peer(tx, name, &item.peer, pin)?;
                Store::touch_peer(tx, name, &item.peer, PeerChange::Received)?;
                Store::clear_fork(tx, name, &item.peer)?;
                pins.insert(&item.peer, item.sent_by);
                if item.wants_reply || (owed && !item.shared) {
                    replies.insert(item.peer.clone(), (item.sent_by, item.message_id.clone()));
                }
                span.in_scope(|| tracing::info!(changed = doc.version() != before, "merged"));
                any = true;
                outcomes.push((item.at, Ok(())));
            }
            for (peer, (client, message_id)) in &replies {
                queue_ack(tx, doc, name, peer, *client, message_id.as_deref(), address)?;
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
    fn forked(
        &mut self,
        name: &str,
        peer: &str,
        ours: &str,
        first: &Changes,
        text: &str,
    ) -> Refusal {
        let theirs = first.doc_id();
        let whole = Document::from_changes(first).is_ok();
        if whole && let Err(e) = self.store.record_fork(name, peer, theirs, text) {
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

/// Mail from a peer's address but another client than the one first seen there: someone else, or
/// the peer's reinstalled agent. Either way a person must look.
fn pin_refusal(peer: &str, pinned: &str, sent_by: ClientId) -> Refusal {
    Refusal::Quarantine(format!(
        "{peer} used to be client {pinned}, this message comes from client {sent_by}"
    ))
}

/// Puts the reply that acknowledges a peer's mail in the outbox (inside the merge's transaction).
pub(super) fn queue_ack(
    tx: &rusqlite::Connection,
    doc: &Document,
    name: &str,
    peer: &str,
    client: ClientId,
    in_reply_to: Option<&str>,
    address: &str,
) -> Result<()> {
    let repair = health(tx, name, peer)?.repair;
    let changes = outgoing(doc, Some(client), repair);
    if repair == Some(RepairKind::Reply) {
        Store::set_health(tx, name, peer, HealthChange::Repair(None))?;
    }
    let item = OutItem {
        id: 0,
        doc: name.to_string(),
        peer: peer.to_string(),
        message_id: new_message_id(address),
        in_reply_to: in_reply_to.map(str::to_string),
        body: changes.to_json_string(),
        ack_only: !changes.has_changes(),
        version: doc.version(),
        attempts: 0,
    };
    Store::enqueue(tx, &item)?;
    Store::touch_peer(tx, name, peer, PeerChange::Queued(doc.version()))?;
    Ok(())
}
