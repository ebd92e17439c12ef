//! Saving a replica whole and restoring it exactly: client id, version, clock, peer table and every
//! slot with its stamp and version. The form is flat (a list of nodes), so restoring never recurses.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::engine::change_index::ChangeIndex;
use crate::engine::doc::{
    Arr, Body, Document, Elem, Field, Key, KeyId, KeyTable, Link, Node, Obj, Parent, PeerState, Val,
};
use crate::engine::error::{Error, Result};
use crate::engine::id_index::IdIndex;
use crate::engine::scalar::{NUMBER_TOKEN, Scalar, ScalarVisitor};
use crate::engine::stamp::{ClientId, DEFAULT_MAX_SKEW_MS, Hlc, Stamp, system_now_ms};
use crate::engine::text::{Piece, Text};
use crate::engine::text_cols::{self, TextCols};
use crate::engine::wire::Knowledge;

const SNAPSHOT_FORMAT: &str = "minisync-replica";
/// Version 4 may keep the nodes apart from the rest (`node_count`, [`Document::save_parts`]), so
/// that a save writes only the nodes changed since the last one; version 3 added texts and elements' right origins; version 2 each peer's `last_confirmed`
/// and the record of partial merges. Older states are still restored: a peer's
/// `last_confirmed` is then its `last_acknowledged`, and an element's right origin the array
/// end (its place is kept; concurrent inserts next to it are ordered as if it had been appended).
/// Version 5 saves a text's pieces as columns (see `text_cols`); version 6 may give an array's
/// record the version its short elements have (`{"B": …}`, see [`common_version`]).
const SNAPSHOT_VERSION: u32 = 6;

#[derive(Serialize, Deserialize)]
pub(super) struct Snap {
    format: String,
    version: u32,
    doc_id: String,
    client: ClientId,
    doc_version: u64,
    clock: u64,
    knows: Knowledge,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    partial: Knowledge,
    peers: BTreeMap<ClientId, SnapPeer>,
    /// Set when the nodes are stored apart (one record each, [`Document::save_parts`]): how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    node_count: Option<u32>,
    #[serde(default)]
    nodes: Vec<SnapNode>,
}

#[derive(Serialize, Deserialize)]
struct SnapPeer {
    last_received: u64,
    last_acknowledged: u64,
    #[serde(default)]
    last_confirmed: Option<u64>,
    knows: Knowledge,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    lists: BTreeSet<ClientId>,
}

#[derive(Serialize, Deserialize)]
struct SnapNode {
    id: Stamp,
    parent: Option<(u32, u32)>,
    u: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    obj: Option<Vec<SnapField>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    arr: Option<SnapArr>,
}

/// A saved field; `K`: its key, as its name (the whole-replica format) or as the number the
/// restoring replica gave that name (read from a node's record).
#[derive(Serialize, Deserialize)]
struct SnapField<K = Key> {
    k: K,
    v: SnapVal,
    t: Stamp,
    u: u64,
}

#[derive(Serialize, Deserialize)]
struct SnapArr {
    slots: Vec<SnapElem>,
    order: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
struct SnapElem {
    e: Stamp,
    o: Option<Stamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ro: Option<Stamp>,
    v: SnapVal,
    t: Stamp,
    r: Option<Stamp>,
    u: u64,
}

#[derive(Serialize, Deserialize)]
enum SnapVal {
    P(Scalar),
    N(u32),
    G,
    T(Box<SnapText>),
}

/// A text: its id, initial run length, edits per client, and its pieces in document order —
/// as columns (`cols`, version 5 on) or one array per piece (`p`, versions 3 and 4).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapText {
    id: Stamp,
    i: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    c: Knowledge,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    p: Vec<SnapPiece>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cols: Option<TextCols>,
}

/// A piece: first id, length, left and right origins, version, characters (`None`: removed).
/// Stamps of the text's own client are written as their clock's offset from the text's id.
#[derive(Serialize, Deserialize)]
struct SnapPiece(
    SnapStamp,
    u32,
    Option<SnapStamp>,
    Option<SnapStamp>,
    u64,
    Option<String>,
);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum SnapStamp {
    Offset(u64),
    Full(Stamp),
}

fn stamp_of(base: Stamp, s: SnapStamp) -> Result<Stamp> {
    match s {
        SnapStamp::Full(s) => Ok(s),
        SnapStamp::Offset(o) => base
            .hlc
            .checked_add(o)
            .filter(|h| *h < crate::engine::stamp::MAX_HLC)
            .map(|hlc| Stamp {
                hlc,
                client: base.client,
            })
            .ok_or_else(|| Error::Snapshot(format!("text {base} has a stamp offset out of range"))),
    }
}

fn snap_text(t: &Text) -> SnapText {
    let pieces: Vec<&Piece> = t.pieces().collect();
    SnapText {
        id: t.id,
        i: t.init,
        c: t.ops.clone(),
        p: Vec::new(),
        cols: Some(text_cols::encode(t.id, &pieces)),
    }
}

/// A saved slot value as the replica holds it (`count`: the replica's number of nodes).
fn restore_val(v: SnapVal, count: u32) -> Result<Val> {
    let bad = |m: String| Error::Snapshot(m);
    Ok(match v {
        SnapVal::P(p) => Val::Prim(p),
        SnapVal::N(n) if n > 0 && n < count => Val::Node(n),
        SnapVal::N(n) => return Err(bad(format!("slot refers to node {n} of {count}"))),
        SnapVal::G => Val::Gone,
        SnapVal::T(t) => Val::Text(Box::new(restore_text(*t)?)),
    })
}

/// The object of saved node `ix`; `max_u` rises to its slots' versions.
fn restore_obj(
    ix: u32,
    fields: Vec<SnapField<KeyId>>,
    count: u32,
    max_u: &mut u64,
    keys: &KeyTable,
) -> Result<Obj> {
    let mut o = Obj::default();
    o.slots.reserve_exact(fields.len());
    for f in fields {
        if o.slot_of(f.k).is_some() {
            return Err(Error::Snapshot(format!(
                "node {ix} has key {:?} twice",
                keys.name(f.k)
            )));
        }
        *max_u = (*max_u).max(f.u);
        o.push(Field {
            key: f.k,
            val: restore_val(f.v, count)?,
            stamp: f.t,
            u: f.u,
        });
    }
    Ok(o)
}

/// Refuses a saved head of another format or a version this code does not know, or with a clock
/// no replica can reach (its clock stops short of [`crate::engine::stamp::MAX_HLC`]).
fn check_format(snap: &Snap) -> Result<()> {
    if snap.format != SNAPSHOT_FORMAT || !(1..=SNAPSHOT_VERSION).contains(&snap.version) {
        return Err(Error::Snapshot(format!(
            "unknown saved format {:?} version {}",
            snap.format, snap.version
        )));
    }
    if snap.clock >= crate::engine::stamp::MAX_HLC {
        return Err(Error::Snapshot(format!(
            "the saved clock {:x} is beyond any clock value",
            snap.clock
        )));
    }
    Ok(())
}

/// The most nodes a restore makes room for before it has read them.
const RESERVE_AT_MOST: usize = 1 << 20;

/// The nodes of a replica being restored, each made as it is read: the saved form of the
/// next node is dropped before the one after is read, so that a load never holds the whole
/// replica twice.
struct Restoring {
    count: u32,
    nodes: Vec<Node>,
    by_id: IdIndex,
    /// The latest version of any slot restored.
    max_u: u64,
}

impl Restoring {
    /// Room for `count` nodes, up to [`RESERVE_AT_MOST`] (a damaged head's count must not
    /// reserve gigabytes: beyond that the tables grow as the nodes come).
    fn new(count: u32) -> Self {
        let n = (count as usize).min(RESERVE_AT_MOST);
        Restoring {
            count,
            nodes: Vec::with_capacity(n),
            by_id: IdIndex::with_capacity(n),
            max_u: 0,
        }
    }

