//! The changes object: what travels between replicas.
//!
//! Parsing turns untrusted JSON into typed values and checks everything that can be checked without
//! the replica (types, stamps, nesting, sizes); `merge` checks the rest against the replica before
//! it changes anything. See docs/PROTOCOL.md for the format.

use std::collections::BTreeMap;
use std::fmt::{self, Display};

use serde_json::Value;

use crate::engine::HashMap;
use crate::engine::doc::{Key, KeySet, intern};
use crate::engine::error::{Error, Result};
use crate::engine::json::{Json, JsonObj};
use crate::engine::scalar::Scalar;
use crate::engine::stamp::{ClientId, MAX_HLC, Stamp};
use crate::engine::text::Piece;
use crate::engine::wire_out::next_stamp;

mod deferred;
pub(crate) use deferred::Deferred;
use deferred::defer;

/// Value of the `minisync` marker field.
pub const FORMAT_MARKER: &str = "changes";
/// The format version this build writes and the only one it reads. Version 3 added texts
/// (strings merged by character) and right origins of array elements (the FugueMax order);
/// version 2 added `digest` and `repair`. A replica of version 2 orders array elements by
/// another rule, so its changes are refused with the advice to upgrade it.
pub const FORMAT_VERSION: u64 = 3;
/// Deepest document nesting (objects and arrays inside each other) the engine stores or accepts.
pub const MAX_DEPTH: usize = 200;
/// Deepest JSON nesting of a changes object: each document level costs at most three JSON levels
/// (array node, its `v` list, the element entry), plus the envelope.
pub const MAX_JSON_DEPTH: usize = MAX_DEPTH * 3 + 8;
/// Most nodes, fields and array elements one changes object may carry.
pub const MAX_ITEMS: usize = 20_000_000;

/// What a replica knows: for each client, the highest clock value of that client's changes it holds.
/// Because every changes object is complete relative to what the receiver acknowledged, a replica
/// holding a client's change also holds (or has superseded) all that client's earlier ones.
pub type Knowledge = BTreeMap<ClientId, u64>;

/// One row of a replica's table of clients, as relayed to others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientState {
    /// Which client the row is about.
    pub client_id: ClientId,
    /// The sender's `lastReceived` for that client: the client's version it last merged.
    pub last_received: u64,
    /// The sender's `lastAcknowledged` for that client: the sender's own version it confirmed.
    pub last_acknowledged: u64,
    /// What the sender knows that client holds.
    pub knows: Knowledge,
}

/// A parsed, structurally valid changes object.
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    pub(crate) doc_id: String,
    pub(crate) sent_by: ClientId,
    pub(crate) from_version: u64,
    pub(crate) changes_since: u64,
    pub(crate) knows: Knowledge,
    /// Changes the sender holds beyond `knows`, from merges it could make only in part: the
    /// stamps it carries may reach this far, but a receiver learns no knowledge from it.
    pub(crate) partial: Knowledge,
    pub(crate) client_states: Vec<ClientState>,
    pub(crate) root: Option<WNode>,
    /// The sender's content digest, when it holds no changes beyond its `knows`.
    pub(crate) digest: Option<u64>,
    /// Half of a full exchange after a divergence: same-stamp conflicts are settled by rank, and
    /// a request is answered with the receiver's full changes.
    pub(crate) repair: Option<RepairKind>,
    /// Opaque tags of the places the sender writes its own changes of this document to itself
    /// (the agent: hashed mail addresses), so that a receiver does not relay them there at once.
    pub(crate) writes_to: Vec<String>,
}

/// The two halves of a repair's full exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairKind {
    /// Sent by the replica that found the divergence: "here is all of mine, send me all of yours".
    Request,
    /// The answer: all of the other replica's.
    Reply,
}

/// A node (object or array) on the wire.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WNode {
    pub id: Stamp,
    pub u: u64,
    pub body: WBody,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WBody {
    Obj(Vec<WField>),
    Arr(Vec<WElem>),
}

/// A written object key: its value (`None` when the key was removed) and the stamp of the write.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WField {
    pub key: Key,
    pub val: Option<WVal>,
    pub stamp: Stamp,
}

/// An array element: its id (insertion stamp), what it was inserted after, and either its value with
/// the stamp of that value or the stamp of its removal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WElem {
    pub id: Stamp,
    pub origin: Option<Stamp>,
    pub right: Option<Stamp>,
    pub val: Option<(WVal, Stamp)>,
    pub removed: Option<Stamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WVal {
    /// A number, boolean, null, or a string written whole.
    Prim(Scalar),
    Node(Box<WNode>),
    /// An edited string: its id (the write that created it), and the pieces the receiver lacks.
    Text(Box<WText>),
}

/// A text on the wire (see `text.rs` and docs/PROTOCOL.md, "Text").
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WText {
    pub id: Stamp,
    pub init: u32,
    pub ops: Knowledge,
    /// In the sender's document order; `u` is not carried (0).
    pub pieces: Vec<Piece>,
}

