//! The compact form of a changes object: the same JSON value, written in bytes that leave out
//! what JSON text repeats — field names, client ids and the clock values of stamps.
//!
//! A typed character's changes object is ~550 bytes of JSON, nearly all of it envelope: field
//! names of the design (`clientStates`, `lastAcknowledged`, …), 16-character client ids written
//! up to seven times, and stamps as 32-character strings. The compact form keeps the JSON value
//! exactly (decoding gives back the identical value, whatever it holds: nothing in it is
//! interpreted, so user data that looks like a stamp is safe) but writes it as a tagged tree in
//! which every string is written once and referred to by number after that (the table starts
//! with the format's field names), a stamp-shaped string as its clock value's difference from
//! the previous stamp's plus its client, and a hex clock value as a number. The idea is CBOR's
//! (RFC 8949) with string references (the "stringref" extension, cbor.schmorp.de/stringref);
//! the layout is our own so that stamps fit in a few bytes. Readable as JSON one command away:
//! `agent changes show FILE`.
//!
//! Layout: the magic bytes `\0MSC`, the form's version (1), one value. A value is one tag byte:
//!
//! | tag | value |
//! |---|---|
//! | `0x00` `0x01` `0x02` | `null`, `false`, `true` |
//! | `0x03` n | the integer n (a LEB128 unsigned varint) |
//! | `0x04` n | the integer −1 − n |
//! | `0x05` len bytes | any other number, as its JSON text |
//! | `0x06` len bytes | a string (UTF-8), added to the table |
//! | `0x07` i | the table's string i (for i ≥ 128) |
//! | `0x80` + i | the table's string i (for i < 128) |
//! | `0x08` d string | the stamp `{hlc:x}-{client}`: hlc = previous stamp's hlc + d (zigzag varint), client a string value |
//! | `0x09` n | the string of n in lower-case hex without leading zeros |
//! | `0x0a` 8 bytes | a string of 16 lower-case hex digits, as the big-endian 64-bit number |
//! | `0x0b` count values | an array |
//! | `0x0c` count (string value)* | an object: count pairs of a key (a string value) and a value |

use std::borrow::Cow;

use serde_json::{Number, Value};

use crate::engine::HashMap;
use crate::engine::json::{Json, JsonObj};
use crate::engine::scalar::Scalar;
use crate::engine::stamp::{ClientId, Stamp};
use crate::engine::wire_out::{self, Tree};

use crate::engine::error::{Error, Result};
use crate::engine::wire::{MAX_ITEMS, MAX_JSON_DEPTH};

/// The most values one changes object may hold: four per item it may carry (an element is an
/// object of a few values). Counted while decoding, so that hostile bytes of nulls cannot make
/// the reader build an array of hundreds of millions of values before the item check.
const MAX_VALUES: usize = 4 * MAX_ITEMS;

/// What a changes object in the compact form begins with (no JSON text begins with a zero byte).
pub const MAGIC: &[u8; 4] = b"\0MSC";
const VERSION: u8 = 1;

/// The table's first strings: the changes object's field names and markers (docs/PROTOCOL.md).
const SEED: [&str; 35] = [
    "minisync",
    "changes",
    "formatVersion",
    "id",
    "sentBy",
    "fromVersion",
    "changesSince",
    "knows",
    "digest",
    "clientStates",
    "clientID",
    "lastReceived",
    "lastAcknowledged",
    "partial",
    "repair",
    "request",
    "reply",
    "_s",
    "_t",
    "u",
    "k",
    "d",
    "a",
    "ri",
    "v",
    "e",
    "o",
    "ro",
    "t",
    "r",
    "i",
    "c",
    "p",
    "s",
    "n",
];

const NULL: u8 = 0x00;
const FALSE: u8 = 0x01;
const TRUE: u8 = 0x02;
const UINT: u8 = 0x03;
const NEGINT: u8 = 0x04;
const NUMBER: u8 = 0x05;
const STRING: u8 = 0x06;
const REF: u8 = 0x07;
const STAMP: u8 = 0x08;
const HEX: u8 = 0x09;
const HEX16: u8 = 0x0a;
const ARRAY: u8 = 0x0b;
const OBJECT: u8 = 0x0c;
const SMALL_REF: u8 = 0x80;