    /// Adds the next saved node.
    fn push(&mut self, n: SnapNode, keys: &mut KeyTable) -> Result<()> {
        let (ix, count) = (self.nodes.len() as u32, self.count);
        let max_u = &mut self.max_u;
        let body = match (n.obj, n.arr) {
            (Some(fields), None) => {
                let fields = fields
                    .into_iter()
                    .map(|f| SnapField {
                        k: keys.intern(&f.k),
                        v: f.v,
                        t: f.t,
                        u: f.u,
                    })
                    .collect();
                Body::Obj(restore_obj(ix, fields, count, max_u, keys)?)
            }
            (None, Some(sa)) => Body::Arr(Box::new(restore_arr(ix, sa, count, max_u)?)),
            _ => {
                return Err(Error::Snapshot(format!(
                    "node {ix} is neither object nor array"
                )));
            }
        };
        self.add(checked_node(ix, count, n.id, n.parent, n.u, body)?)
    }

    /// Adds the next node.
    fn add(&mut self, node: Node) -> Result<()> {
        let (id, ix) = (node.id, self.nodes.len() as u32);
        self.nodes.push(node);
        let nodes = &self.nodes;
        if !self.by_id.insert(id, ix, |ix| nodes[ix as usize].id) {
            return Err(Error::Snapshot(format!("node id {id} appears twice")));
        }
        Ok(())
    }
}

/// Node `ix` of a replica of `count` nodes, its parent checked to be one of them (none only for
/// the root).
pub(super) fn checked_node(
    ix: u32,
    count: u32,
    id: Stamp,
    parent: Option<(u32, u32)>,
    u: u64,
    body: Body,
) -> Result<Node> {
    if (ix == 0) != parent.is_none() || parent.is_some_and(|(p, _)| p >= count) {
        return Err(Error::Snapshot(format!(
            "node {ix} has an impossible parent"
        )));
    }
    Ok(Node {
        id,
        parent: Parent::of(parent),
        u,
        body,
    })
}

/// The array of saved node `ix`, its order checked to be a permutation of its slots.
fn restore_arr(ix: u32, sa: SnapArr, count: u32, max_u: &mut u64) -> Result<Arr> {
    let mut b = ArrBuilder::new(ix, count);
    b.a.slots.reserve_exact(sa.slots.len());
    for e in sa.slots {
        b.push(e, max_u)?;
    }
    b.finish(sa.order)
}

/// An array restored one element at a time, in the order of its slots, so that a large array
/// is never held in a second form. An element's origins are linked to their slots once every id
/// is known (an origin may be a later slot, or one the array lacks: see [`Link`]); the common
/// origin, the slot just before, at once.
struct ArrBuilder {
    ix: u32,
    /// The replica's number of nodes.
    count: u32,
    a: Arr,
    /// (slot, right origin?, id) of the origins still to link.
    origins: Vec<(u32, bool, Stamp)>,
}

impl ArrBuilder {
    fn new(ix: u32, count: u32) -> Self {
        ArrBuilder {
            ix,
            count,
            a: Arr::default(),
            origins: Vec::new(),
        }
    }

    /// The id of the last slot pushed.
    fn last_id(&self) -> Option<Stamp> {
        self.a.slots.last().map(|e| e.id)
    }

    /// Adds the next slot; `max_u` rises to its version.
    fn push(&mut self, e: SnapElem, max_u: &mut u64) -> Result<()> {
        let s = self.a.slots.len() as u32;
        *max_u = (*max_u).max(e.u);
        let origin = self.link_later(s, false, e.o);
        let right = self.link_later(s, true, e.ro);
        let val = restore_val(e.v, self.count)?;
        // A removed element keeps its removal's stamp in place of its value's (see `Elem`).
        let (val, vstamp) = match e.r {
            Some(r) => (Val::Gone, r),
            None => (val, e.t),
        };
        let e = Elem {
            id: e.e,
            origin,
            right,
            val,
            vstamp,
            u: e.u,
        };
        if e.removed().is_some() {
            self.a.dead += 1;
        }
        self.a.slots.push(e);
        Ok(())
    }

    /// The link to `id` from slot `s` when it is the slot before, else none until `finish`.
    fn link_later(&mut self, s: u32, right: bool, id: Option<Stamp>) -> Link {
        match id {
            None => Link::NONE,
            Some(id) if self.last_id() == Some(id) => Link::to(s - 1),
            Some(id) => {
                self.origins.push((s, right, id));
                Link::NONE
            }
        }
    }

    /// The array, its ids checked to be distinct and `order` to be a permutation of its slots.
    fn finish(self, order: Vec<u32>) -> Result<Arr> {
        let broken = || Error::Snapshot(format!("array node {} has a broken order", self.ix));
        let mut a = self.a;
        a.slots.shrink_to_fit();
        let slots = &a.slots;
        a.by_id.reserve(slots.len(), |s| slots[s as usize].id);
        for (s, e) in slots.iter().enumerate() {
            if !a.by_id.insert(e.id, s as u32, |s| slots[s as usize].id) {
                return Err(broken());
            }
        }
        for (s, right, id) in self.origins {
            let l = a.link_to(Some(id));
            let e = &mut a.slots[s as usize];
            if right {
                e.right = l;
            } else {
                e.origin = l;
            }
        }
        let mut seen = vec![false; a.slots.len()];
        for s in &order {
            match seen.get_mut(*s as usize) {
                Some(b) if !*b => *b = true,
                _ => return Err(broken()),
            }
        }
        if order.len() != a.slots.len() {
            return Err(broken());
        }
        a.order = order;
        Ok(a)
    }
}

/// Checks that the root is an object and that every node's parent has the slot it names; of a
/// replica loaded in part, only the nodes `held` and their parents held.
pub(super) fn check_tree(nodes: &[Node], held: impl Fn(u32) -> bool) -> Result<()> {
    if !matches!(nodes[0].body, Body::Obj(_)) {
        return Err(Error::Snapshot("the root is not an object".into()));
    }
    for (ix, n) in nodes.iter().enumerate() {
        if !held(ix as u32) {
            continue;
        }
        if let Some((p, s)) = n.parent.get().filter(|(p, _)| held(*p)) {
            let len = match &nodes[p as usize].body {
                Body::Obj(o) => o.slots.len(),
                Body::Arr(a) => a.slots.len(),
            };
            if s as usize >= len {
                return Err(Error::Snapshot(format!(
                    "node {ix} names a slot its parent lacks"
                )));
            }
        }
    }
    Ok(())
}

fn restore_text(t: SnapText) -> Result<Text> {
    if let Some(cols) = t.cols {
        if !t.p.is_empty() {
            return Err(Error::Snapshot(format!(
                "text {} has its pieces twice",
                t.id
            )));
        }
        let pieces = text_cols::decode(t.id, cols)?;
        return Ok(Text::from_pieces(t.id, t.i, t.c, pieces));
    }
    let mut pieces = Vec::with_capacity(t.p.len());
    for SnapPiece(id, len, left, right, u, s) in t.p {
        let id = stamp_of(t.id, id)?;
        let ok = len >= 1 && s.as_ref().is_none_or(|s| s.chars().count() == len as usize);
        if !ok {
            return Err(Error::Snapshot(format!(
                "text {} has a piece {id} whose length is wrong",
                t.id
            )));
        }
        pieces.push(Piece {
            id,
            len,
            left: left.map(|s| stamp_of(t.id, s)).transpose()?,
            right: right.map(|s| stamp_of(t.id, s)).transpose()?,
            u,
            s,
        });
    }
    Ok(Text::from_pieces(t.id, t.i, t.c, pieces))
}

fn snap_val(v: &Val) -> SnapVal {
    match v {
        Val::Prim(p) => SnapVal::P(p.clone()),
        Val::Text(t) => SnapVal::T(Box::new(snap_text(t))),
        Val::Node(n) => SnapVal::N(*n),
        Val::Gone => SnapVal::G,
    }
}

