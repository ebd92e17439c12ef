//! Text: a string whose characters merge one by one.
//!
//! Every character has an id (a stamp) and the two origins the ordering rule needs (see
//! `fugue.rs`). Characters inserted together by one replica form a *run*: consecutive clock values
//! of one client, each typed after the one before, all with the same right origin. A run is
//! stored as one [`Piece`] (id of its first character, length, origins, the characters), so a
//! string written whole costs one piece, and so does a sentence typed without moving the cursor.
//! Removed characters stay as pieces without content (tombstones), because later inserts may
//! name them as origins. Positions are character indexes (Unicode scalar values).
//!
//! Pieces live in chunks of at most `2 * CHUNK`, each knowing how many live characters it holds,
//! so finding a position costs a walk over chunk counts from the last position used (typing
//! moves little), and an insert moves at most one chunk's pieces.

use std::cell::Cell;
use std::collections::BTreeMap;

use crate::engine::fugue::{self, Item};
use crate::engine::stamp::{ClientId, Stamp};
use crate::engine::wire::Knowledge;

const CHUNK: usize = 16;

/// A run of characters (or of removed characters).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    /// Id of the first character; the others follow with consecutive clock values.
    pub id: Stamp,
    pub len: u32,
    /// Left origin of the first character; each later one's is the character before it.
    pub left: Option<Stamp>,
    /// Right origin of every character of the piece.
    pub right: Option<Stamp>,
    /// Local version of its last change.
    pub u: u64,
    /// The characters; `None` once removed.
    pub s: Option<String>,
}

impl Piece {
    pub fn char_id(&self, k: u32) -> Stamp {
        Stamp {
            hlc: self.id.hlc + u64::from(k),
            client: self.id.client,
        }
    }
    pub fn last(&self) -> Stamp {
        self.char_id(self.len - 1)
    }
    pub fn live(&self) -> bool {
        self.s.is_some()
    }
    pub(crate) fn end(&self) -> u64 {
        self.id.hlc + u64::from(self.len)
    }
    fn item(&self, k: u32) -> Item {
        Item {
            id: self.char_id(k),
            left: if k == 0 {
                self.left
            } else {
                Some(self.char_id(k - 1))
            },
            right: self.right,
        }
    }
    /// Cuts the piece before character `k` (0 < k < len) and returns the second part.
    fn split_off(&mut self, k: u32) -> Piece {
        let s = self.s.as_mut().map(|s| {
            let at = s.char_indices().nth(k as usize).map_or(s.len(), |(b, _)| b);
            s.split_off(at)
        });
        let rest = Piece {
            id: self.char_id(k),
            len: self.len - k,
            left: Some(self.char_id(k - 1)),
            right: self.right,
            u: self.u,
            s,
        };
        self.len = k;
        rest
    }
    /// Whether `next` holds the characters right after this piece's run, with the same right
    /// origin (its left origin aside).
    fn continued_by_removed(&self, next: &Piece) -> bool {
        next.id.client == self.id.client && next.id.hlc == self.end() && next.right == self.right
    }
    /// Whether `next` continues this piece's run in the same state (so the two can be one).
    fn continued_by(&self, next: &Piece) -> bool {
        next.id.client == self.id.client
            && next.id.hlc == self.end()
            && next.left == Some(self.last())
            && next.right == self.right
            && next.live() == self.live()
    }
}

#[derive(Debug, Clone, Default)]
struct Chunk {
    pieces: Vec<Piece>,
    /// Live characters in the chunk.
    live: usize,
    /// The highest `u` of its pieces: a delta after a version skips every chunk at or below it.
    max_u: u64,
}

