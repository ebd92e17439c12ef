//! Making changes objects: everything, or only what a given peer lacks.
//!
//! The slot index is read from the peer's `lastAcknowledged` onwards, so the work is proportional
//! to what changed since, not to the document. Slots whose every stamp the peer is known to hold
//! (from its own word or relayed by a third replica) are left out. Everything, for a reader that
//! holds nothing (a full sync), is a walk of the tree from the root instead.

use std::collections::BTreeSet;

use crate::engine::HashMap;
use crate::engine::doc::{Body, Document, Ix, ROOT, Val};
use crate::engine::scalar::Scalar;
use crate::engine::stamp::Stamp;
use crate::engine::wire::{Changes, Knowledge, WBody, WElem, WField, WNode, WText, WVal};

/// What a changes object carries: the slots chosen per node, and for texts what the receiver is
/// known to hold (`knows`) or the version after which changes are wanted (`since`).
struct Pick<'a> {
    /// `None`: every slot of every node reached from the root (everything, for a reader that
    /// holds nothing: no index walk and no set per node).
    include: Option<&'a HashMap<Ix, BTreeSet<u32>>>,
    knows: Option<&'a Knowledge>,
    since: u64,
}

impl Document {
    /// Everything: a changes object from which any new replica can be created.
    pub fn changes(&self) -> Changes {
        self.make_changes(0, None, true)
    }

    /// What `peer` is not known to hold, starting after the version of ours it last said it holds
    /// (its `lastReceived` of us, never further: it would take a later start for a gap). With no
    /// changes to carry it is still a valid acknowledgement (client states only).
    pub fn changes_for(&self, peer: crate::engine::ClientId) -> Changes {
        match self.peers.get(&peer) {
            Some(p) => self.make_changes(p.last_confirmed, Some(&p.knows), false),
            None => self.make_changes(0, None, false),
        }
    }

    /// What none of `clients` is known to lack, in one changes object that each of them can merge:
    /// the devices behind one mail address read the same mail. It starts after the oldest version
    /// any of them confirmed and leaves out only what every one of them is known to hold. Empty
    /// `clients`, or one never heard from: everything (as [`Self::changes`]).
    pub fn changes_for_all(&self, clients: &[crate::engine::ClientId]) -> Changes {
        match self.common_knowledge(clients) {
            Some((since, knows)) => self.make_changes(since, Some(&knows), false),
            None => self.changes(),
        }
    }

    /// As [`Self::changes_for_all`], but leaving out the changes of the clients in `delivered`
    /// (those that write to these devices themselves): for an acknowledgement, which goes out
    /// anyway and should not carry again what its authors deliver. The object does not claim
    /// what it leaves out: for each client of `delivered`, its `knows` says only what all of
    /// `clients` are known to hold, and the rest goes to `partial`, which covers the stamps
    /// carried on the way to other changes but from which a receiver learns nothing (so a
    /// receiver still takes the author's own mail as the source of those changes, and the
    /// author, seeing them unacknowledged, resends). Empty `clients`, or one never heard from:
    /// everything.
    pub fn changes_for_all_beyond(
        &self,
        clients: &[crate::engine::ClientId],
        delivered: &[crate::engine::ClientId],
    ) -> Changes {
        let Some((since, common)) = self.common_knowledge(clients) else {
            return self.changes();
        };
        // Our own changes are never left to anyone else.
        let delivered: Vec<_> = delivered.iter().filter(|d| **d != self.client).collect();
        let mut filter = common.clone();
        for d in &delivered {
            filter.insert(**d, u64::MAX);
        }
        let mut changes = self.make_changes(since, Some(&filter), false);
        for d in delivered {
            let Some(&ours) = changes.knows.get(d) else {
                continue;
            };
            let held = common.get(d).copied();
            if held.is_some_and(|h| h >= ours) {
                continue;
            }
            match held {
                Some(h) => changes.knows.insert(*d, h),
                None => changes.knows.remove(d),
            };
            let p = changes.partial.entry(*d).or_insert(0);
            *p = (*p).max(ours);
            changes.digest = None;
        }
        changes
    }

