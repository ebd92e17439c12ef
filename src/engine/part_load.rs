//! Loading a replica in part, for one local edit.
//!
//! A command run without the agent (`agent doc set todo 'records[7].title' …`) must load the
//! replica before it can edit it, and loading a 10 MB document's replica whole takes about
//! 120 ms of the command's time. Saved in parts (a head and one record per node, see
//! [`Document::save_parts`]), it need not be loaded whole. [`PartLoad`] follows the edit's paths
//! from the root through the saved records and makes only the nodes the edit reads or writes: the
//! node that holds the value at the path (the record whose `title` is set, the array pushed
//! onto) and, where the edit reads that value (a removal returns it, an update diffs it), every
//! node under it. A node the path only passes through (the array of `records[7].title`) is not
//! made: its record is read for where the step leads (the node of the element at index 7 among
//! the live ones), which the replica keeps as a *passage* for its path walk; making that node, an
//! array of 100,000 elements, would take most of the command's time. Every other node stands in
//! as an empty object that nothing reads or writes, and the save after the edit writes the head
//! and the nodes the edit changed, exactly as after the same edit of the whole replica.
//!
//! Loading is free of I/O: [`PartLoad::wanted`] says which saved record it needs next and the
//! caller hands it over with [`PartLoad::add`]. A node's record is checked as in a whole load;
//! the tree is checked among the nodes made. A replica loaded in part is for the edit and its
//! save only: [`Document::edited_within_part`] tells whether the edit stayed within the nodes
//! made (else its caller loads the replica whole and edits that instead), and nothing keeps it.

use std::collections::BTreeMap;

use crate::engine::HashMap;
use crate::engine::doc::{Body, Document, Ix, KeyTable, Node, Obj, Parent, Val, child_of};
use crate::engine::error::{Error, Result};
use crate::engine::id_index::IdIndex;
use crate::engine::path::{self, Segment};
use crate::engine::snapshot::{SaveMark, Snap, check_tree, read_head, read_row, unpack_row};
use crate::engine::stamp::Stamp;
use crate::engine::{HashSet, snapshot};

/// What an edit needs of the replica at a path (paths as [`Document::set`] takes them; a path
/// that does not parse needs nothing: the edit reports it).
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// The node that holds the value at the path: enough to set or replace that value
    /// ([`Document::set`]).
    Parent(&'a str),
    /// The node at the path: enough to insert into the array there ([`Document::insert`],
    /// [`Document::push`], [`Document::len`]).
    Node(&'a str),
    /// The node that holds the value at the path and every node under that value: enough to
    /// read, remove or replace it ([`Document::get`], [`Document::remove`],
    /// [`Document::update`]).
    Value(&'a str),
}

/// The next thing a [`PartLoad`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    /// The saved record of this node.
    Node(u32),
    /// Nothing more: [`PartLoad::finish`] makes the replica.
    Done,
    /// The edit reaches more than [`MOST_NODES`] nodes, or the whole document: load the replica
    /// whole instead (one query per node would take longer).
    Whole,
}

/// The most nodes a replica loaded in part holds.
pub const MOST_NODES: usize = 4096;

/// Where path steps through nodes not made lead: of each such node, (segment, the value there:
/// its child node, or `Val::Gone` when the step leads to no node).
type Passages = HashMap<Ix, Vec<(Segment, Val)>>;

/// The value a step from node `n` at `seg` was read to lead to, if that step was read.
fn passage<'p>(passages: &'p Passages, n: Ix, seg: &Segment) -> Option<&'p Val> {
    let found = passages.get(&n)?.iter().find(|(s, _)| s == seg);
    found.map(|(_, v)| v)
}

/// Which saved nodes a replica loaded in part holds (`count`: how many it has in all), and
/// where the paths lead through those it does not hold.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    count: u32,
    held: HashSet<Ix>,
    passages: Passages,
}

impl Held {
    /// The child node `seg` leads to from node `n` when the replica only passed through it.
    pub(crate) fn passage(&self, n: Ix, seg: &Segment) -> Option<&Val> {
        if self.held.contains(&n) {
            return None;
        }
        passage(&self.passages, n, seg).filter(|v| matches!(v, Val::Node(_)))
    }
}

/// What is read along one reach's path.
struct Plan {
    segs: Vec<Segment>,
    /// Nodes reached at this segment or after are made (held); those before only passed
    /// through.
    held_from: usize,
    /// Whether every node under the last one is needed too.
    under: bool,
}

