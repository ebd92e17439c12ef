//! A primitive value as a replica holds it: null, a boolean, a number or a string.
//!
//! A large document is mostly primitives, and a `serde_json::Value` is a poor way to hold them:
//! it is 32 bytes, and with `arbitrary_precision` (which minisync needs, to carry every number
//! exactly as it was written) each number is a `String` on the heap — 100,000 records with one
//! integer each spent 100,000 allocations on them. A [`Scalar`] is 24 bytes and holds an integer
//! written in its shortest form inline, and a string of up to 24 bytes inline too (a
//! [`CompactString`]: names, e-mail addresses, dates and ids are short; a `Box<str>` spent a
//! 32-byte allocation on each); any other number keeps its exact text. A number's text
//! decides its variant (`Int` only for the canonical form of an `i64`), so two scalars are equal
//! exactly when their JSON texts are, as with `Value`.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// A primitive value (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    /// A number whose JSON text is the shortest decimal form of this `i64` (`0`, `-17`).
    Int(i64),
    /// Any other number, as its exact JSON text (`1.50`, `1e3`, `-0`, `18446744073709551615`).
    Num(Box<str>),
    /// A string: up to 24 bytes inline, longer ones on the heap.
    Str(CompactString),
}

const _: () = assert!(std::mem::size_of::<Scalar>() == 24);

/// The `i64` whose shortest decimal text is `text`, if there is one.
fn canonical_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let shortest = !digits.is_empty()
        && digits.len() <= 19
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
        && text != "-0";
    if shortest { text.parse().ok() } else { None }
}

impl Scalar {
    /// The number whose JSON text is `text` (taken as a valid JSON number).
    pub fn number_text(text: &str) -> Scalar {
        match canonical_int(text) {
            Some(i) => Scalar::Int(i),
            None => Scalar::Num(text.into()),
        }
    }

    pub fn number(n: &Number) -> Scalar {
        Scalar::number_text(n.as_str())
    }

    /// `v` as a scalar; `None` for an object or array.
    pub fn from_value(v: &Value) -> Option<Scalar> {
        Some(match v {
            Value::Null => Scalar::Null,
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => Scalar::number(n),
            Value::String(s) => Scalar::Str(s.as_str().into()),
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    /// The same value as a `serde_json::Value`.
    pub fn to_value(&self) -> Value {
        match self {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(*b),
            Scalar::Int(i) => Value::Number((*i).into()),
            // The text came from a valid number; should it not parse again, it stays a string
            // rather than becoming something else.
            Scalar::Num(t) => t
                .parse::<Number>()
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(t.to_string())),
            Scalar::Str(s) => Value::String(s.to_string()),
        }
    }
}

impl Serialize for Scalar {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Scalar::Null => s.serialize_unit(),
            Scalar::Bool(b) => s.serialize_bool(*b),
            Scalar::Int(i) => s.serialize_i64(*i),
            Scalar::Num(_) => self.to_value().serialize(s),
            Scalar::Str(t) => s.serialize_str(t),
        }
    }
}

/// How serde_json (with `arbitrary_precision`) presents a number to a visitor.
pub(crate) const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Reads a scalar from any serde format; a number from serde_json arrives as a one-key map
/// ([`NUMBER_TOKEN`]), which [`ScalarVisitor::number_entry`] takes.
pub(crate) struct ScalarVisitor;

impl ScalarVisitor {
    /// The number held by the value of a [`NUMBER_TOKEN`] entry.
    pub fn number_entry<'de, M: serde::de::MapAccess<'de>>(m: &mut M) -> Result<Scalar, M::Error> {
        use serde::de::Error as _;
        let digits: std::borrow::Cow<'de, str> = m.next_value()?;
        let n: Number = digits.parse().map_err(M::Error::custom)?;
        Ok(Scalar::number(&n))
    }
}

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("null, a boolean, a number or a string")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Num(v.to_string().into()),
        })
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Scalar, E> {
        Number::from_f64(v)
            .map(|n| Scalar::number(&n))
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        Ok(Scalar::Str(v.into()))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::Null)
    }
    fn visit_map<M: serde::de::MapAccess<'de>>(self, mut m: M) -> Result<Scalar, M::Error> {
        use serde::de::Error as _;
        match m.next_key::<std::borrow::Cow<'de, str>>()?.as_deref() {
            Some(NUMBER_TOKEN) => {
                let n = ScalarVisitor::number_entry(&mut m)?;
                if m.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(M::Error::custom("a number followed by more"));
                }
                Ok(n)
            }
            _ => Err(M::Error::custom(
                "an object where a primitive value belongs",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_keeps_its_text_and_integers_are_held_inline() {
        for text in [
            "0",
            "-1",
            "42",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "-0",
            "1.0",
            "1e3",
            "1E+3",
            "0.1",
            "123456789012345678901234567890",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let s = Scalar::from_value(&v).unwrap();
            let int = matches!(s, Scalar::Int(_));
            assert_eq!(int, text.parse::<i64>().is_ok() && text != "-0", "{text}");
            assert_eq!(s.to_value(), v, "{text}");
            let out = serde_json::to_string(&s).unwrap();
            assert_eq!(out, serde_json::to_string(&v).unwrap(), "{text}");
            let back: Scalar = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s, "{text}");
        }
    }

    #[test]
    fn strings_booleans_and_null_round_trip() {
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::String("plain".into()),
            Value::String("quote \" backslash \\ newline \n é 😀".into()),
        ] {
            let s = Scalar::from_value(&v).unwrap();
            assert_eq!(s.to_value(), v);
            let out = serde_json::to_string(&s).unwrap();
            assert_eq!(out, serde_json::to_string(&v).unwrap());
            let back: Scalar = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
        }
        // Around the 24 bytes held inline, in ASCII and in two-byte characters.
        for text in [
            String::new(),
            "x".repeat(23),
            "x".repeat(24),
            "x".repeat(25),
            "é".repeat(12),
            "é".repeat(13),
            "😀".repeat(100),
        ] {
            let v = Value::String(text.clone());
            let s = Scalar::from_value(&v).unwrap();
            assert_eq!(s, Scalar::Str(text.as_str().into()));
            assert_eq!(s.to_value(), v);
            let back: Scalar = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
            assert_eq!(back, s, "{text}");
        }
        assert_eq!(Scalar::from_value(&serde_json::json!([1])), None);
        assert!(serde_json::from_str::<Scalar>("{\"a\": 1}").is_err());
    }
}
