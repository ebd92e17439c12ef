//! Local edits of strings, and updates by difference: splices at character indexes, and replacing a string by another as
//! the difference between the two (differential synchronization: Fraser, "Differential
//! Synchronization", DocEng 2009 — the old string is the shadow, the diff the edit).
//!
//! The difference is computed by `dissimilar` (Google's diff-match-patch algorithm with its
//! semantic cleanup, so a changed word becomes one removal and one insertion). It works on
//! Unicode scalar values, so no edit ever splits a character; it does not know grapheme
//! clusters, so an edit inside an emoji sequence or after a combining mark may touch part of one.

use crate::engine::doc::{Body, Document, Ix, ROOT, Val, visible_pos};
use crate::engine::error::{Error, Result};
use crate::engine::path::{self, Segment};
use crate::engine::scalar::Scalar;
use crate::engine::stamp::Stamp;
use crate::engine::text::Text;
use crate::engine::value_diff::{self, Edit};
use serde_json::Value;

impl Document {
    /// Removes `delete` characters at character index `index` of the string at `path` and
    /// inserts `insert` there; returns what was removed. Indexes count Unicode scalar values
    /// (Rust `char`s), not bytes or UTF-16 units.
    ///
    /// # Errors
    ///
    /// [`Error::Path`] when `path` does not lead to a string or `index` is past its end.
    pub fn splice_text(
        &mut self,
        path_text: &str,
        index: usize,
        delete: usize,
        insert: &str,
    ) -> Result<String> {
        let (n, s) = self.text_slot(path_text)?;
        let len = self.text_len_at(n, s).unwrap_or(0);
        if index > len {
            return Err(Error::path(
                path_text,
                format!("character index {index} is past the end (length {len})"),
            ));
        }
        if delete == 0 && insert.is_empty() {
            return Ok(String::new());
        }
        let u = self.begin();
        let mut removed = String::new();
        self.edit_text(n, s, u, |doc, t| {
            removed = doc.text_delete(t, index, delete, u);
            doc.text_insert(t, index, insert, u);
        });
        Ok(removed)
    }

    /// How many pieces (runs and removed runs) the string at `path` is stored as (0 for a string
    /// written whole and never edited): for benchmarks and tests.
    pub fn text_pieces(&self, path_text: &str) -> Result<usize> {
        let (n, s) = self.text_slot(path_text)?;
        Ok(match self.slot_val_ref(n, s) {
            Some(Val::Text(t)) => t.pieces().count(),
            _ => 0,
        })
    }

    /// The length in characters of the string at `path`.
    ///
    /// # Errors
    ///
    /// [`Error::Path`] when `path` does not lead to a string.
    pub fn text_len(&self, path_text: &str) -> Result<usize> {
        let (n, s) = self.text_slot(path_text)?;
        Ok(self.text_len_at(n, s).unwrap_or(0))
    }

    /// Turns the string in slot `s` of node `n` into `new` by the difference from what it holds.
    /// Returns false (nothing done) when the slot holds no string.
    pub(crate) fn set_text(&mut self, n: Ix, s: u32, new: &str) -> bool {
        let Some(old) = self.text_string_at(n, s) else {
            return false;
        };
        if old == new {
            return true;
        }
        let edits = word_edits(&old, new);
        let u = self.begin();
        self.edit_text(n, s, u, |doc, t| {
            // From the end, so that earlier positions stay valid.
            for (start, end, insert) in edits.into_iter().rev() {
                doc.text_delete(t, start, end - start, u);
                doc.text_insert(t, start, &insert, u);
            }
        });
        true
    }

    /// The slot of the string at `path`.
    fn text_slot(&self, path_text: &str) -> Result<(Ix, u32)> {
        if let Some(found) = self.plain_text_slot(path_text) {
            return Ok(found);
        }
        let segs = path::parse(path_text)?;
        let not_text = || Error::path(path_text, "is not a string");
        let (last, prefix) = segs.split_last().ok_or_else(not_text)?;
        let n = self.walk(prefix).ok_or_else(not_text)?;
        let s = match (&self.nodes[n as usize].body, last) {
            (Body::Obj(o), Segment::Key(k)) => o.slot_named(&self.keys, k).ok_or_else(not_text)?,
            (Body::Arr(a), Segment::Index(i)) => {
                a.order[visible_pos(a, *i).ok_or_else(not_text)?]
            }
            _ => return Err(not_text()),
        };
        if self.text_len_at(n, s).is_none() {
            return Err(not_text());
        }
        Ok((n, s))
    }