fn snap_node(n: &Node, keys: &KeyTable) -> SnapNode {
    SnapNode {
        id: n.id,
        parent: n.parent.get(),
        u: n.u,
        obj: match &n.body {
            Body::Obj(o) => Some(
                o.slots
                    .iter()
                    .map(|f| SnapField {
                        k: keys.name(f.key).clone(),
                        v: snap_val(&f.val),
                        t: f.stamp,
                        u: f.u,
                    })
                    .collect(),
            ),
            Body::Arr(_) => None,
        },
        arr: match &n.body {
            Body::Arr(a) => Some(SnapArr {
                slots: a
                    .slots
                    .iter()
                    .map(|e| SnapElem {
                        e: e.id,
                        o: a.link_id(e.origin),
                        ro: a.link_id(e.right),
                        v: snap_val(&e.val),
                        t: e.vstamp,
                        r: e.removed(),
                        u: e.u,
                    })
                    .collect(),
                order: a.order.clone(),
            }),
            Body::Obj(_) => None,
        },
    }
}

/// A node as one record of a replica saved in parts: compact, as a 10 MB document has 100,000
/// of them. Stamps are `[client, offset]`: an index into the record's own list of clients and
/// the clock value's distance from the node id's (small for slots written with the node or soon
/// after); values are JSON as they are, a child node `{"n": index}`, a removed value `{}`, a
/// text `{"t": text}`.
#[derive(Serialize)]
struct RowNode<'a, V>(Vec<ClientId>, u64, Option<(u32, u32)>, u64, RowBody<'a, V>);

#[derive(Serialize)]
enum RowBody<'a, V> {
    O(Vec<RowField<'a, V>>),
    /// Elements and order; a short element's version is the node's.
    A(Vec<RowElem<V>>, Vec<u32>),
    /// A short element's version, elements and order.
    B(u64, Vec<RowElem<V>>, Vec<u32>),
}

/// The version most of an array's otherwise short elements have (Boyer and Moore's majority
/// vote, one pass; when no version is held by most, one of them): the one its record leaves out
/// of its short elements. An element pushed onto an array of 100,000 raises the node's version, not theirs.
fn common_version(a: &Arr) -> Option<u64> {
    let mut votes = (None, 0u32);
    let mut before = None;
    for e in &a.slots {
        // Only an element otherwise short votes (see `row_node`).
        let short = a.link_id(e.origin) == before
            && a.link_id(e.right).is_none()
            && e.vstamp == e.id
            && e.removed().is_none();
        before = Some(e.id);
        if !short {
            continue;
        }
        votes = match votes {
            (_, 0) => (Some(e.u), 1),
            (Some(u), n) if u == e.u => (Some(u), n + 1),
            (c, n) => (c, n - 1),
        };
    }
    votes.0
}

/// A key as a record holds it: borrowed from the record's bytes when it has no escapes (the
/// replica keeps one shared name per key, so a copy per record would only be dropped).
pub(super) struct RowKey<'a>(pub(super) std::borrow::Cow<'a, str>);

impl Serialize for RowKey<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RowKey<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RowKey<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> std::result::Result<Self::Value, E> {
                Ok(RowKey(std::borrow::Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> std::result::Result<Self::Value, E> {
                Ok(RowKey(std::borrow::Cow::Owned(s.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

pub(super) type RowStamp = (u32, i64);

/// A field: `[key, value]` when written with the node (its stamp the node's id, its version the
/// node's), else `[key, value, stamp, version]`.
pub(super) struct RowField<'a, V>(pub(super) RowKey<'a>, pub(super) V, Option<(RowStamp, u64)>);

/// A slot's value in a record: read straight into its kind, so that the 100,000 child markers
/// `{"n": index}` of a large array never become JSON maps on the way.
pub(super) enum RowVal {
    Prim(Scalar),
    Node(u64),
    Gone,
    Text(Box<SnapText>),
}

impl<'de> Deserialize<'de> for RowVal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RowVal;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a saved value: JSON, {\"n\": index}, {} or {\"t\": text}")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<RowVal, E> {
                ScalarVisitor.visit_bool(v).map(RowVal::Prim)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<RowVal, E> {
                ScalarVisitor.visit_i64(v).map(RowVal::Prim)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<RowVal, E> {
                ScalarVisitor.visit_u64(v).map(RowVal::Prim)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<RowVal, E> {
                ScalarVisitor.visit_f64(v).map(RowVal::Prim)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<RowVal, E> {
                ScalarVisitor.visit_str(v).map(RowVal::Prim)
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<RowVal, E> {
                ScalarVisitor.visit_unit().map(RowVal::Prim)
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut m: M,
            ) -> std::result::Result<RowVal, M::Error> {
                use serde::de::Error as _;
                let out = match m.next_key::<std::borrow::Cow<'de, str>>()?.as_deref() {
                    None => RowVal::Gone,
                    Some("n") => RowVal::Node(m.next_value()?),
                    Some("t") => RowVal::Text(Box::new(m.next_value()?)),
                    // serde_json's `arbitrary_precision` hands numbers over as this one-key map.
                    Some(NUMBER_TOKEN) => RowVal::Prim(ScalarVisitor::number_entry(&mut m)?),
                    Some(_) => return Err(M::Error::custom("a value of unknown form")),
                };
                if m.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(M::Error::custom("a value of unknown form"));
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// An element: `[id, value]` when placed after the element before it in the array's slots,
/// with no right origin, not overwritten nor removed, and of the node's version; else
/// `[id, value, origin, right origin, value stamp, removal stamp, version]`.
pub(super) struct RowElem<V>(
    pub(super) RowStamp,
    pub(super) V,
    pub(super) Option<RowElemRest>,
);

#[derive(Serialize, Deserialize)]
pub(super) struct RowElemRest(
    Option<RowStamp>,
    Option<RowStamp>,
    RowStamp,
    /// The removal's stamp.
    pub(super) Option<RowStamp>,
    u64,
);

impl<V: Serialize> Serialize for RowField<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(if self.2.is_some() { 4 } else { 2 })?;
        t.serialize_element(&self.0)?;
        t.serialize_element(&self.1)?;
        if let Some((stamp, u)) = &self.2 {
            t.serialize_element(stamp)?;
            t.serialize_element(u)?;
        }
        t.end()
    }
}

impl<V: Serialize> Serialize for RowElem<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(if self.2.is_some() { 7 } else { 2 })?;
        t.serialize_element(&self.0)?;
        t.serialize_element(&self.1)?;
        if let Some(RowElemRest(o, ro, vs, r, u)) = &self.2 {
            t.serialize_element(o)?;
            t.serialize_element(ro)?;
            t.serialize_element(vs)?;
            t.serialize_element(r)?;
            t.serialize_element(u)?;
        }
        t.end()
    }
}

/// Reads `[a, b]` or `[a, b, rest…]`: the two first elements, then the rest whole or nothing.
struct ShortOrLong<A, B, R>(A, B, Option<R>);

impl<'de, A, B, R> Deserialize<'de> for ShortOrLong<A, B, R>
where
    A: Deserialize<'de>,
    B: Deserialize<'de>,
    R: Deserialize<'de> + RestOf<'de>,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<A, B, R>(std::marker::PhantomData<(A, B, R)>);
        impl<'de, A, B, R> serde::de::Visitor<'de> for V<A, B, R>
        where
            A: Deserialize<'de>,
            B: Deserialize<'de>,
            R: RestOf<'de>,
        {
            type Value = ShortOrLong<A, B, R>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a saved slot: an array of 2 or more items")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> std::result::Result<Self::Value, S::Error> {
                use serde::de::Error as _;
                let a = seq
                    .next_element()?
                    .ok_or_else(|| S::Error::invalid_length(0, &self))?;
                let b = seq
                    .next_element()?
                    .ok_or_else(|| S::Error::invalid_length(1, &self))?;
                let rest = R::read_rest(&mut seq)?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(S::Error::custom("a saved slot with too many items"));
                }
                Ok(ShortOrLong(a, b, rest))
            }
        }
        d.deserialize_seq(V(std::marker::PhantomData))
    }
}

/// The items after the first two of a saved slot, read one by one (none: the short form).
trait RestOf<'de>: Sized {
    fn read_rest<S: serde::de::SeqAccess<'de>>(
        seq: &mut S,
    ) -> std::result::Result<Option<Self>, S::Error>;
}

fn need<'de, S: serde::de::SeqAccess<'de>, T: Deserialize<'de>>(
    seq: &mut S,
) -> std::result::Result<T, S::Error> {
    use serde::de::Error as _;
    seq.next_element()?
        .ok_or_else(|| S::Error::custom("a saved slot cut short"))
}

