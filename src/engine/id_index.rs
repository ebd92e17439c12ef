//! Finding a slot by its stamp: the map from a node's id to its index in the replica, and from an
//! element's id to its slot in its array.
//!
//! A `HashMap<Stamp, u32>` holds each key twice (once in the map, once in the slot it names) and
//! takes 24 bytes per entry, about a tenth of a 10 MB document's replica for its two maps. Here
//! the table holds only the 4-byte slot numbers; a lookup compares the stamp of the slot a number
//! names (hashbrown's `HashTable`, a Swiss table of SIMD-probed control bytes, lets the caller
//! hash and compare). Hashing is foldhash with a random seed of each index's own, as the engine's
//! other maps (see [`crate::engine::HashMap`]).

use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::engine::stamp::Stamp;

#[derive(Clone, Default)]
pub(crate) struct IdIndex {
    table: HashTable<u32>,
    state: foldhash::fast::RandomState,
}

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdIndex({} ids)", self.len())
    }
}

impl IdIndex {
    /// An empty index with room for `n` ids.
    pub fn with_capacity(n: usize) -> Self {
        IdIndex {
            table: HashTable::with_capacity(n),
            state: Default::default(),
        }
    }

    /// How many ids it holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// The slot of `id`; `stamp` gives the stamp of a slot.
    pub fn get(&self, id: Stamp, stamp: impl Fn(u32) -> Stamp) -> Option<u32> {
        let hash = self.state.hash_one(id);
        self.table.find(hash, |s| stamp(*s) == id).copied()
    }

    /// Adds `id` at `slot` unless `id` is held already (then `false`, and the index unchanged).
    /// `stamp` gives the stamp of a slot held (to place the entries again when the table grows).
    pub fn insert(&mut self, id: Stamp, slot: u32, stamp: impl Fn(u32) -> Stamp) -> bool {
        let state = &self.state;
        let hash = state.hash_one(id);
        if self.table.find(hash, |s| stamp(*s) == id).is_some() {
            return false;
        }
        self.table
            .insert_unique(hash, slot, |s| state.hash_one(stamp(*s)));
        true
    }

    /// Room for `more` ids without growing.
    pub fn reserve(&mut self, more: usize, stamp: impl Fn(u32) -> Stamp) {
        let state = &self.state;
        self.table.reserve(more, |s| state.hash_one(stamp(*s)));
    }

    /// Forgets every id.
    pub fn clear(&mut self) {
        self.table.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ClientId;

    #[test]
    fn finds_each_slot_by_its_stamp_and_refuses_an_id_twice() {
        let client = ClientId::random();
        let stamps: Vec<Stamp> = (0..10_000u64)
            .map(|hlc| Stamp {
                hlc: hlc * 7 + 1,
                client,
            })
            .collect();
        let mut ix = IdIndex::default();
        for (s, id) in stamps.iter().enumerate() {
            assert!(ix.insert(*id, s as u32, |s| stamps[s as usize]));
        }
        assert_eq!(ix.len(), stamps.len());
        assert!(!ix.insert(stamps[5], 9, |s| stamps[s as usize]));
        for (s, id) in stamps.iter().enumerate() {
            assert_eq!(ix.get(*id, |s| stamps[s as usize]), Some(s as u32));
        }
        let absent = Stamp { hlc: 2, client };
        assert_eq!(ix.get(absent, |s| stamps[s as usize]), None);
        ix.clear();
        assert_eq!(ix.get(stamps[0], |s| stamps[s as usize]), None);
    }
}