/// A mergeable string (see the module documentation).
#[derive(Debug, Clone)]
pub(crate) struct Text {
    /// The write that created the text (the stamp of the slot holding it).
    pub id: Stamp,
    /// Length of the run written with the text: its characters' ids start at `id`.
    pub init: u32,
    /// For each client that edited the text since, the clock value of its latest edit.
    pub ops: Knowledge,
    chunks: Vec<Chunk>,
    len: usize,
    /// Sum of the hashes of the live characters (see `char_hash`).
    sum: u64,
    /// Highest clock value of any character id (at least `id`): local inserts take ids above it.
    top: u64,
    /// Ids held, per client: start → end (exclusive) of each range.
    held: BTreeMap<ClientId, BTreeMap<u64, u64>>,
    /// (chunk, live characters before it) of the last position found.
    hint: Cell<(usize, usize)>,
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.len == other.len && self.sum == other.sum
    }
}

/// The live characters: the string's value.
impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in self.pieces() {
            if let Some(s) = &p.s {
                f.write_str(s)?;
            }
        }
        Ok(())
    }
}

/// A character's contribution to the digest: its id and the character, mixed (SplitMix64).
pub(crate) fn char_hash(id: Stamp, c: char) -> u64 {
    let b = id.client.to_bytes();
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&b[..8]);
    hi.copy_from_slice(&b[8..]);
    let mut z = id
        .hlc
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(u64::from_le_bytes(lo).rotate_left(17))
        .wrapping_add(u64::from_le_bytes(hi).rotate_left(41))
        .wrapping_add(u64::from(c as u32).wrapping_mul(0xd6e8_feb8_6659_fd93));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn piece_sum(p: &Piece) -> u64 {
    p.s.as_deref().map_or(0, |s| {
        s.chars().enumerate().fold(0u64, |acc, (k, c)| {
            acc.wrapping_add(char_hash(p.char_id(k as u32), c))
        })
    })
}

impl Text {
    /// A text written whole by the write `id`.
    pub fn whole(s: &str, id: Stamp, u: u64) -> Text {
        let n = s.chars().count() as u32;
        let pieces = if n == 0 {
            Vec::new()
        } else {
            vec![Piece {
                id,
                len: n,
                left: None,
                right: None,
                u,
                s: Some(s.to_string()),
            }]
        };
        Text::from_pieces(id, n, Knowledge::new(), pieces)
    }

    /// A text from its pieces in document order (a saved replica, or a text new to this replica
    /// as its sender holds it).
    pub fn from_pieces(id: Stamp, init: u32, ops: Knowledge, pieces: Vec<Piece>) -> Text {
        let mut t = Text {
            id,
            init,
            ops,
            chunks: Vec::new(),
            len: 0,
            sum: 0,
            top: id.hlc + u64::from(init.saturating_sub(1)),
            held: BTreeMap::new(),
            hint: Cell::new((0, 0)),
        };
        for group in pieces.chunks(CHUNK) {
            let mut c = Chunk::default();
            for p in group {
                c.max_u = c.max_u.max(p.u);
                t.note_held(p);
                t.sum = t.sum.wrapping_add(piece_sum(p));
                if p.live() {
                    c.live += p.len as usize;
                }
            }
            t.len += c.live;
            c.pieces = group.to_vec();
            t.chunks.push(c);
        }
        if t.chunks.is_empty() {
            t.chunks.push(Chunk::default());
        }
        t
    }

    fn note_held(&mut self, p: &Piece) {
        self.note_range(p.id.client, p.id.hlc, p.end());
    }

    /// Records that ids `start .. end` of `client` are held.
    fn note_range(&mut self, client: ClientId, start: u64, end: u64) {
        self.top = self.top.max(end - 1);
        let ranges = self.held.entry(client).or_default();
        // Typing: the ids continue (or lie within) the client's highest range, or start a new
        // highest one.
        if let Some(mut last) = ranges.last_entry() {
            let (s, e) = (*last.key(), *last.get());
            if s <= start && start <= e {
                if end > e {
                    *last.get_mut() = end;
                }
                return;
            }
            if start > e {
                ranges.insert(start, end);
                return;
            }
        }
        let (mut start, mut end) = (start, end);
        if let Some((&s, &e)) = ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        while let Some((&s, &e)) = ranges.range(start..=end).next() {
            ranges.remove(&s);
            end = end.max(e);
        }
        ranges.insert(start, end);
    }

