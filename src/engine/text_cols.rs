//! The saved form of a text since snapshot version 5: its pieces as columns of small numbers and
//! its live characters as one string.
//!
//! A text's pieces, one JSON array each (`[id, length, left, right, version, characters]`), cost
//! about five times the characters they hold (540 KB for the 105 KB automerge-paper text). Most
//! of that is numbers that repeat a neighbour's: a piece usually starts where an earlier piece's
//! ids left off, its left origin is the last character of the piece before it, its right origin
//! the first of the piece after it, and versions rise slowly. Written as differences, column by
//! column (the columnar idea of Automerge's binary format), they become runs of small numbers
//! that compress well: the saved node of that text, deflated, is about 100 KB. The form stays
//! JSON, so a person can still read a saved replica after decompressing it.

use serde::{Deserialize, Serialize};

use crate::engine::error::{Error, Result};
use crate::engine::stamp::{ClientId, MAX_HLC, Stamp};
use crate::engine::text::Piece;

/// No origin (a left origin at the text's start, a right origin at its end).
const NONE: i64 = -1;
/// A left origin that is the last character of the piece before; a right origin that is the
/// first character of the piece after.
const NEIGHBOUR: i64 = -2;

/// A text's pieces in document order, one entry per piece in every column.
///
/// Clients are numbered: 0 is the text's own client (that of its id), `k` ≥ 1 is
/// `clients[k - 1]`. Clock values are written as differences (wrapping, in 64 bits):
/// `h` from the end of the previous piece's ids (the text id's clock for the first piece),
/// `oh` from the left origin to the piece's first id, `rh` from the piece's first id to its
/// right origin, `u` from the previous piece's version (0 for the first).
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct TextCols {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    clients: Vec<ClientId>,
    /// The live characters of all pieces, one piece after the other.
    s: String,
    /// The client of each piece's ids.
    k: Vec<u32>,
    h: Vec<i64>,
    /// The length; negative for a removed piece.
    n: Vec<i64>,
    /// The left origin's client, or [`NONE`] or [`NEIGHBOUR`].
    ok: Vec<i64>,
    oh: Vec<i64>,
    /// The right origin's client, or [`NONE`] or [`NEIGHBOUR`].
    rk: Vec<i64>,
    rh: Vec<i64>,
    u: Vec<i64>,
}

fn diff(a: u64, b: u64) -> i64 {
    a.wrapping_sub(b) as i64
}

/// Numbers clients as they come, the text's own first.
struct Clients<'a> {
    own: ClientId,
    others: &'a mut Vec<ClientId>,
}

impl Clients<'_> {
    fn number(&mut self, c: ClientId) -> u32 {
        if c == self.own {
            return 0;
        }
        let at = match self.others.iter().position(|o| *o == c) {
            Some(at) => at,
            None => {
                self.others.push(c);
                self.others.len() - 1
            }
        };
        at as u32 + 1
    }
}

/// The columns of `pieces` (document order) of the text whose id is `id`.
pub(crate) fn encode(id: Stamp, pieces: &[&Piece]) -> TextCols {
    let mut c = TextCols::default();
    let mut others = Vec::new();
    let mut clients = Clients {
        own: id.client,
        others: &mut others,
    };
    let (mut end, mut u) = (id.hlc, 0);
    for (ix, p) in pieces.iter().enumerate() {
        let before = ix.checked_sub(1).map(|b| pieces[b]);
        let after = pieces.get(ix + 1);
        c.k.push(clients.number(p.id.client));
        c.h.push(diff(p.id.hlc, end));
        let len = i64::from(p.len);
        c.n.push(if p.live() { len } else { -len });
        let (ok, oh) = match p.left {
            None => (NONE, 0),
            Some(l) if before.is_some_and(|b| b.last() == l) => (NEIGHBOUR, 0),
            Some(l) => (i64::from(clients.number(l.client)), diff(p.id.hlc, l.hlc)),
        };
        let (rk, rh) = match p.right {
            None => (NONE, 0),
            Some(r) if after.is_some_and(|a| a.id == r) => (NEIGHBOUR, 0),
            Some(r) => (i64::from(clients.number(r.client)), diff(r.hlc, p.id.hlc)),
        };
        c.ok.push(ok);
        c.oh.push(oh);
        c.rk.push(rk);
        c.rh.push(rh);
        c.u.push(diff(p.u, u));
        u = p.u;
        end = p.end();
        if let Some(s) = &p.s {
            c.s.push_str(s);
        }
    }
    c.clients = others;
    c
}

