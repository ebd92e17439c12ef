//! Saving a replica whole and restoring it exactly: client id, version, clock, peer table and every
//! slot with its stamp and version. The form is flat (a list of nodes), so restoring never recurses.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::doc::{Arr, Body, Document, Elem, Field, Node, Obj, PeerState, Val};
use crate::engine::error::{Error, Result};
use crate::engine::stamp::{ClientId, DEFAULT_MAX_SKEW_MS, Hlc, Stamp, system_now_ms};
use crate::engine::text::{Piece, Text};
use crate::engine::wire::Knowledge;

const SNAPSHOT_FORMAT: &str = "minisync-replica";
/// Version 4 may keep the nodes apart from the rest (`node_count`, [`Document::save_parts`]), so
/// that a save writes only the nodes changed since the last one; version 3 added texts and elements' right origins; version 2 each peer's `last_confirmed`
/// and the record of partial merges. Older states are still restored: a peer's
/// `last_confirmed` is then its `last_acknowledged`, and an element's right origin the array
/// end (its place is kept; concurrent inserts next to it are ordered as if it had been appended).
const SNAPSHOT_VERSION: u32 = 4;

#[derive(Serialize, Deserialize)]
struct Snap {
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

#[derive(Serialize, Deserialize)]
struct SnapField {
    k: String,
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
    P(Value),
    N(u32),
    G,
    T(SnapText),
}

/// A text: its id, initial run length, edits per client, and its pieces in document order.
#[derive(Serialize, Deserialize)]
struct SnapText {
    id: Stamp,
    i: u32,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    c: Knowledge,
    p: Vec<SnapPiece>,
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

fn snap_stamp(base: Stamp, s: Stamp) -> SnapStamp {
    if s.client == base.client && s.hlc >= base.hlc {
        SnapStamp::Offset(s.hlc - base.hlc)
    } else {
        SnapStamp::Full(s)
    }
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
    let st = |s: Stamp| snap_stamp(t.id, s);
    SnapText {
        id: t.id,
        i: t.init,
        c: t.ops.clone(),
        p: t.pieces()
            .map(|p| {
                SnapPiece(
                    st(p.id),
                    p.len,
                    p.left.map(st),
                    p.right.map(st),
                    p.u,
                    p.s.clone(),
                )
            })
            .collect(),
    }
}

fn restore_text(t: SnapText) -> Result<Text> {
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
        Val::Text(t) => SnapVal::T(snap_text(t)),
        Val::Node(n) => SnapVal::N(*n),
        Val::Gone => SnapVal::G,
    }
}

fn snap_node(n: &Node) -> SnapNode {
    SnapNode {
        id: n.id,
        parent: n.parent,
        u: n.u,
        obj: match &n.body {
            Body::Obj(o) => Some(
                o.slots
                    .iter()
                    .map(|f| SnapField {
                        k: f.key.clone(),
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
                        o: e.origin,
                        ro: e.right,
                        v: snap_val(&e.val),
                        t: e.vstamp,
                        r: e.removed,
                        u: e.u,
                    })
                    .collect(),
                order: a.order.clone(),
            }),
            Body::Obj(_) => None,
        },
    }
}

/// Where an incremental save left off: the replica's local version and node count then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaveMark {
    version: u64,
    nodes: u32,
}

