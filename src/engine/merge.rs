//! Merging a changes object into a replica.
//!
//! `apply` works in two passes: `check` reads the changes against the replica and refuses anything
//! inconsistent (wrong document, a node in two places, an element whose origin is unknown, a stamp
//! reused for two different values, versions from the future...) without touching the replica;
//! only then `integrate` writes, and it cannot fail. So a refused changes object leaves the replica
//! exactly as it was, and an accepted one is applied whole. (A new replica made while its changes
//! object is read, `streamed.rs`, checks each array element just before it merges it: nothing
//! else sees that replica until it is whole, and a refusal drops it.)
//!
//! Conflict rule: every slot keeps the write with the greatest stamp. Order of array elements and
//! text characters: FugueMax (see `fugue.rs`) — an item goes after its left origin, among the
//! items up to its right origin by that rule. Edits of one text merge (see `text.rs`). Writes
//! inside a node that is no longer reachable (its key was overwritten or removed, its element
//! removed) are dropped: removal wins over concurrent edits inside the removed object.

use crate::engine::{HashMap, HashSet};

use crate::engine::scalar::Scalar;

use crate::engine::digest::wire_value_rank;
use crate::engine::doc::{Arr, Body, Document, Elem, Ix, Node, Obj, Parent, ROOT, Val};
use crate::engine::error::{Error, Result};
use crate::engine::fugue::{self, Item};
use crate::engine::stamp::{ClientId, MAX_WALL_MS, Stamp, physical, wall_ms};
use crate::engine::streamed::Stream;
use crate::engine::text::{Piece, Text};
use crate::engine::wire::{Changes, MAX_DEPTH, WBody, WElem, WField, WNode, WText, WVal};

/// What a merge did, for logs and for the agent's decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Whether the document changed (its version grew).
    pub changed: bool,
    /// The replica's version after the merge.
    pub version: u64,
    /// Only part could be merged: the changes start after a version of the sender this replica
    /// never received (a gap), assume knowledge this replica lacks, or place elements after ones
    /// it does not hold. What could be merged was; the sender's `lastReceived` and knowledge did
    /// not move, so the acknowledgement asks for the rest.
    pub incomplete: bool,
    /// The sender said it holds this version of this replica, which is beyond this replica's
    /// version (a corrupt or hostile record): the claim was ignored.
    pub impossible_claim: Option<u64>,
    /// After the merge both replicas hold the same knowledge but their content digests differ.
    pub diverged: Option<Divergence>,
    /// After the merge both replicas hold the same knowledge and their digests agree.
    pub verified: bool,
}

/// Two replicas that hold the same changes but not the same content (see docs/PROTOCOL.md,
/// "Digest").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    /// This replica's digest.
    pub ours: u64,
    /// The digest the sender reported.
    pub theirs: u64,
}

/// The state of one `integrate` pass.
pub(super) struct Merging<'s, 'x> {
    /// The version the merge writes.
    pub(super) u: u64,
    /// Elements `check` left out.
    pub(super) skip: &'s HashSet<Stamp>,
    /// Texts `check` left out (by address: one id may name texts in several slots).
    pub(super) skip_text: &'s HashSet<usize>,
    /// A repair (full exchange after a divergence): same-stamp conflicts are settled by rank.
    pub(super) repair: bool,
    pub(super) changed: bool,
    /// A new replica's element lists read as they are merged (`streamed.rs`).
    pub(super) stream: Option<&'s mut Stream<'x>>,
}

/// Where a wire node sits, for the location check.
pub(super) enum Loc<'a> {
    Root,
    Key(Option<Ix>, &'a str),
    Elem(Option<Ix>, Stamp),
}

/// One step of the path to where `check` is, rendered only for an error message.
enum Step<'c> {
    Key(&'c str),
    Elem(Stamp),
}

pub(super) struct Check<'c> {
    changes: &'c Changes,
    seen: HashSet<Stamp>,
    max_hlc: u64,
    trail: Vec<Step<'c>>,
    /// Elements left out because what they follow is not held here (nor merged with them).
    skip: HashSet<Stamp>,
    /// Texts left out because a piece's origin is neither held here nor in the changes.
    skip_text: HashSet<usize>,
}

/// A [`Check`]'s findings without what it borrows.
#[derive(Default)]
pub(super) struct CheckState {
    pub(super) seen: HashSet<Stamp>,
    pub(super) max_hlc: u64,
    pub(super) skip: HashSet<Stamp>,
    pub(super) skip_text: HashSet<usize>,
}

impl<'c> Check<'c> {
    pub(super) fn new(changes: &'c Changes) -> Self {
        Self::resume(changes, CheckState::default())
    }