impl WNode {
    pub fn is_array(&self) -> bool {
        matches!(self.body, WBody::Arr(_))
    }
    fn body_is_empty(&self) -> bool {
        match &self.body {
            WBody::Obj(f) => f.is_empty(),
            WBody::Arr(e) => e.is_empty(),
        }
    }
}

impl Changes {
    /// The document this changes object is for.
    pub fn doc_id(&self) -> &str {
        &self.doc_id
    }
    /// The client that made this changes object.
    pub fn sent_by(&self) -> ClientId {
        self.sent_by
    }
    /// The sender's version when it made this object.
    pub fn from_version(&self) -> u64 {
        self.from_version
    }
    /// The sender's version after which the carried changes were made (0: everything).
    pub fn changes_since(&self) -> u64 {
        self.changes_since
    }
    /// The sender's table of clients.
    pub fn client_states(&self) -> &[ClientState] {
        &self.client_states
    }
    /// The tags the sender listed as the places it writes this document to itself (`writesTo`;
    /// empty when it listed none). Opaque to the engine: the agent's hashed mail addresses.
    pub fn writes_to(&self) -> &[String] {
        &self.writes_to
    }

    /// Lists `tags` as the places the sender writes this document to itself (see
    /// [`Changes::writes_to`]); at most `MAX_WRITES_TO` of at most 64 bytes each are kept, as
    /// a reader refuses more.
    pub fn set_writes_to(&mut self, mut tags: Vec<String>) {
        tags.retain(|t| !t.is_empty() && t.len() <= MAX_WRITES_TO_LEN);
        tags.truncate(MAX_WRITES_TO);
        self.writes_to = tags;
    }

