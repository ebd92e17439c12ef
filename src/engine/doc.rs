//! The replica: the document tree with its sync state, and the local operations on it.
//!
//! Every object key and every array element is a *slot* with its own stamp and the local version
//! at which it last changed (`u`). An index of slots by `u` lets a replica find what changed since a
//! version without walking the document (see `emit.rs`), so a delta costs what the change costs.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::HashMap;
use crate::engine::change_index::ChangeIndex;
use crate::engine::error::{Error, Result};
use crate::engine::id_index::IdIndex;
use crate::engine::path::{self, Segment};
use crate::engine::scalar::Scalar;
use crate::engine::stamp::{ClientId, DEFAULT_MAX_SKEW_MS, Hlc, Stamp, system_now_ms};
use crate::engine::text::Text;
use crate::engine::wire::{ClientState, Knowledge, MAX_DEPTH, value_depth};

/// Index of a node in the replica's node table.
pub(crate) type Ix = u32;

/// What a slot holds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    /// A number, boolean or null, or a string as it was written whole (a text never edited since:
    /// its characters' ids follow from the slot's stamp, see `text.rs`).
    Prim(Scalar),
    /// A string edited since it was written: characters with ids (see `text.rs`).
    Text(Box<Text>),
    /// A nested object or array.
    Node(Ix),
    /// A removed object key (tombstone) or the value of a removed array element.
    Gone,
}

const _: () = {
    use std::mem::size_of;
    assert!(size_of::<Val>() == 24);
    assert!(size_of::<Option<Stamp>>() == 12);
    assert!(size_of::<Key>() == 8);
    assert!(size_of::<Field>() == 48);
    assert!(size_of::<Elem>() == 64);
    assert!(size_of::<Node>() == 64);
};

/// An object key's name, shared by every object that has that key (100,000 records with the
/// same four keys hold four strings, not 400,000): in a replica's [`KeyTable`], and in every field
/// of a changes object read from the wire. One pointer wide (an `Arc<str>` is two).
#[derive(Clone)]
pub(crate) struct Key(Arc<Box<str>>);

impl Key {
    pub fn new(k: &str) -> Key {
        Key(Arc::new(Box::from(k)))
    }
}

impl std::ops::Deref for Key {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || **self == **other
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let k = std::borrow::Cow::<'de, str>::deserialize(d)?;
        Ok(Key::new(&k))
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// Names of keys, each held once (see [`Key`]): what a changes object read from the wire shares.
pub(crate) type KeySet = crate::engine::HashSet<Key>;

/// The shared name for `k`, added to `set` if it is new.
pub(crate) fn intern(set: &mut KeySet, k: &str) -> Key {
    match set.get(k) {
        Some(key) => key.clone(),
        None => {
            let key = Key::new(k);
            set.insert(key.clone());
            key
        }
    }
}

/// An object key as a replica's field holds it: its number in the replica's [`KeyTable`], 4
/// bytes where the shared name's pointer took 8 (a field is 48 bytes, not 56: 100,000 records
/// of four fields, 3 MB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct KeyId(u32);

/// A replica's key names, each held once and numbered as first seen (see [`KeyId`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct KeyTable {
    names: Vec<Key>,
    ids: crate::engine::HashMap<Key, KeyId>,
}

impl KeyTable {
    /// The number of key `k`, given one if it is new.
    pub fn intern(&mut self, k: &str) -> KeyId {
        if let Some(id) = self.ids.get(k) {
            return *id;
        }
        // A replica never holds 2^32 key names: each is a field of a changes object or a local
        // edit, and a replica holds fewer than 2^31 slots.
        let id = KeyId(self.names.len() as u32);
        let name = Key::new(k);
        self.names.push(name.clone());
        self.ids.insert(name, id);
        id
    }

    /// The number of key `k`, if any object of the replica has had it.
    pub fn id(&self, k: &str) -> Option<KeyId> {
        self.ids.get(k).copied()
    }

    /// The name of key `id`.
    pub fn name(&self, id: KeyId) -> &Key {
        &self.names[id.0 as usize]
    }
}

/// An object key.
#[derive(Debug, Clone)]
pub(crate) struct Field {
    pub key: KeyId,
    pub val: Val,
    pub stamp: Stamp,
    pub u: u64,
}

/// An array element. Removed elements stay as tombstones: later inserts may refer to them.
#[derive(Debug, Clone)]
pub(crate) struct Elem {
    pub id: Stamp,
    /// Left origin: the element it was inserted after (none: the array start).
    pub origin: Link,
    /// Right origin: the element that followed at that moment (none: the array end).
    pub right: Link,
    /// The value; [`Val::Gone`] exactly when the element is removed.
    pub val: Val,
    /// The stamp of the value's write, or of the removal once removed (the value a removed
    /// element had is neither sent nor hashed, so its stamp is not kept: 16 bytes an element).
    pub vstamp: Stamp,
    pub u: u64,
}

impl Elem {
    /// The stamp of the element's removal; `None` while it is live.
    pub fn removed(&self) -> Option<Stamp> {
        matches!(self.val, Val::Gone).then_some(self.vstamp)
    }

    /// Removes the element at `stamp` (its value is dropped).
    pub fn remove(&mut self, stamp: Stamp) {
        self.val = Val::Gone;
        self.vstamp = stamp;
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Obj {
    pub slots: Vec<Field>,
    /// Key → slot, kept only once the object has more than `SMALL_OBJ` slots: a small object
    /// (a record of a few fields, the common case) is searched in `slots`, which saves a map
    /// and a copy of every key per object (memory and load time of large documents).
    #[allow(
        clippy::box_collection,
        reason = "boxed, the absent map of the common small object costs 8 bytes, not 24"
    )]
    keys: Option<Box<BTreeMap<KeyId, u32>>>,
}

