//! The content digest: a checksum of a replica's live content that two replicas holding the same
//! changes must agree on, as differential synchronization guards each patch with a checksum of
//! the text it expects (Fraser, "Differential Synchronization", DocEng 2009).
//!
//! The digest is the wrapping sum (mod 2^64) of one hash per live slot of every reachable node: an
//! object key with a value, or an array element not removed. A slot's hash covers its node's id,
//! its key (or element id and origin), the stamp of its value and the value (a primitive's JSON
//! text, or a nested node's id). A sum can be kept up to date with each write: the old slot's hash
//! is subtracted and the new one added, and a subtree that stops being reachable is subtracted
//! whole. So keeping it costs one hash per changed slot, never a walk of the document.
//! docs/PROTOCOL.md ("Digest") gives the exact byte encoding.

use crate::engine::doc::{Body, Document, Ix, ROOT, Val};
use crate::engine::scalar::Scalar;
use crate::engine::stamp::Stamp;
use crate::engine::wire::WVal;

/// A 64-bit hash of a slot's encoding, read as little-endian 64-bit words (the last one padded
/// with zeros): each word is mixed in by `h = rotl((h ^ w) * K, 29)`, then the byte count, then the
/// SplitMix64 finalizer spreads the result, so that sums of hashes of similar slots cover the whole
/// range. A word at a time, not a byte, as it runs for every slot written.
struct SlotHasher {
    h: u64,
    /// Bytes not yet mixed (fewer than 8), little-endian in `pending`.
    pending: u64,
    filled: u32,
    len: u64,
}

