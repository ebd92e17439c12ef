//! Writing a changes object: first as a [`Tree`], the JSON value's shape with nothing copied,
//! then as a `serde_json::Value` (JSON text) or straight as the compact form.
//!
//! A full sync of a large document writes millions of values. Building them as a
//! `serde_json::Value` first costs a map per object, a `String` per key and per stamp, and a
//! copy of every user value; the compact form then parsed each stamp back out of its string.
//! The tree borrows keys and user values from the changes object, holds stamps as stamps, and
//! keeps an object's entries in a vector, so the compact writer (see `compact.rs`) goes from the
//! changes object to bytes at the cost of one small allocation per object. The layout written
//! (which keys, what each leaves out) is the one docs/PROTOCOL.md describes under "Nodes" and
//! "Text"; `wire.rs` reads it back.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::engine::scalar::Scalar;
use crate::engine::stamp::{MAX_HLC, Stamp};
use crate::engine::text::Piece;
use crate::engine::wire::{
    Changes, FORMAT_MARKER, FORMAT_VERSION, Knowledge, RepairKind, WBody, WElem, WField, WNode,
    WText, WVal,
};

/// A JSON value as written: borrowed where the changes object holds it already.
#[derive(Debug)]
pub(crate) enum Tree<'a> {
    Null,
    Bool(bool),
    Uint(u64),
    /// A user value (number, boolean, null or string), as the document holds it.
    Prim(&'a Scalar),
    Str(Cow<'a, str>),
    /// A stamp, written as the string `{hlc:x}-{client}`.
    Stamp(Stamp),
    Arr(Vec<Tree<'a>>),
    /// An object's entries, each key once.
    Obj(Vec<(Cow<'a, str>, Tree<'a>)>),
    /// A node (with the id and version a reader assumes for it, see [`node_tree`]), made into
    /// its tree only as it is written: a full changes object's tree is then never whole in
    /// memory, only the record being written (a third of a full sync's memory otherwise).
    Node(&'a WNode, Option<Stamp>, u64),
    /// One list of an array node's elements, each made into its tree as it is written.
    Elems(ElemList<'a>),
}

/// The live or the removed elements of an array node (see [`arr_tree`]).
#[derive(Debug)]
pub(crate) struct ElemList<'a> {
    node: &'a WNode,
    elems: &'a [WElem],
    removed: bool,
    len: usize,
}

impl<'a> ElemList<'a> {
    fn new(node: &'a WNode, elems: &'a [WElem], removed: bool) -> Self {
        let len = elems
            .iter()
            .filter(|e| ElemList::listed(e, removed))
            .count();
        ElemList {
            node,
            elems,
            removed,
            len,
        }
    }

    /// Whether `e` is written in the list of live (`removed` false) or removed elements.
    fn listed(e: &WElem, removed: bool) -> bool {
        if removed {
            e.removed.is_some()
        } else {
            e.removed.is_none() && e.val.is_some()
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Calls `f` with each element's tree, in order.
    pub fn each(&self, mut f: impl FnMut(Tree<'a>)) {
        // The previous entry's id and right origin, which imply the next's; an element of this
        // list's kind (removed or not) that is not written still counts as the previous one.
        let mut prev = (None, None);
        for e in self.elems {
            if e.removed.is_some() != self.removed {
                continue;
            }
            let t = elem_tree(self.node, e, &mut prev);
            if ElemList::listed(e, self.removed) {
                f(t);
            }
        }
    }
}

/// The tree written as JSON (with `serde_json`: text byte for byte as its `Value` would be, an
/// object's keys in byte order), a node or element list made into its tree only as it is
/// written, so that a full changes object's JSON text needs no `Value` of it (several times the
/// text).
impl serde::Serialize for Tree<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeMap, SerializeSeq};
        match self {
            Tree::Null => s.serialize_unit(),
            Tree::Bool(b) => s.serialize_bool(*b),
            Tree::Uint(n) => s.serialize_u64(*n),
            Tree::Prim(v) => v.serialize(s),
            Tree::Str(t) => s.serialize_str(t),
            Tree::Stamp(st) => s.collect_str(st),
            Tree::Arr(items) => s.collect_seq(items),
            Tree::Obj(entries) => {
                let mut sorted: Vec<&(Cow<'_, str>, Tree<'_>)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                let mut m = s.serialize_map(Some(sorted.len()))?;
                for (k, v) in sorted {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Tree::Node(n, implied, parent_u) => node_tree(n, *implied, *parent_u).serialize(s),
            Tree::Elems(list) => {
                let mut seq = s.serialize_seq(Some(list.len()))?;
                let mut failed = None;
                list.each(|t| {
                    if failed.is_none()
                        && let Err(e) = seq.serialize_element(&t)
                    {
                        failed = Some(e.to_string());
                    }
                });
                match failed {
                    Some(e) => Err(S::Error::custom(e)),
                    None => seq.end(),
                }
            }
        }
    }
}

impl Tree<'_> {
    /// The same value as a `serde_json::Value`.
    pub fn into_value(self) -> Value {
        match self {
            Tree::Null => Value::Null,
            Tree::Bool(b) => Value::Bool(b),
            Tree::Uint(n) => n.into(),
            Tree::Prim(v) => v.to_value(),
            Tree::Str(s) => Value::String(s.into_owned()),
            Tree::Stamp(s) => Value::String(s.to_string()),
            Tree::Arr(items) => Value::Array(items.into_iter().map(Tree::into_value).collect()),
            Tree::Obj(entries) => Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.into_owned(), v.into_value()))
                    .collect::<Map<String, Value>>(),
            ),
            Tree::Node(n, implied, parent_u) => node_tree(n, implied, parent_u).into_value(),
            Tree::Elems(list) => {
                let mut items = Vec::with_capacity(list.len());
                list.each(|t| items.push(t.into_value()));
                Value::Array(items)
            }
        }
    }
}

fn key(k: &'static str) -> Cow<'static, str> {
    Cow::Borrowed(k)
}

impl Changes {
    /// This changes object as a [`Tree`].
    pub(crate) fn tree(&self) -> Tree<'_> {
        let mut top = vec![
            (key("minisync"), Tree::Str(key(FORMAT_MARKER))),
            (key("formatVersion"), Tree::Uint(FORMAT_VERSION)),
            (key("id"), Tree::Str(Cow::Borrowed(&self.doc_id))),
            (key("sentBy"), Tree::Str(self.sent_by.to_string().into())),
            (key("fromVersion"), Tree::Uint(self.from_version)),
            (key("changesSince"), Tree::Uint(self.changes_since)),
            (key("knows"), knowledge_tree(&self.knows)),
        ];
        if !self.partial.is_empty() {
            top.push((key("partial"), knowledge_tree(&self.partial)));
        }
        if let Some(d) = self.digest {
            top.push((key("digest"), Tree::Str(format!("{d:016x}").into())));
        }
        match self.repair {
            Some(RepairKind::Request) => top.push((key("repair"), Tree::Str(key("request")))),
            Some(RepairKind::Reply) => top.push((key("repair"), Tree::Str(key("reply")))),
            None => {}
        }
        if !self.writes_to.is_empty() {
            let tags = self.writes_to.iter().map(|t| Tree::Str(Cow::Borrowed(t)));
            top.push((key("writesTo"), Tree::Arr(tags.collect())));
        }
        let rows = self
            .client_states
            .iter()
            .map(|c| {
                Tree::Obj(vec![
                    (key("clientID"), Tree::Str(c.client_id.to_string().into())),
                    (key("lastReceived"), Tree::Uint(c.last_received)),
                    (key("lastAcknowledged"), Tree::Uint(c.last_acknowledged)),
                    (key("knows"), knowledge_tree(&c.knows)),
                ])
            })
            .collect();
        top.push((key("clientStates"), Tree::Arr(rows)));
        let changes = match &self.root {
            Some(r) => node_tree(r, None, self.from_version),
            None => Tree::Null,
        };
        top.push((key("changes"), changes));
        Tree::Obj(top)
    }
}

/// User keys that begin with `_` get one more `_` on the wire, so that `_s` is always ours.
pub(crate) fn escape_key(key: &str) -> Cow<'_, str> {
    if key.starts_with('_') {
        Cow::Owned(format!("_{key}"))
    } else {
        Cow::Borrowed(key)
    }
}