/// Most slots an object has without a key map.
const SMALL_OBJ: usize = 8;

impl Obj {
    /// The slot of the key named `k` (`keys`: the replica's table).
    pub fn slot_named(&self, keys: &KeyTable, k: &str) -> Option<u32> {
        self.slot_of(keys.id(k)?)
    }

    /// The slot of key `k`.
    pub fn slot_of(&self, k: KeyId) -> Option<u32> {
        match &self.keys {
            Some(m) => m.get(&k).copied(),
            None => self.slots.iter().position(|f| f.key == k).map(|s| s as u32),
        }
    }

    /// Adds a slot for a key the object does not have yet; returns its index.
    pub fn push(&mut self, f: Field) -> u32 {
        let s = self.slots.len() as u32;
        if let Some(m) = &mut self.keys {
            m.insert(f.key, s);
        }
        self.slots.push(f);
        if self.keys.is_none() && self.slots.len() > SMALL_OBJ {
            let m = self.slots.iter().enumerate();
            self.keys = Some(Box::new(m.map(|(i, f)| (f.key, i as u32)).collect()));
        }
        s
    }
}

/// An element's origin: the slot of that element in the same array, 4 bytes where the origin's
/// stamp would be 32 (two per element: a tenth of a large array's memory). An element is merged
/// only once both its origins are held, so the slot exists; an origin the array does not hold
/// (only a hostile changes object, or a replica saved from one, gets there) is kept as its stamp
/// in the array's `foreign` list, so that nothing is lost or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Link(u32);

/// The bit of a [`Link`] to an entry of `Arr::foreign` (an array holds fewer than 2^31 slots:
/// a changes object carries at most 20,000,000 items).
const FOREIGN: u32 = 1 << 31;

impl Link {
    /// No element: the array's start (left origin) or end (right origin).
    pub const NONE: Link = Link(u32::MAX);

    pub fn to(slot: u32) -> Link {
        Link(slot)
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Arr {
    /// Elements in arrival order; `order` gives document order.
    pub slots: Vec<Elem>,
    pub order: Vec<u32>,
    pub by_id: IdIndex,
    /// How many elements are removed (when 0, a visible index is a position in `order`).
    pub dead: usize,
    /// Position of the last element inserted, to place runs of inserts without a scan.
    pub last_pos: Option<usize>,
    /// Origins named by elements of this array that it does not hold (see [`Link`]): empty but
    /// after bad input.
    pub foreign: Vec<Stamp>,
}

impl Arr {
    /// The slot of element `id`.
    pub fn slot(&self, id: Stamp) -> Option<u32> {
        self.by_id.get(id, |s| self.slots[s as usize].id)
    }

    /// Room for `more` elements without growing.
    pub fn reserve(&mut self, more: usize) {
        self.slots.reserve(more);
        self.order.reserve(more);
        let slots = &self.slots;
        self.by_id.reserve(more, |s| slots[s as usize].id);
    }

    /// Enters the last slot pushed in `by_id` (`false`: its id is held already).
    pub fn index_last(&mut self) -> bool {
        let Some(last) = self.slots.len().checked_sub(1) else {
            return false;
        };
        let id = self.slots[last].id;
        self.by_id
            .insert(id, last as u32, |s| self.slots[s as usize].id)
    }

    /// The id of the element `l` links to.
    pub fn link_id(&self, l: Link) -> Option<Stamp> {
        if l == Link::NONE {
            None
        } else if l.0 & FOREIGN != 0 {
            self.foreign.get((l.0 & !FOREIGN) as usize).copied()
        } else {
            Some(self.slots[l.0 as usize].id)
        }
    }

    /// The link to element `id` (`None`: none), kept in `foreign` if this array lacks it.
    pub fn link_to(&mut self, id: Option<Stamp>) -> Link {
        let Some(id) = id else { return Link::NONE };
        if let Some(s) = self.slot(id) {
            return Link::to(s);
        }
        let i = self.foreign.len() as u32;
        self.foreign.push(id);
        Link(FOREIGN | i)
    }
}

/// An array's state is several times an object's (its order, its id map); boxed so that the
/// far more numerous objects (records) do not carry its size.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Obj(Obj),
    Arr(Box<Arr>),
}

/// The slot (node, slot) that holds a node, or none for the root: 8 bytes, where an
/// `Option<(Ix, u32)>` takes 12 and makes a node 72 bytes instead of 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parent(Ix, u32);

impl Parent {
    /// The root's (no node has index `Ix::MAX`: a replica holds fewer than 2^31 nodes).
    pub const NONE: Parent = Parent(Ix::MAX, u32::MAX);

    pub fn of(p: Option<(Ix, u32)>) -> Parent {
        p.map_or(Parent::NONE, |(n, s)| Parent(n, s))
    }