    /// Whether character `id` is held (live or removed).
    pub fn holds(&self, id: Stamp) -> bool {
        self.held_until(id) > id.hlc
    }

    /// The end of the held range containing `id`, or `id.hlc` when it is not held.
    fn held_until(&self, id: Stamp) -> u64 {
        self.held
            .get(&id.client)
            .and_then(|r| r.range(..=id.hlc).next_back())
            .filter(|(_, e)| **e > id.hlc)
            .map_or(id.hlc, |(_, e)| *e)
    }

    /// The length in characters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The digest contribution of the live characters.
    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// The lowest clock value a new local character may take.
    pub fn next_id_floor(&self) -> u64 {
        self.top + 1
    }

    /// Whether the text is exactly as written whole (it then travels as a plain string).
    pub fn is_whole(&self) -> bool {
        let mut first_two = self.pieces().take(2);
        self.ops.is_empty()
            && match (first_two.next(), first_two.next()) {
                (None, _) => self.init == 0,
                (Some(p), None) => {
                    p.id == self.id
                        && p.len == self.init
                        && p.left.is_none()
                        && p.right.is_none()
                        && p.live()
                }
                (Some(_), Some(_)) => false,
            }
    }

    pub fn pieces(&self) -> impl Iterator<Item = &Piece> {
        self.chunks.iter().flat_map(|c| c.pieces.iter())
    }

    /// Records an edit by `stamp` (an insert's first id or a removal's stamp).
    pub fn note_op(&mut self, stamp: Stamp) {
        let e = self.ops.entry(stamp.client).or_default();
        *e = (*e).max(stamp.hlc);
    }

    /// (chunk, piece, offset) of live character `at` (< len).
    fn locate(&self, at: usize) -> (usize, usize, u32) {
        let (mut ci, mut start) = self.hint.get();
        if ci >= self.chunks.len() {
            (ci, start) = (0, 0);
        }
        while start > at && ci > 0 {
            ci -= 1;
            start -= self.chunks[ci].live;
        }
        while ci + 1 < self.chunks.len() && start + self.chunks[ci].live <= at {
            start += self.chunks[ci].live;
            ci += 1;
        }
        self.hint.set((ci, start));
        let mut rem = at - start;
        for (pi, p) in self.chunks[ci].pieces.iter().enumerate() {
            if p.live() {
                if rem < p.len as usize {
                    return (ci, pi, rem as u32);
                }
                rem -= p.len as usize;
            }
        }
        // `at < len` and the chunk counts are exact, so the walk ends inside a piece.
        (ci, self.chunks[ci].pieces.len().saturating_sub(1), 0)
    }

    /// Changes chunk `ci`'s live count (and the position hint after it) by `delta`.
    fn adjust(&mut self, ci: usize, delta: isize) {
        let c = &mut self.chunks[ci];
        c.live = c.live.wrapping_add_signed(delta);
        self.len = self.len.wrapping_add_signed(delta);
        let (hc, hs) = self.hint.get();
        if hc > ci {
            self.hint.set((hc, hs.wrapping_add_signed(delta)));
        }
    }

    /// Splits piece `pi` of chunk `ci` before character `k` when inside it; returns the index of
    /// the piece that starts at `k`.
    fn split_at(&mut self, ci: usize, pi: usize, k: u32) -> usize {
        let p = &mut self.chunks[ci].pieces[pi];
        if k == 0 {
            return pi;
        }
        if k >= p.len {
            return pi + 1;
        }
        let rest = p.split_off(k);
        self.chunks[ci].pieces.insert(pi + 1, rest);
        pi + 1
    }