impl<'de> RestOf<'de> for (RowStamp, u64) {
    fn read_rest<S: serde::de::SeqAccess<'de>>(
        seq: &mut S,
    ) -> std::result::Result<Option<Self>, S::Error> {
        let Some(stamp) = seq.next_element()? else {
            return Ok(None);
        };
        Ok(Some((stamp, need(seq)?)))
    }
}

impl<'de> RestOf<'de> for RowElemRest {
    fn read_rest<S: serde::de::SeqAccess<'de>>(
        seq: &mut S,
    ) -> std::result::Result<Option<Self>, S::Error> {
        let Some(o) = seq.next_element()? else {
            return Ok(None);
        };
        Ok(Some(RowElemRest(
            o,
            need(seq)?,
            need(seq)?,
            need(seq)?,
            need(seq)?,
        )))
    }
}

impl<'de: 'a, 'a, V: Deserialize<'de>> Deserialize<'de> for RowField<'a, V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let ShortOrLong(k, v, rest) = ShortOrLong::deserialize(d)?;
        Ok(RowField(k, v, rest))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for RowElem<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let ShortOrLong(e, v, rest) = ShortOrLong::deserialize(d)?;
        Ok(RowElem(e, v, rest))
    }
}

/// Writes stamps of one node as [`RowStamp`]s, collecting its clients.
struct RowWriter {
    base: u64,
    clients: Vec<ClientId>,
}

impl RowWriter {
    fn stamp(&mut self, s: Stamp) -> RowStamp {
        let ci = match self.clients.iter().position(|c| *c == s.client) {
            Some(i) => i,
            None => {
                self.clients.push(s.client);
                self.clients.len() - 1
            }
        };
        (ci as u32, s.hlc.wrapping_sub(self.base) as i64)
    }

    fn val<'a>(&mut self, v: &'a Val) -> RowValOut<'a> {
        match v {
            Val::Prim(p) => RowValOut::Prim(p),
            Val::Node(n) => RowValOut::Node(*n),
            Val::Gone => RowValOut::Gone,
            // Through a `Value`, whose map sorts the text's fields: the bytes saved before.
            Val::Text(t) => RowValOut::Text(serde_json::json!({ "t": snap_text(t) })),
        }
    }
}

/// A slot's value as a record writes it (what [`RowVal`] reads): the primitive itself,
/// `{"n": index}`, `{}` or `{"t": text}`.
enum RowValOut<'a> {
    Prim(&'a Scalar),
    Node(u32),
    Gone,
    Text(serde_json::Value),
}

impl Serialize for RowValOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            RowValOut::Prim(p) => p.serialize(s),
            RowValOut::Gone => s.serialize_map(Some(0))?.end(),
            RowValOut::Node(n) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("n", n)?;
                m.end()
            }
            RowValOut::Text(t) => t.serialize(s),
        }
    }
}

fn row_node<'a>(n: &'a Node, keys: &'a KeyTable) -> RowNode<'a, RowValOut<'a>> {
    let mut w = RowWriter {
        base: n.id.hlc,
        clients: vec![n.id.client],
    };
    let body = match &n.body {
        Body::Obj(o) => RowBody::O(
            o.slots
                .iter()
                .map(|f| {
                    let plain = f.stamp == n.id && f.u == n.u;
                    let rest = (!plain).then(|| (w.stamp(f.stamp), f.u));
                    RowField(
                        RowKey(std::borrow::Cow::Borrowed(keys.name(f.key))),
                        w.val(&f.val),
                        rest,
                    )
                })
                .collect(),
        ),
        Body::Arr(a) => {
            let common = common_version(a).unwrap_or(n.u);
            let mut before: Option<Stamp> = None;
            let elems = a
                .slots
                .iter()
                .map(|e| {
                    let (origin, right) = (a.link_id(e.origin), a.link_id(e.right));
                    let plain = origin == before
                        && right.is_none()
                        && e.vstamp == e.id
                        && e.removed().is_none()
                        && e.u == common;
                    before = Some(e.id);
                    let rest = (!plain).then(|| {
                        RowElemRest(
                            origin.map(|s| w.stamp(s)),
                            right.map(|s| w.stamp(s)),
                            w.stamp(e.vstamp),
                            e.removed().map(|s| w.stamp(s)),
                            e.u,
                        )
                    });
                    RowElem(w.stamp(e.id), w.val(&e.val), rest)
                })
                .collect();
            if common == n.u {
                RowBody::A(elems, a.order.clone())
            } else {
                RowBody::B(common, elems, a.order.clone())
            }
        }
    };
    RowNode(w.clients, n.id.hlc, n.parent.get(), n.u, body)
}

/// The stamps and values of one saved record read back: the record's clients and base clock.
struct RowReading {
    ix: u32,
    clients: Vec<ClientId>,
    base: u64,
    /// The most elements the record can hold (an element takes 10 bytes or more of its JSON):
    /// a large array's slots are made room for once, not grown by doubling.
    room: usize,
}

impl RowReading {
    fn bad(&self, what: &str) -> Error {
        Error::Snapshot(format!("saved node {}: {what}", self.ix))
    }

    fn stamp(&self, (ci, off): RowStamp) -> Result<Stamp> {
        let client = *self
            .clients
            .get(ci as usize)
            .ok_or_else(|| self.bad("a stamp names no client"))?;
        let hlc = self.base.wrapping_add(off as u64);
        if hlc >= crate::engine::stamp::MAX_HLC {
            return Err(self.bad("a stamp out of range"));
        }
        Ok(Stamp { hlc, client })
    }

    fn val(&self, v: RowVal) -> Result<SnapVal> {
        Ok(match v {
            RowVal::Node(n) => SnapVal::N(
                u32::try_from(n).map_err(|_| self.bad("a child node index is out of range"))?,
            ),
            RowVal::Text(t) => SnapVal::T(t),
            RowVal::Gone => SnapVal::G,
            RowVal::Prim(p) => SnapVal::P(p),
        })
    }

    /// An object's fields (`u`: the node's version).
    fn fields(
        &self,
        fields: Vec<RowField<'_, RowVal>>,
        u: u64,
        keys: &mut KeyTable,
    ) -> Result<Vec<SnapField<KeyId>>> {
        let id = self.stamp((0, 0))?;
        let mut out = Vec::with_capacity(fields.len());
        for RowField(k, v, rest) in fields {
            let (t, u) = match rest {
                Some((t, u)) => (self.stamp(t)?, u),
                None => (id, u),
            };
            out.push(SnapField {
                k: keys.intern(&k.0),
                v: self.val(v)?,
                t,
                u,
            });
        }
        Ok(out)
    }

    /// An array's element (`before`: the id of the slot before it; `u`: the node's version).
    fn elem(&self, e: RowElem<RowVal>, before: Option<Stamp>, u: u64) -> Result<SnapElem> {
        let RowElem(e, v, rest) = e;
        let e = self.stamp(e)?;
        let (o, ro, t, r, u) = match rest {
            Some(RowElemRest(o, ro, t, r, eu)) => (
                o.map(|o| self.stamp(o)).transpose()?,
                ro.map(|ro| self.stamp(ro)).transpose()?,
                self.stamp(t)?,
                r.map(|r| self.stamp(r)).transpose()?,
                eu,
            ),
            None => (before, None, e, None, u),
        };
        Ok(SnapElem {
            e,
            o,
            ro,
            v: self.val(v)?,
            t,
            r,
            u,
        })
    }
}