/// One step of reading what the reaches need.
enum Step {
    /// Follow path `path` from its segment `seg`, at node `node`.
    Walk { path: usize, seg: usize, node: Ix },
    /// Read every node under `node`.
    Under(Ix),
}

/// A replica being loaded in part: see the module's documentation.
pub struct PartLoad {
    snap: Snap,
    count: u32,
    keys: KeyTable,
    max_u: u64,
    paths: Vec<Plan>,
    steps: Vec<Step>,
    nodes: BTreeMap<Ix, Node>,
    passages: Passages,
    /// The node [`PartLoad::wanted`] last asked for, and the segment when only passed through.
    asked: Option<(Ix, Option<Segment>)>,
    /// Nodes whose children are read or being read (a damaged record naming its own ancestor
    /// as a child must not make the reading go round).
    expanded: HashSet<Ix>,
    /// A reach of the whole document: [`Wanted::Whole`] at once.
    whole: bool,
}

impl PartLoad {
    /// Starts loading the replica whose saved head is `head` (the `head` of [`SavedParts`]) for
    /// an edit that needs `reach`. The root is always read.
    ///
    /// [`SavedParts`]: crate::engine::SavedParts
    ///
    /// # Errors
    ///
    /// [`Error::Snapshot`] when `head` is not the head of a replica saved in parts.
    pub fn new(head: &str, reach: &[Reach]) -> Result<Self> {
        let (snap, count) = read_head(head)?;
        let root = Plan {
            segs: Vec::new(),
            held_from: 0,
            under: false,
        };
        let mut paths = vec![root];
        let mut whole = false;
        for r in reach {
            let (text, upto, under) = match *r {
                Reach::Parent(p) => (p, 1, false),
                Reach::Node(p) => (p, 0, false),
                Reach::Value(p) => (p, 0, true),
            };
            if let Ok(mut segs) = path::parse(text) {
                // Everything under the root: the whole replica, read as such.
                whole |= under && segs.is_empty();
                segs.truncate(segs.len().saturating_sub(upto));
                // A value read is also removed or replaced: its parent is made too.
                let held_from = segs.len().saturating_sub(usize::from(under));
                paths.push(Plan {
                    segs,
                    held_from,
                    under,
                });
            }
        }
        let steps = (0..paths.len())
            .rev()
            .map(|path| Step::Walk {
                path,
                seg: 0,
                node: 0,
            })
            .collect();
        Ok(PartLoad {
            snap,
            count,
            keys: KeyTable::default(),
            max_u: 0,
            paths,
            steps,
            nodes: BTreeMap::new(),
            passages: HashMap::default(),
            asked: None,
            expanded: HashSet::default(),
            whole,
        })
    }

    /// How many nodes the saved replica has, as its head says.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// What is needed next: follows the paths through the nodes read so far.
    pub fn wanted(&mut self) -> Wanted {
        if self.whole {
            return Wanted::Whole;
        }
        while let Some(step) = self.steps.pop() {
            match self.next(&step) {
                Ok(more) => self.steps.extend(more),
                Err(want) => {
                    self.steps.push(step);
                    return want;
                }
            }
        }
        Wanted::Done
    }

    /// The steps after `step`, or what must be read first.
    fn next(&mut self, step: &Step) -> std::result::Result<Vec<Step>, Wanted> {
        let (path, seg, n) = match *step {
            Step::Under(n) => {
                let Some(node) = self.nodes.get(&n) else {
                    return Err(self.ask(n, None));
                };
                let fresh = self.expanded.insert(n);
                let children = if fresh {
                    live_children(node)
                } else {
                    Vec::new()
                };
                return Ok(children.into_iter().map(Step::Under).collect());
            }
            Step::Walk { path, seg, node } => (path, seg, node),
        };
        let plan = &self.paths[path];
        let led = match (self.nodes.get(&n), plan.segs.get(seg)) {
            (None, _) if seg >= plan.held_from => return Err(self.ask(n, None)),
            (Some(_), None) if plan.under => return Ok(vec![Step::Under(n)]),
            (_, None) => return Ok(Vec::new()),
            (Some(node), Some(s)) => child_of(node, &self.keys, s),
            (None, Some(s)) => match passage(&self.passages, n, s) {
                Some(v) => Some(v),
                None => return Err(self.ask(n, Some(s.clone()))),
            },
        };
        Ok(match led {
            Some(Val::Node(c)) => vec![Step::Walk {
                path,
                seg: seg + 1,
                node: *c,
            }],
            _ => Vec::new(),
        })
    }

