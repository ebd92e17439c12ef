//! A JSON value as the changes reader takes it in: borrowed from a `serde_json::Value`, or read
//! straight from the compact form without building one.
//!
//! A full changes object of a 10 MB document holds hundreds of thousands of small objects. As a
//! `serde_json::Value` each is a B-tree map with a `String` per key, built only to be looked
//! through once and dropped: a third of the time of a full sync went to building and freeing
//! them. Here an object is a vector of entries sorted by key, its keys borrowed from the compact
//! bytes' string table (or from the `Value`), so reading allocates one vector per object.
//! The semantics are the `Value`'s: each key once (the last written wins), keys in byte order,
//! numbers kept exactly as serde_json holds them.

use std::borrow::Cow;

use serde_json::{Map, Number, Value};

use crate::engine::compact::Later;
use crate::engine::scalar::Scalar;

/// A JSON value (see the module documentation).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Json<'a> {
    Null,
    Bool(bool),
    /// An integer read from the compact form, which carries it as a varint: held without the
    /// decimal text a `Number` would allocate.
    Int(i64),
    Num(Cow<'a, Number>),
    Str(Cow<'a, str>),
    /// A string of a stamp's shape, `{hlc:x}-{client}`, as the compact form carries it: its
    /// clock value and its client's text, so that reading a stamp makes no string to parse
    /// again. The same value as the `Str` of that text.
    Stamp(u64, &'a str),
    Arr(Vec<Json<'a>>),
    Obj(JsonObj<'a>),
    /// An array of elements left unread by `compact::decode_deferring`, read item by item from
    /// its `compact::Lists`. Only the reader of a new replica (`streamed.rs`) asks for these.
    Later(Later),
}

/// An object: its entries sorted by key, each key once.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct JsonObj<'a> {
    entries: Vec<(Cow<'a, str>, Json<'a>)>,
}

/// Objects up to this many keys are searched from the start; larger ones by bisection.
const SCAN: usize = 8;

impl<'a> JsonObj<'a> {
    /// The object of these entries, in any order; of two entries with one key the later wins.
    pub fn from_entries(mut entries: Vec<(Cow<'a, str>, Json<'a>)>) -> Self {
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            // Stable: of equal keys the one written last stays last, and is the one kept. In
            // place: a full changes object reads 100,000 small objects whose keys come in the
            // order they were written.
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut kept = 0;
            for r in 0..entries.len() {
                if kept > 0 && entries[kept - 1].0 == entries[r].0 {
                    entries.swap(kept - 1, r);
                } else {
                    entries.swap(kept, r);
                    kept += 1;
                }
            }
            entries.truncate(kept);
        }
        JsonObj { entries }
    }

    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        if self.entries.len() <= SCAN {
            return self.entries.iter().find(|e| e.0 == key).map(|e| &e.1);
        }
        self.entries
            .binary_search_by(|e| e.0.as_ref().cmp(key))
            .ok()
            .map(|i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.0.as_ref())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Json<'a>)> {
        self.entries.iter().map(|e| (e.0.as_ref(), &e.1))
    }
}

impl<'a> Json<'a> {
    /// `v` borrowed. Recursive: the caller bounds `v`'s depth first.
    pub fn borrow(v: &'a Value) -> Self {
        match v {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Number(n) => Json::Num(Cow::Borrowed(n)),
            Value::String(s) => Json::Str(Cow::Borrowed(s)),
            Value::Array(items) => Json::Arr(items.iter().map(Json::borrow).collect()),
            Value::Object(m) => Json::Obj(JsonObj::from_entries(
                m.iter()
                    .map(|(k, v)| (Cow::Borrowed(k.as_str()), Json::borrow(v)))
                    .collect(),
            )),
        }
    }

    /// The same value as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Int(i) => Value::Number((*i).into()),
            Json::Num(n) => Value::Number(n.as_ref().clone()),
            Json::Str(s) => Value::String(s.to_string()),
            Json::Stamp(..) => Value::String(self.text().unwrap_or_default().into_owned()),
            Json::Arr(items) => Value::Array(items.iter().map(Json::to_value).collect()),
            // Its items are in the bytes, not here: whoever asked for the list reads them.
            Json::Later(l) => Value::String(format!("<a list of {} items left unread>", l.count)),
            Json::Obj(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect::<Map<String, Value>>(),
            ),
        }
    }

    pub fn as_object(&self) -> Option<&JsonObj<'a>> {
        match self {
            Json::Obj(m) => Some(m),
            _ => None,
        }
    }

    /// A string held as text (not one of a stamp's shape: see [`Json::text`]).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    /// Any string's text, a stamp's made from its parts.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match self {
            Json::Str(s) => Some(Cow::Borrowed(s)),
            Json::Stamp(hlc, client) => Some(Cow::Owned(format!("{hlc:x}-{client}"))),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Json::Int(i) => u64::try_from(*i).ok(),
            Json::Num(n) => n.as_u64(),
            _ => None,
        }
    }

    /// A primitive as a slot holds it; `None` for an object or array.
    pub fn to_scalar(&self) -> Option<Scalar> {
        Some(match self {
            Json::Null => Scalar::Null,
            Json::Bool(b) => Scalar::Bool(*b),
            Json::Int(i) => Scalar::Int(*i),
            Json::Num(n) => Scalar::number(n),
            Json::Str(s) => Scalar::Str(s.as_ref().into()),
            Json::Stamp(..) => Scalar::Str(self.text()?.into()),
            Json::Arr(_) | Json::Obj(_) | Json::Later(_) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_keeps_each_key_once_in_order_the_last_winning() {
        let e = |k: &'static str, n: u64| (Cow::Borrowed(k), Json::Num(Cow::Owned(n.into())));
        let many: Vec<_> = (0..20u64)
            .rev()
            .map(|i| (Cow::Owned(format!("k{i:02}")), Json::Null))
            .collect();
        let big = JsonObj::from_entries(many);
        assert_eq!(big.keys().next(), Some("k00"));
        assert!(big.contains_key("k13") && !big.contains_key("k20"));
        let o = JsonObj::from_entries(vec![e("b", 1), e("a", 2), e("b", 3)]);
        assert_eq!(o.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(o.get("b").and_then(Json::as_u64), Some(3));
        let v: Value =
            serde_json::from_str(r#"{"z": [1, -2, 1.5, "s", null, true, {"y": {}}], "a": 1e400}"#)
                .unwrap();
        assert_eq!(Json::borrow(&v).to_value(), v);
    }
}