/// The stamp right after `s` from the same client: what an absent element id means.
pub(crate) fn next_stamp(s: Stamp) -> Option<Stamp> {
    (s.hlc + 1 < MAX_HLC).then_some(Stamp {
        hlc: s.hlc + 1,
        client: s.client,
    })
}

/// Writes a node. `implied_id` is the id a reader assumes when `_s.id` is absent (the enclosing
/// element's id), `parent_u` the `u` it assumes when `_s.u` is absent.
pub(crate) fn node_tree(node: &WNode, implied_id: Option<Stamp>, parent_u: u64) -> Tree<'_> {
    let mut s = Vec::new();
    if implied_id != Some(node.id) {
        s.push((key("id"), Tree::Stamp(node.id)));
    }
    if node.u != parent_u {
        s.push((key("u"), Tree::Uint(node.u)));
    }
    let mut out = match &node.body {
        WBody::Obj(fields) => obj_tree(node, fields, &mut s),
        WBody::Arr(elems) => arr_tree(node, elems, &mut s),
    };
    out.push((key("_s"), Tree::Obj(s)));
    Tree::Obj(out)
}

type Entries<'a> = Vec<(Cow<'a, str>, Tree<'a>)>;

/// An object node's written keys; the stamps that differ from its id (`k`) and its tombstones
/// (`d`) go into its `_s`.
fn obj_tree<'a>(node: &'a WNode, fields: &'a [WField], s: &mut Entries<'a>) -> Entries<'a> {
    let mut out = Vec::with_capacity(fields.len() + 1);
    let mut k = Vec::new();
    let mut d = Vec::new();
    for f in fields {
        match &f.val {
            None => d.push((Cow::Borrowed(&*f.key), Tree::Stamp(f.stamp))),
            Some(WVal::Prim(v)) => {
                if f.stamp != node.id {
                    k.push((Cow::Borrowed(&*f.key), Tree::Stamp(f.stamp)));
                }
                out.push((escape_key(&f.key), Tree::Prim(v)));
            }
            Some(WVal::Text(t)) => out.push((escape_key(&f.key), text_tree(t, None))),
            Some(WVal::Node(child)) => {
                out.push((escape_key(&f.key), node_tree(child, None, node.u)))
            }
        }
    }
    if !k.is_empty() {
        s.push((key("k"), Tree::Obj(k)));
    }
    if !d.is_empty() {
        s.push((key("d"), Tree::Obj(d)));
    }
    out
}