    /// A check that goes on from where `state` was left (see [`Check::pause`]).
    pub(super) fn resume(changes: &'c Changes, state: CheckState) -> Self {
        Check {
            changes,
            seen: state.seen,
            max_hlc: state.max_hlc,
            trail: Vec::new(),
            skip: state.skip,
            skip_text: state.skip_text,
        }
    }

    /// What the check has found so far, to go on with later (a new replica's elements are
    /// checked one at a time, see `streamed.rs`).
    pub(super) fn pause(self) -> CheckState {
        CheckState {
            seen: self.seen,
            max_hlc: self.max_hlc,
            skip: self.skip,
            skip_text: self.skip_text,
        }
    }

    fn at(&self) -> String {
        let mut s = String::from("$.changes");
        for t in &self.trail {
            match t {
                Step::Key(k) => {
                    s.push('.');
                    s.push_str(k);
                }
                Step::Elem(id) => s.push_str(&format!("[{id}]")),
            }
        }
        s
    }
    fn fail<T>(&self, msg: impl Into<String>) -> Result<T> {
        Err(Error::conflict(self.at(), msg))
    }
    /// Every stamp must be covered by what the sender says it holds, and moves our clock.
    fn stamp(&mut self, s: Stamp) -> Result<()> {
        let covered = |k: &crate::engine::Knowledge| k.get(&s.client).is_some_and(|h| *h >= s.hlc);
        if !covered(&self.changes.knows) && !covered(&self.changes.partial) {
            return self.fail(format!(
                "stamp {s} is newer than what the sender says it holds of client {}",
                s.client
            ));
        }
        self.max_hlc = self.max_hlc.max(s.hlc);
        Ok(())
    }
}

impl Document {
    /// Creates a new replica (with a fresh client id) from a full changes object.
    pub fn from_changes(changes: &Changes) -> Result<Self> {
        Self::from_changes_as(changes, crate::engine::ClientId::random())
    }

    /// Creates a new replica with the given client id from a full changes object.
    pub fn from_changes_as(changes: &Changes, client: crate::engine::ClientId) -> Result<Self> {
        let mut doc = Self::new_for(changes, client)?;
        doc.apply(changes)?;
        Ok(doc)
    }

    /// The empty replica a full changes object is merged into.
    pub(super) fn new_for(changes: &Changes, client: crate::engine::ClientId) -> Result<Self> {
        if changes.changes_since != 0 {
            return Err(Error::malformed(
                "$.changesSince",
                "a replica can only be created from a full changes object (changesSince 0)",
            ));
        }
        let root = changes.root.as_ref().ok_or_else(|| {
            Error::malformed("$.changes", "a full changes object needs the document")
        })?;
        if client == changes.sent_by {
            return Err(Error::Value(
                "the new replica needs a client id of its own".into(),
            ));
        }
        let mut doc = Document::empty(changes.doc_id.clone(), client, Some(root.id));
        doc.index_later = true;
        Ok(doc)
    }

    /// Merges a changes object. On error the replica is unchanged.
    ///
    /// # Errors
    ///
    /// [`Error::WrongDocument`], [`Error::ClockAhead`] (a clock value further ahead of this
    /// replica's wall clock than the allowed skew), [`Error::Conflict`] (the changes contradict
    /// what this replica holds), [`Error::TooDeep`].
    pub fn apply(&mut self, changes: &Changes) -> Result<MergeOutcome> {
        self.admit(changes)?;
        let mut check = Check::new(changes);
        if let Some(root) = &changes.root {
            self.check_node(root, Loc::Root, 1, &mut check)?;
        }

        // Everything is known to be consistent: from here on nothing can fail. The ids seen
        // (hundreds of thousands in a full sync) are not needed for that.
        drop(std::mem::take(&mut check.seen));
        self.clock.observe(check.max_hlc);
        let before = self.version;
        let mut merging = Merging {
            u: before + 1,
            skip: &check.skip,
            skip_text: &check.skip_text,
            repair: changes.repair.is_some(),
            changed: false,
            stream: None,
        };
        if let Some(root) = &changes.root {
            self.integrate(root, ROOT, &mut merging);
        }
        let changed = merging.changed;
        let whole = check.skip.is_empty() && check.skip_text.is_empty();
        Ok(self.conclude(changes, before, changed, whole))
    }