/// Whether `bytes` are a changes object in the compact form (else they should be JSON text).
pub fn is_compact(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

/// Changes bytes in either form as JSON text, for people and for the records kept of refused
/// mail: compact bytes decoded, JSON text as it is, anything else as UTF-8 with replacements
/// (what is unreadable stays so; reading it again gives the same error).
pub fn json_view(bytes: &[u8]) -> String {
    if is_compact(bytes)
        && let Ok(v) = decode(bytes)
    {
        return v.to_string();
    }
    String::from_utf8_lossy(bytes).into_owned()
}

/// `value` in the compact form.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut w = Writer::new();
    w.value(value);
    w.out
}

/// A changes object written as a [`Tree`] in the compact form: the same bytes as its JSON
/// value would give, up to the order of an object's keys.
pub(crate) fn encode_tree(tree: &Tree<'_>) -> Vec<u8> {
    let mut w = Writer::new();
    w.tree(tree);
    w.out
}

/// The table holds the strings it has written as borrowed from the value (no copies), except
/// the client ids of stamps held as stamps, made once per client (`clients`), and the owned
/// strings of a tree made while writing (see [`Writer::tree`]).
struct Writer<'v> {
    out: Vec<u8>,
    table: HashMap<Cow<'v, str>, u64>,
    clients: HashMap<ClientId, u64>,
    last_hlc: u64,
}

fn varint(out: &mut Vec<u8>, mut n: u64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// `s` for as long as the writer: borrowed where it is borrowed, else copied (a string the tree
/// owns may be dropped with a temporary tree before the writer is done).
fn lasting<'v>(s: &Cow<'v, str>) -> Cow<'v, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b),
        Cow::Owned(o) => Cow::Owned(o.clone()),
    }
}

/// The number a canonical lower-case hex string (no leading zeros; "0" alone) stands for.
fn canonical_hex(s: &str) -> Option<u64> {
    let ok = !s.is_empty()
        && s.len() <= 16
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && (s == "0" || !s.starts_with('0'));
    ok.then(|| u64::from_str_radix(s, 16).ok()).flatten()
}

/// The (clock value, client) of a stamp-shaped string: canonical hex, `-`, 16 ASCII letters or
/// digits.
fn stamp_parts(s: &str) -> Option<(u64, &str)> {
    let (hex, client) = s.split_once('-')?;
    let client_ok = client.len() == 16 && client.bytes().all(|b| b.is_ascii_alphanumeric());
    client_ok
        .then(|| canonical_hex(hex).map(|h| (h, client)))
        .flatten()
}

impl<'v> Writer<'v> {
    fn new() -> Self {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        Writer {
            out,
            table: SEED
                .iter()
                .enumerate()
                .map(|(i, s)| (Cow::Borrowed(*s), i as u64))
                .collect(),
            clients: HashMap::default(),
            last_hlc: 0,
        }
    }

    /// Writes `t`. The tree may be a temporary one made from the changes object while writing
    /// (a node's, see [`Tree::Node`]): its borrowed strings live as long as the writer, and
    /// its few owned ones (escaped keys, clock values in hex) are copied into the table.
    fn tree(&mut self, t: &Tree<'v>) {
        match t {
            Tree::Null => self.out.push(NULL),
            Tree::Bool(false) => self.out.push(FALSE),
            Tree::Bool(true) => self.out.push(TRUE),
            Tree::Uint(n) => {
                self.out.push(UINT);
                varint(&mut self.out, *n);
            }
            Tree::Prim(v) => self.scalar(v),
            Tree::Str(s) => self.string(lasting(s)),
            Tree::Stamp(s) => self.stamp_of(*s),
            Tree::Arr(items) => {
                self.out.push(ARRAY);
                varint(&mut self.out, items.len() as u64);
                for item in items {
                    self.tree(item);
                }
            }
            Tree::Obj(entries) => {
                self.out.push(OBJECT);
                varint(&mut self.out, entries.len() as u64);
                for (k, item) in entries {
                    self.plain_string(lasting(k));
                    self.tree(item);
                }
            }
            Tree::Node(n, implied, parent_u) => {
                self.tree(&wire_out::node_tree(n, *implied, *parent_u))
            }
            Tree::Elems(list) => {
                self.out.push(ARRAY);
                varint(&mut self.out, list.len() as u64);
                list.each(|e| self.tree(&e));
            }
        }
    }