    /// Asks for node `n`'s record: to make the node, or (`through`) to pass through it.
    fn ask(&mut self, n: Ix, through: Option<Segment>) -> Wanted {
        if through.is_none() && self.nodes.len() >= MOST_NODES {
            return Wanted::Whole;
        }
        self.asked = Some((n, through));
        Wanted::Node(n)
    }

    /// Adds the saved record of node `ix` (`None`: there is none), the one
    /// [`PartLoad::wanted`] asked for.
    ///
    /// # Errors
    ///
    /// [`Error::Snapshot`] when the record is missing or unreadable, or names an impossible
    /// parent or child (as in a whole load).
    pub fn add(&mut self, ix: u32, row: Option<&[u8]>) -> Result<()> {
        if ix >= self.count {
            return Err(Error::Snapshot(format!(
                "saved node {ix} of {} asked for",
                self.count
            )));
        }
        let row = row.ok_or_else(|| {
            Error::Snapshot(format!("saved node {ix} of {} is missing", self.count))
        })?;
        match self.asked.take() {
            Some((n, Some(seg))) if n == ix => {
                let led = read_passage(ix, self.count, row, &seg)?;
                let led = led.map_or(Val::Gone, Val::Node);
                self.passages.entry(ix).or_default().push((seg, led));
            }
            _ => {
                let node = read_row(ix, self.count, row, &mut self.keys, &mut self.max_u)?;
                self.nodes.insert(ix, node);
            }
        }
        Ok(())
    }

    /// The replica loaded in part, and the mark to save on from.
    ///
    /// # Errors
    ///
    /// [`Error::Snapshot`] when the nodes held are inconsistent (two with one id, one naming a
    /// slot its parent lacks, a root that is not an object).
    pub fn finish(self) -> Result<(Document, SaveMark)> {
        let PartLoad {
            snap,
            count,
            keys,
            max_u,
            nodes: read,
            passages,
            ..
        } = self;
        if !read.contains_key(&0) {
            return Err(Error::Snapshot("the root was not read".into()));
        }
        // The head's count is checked against nothing here (the caller knows the records): a
        // damaged one must fail, not abort the process.
        let mut nodes: Vec<Node> = Vec::new();
        nodes.try_reserve_exact(count as usize).map_err(|_| {
            Error::Snapshot(format!(
                "no room for the {count} nodes the saved head names"
            ))
        })?;
        nodes.extend((0..count).map(|_| stand_in()));
        let mut by_id = IdIndex::with_capacity(read.len());
        let mut held = HashSet::default();
        for (ix, node) in read {
            let id = node.id;
            nodes[ix as usize] = node;
            if !by_id.insert(id, ix, |i| nodes[i as usize].id) {
                return Err(Error::Snapshot(format!("node id {id} appears twice")));
            }
            held.insert(ix);
        }
        check_tree(&nodes, |ix| held.contains(&ix))?;
        let mut doc = Document::assemble(snap, nodes, by_id, keys, max_u);
        doc.in_part = Some(Box::new(Held {
            count,
            held,
            passages,
        }));
        let mark = doc.save_mark();
        Ok((doc, mark))
    }
}

/// Where `seg` leads from node `ix` (of a replica of `count` nodes), read from its saved record
/// without making the node: the child node there, if any. A large array's elements are read one
/// at a time into what the step needs of each (live or removed, the node it holds).
fn read_passage(ix: u32, count: u32, row: &[u8], seg: &Segment) -> Result<Option<Ix>> {
    let json = unpack_row(row).map_err(|e| Error::Snapshot(format!("saved node {ix}: {e}")))?;
    let mut de = serde_json::Deserializer::from_slice(&json);
    let child = serde::de::DeserializeSeed::deserialize(passage::RowSeed(seg), &mut de)
        .and_then(|c| de.end().map(|()| c))
        .map_err(|e| Error::Snapshot(format!("saved node {ix}: {e}")))?;
    match child {
        passage::Found::Node(c) if c > 0 && c < u64::from(count) => Ok(Some(c as Ix)),
        passage::Found::Node(c) => Err(Error::Snapshot(format!(
            "saved node {ix}: slot refers to node {c} of {count}"
        ))),
        passage::Found::BrokenOrder => Err(Error::Snapshot(format!(
            "array node {ix} has a broken order"
        ))),
        passage::Found::Nothing => Ok(None),
    }
}

