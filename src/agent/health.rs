//! What a merge found beyond the merge itself — a gap, an impossible claim, a divergence, half
//! of a repair — turned into the peer's health (shown by `agent status`) and into the repair
//! exchange: the replica that finds a divergence asks for the peer's whole state with its own
//! (a repair request), the peer merges it and answers with its whole state (a repair reply), and
//! both settle values that differ under one stamp by the same rule (docs/PROTOCOL.md, "Digest").

use crate::agent::Result;
use crate::engine::{Changes, ClientId, Document, MergeOutcome, RepairKind};
use crate::store::{HealthChange, Store, health};

/// A divergence this replica repaired from a shared folder peer's whole publication, while the
/// peer has yet to do the same with ours.
const WAITING: &str = "repaired here from their whole state; waiting for them to do the same";

/// What the merges of one arrival found.
#[derive(Default)]
pub(super) struct Findings {
    incomplete: bool,
    /// (their claim, our version)
    impossible_claim: Option<(u64, u64)>,
    diverged: Option<(u64, u64)>,
    verified: bool,
    /// The repair half the arrival carried, with its changes (a reply names what still differs).
    repair: Option<(RepairKind, Changes)>,
}

impl Findings {
    /// Adds what merging one changes object found.
    pub(super) fn add(&mut self, ch: &Changes, out: &MergeOutcome) {
        self.incomplete |= out.incomplete;
        if let Some(claim) = out.impossible_claim {
            self.impossible_claim = Some((claim, out.version));
        }
        if let Some(d) = out.diverged {
            self.diverged = Some((d.ours, d.theirs));
            self.verified = false;
        } else if out.verified {
            self.verified = true;
            self.diverged = None;
        }
        if let Some(kind) = ch.repair()
            && self.repair.is_none()
        {
            // The first: of a folder's base and latest, the base is the whole state.
            self.repair = Some((kind, ch.clone()));
        }
    }

    /// Records the findings for `peer` inside the merge's transaction. Returns whether the peer
    /// must get a message now (a repair request or reply is owed), even if it asked for none.
    pub(super) fn record(
        &self,
        tx: &rusqlite::Connection,
        doc: &Document,
        name: &str,
        peer: &str,
        shared: bool,
    ) -> Result<bool> {
        let set = |change: HealthChange<'_>| Store::set_health(tx, name, peer, change);
        // Read once; a healthy peer's merge (the common case) then writes nothing here.
        let before = health(tx, name, peer)?;
        if self.incomplete {
            set(HealthChange::Notice(&format!(
                "changes from {peer} start after a version of theirs not received here, or \
                 follow elements not held here (a lost message?): merged what could be merged; \
                 the acknowledgement asks for the rest"
            )))?;
        } else if let Some((claim, ours)) = self.impossible_claim {
            set(HealthChange::Notice(&format!(
                "{peer} says it holds version {claim} of this replica, which is only at version \
                 {ours} (a damaged record there, or a forged message): the claim is ignored"
            )))?;
        } else if before.notice.is_some() {
            set(HealthChange::ClearNotice)?;
        }
        let mut owe = false;
        match (&self.repair, self.diverged, self.verified) {
            (Some((RepairKind::Request, _)), _, _) => {
                // Answer with our whole state, whatever we found ourselves.
                set(HealthChange::Repair(Some(RepairKind::Reply)))?;
                owe = true;
            }
            (Some((RepairKind::Reply, _)), Some(_), _) if shared => {
                // Over a folder each side repairs from the other's publication on its own:
                // until the peer has done so too, its digest is the old one.
                set(HealthChange::Diverged(WAITING))?;
                set(HealthChange::Repair(None))?;
            }
            (Some((RepairKind::Reply, theirs)), Some((ours, digest)), _) => {
                let paths = differing_paths(doc, theirs);
                set(HealthChange::Diverged(&format!(
                    "NOT RECONCILED by a full exchange: our digest {ours:016x}, theirs \
                     {digest:016x}; differs at {paths}"
                )))?;
                set(HealthChange::Repair(None))?;
            }
            (Some((RepairKind::Reply, _)), None, _) => set(HealthChange::Repair(None))?,
            (None, Some((ours, theirs)), _)
                if before.diverged.as_ref().is_some_and(|(d, _)| d == WAITING) =>
            {
                set(HealthChange::Diverged(&format!(
                    "NOT RECONCILED by a repair on both sides: our digest {ours:016x}, theirs \
                     {theirs:016x}; compare `agent doc export` on both sides"
                )))?;
            }
            (None, Some((ours, theirs)), _) => {
                let settled = before
                    .diverged
                    .as_ref()
                    .is_some_and(|(d, _)| d.starts_with("NOT RECONCILED"));
                if !settled {
                    set(HealthChange::Diverged(&format!(
                        "our digest {ours:016x}, theirs {theirs:016x}: repairing by a full exchange"
                    )))?;
                    set(HealthChange::Repair(Some(RepairKind::Request)))?;
                    owe = before.repair != Some(RepairKind::Request);
                }
            }
            (None, None, _) => {}
        }
        if self.verified && before.diverged.is_some() {
            set(HealthChange::Verified)?;
        }
        Ok(owe)
    }
}