    fn value(&mut self, v: &'v Value) {
        match v {
            Value::Null => self.out.push(NULL),
            Value::Bool(false) => self.out.push(FALSE),
            Value::Bool(true) => self.out.push(TRUE),
            Value::Number(n) => self.number(n.as_str()),
            Value::String(s) => self.string(Cow::Borrowed(s)),
            Value::Array(items) => {
                self.out.push(ARRAY);
                varint(&mut self.out, items.len() as u64);
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => {
                self.out.push(OBJECT);
                varint(&mut self.out, map.len() as u64);
                for (k, item) in map {
                    self.plain_string(Cow::Borrowed(k));
                    self.value(item);
                }
            }
        }
    }

    fn scalar(&mut self, v: &'v Scalar) {
        match v {
            Scalar::Null => self.out.push(NULL),
            Scalar::Bool(false) => self.out.push(FALSE),
            Scalar::Bool(true) => self.out.push(TRUE),
            Scalar::Int(i) => match u64::try_from(*i) {
                Ok(u) => {
                    self.out.push(UINT);
                    varint(&mut self.out, u);
                }
                Err(_) => {
                    self.out.push(NEGINT);
                    varint(&mut self.out, (-1 - *i) as u64);
                }
            },
            Scalar::Num(text) => self.number(text),
            Scalar::Str(s) => self.string(Cow::Borrowed(s)),
        }
    }

    /// A number by its JSON text (serde_json keeps it exactly): integers in their shortest form
    /// (digits, no leading zero) go as varints, anything else as that text.
    fn number(&mut self, text: &str) {
        let digits = |t: &str| {
            !t.is_empty()
                && t.bytes().all(|b| b.is_ascii_digit())
                && (t == "0" || !t.starts_with('0'))
        };
        if digits(text)
            && let Ok(u) = text.parse::<u64>()
        {
            self.out.push(UINT);
            varint(&mut self.out, u);
        } else if text
            .strip_prefix('-')
            .is_some_and(|t| digits(t) && t != "0")
            && let Ok(i) = text.parse::<i64>()
        {
            self.out.push(NEGINT);
            varint(&mut self.out, (-1 - i) as u64);
        } else {
            self.out.push(NUMBER);
            varint(&mut self.out, text.len() as u64);
            self.out.extend_from_slice(text.as_bytes());
        }
    }

    fn string(&mut self, s: Cow<'v, str>) {
        if s.len() == 16
            && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && let Ok(n) = u64::from_str_radix(&s, 16)
        {
            self.out.push(HEX16);
            self.out.extend_from_slice(&n.to_be_bytes());
        } else if let Some(n) = canonical_hex(&s) {
            self.out.push(HEX);
            varint(&mut self.out, n);
        } else if let Some((hlc, client)) = stamp_parts(&s) {
            // The client's text, borrowed as the whole string is.
            let at = s.len() - client.len();
            let client = match s {
                Cow::Borrowed(b) => Cow::Borrowed(&b[at..]),
                Cow::Owned(o) => Cow::Owned(o[at..].to_owned()),
            };
            self.stamp_clock(hlc);
            self.plain_string(client);
        } else {
            self.plain_string(s);
        }
    }

    /// A stamp held as one: its client's string is made once per client, not per stamp.
    fn stamp_of(&mut self, s: Stamp) {
        self.stamp_clock(s.hlc);
        if let Some(&i) = self.clients.get(&s.client) {
            self.reference(i);
            return;
        }
        let text = s.client.to_string();
        let i = match self.table.get(text.as_str()) {
            Some(&i) => {
                self.reference(i);
                i
            }
            None => self.add_string(Cow::Owned(text)),
        };
        self.clients.insert(s.client, i);
    }

    fn stamp_clock(&mut self, hlc: u64) {
        self.out.push(STAMP);
        let d = hlc.wrapping_sub(self.last_hlc) as i64;
        varint(&mut self.out, ((d << 1) ^ (d >> 63)) as u64);
        self.last_hlc = hlc;
    }

    /// A string as a table reference, or written out and added to the table.
    fn plain_string(&mut self, s: Cow<'v, str>) {
        match self.table.get(s.as_ref()) {
            Some(&i) => self.reference(i),
            None => {
                self.add_string(s);
            }
        }
    }

    fn reference(&mut self, i: u64) {
        if i < 128 {
            self.out.push(SMALL_REF + i as u8);
        } else {
            self.out.push(REF);
            varint(&mut self.out, i);
        }
    }

    /// Writes `s` out and adds it to the table; returns its number there.
    fn add_string(&mut self, s: Cow<'v, str>) -> u64 {
        self.out.push(STRING);
        varint(&mut self.out, s.len() as u64);
        self.out.extend_from_slice(s.as_bytes());
        let next = self.table.len() as u64;
        self.table.insert(s, next);
        next
    }
}

/// The JSON value of a changes object in the compact form.
///
/// # Errors
///
/// [`Error::Compact`] naming what is wrong and where (byte offset): no magic, an unknown form
/// version or tag, a reference past the table, a string that is not UTF-8, a number that is not
/// a JSON number, nesting deeper than [`MAX_JSON_DEPTH`], more than 4 × [`MAX_ITEMS`] values, a
/// truncated value or bytes after it.
pub fn decode(bytes: &[u8]) -> Result<Value> {
    Ok(decode_json(bytes)?.to_value())
}

/// [`decode`] without building a `serde_json::Value`: strings borrowed from `bytes` (see
/// `json.rs`).
pub(crate) fn decode_json(bytes: &[u8]) -> Result<Json<'_>> {
    decode_within(bytes, MAX_VALUES)
}