    /// The sender's content digest, if it sent one (see docs/PROTOCOL.md, "Digest").
    pub fn digest(&self) -> Option<u64> {
        self.digest
    }
    /// Whether this is half of a repair's full exchange, and which half.
    pub fn repair(&self) -> Option<RepairKind> {
        self.repair
    }
    /// Marks a full changes object as half of a repair's full exchange.
    pub fn into_repair(mut self, kind: RepairKind) -> Self {
        self.repair = Some(kind);
        self
    }
    /// Up to `max` paths (as `agent doc get` takes them) of what this object changes: each
    /// written or removed key, and each array with changed elements (as `items[]`). Its own size,
    /// not the document's, bounds the work: for logs ("who changed this?").
    pub fn touched_paths(&self, max: usize) -> Vec<String> {
        fn walk(n: &WNode, prefix: &str, out: &mut Vec<String>, max: usize) {
            match &n.body {
                WBody::Obj(fields) => {
                    for f in fields {
                        if out.len() >= max {
                            return;
                        }
                        let seg = crate::engine::path::Segment::Key(f.key.to_string());
                        let key = crate::engine::path::render(std::slice::from_ref(&seg));
                        let p = match (prefix.is_empty(), key.starts_with('[')) {
                            (true, _) | (false, true) => format!("{prefix}{key}"),
                            (false, false) => format!("{prefix}.{key}"),
                        };
                        match &f.val {
                            Some(WVal::Node(child)) if !child.body_is_empty() => {
                                walk(child, &p, out, max)
                            }
                            _ => out.push(p),
                        }
                    }
                }
                WBody::Arr(elems) if !elems.is_empty() => out.push(format!("{prefix}[]")),
                WBody::Arr(_) => {}
            }
        }
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            walk(root, "", &mut out, max);
        }
        out.dedup();
        out
    }

    /// Whether it carries any change at all (an object with none is only an acknowledgement).
    pub fn has_changes(&self) -> bool {
        match &self.root {
            None => false,
            Some(root) => match &root.body {
                WBody::Obj(f) => !f.is_empty() || self.changes_since == 0,
                WBody::Arr(e) => !e.is_empty(),
            },
        }
    }

    /// Parses changes text, refusing anything malformed, too deep or too large.
    pub fn parse(text: &str) -> Result<Self> {
        check_json_depth(text.as_bytes())?;
        let mut de = serde_json::Deserializer::from_str(text);
        de.disable_recursion_limit();
        let value = <Value as serde::Deserialize>::deserialize(&mut de)
            .map_err(|e| Error::Json(e.to_string()))?;
        de.end().map_err(|e| Error::Json(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Reads a changes object from JSON already parsed by the caller.
    pub fn from_value(value: &Value) -> Result<Self> {
        check_value_depth(value)?;
        Self::from_json(&Json::borrow(value))
    }

    /// Reads a changes object from a JSON value whose depth is bounded.
    fn from_json(value: &Json<'_>) -> Result<Self> {
        Self::from_json_reading(value, &mut Reading::new(false))
    }

    /// Reads a changes object from a JSON value of `compact::decode_deferring`: the element
    /// lists it left unread stay unread, each array node's elements empty here and its lists
    /// in the returned reading's `deferred` (see `wire/deferred.rs`).
    pub(crate) fn read_deferring(value: &Json<'_>) -> Result<(Self, Reading)> {
        let mut r = Reading::new(true);
        let changes = Self::from_json_reading(value, &mut r)?;
        Ok((changes, r))
    }

    fn from_json_reading(value: &Json<'_>, r: &mut Reading) -> Result<Self> {
        let top = value
            .as_object()
            .ok_or_else(|| Error::malformed("$", "a changes object must be a JSON object"))?;
        check_marker_and_version(top)?;
        let doc_id = match top.get("id").and_then(Json::text) {
            Some(s) if !s.is_empty() && s.len() <= 128 => s.into_owned(),
            _ => {
                return Err(Error::malformed(
                    "$.id",
                    "the document id must be a string of 1 to 128 characters",
                ));
            }
        };
        let sent_by = client_of(top.get("sentBy"), "$.sentBy")?;
        let from_version = get_u64(top, "fromVersion", "$")?;
        let changes_since = get_u64(top, "changesSince", "$")?;
        if changes_since > from_version {
            return Err(Error::malformed(
                "$.changesSince",
                format!("changesSince {changes_since} is after fromVersion {from_version}"),
            ));
        }
        let knows = knowledge_of(top.get("knows"), "$.knows")?;
        let partial = knowledge_of(top.get("partial"), "$.partial")?;
        let client_states = client_states_of(top.get("clientStates"))?;
        let root = match top.get("changes") {
            None | Some(Json::Null) => None,
            Some(v) => {
                let node = parse_node(v, &At::Path("$.changes"), r, None, from_version)?;
                if node.is_array() {
                    return Err(Error::malformed(
                        "$.changes",
                        "the document root must be an object",
                    ));
                }
                Some(node)
            }
        };
        let (digest, repair) = extras_of(top)?;
        let writes_to = writes_to_of(top.get("writesTo"))?;
        if repair.is_some() && (changes_since != 0 || root.is_none()) {
            return Err(Error::malformed(
                "$.repair",
                "a repair carries the full document (changesSince 0)",
            ));
        }
        Ok(Changes {
            doc_id,
            sent_by,
            from_version,
            changes_since,
            knows,
            partial,
            client_states,
            root,
            digest,
            repair,
            writes_to,
        })
    }

    /// The JSON form of this changes object.
    pub fn to_value(&self) -> Value {
        self.tree().into_value()
    }

    /// The JSON text of this changes object, written as it is made (no `serde_json::Value` of
    /// it): the same text as `to_value().to_string()`.
    pub fn to_json_string(&self) -> String {
        serde_json::to_string(&self.tree()).unwrap_or_default()
    }

    /// This changes object in the compact form (what travels by mail; see
    /// [`crate::engine::compact`]): the same JSON value in fewer bytes.
    pub fn to_compact(&self) -> Vec<u8> {
        crate::engine::compact::encode_tree(&self.tree())
    }

    /// Reads a changes object in either form: compact (it begins with
    /// [`crate::engine::compact::MAGIC`]) or JSON text.
    ///
    /// # Errors
    ///
    /// [`Error::Compact`] for damaged compact bytes, [`Error::Json`] for text that is not UTF-8
    /// JSON, and whatever [`Changes::from_value`] refuses.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if crate::engine::compact::is_compact(bytes) {
            return Self::from_json(&crate::engine::compact::decode_json(bytes)?);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| Error::Json(format!("neither the compact form nor UTF-8 text: {e}")))?;
        Self::parse(text)
    }
}