    /// Whether `clients` lack changes beyond those of the clients in `delivered`: the changes
    /// of clients that mail these devices themselves (a person's other devices write to every
    /// address they share a document with) are not a reason to write now. Only changes after
    /// this replica's version `after` count (what was sent to them up to then is on its way;
    /// 0: everything they have not confirmed).
    pub fn news_for_all(
        &self,
        clients: &[crate::engine::ClientId],
        delivered: &[crate::engine::ClientId],
        after: u64,
    ) -> bool {
        let (since, mut knows) = match self.common_knowledge(clients) {
            Some(known) => known,
            // Never heard from: they lack everything, but what only `delivered` wrote reaches
            // them anyway.
            None if clients.is_empty() && !delivered.is_empty() => (0, Knowledge::new()),
            None => return true,
        };
        for c in delivered {
            knows.insert(*c, u64::MAX);
        }
        self.make_changes(since.max(after), Some(&knows), false)
            .has_changes()
    }

    /// The clients that send their own changes to every one of `clients` themselves: those
    /// whose newest changes object listed all of them in its client table. A replica holds
    /// their changes back from `clients` instead of relaying them at once (each author writes
    /// to everyone it shares the document with), so that a change made among N replicas that
    /// all know each other costs N − 1 mails, not (N − 1)².
    pub fn authors_reaching(
        &self,
        clients: &[crate::engine::ClientId],
    ) -> Vec<crate::engine::ClientId> {
        if clients.is_empty() {
            return Vec::new();
        }
        self.peers
            .iter()
            .filter(|(c, p)| !clients.contains(c) && clients.iter().all(|t| p.lists.contains(t)))
            .map(|(c, _)| *c)
            .collect()
    }

    /// The oldest version `clients` confirmed and what all of them are known to hold; None when
    /// there are none or one was never heard from.
    fn common_knowledge(&self, clients: &[crate::engine::ClientId]) -> Option<(u64, Knowledge)> {
        let states: Vec<_> = clients
            .iter()
            .map(|c| self.peers.get(c))
            .collect::<Option<Vec<_>>>()?;
        let first = states.first()?;
        let since = states.iter().map(|p| p.last_confirmed).min().unwrap_or(0);
        let mut knows = first.knows.clone();
        for p in &states[1..] {
            knows.retain(|c, h| match p.knows.get(c) {
                Some(theirs) => {
                    *h = (*h).min(*theirs);
                    true
                }
                None => false,
            });
        }
        Some((since, knows))
    }

    /// Everything changed after this replica's own version `version`, for any reader (the shared
    /// folder's `changes.latest.json`).
    pub fn changes_since(&self, version: u64) -> Changes {
        self.make_changes(version, None, false)
    }

    fn make_changes(&self, since: u64, knows: Option<&Knowledge>, full: bool) -> Changes {
        debug_assert!(self.is_whole(), "changes of a replica loaded in part");
        // For a reader that holds nothing, everything: walked from the root, no index.
        let include = (since != 0 || knows.is_some()).then(|| self.changed_slots(since, knows));
        let nothing = match &include {
            None => self.node_len(ROOT) == 0,
            Some(i) => i.is_empty(),
        };
        let root = if nothing && !full {
            None
        } else {
            let pick = Pick {
                include: include.as_ref(),
                knows,
                since,
            };
            Some(self.wire_node(ROOT, &pick))
        };
        Changes {
            doc_id: self.doc_id.clone(),
            sent_by: self.client,
            from_version: self.version,
            changes_since: since,
            knows: self.knows.clone(),
            partial: self.partial.clone(),
            client_states: self.client_states(),
            root,
            digest: self.partial.is_empty().then(|| self.digest()),
            repair: None,
            writes_to: Vec::new(),
        }
    }

    /// The slots changed after `since` that a reader with knowledge `knows` may lack, with the
    /// slots that lead to them from the root: per node, its slot numbers.
    fn changed_slots(&self, since: u64, knows: Option<&Knowledge>) -> HashMap<Ix, BTreeSet<u32>> {
        let mut include: HashMap<Ix, BTreeSet<u32>> = HashMap::default();
        let mut attached = HashMap::default();
        for &(u, n, s) in self.changed_after(since).iter() {
            if self.slot_u(n, s) != u
                || knows.is_some_and(|k| self.known_to(k, n, s))
                || !self.attached(n, &mut attached)
            {
                continue;
            }
            let mut node = n;
            let mut slot = s;
            loop {
                if !include.entry(node).or_default().insert(slot) {
                    break;
                }
                match self.nodes[node as usize].parent.get() {
                    Some((p, ps)) => {
                        node = p;
                        slot = ps;
                    }
                    None => break,
                }
            }
        }
        include
    }

    /// How many slots node `n` has.
    fn node_len(&self, n: Ix) -> usize {
        match &self.nodes[n as usize].body {
            Body::Obj(o) => o.slots.len(),
            Body::Arr(a) => a.slots.len(),
        }
    }