/// [`decode_json`] refusing more than `max_values` values.
fn decode_within(bytes: &[u8], max_values: usize) -> Result<Json<'_>> {
    let mut r = Reader::start(bytes, Strings::Growing(SEED.to_vec()), false)?;
    r.max_values = max_values;
    let v = r.value(0)?;
    r.end()?;
    Ok(v)
}

/// [`decode_json`] leaving every array under a key `v` or `ri` (the element lists of array
/// nodes) unread: each is a [`Json::Later`], read item by item from the returned [`Lists`].
/// So reading a full changes object never holds the JSON of all its elements at once (see
/// `streamed.rs`). The bytes are still all walked, and refused as [`decode_json`] refuses them,
/// except that an item's own damage is found when it is read.
///
/// # Errors
///
/// As [`decode`]; and bytes longer than 4 GiB (places are kept in 32 bits).
pub(crate) fn decode_deferring(bytes: &[u8]) -> Result<(Json<'_>, Lists<'_>)> {
    if bytes.len() > u32::MAX as usize {
        return Err(Error::Compact("longer than 4 GiB".into()));
    }
    let mut r = Reader::start(bytes, Strings::Growing(SEED.to_vec()), true)?;
    let v = r.value(0)?;
    r.end()?;
    let Strings::Growing(table) = r.table else {
        return Err(r.bad("a reader without its table"));
    };
    Ok((
        v,
        Lists {
            bytes: r.bytes,
            table,
        },
    ))
}

/// A list [`decode_deferring`] left unread: where its first item is, how many it holds, and
/// their JSON depth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Later {
    first: ItemAt,
    pub count: u32,
    depth: u16,
}

/// Where one item of a [`Later`] list begins, and what the reader held there: the length of
/// the string table and the clock of the last stamp (stamps are written as differences).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ItemAt {
    at: u32,
    strings: u32,
    last_hlc: u64,
}

/// One item of a [`Later`] list, read by [`Lists::items`].
pub(crate) struct Item<'a> {
    /// Where it begins, to read it again whole with [`Lists::item`].
    pub at: ItemAt,
    pub json: Json<'a>,
    /// In a shallow read: whether the item's `v`, left unread (`Json::Null` in `json`), is an
    /// object.
    pub v_is_object: bool,
}

/// The bytes and the whole string table of a changes object read by [`decode_deferring`],
/// from which its [`Later`] lists are read.
pub(crate) struct Lists<'a> {
    bytes: &'a [u8],
    table: Vec<&'a str>,
}

impl<'a> Lists<'a> {
    fn reader(&self, at: ItemAt) -> Reader<'a, '_> {
        Reader {
            bytes: self.bytes,
            at: at.at as usize,
            table: Strings::Known(&self.table),
            defined: at.strings as usize,
            last_hlc: at.last_hlc,
            values: 0,
            max_values: MAX_VALUES,
            defer: true,
        }
    }

    /// The items of `list` in order. `shallow`: each item's own `v` is walked, not read (see
    /// [`Item::v_is_object`]), for a first pass that needs only the rest.
    pub fn items(&self, list: &Later, shallow: bool) -> impl Iterator<Item = Result<Item<'a>>> {
        let mut r = self.reader(list.first);
        let depth = usize::from(list.depth);
        (0..list.count).map(move |_| {
            let at = r.place();
            let (json, v_is_object) = if shallow {
                r.shallow_item(depth)?
            } else {
                (r.value(depth)?, false)
            };
            Ok(Item {
                at,
                json,
                v_is_object,
            })
        })
    }

    /// The item of `list` at `at` (from [`Lists::items`]), read whole.
    pub fn item(&self, list: &Later, at: ItemAt) -> Result<Json<'a>> {
        self.reader(at).value(usize::from(list.depth))
    }
}