/// The marker `"minisync": "changes"` and this build's `formatVersion`.
fn check_marker_and_version(top: &JsonObj<'_>) -> Result<()> {
    match top.get("minisync") {
        Some(Json::Str(s)) if s == FORMAT_MARKER => {}
        _ => {
            return Err(Error::malformed(
                "$.minisync",
                format!("missing the marker \"minisync\": \"{FORMAT_MARKER}\""),
            ));
        }
    }
    let version = get_u64(top, "formatVersion", "$")?;
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version < FORMAT_VERSION {
        return Err(Error::OlderVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// The sender's table of other clients.
fn client_states_of(v: Option<&Json<'_>>) -> Result<Vec<ClientState>> {
    let rows = match v {
        None => return Ok(Vec::new()),
        Some(Json::Arr(rows)) => rows,
        Some(_) => return Err(Error::malformed("$.clientStates", "must be an array")),
    };
    if rows.len() > 100_000 {
        return Err(Error::malformed("$.clientStates", "more than 100000 rows"));
    }
    let mut seen = crate::engine::HashSet::default();
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let states = At::Path("$.clientStates");
        let at = states.i(i);
        let obj = row
            .as_object()
            .ok_or_else(|| Error::malformed(at, "must be an object"))?;
        let client_id = client_of(obj.get("clientID"), &at.f("clientID"))?;
        if !seen.insert(client_id) {
            return Err(Error::malformed(
                at,
                format!("client {client_id} listed twice"),
            ));
        }
        out.push(ClientState {
            client_id,
            last_received: get_u64(obj, "lastReceived", &at)?,
            last_acknowledged: get_u64(obj, "lastAcknowledged", &at)?,
            knows: knowledge_of(obj.get("knows"), &at.f("knows"))?,
        });
    }
    Ok(out)
}

/// How many `writesTo` tags a changes object may carry, and how long each may be.
pub(crate) const MAX_WRITES_TO: usize = 10_000;
pub(crate) const MAX_WRITES_TO_LEN: usize = 64;

/// The optional `writesTo`: a list of at most [`MAX_WRITES_TO`] strings of 1 to
/// [`MAX_WRITES_TO_LEN`] bytes.
fn writes_to_of(v: Option<&Json<'_>>) -> Result<Vec<String>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    let bad = || {
        Error::malformed(
            "$.writesTo",
            format!(
                "must be a list of at most {MAX_WRITES_TO} strings of 1 to {MAX_WRITES_TO_LEN} bytes"
            ),
        )
    };
    let Json::Arr(items) = v else {
        return Err(bad());
    };
    if items.len() > MAX_WRITES_TO {
        return Err(bad());
    }
    items
        .iter()
        .map(|t| match t.text() {
            Some(s) if !s.is_empty() && s.len() <= MAX_WRITES_TO_LEN => Ok(s.into_owned()),
            _ => Err(bad()),
        })
        .collect()
}

/// The optional fields of format 2: `digest` and `repair`.
fn extras_of(top: &JsonObj<'_>) -> Result<(Option<u64>, Option<RepairKind>)> {
    let digest = match top.get("digest") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .filter(|s| !s.is_empty() && s.len() <= 16)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    Error::malformed("$.digest", "must be a hex number of at most 16 digits")
                })?,
        ),
    };
    let repair = match top.get("repair") {
        None => None,
        Some(Json::Str(s)) if s == "request" => Some(RepairKind::Request),
        Some(Json::Str(s)) if s == "reply" => Some(RepairKind::Reply),
        Some(_) => {
            return Err(Error::malformed(
                "$.repair",
                "must be \"request\" or \"reply\"",
            ));
        }
    };
    Ok((digest, repair))
}

fn knowledge_of(v: Option<&Json<'_>>, at: &(impl Display + ?Sized)) -> Result<Knowledge> {
    let mut out = Knowledge::new();
    match v {
        None => {}
        Some(Json::Obj(m)) => {
            if m.len() > 100_000 {
                return Err(Error::malformed(at, "more than 100000 clients"));
            }
            for (c, h) in m.iter() {
                let client = ClientId::parse(c).map_err(|e| Error::malformed(at, e.to_string()))?;
                let hlc = h
                    .as_str()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                    .filter(|h| *h < MAX_HLC)
                    .ok_or_else(|| {
                        Error::malformed(
                            format!("{at}.{c}"),
                            "must be a hex clock value below 2^62",
                        )
                    })?;
                out.insert(client, hlc);
            }
        }
        Some(_) => return Err(Error::malformed(at, "must be an object of client → clock")),
    }
    Ok(out)
}

fn get_u64(obj: &JsonObj<'_>, key: &str, at: &(impl Display + ?Sized)) -> Result<u64> {
    obj.get(key)
        .and_then(Json::as_u64)
        .filter(|n| *n < (1 << 53))
        .ok_or_else(|| {
            Error::malformed(
                format!("{at}.{key}"),
                "must be a non-negative integer below 2^53",
            )
        })
}

fn client_of(v: Option<&Json<'_>>, at: &(impl Display + ?Sized)) -> Result<ClientId> {
    let s = v
        .and_then(Json::as_str)
        .ok_or_else(|| Error::malformed(at, "must be a client id string"))?;
    ClientId::parse(s).map_err(|e| Error::malformed(at, e.to_string()))
}

fn stamp_of(v: Option<&Json<'_>>, at: &(impl Display + ?Sized)) -> Result<Stamp> {
    let stamp = match v {
        Some(Json::Stamp(hlc, client)) => Stamp::of_parts(*hlc, client),
        Some(Json::Str(s)) => Stamp::parse(s),
        _ => return Err(Error::malformed(at, "must be a stamp string")),
    };
    stamp.map_err(|e| Error::malformed(at, e.to_string()))
}