/// An array node's live elements (`v`); its mark `a` and its removed elements (`ri`) go into
/// its `_s`.
fn arr_tree<'a>(node: &'a WNode, elems: &'a [WElem], s: &mut Entries<'a>) -> Entries<'a> {
    s.push((key("a"), Tree::Bool(true)));
    let removed = ElemList::new(node, elems, true);
    if removed.len() > 0 {
        s.push((key("ri"), Tree::Elems(removed)));
    }
    vec![(key("v"), Tree::Elems(ElemList::new(node, elems, false)))]
}

/// One element, leaving out what the previous entry of its list implies (see docs/PROTOCOL.md,
/// "Nodes"); `prev` is that entry's (id, right origin), updated to this one's.
fn elem_tree<'a>(
    node: &'a WNode,
    e: &'a WElem,
    prev: &mut (Option<Stamp>, Option<Stamp>),
) -> Tree<'a> {
    let mut m = Vec::new();
    if prev.0.and_then(next_stamp) != Some(e.id) {
        m.push((key("e"), Tree::Stamp(e.id)));
    }
    if e.origin != prev.0 {
        m.push((key("o"), stamp_or_null(e.origin)));
    }
    if e.right != prev.1 {
        m.push((key("ro"), stamp_or_null(e.right)));
    }
    *prev = (Some(e.id), e.right);
    if let Some(r) = e.removed {
        m.push((key("r"), Tree::Stamp(r)));
    } else if let Some((v, vs)) = &e.val {
        let value = match v {
            WVal::Prim(p) => {
                if *vs != e.id {
                    m.push((key("t"), Tree::Stamp(*vs)));
                }
                Tree::Prim(p)
            }
            WVal::Node(n) => Tree::Node(n, Some(e.id), node.u),
            WVal::Text(t) => text_tree(t, Some(e.id)),
        };
        m.push((key("v"), value));
    }
    Tree::Obj(m)
}