    /// The slot of the string at a path of plain keys (`notes`, `a.b.c`), found without parsing
    /// the path into owned segments: typing calls this once per keystroke. `None` when the path
    /// is not of that form or leads to no string (the full parse then reports why).
    fn plain_text_slot(&self, path_text: &str) -> Option<(Ix, u32)> {
        // Anything the full parser reads otherwise (brackets, quotes, an empty key it refuses)
        // goes to it.
        // One pass over the bytes: a key may not be empty (`.` first or last, `..`).
        let mut prev = b'.';
        for &c in path_text.as_bytes() {
            if c == b'[' || c == b'"' || (c == b'.' && prev == b'.') {
                return None;
            }
            prev = c;
        }
        if prev == b'.' {
            return None;
        }
        let mut n = ROOT;
        let mut keys = path_text.split('.').peekable();
        while let Some(key) = keys.next() {
            let Body::Obj(o) = &self.nodes[n as usize].body else {
                return None;
            };
            let s = o.slot_named(&self.keys, key)?;
            if keys.peek().is_none() {
                return self.text_len_at(n, s).map(|_| (n, s));
            }
            match &o.slots[s as usize].val {
                Val::Node(c) => n = *c,
                _ => return None,
            }
        }
        None
    }

    /// The length in characters of the string slot `s` of node `n` holds (`None` for any other
    /// value).
    fn text_len_at(&self, n: Ix, s: u32) -> Option<usize> {
        match self.slot_val_ref(n, s)? {
            Val::Text(t) => Some(t.len()),
            Val::Prim(Scalar::Str(x)) => Some(x.chars().count()),
            _ => None,
        }
    }

    /// The string slot `s` of node `n` holds (`None` for any other value).
    fn text_string_at(&self, n: Ix, s: u32) -> Option<String> {
        match self.slot_val_ref(n, s)? {
            Val::Text(t) => Some(t.to_string()),
            Val::Prim(Scalar::Str(x)) => Some(x.to_string()),
            _ => None,
        }
    }

    /// Runs `f` on the text in slot `s` of node `n` (a string written whole becomes a text of
    /// one run first) and records the change at version `u`.
    fn edit_text(&mut self, n: Ix, s: u32, u: u64, f: impl FnOnce(&mut Self, &mut Text)) {
        let stamp = self.slot_stamp(n, s);
        let slot_u = self.slot_u(n, s);
        // An edited text's slot hash is a fixed part plus its characters' sum (see `digest.rs`),
        // so an edit moves the digest by the change of the sum; a string becoming a text is
        // hashed again whole.
        let was_text = matches!(self.slot_val_ref(n, s), Some(Val::Text(_)));
        if !was_text {
            self.unhash(n, s);
        }
        let taken = std::mem::replace(self.slot_val_mut(n, s), Val::Gone);
        let mut t = match taken {
            Val::Text(t) => t,
            Val::Prim(Scalar::Str(old)) => Box::new(Text::whole(&old, stamp, slot_u)),
            other => {
                *self.slot_val_mut(n, s) = other;
                self.rehash(n, s);
                return;
            }
        };
        let before = t.sum();
        f(self, &mut t);
        let after = t.sum();
        *self.slot_val_mut(n, s) = Val::Text(t);
        self.set_slot_u(n, s, u);
        if was_text {
            self.move_digest(before, after);
        } else {
            self.rehash(n, s);
        }
    }

    fn text_insert(&mut self, t: &mut Text, at: usize, s: &str, u: u64) {
        let n = s.chars().count() as u64;
        if n == 0 {
            return;
        }
        let hlc = self.clock.reserve(t.next_id_floor(), n);
        self.knows.insert(self.client, self.clock.last());
        let id = Stamp {
            hlc,
            client: self.client,
        };
        t.insert(at.min(t.len()), s, id, u);
    }

    fn text_delete(&mut self, t: &mut Text, at: usize, count: usize, u: u64) -> String {
        if count == 0 || at >= t.len() {
            return String::new();
        }
        let hlc = self.clock.reserve(0, 1);
        self.knows.insert(self.client, hlc);
        let stamp = Stamp {
            hlc,
            client: self.client,
        };
        t.delete(at, count, stamp, u)
    }
}

impl Document {
    /// Makes the value at `path` equal to `new` by the smallest edits this module knows:
    /// objects key by key (only changed keys are written), strings by their difference, arrays
    /// by a longest-common-subsequence match of their elements (unmatched
    /// elements between matches updated pairwise, the rest inserted or removed); anything else is set. What a person changed in an
    /// editor so becomes edits that merge with everyone else's, instead of one overwrite.
    ///
    /// # Errors
    ///
    /// As [`Document::set`]: [`Error::Path`] for a path that leads nowhere, and for the root
    /// given anything but an object.
    pub fn update(&mut self, path_text: &str, new: Value) -> Result<()> {
        let segs = path::parse(path_text)?;
        let old = self.get(path_text)?;
        match old {
            Some(old) => self.apply_edits(value_diff::diff(&segs, &old, &new)),
            None if segs.is_empty() => Err(Error::path(
                path_text,
                format!("the document root must stay an object, not {new}"),
            )),
            None => self.set(path_text, new),
        }
    }

