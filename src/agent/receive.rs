//! Receiving: every arrival is checked (known document, allowed sender, pinned client id, valid
//! changes), merged and committed in one transaction together with its Message-ID and the
//! acknowledgement it calls for; only then is it moved out of the mailbox. A crash before the
//! commit leaves the mail to be read again; a crash after it finds the Message-ID already seen.

use tracing::Instrument;

use crate::agent::{Agent, AgentError, PassReport, Result, new_message_id};
use crate::engine::{Changes, ClientId, Document};
use crate::store::{OutItem, PeerChange, Save, Store};
use crate::transport::{Arrival, Delivery, Settle};

/// Why an arrival was not merged.
enum Refusal {
    /// Set aside for good (mail: moved to the quarantine folder).
    Quarantine(String),
    /// Read again next pass (a half-delivered shared folder).
    Retry(String),
}

impl Agent {
    pub(super) async fn receive_from(&mut self, ti: usize, report: &mut PassReport) -> Result<()> {
        let routes = self.routes(ti)?;
        if routes.is_empty() {
            return Ok(());
        }
        let transport = self.transports[ti].clone();
        let arrivals = transport.receive(&routes).await?;
        for arrival in arrivals {
            self.alive(); // a long drain is progress, not a hang
            let span = tracing::info_span!(
                "arrival",
                transport = transport.name(),
                from = %arrival.from,
                doc = %arrival.doc,
                key = %arrival.key,
            );
            let outcome = self
                .handle(ti, &arrival, report)
                .instrument(span.clone())
                .await;
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
            if let Err(e) = transport.settle(&arrival, &settle).await {
                span.in_scope(|| tracing::warn!(error = %e, "could not move the message"));
                report.errors.push(e.to_string());
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        ti: usize,
        a: &Arrival,
        report: &mut PassReport,
    ) -> std::result::Result<(), Refusal> {
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
            && self.store.seen(mid).map_err(|e| internal(e.into()))?
        {
            tracing::info!(message_id = %mid, "duplicate: already merged");
            report.duplicates += 1;
            return Ok(());
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
            let from = a.from.to_ascii_lowercase();
            let known = self.docs[slot]
                .cfg
                .peers
                .iter()
                .find(|p| p.eq_ignore_ascii_case(&from));
            match known {
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
        let row = self
            .store
            .peer(&name, &peer_key)
            .map_err(|e| internal(e.into()))?;
        if let Some(pinned) = &row.client_id
            && *pinned != sent_by.to_string()
        {
            return Err(Refusal::Quarantine(format!(
                "{peer_key} used to be client {pinned}, this message comes from client {sent_by}"
            )));
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
        let address = self
            .cfg
            .account
            .as_ref()
            .map(|a| a.address.clone())
            .unwrap_or_default();
        let message_id = a.message_id.clone();
        let merged = self.store.update_doc::<_, AgentError>(&name, |doc, tx| {
            let before = doc.version();
            for ch in &changes {
                doc.apply(ch)?;
            }
            if let Some(mid) = &message_id {
                Store::mark_seen(tx, mid)?;
            }
            Store::touch_peer(tx, &name, &peer_key, PeerChange::Pin(sent_by.to_string()))?;
            Store::touch_peer(tx, &name, &peer_key, PeerChange::Received)?;
            Store::clear_fork(tx, &name, &peer_key)?;
            if wants_reply {
                queue_ack(
                    tx,
                    doc,
                    &name,
                    &peer_key,
                    sent_by,
                    message_id.as_deref(),
                    &address,
                )?;
            }
            Ok((doc.version() != before, Save::Merged))
        });
        match merged {
            Ok(changed) => {
                tracing::info!(changed, "merged");
                report.merged += 1;
                Ok(())
            }
            Err(AgentError::Engine(e)) => {
                Err(refuse(format!("changes refused by the engine: {e}")))
            }
            Err(e) => Err(internal(e)),
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
    let changes = doc.changes_for(client);
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