    pub fn get(self) -> Option<(Ix, u32)> {
        (self != Parent::NONE).then_some((self.0, self.1))
    }
}

/// An object or array in the document.
#[derive(Debug, Clone)]
pub(crate) struct Node {
    /// The stamp of the write that created it.
    pub id: Stamp,
    /// The slot that holds (or, once overwritten, held) it.
    pub parent: Parent,
    /// Local version of the latest change to one of its slots.
    pub u: u64,
    pub body: Body,
}

/// What this replica knows of another client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerState {
    /// That client's version this replica last merged.
    pub last_received: u64,
    /// This replica's version that client is known to hold: what it confirmed, or later where
    /// every change after that is one it is known to hold (see `advance_acknowledged`).
    pub last_acknowledged: u64,
    /// This replica's version that client itself last said it holds (its `lastReceived` of us,
    /// from its newest message). Deltas for it start here, so that a delta never starts past
    /// what the receiver says it holds (the receiver would take that for a gap).
    pub last_confirmed: u64,
    /// What that client is known to hold (learned from it or relayed by others).
    pub knows: Knowledge,
    /// The clients in that client's own client table, as its newest changes object listed
    /// them: the replicas it shares the document with, to which it sends its own changes
    /// itself (so another replica need not relay them at once).
    pub lists: std::collections::BTreeSet<ClientId>,
}

/// A wall clock in milliseconds; replaceable so tests can run with skewed or frozen clocks.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// One replica of a JSON document.
pub struct Document {
    pub(crate) doc_id: String,
    pub(crate) client: ClientId,
    pub(crate) version: u64,
    pub(crate) clock: Hlc,
    pub(crate) nodes: Vec<Node>,
    pub(crate) by_id: IdIndex,
    /// The names of the objects' keys (see [`Key`]).
    pub(crate) keys: KeyTable,
    /// (u, node, slot) for every slot changed after the index's base: what changed after a
    /// version, in version order (see `change_index.rs`).
    pub(crate) index: ChangeIndex,
    /// While true, slots' versions are not entered in `index` as they are written: a replica
    /// built in one go (from a value, or from a full changes object) starts its index at the end,
    /// at the version they were written at ([`Document::index_from_version`]), with no entry at
    /// all. Nothing reads the index meanwhile.
    pub(crate) index_later: bool,
    pub(crate) peers: BTreeMap<ClientId, PeerState>,
    pub(crate) knows: Knowledge,
    /// Knowledge of changes objects merged only in part (a gap, or elements whose origin is
    /// missing): this replica may hold some changes beyond `knows` until `knows` covers it.
    pub(crate) partial: Knowledge,
    /// Sum of the hashes of every live slot (see `digest.rs`), kept up to date with each write
    /// once known; `None` after a restore until it is first asked for (a command that only
    /// reads or edits a large replica never needs it).
    pub(crate) digest: std::cell::Cell<Option<u64>>,
    pub(crate) wall: WallClock,
    /// Stamps further ahead of the wall clock than this (ms) are refused.
    pub(crate) max_skew_ms: u64,
    /// Set for a replica loaded in part (see `part_load.rs`): which saved nodes it holds; the
    /// others are empty stand-ins. Such a replica serves one local edit and its save.
    pub(crate) in_part: Option<Box<crate::engine::part_load::Held>>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("id", &self.doc_id)
            .field("client", &self.client)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub(crate) const ROOT: Ix = 0;

/// The document id and root stamp that [`Document::common`] derives from a document's name:
/// SHA-256 of `"minisync common document\0"` and the name's UTF-8 bytes; its first 16 bytes,
/// each taken modulo 36 into `0-9a-z`, are the document id, the next 16 the root's client id (the
/// root's clock is 0). Every implementation must derive them the same way (docs/PROTOCOL.md).
pub fn common_ids(name: &str) -> (String, Stamp) {
    use sha2::{Digest, Sha256};
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let hash = Sha256::new()
        .chain_update(b"minisync common document\0")
        .chain_update(name.as_bytes())
        .finalize();
    let id = |bytes: &[u8]| -> [u8; 16] {
        let mut out = [0u8; 16];
        for (o, b) in out.iter_mut().zip(bytes) {
            *o = ALPHABET[usize::from(*b) % ALPHABET.len()];
        }
        out
    };
    let text = |bytes: [u8; 16]| bytes.iter().map(|b| char::from(*b)).collect::<String>();
    let doc_id = text(id(&hash[..16]));
    // Made here, not read: the table of ids refuses one only when all 2^32 numbers are taken
    // (4 billion ids held, more memory than any process has).
    let client = ClientId::made(id(&hash[16..32]))
        .unwrap_or_else(|| unreachable!("the table of client ids is never full"));
    (doc_id, Stamp { hlc: 0, client })
}

/// 16 random lower-case letters and digits: a name nobody else picks (a new document's id, message
/// ids, temporary files). Not a client id: it does not enter the process's table of client ids.
pub fn random_token() -> String {
    crate::engine::client_table::random_text()
        .iter()
        .map(|b| char::from(*b))
        .collect()
}

impl Document {
    /// The index of node `id`.
    pub(crate) fn node_ix(&self, id: Stamp) -> Option<Ix> {
        self.by_id.get(id, |ix| self.nodes[ix as usize].id)
    }

    /// Room for `more` nodes without growing.
    pub(crate) fn reserve_nodes(&mut self, more: usize) {
        self.nodes.reserve(more);
        let nodes = &self.nodes;
        self.by_id.reserve(more, |ix| nodes[ix as usize].id);
    }

    /// Enters the last node pushed in `by_id` (`false`: its id is held already).
    pub(crate) fn index_last_node(&mut self) -> bool {
        let Some(last) = self.nodes.len().checked_sub(1) else {
            return false;
        };
        let id = self.nodes[last].id;
        self.by_id
            .insert(id, last as Ix, |ix| self.nodes[ix as usize].id)
    }

    /// Creates a document from a JSON object, with a random document id and client id.
    pub fn new(value: &Value) -> Result<Self> {
        Self::with_ids(value, random_token(), ClientId::random())
    }