/// The string table: growing as the bytes are read the first time, or known whole when a
/// deferred list is read again (then only how much of it is defined at the place is counted).
enum Strings<'a, 't> {
    Growing(Vec<&'a str>),
    Known(&'t [&'a str]),
}

/// The table holds the strings read as borrowed from the input: no copies.
struct Reader<'a, 't> {
    bytes: &'a [u8],
    at: usize,
    table: Strings<'a, 't>,
    /// How many of the table's strings are defined at this place.
    defined: usize,
    last_hlc: u64,
    /// Values read so far, and how many may be (see [`MAX_VALUES`]).
    values: usize,
    max_values: usize,
    /// Whether arrays under `v` and `ri` are left for later ([`decode_deferring`]).
    defer: bool,
}

impl<'a, 't> Reader<'a, 't> {
    /// A reader after the magic bytes and the form's version.
    fn start(bytes: &'a [u8], table: Strings<'a, 't>, defer: bool) -> Result<Self> {
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Err(Error::Compact(
                "it does not begin with the compact form's magic bytes".into(),
            ));
        };
        let defined = match &table {
            Strings::Growing(t) => t.len(),
            Strings::Known(t) => t.len(),
        };
        let mut r = Reader {
            bytes: rest,
            at: 0,
            table,
            defined,
            last_hlc: 0,
            values: 0,
            max_values: MAX_VALUES,
            defer,
        };
        let version = r.byte()?;
        if version != VERSION {
            return Err(Error::Compact(format!(
                "compact form version {version}; this minisync reads version {VERSION}: upgrade minisync"
            )));
        }
        Ok(r)
    }

    fn end(&self) -> Result<()> {
        if self.at != self.bytes.len() {
            return Err(self.bad("bytes after the value"));
        }
        Ok(())
    }

    fn bad(&self, what: &str) -> Error {
        Error::Compact(format!("{what} at byte {}", self.at + MAGIC.len()))
    }

    fn place(&self) -> ItemAt {
        // Both fit: `decode_deferring` refuses bytes beyond 32 bits, and each string takes one.
        ItemAt {
            at: self.at as u32,
            strings: self.defined as u32,
            last_hlc: self.last_hlc,
        }
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| self.bad("it ends within a value"))?;
        self.at += 1;
        Ok(b)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            let bits = u64::from(b & 0x7f);
            if shift == 63 && bits > 1 {
                break;
            }
            n |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(self.bad("a number beyond 64 bits"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        let bytes: &'a [u8] = self.bytes;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| self.at.checked_add(l))
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| self.bad("it ends within a value"))?;
        let s = &bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    /// A count of items, each at least one byte, so never more than the bytes left.
    fn count(&mut self) -> Result<usize> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len() - self.at)
            .ok_or_else(|| self.bad("a count larger than the bytes left"))
    }

    /// Counts one more value at `depth`, refusing too deep or too many.
    fn enter(&mut self, depth: usize) -> Result<()> {
        if depth > MAX_JSON_DEPTH {
            return Err(self.bad(&format!("nesting deeper than {MAX_JSON_DEPTH}")));
        }
        self.values += 1;
        if self.values > self.max_values {
            let max = self.max_values;
            return Err(self.bad(&format!("more than {max} values")));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>> {
        self.enter(depth)?;
        let tag = self.byte()?;
        Ok(match tag {
            NULL => Json::Null,
            FALSE => Json::Bool(false),
            TRUE => Json::Bool(true),
            UINT => {
                let n = self.varint()?;
                match i64::try_from(n) {
                    Ok(i) => Json::Int(i),
                    Err(_) => Json::Num(Cow::Owned(n.into())),
                }
            }
            NEGINT => Json::Int(self.negative()?),
            NUMBER => Json::Num(Cow::Owned(self.number()?)),
            HEX => Json::Str(Cow::Owned(format!("{:x}", self.varint()?))),
            HEX16 => Json::Str(Cow::Owned(format!("{:016x}", self.hex16()?))),
            STAMP => {
                let (hlc, client) = self.stamp()?;
                Json::Stamp(hlc, client)
            }
            ARRAY => {
                let count = self.count()?;
                // A count is a claim: room grows as the values really come.
                let mut items = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    items.push(self.value(depth + 1)?);
                }
                Json::Arr(items)
            }
            OBJECT => {
                let count = self.count()?;
                let mut entries = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let tag = self.byte()?;
                    let key = self.plain_string(tag)?;
                    let item = if self.defer
                        && (key == "v" || key == "ri")
                        && self.bytes.get(self.at) == Some(&ARRAY)
                    {
                        Json::Later(self.later(depth + 1)?)
                    } else {
                        self.value(depth + 1)?
                    };
                    entries.push((Cow::Borrowed(key), item));
                }
                Json::Obj(JsonObj::from_entries(entries))
            }
            STRING | REF | SMALL_REF.. => Json::Str(Cow::Borrowed(self.plain_string(tag)?)),
            other => return Err(self.bad(&format!("unknown tag {other:#04x}"))),
        })
    }

    /// An array at `depth` walked and left for later.
    fn later(&mut self, depth: usize) -> Result<Later> {
        self.enter(depth)?;
        self.byte()?;
        let count = self.count()?;
        let first = self.place();
        for _ in 0..count {
            self.skip(depth + 1)?;
        }
        Ok(Later {
            first,
            // Each item takes a byte: the count fits as the bytes do.
            count: count as u32,
            depth: (depth + 1) as u16,
        })
    }

    /// An item read as an object with its own `v` walked (`Json::Null` in its place); whether
    /// that `v` is an object. Anything but an object is read whole.
    fn shallow_item(&mut self, depth: usize) -> Result<(Json<'a>, bool)> {
        if self.bytes.get(self.at) != Some(&OBJECT) {
            return Ok((self.value(depth)?, false));
        }
        self.enter(depth)?;
        self.byte()?;
        let count = self.count()?;
        let mut entries = Vec::with_capacity(count.min(16));
        let mut v_is_object = false;
        for _ in 0..count {
            let tag = self.byte()?;
            let key = self.plain_string(tag)?;
            let item = if key == "v" {
                v_is_object = self.skip(depth + 1)? == OBJECT;
                Json::Null
            } else {
                self.value(depth + 1)?
            };
            entries.push((Cow::Borrowed(key), item));
        }
        Ok((Json::Obj(JsonObj::from_entries(entries)), v_is_object))
    }

    /// Reads past one value as [`Reader::value`] reads it, checking the same, building
    /// nothing (its strings still enter the table); its tag.
    fn skip(&mut self, depth: usize) -> Result<u8> {
        self.enter(depth)?;
        let tag = self.byte()?;
        match tag {
            NULL | FALSE | TRUE => {}
            UINT | HEX => {
                self.varint()?;
            }
            NEGINT => {
                self.negative()?;
            }
            NUMBER => {
                self.number()?;
            }
            HEX16 => {
                self.hex16()?;
            }
            STAMP => {
                self.stamp()?;
            }
            ARRAY => {
                for _ in 0..self.count()? {
                    self.skip(depth + 1)?;
                }
            }
            OBJECT => {
                for _ in 0..self.count()? {
                    let tag = self.byte()?;
                    self.plain_string(tag)?;
                    self.skip(depth + 1)?;
                }
            }
            STRING | REF | SMALL_REF.. => {
                self.plain_string(tag)?;
            }
            other => return Err(self.bad(&format!("unknown tag {other:#04x}"))),
        }
        Ok(tag)
    }

    fn negative(&mut self) -> Result<i64> {
        let n = self.varint()?;
        let i = i64::try_from(n).map_err(|_| self.bad("a negative integer beyond 64 bits"))?;
        Ok(-1 - i)
    }

    fn number(&mut self) -> Result<Number> {
        let len = self.varint()?;
        let text = std::str::from_utf8(self.take(len)?)
            .map_err(|_| self.bad("a number that is not text"))?;
        text.parse()
            .map_err(|_| self.bad(&format!("{text:?}, which is not a JSON number")))
    }

    fn hex16(&mut self) -> Result<u64> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| self.bad("a short 64-bit number"))?;
        Ok(u64::from_be_bytes(b))
    }

    /// A stamp after its tag: its clock value and its client's text.
    fn stamp(&mut self) -> Result<(u64, &'a str)> {
        let z = self.varint()?;
        let d = ((z >> 1) as i64) ^ -((z & 1) as i64);
        self.last_hlc = self.last_hlc.wrapping_add(d as u64);
        let tag = self.byte()?;
        Ok((self.last_hlc, self.plain_string(tag)?))
    }

    /// A string written out (added to the table) or a table reference, after its tag.
    fn plain_string(&mut self, tag: u8) -> Result<&'a str> {
        let i = match tag {
            STRING => {
                let len = self.varint()?;
                let bytes = self.take(len)?;
                let s = if let Strings::Known(t) = &self.table {
                    // Read before, and checked then.
                    *t.get(self.defined)
                        .ok_or_else(|| self.bad("a string the first reading did not see"))?
                } else {
                    let s = std::str::from_utf8(bytes)
                        .map_err(|_| self.bad("a string that is not UTF-8"))?;
                    if let Strings::Growing(t) = &mut self.table {
                        t.push(s);
                    }
                    s
                };
                self.defined += 1;
                return Ok(s);
            }
            REF => self.varint()?,
            SMALL_REF.. => u64::from(tag - SMALL_REF),
            _ => return Err(self.bad(&format!("tag {tag:#04x} where a string was expected"))),
        };
        let table: &[&'a str] = match &self.table {
            Strings::Growing(t) => t,
            Strings::Known(t) => t,
        };
        usize::try_from(i)
            .ok()
            .filter(|i| *i < self.defined)
            .and_then(|i| table.get(i))
            .copied()
            .ok_or_else(|| self.bad(&format!("string {i} of a table of {}", self.defined)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(v: &Value) -> Vec<u8> {
        let bytes = encode(v);
        assert_eq!(&decode(&bytes).unwrap(), v, "{v}");
        bytes
    }

    #[test]
    fn every_value_comes_back_exactly() {
        let nasty: Value = serde_json::from_str(
            r#"{"n": [0, 1, 127, 128, 18446744073709551615, 18446744073709551616, -1,
                 -9223372036854775808, -9223372036854775809, 1.5, 1e+2, -0.0, 12345678901234567890123],
                "s": ["", "x", "é🙂", "0", "00", "0a", "ff", "ffffffffffffffff", "0000000000000001",
                      "10000000000000000", "1a2-aaaaaaaaaaaaaaaa", "01a2-aaaaaaaaaaaaaaaa",
                      "1a2-aaaaaaaaaaaaaaa", "1a2-aaaaaaaaaaaaaa!a", "-aaaaaaaaaaaaaaaa", "A1"],
                "t": [true, false, null, [], {}, [[[]]]],
                "minisync": "minisync", "aaaaaaaaaaaaaaaa": "5-aaaaaaaaaaaaaaaa",
                "again": "1-aaaaaaaaaaaaaaaa"}"#,
        )
        .unwrap();
        round_trip(&nasty);
        let many: Vec<Value> = (0..300).map(|i| json!(format!("k{i}"))).collect();
        let twice = json!([many.clone(), many]);
        round_trip(&twice);
    }

    #[test]
    fn a_typed_characters_changes_object_is_small() {
        let v = json!({"changes":{"_s":{"id":"1a22b0979ae0000-rwp28yu3jj7utit5"},"text":{"_t":{"c":{"rwp28yu3jj7utit5":"1a22b0979ae000c"},"i":11,"id":"1a22b0979ae0000-rwp28yu3jj7utit5","p":[{"e":12,"o":2,"ro":3,"s":"x"}]}}},"changesSince":2,"clientStates":[{"clientID":"hdl6tomcbrh7zcjp","knows":{"rwp28yu3jj7utit5":"1a22b0979ae000b"},"lastAcknowledged":2,"lastReceived":1}],"digest":"8f052006f2cb9cf2","formatVersion":3,"fromVersion":3,"id":"yhw6itvu5qp86uo2","knows":{"rwp28yu3jj7utit5":"1a22b0979ae000c"},"minisync":"changes","sentBy":"rwp28yu3jj7utit5"});
        let bytes = round_trip(&v);
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
    }

    #[test]
    fn damaged_bytes_are_refused_with_what_is_wrong() {
        let good = encode(&json!({"a": ["x", 1, "5-aaaaaaaaaaaaaaaa"], "b": 1.5}));
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{}".to_vec(), "magic"),
            ([&MAGIC[..], &[2]].concat(), "version 2"),
            ([&MAGIC[..], &[1, 0x0f]].concat(), "unknown tag"),
            (
                [&MAGIC[..], &[1, 0xff]].concat(),
                "string 127 of a table of 35",
            ),
            (
                [
                    &MAGIC[..],
                    &[
                        1, REF, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
                    ],
                ]
                .concat(),
                "beyond 64 bits",
            ),
            (
                [&MAGIC[..], &[1, STRING, 2, 0xc3, 0x28]].concat(),
                "not UTF-8",
            ),
            (
                [&MAGIC[..], &[1, NUMBER, 2, b'1', b'x']].concat(),
                "not a JSON number",
            ),
            (
                [&MAGIC[..], &[1, ARRAY, 100, NULL]].concat(),
                "count larger",
            ),
            (
                [&MAGIC[..], &[1, OBJECT, 1, UINT, 1, NULL]].concat(),
                "where a string was expected",
            ),
            ([&MAGIC[..], &[1, NULL, NULL]].concat(), "bytes after"),
            (
                [&MAGIC[..], &[1, ARRAY, 0xcc, 0x08], &[NULL; 1100]].concat(),
                "more than 1000 values",
            ),
            (good[..good.len() - 3].to_vec(), "ends within"),
            (
                [
                    &MAGIC[..],
                    &[1],
                    &[ARRAY, 1].repeat(MAX_JSON_DEPTH + 2),
                    &[NULL],
                ]
                .concat(),
                "nesting deeper",
            ),
        ];
        for (bytes, says) in cases {
            let e = decode_within(&bytes, 1000).unwrap_err().to_string();
            assert!(e.contains(says), "{says}: {e}");
        }
    }

    #[test]
    fn lists_left_for_later_read_back_as_they_were() {
        let v = json!({
            "v": [{"e": "1-aa", "v": {"x": ["s1", "s2"], "v": 1}}, {"o": 1, "v": 5}, 7],
            "_s": {"ri": [{"r": "s1"}], "w": ["s1"]},
        });
        let bytes = encode(&v);
        let (json, lists) = decode_deferring(&bytes).unwrap();
        let top = json.as_object().unwrap();
        let Some(Json::Later(live)) = top.get("v") else {
            panic!("v is left for later")
        };
        let s = top.get("_s").and_then(Json::as_object).unwrap();
        let Some(Json::Later(removed)) = s.get("ri") else {
            panic!("_s.ri is left for later")
        };
        assert!(
            matches!(s.get("w"), Some(Json::Arr(_))),
            "other arrays are read"
        );
        let whole =
            |l: &Later| -> Vec<Item<'_>> { lists.items(l, false).map(|i| i.unwrap()).collect() };
        let items: Vec<Value> = whole(live).iter().map(|i| i.json.to_value()).collect();
        assert_eq!(Value::Array(items), v["v"]);
        assert_eq!(whole(removed)[0].json.to_value(), v["_s"]["ri"][0]);
        let shallow: Vec<Item<'_>> = lists.items(live, true).map(|i| i.unwrap()).collect();
        let object: Vec<bool> = shallow.iter().map(|i| i.v_is_object).collect();
        assert_eq!(object, [true, false, false]);
        let first = shallow[0].json.as_object().unwrap();
        assert_eq!(first.get("v"), Some(&Json::Null));
        assert_eq!(first.get("e").and_then(Json::text).as_deref(), Some("1-aa"));
        // Each item read again on its own, where the shallow pass found it.
        for (i, item) in shallow.iter().enumerate() {
            assert_eq!(lists.item(live, item.at).unwrap().to_value(), v["v"][i]);
        }
    }

    #[test]
    fn a_list_left_for_later_is_refused_as_when_read_at_once() {
        let damaged: [(&[u8], &str); 7] = [
            (&[0x0f], "unknown tag"),
            (&[0xff], "string 127 of a table of 35"),
            (&[STRING, 2, 0xc3, 0x28], "not UTF-8"),
            (&[NUMBER, 2, b'1', b'x'], "not a JSON number"),
            (&[ARRAY, 100, NULL], "count larger"),
            (&[OBJECT, 1, UINT, 1, NULL], "where a string was expected"),
            (&[STAMP, 2], "ends within"),
        ];
        for (value, says) in damaged {
            // {"v": [value]}: "v" is the table's string 24.
            let bytes = [&MAGIC[..], &[1, OBJECT, 1, SMALL_REF + 24, ARRAY, 1], value].concat();
            let Err(e) = decode_deferring(&bytes) else {
                panic!("{says}: accepted")
            };
            assert!(e.to_string().contains(says), "{says}: {e}");
            let at_once = decode_json(&bytes).unwrap_err();
            assert_eq!(e.to_string(), at_once.to_string());
        }
    }
}