/// The pieces the columns of text `id` describe.
///
/// # Errors
///
/// [`Error::Snapshot`] naming the text and what is wrong: columns of different lengths, a client
/// number out of range, a zero length, a clock beyond the stamp range, a neighbour origin where
/// there is no neighbour, or characters that do not add up to the live pieces' lengths.
pub(crate) fn decode(id: Stamp, c: TextCols) -> Result<Vec<Piece>> {
    let count = c.k.len();
    let lens = [&c.h, &c.n, &c.ok, &c.oh, &c.rk, &c.rh, &c.u].map(Vec::len);
    let cols = Cols { id, c: &c };
    if lens.iter().any(|l| *l != count) {
        return Err(cols.bad(format!(
            "its columns have different lengths ({count} and {lens:?})"
        )));
    }
    // First the ids, lengths, versions and characters; then the origins, which may name the
    // piece after.
    let mut pieces = cols.pieces()?;
    for ix in 0..count {
        let (left, right) = cols.origins(&pieces, ix)?;
        pieces[ix].left = left;
        pieces[ix].right = right;
    }
    Ok(pieces)
}

/// The columns of text `id` being read.
struct Cols<'a> {
    id: Stamp,
    c: &'a TextCols,
}

impl Cols<'_> {
    fn bad(&self, m: String) -> Error {
        Error::Snapshot(format!("text {}: {m}", self.id))
    }

    fn client(&self, k: i64) -> Result<ClientId> {
        let others = &self.c.clients;
        match usize::try_from(k) {
            Ok(0) => Ok(self.id.client),
            Ok(k) => others
                .get(k - 1)
                .copied()
                .ok_or_else(|| self.bad(format!("client number {k} of {}", others.len() + 1))),
            Err(_) => Err(self.bad(format!("client number {k}"))),
        }
    }

    fn stamp(&self, client: ClientId, hlc: u64) -> Result<Stamp> {
        if hlc >= MAX_HLC {
            return Err(self.bad(format!("a clock value {hlc} beyond the stamp range")));
        }
        Ok(Stamp { hlc, client })
    }

    /// The pieces without their origins.
    fn pieces(&self) -> Result<Vec<Piece>> {
        let c = self.c;
        let mut pieces = Vec::with_capacity(c.k.len());
        let (mut end, mut u) = (self.id.hlc, 0u64);
        let mut rest = c.s.as_str();
        for ix in 0..c.k.len() {
            let len = u32::try_from(c.n[ix].unsigned_abs())
                .ok()
                .filter(|l| *l > 0)
                .ok_or_else(|| self.bad(format!("piece {ix} has length {}", c.n[ix])))?;
            let client = self.client(i64::from(c.k[ix]))?;
            let first = self.stamp(client, end.wrapping_add(c.h[ix] as u64))?;
            end = self.stamp(client, first.hlc + u64::from(len) - 1)?.hlc + 1;
            u = u.wrapping_add(c.u[ix] as u64);
            let s = if c.n[ix] > 0 {
                let at = rest
                    .char_indices()
                    .nth(len as usize)
                    .map_or(rest.len(), |(at, _)| at);
                let (s, after) = rest.split_at(at);
                if s.chars().count() != len as usize {
                    return Err(self.bad(format!("its characters end within piece {ix}")));
                }
                rest = after;
                Some(s.to_string())
            } else {
                None
            };
            // The origins come in a second pass (see `origins`).
            pieces.push(Piece {
                id: first,
                len,
                left: None,
                right: None,
                u,
                s,
            });
        }
        if !rest.is_empty() {
            return Err(self.bad("it has characters beyond its pieces".into()));
        }
        Ok(pieces)
    }

    /// The left and right origins of piece `ix`.
    fn origins(&self, pieces: &[Piece], ix: usize) -> Result<(Option<Stamp>, Option<Stamp>)> {
        let c = self.c;
        let first = pieces[ix].id.hlc;
        let left = match c.ok[ix] {
            NONE => None,
            NEIGHBOUR => match ix.checked_sub(1) {
                Some(b) => Some(pieces[b].last()),
                None => return Err(self.bad("its first piece follows a piece before it".into())),
            },
            k => Some(self.stamp(self.client(k)?, first.wrapping_sub(c.oh[ix] as u64))?),
        };
        let right = match c.rk[ix] {
            NONE => None,
            NEIGHBOUR => match pieces.get(ix + 1) {
                Some(a) => Some(a.id),
                None => return Err(self.bad("its last piece precedes a piece after it".into())),
            },
            k => Some(self.stamp(self.client(k)?, first.wrapping_add(c.rh[ix] as u64))?),
        };
        Ok((left, right))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(client: &str, hlc: u64) -> Stamp {
        Stamp {
            hlc,
            client: ClientId::parse(client).unwrap(),
        }
    }

    fn piece(
        id: Stamp,
        len: u32,
        left: Option<Stamp>,
        right: Option<Stamp>,
        u: u64,
        s: Option<&str>,
    ) -> Piece {
        Piece {
            id,
            len,
            left,
            right,
            u,
            s: s.map(str::to_string),
        }
    }

    /// Pieces of two clients, removed and live, with origins of every kind: neighbours, far
    /// ids of either client, none.
    fn sample() -> (Stamp, Vec<Piece>) {
        let a = |h| stamp("aaaaaaaaaaaaaaaa", h);
        let b = |h| stamp("bbbbbbbbbbbbbbbb", h);
        let id = a(1000);
        let pieces = vec![
            piece(a(1000), 3, None, None, 1, Some("hé🙂")),
            piece(b(50), 2, Some(a(1002)), Some(a(1003)), 7, None),
            piece(a(1003), 4, Some(a(1002)), None, 9, Some("abcd")),
            piece(b(20), 1, Some(b(51)), Some(a(1001)), 3, Some("x")),
            piece(a(1010), 2, Some(a(1006)), None, u64::MAX, None),
        ];
        (id, pieces)
    }

    #[test]
    fn columns_give_back_the_pieces_exactly() {
        let (id, pieces) = sample();
        let refs: Vec<&Piece> = pieces.iter().collect();
        let cols = encode(id, &refs);
        let json = serde_json::to_string(&cols).unwrap();
        let back = decode(id, serde_json::from_str(&json).unwrap()).unwrap();
        assert_eq!(back, pieces);
        assert!(decode(id, encode(id, &[])).unwrap().is_empty());
    }

    #[test]
    fn damaged_columns_are_refused_with_what_is_wrong() {
        let (id, pieces) = sample();
        let refs: Vec<&Piece> = pieces.iter().collect();
        let good = serde_json::to_value(encode(id, &refs)).unwrap();
        let cases: [(&str, serde_json::Value, &str); 8] = [
            ("h", serde_json::json!([0]), "different lengths"),
            ("k", serde_json::json!([0, 9, 0, 1, 0]), "client number 9"),
            ("n", serde_json::json!([3, 0, 4, 1, -2]), "length 0"),
            (
                "h",
                serde_json::json!([0, 4611686018427387904i64, 0, 0, 0]),
                "beyond the stamp range",
            ),
            ("s", serde_json::json!("hé🙂abc"), "end within piece"),
            ("s", serde_json::json!("hé🙂abcdxy"), "beyond its pieces"),
            (
                "ok",
                serde_json::json!([-2, 0, -2, 1, 0]),
                "first piece follows",
            ),
            (
                "rk",
                serde_json::json!([-1, 0, -1, 0, -2]),
                "last piece precedes",
            ),
        ];
        for (column, value, says) in cases {
            let mut v = good.clone();
            v[column] = value;
            let e = decode(id, serde_json::from_value(v).unwrap()).unwrap_err();
            assert!(e.to_string().contains(says), "{column}: {e}");
        }
    }
}