/// Where a reader is in a changes object, for error messages: made as the reader descends and
/// rendered (`$.changes.items.v[3].e`) only when something is refused, so that reading a large
/// object builds no path strings.
#[derive(Clone, Copy)]
enum At<'a> {
    Path(&'a str),
    Field(&'a At<'a>, &'a str),
    Index(&'a At<'a>, usize),
}

impl<'a> At<'a> {
    fn f(&'a self, name: &'a str) -> At<'a> {
        At::Field(self, name)
    }
    fn i(&'a self, i: usize) -> At<'a> {
        At::Index(self, i)
    }
}

impl Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Path(p) => f.write_str(p),
            At::Field(up, name) => write!(f, "{up}.{name}"),
            At::Index(up, i) => write!(f, "{up}[{i}]"),
        }
    }
}

/// What reading a changes object keeps: how many more items it may hold, the names of the
/// keys read so far (each held once: see `doc::Key`), and the element lists left for later.
pub(crate) struct Reading {
    budget: usize,
    keys: KeySet,
    /// When deferring: the element lists left unread, by their array node's id.
    deferred: Option<HashMap<Stamp, Deferred>>,
}

impl Reading {
    fn new(deferring: bool) -> Self {
        Reading {
            budget: MAX_ITEMS,
            keys: KeySet::default(),
            deferred: deferring.then(HashMap::default),
        }
    }
}

fn spend(budget: &mut usize, n: usize, at: &(impl Display + ?Sized)) -> Result<()> {
    if n > *budget {
        return Err(Error::malformed(
            at,
            format!("more than {MAX_ITEMS} items in one changes object"),
        ));
    }
    *budget -= n;
    Ok(())
}

/// Reads a node. Depth is already bounded by `check_value_depth`, so recursion is safe.
/// `implied_id` and `parent_u` stand in for an absent `_s.id` and `_s.u`.
fn parse_node(
    v: &Json<'_>,
    at: &At<'_>,
    r: &mut Reading,
    implied_id: Option<Stamp>,
    parent_u: u64,
) -> Result<WNode> {
    let obj = v
        .as_object()
        .ok_or_else(|| Error::malformed(at, "a node must be a JSON object"))?;
    let s_at = at.f("_s");
    let s = obj
        .get("_s")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::malformed(s_at, "a node needs its \"_s\" state object"))?;
    only_fields(s, &["id", "u", "a", "k", "d", "ri"], &s_at, "state")?;
    let id = match (s.get("id"), implied_id) {
        (None, Some(id)) => id,
        (v, _) => stamp_of(v, &s_at.f("id"))?,
    };
    let u = match s.get("u") {
        None => parent_u,
        Some(_) => get_u64(s, "u", &s_at)?,
    };
    spend(&mut r.budget, 1, at)?;
    let body = match s.get("a") {
        None | Some(Json::Bool(false)) => parse_object_body(obj, s, at, r, id, u)?,
        Some(Json::Bool(true)) => parse_array_body(obj, s, at, r, id, u)?,
        Some(_) => {
            return Err(Error::malformed(
                format!("{s_at}.a"),
                "must be true or false",
            ));
        }
    };
    Ok(WNode { id, u, body })
}

/// The elements of an array node: live ones in `v`, removed ones in `_s.ri`.
fn parse_array_body(
    obj: &JsonObj<'_>,
    s: &JsonObj<'_>,
    at: &At<'_>,
    r: &mut Reading,
    id: Stamp,
    u: u64,
) -> Result<WBody> {
    let s_at = at.f("_s");
    if s.contains_key("k") || s.contains_key("d") {
        return Err(Error::malformed(
            s_at,
            "an array node cannot have \"k\" or \"d\"",
        ));
    }
    if let Some(key) = obj.keys().find(|k| *k != "_s" && *k != "v") {
        return Err(Error::malformed(
            at,
            format!("unknown array node field {key:?}"),
        ));
    }
    if let Some(Json::Later(live)) = obj.get("v") {
        defer(r, id, *live, s.get("ri"), at, u)?;
        return Ok(WBody::Arr(Vec::new()));
    }
    let live = match obj.get("v") {
        Some(Json::Arr(a)) => a.as_slice(),
        _ => {
            return Err(Error::malformed(
                format!("{at}.v"),
                "must be an array of elements",
            ));
        }
    };
    let removed = match s.get("ri") {
        None => &[][..],
        Some(Json::Arr(a)) => a.as_slice(),
        Some(_) => return Err(Error::malformed(format!("{s_at}.ri"), "must be an array")),
    };
    spend(&mut r.budget, live.len() + removed.len(), at)?;
    let mut elems = Vec::with_capacity(live.len() + removed.len());
    parse_elems(live, false, &at.f("v"), r, u, &mut elems)?;
    parse_elems(removed, true, &s_at.f("ri"), r, u, &mut elems)?;
    Ok(WBody::Arr(elems))
}