/// Reads one saved record (a [`RowNode`]) straight into the next node of `r`: an array's
/// elements become the replica's as they are read. An error of ours (not of the JSON) is left in
/// `failed` and stops the reading, so that it reaches the caller as it is, not as a JSON error.
struct RowSeed<'r> {
    ix: u32,
    /// See [`RowReading::room`].
    room: usize,
    /// The replica's number of nodes.
    count: u32,
    /// Rises to the latest version of a slot read.
    max_u: &'r mut u64,
    keys: &'r mut KeyTable,
    failed: &'r mut Option<Error>,
}

/// Keeps `e` in `failed` and stops the reading with it.
fn stop<E: serde::de::Error>(failed: &mut Option<Error>, e: Error) -> E {
    let text = e.to_string();
    *failed = Some(e);
    E::custom(text)
}

impl<'de> serde::de::DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Node;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Node, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowSeed<'_> {
    type Value = Node;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a saved node: [clients, clock, parent, version, body]")
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(
        self,
        mut seq: S,
    ) -> std::result::Result<Node, S::Error> {
        use serde::de::Error as _;
        let reading = RowReading {
            ix: self.ix,
            clients: need(&mut seq)?,
            base: need(&mut seq)?,
            room: self.room,
        };
        let parent: Option<(u32, u32)> = need(&mut seq)?;
        let u: u64 = need(&mut seq)?;
        let body = BodySeed {
            reading: &reading,
            u,
            count: self.count,
            max_u: &mut *self.max_u,
            keys: self.keys,
            failed: &mut *self.failed,
        };
        let body = seq
            .next_element_seed(body)?
            .ok_or_else(|| S::Error::custom("a saved node cut short"))?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(S::Error::custom("a saved node with too many items"));
        }
        let node = reading
            .stamp((0, 0))
            .and_then(|id| checked_node(self.ix, self.count, id, parent, u, body));
        node.map_err(|e| stop(self.failed, e))
    }
}

/// A record's body, `{"O": fields}` or `{"A": [elements, order]}`, read into the node's body.
struct BodySeed<'b> {
    reading: &'b RowReading,
    u: u64,
    count: u32,
    max_u: &'b mut u64,
    keys: &'b mut KeyTable,
    failed: &'b mut Option<Error>,
}

#[derive(Deserialize)]
pub(super) enum BodyTag {
    O,
    A,
    B,
}

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_> {
    type Value = Body;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<Body, D::Error> {
        d.deserialize_enum("RowBody", &["O", "A", "B"], self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_> {
    type Value = Body;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a saved node's body")
    }
    fn visit_enum<A: serde::de::EnumAccess<'de>>(
        self,
        data: A,
    ) -> std::result::Result<Body, A::Error> {
        use serde::de::VariantAccess;
        let (tag, body) = data.variant::<BodyTag>()?;
        match tag {
            BodyTag::O => {
                let fields: Vec<RowField<'de, RowVal>> = body.newtype_variant()?;
                let ix = self.reading.ix;
                self.reading
                    .fields(fields, self.u, self.keys)
                    .and_then(|f| restore_obj(ix, f, self.count, self.max_u, self.keys))
                    .map(Body::Obj)
                    .map_err(|e| stop(self.failed, e))
            }
            BodyTag::A => body.tuple_variant(2, ArrSeed(self, false)),
            BodyTag::B => body.tuple_variant(3, ArrSeed(self, true)),
        }
    }
}

/// `[elements, order]`, or with `true` `[version, elements, order]`: each element made the
/// array's as it is read.
struct ArrSeed<'b>(BodySeed<'b>, bool);

impl<'de> serde::de::Visitor<'de> for ArrSeed<'_> {
    type Value = Body;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a saved array: [elements, order] or [version, elements, order]")
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(
        self,
        mut seq: S,
    ) -> std::result::Result<Body, S::Error> {
        use serde::de::Error as _;
        let BodySeed {
            reading,
            u,
            count,
            max_u,
            failed,
            ..
        } = self.0;
        let u = if self.1 { need(&mut seq)? } else { u };
        let mut b = ArrBuilder::new(reading.ix, count);
        // Address space only: pages are touched as slots are written, and `finish` gives back
        // what is left over.
        b.a.slots.reserve(reading.room.min(RESERVE_AT_MOST));
        let elems = ElemsSeed {
            reading,
            u,
            b: &mut b,
            max_u,
            failed: &mut *failed,
        };
        seq.next_element_seed(elems)?
            .ok_or_else(|| S::Error::custom("a saved array cut short"))?;
        let order: Vec<u32> = need(&mut seq)?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(S::Error::custom("a saved array with too many items"));
        }
        b.finish(order)
            .map(|a| Body::Arr(Box::new(a)))
            .map_err(|e| stop(failed, e))
    }
}

/// An array's elements.
struct ElemsSeed<'b> {
    reading: &'b RowReading,
    u: u64,
    b: &'b mut ArrBuilder,
    max_u: &'b mut u64,
    failed: &'b mut Option<Error>,
}

impl<'de> serde::de::DeserializeSeed<'de> for ElemsSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ElemsSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a saved array's elements")
    }
    fn visit_seq<S: serde::de::SeqAccess<'de>>(
        self,
        mut seq: S,
    ) -> std::result::Result<(), S::Error> {
        while let Some(e) = seq.next_element::<RowElem<RowVal>>()? {
            self.reading
                .elem(e, self.b.last_id(), self.u)
                .and_then(|e| self.b.push(e, self.max_u))
                .map_err(|e| stop(self.failed, e))?;
        }
        Ok(())
    }
}

/// Node `ix` of a replica of `count` nodes from its saved record (see [`SavedParts`]); its keys
/// join `keys`, and `max_u` rises to the latest version of a slot in it.
pub(super) fn read_row(
    ix: u32,
    count: u32,
    row: &[u8],
    keys: &mut KeyTable,
    max_u: &mut u64,
) -> Result<Node> {
    let json = unpack_row(row).map_err(|e| Error::Snapshot(format!("saved node {ix}: {e}")))?;
    let mut failed = None;
    let seed = RowSeed {
        ix,
        room: json.len() / 10,
        count,
        max_u,
        keys,
        failed: &mut failed,
    };
    let mut de = serde_json::Deserializer::from_slice(&json);
    serde::de::DeserializeSeed::deserialize(seed, &mut de)
        .and_then(|node| de.end().map(|()| node))
        .map_err(|e| match failed.take() {
            Some(ours) => ours,
            None => Error::Snapshot(format!("saved node {ix}: {e}")),
        })
}

/// The local version a save mark was made at.
pub(super) fn mark_version(m: SaveMark) -> u64 {
    m.version
}

/// The head of a replica saved in parts ([`Document::save_parts`]) and its number of nodes.
pub(super) fn read_head(head: &str) -> Result<(Snap, u32)> {
    let snap: Snap = serde_json::from_str(head).map_err(|e| Error::Snapshot(e.to_string()))?;
    check_format(&snap)?;
    let Some(count) = snap.node_count else {
        return Err(Error::Snapshot(
            "the saved head does not keep its nodes apart".into(),
        ));
    };
    if count == 0 {
        return Err(Error::Snapshot("no root node".into()));
    }
    Ok((snap, count))
}

/// Where an incremental save left off: the replica's local version and node count then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveMark {
    version: u64,
    nodes: u32,
}

/// Records of JSON longer than this are stored deflated.
const DEFLATE_OVER: usize = 4096;

/// A node's record: its JSON as it is, or deflated when long (a text of a long history, an
/// array of thousands of elements), where it shrinks to a fraction. Deflate's fastest level:
/// an insert into an array of 100,000 elements rewrites its record, 3 MB of JSON, in about a
/// third of the time of the default level, for a record about an eighth larger.
fn pack_row(json: Vec<u8>) -> Vec<u8> {
    use std::io::Write;
    if json.len() <= DEFLATE_OVER {
        return json;
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    match z.write_all(&json).and_then(|()| z.finish()) {
        Ok(packed) => packed,
        Err(_) => json,
    }
}

/// The JSON of a node's record: as it is when it starts as its JSON does (`[`), else inflated.
pub(super) fn unpack_row(row: &[u8]) -> std::result::Result<std::borrow::Cow<'_, [u8]>, String> {
    use std::io::Read;
    if matches!(row.first(), Some(b'[' | b'{')) {
        return Ok(std::borrow::Cow::Borrowed(row));
    }
    // Records deflate to a third or a fifth: room for most at once (address space only).
    let mut json = Vec::with_capacity(row.len().saturating_mul(5));
    flate2::read::ZlibDecoder::new(row)
        .read_to_end(&mut json)
        .map_err(|e| format!("neither JSON nor a zlib stream of it ({e})"))?;
    Ok(std::borrow::Cow::Owned(json))
}

