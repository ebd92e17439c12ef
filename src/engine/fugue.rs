//! Where a new list item goes: the FugueMax ordering rule, shared by array elements and the
//! characters of a text.
//!
//! Every item names the item it was typed after (its left origin, `None` for the list start) and
//! the item that was next at that moment (its right origin, `None` for the list end). Runs
//! inserted concurrently at one place then end up one after the other, never interleaved, in
//! whatever direction each was typed: FugueMax, Weidner & Kleppmann, "The Art of the Fugue:
//! Minimizing Interleaving in Collaborative Text Editing", IEEE TPDS 2025 (arXiv 2305.00583),
//! which proves it maximally non-interleaving. The integration below is the list form of that
//! tree order given in josephg/reference-crdts (`integrateYjsMod`, checked there against
//! `fugue-max-simple.ts`): scan the items between the two origins and stop by the rule below.

use crate::engine::HashMap;

use crate::engine::stamp::Stamp;

/// An item as the ordering rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub id: Stamp,
    pub left: Option<Stamp>,
    pub right: Option<Stamp>,
}

/// Where `new` goes among `region`, the items strictly between its left origin and its right
/// origin (or the list end) in list order: the index in `region` it goes before
/// (`region.len()`: right before the right origin).
pub(crate) fn place(new: &Item, region: &[Item]) -> usize {
    if region.is_empty() {
        return 0;
    }
    let at: HashMap<Stamp, usize> = region.iter().enumerate().map(|(i, x)| (x.id, i)).collect();
    let end = region.len() as i64;
    // Positions relative to the region: -1 is the new item's left origin, `end` its right origin.
    let left_pos = |x: &Item| -> i64 {
        if x.left == new.left {
            -1
        } else {
            match x.left.and_then(|l| at.get(&l)) {
                Some(i) => *i as i64,
                None => -2, // before the left origin
            }
        }
    };
    let right_pos = |x: &Item| -> i64 {
        if x.right == new.right {
            end
        } else {
            match x.right.and_then(|r| at.get(&r)) {
                Some(i) => *i as i64,
                None => end + 1, // beyond the right origin
            }
        }
    };
    let mut dest = 0usize;
    let mut scanning = false;
    for (i, other) in region.iter().enumerate() {
        if !scanning {
            dest = i;
        }
        let ol = left_pos(other);
        if ol < -1 {
            return dest;
        }
        if ol > -1 {
            continue;
        }
        let or = right_pos(other);
        if or < end {
            scanning = true;
        } else if or == end && precedes(new.id, other.id) {
            return dest;
        } else {
            scanning = false;
        }
    }
    if scanning { dest } else { region.len() }
}

/// Of two items with the same origins, which comes first: the lower client id, as the reference
/// orders agents (the clock decides only between items of one client).
fn precedes(a: Stamp, b: Stamp) -> bool {
    (a.client, a.hlc) < (b.client, b.hlc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::stamp::ClientId;

    /// A plain list replica, integrating items one by one, to test the rule alone.
    struct List(Vec<Item>);

    impl List {
        fn pos(&self, id: Option<Stamp>) -> Option<usize> {
            id.and_then(|id| self.0.iter().position(|x| x.id == id))
        }
        fn integrate(&mut self, it: Item) {
            let start = self.pos(it.left).map_or(0, |p| p + 1);
            let stop = self.pos(it.right).unwrap_or(self.0.len()).max(start);
            let d = place(&it, &self.0[start..stop]);
            self.0.insert(start + d, it);
        }
        /// A local insert at index `i`: returns the item, already placed.
        fn local(&mut self, i: usize, id: Stamp) -> Item {
            let it = Item {
                id,
                left: i.checked_sub(1).map(|p| self.0[p].id),
                right: self.0.get(i).map(|x| x.id),
            };
            self.0.insert(i, it);
            it
        }
    }

    fn client(n: u8) -> ClientId {
        ClientId::parse(&format!("{n:016x}")).expect("valid id")
    }

    /// Types `n` items at `at`, forward (each after the last) or backward (each at `at`).
    fn typed(l: &mut List, c: ClientId, hlc0: u64, n: u64, at: usize, forward: bool) -> Vec<Item> {
        (0..n)
            .map(|k| {
                let i = if forward { at + k as usize } else { at };
                l.local(
                    i,
                    Stamp {
                        hlc: hlc0 + k,
                        client: c,
                    },
                )
            })
            .collect()
    }

    fn owners(l: &List) -> Vec<ClientId> {
        l.0.iter().map(|x| x.id.client).collect()
    }

    fn runs_of(l: &List) -> usize {
        let o = owners(l);
        1 + o.windows(2).filter(|w| w[0] != w[1]).count()
    }

    #[test]
    fn concurrent_runs_never_interleave_in_any_direction_or_order() {
        for (fa, fb) in [(true, true), (false, false), (true, false), (false, true)] {
            let mut base = List(Vec::new());
            typed(&mut base, client(9), 1, 2, 0, true);
            let mut a = List(base.0.clone());
            let mut b = List(base.0.clone());
            let ia = typed(&mut a, client(1), 100, 5, 1, fa);
            let ib = typed(&mut b, client(2), 100, 5, 1, fb);
            for k in 0..5 {
                // b receives a's items in order; a receives b's in reverse message order where
                // origins allow (they arrive in order of their stamps within one run).
                b.integrate(ia[k]);
                a.integrate(ib[k]);
            }
            assert_eq!(a.0, b.0, "converged ({fa}, {fb})");
            // The two base items plus two runs, one after the other.
            let o = owners(&a);
            assert_eq!(runs_of(&a), 4, "not interleaved ({fa}, {fb}): {o:?}");
        }
    }

    #[test]
    fn three_replicas_converge_without_interleaving() {
        let mut base = List(Vec::new());
        typed(&mut base, client(9), 1, 2, 0, true);
        let mut reps: Vec<List> = (0..3).map(|_| List(base.0.clone())).collect();
        let mut made = Vec::new();
        for (r, dir) in [true, false, true].into_iter().enumerate() {
            made.push(typed(&mut reps[r], client(r as u8 + 1), 200, 4, 1, dir));
        }
        for (r, rep) in reps.iter_mut().enumerate() {
            for (s, items) in made.iter().enumerate() {
                if s != r {
                    for it in items {
                        rep.integrate(*it);
                    }
                }
            }
        }
        assert_eq!(reps[0].0, reps[1].0);
        assert_eq!(reps[1].0, reps[2].0);
        assert_eq!(runs_of(&reps[0]), 5, "{:?}", owners(&reps[0]));
    }
}