const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl SlotHasher {
    fn new(tag: u8) -> Self {
        SlotHasher {
            h: 0x243f_6a88_85a3_08d3 ^ u64::from(tag),
            pending: 0,
            filled: 0,
            len: 0,
        }
    }
    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(MIX).rotate_left(29);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len += b.len() as u64;
        // Whole words wherever the pending word stands (a value after a one-byte tag starts
        // within a word), then the last bytes into the pending word.
        let mut words = b.chunks_exact(8);
        for w in &mut words {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            self.eight(u64::from_le_bytes(a));
        }
        let rest = words.remainder();
        if rest.is_empty() {
            return;
        }
        let mut a = [0u8; 8];
        a[..rest.len()].copy_from_slice(rest);
        let x = u64::from_le_bytes(a);
        let shift = 8 * self.filled;
        let filled = self.filled + rest.len() as u32;
        if filled < 8 {
            self.pending |= x << shift;
            self.filled = filled;
        } else {
            // The pending word is full (shift > 0 here: fewer than 8 bytes came).
            let w = self.pending | (x << shift);
            self.pending = x >> (64 - shift);
            self.filled = filled - 8;
            self.word(w);
        }
    }
    /// A length-prefixed field, so that no two encodings run together.
    fn field(&mut self, b: &[u8]) {
        self.len += 8;
        self.eight(b.len() as u64);
        self.bytes(b);
    }
    /// A stamp: its clock value (8 bytes, little-endian) and its client id (16 ASCII bytes).
    fn stamp(&mut self, s: Stamp) {
        let client = s.client.to_bytes();
        let (lo, hi) = client.split_at(8);
        let word = |b: &[u8]| b.try_into().map_or(0, u64::from_le_bytes);
        self.len += 24;
        self.eight(s.hlc);
        self.eight(word(lo));
        self.eight(word(hi));
    }
    /// Eight bytes (`x`, little-endian) without counting them: what `bytes` does with them,
    /// by shifts instead of a byte copy, wherever the pending word stands.
    fn eight(&mut self, x: u64) {
        if self.filled == 0 {
            self.word(x);
        } else {
            let shift = 8 * self.filled;
            let w = self.pending | (x << shift);
            self.pending = x >> (64 - shift);
            self.word(w);
        }
    }
    /// A primitive's JSON text as serde_json writes it, the common values without serde_json:
    /// a string with nothing to escape is its quoted bytes, a number its exact text.
    fn json(&mut self, p: &Scalar) {
        match p {
            // Without an early exit, so that the test runs over many bytes at a time.
            Scalar::Str(s)
                if !s
                    .bytes()
                    .fold(false, |e, b| e | (b == b'"') | (b == b'\\') | (b < 0x20)) =>
            {
                self.bytes(b"\"");
                self.bytes(s.as_bytes());
                self.bytes(b"\"");
            }
            // Writing into the hasher cannot fail.
            Scalar::Str(s) => {
                let _ = serde_json::to_writer(&mut *self, &**s);
            }
            Scalar::Int(i) => self.bytes(itoa::Buffer::new().format(*i).as_bytes()),
            Scalar::Num(t) => self.bytes(t.as_bytes()),
            Scalar::Bool(true) => self.bytes(b"true"),
            Scalar::Bool(false) => self.bytes(b"false"),
            Scalar::Null => self.bytes(b"null"),
        }
    }
    /// A slot value: `p` and a primitive's JSON text, or `n` and a nested node's id.
    fn value(&mut self, v: &Val, node_id: impl Fn(Ix) -> Stamp) -> bool {
        match v {
            Val::Prim(p) => {
                self.bytes(b"p");
                self.json(p);
            }
            Val::Text(_) => {
                // An edited string: its characters' hashes are added to the slot's hash (see
                // `slot_hash`), so that an edit changes the digest without hashing the slot again.
                self.bytes(b"t");
            }
            Val::Node(n) => {
                self.bytes(b"n");
                self.stamp(node_id(*n));
            }
            Val::Gone => return false,
        }
        true
    }
    fn finish(mut self) -> u64 {
        if self.filled != 0 {
            let w = self.pending;
            self.word(w);
        }
        let len = self.len;
        self.word(len);
        let mut z = self.h.wrapping_add(MIX);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl std::io::Write for SlotHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An edited text's characters' hash sum (0 for any other value).
fn text_sum(v: &Val) -> u64 {
    match v {
        Val::Text(t) => t.sum(),
        _ => 0,
    }
}

/// The rank of a value in a repair: the hash of its encoding. Two replicas that hold different
/// values under one stamp both keep the value of greater rank, so they agree without a winner
/// chosen by either side.
pub(crate) fn wire_value_rank(v: &WVal) -> u64 {
    let mut h = SlotHasher::new(b'v');
    match v {
        WVal::Prim(p) => {
            h.bytes(b"p");
            h.json(p);
        }
        WVal::Node(n) => {
            h.bytes(b"n");
            h.stamp(n.id);
        }
        WVal::Text(t) => {
            h.bytes(b"t");
            h.stamp(t.id);
        }
    }
    h.finish()
}

impl Document {
    /// The content digest (see the module documentation): equal on replicas that hold the same
    /// changes, whatever order they merged them in.
    pub fn digest(&self) -> u64 {
        if let Some(d) = self.digest.get() {
            return d;
        }
        let d = self.subtree_sum(ROOT);
        self.digest.set(Some(d));
        d
    }

    /// The rank of a local slot value, as `wire_value_rank` gives it for a wire value.
    pub(crate) fn local_value_rank(&self, v: &Val) -> u64 {
        let mut h = SlotHasher::new(b'v');
        h.value(v, |n| self.nodes[n as usize].id);
        h.finish()
    }

    /// The hash of slot `s` of node `n`, `None` when the slot holds nothing.
    fn slot_hash(&self, n: Ix, s: u32) -> Option<u64> {
        let node = &self.nodes[n as usize];
        match &node.body {
            Body::Obj(o) => {
                let f = &o.slots[s as usize];
                if matches!(f.val, Val::Gone) {
                    return None;
                }
                let mut h = SlotHasher::new(b'f');
                h.stamp(node.id);
                h.field(self.keys.name(f.key).as_bytes());
                h.stamp(f.stamp);
                h.value(&f.val, |n| self.nodes[n as usize].id)
                    .then(|| h.finish().wrapping_add(text_sum(&f.val)))
            }
            Body::Arr(a) => {
                let e = &a.slots[s as usize];
                if e.removed().is_some() {
                    return None;
                }
                let mut h = SlotHasher::new(b'e');
                h.stamp(node.id);
                h.stamp(e.id);
                match a.link_id(e.origin) {
                    Some(o) => h.stamp(o),
                    None => h.bytes(b"-"),
                }
                h.stamp(e.vstamp);
                h.value(&e.val, |n| self.nodes[n as usize].id)
                    .then(|| h.finish().wrapping_add(text_sum(&e.val)))
            }
        }
    }

    /// Sum of the hashes of every live slot in node `n` and below.
    fn subtree_sum(&self, n: Ix) -> u64 {
        let mut sum = 0u64;
        let mut stack = vec![n];
        while let Some(n) = stack.pop() {
            let count = match &self.nodes[n as usize].body {
                Body::Obj(o) => o.slots.len(),
                Body::Arr(a) => a.slots.len(),
            };
            for s in 0..count as u32 {
                if let Some(h) = self.slot_hash(n, s) {
                    sum = sum.wrapping_add(h);
                    if let Some(Val::Node(c)) = self.slot_val_ref(n, s) {
                        stack.push(*c);
                    }
                }
            }
        }
        sum
    }

    /// Takes slot `s` of node `n` out of the digest before it is rewritten, with the subtree
    /// it holds (which the rewrite makes unreachable).
    /// Nothing to do while the digest is not known yet (it is then computed whole when asked).
    pub(crate) fn unhash(&mut self, n: Ix, s: u32) {
        let Some(d) = self.digest.get() else {
            return;
        };
        let Some(h) = self.slot_hash(n, s) else {
            return;
        };
        let below = match self.slot_val_ref(n, s) {
            Some(Val::Node(c)) => self.subtree_sum(*c),
            _ => 0,
        };
        self.digest.set(Some(d.wrapping_sub(h).wrapping_sub(below)));
    }

    /// Puts slot `s` of node `n` into the digest after it was written. A new nested node's own
    /// slots are added as they are written.
    pub(crate) fn rehash(&mut self, n: Ix, s: u32) {
        if let Some(d) = self.digest.get()
            && let Some(h) = self.slot_hash(n, s)
        {
            self.digest.set(Some(d.wrapping_add(h)));
        }
    }

    /// Moves the digest by the change of an edited text's characters (`before` and `after`:
    /// the text's sums), when it is known.
    pub(crate) fn move_digest(&mut self, before: u64, after: u64) {
        if let Some(d) = self.digest.get() {
            self.digest
                .set(Some(d.wrapping_sub(before).wrapping_add(after)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash as the module documentation defines it, over all bytes at once: words of 8
    /// little-endian bytes, the last padded with zeros, then the byte count, then the finalizer.
    fn reference(tag: u8, all: &[u8]) -> u64 {
        let mut h = SlotHasher::new(tag);
        for w in all.chunks(8) {
            let mut a = [0u8; 8];
            a[..w.len()].copy_from_slice(w);
            h.word(u64::from_le_bytes(a));
        }
        h.len = all.len() as u64;
        h.finish()
    }

    /// However a slot's bytes arrive (serde_json writes a string in several pieces), the hash
    /// is the one of all its bytes: the digest must not change between versions of minisync.
    #[test]
    fn the_hash_does_not_depend_on_how_the_bytes_arrive() {
        let all: Vec<u8> = (0..200u32).map(|i| (i * 37 % 251) as u8).collect();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 63, 200] {
            let bytes = &all[..len];
            for step in 1..=11 {
                let mut h = SlotHasher::new(b'f');
                for piece in bytes.chunks(step) {
                    h.bytes(piece);
                }
                assert_eq!(
                    h.finish(),
                    reference(b'f', bytes),
                    "len {len} in pieces of {step}"
                );
            }
        }
    }

    /// The short cuts of `json` hash exactly what serde_json writes.
    #[test]
    fn values_hash_as_their_json_text() {
        let texts = [
            r#""plain""#,
            r#""é 🙂 \u007f""#,
            r#""q\"uote""#,
            r#""back\\slash""#,
            r#""\n\t\u0001""#,
            "0",
            "-7",
            "9223372036854775807",
            "-12.5e+3",
            "123456789012345678901234567890",
            "true",
            "false",
            "null",
            r#""""#,
        ];
        for text in texts {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut fast = SlotHasher::new(b'p');
            fast.json(&Scalar::from_value(&v).unwrap());
            let mut slow = SlotHasher::new(b'p');
            let _ = serde_json::to_writer(&mut slow, &v);
            assert_eq!(fast.finish(), slow.finish(), "{text}");
        }
    }

    /// Pinned: the digest of a replica as minisync computed it before this test was written.
    /// Replicas of different versions compare digests; a change here is a false divergence.
    #[test]
    fn the_digest_of_a_known_replica_is_unchanged() {
        use crate::engine::{Changes, ClientId, Document};
        let text = r#"{"minisync":"changes","formatVersion":3,"id":"pinned-doc","sentBy":"aaaaaaaaaaaaaaaa","fromVersion":3,"changesSince":0,"knows":{"aaaaaaaaaaaaaaaa":"1a0000000000010"},"clientStates":[],"changes":{"_s":{"id":"1a0000000000000-aaaaaaaaaaaaaaaa","k":{"n":"1a0000000000009-aaaaaaaaaaaaaaaa"}},"title":"milk and \"eggs\" é","n":12.5,"ok":true,"z":null,"list":{"_s":{"id":"1a0000000000001-aaaaaaaaaaaaaaaa","a":true},"v":[{"e":"1a0000000000002-aaaaaaaaaaaaaaaa","v":1},{"v":"two"},{"v":{"_s":{},"deep":{"_s":{"a":true,"id":"1a0000000000005-aaaaaaaaaaaaaaaa"},"v":[]}}}]}}}"#;
        let c = Changes::parse(text).unwrap();
        let client = ClientId::parse("bbbbbbbbbbbbbbbb").unwrap();
        let d = Document::from_changes_as(&c, client).unwrap();
        assert_eq!(d.digest(), 0xa919_a182_9093_c08e);
    }
}