    /// Creates a document with the given document id and client id.
    pub fn with_ids(value: &Value, doc_id: String, client: ClientId) -> Result<Self> {
        if !value.is_object() {
            return Err(Error::Value("a document must be a JSON object".into()));
        }
        if value_depth(value) > MAX_DEPTH {
            return Err(Error::TooDeep {
                what: "document",
                limit: MAX_DEPTH,
            });
        }
        let mut doc = Self::empty(doc_id, client, None);
        let u = doc.begin();
        let id = doc.tick();
        doc.nodes.clear();
        doc.by_id.clear();
        doc.index_later = true;
        doc.new_node(value, id, None, u);
        doc.index_from_version();
        Ok(doc)
    }

    /// Creates a replica of the document every replica started this way under `name` shares,
    /// holding `value` as this replica's own edits (a random client id).
    ///
    /// The document id and the root object's stamp are derived from `name` (see
    /// [`common_ids`]), so two replicas started apart from their own content — two bound files
    /// imported on two machines — are one document: when they meet, each top-level key merges as
    /// concurrent writes do (one value wins a key both set; a key one of them set is kept), where
    /// two documents of [`Document::new`] would refuse each other as different documents.
    ///
    /// # Errors
    ///
    /// [`Error::Value`] when `value` is not an object, [`Error::TooDeep`].
    pub fn common(name: &str, value: &Value) -> Result<Self> {
        let Value::Object(map) = value else {
            return Err(Error::Value("a document must be a JSON object".into()));
        };
        if value_depth(value) > MAX_DEPTH {
            return Err(Error::TooDeep {
                what: "document",
                limit: MAX_DEPTH,
            });
        }
        let (doc_id, root) = common_ids(name);
        let mut doc = Self::empty(doc_id, ClientId::random(), Some(root));
        doc.index_later = true;
        let u = doc.begin();
        for (key, v) in map {
            let stamp = doc.tick();
            let slot = doc.field_slot(ROOT, key);
            let val = doc.make_val(v, stamp, (ROOT, slot), u);
            doc.write_field(ROOT, slot, val, stamp, u);
        }
        doc.index_from_version();
        Ok(doc)
    }

    /// An empty replica whose root has `root_id` (a placeholder id when `None`).
    pub(crate) fn empty(doc_id: String, client: ClientId, root_id: Option<Stamp>) -> Self {
        let id = root_id.unwrap_or(Stamp { hlc: 0, client });
        let mut doc = Document {
            doc_id,
            client,
            version: 0,
            clock: Hlc::default(),
            nodes: vec![Node {
                id,
                parent: Parent::NONE,
                u: 0,
                body: Body::Obj(Obj::default()),
            }],
            by_id: IdIndex::default(),
            keys: KeyTable::default(),
            index: ChangeIndex::default(),
            index_later: false,
            peers: BTreeMap::new(),
            knows: Knowledge::new(),
            partial: Knowledge::new(),
            digest: std::cell::Cell::new(Some(0)),
            wall: Arc::new(system_now_ms),
            max_skew_ms: DEFAULT_MAX_SKEW_MS,
            in_part: None,
        };
        doc.index_last_node();
        doc
    }

    /// Replaces the wall clock (for tests and simulations).
    pub fn set_wall_clock(&mut self, clock: WallClock) {
        self.wall = clock;
    }

    /// Sets how far ahead of this replica's wall clock a peer's clock values may be (default one
    /// day); changes stamped further ahead are refused with [`Error::ClockAhead`].
    pub fn set_max_clock_skew(&mut self, skew: std::time::Duration) {
        self.max_skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
    }

    /// This replica's client id.
    pub fn client_id(&self) -> ClientId {
        self.client
    }

    /// The document id, shared by all replicas of the document.
    pub fn id(&self) -> &str {
        &self.doc_id
    }

    /// The local version: grows with every local change and every merge that changed something.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What this replica knows of each other client.
    pub fn peers(&self) -> &BTreeMap<ClientId, PeerState> {
        &self.peers
    }

    /// What this replica knows of one client.
    pub fn peer(&self, client: ClientId) -> Option<&PeerState> {
        self.peers.get(&client)
    }

    /// The client table as it travels in changes objects.
    pub fn client_states(&self) -> Vec<ClientState> {
        self.peers
            .iter()
            .map(|(c, p)| ClientState {
                client_id: *c,
                last_received: p.last_received,
                last_acknowledged: p.last_acknowledged,
                knows: p.knows.clone(),
            })
            .collect()
    }

    /// Makes sure a client is in the table (so a first changes object can be made for it).
    pub fn add_peer(&mut self, client: ClientId) {
        if client != self.client {
            self.peers.entry(client).or_default();
        }
    }

    // ----- reading -----

    /// The document as plain JSON, without sync state.
    pub fn to_json(&self) -> Value {
        debug_assert!(
            self.is_whole(),
            "the whole value of a replica loaded in part"
        );
        self.node_json(ROOT)
    }

    /// The value at `path` (`None` if nothing is there).
    pub fn get(&self, path: &str) -> Result<Option<Value>> {
        let segs = path::parse(path)?;
        let Some((last, prefix)) = segs.split_last() else {
            return Ok(Some(self.to_json()));
        };
        let Some(n) = self.walk(prefix) else {
            return Ok(None);
        };
        Ok(self.child_val(n, last).map(|v| self.val_json(v)))
    }

    /// Number of elements of the array at `path`.
    pub fn len(&self, path: &str) -> Result<usize> {
        let n = self.array_at(path)?;
        Ok(self.arr(n).order.len() - self.arr(n).dead)
    }