    /// Applies `edits` (from [`diff`](crate::engine::diff) of this document's value, or of a
    /// copy known to equal it, such as a bound file's shadow) in their order.
    ///
    /// # Errors
    ///
    /// As [`Document::set`], [`Document::remove`] and [`Document::splice`] for an edit whose path
    /// leads nowhere; the edits before it stay applied.
    pub fn apply_edits(&mut self, edits: Vec<Edit>) -> Result<()> {
        for edit in edits {
            match edit {
                Edit::Set(p, v) if p.is_empty() => {
                    return Err(Error::path(
                        "",
                        format!("the document root must stay an object, not {v}"),
                    ));
                }
                Edit::Set(p, v) => self.set(&p, v)?,
                Edit::Remove(p) => {
                    self.remove(&p)?;
                }
                Edit::Splice {
                    path,
                    at,
                    remove,
                    insert,
                } => {
                    self.splice(&path, at, remove, insert)?;
                }
            }
        }
        Ok(())
    }
}

/// The edits turning `old` into `new`, as (start, end, replacement) in characters of `old`, in
/// order: the diff of `dissimilar`, then widened to whole words, so that a changed word is one
/// removal and one insertion (two people fixing the same word then keep both fixes side by side
/// rather than a mix of their letters).
fn word_edits(old: &str, new: &str) -> Vec<(usize, usize, String)> {
    let oc: Vec<char> = old.chars().collect();
    let nc: Vec<char> = new.chars().collect();
    // (old start, old end, new start, new end) of each change, in order.
    let mut raw: Vec<(usize, usize, usize, usize)> = Vec::new();
    let (mut o, mut n) = (0usize, 0usize);
    for chunk in dissimilar::diff(old, new) {
        let (del, ins) = match chunk {
            dissimilar::Chunk::Equal(x) => {
                let k = x.chars().count();
                o += k;
                n += k;
                continue;
            }
            dissimilar::Chunk::Delete(x) => (x.chars().count(), 0),
            dissimilar::Chunk::Insert(x) => (0, x.chars().count()),
        };
        match raw.last_mut() {
            Some(last) if last.1 == o && last.3 == n => {
                last.1 += del;
                last.3 += ins;
            }
            _ => raw.push((o, o + del, n, n + ins)),
        }
        o += del;
        n += ins;
    }
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out: Vec<(usize, usize, usize, usize)> = Vec::new();
    for i in 0..raw.len() {
        let (mut os, mut oe, mut ns, mut ne) = raw[i];
        // Widen over the unchanged characters of the word it touches, never into another change.
        let floor = out.last().map_or(0, |l| l.1);
        let ceiling = raw.get(i + 1).map_or(oc.len(), |r| r.0);
        let left = (ne > ns && word(nc[ns])) || (oe > os && word(oc[os]));
        while left && os > floor && word(oc[os - 1]) {
            os -= 1;
            ns -= 1;
        }
        let right = (ne > ns && word(nc[ne - 1])) || (oe > os && word(oc[oe - 1]));
        while right && oe < ceiling && word(oc[oe]) {
            oe += 1;
            ne += 1;
        }
        match out.last_mut() {
            Some(last) if last.1 >= os => {
                last.1 = oe;
                last.3 = ne;
            }
            _ => out.push((os, oe, ns, ne)),
        }
    }
    out.into_iter()
        .map(|(os, oe, ns, ne)| (os, oe, nc[ns..ne].iter().collect()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::word_edits;

    fn apply(old: &str, edits: &[(usize, usize, String)]) -> String {
        let mut c: Vec<char> = old.chars().collect();
        for (s, e, ins) in edits.iter().rev() {
            c.splice(*s..*e, ins.chars());
        }
        c.into_iter().collect()
    }

    #[test]
    fn a_changed_word_is_one_removal_and_one_insertion() {
        let e = word_edits("the quick brown fox", "the quack brown fox");
        assert_eq!(e, vec![(4, 9, "quack".to_string())]);
        for (old, new) in [
            ("the quick brown fox", "a slow brown cat!"),
            ("naïve café", "naive cafe 🙂"),
            ("", "new"),
            ("gone", ""),
            ("ab cd ef", "ab xx ef yy"),
            ("foo.bar", "foo.baz"),
            ("one two three", "one twenty three"),
            ("abc", "xbz"),
            ("the cat sat", "the cot sit"),
        ] {
            assert_eq!(apply(old, &word_edits(old, new)), new, "{old:?} -> {new:?}");
        }
    }
}