/// The fields of an object node: written keys (with `_s.k` stamps where they differ from the
/// node's id) and removed ones (`_s.d`).
fn parse_object_body(
    obj: &JsonObj<'_>,
    s: &JsonObj<'_>,
    at: &At<'_>,
    r: &mut Reading,
    id: Stamp,
    u: u64,
) -> Result<WBody> {
    let s_at = at.f("_s");
    if s.contains_key("ri") {
        return Err(Error::malformed(s_at, "an object node cannot have \"ri\""));
    }
    let stamps = match s.get("k") {
        None => None,
        Some(Json::Obj(m)) => Some(m),
        Some(_) => return Err(Error::malformed(format!("{s_at}.k"), "must be an object")),
    };
    spend(&mut r.budget, obj.len(), at)?;
    let mut fields: Vec<WField> = Vec::with_capacity(obj.len());
    for (wire_key, val) in obj.iter().filter(|(k, _)| *k != "_s") {
        let key = user_key(wire_key, at)?;
        let f_at = at.f(wire_key);
        let (val, stamp) = parse_value(val, &f_at, r, None, u)?;
        let stamp = match (&val, stamps.and_then(|m| m.get(key))) {
            (WVal::Node(_) | WVal::Text(_), Some(_)) => {
                return Err(Error::malformed(
                    format!("{s_at}.k"),
                    format!("key {key:?} holds a node or text whose id is its stamp"),
                ));
            }
            (WVal::Node(_) | WVal::Text(_), None) => stamp.unwrap_or(id),
            (WVal::Prim(_), Some(k)) => stamp_of(Some(k), &s_at.f("k").f(key))?,
            (WVal::Prim(_), None) => id,
        };
        fields.push(WField {
            key: intern(&mut r.keys, key),
            val: Some(val),
            stamp,
        });
    }
    // The written keys, looked up in `fields` while few (a record), in a set when many.
    let written_count = fields.len();
    let set: Option<crate::engine::HashSet<&str>> =
        (written_count > 16).then(|| fields.iter().map(|f| &*f.key).collect());
    let is_written = |fields: &[WField], k: &str| match &set {
        Some(set) => set.contains(k),
        None => fields[..written_count].iter().any(|f| &*f.key == k),
    };
    if let Some(key) = stamps.and_then(|m| m.keys().find(|k| !is_written(&fields, k))) {
        return Err(Error::malformed(
            format!("{s_at}.k"),
            format!("stamp for key {key:?}, which is not in the node"),
        ));
    }
    match s.get("d") {
        None => {}
        Some(Json::Obj(m)) => {
            spend(&mut r.budget, m.len(), at)?;
            let mut removed = Vec::with_capacity(m.len());
            for (key, st) in m.iter() {
                if is_written(&fields, key) {
                    return Err(Error::malformed(
                        format!("{s_at}.d"),
                        format!("key {key:?} is both written and removed"),
                    ));
                }
                removed.push(WField {
                    key: intern(&mut r.keys, key),
                    val: None,
                    stamp: stamp_of(Some(st), &s_at.f("d").f(key))?,
                });
            }
            drop(set);
            fields.extend(removed);
        }
        Some(_) => return Err(Error::malformed(format!("{s_at}.d"), "must be an object")),
    }
    Ok(WBody::Obj(fields))
}

/// The user's key for a key on the wire (`__x` → `_x`); any other key starting with `_` is ours
/// and unknown.
fn user_key<'k>(wire_key: &'k str, at: &(impl Display + ?Sized)) -> Result<&'k str> {
    match wire_key.strip_prefix('_') {
        Some(rest) if rest.starts_with('_') => Ok(rest),
        Some(_) => Err(Error::malformed(
            at,
            format!(
                "unknown metadata key {wire_key:?} (user keys starting with '_' are written with one more '_')"
            ),
        )),
        None => Ok(wire_key),
    }
}

/// Reads a value: a primitive, or a node (then the returned stamp is the node's id).
fn parse_value(
    v: &Json<'_>,
    at: &At<'_>,
    r: &mut Reading,
    implied_id: Option<Stamp>,
    parent_u: u64,
) -> Result<(WVal, Option<Stamp>)> {
    match v {
        Json::Obj(m) if m.contains_key("_t") => {
            let t = parse_text(m, at, r, implied_id)?;
            let id = t.id;
            Ok((WVal::Text(Box::new(t)), Some(id)))
        }
        Json::Obj(_) => {
            let n = parse_node(v, at, r, implied_id, parent_u)?;
            let id = n.id;
            Ok((WVal::Node(Box::new(n)), Some(id)))
        }
        Json::Arr(_) | Json::Later(_) => Err(Error::malformed(
            at,
            "a bare array is not allowed: arrays travel as nodes with \"_s\" and \"v\"",
        )),
        p => p
            .to_scalar()
            .map(|s| (WVal::Prim(s), None))
            .ok_or_else(|| Error::malformed(at, "a value that is neither a node nor a primitive")),
    }
}