    pub(crate) fn node_json(&self, ix: Ix) -> Value {
        match &self.nodes[ix as usize].body {
            Body::Obj(o) => {
                let mut m = Map::new();
                for f in &o.slots {
                    if f.val != Val::Gone {
                        m.insert(self.keys.name(f.key).to_string(), self.val_json(&f.val));
                    }
                }
                Value::Object(m)
            }
            Body::Arr(a) => Value::Array(
                a.order
                    .iter()
                    .map(|s| &a.slots[*s as usize])
                    .filter(|e| e.removed().is_none())
                    .map(|e| self.val_json(&e.val))
                    .collect(),
            ),
        }
    }

    pub(crate) fn val_json(&self, v: &Val) -> Value {
        match v {
            Val::Prim(p) => p.to_value(),
            Val::Text(t) => Value::String(t.to_string()),
            Val::Node(n) => self.node_json(*n),
            Val::Gone => Value::Null,
        }
    }

    /// The node a path leads to, following only live links.
    pub(crate) fn walk(&self, segs: &[Segment]) -> Option<Ix> {
        let mut n = ROOT;
        for seg in segs {
            match self.child_val(n, seg)? {
                Val::Node(c) => n = *c,
                _ => return None,
            }
        }
        Some(n)
    }

    fn child_val(&self, n: Ix, seg: &Segment) -> Option<&Val> {
        // A replica loaded in part knows where its paths lead through nodes it does not hold.
        if let Some(v) = self.in_part.as_ref().and_then(|p| p.passage(n, seg)) {
            return Some(v);
        }
        child_of(&self.nodes[n as usize], &self.keys, seg)
    }

    fn container(&self, path_text: &str, segs: &[Segment]) -> Result<Ix> {
        self.walk(segs).ok_or_else(|| {
            Error::path(
                path_text,
                format!(
                    "{:?} is not an existing object or array",
                    path::render(segs)
                ),
            )
        })
    }

    fn array_at(&self, path_text: &str) -> Result<Ix> {
        let segs = path::parse(path_text)?;
        let n = self.container(path_text, &segs)?;
        match self.nodes[n as usize].body {
            Body::Arr(_) => Ok(n),
            Body::Obj(_) => Err(Error::path(path_text, "is an object, not an array")),
        }
    }

    pub(crate) fn arr(&self, n: Ix) -> &Arr {
        match &self.nodes[n as usize].body {
            Body::Arr(a) => a,
            Body::Obj(_) => unreachable!("node {n} checked to be an array"),
        }
    }

    pub(crate) fn arr_mut(&mut self, n: Ix) -> &mut Arr {
        match &mut self.nodes[n as usize].body {
            Body::Arr(a) => a,
            Body::Obj(_) => unreachable!("node {n} checked to be an array"),
        }
    }

    // ----- writing -----

    /// Sets the value at `path`: an object key (created if missing), or an array element that
    /// exists (an index equal to the length appends).
    pub fn set(&mut self, path_text: &str, value: Value) -> Result<()> {
        let segs = path::parse(path_text)?;
        let Some((last, prefix)) = segs.split_last() else {
            return Err(Error::path(
                path_text,
                "the document root cannot be replaced; set its keys",
            ));
        };
        self.check_depth(path_text, segs.len(), &value)?;
        let n = self.container(path_text, prefix)?;
        match (&self.nodes[n as usize].body, last) {
            (Body::Obj(o), Segment::Key(k)) => {
                if let (Value::String(new), Some(slot)) = (&value, o.slot_named(&self.keys, k))
                    && self.set_text(n, slot, new)
                {
                    return Ok(());
                }
                let u = self.begin();
                let stamp = self.tick();
                let slot = self.field_slot(n, k);
                let val = self.make_val(&value, stamp, (n, slot), u);
                self.write_field(n, slot, val, stamp, u);
                Ok(())
            }
            (Body::Arr(a), Segment::Index(i)) => {
                let len = a.order.len() - a.dead;
                if *i == len {
                    self.insert_values(n, len, std::slice::from_ref(&value));
                    Ok(())
                } else if *i < len {
                    if let (Value::String(new), Some(pos)) = (&value, visible_pos(a, *i))
                        && self.set_text(n, a.order[pos], new)
                    {
                        return Ok(());
                    }
                    let u = self.begin();
                    self.replace_elem(n, *i, &value, u);
                    Ok(())
                } else {
                    Err(Error::path(
                        path_text,
                        format!("index {i} is past the end (length {len})"),
                    ))
                }
            }
            (Body::Obj(_), Segment::Index(_)) => {
                Err(Error::path(path_text, "an index used on an object"))
            }
            (Body::Arr(_), Segment::Key(_)) => {
                Err(Error::path(path_text, "a key used on an array"))
            }
        }
    }

    /// Removes the object key or array element at `path`, returning what was there.
    pub fn remove(&mut self, path_text: &str) -> Result<Option<Value>> {
        let segs = path::parse(path_text)?;
        let Some((last, prefix)) = segs.split_last() else {
            return Err(Error::path(
                path_text,
                "the document root cannot be removed",
            ));
        };
        let n = self.container(path_text, prefix)?;
        let Some(old) = self.child_val(n, last).map(|v| self.val_json(v)) else {
            return Ok(None);
        };
        let u = self.begin();
        match last {
            Segment::Key(k) => {
                let stamp = self.tick();
                let slot = self.field_slot(n, k);
                self.write_field(n, slot, Val::Gone, stamp, u);
            }
            Segment::Index(i) => self.remove_elem(n, *i, u),
        }
        Ok(Some(old))
    }