    /// The id of the first character after piece `pi` of chunk `ci` (live or not).
    fn next_id(&self, ci: usize, pi: usize) -> Option<Stamp> {
        self.chunks[ci]
            .pieces
            .get(pi + 1)
            .or_else(|| self.chunks[ci + 1..].iter().find_map(|c| c.pieces.first()))
            .map(|p| p.id)
    }

    /// Inserts piece `p` at index `pi` of chunk `ci`, splitting the chunk when it grows too long.
    fn put(&mut self, ci: usize, pi: usize, p: Piece) {
        self.note_held(&p);
        self.sum = self.sum.wrapping_add(piece_sum(&p));
        let live = if p.live() { p.len as isize } else { 0 };
        self.chunks[ci].max_u = self.chunks[ci].max_u.max(p.u);
        self.chunks[ci].pieces.insert(pi, p);
        self.adjust(ci, live);
        if self.chunks[ci].pieces.len() > 2 * CHUNK {
            let rest = self.chunks[ci].pieces.split_off(CHUNK);
            let live: usize = rest
                .iter()
                .filter(|p| p.live())
                .map(|p| p.len as usize)
                .sum();
            let max_u = rest.iter().map(|p| p.u).max().unwrap_or(0);
            self.chunks[ci].live -= live;
            self.chunks.insert(
                ci + 1,
                Chunk {
                    pieces: rest,
                    live,
                    max_u,
                },
            );
            let (hc, hs) = self.hint.get();
            if hc > ci {
                self.hint.set((hc + 1, hs));
            } else if hc == ci {
                self.hint.set((0, 0));
            }
        }
    }

    /// Inserts `s` at character index `at` (≤ len) as a local edit whose first character gets
    /// `id` (at least [`Text::next_id_floor`]); the caller's clock must cover `id` + length − 1.
    pub fn insert(&mut self, at: usize, s: &str, id: Stamp, u: u64) {
        let n = s.chars().count() as u32;
        if n == 0 {
            return;
        }
        self.note_op(id);
        let (ci, pi, left) = if at == 0 {
            (0, 0, None)
        } else {
            let (ci, pi, off) = self.locate(at - 1);
            let pi = self.split_at(ci, pi, off + 1) - 1;
            (ci, pi + 1, Some(self.chunks[ci].pieces[pi].last()))
        };
        let right = if at == 0 {
            self.pieces().next().map(|p| p.id)
        } else {
            self.next_id(ci, pi - 1)
        };
        if at > 0 {
            let prev = &mut self.chunks[ci].pieces[pi - 1];
            if prev.live()
                && prev.id.client == id.client
                && prev.end() == id.hlc
                && prev.right == right
            {
                let add: u64 = s.chars().enumerate().fold(0u64, |a, (k, c)| {
                    a.wrapping_add(char_hash(prev.char_id(prev.len + k as u32), c))
                });
                prev.len += n;
                prev.u = u;
                self.chunks[ci].max_u = self.chunks[ci].max_u.max(u);
                let prev = &mut self.chunks[ci].pieces[pi - 1];
                if let Some(t) = prev.s.as_mut() {
                    t.push_str(s);
                }
                let (client, start, end) = (prev.id.client, prev.id.hlc, prev.end());
                self.sum = self.sum.wrapping_add(add);
                self.note_range(client, start, end);
                self.adjust(ci, n as isize);
                return;
            }
        }
        let p = Piece {
            id,
            len: n,
            left,
            right,
            u,
            s: Some(s.to_string()),
        };
        self.put(ci, pi, p);
    }

    /// Removes `count` characters from index `at` as a local edit by `stamp`; returns them.
    pub fn delete(&mut self, at: usize, count: usize, stamp: Stamp, u: u64) -> String {
        let mut out = String::new();
        let mut left = count.min(self.len.saturating_sub(at));
        if left > 0 {
            self.note_op(stamp);
        }
        while left > 0 {
            let (ci, pi, off) = self.locate(at);
            if let Some(k) = self.delete_into_next(ci, pi, off, left, u, &mut out) {
                left -= k;
                continue;
            }
            let pi = self.split_at(ci, pi, off);
            let k = left.min(self.chunks[ci].pieces[pi].len as usize) as u32;
            self.split_at(ci, pi, k);
            if let Some(s) = self.kill(ci, pi, u) {
                out.push_str(&s);
            }
            left -= k as usize;
            self.coalesce(ci, pi);
        }
        out
    }