impl Findings {
    /// Records a divergence found by a refused merge (another value under one of our stamps) and
    /// starts the repair. Returns whether the peer must get a message now.
    pub(super) fn diverged_at(
        tx: &rusqlite::Connection,
        name: &str,
        peer: &str,
        detail: &str,
    ) -> Result<bool> {
        let before = health(tx, name, peer)?;
        if before
            .diverged
            .as_ref()
            .is_some_and(|(d, _)| d.starts_with("NOT RECONCILED"))
        {
            return Ok(false);
        }
        Store::set_health(
            tx,
            name,
            peer,
            HealthChange::Diverged(&format!("{detail}: repairing by a full exchange")),
        )?;
        Store::set_health(
            tx,
            name,
            peer,
            HealthChange::Repair(Some(RepairKind::Request)),
        )?;
        Ok(before.repair != Some(RepairKind::Request))
    }
}

/// The changes object for the devices behind one address (`clients`, one per device): what
/// any of them lacks apart from the changes of `delivered` (clients that write to them
/// themselves; see [`Document::changes_for_all_beyond`]), or the whole document (also when none
/// is known yet), marked as the repair half this replica owes them, and listing the addresses
/// this replica writes the document to itself (`writes_to`, as [`address_tag`]s), so that their
/// receivers do not relay it there.
pub(super) fn outgoing(
    doc: &Document,
    (clients, delivered): (&[ClientId], &[ClientId]),
    repair: Option<RepairKind>,
    writes_to: &[String],
) -> Changes {
    let mut changes = match repair {
        Some(kind) => doc.changes().into_repair(kind),
        None if delivered.is_empty() => doc.changes_for_all(clients),
        None => doc.changes_for_all_beyond(clients, delivered),
    };
    let tags = writes_to.iter().map(|a| address_tag(doc.id(), a));
    changes.set_writes_to(tags.collect());
    changes
}

/// An acknowledgement carrying no changes (the replica's knowledge and client table only),
/// listing the addresses this replica writes the document to (as [`outgoing`]), in the
/// compact form.
pub(super) fn bare_ack(doc: &Document, writes_to: &[String]) -> Vec<u8> {
    let mut changes = doc.changes_since(doc.version());
    let tags = writes_to.iter().map(|a| address_tag(doc.id(), a));
    changes.set_writes_to(tags.collect());
    changes.to_compact()
}

/// The tag that stands for mail address `address` in the `writesTo` list of document
/// `doc_id`'s changes objects: the first 8 bytes of SHA-256 of `minisync writes-to`, a zero
/// byte, the document id, a zero byte and the address in lower case, in hex (16 digits). Only
/// a reader who knows the address can tell it is there (docs/PROTOCOL.md, "Traffic").
pub(super) fn address_tag(doc_id: &str, address: &str) -> String {
    use sha2::{Digest, Sha256};
    let hash = Sha256::new()
        .chain_update(b"minisync writes-to\0")
        .chain_update(doc_id.as_bytes())
        .chain_update(b"\0")
        .chain_update(address.to_lowercase().as_bytes())
        .finalize();
    hash[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Up to five paths where our content and the content of a peer's full changes differ.
fn differing_paths(doc: &Document, theirs: &Changes) -> String {
    let Ok(other) = Document::from_changes(theirs) else {
        return "(their state could not be read as a whole)".into();
    };
    let paths = crate::agent::changed_paths(&doc.to_json(), &other.to_json(), 5);
    if paths.is_empty() {
        "no path (the same content under different stamps or element ids)".into()
    } else {
        paths
    }
}