/// Reading a saved record for one path step (see [`read_passage`]).
mod passage {
    use serde::de::{DeserializeSeed, EnumAccess, IgnoredAny, SeqAccess, VariantAccess, Visitor};

    use crate::engine::path::Segment;
    use crate::engine::snapshot::{BodyTag, RowElem, RowField, RowVal};

    /// What a step finds.
    pub(super) enum Found {
        Node(u64),
        Nothing,
        BrokenOrder,
    }

    /// One element as a step needs it.
    #[derive(Clone, Copy)]
    enum Elem {
        Removed,
        Value,
        Node(u64),
    }

    fn found(v: RowVal) -> Found {
        match v {
            RowVal::Node(n) => Found::Node(n),
            _ => Found::Nothing,
        }
    }

    /// A record: `[clients, clock, parent, version, body]`.
    pub(super) struct RowSeed<'s>(pub(super) &'s Segment);

    impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
        type Value = Found;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for RowSeed<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a saved node: [clients, clock, parent, version, body]")
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Found, S::Error> {
            use serde::de::Error as _;
            for _ in 0..4 {
                seq.next_element::<IgnoredAny>()?
                    .ok_or_else(|| S::Error::custom("a saved node cut short"))?;
            }
            let found = seq
                .next_element_seed(BodySeed(self.0))?
                .ok_or_else(|| S::Error::custom("a saved node cut short"))?;
            if seq.next_element::<IgnoredAny>()?.is_some() {
                return Err(S::Error::custom("a saved node with too many items"));
            }
            Ok(found)
        }
    }

    struct BodySeed<'s>(&'s Segment);

    impl<'de> DeserializeSeed<'de> for BodySeed<'_> {
        type Value = Found;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Found, D::Error> {
            d.deserialize_enum("RowBody", &["O", "A", "B"], self)
        }
    }

    impl<'de> Visitor<'de> for BodySeed<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a saved node's body")
        }
        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Found, A::Error> {
            let (tag, body) = data.variant::<BodyTag>()?;
            match (tag, self.0) {
                (BodyTag::O, seg) => {
                    let fields: Vec<RowField<'de, RowVal>> = body.newtype_variant()?;
                    let Segment::Key(k) = seg else {
                        return Ok(Found::Nothing);
                    };
                    let field = fields.into_iter().find(|f| f.0.0 == k.as_str());
                    Ok(field.map_or(Found::Nothing, |f| found(f.1)))
                }
                (BodyTag::A, _) => body.tuple_variant(2, ArrSeed(self.0, false)),
                (BodyTag::B, _) => body.tuple_variant(3, ArrSeed(self.0, true)),
            }
        }
    }

    /// `[elements, order]` or `[version, elements, order]`.
    struct ArrSeed<'s>(&'s Segment, bool);

    impl<'de> Visitor<'de> for ArrSeed<'_> {
        type Value = Found;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a saved array: [elements, order] or [version, elements, order]")
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Found, S::Error> {
            use serde::de::Error as _;
            let cut = || S::Error::custom("a saved array cut short");
            if self.1 {
                seq.next_element::<u64>()?.ok_or_else(cut)?;
            }
            let elems = seq.next_element_seed(ElemsSeed)?.ok_or_else(cut)?;
            let order: Vec<u32> = seq.next_element()?.ok_or_else(cut)?;
            if seq.next_element::<IgnoredAny>()?.is_some() {
                return Err(S::Error::custom("a saved array with too many items"));
            }
            let Segment::Index(i) = self.0 else {
                return Ok(Found::Nothing);
            };
            if order.len() != elems.len() || order.iter().any(|s| *s as usize >= elems.len()) {
                return Ok(Found::BrokenOrder);
            }
            let mut live = order
                .iter()
                .map(|s| elems[*s as usize])
                .filter(|e| !matches!(e, Elem::Removed));
            Ok(match live.nth(*i) {
                Some(Elem::Node(n)) => Found::Node(n),
                _ => Found::Nothing,
            })
        }
    }

    struct ElemsSeed;

    impl<'de> DeserializeSeed<'de> for ElemsSeed {
        type Value = Vec<Elem>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<Elem>, D::Error> {
            d.deserialize_seq(self)
        }
    }

    impl<'de> Visitor<'de> for ElemsSeed {
        type Value = Vec<Elem>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a saved array's elements")
        }
        fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Vec<Elem>, S::Error> {
            let mut out = Vec::new();
            while let Some(RowElem(_, v, rest)) = seq.next_element::<RowElem<RowVal>>()? {
                // Removed exactly when it has a removal stamp, whatever value it still names.
                out.push(match (rest.is_some_and(|r| r.3.is_some()), v) {
                    (true, _) => Elem::Removed,
                    (false, RowVal::Node(n)) => Elem::Node(n),
                    (false, _) => Elem::Value,
                });
            }
            Ok(out)
        }
    }
}