    /// Backspacing over the end of a run whose removed continuation follows it (the common
    /// case when typing is corrected): the removed characters move from the live piece into the
    /// removed one that continues it, without splitting and joining pieces. Returns how many
    /// characters were removed, or `None` (nothing done) when piece `pi` of chunk `ci` and its
    /// successor are not of that shape for a removal of up to `count` characters from offset `off`.
    fn delete_into_next(
        &mut self,
        ci: usize,
        pi: usize,
        off: u32,
        count: usize,
        u: u64,
        out: &mut String,
    ) -> Option<usize> {
        let ps = &mut self.chunks[ci].pieces;
        let (p, q) = match ps.get_mut(pi..pi + 2)? {
            [p, q] => (p, q),
            _ => return None,
        };
        let k = p.len - off;
        let fits = off > 0 && (k as usize) <= count && p.live() && !q.live();
        if !fits || q.left != Some(p.last()) || !p.continued_by_removed(q) {
            return None;
        }
        let s = p.s.as_mut()?;
        let at = s
            .char_indices()
            .nth(off as usize)
            .map_or(s.len(), |(b, _)| b);
        let gone = s.split_off(at);
        let sum = gone.chars().enumerate().fold(0u64, |acc, (j, c)| {
            acc.wrapping_add(char_hash(p.char_id(off + j as u32), c))
        });
        out.push_str(&gone);
        p.len = off;
        q.id.hlc -= u64::from(k);
        q.len += k;
        q.left = Some(p.last());
        q.u = u;
        self.chunks[ci].max_u = self.chunks[ci].max_u.max(u);
        self.sum = self.sum.wrapping_sub(sum);
        self.adjust(ci, -(k as isize));
        Some(k as usize)
    }

    /// Marks piece `pi` of chunk `ci` removed; returns its characters.
    fn kill(&mut self, ci: usize, pi: usize, u: u64) -> Option<String> {
        let p = &mut self.chunks[ci].pieces[pi];
        let sum = piece_sum(p);
        let s = p.s.take()?;
        p.u = u;
        let n = p.len as isize;
        self.chunks[ci].max_u = self.chunks[ci].max_u.max(u);
        self.sum = self.sum.wrapping_sub(sum);
        self.adjust(ci, -n);
        Some(s)
    }

    /// Joins piece `pi` of chunk `ci` with its neighbours where they continue one run.
    fn coalesce(&mut self, ci: usize, pi: usize) {
        let ps = &mut self.chunks[ci].pieces;
        let mut pi = pi;
        if pi > 0 && ps[pi - 1].continued_by(&ps[pi]) {
            pi -= 1;
        }
        while pi + 1 < ps.len() && ps[pi].continued_by(&ps[pi + 1]) {
            let next = ps.remove(pi + 1);
            let p = &mut ps[pi];
            p.len += next.len;
            p.u = p.u.max(next.u);
            if let (Some(a), Some(b)) = (p.s.as_mut(), next.s) {
                a.push_str(&b);
            }
        }
    }

    /// (chunk, piece, offset) of the character with id `id`, live or not.
    fn find(&self, id: Stamp) -> Option<(usize, usize, u32)> {
        for (ci, c) in self.chunks.iter().enumerate() {
            for (pi, p) in c.pieces.iter().enumerate() {
                if p.id.client == id.client && p.id.hlc <= id.hlc && id.hlc < p.end() {
                    return Some((ci, pi, (id.hlc - p.id.hlc) as u32));
                }
            }
        }
        None
    }