/// A replica saved in parts ([`Document::save_parts`]).
#[derive(Debug, Clone)]
pub struct SavedParts {
    /// Everything but the nodes, with their count (JSON).
    pub head: String,
    /// (index, record) of each node saved: its JSON, or for JSON of more than 4 KiB that JSON
    /// deflated (a zlib stream, RFC 1950; a record's first byte tells which).
    pub nodes: Vec<(u32, Vec<u8>)>,
    /// Where this save leaves off.
    pub mark: SaveMark,
}

impl Document {
    /// Everything but the nodes.
    fn head(&self) -> Snap {
        Snap {
            format: SNAPSHOT_FORMAT.into(),
            version: SNAPSHOT_VERSION,
            doc_id: self.doc_id.clone(),
            client: self.client,
            doc_version: self.version,
            clock: self.clock.last(),
            knows: self.knows.clone(),
            partial: self.partial.clone(),
            peers: self
                .peers
                .iter()
                .map(|(c, p)| {
                    (
                        *c,
                        SnapPeer {
                            last_received: p.last_received,
                            last_acknowledged: p.last_acknowledged,
                            last_confirmed: Some(p.last_confirmed),
                            knows: p.knows.clone(),
                            lists: p.lists.clone(),
                        },
                    )
                })
                .collect(),
            node_count: None,
            nodes: Vec::new(),
        }
    }

    /// The whole replica state as JSON text, for storage.
    pub fn save(&self) -> String {
        debug_assert!(self.is_whole(), "a replica loaded in part saved whole");
        let mut snap = self.head();
        snap.nodes = self
            .nodes
            .iter()
            .map(|n| snap_node(n, &self.keys))
            .collect();
        serde_json::to_string(&snap).unwrap_or_default()
    }

    /// Where a save made now leaves off (for the next [`Document::save_parts`]).
    pub fn save_mark(&self) -> SaveMark {
        SaveMark {
            version: self.version,
            nodes: self.nodes.len() as u32,
        }
    }