    /// What is checked before anything else: the document, the sender, the clocks.
    pub(super) fn admit(&self, changes: &Changes) -> Result<()> {
        if changes.doc_id != self.doc_id {
            return Err(Error::WrongDocument {
                expected: self.doc_id.clone(),
                found: changes.doc_id.clone(),
            });
        }
        if changes.sent_by == self.client {
            return Err(Error::conflict(
                "$.sentBy",
                "changes sent by this replica's own client id (two replicas share an id?)",
            ));
        }
        self.check_clocks(changes)
    }

    /// After `integrate`: the version, the knowledge and what is known of the sender and the
    /// others. `whole`: no element or text was left out for want of its origin.
    pub(super) fn conclude(
        &mut self,
        changes: &Changes,
        before: u64,
        changed: bool,
        whole: bool,
    ) -> MergeOutcome {
        if changed {
            self.version = before + 1;
        }
        if self.index_later {
            self.index_from_version();
        }
        let complete = self.is_complete(changes) && whole;
        if complete {
            merge_knows(&mut self.knows, &changes.knows);
        } else if changed {
            merge_knows(&mut self.partial, &changes.knows);
        }
        if changed {
            merge_knows(&mut self.partial, &changes.partial);
        }
        self.settle_partial();
        let impossible_claim = self.record_sender(changes, before, complete);
        for row in &changes.client_states {
            if row.client_id != self.client && row.client_id != changes.sent_by {
                merge_knows(
                    &mut self.peers.entry(row.client_id).or_default().knows,
                    &row.knows,
                );
                self.advance_acknowledged(row.client_id);
            }
        }
        self.advance_acknowledged(changes.sent_by);
        let compared = self.compare_digest(changes, complete);
        MergeOutcome {
            changed,
            version: self.version,
            incomplete: !complete,
            impossible_claim,
            diverged: compared.and_then(std::result::Result::err),
            verified: compared.is_some_and(|c| c.is_ok()),
        }
    }