    /// Merges a piece from a peer: characters not held are placed by the ordering rule, held ones
    /// are removed when the piece says so. Returns whether anything changed.
    pub fn integrate(&mut self, w: &Piece, u: u64) -> bool {
        let mut changed = false;
        let mut k = 0u32;
        while k < w.len {
            let at = w.char_id(k);
            let held_end = self.held_until(at);
            if held_end > at.hlc {
                let n = ((held_end - at.hlc).min(u64::from(w.len - k))) as u32;
                if !w.live() {
                    changed |= self.remove_ids(at, n, u);
                }
                k += n;
                continue;
            }
            // Not held: up to the next held id of that client, or the piece's end.
            let next_held = self
                .held
                .get(&at.client)
                .and_then(|r| r.range(at.hlc..).next())
                .map_or(u64::MAX, |(s, _)| *s);
            let n = ((next_held - at.hlc).min(u64::from(w.len - k))) as u32;
            let mut part = w.clone();
            if k > 0 {
                part = part.split_off(k);
            }
            if n < part.len {
                part.split_off(n);
            }
            self.insert_remote(part, u);
            changed = true;
            k += n;
        }
        changed
    }

    /// Places a piece none of whose characters are held.
    fn insert_remote(&mut self, mut p: Piece, u: u64) {
        p.u = u;
        let (ci, pi) = match p.left.and_then(|l| self.find(l)) {
            None => (0, 0),
            Some((ci, pi, off)) => (ci, self.split_at(ci, pi, off + 1)),
        };
        // The region between the left and right origins, one item per character.
        let mut region = Vec::new();
        let mut spots = Vec::new();
        'walk: for (cj, c) in self.chunks.iter().enumerate().skip(ci) {
            let from = if cj == ci { pi } else { 0 };
            for (pj, q) in c.pieces.iter().enumerate().skip(from) {
                for k in 0..q.len {
                    if Some(q.char_id(k)) == p.right {
                        spots.push((cj, pj, k));
                        break 'walk;
                    }
                    region.push(q.item(k));
                    spots.push((cj, pj, k));
                }
            }
        }
        let d = fugue::place(&p.item(0), &region);
        let (ci, pi) = match spots.get(d) {
            Some(&(cj, pj, k)) => (cj, self.split_at(cj, pj, k)),
            None => {
                let last = self.chunks.len() - 1;
                (last, self.chunks[last].pieces.len())
            }
        };
        self.put(ci, pi, p);
    }

    /// Removes the held characters `id .. id + n` (one client's consecutive ids).
    fn remove_ids(&mut self, id: Stamp, n: u32, u: u64) -> bool {
        let mut changed = false;
        let end = id.hlc + u64::from(n);
        let mut at = id;
        while at.hlc < end {
            let Some((ci, pi, off)) = self.find(at) else {
                break;
            };
            let p = &self.chunks[ci].pieces[pi];
            let take = ((p.end() - at.hlc).min(end - at.hlc)) as u32;
            let next = Stamp {
                hlc: at.hlc + u64::from(take),
                client: at.client,
            };
            if p.live() {
                let pi = self.split_at(ci, pi, off);
                self.split_at(ci, pi, take);
                self.kill(ci, pi, u);
                self.coalesce(ci, pi);
                changed = true;
            }
            at = next;
        }
        changed
    }

    /// The pieces a peer lacks: with its knowledge `knows`, characters it does not hold and
    /// removals made after version `since`; without, every piece changed after `since`.
    /// A replica that confirmed version `since` holds every piece of version `since` or before,
    /// so only pieces changed after it are candidates, found chunk by chunk.
    pub fn pieces_for(&self, knows: Option<&Knowledge>, since: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let changed = self
            .chunks
            .iter()
            .filter(|c| c.max_u > since)
            .flat_map(|c| c.pieces.iter())
            .filter(|p| p.u > since);
        for p in changed {
            let Some(k) = knows else {
                out.push(p.clone());
                continue;
            };
            if !p.live() {
                out.push(p.clone());
                continue;
            }
            let known = self.known_prefix(p, k);
            if known == 0 {
                out.push(p.clone());
            } else if known < p.len {
                out.push(p.clone().split_off(known));
            }
        }
        out
    }

    /// How many of the piece's first characters a replica with knowledge `k` holds.
    fn known_prefix(&self, p: &Piece, k: &Knowledge) -> u32 {
        let has = |s: Stamp| k.get(&s.client).is_some_and(|h| *h >= s.hlc);
        let initial = p.id.client == self.id.client
            && p.id.hlc >= self.id.hlc
            && p.id.hlc < self.id.hlc + u64::from(self.init);
        if initial && has(self.id) {
            let in_init = (self.id.hlc + u64::from(self.init) - p.id.hlc) as u32;
            if in_init >= p.len {
                return p.len;
            }
            let rest = p.clone().split_off(in_init);
            return in_init + self.known_prefix(&rest, k);
        }
        match k.get(&p.id.client) {
            Some(h) if *h >= p.id.hlc => ((*h - p.id.hlc + 1).min(u64::from(p.len))) as u32,
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(hlc: u64, c: &str) -> Stamp {
        Stamp {
            hlc,
            client: ClientId::parse(c).expect("id"),
        }
    }

    #[test]
    fn typing_extends_one_run_and_deletes_leave_tombstones() {
        let a = "aaaaaaaaaaaaaaaa";
        let mut t = Text::whole("hello", st(10, a), 1);
        t.insert(5, " world", st(100, a), 2);
        t.insert(11, "!", st(106, a), 3);
        assert_eq!(t.to_string(), "hello world!");
        assert_eq!(t.pieces().count(), 2, "the typed run is one piece");
        let gone = t.delete(0, 6, st(200, a), 4);
        assert_eq!(gone, "hello ");
        assert_eq!(t.to_string(), "world!");
        assert_eq!(t.len(), 6);
        assert!(t.holds(st(10, a)));
    }

    #[test]
    fn backspacing_moves_characters_into_the_removed_continuation() {
        let a = "aaaaaaaaaaaaaaaa";
        let mut t = Text::whole("", st(10, a), 1);
        t.insert(0, "hello world", st(100, a), 2);
        assert_eq!(t.delete(10, 1, st(200, a), 3), "d");
        assert_eq!(t.delete(9, 1, st(201, a), 4), "l");
        assert_eq!(t.delete(5, 4, st(202, a), 5), " wor");
        assert_eq!(t.to_string(), "hello");
        let p: Vec<&Piece> = t.pieces().collect();
        assert_eq!(p.len(), 2, "one live run and one removed run: {p:?}");
        assert_eq!((p[1].id, p[1].len, p[1].u), (st(105, a), 6, 5));
        assert_eq!(p[1].left, Some(st(104, a)));
        assert!(!p[1].live());
        let rebuilt = Text::from_pieces(t.id, t.init, t.ops.clone(), t.pieces().cloned().collect());
        assert_eq!((rebuilt.len(), rebuilt.sum()), (t.len(), t.sum()));
        assert!(t.holds(st(110, a)));
    }

    #[test]
    fn remote_pieces_merge_and_sum_matches() {
        let (a, b) = ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb");
        let base = Text::whole("ac", st(10, a), 1);
        let mut x = base.clone();
        let mut y = base.clone();
        x.insert(1, "XX", st(20, a), 2);
        y.insert(1, "YY", st(20, b), 2);
        let px = x.pieces_for(None, 1);
        let py = y.pieces_for(None, 1);
        for p in &py {
            x.integrate(p, 3);
        }
        for p in &px {
            y.integrate(p, 3);
        }
        assert_eq!(x.to_string(), y.to_string());
        assert_eq!(x.sum(), y.sum());
        assert!(x.to_string() == "aXXYYc" || x.to_string() == "aYYXXc");
    }
}
