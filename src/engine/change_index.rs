//! The change index: for each slot, the local version at which it last changed, in version order,
//! so that a delta reads what changed after a version without walking the document.
//!
//! A slot is written at the replica's newest version, so new entries go at the end of a sorted
//! vector. A slot written again leaves its old entry behind, stale: readers skip an entry whose
//! version is no longer its slot's (`Document::slot_u`), and the vector is rebuilt from the slots
//! when stale entries outnumber live ones. A sorted vector costs 16 bytes an entry where a B-tree
//! set cost about twice that, and is built in one sort (a replica has an entry per key and per
//! array element: 500,000 for 100,000 records).

use crate::engine::doc::Ix;

/// (version, node, slot), sorted, some stale (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeIndex {
    entries: Vec<(u64, Ix, u32)>,
    stale: usize,
}

impl ChangeIndex {
    /// The index of these entries (one per slot, in any order).
    pub fn from_entries(mut entries: Vec<(u64, Ix, u32)>) -> Self {
        entries.sort_unstable();
        ChangeIndex { entries, stale: 0 }
    }

    /// Enters a slot written at version `u`; `replaced`: it had an entry before (now stale).
    pub fn enter(&mut self, e: (u64, Ix, u32), replaced: bool) {
        if replaced {
            self.stale += 1;
        }
        match self.entries.last() {
            None => self.entries.push(e),
            Some(last) if *last < e => self.entries.push(e),
            Some(_) => {
                let at = self.entries.partition_point(|x| *x < e);
                if self.entries.get(at) != Some(&e) {
                    self.entries.insert(at, e);
                }
            }
        }
    }

    /// The entries after version `since`, in version order, stale ones included.
    pub fn after(&self, since: u64) -> &[(u64, Ix, u32)] {
        let at = self.entries.partition_point(|e| e.0 <= since);
        &self.entries[at..]
    }

    /// Whether stale entries outnumber live ones (then rebuild it from the slots).
    pub fn wants_rebuild(&self) -> bool {
        self.stale > 64 && self.stale * 2 > self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_stay_sorted_and_are_read_after_a_version() {
        let mut i = ChangeIndex::from_entries(vec![(2, 0, 1), (1, 0, 0), (1, 1, 0)]);
        i.enter((3, 0, 0), true);
        i.enter((2, 5, 0), false);
        i.enter((2, 5, 0), false);
        assert_eq!(i.after(1), &[(2, 0, 1), (2, 5, 0), (3, 0, 0)]);
        assert_eq!(i.after(0).len(), 5);
        assert!(i.after(3).is_empty());
        assert!(!i.wants_rebuild());
    }
}