    /// Appends values to the array at `path`; returns the new length.
    pub fn push(&mut self, path_text: &str, value: Value) -> Result<usize> {
        let n = self.array_at(path_text)?;
        self.check_depth(path_text, path::parse(path_text)?.len() + 1, &value)?;
        let len = self.len(path_text)?;
        self.insert_values(n, len, std::slice::from_ref(&value));
        Ok(len + 1)
    }

    /// Inserts a value at `index` of the array at `path`.
    pub fn insert(&mut self, path_text: &str, index: usize, value: Value) -> Result<()> {
        self.splice(path_text, index, 0, vec![value]).map(|_| ())
    }

    /// Removes and returns the element at `index` of the array at `path`.
    pub fn remove_at(&mut self, path_text: &str, index: usize) -> Result<Value> {
        let mut out = self.splice(path_text, index, 1, Vec::new())?;
        out.pop()
            .ok_or_else(|| Error::path(path_text, format!("no element at index {index}")))
    }

    /// Like JavaScript's `splice`: removes `delete` elements at `start`, inserts `items` there, and
    /// returns the removed values.
    pub fn splice(
        &mut self,
        path_text: &str,
        start: usize,
        delete: usize,
        items: Vec<Value>,
    ) -> Result<Vec<Value>> {
        let n = self.array_at(path_text)?;
        let depth = path::parse(path_text)?.len() + 1;
        for item in &items {
            self.check_depth(path_text, depth, item)?;
        }
        let len = self.len(path_text)?;
        if start > len {
            return Err(Error::path(
                path_text,
                format!("start {start} is past the end (length {len})"),
            ));
        }
        let delete = delete.min(len - start);
        if delete == 0 && items.is_empty() {
            return Ok(Vec::new());
        }
        let removed: Vec<Value> = (start..start + delete)
            .map(|i| {
                let a = self.arr(n);
                let pos = visible_pos(a, i).unwrap_or(0);
                self.val_json(&a.slots[a.order[pos] as usize].val)
            })
            .collect();
        let u = self.begin();
        for _ in 0..delete {
            self.remove_elem(n, start, u);
        }
        self.insert_values_at(n, start, &items, u);
        Ok(removed)
    }

    /// Removes and returns the last element.
    pub fn pop(&mut self, path_text: &str) -> Result<Option<Value>> {
        let len = self.len(path_text)?;
        if len == 0 {
            return Ok(None);
        }
        self.remove_at(path_text, len - 1).map(Some)
    }

    /// Removes and returns the first element.
    pub fn shift(&mut self, path_text: &str) -> Result<Option<Value>> {
        if self.len(path_text)? == 0 {
            return Ok(None);
        }
        self.remove_at(path_text, 0).map(Some)
    }

    /// Inserts a value at the front; returns the new length.
    pub fn unshift(&mut self, path_text: &str, value: Value) -> Result<usize> {
        self.insert(path_text, 0, value)?;
        self.len(path_text)
    }

    /// Sorts the array in a fixed total order of JSON values (null, booleans, numbers, strings,
    /// arrays, objects). Like every reordering, it rewrites the array: see docs/PROTOCOL.md.
    pub fn sort(&mut self, path_text: &str) -> Result<()> {
        self.sort_by(path_text, json_order)
    }

    /// Sorts the array with a comparator.
    pub fn sort_by(
        &mut self,
        path_text: &str,
        mut cmp: impl FnMut(&Value, &Value) -> Ordering,
    ) -> Result<()> {
        let Value::Array(mut items) = self.get(path_text)?.unwrap_or(Value::Null) else {
            return Err(Error::path(path_text, "is not an array"));
        };
        items.sort_by(&mut cmp);
        self.rewrite(path_text, items)
    }

    /// Reverses the array.
    pub fn reverse(&mut self, path_text: &str) -> Result<()> {
        let Value::Array(mut items) = self.get(path_text)?.unwrap_or(Value::Null) else {
            return Err(Error::path(path_text, "is not an array"));
        };
        items.reverse();
        self.rewrite(path_text, items)
    }

    fn rewrite(&mut self, path_text: &str, items: Vec<Value>) -> Result<()> {
        let len = self.len(path_text)?;
        self.splice(path_text, 0, len, items).map(|_| ())
    }