/// A replica saved in parts ([`Document::save_parts`]).
#[derive(Debug, Clone)]
pub struct SavedParts {
    /// Everything but the nodes, with their count (JSON).
    pub head: String,
    /// (index, JSON) of each node saved.
    pub nodes: Vec<(u32, String)>,
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
        let mut snap = self.head();
        snap.nodes = self.nodes.iter().map(snap_node).collect();
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
        let mut head = self.head();
        head.node_count = Some(self.nodes.len() as u32);
        let changed = |(ix, n): &(usize, &Node)| match since {
            None => true,
            Some(m) => *ix as u32 >= m.nodes || n.u > m.version,
        };
        SavedParts {
            head: serde_json::to_string(&head).unwrap_or_default(),
            nodes: self
                .nodes
                .iter()
                .enumerate()
                .filter(changed)
                .map(|(ix, n)| {
                    let text = serde_json::to_string(&snap_node(n)).unwrap_or_default();
                    (ix as u32, text)
                })
                .collect(),
            mark: self.save_mark(),
        }
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
        nodes: impl IntoIterator<Item = (u32, String)>,
    ) -> Result<(Self, SaveMark)> {
        let mut snap: Snap =
            serde_json::from_str(head).map_err(|e| Error::Snapshot(e.to_string()))?;
        let Some(count) = snap.node_count else {
            return Err(Error::Snapshot(
                "the saved head does not keep its nodes apart".into(),
            ));
        };
        let mut list = Vec::with_capacity(count as usize);
        for (ix, text) in nodes {
            if ix != list.len() as u32 || ix >= count {
                return Err(Error::Snapshot(format!(
                    "saved node {ix} where node {} of {count} was expected",
                    list.len()
                )));
            }
            let node: SnapNode = serde_json::from_str(&text)
                .map_err(|e| Error::Snapshot(format!("saved node {ix}: {e}")))?;
            list.push(node);
        }
        if list.len() as u32 != count {
            return Err(Error::Snapshot(format!(
                "{} saved nodes of {count}",
                list.len()
            )));
        }
        snap.nodes = list;
        let doc = Self::from_snap(snap)?;
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
        Self::from_snap(snap)
    }

    fn from_snap(snap: Snap) -> Result<Self> {
        if snap.format != SNAPSHOT_FORMAT || !(1..=SNAPSHOT_VERSION).contains(&snap.version) {
            return Err(Error::Snapshot(format!(
                "unknown saved format {:?} version {}",
                snap.format, snap.version
            )));
        }
        let bad = |m: String| Error::Snapshot(m);
        let count = snap.nodes.len() as u32;
        if count == 0 {
            return Err(bad("no root node".into()));
        }
        let val = |v: SnapVal| -> Result<Val> {
            Ok(match v {
                SnapVal::P(p) if !p.is_object() && !p.is_array() => Val::Prim(p),
                SnapVal::P(_) => return Err(bad("a primitive slot holds a container".into())),
                SnapVal::N(n) if n > 0 && n < count => Val::Node(n),
                SnapVal::N(n) => return Err(bad(format!("slot refers to node {n} of {count}"))),
                SnapVal::G => Val::Gone,
                SnapVal::T(t) => Val::Text(Box::new(restore_text(t)?)),
            })
        };
        let mut nodes = Vec::with_capacity(snap.nodes.len());
        let mut by_id = HashMap::new();
        let mut index = BTreeSet::new();
        for (ix, n) in snap.nodes.into_iter().enumerate() {
            let ix = ix as u32;
            if by_id.insert(n.id, ix).is_some() {
                return Err(bad(format!("node id {} appears twice", n.id)));
            }
            if (ix == 0) != n.parent.is_none() || n.parent.is_some_and(|(p, _)| p >= count) {
                return Err(bad(format!("node {ix} has an impossible parent")));
            }
            let body = match (n.obj, n.arr) {
                (Some(fields), None) => {
                    let mut o = Obj::default();
                    for (s, f) in fields.into_iter().enumerate() {
                        index.insert((f.u, ix, s as u32));
                        if o.keys.insert(f.k.clone(), s as u32).is_some() {
                            return Err(bad(format!("node {ix} has key {:?} twice", f.k)));
                        }
                        o.slots.push(Field {
                            key: f.k,
                            val: val(f.v)?,
                            stamp: f.t,
                            u: f.u,
                        });
                    }
                    Body::Obj(o)
                }
                (None, Some(sa)) => {
                    let mut a = Arr::default();
                    for (s, e) in sa.slots.into_iter().enumerate() {
                        index.insert((e.u, ix, s as u32));
                        a.by_id.insert(e.e, s as u32);
                        if e.r.is_some() {
                            a.dead += 1;
                        }
                        a.slots.push(Elem {
                            id: e.e,
                            origin: e.o,
                            right: e.ro,
                            val: val(e.v)?,
                            vstamp: e.t,
                            removed: e.r,
                            u: e.u,
                        });
                    }
                    let mut seen = vec![false; a.slots.len()];
                    for s in &sa.order {
                        match seen.get_mut(*s as usize) {
                            Some(b) if !*b => *b = true,
                            _ => return Err(bad(format!("array node {ix} has a broken order"))),
                        }
                    }
                    if sa.order.len() != a.slots.len() || a.by_id.len() != a.slots.len() {
                        return Err(bad(format!("array node {ix} has a broken order")));
                    }
                    a.order = sa.order;
                    Body::Arr(a)
                }
                _ => return Err(bad(format!("node {ix} is neither object nor array"))),
            };
            nodes.push(Node {
                id: n.id,
                parent: n.parent,
                u: n.u,
                body,
            });
        }
        if !matches!(nodes[0].body, Body::Obj(_)) {
            return Err(bad("the root is not an object".into()));
        }
        for (ix, n) in nodes.iter().enumerate() {
            if let Some((p, s)) = n.parent {
                let len = match &nodes[p as usize].body {
                    Body::Obj(o) => o.slots.len(),
                    Body::Arr(a) => a.slots.len(),
                };
                if s as usize >= len {
                    return Err(bad(format!("node {ix} names a slot its parent lacks")));
                }
            }
        }
        let mut doc = Document {
            doc_id: snap.doc_id,
            client: snap.client,
            version: snap.doc_version,
            clock: Hlc::at(snap.clock),
            nodes,
            by_id,
            index,
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
                        },
                    )
                })
                .collect(),
            knows: snap.knows,
            partial: snap.partial,
            digest: 0,
            wall: Arc::new(system_now_ms),
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
        };
        doc.recompute_digest();
        Ok(doc)
    }
}