/// The empty object a node not read stands in as.
fn stand_in() -> Node {
    Node {
        id: Stamp::ZERO,
        parent: Parent::NONE,
        u: 0,
        body: Body::Obj(Obj::default()),
    }
}

/// The nodes `node`'s live slots hold.
fn live_children(node: &Node) -> Vec<Ix> {
    let of = |v: &Val| match v {
        Val::Node(c) => Some(*c),
        _ => None,
    };
    match &node.body {
        Body::Obj(o) => o.slots.iter().filter_map(|f| of(&f.val)).collect(),
        Body::Arr(a) => a.slots.iter().filter_map(|e| of(&e.val)).collect(),
    }
}

impl Document {
    /// Whether this replica is loaded whole (not by a [`PartLoad`]).
    pub fn is_whole(&self) -> bool {
        self.in_part.is_none()
    }

    /// Whether every saved node changed since `mark` (where a [`PartLoad`] left this replica) is
    /// one this replica holds: true for a replica loaded whole, and for one loaded in part whose
    /// edit reached only what its reaches named. Only such an edit may be saved.
    pub fn edited_within_part(&self, mark: SaveMark) -> bool {
        let Some(part) = &self.in_part else {
            return true;
        };
        let since = snapshot::mark_version(mark);
        self.nodes
            .iter()
            .take(part.count as usize)
            .enumerate()
            .all(|(ix, n)| n.u <= since || part.held.contains(&(ix as Ix)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use serde_json::{Value, json};

    use super::*;

    /// A replica with records (objects holding arrays and objects), a nested object and texts,
    /// edited a little so that its saved form has long elements and fields too; its saved parts.
    fn saved() -> (String, BTreeMap<u32, Vec<u8>>) {
        let records: Vec<Value> = (0..40)
            .map(|i| {
                json!({"title": format!("record {i}"), "done": i % 2 == 0,
                            "tags": ["a", {"k": i}], "sub": {"x": [i, [i]]}})
            })
            .collect();
        let mut d = Document::new(&json!({"records": records,
            "meta": {"a": {"b": [1, 2, {"c": "text"}]}}, "s": "a string"}))
        .unwrap();
        d.set("records[3].title", json!("record three")).unwrap();
        d.remove_at("records", 7).unwrap();
        d.insert("records", 2, json!({"title": "new"})).unwrap();
        d.set("meta.a.b[1]", json!("two")).unwrap();
        let p = d.save_parts(None);
        (p.head, p.nodes.into_iter().collect())
    }

    fn whole(head: &str, rows: &BTreeMap<u32, Vec<u8>>) -> (Document, SaveMark) {
        Document::restore_parts(head, rows.iter().map(|(i, r)| (*i, r.clone()))).unwrap()
    }

    fn in_part(head: &str, rows: &BTreeMap<u32, Vec<u8>>, reach: &[Reach]) -> PartLoad {
        let mut part = PartLoad::new(head, reach).unwrap();
        loop {
            match part.wanted() {
                Wanted::Node(ix) => part.add(ix, rows.get(&ix).map(|r| &r[..])).unwrap(),
                Wanted::Done => return part,
                Wanted::Whole => panic!("loaded whole"),
            }
        }
    }

    type Edit = fn(&mut Document) -> Result<Value>;

    /// Each edit the CLI makes, at paths that lead somewhere and paths that do not, with the
    /// reach the CLI gives it.
    fn edits() -> Vec<(&'static str, Vec<Reach<'static>>, Edit)> {
        fn ok(r: Result<()>) -> Result<Value> {
            r.map(|()| Value::Null)
        }
        vec![
            ("set a text", vec![Reach::Parent("records[3].title")], |d| {
                ok(d.set("records[3].title", json!("record 3, edited")))
            }),
            ("set a flag", vec![Reach::Parent("records[5].done")], |d| {
                ok(d.set("records[5].done", json!(true)))
            }),
            ("replace a record", vec![Reach::Parent("records[4]")], |d| {
                ok(d.set("records[4]", json!({"title": "replaced", "x": [1]})))
            }),
            ("append by set", vec![Reach::Parent("records[40]")], |d| {
                ok(d.set("records[40]", json!({"title": "appended"})))
            }),
            (
                "past the end",
                vec![Reach::Parent("records[90].done")],
                |d| ok(d.set("records[90].done", json!(true))),
            ),
            ("deep", vec![Reach::Parent("meta.a.b[2].c")], |d| {
                ok(d.set("meta.a.b[2].c", json!("deep")))
            }),
            ("into a scalar", vec![Reach::Parent("s.x")], |d| {
                ok(d.set("s.x", json!(1)))
            }),
            ("a new key", vec![Reach::Parent("meta.new")], |d| {
                ok(d.set("meta.new", json!({"n": [1, 2]})))
            }),
            (
                "after a removal",
                vec![Reach::Parent("records[30].done")],
                |d| ok(d.set("records[30].done", json!("late"))),
            ),
            (
                "through a text",
                vec![Reach::Parent("records[3].title.x")],
                |d| ok(d.set("records[3].title.x", json!(1))),
            ),
            (
                "two arrays down",
                vec![Reach::Parent("records[12].sub.x[1][0]")],
                |d| ok(d.set("records[12].sub.x[1][0]", json!(-1))),
            ),
            (
                "remove a tag",
                vec![Reach::Value("records[3].tags[1]")],
                |d| {
                    d.remove("records[3].tags[1]")
                        .map(|v| v.unwrap_or(Value::Null))
                },
            ),
            (
                "get deep",
                vec![Reach::Value("records[12].sub.x[1]")],
                |d| {
                    d.get("records[12].sub.x[1]")
                        .map(|v| v.unwrap_or(Value::Null))
                },
            ),
            ("a bad path", vec![Reach::Parent("records[")], |d| {
                ok(d.set("records[", json!(1)))
            }),
            ("the root", vec![Reach::Parent("")], |d| {
                ok(d.set("", json!(1)))
            }),
            ("push", vec![Reach::Node("records[3].tags")], |d| {
                d.push("records[3].tags", json!({"t": 1})).map(Value::from)
            }),
            ("insert", vec![Reach::Node("records")], |d| {
                ok(d.insert("records", 1, json!({"title": "at 1"})))
            }),
            ("push onto an object", vec![Reach::Node("meta")], |d| {
                d.push("meta", json!(1)).map(Value::from)
            }),
            ("remove a record", vec![Reach::Value("records[6]")], |d| {
                d.remove("records[6]").map(|v| v.unwrap_or(Value::Null))
            }),
            ("remove nothing", vec![Reach::Value("meta.nope")], |d| {
                d.remove("meta.nope").map(|v| v.unwrap_or(Value::Null))
            }),
            ("update", vec![Reach::Value("records[8]")], |d| {
                let r = d.update(
                    "records[8]",
                    json!({"title": "record 8!", "done": true, "tags": ["a"], "sub": {}}),
                );
                ok(r)
            }),
            ("get", vec![Reach::Value("meta")], |d| {
                d.get("meta").map(|v| v.unwrap_or(Value::Null))
            }),
            (
                "move",
                vec![Reach::Node("records"), Reach::Value("records[9]")],
                |d| {
                    let v = d.remove_at("records", 9)?;
                    ok(d.insert("records", 2, v))
                },
            ),
        ]
    }

    /// Every edit gives the same result on a replica loaded in part as on the whole replica,
    /// writes the same records, and the records saved over the old ones load as the whole
    /// replica edited.
    #[test]
    fn an_edit_in_part_is_the_edit_of_the_whole_replica() {
        let (head, rows) = saved();
        for (what, reach, edit) in edits() {
            let frozen: crate::engine::WallClock = Arc::new(|| 1_900_000_000_000);
            let (mut full, full_mark) = whole(&head, &rows);
            let part = in_part(&head, &rows, &reach);
            let (mut doc, mark) = part.finish().unwrap();
            assert!(!doc.is_whole());
            assert_eq!(mark, full_mark, "{what}");
            full.set_wall_clock(frozen.clone());
            doc.set_wall_clock(frozen);
            let expected = edit(&mut full).map_err(|e| e.to_string());
            let got = edit(&mut doc).map_err(|e| e.to_string());
            assert_eq!(got, expected, "{what}");
            assert!(doc.edited_within_part(mark), "{what}");
            let (ours, theirs) = (doc.save_parts(Some(mark)), full.save_parts(Some(mark)));
            assert_eq!(ours.head, theirs.head, "{what}");
            assert_eq!(ours.nodes, theirs.nodes, "{what}");
            let mut after = rows.clone();
            after.extend(ours.nodes);
            let (back, _) = whole(&ours.head, &after);
            assert_eq!(back.save(), full.save(), "{what}");
        }
    }

    /// An edit that goes past the nodes its reach named writes into a stand-in: the replica
    /// says so, and such an edit is not saved.
    #[test]
    fn an_edit_past_its_reach_is_seen() {
        let (head, rows) = saved();
        let (mut doc, mark) = in_part(&head, &rows, &[Reach::Parent("records[3].title")])
            .finish()
            .unwrap();
        doc.set("records[3].title", json!("x")).unwrap();
        assert!(doc.edited_within_part(mark));
        doc.set("meta.z", json!(1)).unwrap();
        assert!(!doc.edited_within_part(mark));
    }

    /// Only the nodes on the path are read: the root, the array, the record.
    #[test]
    fn reads_only_the_nodes_on_the_path() {
        let (head, rows) = saved();
        let mut part = PartLoad::new(&head, &[Reach::Parent("records[3].title")]).unwrap();
        let mut read = Vec::new();
        while let Wanted::Node(ix) = part.wanted() {
            read.push(ix);
            part.add(ix, rows.get(&ix).map(|r| &r[..])).unwrap();
        }
        assert_eq!(read.len(), 3, "{read:?}");
        assert_eq!(read[0], 0);
        // The array is passed through, not made: the replica holds the root and the record.
        let (doc, _) = part.finish().unwrap();
        let held = &doc.in_part.as_ref().unwrap().held;
        assert_eq!(held.len(), 2);
        assert!(held.contains(&0) && held.contains(&read[2]) && !held.contains(&read[1]));
    }

    /// A reach of more than [`MOST_NODES`] nodes asks for the whole replica; a missing or
    /// damaged record is an error, never a stand-in.
    #[test]
    fn too_much_asks_for_the_whole_and_a_missing_record_is_an_error() {
        let records: Vec<Value> = (0..MOST_NODES).map(|i| json!({"n": i})).collect();
        let d = Document::new(&json!({ "r": records })).unwrap();
        let p = d.save_parts(None);
        let rows: BTreeMap<u32, Vec<u8>> = p.nodes.into_iter().collect();
        let mut part = PartLoad::new(&p.head, &[Reach::Value("r")]).unwrap();
        let mut asked = 0;
        let end = loop {
            match part.wanted() {
                Wanted::Node(ix) => {
                    asked += 1;
                    part.add(ix, rows.get(&ix).map(|r| &r[..])).unwrap()
                }
                other => break other,
            }
        };
        assert_eq!((end, asked), (Wanted::Whole, MOST_NODES));
        let mut part = PartLoad::new(&p.head, &[Reach::Parent("r[3].n")]).unwrap();
        assert_eq!(part.wanted(), Wanted::Node(0));
        part.add(0, rows.get(&0).map(|r| &r[..])).unwrap();
        let Wanted::Node(ix) = part.wanted() else {
            panic!("the array")
        };
        let e = part.add(ix, None).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        let e = part.add(ix, Some(b"[1,2]")).unwrap_err().to_string();
        assert!(e.contains(&format!("saved node {ix}")), "{e}");
        assert!(PartLoad::new("{}", &[]).is_err());
    }

    /// The whole document asked for is the whole load at once. (A head naming more nodes than
    /// its records is left to the store, which compares it with them: see `store/replica.rs`.)
    #[test]
    fn the_whole_document_is_the_whole_load() {
        let (head, _) = saved();
        let mut part = PartLoad::new(&head, &[Reach::Node("meta"), Reach::Value("")]).unwrap();
        assert_eq!(part.wanted(), Wanted::Whole);
        let mut part = PartLoad::new(&head, &[Reach::Node("")]).unwrap();
        assert_eq!(part.wanted(), Wanted::Node(0));
    }
}