    /// The replica saved in parts: the head (everything but the nodes, with their count) and
    /// the nodes, each as its own JSON text — all of them without `since`, else only those
    /// created or changed after that mark (every change to a node raises its version). Storing
    /// the head and these nodes over what was stored at `since` gives exactly [`Document::save`]'s
    /// replica; [`Document::restore_parts`] reads it back.
    pub fn save_parts(&self, since: Option<SaveMark>) -> SavedParts {
        let mut nodes = Vec::new();
        let (head, mark) = self
            .save_parts_each(since, |ix, record| {
                nodes.push((ix, record));
                Ok::<(), std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        SavedParts { head, nodes, mark }
    }

    /// [`Document::save_parts`] handing each node's `(index, record)` to `put` as it is made,
    /// so that a whole save never holds all the records at once (20 MB for a 10 MB document);
    /// the head and the mark.
    ///
    /// # Errors
    ///
    /// The first error of `put`, after which no more records are made.
    pub fn save_parts_each<E>(
        &self,
        since: Option<SaveMark>,
        mut put: impl FnMut(u32, Vec<u8>) -> std::result::Result<(), E>,
    ) -> std::result::Result<(String, SaveMark), E> {
        debug_assert!(
            since.is_some() || self.is_whole(),
            "a replica loaded in part saved whole"
        );
        let mut head = self.head();
        head.node_count = Some(self.nodes.len() as u32);
        let changed = |(ix, n): &(usize, &Node)| match since {
            None => true,
            Some(m) => *ix as u32 >= m.nodes || n.u > m.version,
        };
        for (ix, n) in self.nodes.iter().enumerate().filter(changed) {
            let text = serde_json::to_vec(&row_node(n, &self.keys)).unwrap_or_default();
            put(ix as u32, pack_row(text))?;
        }
        let head = serde_json::to_string(&head).unwrap_or_default();
        Ok((head, self.save_mark()))
    }

    /// Restores a replica saved by [`Document::save_parts`]: its head and all its nodes, in
    /// order of their index (0, 1, 2, …).
    ///
    /// # Errors
    ///
    /// [`Error::Snapshot`] when the head is not one of parts, a node is missing, extra, out of
    /// order or unreadable, or the whole is inconsistent (as [`Document::restore`]).
    pub fn restore_parts(
        head: &str,
        nodes: impl IntoIterator<Item = (u32, Vec<u8>)>,
    ) -> Result<(Self, SaveMark)> {
        let (snap, count) = read_head(head)?;
        let mut r = Restoring::new(count);
        let mut keys = KeyTable::default();
        for (ix, text) in nodes {
            if ix != r.nodes.len() as u32 || ix >= count {
                return Err(Error::Snapshot(format!(
                    "saved node {ix} where node {} of {count} was expected",
                    r.nodes.len()
                )));
            }
            let node = read_row(ix, count, &text, &mut keys, &mut r.max_u)?;
            r.add(node)?;
        }
        if r.nodes.len() as u32 != count {
            return Err(Error::Snapshot(format!(
                "{} saved nodes of {count}",
                r.nodes.len()
            )));
        }
        let doc = Self::from_restored(snap, r, keys)?;
        let mark = doc.save_mark();
        Ok((doc, mark))
    }

    /// Restores a replica saved by [`Document::save`], checking that it is consistent.
    ///
    /// # Errors
    ///
    /// [`Error::Snapshot`] when the text is not a saved replica of a known version, keeps its
    /// nodes apart ([`Document::restore_parts`] reads those), or is inconsistent.
    pub fn restore(text: &str) -> Result<Self> {
        let snap: Snap = serde_json::from_str(text).map_err(|e| Error::Snapshot(e.to_string()))?;
        if snap.node_count.is_some() {
            return Err(Error::Snapshot(
                "the saved head keeps its nodes apart".into(),
            ));
        }
        Self::from_snap(snap, KeyTable::default())
    }

    /// `keys`: the table the nodes' keys were read into (their shared names).
    fn from_snap(mut snap: Snap, mut keys: KeyTable) -> Result<Self> {
        let mut r = Restoring::new(snap.nodes.len() as u32);
        for n in std::mem::take(&mut snap.nodes) {
            r.push(n, &mut keys)?;
        }
        Self::from_restored(snap, r, keys)
    }

    /// The replica of a saved head and its nodes, restored already.
    fn from_restored(snap: Snap, r: Restoring, keys: KeyTable) -> Result<Self> {
        check_format(&snap)?;
        let Restoring {
            nodes,
            by_id,
            max_u,
            ..
        } = r;
        if nodes.is_empty() {
            return Err(Error::Snapshot("no root node".into()));
        }
        check_tree(&nodes, |_| true)?;
        Ok(Self::assemble(snap, nodes, by_id, keys, max_u))
    }

    /// The replica of a saved head and its nodes, checked already (`max_u`: the latest version
    /// of a slot among them).
    pub(super) fn assemble(
        snap: Snap,
        nodes: Vec<Node>,
        by_id: IdIndex,
        keys: KeyTable,
        max_u: u64,
    ) -> Self {
        // The content digest is computed when first asked for (a merge or a changes object).
        let mut doc = Document {
            doc_id: snap.doc_id,
            client: snap.client,
            version: snap.doc_version,
            clock: Hlc::at(snap.clock),
            nodes,
            by_id,
            keys,
            // Every slot changed at or before the saved version: no entry (see `change_index.rs`).
            index: ChangeIndex::from_base(snap.doc_version),
            index_later: false,
            peers: snap
                .peers
                .into_iter()
                .map(|(c, p)| {
                    (
                        c,
                        PeerState {
                            last_received: p.last_received,
                            last_acknowledged: p.last_acknowledged,
                            last_confirmed: p.last_confirmed.unwrap_or(p.last_acknowledged),
                            knows: p.knows,
                            lists: p.lists,
                        },
                    )
                })
                .collect(),
            knows: snap.knows,
            partial: snap.partial,
            digest: std::cell::Cell::new(None),
            wall: Arc::new(system_now_ms),
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            in_part: None,
        };
        if max_u > doc.version {
            // A slot changed after the saved version (no replica is saved so, but one that was
            // still loads): every slot is entered, as before the base existed.
            doc.index = ChangeIndex::from_base(0);
            doc.index_all();
        }
        doc
    }
}

#[cfg(test)]
mod parts_tests {
    use super::*;
    use serde_json::json;

    /// A replica saved by version 4, its text as one array per piece, written by the agent
    /// before texts were saved as columns.
    const VERSION_4: &str = r#"{"format":"minisync-replica","version":4,"doc_id":"yhw6itvu5qp86uo2","client":"rwp28yu3jj7utit5","doc_version":3,"clock":117703859961200652,"knows":{"rwp28yu3jj7utit5":117703859961200652},"peers":{"hdl6tomcbrh7zcjp":{"last_received":1,"last_acknowledged":2,"last_confirmed":2,"knows":{"rwp28yu3jj7utit5":117703859961200651},"lists":["rwp28yu3jj7utit5"]}},"nodes":[{"id":"1a22b0979ae0000-rwp28yu3jj7utit5","parent":null,"u":3,"obj":[{"k":"text","v":{"T":{"id":"1a22b0979ae0000-rwp28yu3jj7utit5","i":11,"c":{"rwp28yu3jj7utit5":117703859961200652},"p":[[0,3,null,null,1,"hel"],[12,1,2,3,3,"x"],[3,2,2,null,1,"lo"],[11,1,4,5,2,","],[5,6,4,null,1," world"]]}},"t":"1a22b0979ae0000-rwp28yu3jj7utit5","u":3}]}]}"#;

    #[test]
    fn a_text_saved_by_version_4_loads_and_is_saved_again_as_columns() {
        let old = Document::restore(VERSION_4).unwrap();
        assert_eq!(old.get("text").unwrap(), Some(json!("helxlo, world")));
        let saved = old.save();
        assert!(
            saved.contains("\"cols\"") && !saved.contains("\"p\""),
            "{saved}"
        );
        let back = Document::restore(&saved).unwrap();
        assert_eq!(back.digest(), old.digest());
        assert_eq!(back.save(), saved);
    }

    /// An element pushed onto a large array raises the array's version, not its elements': the
    /// record still writes them short (`B`, their version once), and loads back the same.
    #[test]
    fn an_array_pushed_onto_keeps_its_elements_short() {
        let mut d = Document::new(&json!({"a": (0..1000).collect::<Vec<_>>()})).unwrap();
        let row = |d: &Document| {
            let p = d.save_parts(None);
            String::from_utf8(unpack_row(&p.nodes[1].1).unwrap().into_owned()).unwrap()
        };
        let before = row(&d);
        assert!(before.contains("{\"A\":"), "{before}");
        d.push("a", json!(1000)).unwrap();
        let after = row(&d);
        assert!(after.contains("{\"B\":[1,"), "{after}");
        assert!(
            after.len() < before.len() + 100,
            "{} then {}",
            before.len(),
            after.len()
        );
        let p = d.save_parts(None);
        let (back, _) = Document::restore_parts(&p.head, p.nodes).unwrap();
        assert_eq!(back.save(), d.save());
        assert_eq!(back.get("a[1000]").unwrap(), Some(json!(1000)));
    }

    #[test]
    fn a_long_node_is_stored_deflated_and_restored() {
        let mut d = Document::new(&json!({"t": "x".repeat(10_000)})).unwrap();
        d.splice_text("t", 5, 0, "y").unwrap();
        let p = d.save_parts(None);
        assert!(p.nodes[0].1.len() < 1000, "{} bytes", p.nodes[0].1.len());
        assert_ne!(p.nodes[0].1.first(), Some(&b'['));
        let (back, _) = Document::restore_parts(&p.head, p.nodes).unwrap();
        assert_eq!(back.save(), d.save());
    }

    fn parts() -> SavedParts {
        let mut d = Document::new(&json!({"a": [1, {"b": "x"}], "t": "hello"})).unwrap();
        d.splice_text("t", 5, 0, " world").unwrap();
        d.remove("a[0]").unwrap();
        d.save_parts(None)
    }

    #[test]
    fn a_replica_in_parts_reads_back_exactly() {
        let mut d = Document::new(&json!({"a": [1, {"b": "x"}], "t": "hello"})).unwrap();
        d.splice_text("t", 5, 0, " world").unwrap();
        d.remove("a[0]").unwrap();
        d.set("a[0].c", json!(null)).unwrap();
        let p = d.save_parts(None);
        let (back, mark) = Document::restore_parts(&p.head, p.nodes).unwrap();
        assert_eq!(back.save(), d.save());
        assert_eq!(mark, d.save_mark());
    }

    /// What `restore_parts` says when it refuses these parts (`None`: it restored them).
    fn refusal(head: &str, nodes: Vec<(u32, Vec<u8>)>) -> Option<String> {
        Document::restore_parts(head, nodes)
            .err()
            .map(|e| e.to_string())
    }

    /// An element's origins are held as links to elements of the same array; an origin the array
    /// lacks (a replica saved after a hostile changes object) is kept as it was saved, so that the
    /// replica still loads and saves the same.
    #[test]
    fn an_element_whose_origin_is_not_in_its_array_keeps_it() {
        let mut d = Document::new(&serde_json::json!({"a": [1, 2]})).unwrap();
        d.insert("a", 1, serde_json::json!(3)).unwrap();
        let p = d.save_parts(None);
        let (back, _) = Document::restore_parts(&p.head, p.nodes.clone()).unwrap();
        assert_eq!(back.get("a").unwrap(), Some(serde_json::json!([1, 3, 2])));
        // The record: [clients, base clock, parent, version, {"B": [elements' version,
        // elements, order]}], an element [id, value, origin, right origin, value stamp, removal,
        // version]; the third, inserted after the first, gets an origin 999 clock steps after
        // the array's id.
        let mut row: serde_json::Value = serde_json::from_slice(&p.nodes[1].1).unwrap();
        let origin = &mut elements(&mut row).0[2][2];
        assert_eq!(origin[0], 0, "an origin stamp: [client, offset]");
        *origin = serde_json::json!([0, 999]);
        let mut nodes = p.nodes.clone();
        nodes[1].1 = row.to_string().into_bytes();
        let (odd, _) = Document::restore_parts(&p.head, nodes.clone()).unwrap();
        assert_eq!(odd.get("a").unwrap(), Some(serde_json::json!([1, 3, 2])));
        let again = odd.save_parts(None);
        assert_eq!(again.nodes[1].1, nodes[1].1, "saved as it was read");
        assert_ne!(
            odd.digest(),
            back.digest(),
            "the origin is part of the digest"
        );
    }

    /// An array record's elements, and the version of its short ones (`A`: the node's; `B`: its
    /// own).
    fn elements(row: &mut serde_json::Value) -> (&mut Vec<serde_json::Value>, serde_json::Value) {
        let version = row[3].clone();
        let body = &mut row[4];
        if body.get("B").is_some() {
            let b = body["B"].as_array_mut().unwrap();
            let version = b[0].clone();
            (b[1].as_array_mut().unwrap(), version)
        } else {
            (body["A"][0].as_array_mut().unwrap(), version)
        }
    }

    /// A removed element keeps only its removal's stamp. Saved by the code before, it also carries
    /// the stamp of the value it had; that replica loads the same, and saves like one removed here.
    #[test]
    fn a_removed_element_saved_with_its_old_value_stamp_loads_the_same() {
        let mut d = Document::new(&json!({"a": [1, {"b": 2}, 3]})).unwrap();
        d.remove("a[1]").unwrap();
        let p = d.save_parts(None);
        let mut row: serde_json::Value = serde_json::from_slice(&p.nodes[1].1).unwrap();
        let removed = &mut elements(&mut row).0[1];
        assert_eq!(
            removed[4], removed[5],
            "saved: the removal in place of the value stamp"
        );
        // The record before: [id, value, origin, right origin, value stamp, removal, version].
        removed[4] = removed[0].clone();
        let mut nodes = p.nodes.clone();
        nodes[1].1 = row.to_string().into_bytes();
        let (old, _) = Document::restore_parts(&p.head, nodes).unwrap();
        assert_eq!(old.get("a").unwrap(), Some(json!([1, 3])));
        assert_eq!(old.digest(), d.digest());
        assert_eq!(old.changes(), d.changes());
        assert_eq!(old.save_parts(None).nodes, p.nodes);
    }

    /// An array record is read an element at a time; an origin that is a later slot (slots are
    /// in arrival order, so only a hand-made or hostile record has one) still links to that slot,
    /// not to a stamp kept aside, and the replica saves as it was read.
    #[test]
    fn an_element_whose_origin_is_a_later_slot_links_to_it() {
        let mut d = Document::new(&serde_json::json!({"a": [1, 2]})).unwrap();
        d.insert("a", 1, serde_json::json!(3)).unwrap();
        let p = d.save_parts(None);
        let mut row: serde_json::Value = serde_json::from_slice(&p.nodes[1].1).unwrap();
        let (elems, version) = elements(&mut row);
        // The second slot, [id, value] (after the first, of the node's version), written out in
        // full with the third slot as its origin.
        let third = elems[2][0].clone();
        let second = &mut elems[1];
        *second = serde_json::json!([second[0], second[1], third, null, second[0], null, version]);
        let mut nodes = p.nodes.clone();
        nodes[1].1 = row.to_string().into_bytes();
        let (odd, _) = Document::restore_parts(&p.head, nodes.clone()).unwrap();
        let Body::Arr(a) = &odd.nodes[1].body else {
            panic!("node 1 is the array");
        };
        assert!(a.foreign.is_empty(), "the origin is a slot of the array");
        assert_eq!(a.link_id(a.slots[1].origin), Some(a.slots[2].id));
        assert_eq!(
            odd.save_parts(None).nodes[1].1,
            nodes[1].1,
            "saved as it was read"
        );
    }

    /// Hostile or damaged node records are refused with what is wrong, never a panic.
    #[test]
    fn every_kind_of_value_reads_back_from_parts() {
        let v = serde_json::json!({
            "big": serde_json::from_str::<serde_json::Value>("123456789012345678901234567890").unwrap(),
            "f": 1.5, "neg": -3, "s": "x", "nul": null, "b": false, "empty": {}, "list": [[], {}],
            "many": {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7, "h": 8, "i": 9, "j": 10}
        });
        let mut d = Document::new(&v).unwrap();
        d.splice_text("s", 1, 0, "yz").unwrap();
        d.set("many.k", serde_json::json!(11)).unwrap();
        let p = d.save_parts(None);
        let (back, _) = Document::restore_parts(&p.head, p.nodes).unwrap();
        assert_eq!(back.to_json(), d.to_json());
        assert_eq!(back.digest(), d.digest());
        assert_eq!(back.get("many.k").unwrap(), Some(serde_json::json!(11)));
    }

    /// A restored replica computes its digest when first asked; edits made before or after that
    /// leave it equal to the digest of a replica that kept it all along.
    #[test]
    fn a_restored_replica_knows_its_digest_whenever_it_is_asked() {
        let mut live =
            Document::new(&serde_json::json!({"a": {"b": [1, 2]}, "t": "text"})).unwrap();
        let p = live.save_parts(None);
        let (mut early, _) = Document::restore_parts(&p.head, p.nodes.clone()).unwrap();
        let (mut late, _) = Document::restore_parts(&p.head, p.nodes).unwrap();
        assert_eq!(early.digest(), live.digest());
        for d in [&mut live, &mut early, &mut late] {
            // A clock behind the saved one: all three stamp their edits alike (with the
            // system clock a millisecond passing between them made the digests differ).
            d.set_wall_clock(std::sync::Arc::new(|| 1_000));
            d.set("a.b", serde_json::json!({"c": true})).unwrap();
            d.splice_text("t", 4, 0, "s").unwrap();
            d.remove("a").unwrap();
            d.set("n", serde_json::json!([3])).unwrap();
        }
        assert_eq!(early.digest(), live.digest());
        assert_eq!(late.digest(), live.digest());
    }

    /// A damaged head: an absurd node count reserves no gigabytes (it is refused once the nodes
    /// fall short of it), a clock beyond any clock value is refused.
    #[test]
    fn a_head_with_an_absurd_count_or_clock_is_refused() {
        let p = parts();
        let mut head: serde_json::Value = serde_json::from_str(&p.head).unwrap();
        head["node_count"] = serde_json::json!(u32::MAX);
        let e = refusal(&head.to_string(), p.nodes.clone());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("of 4294967295")),
            "{e:?}"
        );
        let mut head: serde_json::Value = serde_json::from_str(&p.head).unwrap();
        head["clock"] = serde_json::json!(crate::engine::stamp::MAX_HLC);
        let e = refusal(&head.to_string(), p.nodes.clone());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("beyond any clock")),
            "{e:?}"
        );
    }

    #[test]
    fn damaged_node_records_are_refused() {
        let p = parts();
        let cases = [
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k",1,[3,0],1]]}]"#,
                "no client",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k",{"x":1}]]}]"#,
                "unknown form",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k",1,[0,0]]]}]"#,
                "cut short",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k",1,[0,0],1,9]]}]"#,
                "too many",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k"]]}]"#,
                "2 or more",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"A":[[[[0,1],{"n":"x"}]],[0]]}]"#,
                "expected u64",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k",{"q":1}]]}]"#,
                "unknown form",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[["k",{"n":1,"t":2}]]}]"#,
                "unknown form",
            ),
            // An array's elements are made the replica's as they are read: an error in one is
            // still ours, naming the node, and ends the load.
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"A":[[[[0,1],1],[[4,2],2]],[0,1]]}]"#,
                "saved node 1: a stamp names no client",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"A":[[[[0,1],1],[[0,1],2]],[0,1]]}]"#,
                "array node 1 has a broken order",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"A":[[[[0,1],1]],[0],[0]]}]"#,
                "too many items",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"A":[[[[0,1],1]]]}]"#,
                "cut short",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"A":[[[[0,1],1]],[1]]}]"#,
                "broken order",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"B":["x",[[[0,1],1]],[0]]}]"#,
                "expected u64",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"B":[3,[[[0,1],1]]]}]"#,
                "cut short",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"B":[3,[[[0,1],1]],[0],1]}]"#,
                "too many items",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"Q":[]}]"#,
                "unknown variant",
            ),
            (
                r#"[["aaaaaaaaaaaaaaaa"],5,[0,0],1,{"O":[]},7]"#,
                "too many items",
            ),
        ];
        for (row, want) in cases {
            let mut nodes = p.nodes.clone();
            nodes[1].1 = row.as_bytes().to_vec();
            let e = refusal(&p.head, nodes);
            assert!(
                e.as_deref().is_some_and(|e| e.contains(want)),
                "{row}: {e:?}"
            );
        }
        let mut garbled = p.nodes.clone();
        garbled[1].1 = vec![0x78, 0x9c, 1, 2, 3];
        let e = refusal(&p.head, garbled);
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("neither JSON nor a zlib stream")),
            "{e:?}"
        );
        let mut missing = p.nodes.clone();
        missing.remove(1);
        assert!(Document::restore_parts(&p.head, missing).is_err());
        assert!(
            Document::restore(&p.head).is_err(),
            "a head alone is no replica"
        );
    }
}
