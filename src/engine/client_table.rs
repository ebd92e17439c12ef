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
//! plus its entry in the lookup map. New ids read from outside (`ClientId::parse`) are refused
//! once [`MAX_READ`] of them were added, so that a flood of made-up ids from a misbehaving peer
//! is an error, not unbounded memory. Ids the process makes (a new replica's, one derived from a
//! document's name) do not count; random text that is not a client id (document ids, message
//! ids, file names) is made by `random_text` and never enters the table.
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

/// 16 random lower-case letters and digits (the form of an id `ClientId::random` makes), for
/// whatever needs a random name that is not a client id: it is not added to the table.
pub(crate) fn random_text() -> IdBytes {
    use rand::Rng;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    let mut v = [0u8; 16];
    for b in &mut v {
        *b = ALPHABET[rng.random_range(0..ALPHABET.len())];
    }
    v
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
    /// How many of the ids were added as read from outside (see [`number`]).
    read: u32,
}

static WRITER: Mutex<Option<Writer>> = Mutex::new(None);

thread_local! {
    static LAST: Cell<(IdBytes, u32)> = const { Cell::new(([0; 16], 0)) };
}

/// The number of the id `b`, adding it if it is new. `read_limit`: `Some(n)` for an id read from
/// outside, refused (`None`) when it is new and `n` ids read from outside were added already;
/// `None` for an id this process made (random, or derived from a name), never refused while
/// numbers last.
pub(crate) fn number(b: IdBytes, read_limit: Option<u32>) -> Option<NonZeroU32> {
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
        read: 0,
    });
    let n = match w.numbers.get(&b) {
        Some(n) => *n,
        None => {
            if read_limit.is_some_and(|limit| w.read >= limit) || w.next == u32::MAX {
                return None;
            }
            if read_limit.is_some() {
                w.read += 1;
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
        let na = number(a, Some(u32::MAX)).unwrap();
        let nb = number(b, None).unwrap();
        assert_ne!(na, nb);
        assert_eq!(number(a, Some(u32::MAX)), Some(na));
        assert_eq!(bytes(na), a);
        assert_eq!(bytes(nb), b);
        assert_eq!(number(ZERO_ID, Some(0)), Some(ZERO_NUMBER));
        assert_eq!(bytes(ZERO_NUMBER), ZERO_ID);
        // Past the limit of ids read from outside: the ids held are still known, a new one read
        // is refused, and a new one this process makes is not.
        assert_eq!(number(a, Some(0)), Some(na));
        assert_eq!(number(*b"tablemakercccccc", Some(0)), None);
        assert!(number(*b"tablemakerdddddd", None).is_some());
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
