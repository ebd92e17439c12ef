//! The process's table of client ids: each distinct id is held once, and a [`ClientId`] is its
//! 4-byte number in this table.
//!
//! Every stamp names a client, and a replica holds a stamp per key, per array element and per
//! node: a million stamps for a 10 MB document, naming a handful of clients. With the 16 bytes of
//! the id inline a stamp was 24 bytes; with the table's number it is 16, and an element's
//! optional stamps need no extra tag (the number is never 0). Stamps still compare by the ids'
//! text (see `stamp.rs`); the table is only where that text lives.
//!
//! The table is shared by every replica in the process (stamps move between documents, changes
//! objects and knowledge maps as plain values) and only grows: an id read once stays, 16 bytes
//! plus its entry in the lookup map. Ids read from outside (`ClientId::parse`) are refused once
//! [`MAX_READ`] distinct ids are held, so that a flood of made-up ids from a misbehaving peer
//! is an error, not unbounded memory.
//!
//! Reads take no lock: the ids live in chunks that never move (chunk `k` holds `2^k` ids), each
//! id set once. Adding an id takes a lock; a one-entry cache per thread spares it for the run of
//! stamps of one client that a changes object is mostly made of.
//!
//! [`ClientId`]: crate::engine::ClientId

use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::{Mutex, OnceLock};

use crate::engine::HashMap;

/// An id's bytes.
pub(crate) type IdBytes = [u8; 16];

/// The id every replica knows without reading it: sixteen `0`s, the client of `Stamp::ZERO`.
/// Its number is 1.
pub(crate) const ZERO_ID: IdBytes = [b'0'; 16];
pub(crate) const ZERO_NUMBER: NonZeroU32 = NonZeroU32::MIN;

/// Most distinct ids the table takes from outside input (see the module documentation).
pub const MAX_READ: u32 = 1 << 20;

const CHUNKS: usize = 32;

type Chunk = Box<[OnceLock<IdBytes>]>;

static CHUNK: [OnceLock<Chunk>; CHUNKS] = [const { OnceLock::new() }; CHUNKS];

/// Number → index of its chunk and place in it (numbers start at 1: chunk `k` holds the
/// numbers `2^k ..= 2^(k+1) - 1`).
fn place(n: NonZeroU32) -> (usize, usize) {
    let k = n.ilog2();
    (k as usize, (n.get() - (1 << k)) as usize)
}

/// The bytes of the id numbered `n`. Every number in a `ClientId` was given out by [`number`],
/// after its bytes were set; an unknown number (none exists) reads as sixteen `?`.
pub(crate) fn bytes(n: NonZeroU32) -> IdBytes {
    if n == ZERO_NUMBER {
        return ZERO_ID;
    }
    let (k, i) = place(n);
    CHUNK[k]
        .get()
        .and_then(|c| c.get(i))
        .and_then(OnceLock::get)
        .copied()
        .unwrap_or([b'?'; 16])
}

struct Writer {
    numbers: HashMap<IdBytes, NonZeroU32>,
    next: u32,
}

static WRITER: Mutex<Option<Writer>> = Mutex::new(None);

thread_local! {
    static LAST: Cell<(IdBytes, u32)> = const { Cell::new(([0; 16], 0)) };
}

/// The number of the id `b`, adding it if it is new; `None` when it is new and the table
/// already holds `limit` ids.
pub(crate) fn number(b: IdBytes, limit: u32) -> Option<NonZeroU32> {
    if b == ZERO_ID {
        return Some(ZERO_NUMBER);
    }
    let (last, n) = LAST.get();
    if last == b
        && let Some(n) = NonZeroU32::new(n)
    {
        return Some(n);
    }
    // A panic while the lock was held cannot leave the table inconsistent (an id is set before
    // its number is handed out), so a poisoned lock is taken as it is.
    let mut guard = WRITER.lock().unwrap_or_else(|e| e.into_inner());
    let w = guard.get_or_insert_with(|| Writer {
        numbers: HashMap::default(),
        next: ZERO_NUMBER.get() + 1,
    });
    let n = match w.numbers.get(&b) {
        Some(n) => *n,
        None => {
            if w.next > limit || w.next == u32::MAX {
                return None;
            }
            let n = NonZeroU32::new(w.next)?;
            let (k, i) = place(n);
            let chunk =
                CHUNK[k].get_or_init(|| (0..1usize << k).map(|_| OnceLock::new()).collect());
            let _ = chunk.get(i).map(|slot| slot.set(b));
            w.numbers.insert(b, n);
            w.next += 1;
            n
        }
    };
    LAST.set((b, n.get()));
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_gets_one_number_and_reads_back() {
        let a = *b"tablemakeraaaaaa";
        let b = *b"tablemakerbbbbbb";
        let na = number(a, u32::MAX).unwrap();
        let nb = number(b, u32::MAX).unwrap();
        assert_ne!(na, nb);
        assert_eq!(number(a, u32::MAX), Some(na));
        assert_eq!(bytes(na), a);
        assert_eq!(bytes(nb), b);
        assert_eq!(number(ZERO_ID, 0), Some(ZERO_NUMBER));
        assert_eq!(bytes(ZERO_NUMBER), ZERO_ID);
        // A full table still knows the ids it holds, and refuses new ones.
        assert_eq!(number(a, 1), Some(na));
        assert_eq!(number(*b"tablemakercccccc", 1), None);
    }

    #[test]
    fn numbers_fill_chunks_in_order() {
        for n in [1u32, 2, 3, 4, 7, 8, 1 << 20, u32::MAX] {
            let (k, i) = place(NonZeroU32::new(n).unwrap());
            assert_eq!((1u64 << k) + i as u64, u64::from(n));
            assert!(i < 1 << k);
        }
    }
}