    /// Moves `peer`'s `lastAcknowledged` past every version whose changes the peer is known to
    /// hold already (typically its own changes, merged here after it last confirmed a version).
    /// Without this, mail that crosses in flight leaves a peer that holds everything looking
    /// behind for ever, as nothing would ever be sent that it could acknowledge. The scan stops
    /// at the first change the peer lacks, so it costs no more than the next changes object.
    pub(crate) fn advance_acknowledged(&mut self, peer: crate::engine::ClientId) {
        let Some(p) = self.peers.get(&peer) else {
            return;
        };
        // A peer that knows at least what this replica knows, with nothing held beyond that,
        // holds every change: no need to look at them (after a full sync, 500,000 slots).
        let covered = self.partial.is_empty()
            && self
                .knows
                .iter()
                .all(|(c, h)| p.knows.get(c).is_some_and(|theirs| theirs >= h));
        if covered {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.last_acknowledged = p.last_acknowledged.max(self.version);
            }
            return;
        }
        let mut attached = HashMap::default();
        let mut upto = self.version;
        for &(v, n, s) in self.changed_after(p.last_acknowledged).iter() {
            if self.slot_u(n, s) == v
                && !self.known_to(&p.knows, n, s)
                && self.attached(n, &mut attached)
            {
                upto = v - 1;
                break;
            }
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.last_acknowledged = p.last_acknowledged.max(upto);
        }
    }

    /// Whether a peer with knowledge `k` holds every stamp of a slot (for a text, also every
    /// edit of it).
    fn known_to(&self, k: &Knowledge, n: Ix, s: u32) -> bool {
        let has = |st: Stamp| k.get(&st.client).is_some_and(|h| *h >= st.hlc);
        let edits_known = |v: &Val| match v {
            Val::Text(t) => t
                .ops
                .iter()
                .all(|(c, h)| k.get(c).is_some_and(|mine| mine >= h)),
            _ => true,
        };
        match &self.nodes[n as usize].body {
            Body::Obj(o) => {
                let f = &o.slots[s as usize];
                has(f.stamp) && edits_known(&f.val)
            }
            Body::Arr(a) => {
                let e = &a.slots[s as usize];
                has(e.id) && has(e.vstamp) && edits_known(&e.val)
            }
        }
    }

    /// The wire form of a slot value.
    fn emit_val(&self, v: &Val, pick: &Pick) -> WVal {
        match v {
            Val::Prim(p) => WVal::Prim(p.clone()),
            Val::Text(t) if t.is_whole() => WVal::Prim(Scalar::Str(t.to_string().into())),
            Val::Text(t) => WVal::Text(Box::new(WText {
                id: t.id,
                init: t.init,
                ops: t.ops.clone(),
                pieces: t.pieces_for(pick.knows, pick.since),
            })),
            Val::Node(c) => WVal::Node(Box::new(self.wire_node(*c, pick))),
            Val::Gone => WVal::Prim(Scalar::Null),
        }
    }

    /// The wire form of node `n` with the slots chosen for it (recursion depth is bounded by the
    /// document depth limit).
    fn wire_node(&self, n: Ix, pick: &Pick) -> WNode {
        let node = &self.nodes[n as usize];
        let empty = BTreeSet::new();
        let chosen = pick.include.map(|i| i.get(&n).unwrap_or(&empty));
        let all = 0..self.node_len(n) as u32;
        let slots: Box<dyn Iterator<Item = u32>> = match chosen {
            Some(set) => Box::new(set.iter().copied()),
            None => Box::new(all),
        };
        let wval = |v: &Val| self.emit_val(v, pick);
        let body = match &node.body {
            Body::Obj(o) => WBody::Obj(
                slots
                    .map(|s| {
                        let f = &o.slots[s as usize];
                        WField {
                            key: self.keys.name(f.key).clone(),
                            val: (f.val != Val::Gone).then(|| wval(&f.val)),
                            stamp: f.stamp,
                        }
                    })
                    .collect(),
            ),
            Body::Arr(a) => {
                let mut elems: Vec<WElem> = slots
                    .map(|s| {
                        let e = &a.slots[s as usize];
                        WElem {
                            id: e.id,
                            origin: a.link_id(e.origin),
                            right: a.link_id(e.right),
                            val: e.removed().is_none().then(|| (wval(&e.val), e.vstamp)),
                            removed: e.removed(),
                        }
                    })
                    .collect();
                elems.sort_by_key(|e| e.id);
                WBody::Arr(elems)
            }
        };
        WNode {
            id: node.id,
            u: node.u,
            body,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::engine::{Document, Knowledge};

    /// A full changes object made by walking the tree is the one the index gives for a reader
    /// known to hold nothing: overwritten nodes, removed elements, tombstones and texts alike.
    #[test]
    fn everything_walked_is_everything_indexed() {
        let mut a =
            Document::new(&json!({"a": {"x": 1}, "list": [1, 2, {"y": "text"}], "t": "hello"}))
                .unwrap();
        let mut b = Document::from_changes(&a.changes()).unwrap();
        a.set("a", json!({"replaced": true})).unwrap();
        a.remove_at("list", 0).unwrap();
        a.remove("t").unwrap();
        a.set("t2", json!("long text here")).unwrap();
        a.splice_text("t2", 5, 0, "er").unwrap();
        b.set("list[2].y", json!("theirs")).unwrap();
        b.push("list", json!([[]])).unwrap();
        a.apply(&b.changes_for(a.client_id())).unwrap();
        let none = Knowledge::new();
        for full in [true, false] {
            let walked = a.make_changes(0, None, full);
            let indexed = a.make_changes(0, Some(&none), full);
            assert_eq!(walked.to_value(), indexed.to_value());
        }
        let empty = Document::new(&json!({})).unwrap();
        assert!(empty.make_changes(0, None, false).root.is_none());
        assert!(empty.make_changes(0, None, true).root.is_some());
    }

    /// A slot rewritten many times leaves stale entries in the change index, which is rebuilt
    /// when they outnumber the rest; deltas made across rebuilds still carry exactly what the
    /// peer lacks.
    #[test]
    fn deltas_are_right_across_stale_entries_and_rebuilds() {
        let mut a = Document::new(&json!({"a": 0, "b": "x", "list": [1, 2, 3]})).unwrap();
        let mut b = Document::from_changes(&a.changes()).unwrap();
        a.apply(&b.changes_for(a.client_id())).unwrap();
        for i in 1..=300 {
            a.set("a", json!(i)).unwrap();
            if i % 7 == 0 {
                a.set("list[1]", json!(i)).unwrap();
            }
            if i % 50 == 0 {
                b.apply(&a.changes_for(b.client_id())).unwrap();
                a.apply(&b.changes_for(a.client_id())).unwrap();
                assert_eq!(b.to_json(), a.to_json(), "after {i} writes");
            }
        }
        // Nothing left to send, and a delta from an old version carries only the live slots.
        assert!(!a.changes_for(b.client_id()).has_changes());
        let d = a.changes_since(1).to_value();
        assert_eq!(d["changes"]["a"], json!(300));
        let entries = a.index.after(a.index.base()).map_or(0, <[_]>::len);
        assert!(entries < 64 + 6, "{entries} entries");
    }

    /// A replica loaded from its saved rows keeps no change-index entry for what it loaded; a
    /// peer behind what was saved still gets exactly what it lacks (the document is walked), and
    /// edits after the load are indexed again.
    #[test]
    fn a_peer_behind_a_loaded_replica_gets_what_it_lacks() {
        let records: Vec<_> = (0..50).map(|i| json!({"n": i})).collect();
        let mut a = Document::new(&json!({"r": records, "t": "text"})).unwrap();
        let mut b = Document::from_changes(&a.changes()).unwrap();
        assert_eq!(
            b.index.after(b.index.base()),
            Some(&[][..]),
            "built in one go"
        );
        a.apply(&b.changes_for(a.client_id())).unwrap();
        a.set("r[3].n", json!(-3)).unwrap();
        a.splice_text("t", 0, 0, "a ").unwrap();
        a.remove("r[7]").unwrap();
        let parts = a.save_parts(None);
        let (mut a, _) = Document::restore_parts(&parts.head, parts.nodes).unwrap();
        assert_eq!(
            a.index.after(a.index.base()),
            Some(&[][..]),
            "nothing entered on load"
        );
        assert_eq!(a.index.after(0), None);
        let delta = a.changes_for(b.client_id());
        assert!(delta.has_changes());
        b.apply(&delta).unwrap();
        assert_eq!(b.to_json(), a.to_json());
        a.set("r[10].n", json!(-10)).unwrap();
        assert_eq!(a.index.after(a.index.base()).map(<[_]>::len), Some(1));
        b.apply(&a.changes_for(b.client_id())).unwrap();
        a.apply(&b.changes_for(a.client_id())).unwrap();
        assert_eq!(b.to_json(), a.to_json());
        assert_eq!(b.digest(), a.digest());
        assert!(!a.changes_for(b.client_id()).has_changes());
    }
}