    /// Refuses clock values further ahead of the wall clock than the allowed skew, and claims
    /// that this replica made changes beyond its own clock. Stamps are bounded by the sender's
    /// `knows` (checked per stamp), so bounding the knowledge bounds every stamp.
    fn check_clocks(&self, changes: &Changes) -> Result<()> {
        let now = physical((self.wall)());
        let limit = physical(self.max_skew_ms.min(MAX_WALL_MS));
        let own_bound = now.max(self.clock.last());
        let rows = changes
            .client_states
            .iter()
            .map(|r| (&r.knows, r.client_id));
        let own = [
            (&changes.knows, changes.sent_by),
            (&changes.partial, changes.sent_by),
        ];
        for (knows, about) in own.into_iter().chain(rows) {
            for (c, h) in knows {
                if *c == self.client && *h > own_bound {
                    return Err(Error::conflict(
                        "$.knows",
                        format!(
                            "client {about} is said to hold changes of this replica up to clock {h:x}, beyond this replica's own clock {own_bound:x}"
                        ),
                    ));
                }
                if h.saturating_sub(now) > limit {
                    return Err(Error::ClockAhead {
                        client: *c,
                        ahead_ms: wall_ms(h - now),
                        limit_ms: self.max_skew_ms,
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether merging `changes` leaves this replica holding everything the sender held: no
    /// version of the sender is missing between what was received and where the changes start,
    /// and the sender did not leave out changes it believed this replica holds but it lacks.
    fn is_complete(&self, changes: &Changes) -> bool {
        let received = self
            .peers
            .get(&changes.sent_by)
            .map_or(0, |p| p.last_received);
        if changes.changes_since > received {
            return false;
        }
        let assumed = changes
            .client_states
            .iter()
            .find(|c| c.client_id == self.client)
            .map(|c| &c.knows);
        assumed.is_none_or(|k| {
            k.iter()
                .all(|(c, h)| self.knows.get(c).is_some_and(|mine| mine >= h))
        })
    }

    /// Drops the record of partial merges once the knowledge covers them.
    fn settle_partial(&mut self) {
        let knows = &self.knows;
        self.partial
            .retain(|c, h| knows.get(c).is_none_or(|mine| mine < h));
    }

    /// Updates what this replica knows of the sender. The sender's newest message (by its own
    /// clock) is the truth about it, even where it says less than an older one did (a replica
    /// restored from a backup, a record corrupted by a hostile message): saying less only makes
    /// the other side send more. Returns a claim about this replica that had to be ignored.
    fn record_sender(&mut self, changes: &Changes, before: u64, complete: bool) -> Option<u64> {
        let from = changes.sent_by;
        let own_clock = |k: &crate::engine::Knowledge| k.get(&from).copied().unwrap_or(0);
        let about_us = changes
            .client_states
            .iter()
            .find(|c| c.client_id == self.client)
            .map(|c| c.last_received)
            .unwrap_or(0);
        let version = self.version;
        let sender = self.peers.entry(from).or_default();
        let newest = own_clock(&changes.knows) >= own_clock(&sender.knows);
        if complete {
            sender.last_received = if newest {
                changes.from_version
            } else {
                sender.last_received.max(changes.from_version)
            };
        }
        let listed = changes.client_states.iter().map(|c| c.client_id);
        if newest {
            sender.knows = changes.knows.clone();
            sender.lists = listed.collect();
        } else {
            merge_knows(&mut sender.knows, &changes.knows);
            sender.lists.extend(listed);
        }
        if about_us > version {
            return Some(about_us);
        }
        sender.last_confirmed = if newest {
            about_us
        } else {
            sender.last_confirmed.max(about_us)
        };
        sender.last_acknowledged = sender.last_acknowledged.max(about_us);
        if about_us == before {
            // The sender held all of ours, so all we hold now it holds too: without this, merging
            // its changes would make "new" changes to send back, forever.
            sender.last_acknowledged = version;
        }
        None
    }

    /// Compares content digests when both replicas hold the same knowledge and neither holds
    /// changes beyond it (see docs/PROTOCOL.md, "Digest").
    fn compare_digest(
        &self,
        changes: &Changes,
        complete: bool,
    ) -> Option<std::result::Result<(), Divergence>> {
        let theirs = changes.digest?;
        let comparable = complete
            && self.partial.is_empty()
            && changes.partial.is_empty()
            && self.knows == changes.knows;
        let ours = self.digest();
        let verdict = if theirs == ours {
            Ok(())
        } else {
            Err(Divergence { ours, theirs })
        };
        comparable.then_some(verdict)
    }

    pub(super) fn check_node<'c>(
        &self,
        w: &'c WNode,
        loc: Loc,
        depth: usize,
        c: &mut Check<'c>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(Error::TooDeep {
                what: "document in changes",
                limit: MAX_DEPTH,
            });
        }
        if !c.seen.insert(w.id) {
            return c.fail(format!("node id {} appears twice", w.id));
        }
        // The root of a common document (`Document::common`) has clock 0: made by no client, so
        // no client's knowledge covers it.
        if !(matches!(loc, Loc::Root) && w.id.hlc == 0) {
            c.stamp(w.id)?;
        }
        let local = self.node_ix(w.id);
        self.check_place(w, &loc, local, c)?;
        match (&w.body, local.map(|ix| &self.nodes[ix as usize].body)) {
            (WBody::Obj(_), Some(Body::Arr(_))) => c.fail(format!(
                "node {} is an array here, an object in the changes",
                w.id
            )),
            (WBody::Arr(_), Some(Body::Obj(_))) => c.fail(format!(
                "node {} is an object here, an array in the changes",
                w.id
            )),
            (WBody::Obj(fields), lo) => {
                let lo = match lo {
                    Some(Body::Obj(o)) => Some(o),
                    _ => None,
                };
                self.check_fields(fields, lo, local, depth, c)
            }
            (WBody::Arr(elems), la) => {
                let la = match la {
                    Some(Body::Arr(a)) => Some(&**a),
                    _ => None,
                };
                self.check_elems(elems, la, local, depth, c)
            }
        }
    }

    /// A node known here must be at the same place (the same key or element of the same parent).
    fn check_place(&self, w: &WNode, loc: &Loc, local: Option<Ix>, c: &Check) -> Result<()> {
        match (loc, local) {
            (Loc::Root, Some(ROOT)) | (Loc::Key(..) | Loc::Elem(..), None) => Ok(()),
            (Loc::Root, _) => c.fail(format!(
                "the document root is {} here but {} in the changes",
                self.nodes[ROOT as usize].id, w.id
            )),
            (_, Some(ix)) => {
                let at_same_place = match (loc, self.nodes[ix as usize].parent.get()) {
                    (Loc::Key(Some(p), k), Some((lp, ls))) if *p == lp => {
                        matches!(&self.nodes[lp as usize].body, Body::Obj(o) if **self.keys.name(o.slots[ls as usize].key) == **k)
                    }
                    (Loc::Elem(Some(p), e), Some((lp, ls))) if *p == lp => {
                        matches!(&self.nodes[lp as usize].body, Body::Arr(a) if a.slots[ls as usize].id == *e)
                    }
                    _ => false,
                };
                if at_same_place {
                    Ok(())
                } else {
                    c.fail(format!("node {} is known here at another place", w.id))
                }
            }
        }
    }

    fn check_fields<'c>(
        &self,
        fields: &'c [WField],
        lo: Option<&Obj>,
        local: Option<Ix>,
        depth: usize,
        c: &mut Check<'c>,
    ) -> Result<()> {
        for f in fields {
            c.trail.push(Step::Key(&f.key));
            c.stamp(f.stamp)?;
            let lf = lo.and_then(|o| {
                o.slot_named(&self.keys, &f.key)
                    .map(|s| &o.slots[s as usize])
            });
            if let Some(lf) = lf
                && lf.stamp == f.stamp
                && c.changes.repair.is_none()
                && !self.same_val(&lf.val, f.val.as_ref())
            {
                return Err(Error::Diverged {
                    at: c.at(),
                    stamp: f.stamp.to_string(),
                });
            }
            match &f.val {
                Some(WVal::Node(child)) => {
                    self.check_node(child, Loc::Key(local, &f.key), depth + 1, c)?;
                }
                Some(WVal::Text(t)) => {
                    self.check_text(t, lf.map(|lf| (&lf.val, lf.stamp)), c)?;
                }
                _ => {}
            }
            c.trail.pop();
        }
        Ok(())
    }

    fn check_elems<'c>(
        &self,
        elems: &'c [WElem],
        la: Option<&Arr>,
        local: Option<Ix>,
        depth: usize,
        c: &mut Check<'c>,
    ) -> Result<()> {
        let ids: HashSet<Stamp> = elems.iter().map(|e| e.id).collect();
        if ids.len() != elems.len() {
            return c.fail("an element id appears twice in one array");
        }
        // In id order, so that an element's origin (always older) is decided first.
        let mut sorted: Vec<&WElem> = elems.iter().collect();
        sorted.sort_by_key(|e| e.id);
        for e in sorted {
            self.check_one(e, la, local, &|id| ids.contains(id), depth, c)?;
        }
        Ok(())
    }