    fn check_depth(&self, path_text: &str, at: usize, value: &Value) -> Result<()> {
        if at + value_depth(value) > MAX_DEPTH {
            return Err(Error::path(
                path_text,
                format!("the value would nest deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    /// Opens a new local version for a change.
    pub(crate) fn begin(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// A fresh stamp for a local change.
    pub(crate) fn tick(&mut self) -> Stamp {
        let hlc = self.clock.tick((self.wall)());
        self.knows.insert(self.client, hlc);
        Stamp {
            hlc,
            client: self.client,
        }
    }

    /// The slot of key `k` in object `n`, created empty if missing.
    pub(crate) fn field_slot(&mut self, n: Ix, k: &str) -> u32 {
        let Body::Obj(o) = &mut self.nodes[n as usize].body else {
            unreachable!("node {n} checked to be an object")
        };
        if let Some(s) = o.slot_named(&self.keys, k) {
            return s;
        }
        let key = self.keys.intern(k);
        let Body::Obj(o) = &mut self.nodes[n as usize].body else {
            unreachable!("node {n} checked to be an object")
        };
        o.push(Field {
            key,
            val: Val::Gone,
            stamp: Stamp::ZERO,
            u: 0,
        })
    }

    pub(crate) fn write_field(&mut self, n: Ix, slot: u32, val: Val, stamp: Stamp, u: u64) {
        let Body::Obj(o) = &mut self.nodes[n as usize].body else {
            unreachable!("node {n} checked to be an object")
        };
        let old_u = o.slots[slot as usize].u;
        self.unhash(n, slot);
        let Body::Obj(o) = &mut self.nodes[n as usize].body else {
            unreachable!("node {n} checked to be an object")
        };
        let f = &mut o.slots[slot as usize];
        f.val = val;
        f.stamp = stamp;
        f.u = u;
        self.reindex(n, slot, old_u, u);
        self.rehash(n, slot);
    }

    /// The value of slot `s` of node `n` (`None` for a removed element).
    pub(crate) fn slot_val_ref(&self, n: Ix, s: u32) -> Option<&Val> {
        match &self.nodes[n as usize].body {
            Body::Obj(o) => Some(&o.slots[s as usize].val),
            Body::Arr(a) => {
                let e = &a.slots[s as usize];
                e.removed().is_none().then_some(&e.val)
            }
        }
    }

    pub(crate) fn slot_val_mut(&mut self, n: Ix, s: u32) -> &mut Val {
        match &mut self.nodes[n as usize].body {
            Body::Obj(o) => &mut o.slots[s as usize].val,
            Body::Arr(a) => &mut a.slots[s as usize].val,
        }
    }

    /// The stamp of the write that put the slot's value there.
    pub(crate) fn slot_stamp(&self, n: Ix, s: u32) -> Stamp {
        match &self.nodes[n as usize].body {
            Body::Obj(o) => o.slots[s as usize].stamp,
            Body::Arr(a) => a.slots[s as usize].vstamp,
        }
    }

    pub(crate) fn slot_u(&self, n: Ix, s: u32) -> u64 {
        match &self.nodes[n as usize].body {
            Body::Obj(o) => o.slots[s as usize].u,
            Body::Arr(a) => a.slots[s as usize].u,
        }
    }

    /// Records that slot `s` of node `n` changed at version `u`.
    pub(crate) fn set_slot_u(&mut self, n: Ix, s: u32, u: u64) {
        let old_u = match &mut self.nodes[n as usize].body {
            Body::Obj(o) => std::mem::replace(&mut o.slots[s as usize].u, u),
            Body::Arr(a) => std::mem::replace(&mut a.slots[s as usize].u, u),
        };
        self.reindex(n, s, old_u, u);
    }

    /// Rebuilds the change index from the slots (when stale entries outnumber live ones).
    pub(crate) fn index_all(&mut self) {
        let base = self.index.base();
        self.index = ChangeIndex::rebuilt(base, self.slots_after(base));
    }

    /// Starts the change index at the current version, with no entries: for a replica built in
    /// one go (see `index_later`), whose slots all changed at or before it.
    ///
    /// Also gives back the room the build's growing tables left spare: a table grown by
    /// doubling holds up to twice what it needs (13 MB of a 10 MB document's replica).
    pub(crate) fn index_from_version(&mut self) {
        self.index = ChangeIndex::from_base(self.version);
        self.index_later = false;
        self.nodes.shrink_to_fit();
        for node in &mut self.nodes {
            if let Body::Arr(a) = &mut node.body {
                a.slots.shrink_to_fit();
                a.order.shrink_to_fit();
            }
        }
    }

    /// Every slot last changed after `since`, as (version, node, slot), in no order.
    fn slots_after(&self, since: u64) -> Vec<(u64, Ix, u32)> {
        let mut entries = Vec::new();
        for (ix, node) in self.nodes.iter().enumerate() {
            let ix = ix as Ix;
            let after = |(u, s): (u64, u32)| (u > since).then_some((u, ix, s));
            match &node.body {
                Body::Obj(o) => {
                    entries.extend(o.slots.iter().map(|f| f.u).zip(0..).filter_map(after))
                }
                Body::Arr(a) => {
                    entries.extend(a.slots.iter().map(|e| e.u).zip(0..).filter_map(after))
                }
            }
        }
        entries
    }

    /// The slots changed after version `since` as (version, node, slot), in version order,
    /// stale entries included (readers check `slot_u`): from the change index, or, for a `since`
    /// before the index's base (a reader behind what was loaded or built), collected by walking
    /// the document.
    pub(crate) fn changed_after(&self, since: u64) -> std::borrow::Cow<'_, [(u64, Ix, u32)]> {
        match self.index.after(since) {
            Some(entries) => std::borrow::Cow::Borrowed(entries),
            None => {
                let mut entries = self.slots_after(since);
                entries.sort_unstable();
                std::borrow::Cow::Owned(entries)
            }
        }
    }

    /// Moves a slot's entry in the change index to version `u`.
    pub(crate) fn reindex(&mut self, n: Ix, slot: u32, old_u: u64, u: u64) {
        if old_u != u && !self.index_later {
            self.index.enter((u, n, slot), old_u);
            if self.index.wants_rebuild() {
                self.index_all();
            }
        }
        let node = &mut self.nodes[n as usize];
        node.u = node.u.max(u);
    }

    /// Turns a user value into a slot value, creating nodes for objects and arrays.
    pub(crate) fn make_val(
        &mut self,
        value: &Value,
        stamp: Stamp,
        parent: (Ix, u32),
        u: u64,
    ) -> Val {
        match Scalar::from_value(value) {
            Some(p) => Val::Prim(p),
            None => Val::Node(self.new_node(value, stamp, Some(parent), u)),
        }
    }

    /// Creates a node (and its descendants) for a local object or array value.
    fn new_node(&mut self, value: &Value, id: Stamp, parent: Option<(Ix, u32)>, u: u64) -> Ix {
        let ix = self.nodes.len() as Ix;
        let body = if value.is_array() {
            Body::Arr(Box::default())
        } else {
            Body::Obj(Obj::default())
        };
        self.nodes.push(Node {
            id,
            parent: Parent::of(parent),
            u,
            body,
        });
        self.index_last_node();
        match value {
            Value::Object(m) => {
                for (k, v) in m {
                    let slot = self.field_slot(ix, k);
                    let stamp = if v.is_object() || v.is_array() {
                        self.tick()
                    } else {
                        id
                    };
                    let val = self.make_val(v, stamp, (ix, slot), u);
                    self.write_field(ix, slot, val, stamp, u);
                }
            }
            Value::Array(items) => self.insert_values_at(ix, 0, items, u),
            _ => {}
        }
        ix
    }

    /// Inserts values at visible index `at` of array `n` as a new local version.
    fn insert_values(&mut self, n: Ix, at: usize, items: &[Value]) {
        let u = self.begin();
        self.insert_values_at(n, at, items, u);
    }

    fn insert_values_at(&mut self, n: Ix, at: usize, items: &[Value], u: u64) {
        let a = self.arr(n);
        let (mut origin, mut pos) = if at == 0 {
            (Link::NONE, 0)
        } else {
            let p = visible_pos(a, at - 1).unwrap_or(a.order.len().saturating_sub(1));
            (Link::to(a.order[p]), p + 1)
        };
        // The element that follows now (live or removed): every item of this run names it.
        let right = a.order.get(pos).map_or(Link::NONE, |s| Link::to(*s));
        for item in items {
            let id = self.tick();
            let slot = self.arr(n).slots.len() as u32;
            let val = self.make_val(item, id, (n, slot), u);
            let a = self.arr_mut(n);
            a.slots.push(Elem {
                id,
                origin,
                right,
                val,
                vstamp: id,
                u,
            });
            a.order.insert(pos, slot);
            a.index_last();
            a.last_pos = Some(pos);
            if !self.index_later {
                self.index.enter((u, n, slot), 0);
            }
            self.rehash(n, slot);
            let node = &mut self.nodes[n as usize];
            node.u = node.u.max(u);
            origin = Link::to(slot);
            pos += 1;
        }
    }

    fn replace_elem(&mut self, n: Ix, i: usize, value: &Value, u: u64) {
        let stamp = self.tick();
        let a = self.arr(n);
        let Some(pos) = visible_pos(a, i) else { return };
        let slot = a.order[pos];
        self.unhash(n, slot);
        let val = self.make_val(value, stamp, (n, slot), u);
        let e = &mut self.arr_mut(n).slots[slot as usize];
        let old_u = e.u;
        e.val = val;
        e.vstamp = stamp;
        e.u = u;
        self.reindex(n, slot, old_u, u);
        self.rehash(n, slot);
    }

    fn remove_elem(&mut self, n: Ix, i: usize, u: u64) {
        let stamp = self.tick();
        let Some(pos) = visible_pos(self.arr(n), i) else {
            return;
        };
        let slot = self.arr(n).order[pos];
        self.unhash(n, slot);
        let a = self.arr_mut(n);
        a.dead += 1;
        let e = &mut a.slots[slot as usize];
        let old_u = e.u;
        e.remove(stamp);
        e.u = u;
        self.reindex(n, slot, old_u, u);
    }

    /// Whether a node is reachable from the root through live links.
    pub(crate) fn attached(&self, mut n: Ix, cache: &mut HashMap<Ix, bool>) -> bool {
        let mut chain = Vec::new();
        let result = loop {
            if n == ROOT {
                break true;
            }
            if let Some(known) = cache.get(&n) {
                break *known;
            }
            chain.push(n);
            let Some((p, s)) = self.nodes[n as usize].parent.get() else {
                break false;
            };
            let holds = match &self.nodes[p as usize].body {
                Body::Obj(o) => o.slots[s as usize].val == Val::Node(n),
                Body::Arr(a) => {
                    let e = &a.slots[s as usize];
                    e.val == Val::Node(n)
                }
            };
            if !holds {
                break false;
            }
            n = p;
        };
        for c in chain {
            cache.insert(c, result);
        }
        result
    }
}

/// The live value a path segment leads to from `node` (`keys`: its replica's key names).
pub(crate) fn child_of<'a>(node: &'a Node, keys: &KeyTable, seg: &Segment) -> Option<&'a Val> {
    match (&node.body, seg) {
        (Body::Obj(o), Segment::Key(k)) => {
            let f = &o.slots[o.slot_named(keys, k)? as usize];
            (f.val != Val::Gone).then_some(&f.val)
        }
        (Body::Arr(a), Segment::Index(i)) => {
            let pos = visible_pos(a, *i)?;
            Some(&a.slots[a.order[pos] as usize].val)
        }
        _ => None,
    }
}

/// Position in `order` of the element at visible index `i`.
pub(crate) fn visible_pos(a: &Arr, i: usize) -> Option<usize> {
    if a.dead == 0 {
        return (i < a.order.len()).then_some(i);
    }
    let mut seen = 0;
    for (pos, s) in a.order.iter().enumerate() {
        if a.slots[*s as usize].removed().is_none() {
            if seen == i {
                return Some(pos);
            }
            seen += 1;
        }
    }
    None
}

/// A total order of JSON values, used by `sort`.
pub fn json_order(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .total_cmp(&y.as_f64().unwrap_or(0.0)),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Array(_), Value::Array(_)) | (Value::Object(_), Value::Object(_)) => {
            a.to_string().cmp(&b.to_string())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}