fn stamp_or_null(s: Option<Stamp>) -> Tree<'static> {
    s.map_or(Tree::Null, Tree::Stamp)
}

/// A version vector: client id → its clock value in hex.
pub(crate) fn knowledge_tree(k: &Knowledge) -> Tree<'static> {
    Tree::Obj(
        k.iter()
            .map(|(c, h)| {
                (
                    Cow::Owned(c.to_string()),
                    Tree::Str(format!("{h:x}").into()),
                )
            })
            .collect(),
    )
}

/// Writes a text: `{"_t": {"id", "i", "c", "p"}}` (see docs/PROTOCOL.md, "Text"). Each piece
/// leaves out what follows from the piece before it: `e` when it starts where that one ended,
/// `o` when its left origin is the character before its own id, `ro` when its right origin is
/// that piece's.
fn text_tree(t: &WText, implied_id: Option<Stamp>) -> Tree<'_> {
    let mut m = Vec::new();
    if implied_id != Some(t.id) {
        m.push((key("id"), Tree::Stamp(t.id)));
    }
    if t.init != 0 {
        m.push((key("i"), Tree::Uint(u64::from(t.init))));
    }
    if !t.ops.is_empty() {
        m.push((key("c"), knowledge_tree(&t.ops)));
    }
    // Stamps of the text's own client are written as their clock's offset from its id.
    let st = |s: Option<Stamp>| match s {
        Some(s) if s.client == t.id.client && s.hlc >= t.id.hlc => Tree::Uint(s.hlc - t.id.hlc),
        other => stamp_or_null(other),
    };
    let mut prev: Option<&Piece> = None;
    let mut list = Vec::with_capacity(t.pieces.len());
    for p in &t.pieces {
        let mut pm = Vec::new();
        let follows = prev
            .is_some_and(|q| q.id.client == p.id.client && q.id.hlc + u64::from(q.len) == p.id.hlc);
        if !follows {
            pm.push((key("e"), st(Some(p.id))));
        }
        let implied_left = p.id.hlc.checked_sub(1).map(|h| Stamp {
            hlc: h,
            client: p.id.client,
        });
        if p.left != implied_left {
            pm.push((key("o"), st(p.left)));
        }
        if p.right != prev.and_then(|q| q.right) {
            pm.push((key("ro"), st(p.right)));
        }
        match &p.s {
            Some(s) => pm.push((key("s"), Tree::Str(Cow::Borrowed(s.as_str())))),
            None => pm.push((key("n"), Tree::Uint(u64::from(p.len)))),
        }
        list.push(Tree::Obj(pm));
        prev = Some(p);
    }
    m.push((key("p"), Tree::Arr(list)));
    Tree::Obj(vec![(key("_t"), Tree::Obj(m))])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::engine::compact;
    use crate::engine::{Changes, Document, RepairKind};

    /// Every way of writing a changes object gives the same JSON value, and reads back as an
    /// object that writes that value again (reading orders removed elements last and leaves
    /// the pieces' local versions out, so the objects themselves may differ).
    fn same_every_way(c: &Changes) {
        let value = c.to_value();
        let bytes = c.to_compact();
        assert_eq!(compact::decode(&bytes).unwrap(), value);
        assert_eq!(Changes::from_bytes(&bytes).unwrap().to_value(), value);
        assert_eq!(
            Changes::parse(&c.to_json_string()).unwrap().to_value(),
            value
        );
        assert_eq!(Changes::from_value(&value).unwrap().to_value(), value);
        assert_eq!(
            Changes::from_bytes(&bytes).unwrap(),
            Changes::parse(&c.to_json_string()).unwrap(),
            "the compact form and the JSON text read as the same changes object"
        );
        assert_eq!(
            c.to_json_string(),
            value.to_string(),
            "the JSON text written from the tree is the Value's, byte for byte"
        );
    }

    /// The compact form carries every string of a stamp's shape as a stamp: user values, the
    /// document id, a text's characters and the places a sender writes to read back as the
    /// strings they were.
    #[test]
    fn strings_of_a_stamps_shape_read_back_as_strings_wherever_they_are() {
        let shaped = "1a2-aaaaaaaaaaaaaaaa";
        let start = json!({"v": shaped, "k": {shaped: shaped}, "t": "ab", "l": [shaped]});
        let client = crate::engine::ClientId::random();
        let mut a = Document::with_ids(&start, shaped.into(), client).unwrap();
        a.splice_text("t", 1, 0, "3-cccccccccccccccc").unwrap();
        let mut c = a.changes();
        c.set_writes_to(vec!["5-bbbbbbbbbbbbbbbb".into()]);
        same_every_way(&c);
        let read = Changes::from_bytes(&c.to_compact()).unwrap();
        assert_eq!(read.doc_id(), shaped);
        assert_eq!(read.writes_to(), ["5-bbbbbbbbbbbbbbbb"]);
        let b = Document::from_changes(&read).unwrap();
        assert_eq!(b.id(), shaped);
        assert_eq!(b.to_json(), a.to_json());
        assert_eq!(b.get("t").unwrap(), Some(json!("a3-ccccccccccccccccb")));
    }

    #[test]
    fn the_tree_writes_what_the_reader_reads() {
        let start = json!({
            "title": "a list", "_hidden": {"__deeper": [1, "2-aaaaaaaaaaaaaaaa"]},
            "items": [{"what": "milk", "n": 1.50}, {"what": "eggs"}, [true, null]],
            "big": 18446744073709551616u128.to_string(), "neg": -7,
            "esc": "a \"quote\", a back\\slash, a\nnew line, \t, é, 😀, \u{1}",
            "Zeta": {"b": 1, "B": 2, "a": [], "": {}},
        });
        let mut start = start;
        start["exact"] =
            serde_json::from_str("[1e400, -0.0, 1.50, 12345678901234567890123]").unwrap();
        let mut a = Document::new(&start).unwrap();
        let mut b = Document::from_changes(&a.changes()).unwrap();
        a.apply(&b.changes_for(a.client_id())).unwrap();
        a.set("items[0].n", json!(2)).unwrap();
        a.remove("title").unwrap();
        a.remove_at("items", 1).unwrap();
        a.insert("items", 0, json!({"what": "bread"})).unwrap();
        a.splice_text("_hidden.__deeper[1]", 1, 3, "xyz").unwrap();
        b.set("items[1].what", json!("oat milk")).unwrap();
        b.push("items", json!("tea")).unwrap();
        a.apply(&b.changes_for(a.client_id())).unwrap();
        same_every_way(&a.changes());
        same_every_way(&a.changes_for(b.client_id()));
        same_every_way(&b.changes_for(a.client_id()));
        same_every_way(&a.changes().into_repair(RepairKind::Request));
        let fresh =
            Document::from_changes(&Changes::from_bytes(&a.changes().to_compact()).unwrap())
                .unwrap();
        assert_eq!(fresh.to_json(), a.to_json());
    }
}
