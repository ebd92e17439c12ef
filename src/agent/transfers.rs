//! Receiving changes that came in several mails (a transfer, see [`crate::transport::parts`]):
//! each part mail goes through the checks of any mail (signature, sender, device, document) and
//! is then kept in the store in one transaction with its Message-ID; once every part of a
//! transfer is here, the parts are put together, the hash is checked, and the whole is taken in
//! like a mail that carried it, under the whole's Message-ID. The merge's transaction drops the
//! parts. A transfer that does not verify is quarantined with the reason (nothing of it merged)
//! and dropped; one whose parts stop coming is dropped after
//! [`crate::transport::parts::INCOMPLETE_TRANSFER_KEEP_MS`].

use crate::agent::receive::{Refusal, arrival_spans, internal};
use crate::agent::{Agent, PassReport, Result};
use crate::store::{IncomingPart, Store, Transfer};
use crate::transport::parts::{self, PartInfo};
use crate::transport::{Arrival, DeviceTag, Sealed, Split};

impl Agent {
    /// Keeps a part mail that passed admission's checks (for document `name`): its text and its
    /// Message-ID in one transaction. Duplicates are harmless (the same part again changes
    /// nothing).
    pub(super) fn keep_part(
        &mut self,
        a: &Arrival,
        info: &PartInfo,
        name: &str,
    ) -> std::result::Result<(), Refusal> {
        let chunk = match &a.payloads {
            Ok(texts) if texts.len() == 1 => &texts[0],
            Ok(_) => return Err(Refusal::Quarantine("a part mail carries one piece".into())),
            Err(e) => return Err(Refusal::Quarantine(e.clone())),
        };
        let (Some(message_id), Some(sealed)) = (&a.message_id, &a.sealed) else {
            return Err(Refusal::Quarantine(
                "a part mail without a signed Message-ID".into(),
            ));
        };
        let part = IncomingPart {
            sender: &a.from,
            doc: name,
            info,
            chunk,
            signer: &sealed.fingerprint,
            device: a
                .device
                .as_ref()
                .map(|d| (d.id.as_str(), d.name.as_deref())),
            message_id,
        };
        match self.store.keep_part(&part).map_err(internal)? {
            Ok(have) => {
                tracing::info!(transfer = %info.transfer, part = info.index, count = info.count, have, "kept a part");
                Ok(())
            }
            Err(reason) => Err(Refusal::Quarantine(reason)),
        }
    }

    /// Takes in every complete transfer kept for the documents of transport `ti`: put together,
    /// checked and merged like a mail (see the module's description). A transfer whose merge is
    /// to be tried again (our own state failed) stays for the next pass.
    ///
    /// # Errors
    ///
    /// The store could not be read.
    pub(super) fn take_in_transfers(&mut self, ti: usize, report: &mut PassReport) -> Result<()> {
        let docs: Vec<String> = self
            .docs
            .iter()
            .filter(|d| d.transport == ti)
            .map(|d| d.cfg.name.clone())
            .collect();
        for t in self.store.transfers()? {
            if t.have < t.count {
                break; // the complete ones come first
            }
            if !docs.contains(&t.doc) {
                continue;
            }
            let arrival = self.transfer_arrival(&t)?;
            let spans = arrival_spans("mail parts", std::slice::from_ref(&arrival));
            let outcome = self
                .take_in(ti, std::slice::from_ref(&arrival), &spans, report)
                .pop();
            match outcome {
                Some(Err(Refusal::Retry(reason))) => {
                    tracing::warn!(transfer = %t.id, %reason, "a complete transfer was not merged; tried again next pass");
                    report.deferred += 1;
                    continue;
                }
                Some(Err(Refusal::Quarantine(reason))) => {
                    spans[0].in_scope(|| tracing::warn!(%reason, "quarantined: not merged"));
                    report.quarantined += 1;
                    self.record_quarantine(&arrival, &reason, report);
                }
                Some(Ok(())) | None => {}
            }
            // Merged (its transaction dropped it already), a duplicate, or refused.
            Store::drop_transfer(self.store.conn(), &t.sender, &t.id)?;
        }
        Ok(())
    }

    /// A complete transfer as an arrival: the whole changes object (or why the parts do not make
    /// one), with the whole's Message-ID, the signer and device its parts were checked with.
    fn transfer_arrival(&self, t: &Transfer) -> Result<Arrival> {
        let chunks = self.store.transfer_parts(&t.sender, &t.id)?;
        let payloads = parts::assemble(&t.info(), &chunks)
            .map(|whole| vec![whole])
            .map_err(|e| format!("changes sent in {} mail parts: {e}", t.count));
        Ok(Arrival {
            key: format!("transfer {}", t.id),
            message_id: Some(t.of.clone()),
            from: t.sender.clone(),
            doc: t.doc.clone(),
            in_reply_to: None,
            payloads,
            // Each part's signature verified when it came, with the key then trusted; the key
            // must still be the trusted one.
            sealed: Some(Sealed {
                fingerprint: t.signer.clone(),
                key: Vec::new(),
                hello: None,
            }),
            device: t.device.as_ref().map(|id| DeviceTag {
                id: id.clone(),
                name: t.device_name.clone(),
                retired: Vec::new(),
            }),
            want: false,
            split: Split::Assembled(t.id.clone()),
            sent_at: None,
        })
    }
}