    /// One element and what it holds, in an array at `depth`; `ids` as for `check_elem`.
    pub(super) fn check_one<'c>(
        &self,
        e: &'c WElem,
        la: Option<&Arr>,
        local: Option<Ix>,
        ids: &dyn Fn(&Stamp) -> bool,
        depth: usize,
        c: &mut Check<'c>,
    ) -> Result<()> {
        c.trail.push(Step::Elem(e.id));
        self.check_elem(e, la, ids, c)?;
        match &e.val {
            Some((WVal::Node(child), _)) if !c.skip.contains(&e.id) => {
                self.check_node(child, Loc::Elem(local, e.id), depth + 1, c)?;
            }
            Some((WVal::Text(t), _)) => {
                let le = la.and_then(|a| a.slot(e.id).map(|s| &a.slots[s as usize]));
                self.check_text(t, le.map(|le| (&le.val, le.vstamp)), c)?;
                if le.is_none() && c.skip_text.contains(&text_key(t)) {
                    // A new element whose text cannot be placed waits with it.
                    c.skip.insert(e.id);
                }
            }
            _ => {}
        }
        c.trail.pop();
        Ok(())
    }

    /// One element's own fields; `ids`: whether an id is among the changes' elements of the
    /// array.
    fn check_elem(
        &self,
        e: &WElem,
        la: Option<&Arr>,
        ids: &dyn Fn(&Stamp) -> bool,
        c: &mut Check,
    ) -> Result<()> {
        c.stamp(e.id)?;
        if let Some(o) = e.origin {
            if o >= e.id {
                return c.fail(format!("element {} is not newer than its origin {o}", e.id));
            }
            let held = la.is_some_and(|a| a.slot(o).is_some());
            if !held && (!ids(&o) || c.skip.contains(&o)) {
                // Its origin came in a message that has not arrived: merged once it has.
                c.skip.insert(e.id);
            }
        }
        if let Some(r) = e.right {
            if r >= e.id {
                return c.fail(format!(
                    "element {} is not newer than its right origin {r}",
                    e.id
                ));
            }
            let held = la.is_some_and(|a| a.slot(r).is_some());
            if !held && (!ids(&r) || c.skip.contains(&r)) {
                c.skip.insert(e.id);
            }
        }
        if let Some(r) = e.removed {
            c.stamp(r)?;
            if r <= e.id {
                return c.fail(format!("element {} removed before it was inserted", e.id));
            }
        }
        if let Some((_, vs)) = &e.val {
            c.stamp(*vs)?;
            if *vs < e.id {
                return c.fail(format!("element {} has a value older than itself", e.id));
            }
        }
        let le = la.and_then(|a| a.slot(e.id).map(|s| (a, &a.slots[s as usize])));
        if let Some((a, le)) = le {
            if a.link_id(le.origin) != e.origin || a.link_id(le.right) != e.right {
                return c.fail(format!("element {} has other origins here", e.id));
            }
            if let Some((v, vs)) = &e.val
                && le.removed().is_none()
                && le.vstamp == *vs
                && c.changes.repair.is_none()
                && !self.same_val(&le.val, Some(v))
            {
                return Err(Error::Diverged {
                    at: c.at(),
                    stamp: vs.to_string(),
                });
            }
        }
        Ok(())
    }

    fn same_val(&self, local: &Val, wire: Option<&WVal>) -> bool {
        match (local, wire) {
            (Val::Gone, None) => true,
            // One write of a string: the same text, whatever edits each side has merged since.
            (Val::Text(_), Some(WVal::Prim(Scalar::Str(_)) | WVal::Text(_)))
            | (Val::Prim(Scalar::Str(_)), Some(WVal::Text(_))) => true,
            (Val::Prim(a), Some(WVal::Prim(b))) => a == b,
            (Val::Node(n), Some(WVal::Node(w))) => self.nodes[*n as usize].id == w.id,
            _ => false,
        }
    }

    /// Writes a checked wire node into local node `ix` (which is reachable).
    pub(super) fn integrate(&mut self, w: &WNode, ix: Ix, m: &mut Merging) {
        match &w.body {
            WBody::Obj(fields) => {
                for f in fields {
                    if let Some(WVal::Text(t)) = &f.val
                        && m.skip_text.contains(&text_key(t))
                    {
                        continue;
                    }
                    let slot = self.field_slot(ix, &f.key);
                    let Body::Obj(o) = &self.nodes[ix as usize].body else {
                        return;
                    };
                    let local = &o.slots[slot as usize];
                    if f.stamp > local.stamp
                        || (m.repair
                            && f.stamp == local.stamp
                            && self.repair_wins(&local.val, f.val.as_ref()))
                    {
                        let val = match &f.val {
                            None => Val::Gone,
                            Some(v) => self.wire_val(v, (ix, slot), m.u),
                        };
                        self.write_field(ix, slot, val, f.stamp, m.u);
                        m.changed = true;
                    } else if f.stamp == local.stamp
                        && let Some(WVal::Text(t)) = &f.val
                    {
                        self.merge_text(ix, slot, t, m);
                    }
                    if let Some(WVal::Node(c)) = &f.val {
                        let Body::Obj(o) = &self.nodes[ix as usize].body else {
                            return;
                        };
                        if let Val::Node(cix) = o.slots[slot as usize].val
                            && self.nodes[cix as usize].id == c.id
                        {
                            self.integrate(c, cix, m);
                        }
                    }
                }
            }
            WBody::Arr(_) if self.stream_list(w.id, ix, m) => {}
            WBody::Arr(elems) => {
                let mut sorted: Vec<&WElem> =
                    elems.iter().filter(|e| !m.skip.contains(&e.id)).collect();
                sorted.sort_by_key(|e| e.id);
                // An array new here (every array of a full sync) gets room for all of it at once,
                // so that its id maps do not grow, and place their entries again, element by
                // element. Not one held already: room reserved at a full table is a new table.
                if self.arr(ix).slots.is_empty() {
                    let nested = sorted
                        .iter()
                        .filter(|e| matches!(e.val, Some((WVal::Node(_), _))))
                        .count();
                    self.reserve_nodes(nested);
                    self.arr_mut(ix).reserve(sorted.len());
                }
                for e in sorted {
                    self.integrate_one(e, ix, m);
                }
            }
        }
    }

    /// One checked element into local array `ix`, and what it holds.
    pub(super) fn integrate_one(&mut self, e: &WElem, ix: Ix, m: &mut Merging) {
        let slot = self.integrate_elem(e, ix, m);
        if let Some((WVal::Node(c), _)) = &e.val
            && let Val::Node(cix) = self.arr(ix).slots[slot as usize].val
            && self.nodes[cix as usize].id == c.id
        {
            self.integrate(c, cix, m);
        }
    }

    /// In a repair, of two different values under one stamp the one of greater rank is kept.
    fn repair_wins(&self, local: &Val, wire: Option<&WVal>) -> bool {
        match wire {
            None => false,
            // Two states of one text are merged, not ranked.
            Some(w) if self.same_val(local, Some(w)) => false,
            Some(w) => {
                !self.same_val(local, Some(w))
                    && (*local == Val::Gone || wire_value_rank(w) > self.local_value_rank(local))
            }
        }
    }

    fn integrate_elem(&mut self, e: &WElem, ix: Ix, m: &mut Merging) -> u32 {
        let u = m.u;
        let text_skipped =
            matches!(&e.val, Some((WVal::Text(t), _)) if m.skip_text.contains(&text_key(t)));
        if let Some(slot) = self.arr(ix).slot(e.id) {
            let el = &self.arr(ix).slots[slot as usize];
            let old_u = el.u;
            if el.removed().is_some() {
                return slot;
            }
            let newer_value = |vs: &Stamp, v: &WVal| {
                *vs > el.vstamp
                    || (m.repair && *vs == el.vstamp && self.repair_wins(&el.val, Some(v)))
            };
            if let Some(r) = e.removed {
                self.unhash(ix, slot);
                let a = self.arr_mut(ix);
                a.dead += 1;
                let el = &mut a.slots[slot as usize];
                el.remove(r);
                el.u = u;
                self.reindex(ix, slot, old_u, u);
                m.changed = true;
            } else if let Some((WVal::Text(t), vs)) = &e.val
                && *vs == el.vstamp
            {
                if !text_skipped {
                    self.merge_text(ix, slot, t, m);
                }
            } else if let Some((v, vs)) = &e.val
                && newer_value(vs, v)
                && !text_skipped
            {
                self.unhash(ix, slot);
                let val = self.wire_val(v, (ix, slot), u);
                let el = &mut self.arr_mut(ix).slots[slot as usize];
                el.val = val;
                el.vstamp = *vs;
                el.u = u;
                self.reindex(ix, slot, old_u, u);
                self.rehash(ix, slot);
                m.changed = true;
            }
            return slot;
        }
        let pos = place_elem(self.arr(ix), e);
        let slot = self.arr(ix).slots.len() as u32;
        let (val, vstamp) = match (&e.val, e.removed) {
            (Some((v, vs)), None) => (self.wire_val(v, (ix, slot), u), *vs),
            (_, Some(r)) => (Val::Gone, r),
            (None, None) => (Val::Gone, e.id),
        };
        let a = self.arr_mut(ix);
        // `check_elem` held back an element whose origins this array lacks, but for a hostile
        // object (an element id in two arrays, held back in one): then the origin is kept as
        // its stamp, placed as before.
        let origin = a.link_to(e.origin);
        let right = a.link_to(e.right);
        a.slots.push(Elem {
            id: e.id,
            origin,
            right,
            val,
            vstamp,
            u,
        });
        a.order.insert(pos, slot);
        a.index_last();
        a.last_pos = Some(pos);
        // Counted from the slot as made (removed exactly when it holds no value), as a load does.
        if a.slots[slot as usize].removed().is_some() {
            a.dead += 1;
        }
        self.reindex(ix, slot, 0, u);
        self.rehash(ix, slot);
        m.changed = true;
        slot
    }

    fn wire_val(&mut self, v: &WVal, parent: (Ix, u32), u: u64) -> Val {
        match v {
            WVal::Prim(p) => Val::Prim(p.clone()),
            WVal::Node(c) => Val::Node(self.node_for(c, parent, u)),
            WVal::Text(t) => {
                // New here: the sender's pieces, in its order, are the whole text.
                let pieces = t.pieces.iter().map(|p| Piece { u, ..p.clone() }).collect();
                let text = Text::from_pieces(t.id, t.init, t.ops.clone(), pieces);
                if text.is_whole() {
                    Val::Prim(Scalar::Str(text.to_string().into()))
                } else {
                    Val::Text(Box::new(text))
                }
            }
        }
    }

    /// Merges a text's pieces into the text held in slot `s` of node `n` (the same write).
    fn merge_text(&mut self, n: Ix, s: u32, w: &WText, m: &mut Merging) {
        let stamp = self.slot_stamp(n, s);
        let slot_u = self.slot_u(n, s);
        self.unhash(n, s);
        let mut t = match std::mem::replace(self.slot_val_mut(n, s), Val::Gone) {
            Val::Text(t) => t,
            Val::Prim(Scalar::Str(old)) => Box::new(Text::whole(&old, stamp, slot_u)),
            other => {
                *self.slot_val_mut(n, s) = other;
                self.rehash(n, s);
                return;
            }
        };
        let mut sorted: Vec<&Piece> = w.pieces.iter().collect();
        sorted.sort_by_key(|p| (p.id.hlc, p.id.client));
        let mut changed = false;
        for p in sorted {
            changed |= t.integrate(p, m.u);
        }
        for (c, h) in &w.ops {
            if t.ops.get(c).is_none_or(|mine| mine < h) {
                t.note_op(Stamp {
                    hlc: *h,
                    client: *c,
                });
                changed = true;
            }
        }
        *self.slot_val_mut(n, s) = if t.is_whole() {
            Val::Prim(Scalar::Str(t.to_string().into()))
        } else {
            Val::Text(t)
        };
        if changed {
            self.set_slot_u(n, s, m.u);
            m.changed = true;
        }
        self.rehash(n, s);
    }

    /// Checks a text's stamps, and leaves it out when a piece's origin is neither held here
    /// (`local`: the value and stamp of the slot it goes to) nor among its pieces.
    fn check_text(&self, w: &WText, local: Option<(&Val, Stamp)>, c: &mut Check) -> Result<()> {
        for (client, h) in &w.ops {
            c.stamp(Stamp {
                hlc: *h,
                client: *client,
            })?;
        }
        let init_end = w.id.hlc + u64::from(w.init);
        let mut ranges: HashMap<ClientId, Vec<(u64, u64)>> = HashMap::default();
        for p in &w.pieces {
            let end = p.id.hlc + u64::from(p.len);
            let initial = p.id.client == w.id.client && p.id.hlc >= w.id.hlc && end <= init_end;
            if !initial {
                c.stamp(p.last())?;
            }
            ranges.entry(p.id.client).or_default().push((p.id.hlc, end));
        }
        for r in ranges.values_mut() {
            r.sort_unstable();
        }
        let in_wire = |x: Stamp| {
            ranges.get(&x.client).is_some_and(|r| {
                let i = r.partition_point(|(s, _)| *s <= x.hlc);
                i > 0 && r[i - 1].1 > x.hlc
            })
        };
        let held = |x: Stamp| match local {
            Some((Val::Text(t), st)) if st == w.id => t.holds(x),
            Some((Val::Prim(Scalar::Str(s)), st)) if st == w.id => {
                x.client == w.id.client
                    && x.hlc >= w.id.hlc
                    && x.hlc < w.id.hlc + s.chars().count() as u64
            }
            _ => false,
        };
        for p in &w.pieces {
            let own = |x: Stamp| {
                x.client == p.id.client && x.hlc >= p.id.hlc && x.hlc < p.id.hlc + u64::from(p.len)
            };
            for o in [p.left, p.right].into_iter().flatten() {
                if own(o) {
                    return c.fail(format!(
                        "piece {} names one of its own characters as an origin",
                        p.id
                    ));
                }
                if !held(o) && !in_wire(o) {
                    c.skip_text.insert(text_key(w));
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The local node for a wire node, created empty (to be filled by `integrate`) if new.
    fn node_for(&mut self, w: &WNode, parent: (Ix, u32), u: u64) -> Ix {
        if let Some(ix) = self.node_ix(w.id) {
            return ix;
        }
        let ix = self.nodes.len() as Ix;
        self.nodes.push(Node {
            id: w.id,
            parent: Parent::of(Some(parent)),
            u,
            body: if w.is_array() {
                Body::Arr(Box::default())
            } else {
                Body::Obj(Obj::default())
            },
        });
        self.index_last_node();
        ix
    }
}

/// Position in document order of the element with id `id` (known to exist: checked before).
fn position_of(a: &Arr, id: Stamp) -> usize {
    if let Some(p) = a.last_pos
        && a.order
            .get(p)
            .is_some_and(|s| a.slots[*s as usize].id == id)
    {
        return p;
    }
    a.order
        .iter()
        .position(|s| a.slots[*s as usize].id == id)
        .unwrap_or(a.order.len().saturating_sub(1))
}

fn merge_knows(into: &mut crate::engine::wire::Knowledge, from: &crate::engine::wire::Knowledge) {
    for (c, h) in from {
        let e = into.entry(*c).or_default();
        *e = (*e).max(*h);
    }
}

/// Identifies a wire text within one merge.
fn text_key(t: &WText) -> usize {
    std::ptr::from_ref(t) as usize
}

/// Where a new element goes in document order: after its left origin, among the elements up to
/// its right origin, by the FugueMax rule (see `fugue.rs`).
fn place_elem(a: &Arr, e: &WElem) -> usize {
    let start = match e.origin {
        None => 0,
        Some(o) => position_of(a, o) + 1,
    };
    let mut region = Vec::new();
    for s in &a.order[start..] {
        let el = &a.slots[*s as usize];
        if Some(el.id) == e.right {
            break;
        }
        region.push(Item {
            id: el.id,
            left: a.link_id(el.origin),
            right: a.link_id(el.right),
        });
    }
    let new = Item {
        id: e.id,
        left: e.origin,
        right: e.right,
    };
    start + fugue::place(&new, &region)
}