fn parse_elems(
    list: &[Json<'_>],
    removed: bool,
    at: &At<'_>,
    r: &mut Reading,
    parent_u: u64,
    out: &mut Vec<WElem>,
) -> Result<()> {
    // The previous entry's id and right origin, which an entry may leave implied.
    let mut prev: (Option<Stamp>, Option<Stamp>) = (None, None);
    for (i, item) in list.iter().enumerate() {
        let e_at = at.i(i);
        let m = item
            .as_object()
            .ok_or_else(|| Error::malformed(e_at, "an element must be an object"))?;
        let (id, origin, right) = elem_place(m, &e_at, removed, prev)?;
        prev = (Some(id), right);
        let (val, removed) = elem_value(m, &e_at, removed, id, r, parent_u)?;
        out.push(WElem {
            id,
            origin,
            right,
            val,
            removed,
        });
    }
    Ok(())
}

/// A live element's value and its stamp, or a removed element's removal stamp.
#[allow(clippy::type_complexity)]
fn elem_value(
    m: &JsonObj<'_>,
    e_at: &At<'_>,
    removed: bool,
    id: Stamp,
    r: &mut Reading,
    parent_u: u64,
) -> Result<(Option<(WVal, Stamp)>, Option<Stamp>)> {
    Ok(if removed {
        (None, Some(stamp_of(m.get("r"), &e_at.f("r"))?))
    } else {
        (Some(live_value(m, e_at, id, r, parent_u)?), None)
    })
}

/// An element's fields checked, and its id, left origin and right origin, the absent ones
/// implied by the previous entry of its list (`prev`: that entry's id and right origin).
fn elem_place(
    m: &JsonObj<'_>,
    e_at: &At<'_>,
    removed: bool,
    prev: (Option<Stamp>, Option<Stamp>),
) -> Result<(Stamp, Option<Stamp>, Option<Stamp>)> {
    for key in m.keys() {
        let ok = if removed {
            matches!(key, "e" | "o" | "ro" | "r")
        } else {
            matches!(key, "e" | "o" | "ro" | "t" | "v")
        };
        if !ok {
            return Err(Error::malformed(
                e_at,
                format!("unknown element field {key:?}"),
            ));
        }
    }
    let id = match (m.get("e"), prev.0) {
        (None, Some(p)) => next_stamp(p)
            .ok_or_else(|| Error::malformed(e_at, "an element id after the last possible stamp"))?,
        (None, None) => {
            return Err(Error::malformed(
                format!("{e_at}.e"),
                "the first element of a list needs its id \"e\"",
            ));
        }
        (Some(e), _) => stamp_of(Some(e), &e_at.f("e"))?,
    };
    let origin = match m.get("o") {
        None => prev.0,
        Some(Json::Null) => None,
        Some(o) => Some(stamp_of(Some(o), &e_at.f("o"))?),
    };
    let right = match m.get("ro") {
        None => prev.1,
        Some(Json::Null) => None,
        Some(r) => Some(stamp_of(Some(r), &e_at.f("ro"))?),
    };
    Ok((id, origin, right))
}

/// A live element's value and the stamp of that value.
fn live_value(
    m: &JsonObj<'_>,
    e_at: &At<'_>,
    id: Stamp,
    r: &mut Reading,
    parent_u: u64,
) -> Result<(WVal, Stamp)> {
    let raw = m
        .get("v")
        .ok_or_else(|| Error::malformed(e_at, "a live element needs its value \"v\""))?;
    let (val, node_id) = parse_value(raw, &e_at.f("v"), r, Some(id), parent_u)?;
    let vstamp = match (node_id, m.get("t")) {
        (Some(_), Some(_)) => {
            return Err(Error::malformed(
                e_at,
                "an element holding a node takes the node's id as its stamp; \"t\" is not allowed",
            ));
        }
        (Some(n), None) => n,
        (None, Some(t)) => stamp_of(Some(t), &e_at.f("t"))?,
        (None, None) => id,
    };
    Ok((val, vstamp))
}

/// Scans JSON text for its nesting depth without building anything, so that hostile input nested
/// thousands of levels deep is refused before any recursive parser sees it.
fn check_json_depth(bytes: &[u8]) -> Result<()> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(Error::TooDeep {
                        what: "changes JSON",
                        limit: MAX_JSON_DEPTH,
                    });
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Depth of a JSON value, measured without recursion; errors past `MAX_JSON_DEPTH`.
fn check_value_depth(v: &Value) -> Result<()> {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        if d > MAX_JSON_DEPTH {
            return Err(Error::TooDeep {
                what: "changes JSON",
                limit: MAX_JSON_DEPTH,
            });
        }
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    Ok(())
}

/// Depth of a user value in document levels (objects and arrays), without recursion.
pub(crate) fn value_depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => {
                max = max.max(d + 1);
                stack.extend(a.iter().map(|c| (c, d + 1)));
            }
            Value::Object(m) => {
                max = max.max(d + 1);
                stack.extend(m.values().map(|c| (c, d + 1)));
            }
            _ => {}
        }
    }
    max
}

