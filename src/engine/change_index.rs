//! The change index: for each slot changed after the index's *base* version, the local version
//! at which it last changed, in version order, so that a delta reads what changed after a version
//! without walking the document.
//!
//! A slot is written at the replica's newest version, so new entries go at the end of a sorted
//! vector. A slot written again leaves its old entry behind, stale: readers skip an entry whose
//! version is no longer its slot's (`Document::slot_u`), and the vector is rebuilt from the slots
//! when stale entries outnumber live ones. A sorted vector costs 16 bytes an entry where a B-tree
//! set cost about twice that.
//!
//! Slots last changed at or before the base have no entry. A replica loaded from its saved rows,
//! or built in one go (from a value, or from a full changes object), starts with its version as
//! the base and no entries: every delta it makes is for a reader that holds those slots or
//! more, save for a reader that is behind what was saved, and for that rare one
//! `Document::changed_after` walks the document instead. Entering 500,000 slots (100,000 records)
//! on every load cost 8 MB and a sort, for deltas that almost never reach that far back.

use crate::engine::doc::Ix;

/// (version, node, slot) after the base, sorted, some stale (see the module documentation).
#[derive(Debug, Clone, Default)]
pub(crate) struct ChangeIndex {
    entries: Vec<(u64, Ix, u32)>,
    stale: usize,
    /// Slots last changed at or before this version have no entry.
    base: u64,
}

impl ChangeIndex {
    /// An index with no entries, for a replica whose slots all changed at or before `base`.
    pub fn from_base(base: u64) -> Self {
        ChangeIndex {
            entries: Vec::new(),
            stale: 0,
            base,
        }
    }

    /// The index of these entries (one per slot changed after `base`, in any order).
    pub fn rebuilt(base: u64, mut entries: Vec<(u64, Ix, u32)>) -> Self {
        entries.sort_unstable();
        ChangeIndex {
            entries,
            stale: 0,
            base,
        }
    }

    /// The version at or before which slots have no entry.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Enters a slot written at version `u`; `old_u`: the version it had before (its entry, if
    /// it had one, is now stale).
    pub fn enter(&mut self, e: (u64, Ix, u32), old_u: u64) {
        if e.0 <= self.base {
            return;
        }
        if old_u > self.base {
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

    /// The entries after version `since`, in version order, stale ones included; `None` when
    /// `since` is before the base (the index does not know those slots).
    pub fn after(&self, since: u64) -> Option<&[(u64, Ix, u32)]> {
        if since < self.base {
            return None;
        }
        let at = self.entries.partition_point(|e| e.0 <= since);
        Some(&self.entries[at..])
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
        let mut i = ChangeIndex::rebuilt(0, vec![(2, 0, 1), (1, 0, 0), (1, 1, 0)]);
        i.enter((3, 0, 0), 1);
        i.enter((2, 5, 0), 0);
        i.enter((2, 5, 0), 0);
        assert_eq!(i.after(1), Some(&[(2, 0, 1), (2, 5, 0), (3, 0, 0)][..]));
        assert_eq!(i.after(0).map(<[_]>::len), Some(5));
        assert_eq!(i.after(3), Some(&[][..]));
        assert!(!i.wants_rebuild());
    }

    #[test]
    fn slots_at_or_before_the_base_have_no_entry() {
        let mut i = ChangeIndex::from_base(10);
        i.enter((11, 3, 0), 4);
        i.enter((12, 3, 1), 11);
        i.enter((9, 3, 2), 0);
        assert_eq!(i.after(10), Some(&[(11, 3, 0), (12, 3, 1)][..]));
        assert_eq!(i.after(9), None, "the index does not reach before its base");
        assert_eq!(i.base(), 10);
        // Only an entry that existed becomes stale.
        assert_eq!(i.stale, 1);
    }
}