/// Reads a text written by `wire_out::text_tree`.
fn parse_text(
    obj: &JsonObj<'_>,
    at: &At<'_>,
    r: &mut Reading,
    implied_id: Option<Stamp>,
) -> Result<WText> {
    let t_at = at.f("_t");
    if obj.len() != 1 {
        return Err(Error::malformed(at, "a text object holds only \"_t\""));
    }
    let t = obj
        .get("_t")
        .and_then(Json::as_object)
        .ok_or_else(|| Error::malformed(t_at, "must be an object"))?;
    only_fields(t, &["id", "i", "c", "p"], &t_at, "text")?;
    let id = match (t.get("id"), implied_id) {
        (None, Some(id)) => id,
        (v, _) => stamp_of(v, &t_at.f("id"))?,
    };
    let init = match t.get("i") {
        None => 0,
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= u64::from(u32::MAX))
            .ok_or_else(|| Error::malformed(format!("{t_at}.i"), "must be a character count"))?
            as u32,
    };
    let ops = knowledge_of(t.get("c"), &t_at.f("c"))?;
    let list = match t.get("p") {
        Some(Json::Arr(a)) => a.as_slice(),
        _ => {
            return Err(Error::malformed(
                format!("{t_at}.p"),
                "must be an array of pieces",
            ));
        }
    };
    spend(&mut r.budget, list.len(), at)?;
    let mut pieces: Vec<Piece> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let p = parse_piece(item, &t_at.f("p").i(i), pieces.last(), id)?;
        pieces.push(p);
    }
    Ok(WText {
        id,
        init,
        ops,
        pieces,
    })
}

/// A stamp in a text: a string, or a number (the clock's offset from the text's id `base`,
/// with its client).
fn text_stamp(v: &Json<'_>, at: &(impl Display + ?Sized), base: Stamp) -> Result<Stamp> {
    match v.as_u64() {
        Some(o) => base
            .hlc
            .checked_add(o)
            .filter(|h| *h < MAX_HLC)
            .map(|hlc| Stamp {
                hlc,
                client: base.client,
            })
            .ok_or_else(|| Error::malformed(at, "a clock offset beyond 2^62")),
        None => stamp_of(Some(v), at),
    }
}

fn parse_piece(v: &Json<'_>, at: &At<'_>, prev: Option<&Piece>, base: Stamp) -> Result<Piece> {
    let m = v
        .as_object()
        .ok_or_else(|| Error::malformed(at, "a piece must be an object"))?;
    only_fields(m, &["e", "o", "ro", "s", "n"], at, "piece")?;
    let id = match (m.get("e"), prev) {
        (Some(e), _) => text_stamp(e, &at.f("e"), base)?,
        (None, Some(q)) => Stamp {
            hlc: q.id.hlc + u64::from(q.len),
            client: q.id.client,
        },
        (None, None) => {
            return Err(Error::malformed(
                format!("{at}.e"),
                "the first piece needs its id \"e\"",
            ));
        }
    };
    let (s, len) = match (m.get("s").map(Json::text), m.get("n")) {
        (Some(Some(s)), None) if !s.is_empty() => {
            let len = s.chars().count() as u64;
            (Some(s.into_owned()), len)
        }
        (None, Some(n)) => (
            None,
            n.as_u64().filter(|n| *n >= 1).ok_or_else(|| {
                Error::malformed(format!("{at}.n"), "must be a count of at least 1")
            })?,
        ),
        _ => {
            return Err(Error::malformed(
                at,
                "a piece has either characters \"s\" (not empty) or a removed count \"n\"",
            ));
        }
    };
    if len > u64::from(u32::MAX) || id.hlc.saturating_add(len) >= MAX_HLC {
        return Err(Error::malformed(at, "a piece too long for its ids"));
    }
    let left = match m.get("o") {
        None => id.hlc.checked_sub(1).map(|h| Stamp {
            hlc: h,
            client: id.client,
        }),
        Some(Json::Null) => None,
        Some(o) => Some(text_stamp(o, &at.f("o"), base)?),
    };
    let right = match m.get("ro") {
        None => prev.and_then(|q| q.right),
        Some(Json::Null) => None,
        Some(r) => Some(text_stamp(r, &at.f("ro"), base)?),
    };
    Ok(Piece {
        id,
        len: len as u32,
        left,
        right,
        u: 0,
        s,
    })
}

/// Refuses a field of `m` not in `allowed`, naming it (`what`: "state", "text", "piece").
fn only_fields(
    m: &JsonObj<'_>,
    allowed: &[&str],
    at: &(impl Display + ?Sized),
    what: &(impl Display + ?Sized),
) -> Result<()> {
    match m.keys().find(|k| !allowed.contains(k)) {
        Some(key) => Err(Error::malformed(
            at,
            format!("unknown {what} field {key:?}"),
        )),
        None => Ok(()),
    }
}
