//! How a bound JSON file is written back: in the style its user wrote it. The indentation (spaces
//! or tabs, and how many), compact or pretty, the line ending and the trailing newline are read
//! from the file's text; the order of each object's keys from its parse (serde_json here sorts
//! keys, so the order is read separately). Keys the file had keep their place, new keys follow.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

/// The layout of a JSON file's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Style {
    /// One level of indentation; None for compact text on one line.
    indent: Option<String>,
    /// Compact text only: a space after each `:` and `,`.
    spaced: bool,
    /// "\n" or "\r\n".
    newline: &'static str,
    trailing_newline: bool,
}

impl Default for Style {
    /// What a new file gets: two spaces, a trailing newline.
    fn default() -> Self {
        Style {
            indent: Some("  ".into()),
            spaced: false,
            newline: "\n",
            trailing_newline: true,
        }
    }
}

impl Style {
    /// The style of `text` (valid JSON).
    pub fn detect(text: &str) -> Style {
        let newline = if text.contains("\r\n") { "\r\n" } else { "\n" };
        let trailing_newline = text.ends_with('\n');
        let body = text.trim();
        if !body.contains('\n') {
            let spaced = body.matches(": ").count() + body.matches(", ").count()
                > body.matches("\":").count() - body.matches("\": ").count();
            return Style {
                indent: None,
                spaced,
                newline,
                trailing_newline,
            };
        }
        let indent = body
            .lines()
            .skip(1)
            .map(|l| {
                let n = l.len() - l.trim_start_matches([' ', '\t']).len();
                &l[..n]
            })
            .find(|w| !w.is_empty())
            .map_or("  ".to_string(), |w| {
                if w.starts_with('\t') {
                    "\t".to_string()
                } else {
                    " ".repeat(w.len())
                }
            });
        Style {
            indent: Some(indent),
            spaced: false,
            newline,
            trailing_newline,
        }
    }

    /// `value` as text in this style, objects' keys in the order `order` gives where known.
    pub fn render(&self, value: &Value, order: Option<&KeyOrder>) -> String {
        let mut out = String::new();
        self.write(&mut out, value, order, 0);
        if self.trailing_newline {
            out.push_str(self.newline);
        }
        out
    }

    fn write(&self, out: &mut String, value: &Value, order: Option<&KeyOrder>, depth: usize) {
        match value {
            Value::Object(m) if !m.is_empty() => {
                let known: Vec<(&str, &KeyOrder)> = match order {
                    Some(KeyOrder::Obj(keys)) => keys
                        .iter()
                        .filter(|(k, _)| m.contains_key(k))
                        .map(|(k, o)| (k.as_str(), o))
                        .collect(),
                    _ => Vec::new(),
                };
                let child: HashMap<&str, &KeyOrder> = known.iter().copied().collect();
                let mut keys: Vec<&str> = known.iter().map(|(k, _)| *k).collect();
                keys.extend(
                    m.keys()
                        .map(String::as_str)
                        .filter(|k| !child.contains_key(k)),
                );
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    self.separate(out, i, depth + 1);
                    out.push_str(&Value::String((*k).to_string()).to_string());
                    out.push_str(if self.indent.is_some() || self.spaced {
                        ": "
                    } else {
                        ":"
                    });
                    self.write(out, &m[*k], child.get(k).copied(), depth + 1);
                }
                self.close(out, depth, '}');
            }
            Value::Array(a) if !a.is_empty() => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    self.separate(out, i, depth + 1);
                    let o = match order {
                        Some(KeyOrder::Arr(items)) => items.get(i),
                        _ => None,
                    };
                    self.write(out, v, o, depth + 1);
                }
                self.close(out, depth, ']');
            }
            other => out.push_str(&other.to_string()),
        }
    }

    /// Before the `i`th member at `depth`: the comma and the line break with its indentation.
    fn separate(&self, out: &mut String, i: usize, depth: usize) {
        if i > 0 {
            out.push(',');
        }
        match &self.indent {
            Some(unit) => {
                out.push_str(self.newline);
                out.push_str(&unit.repeat(depth));
            }
            None if i > 0 && self.spaced => out.push(' '),
            None => {}
        }
    }

    fn close(&self, out: &mut String, depth: usize, bracket: char) {
        if let Some(unit) = &self.indent {
            out.push_str(self.newline);
            out.push_str(&unit.repeat(depth));
        }
        out.push(bracket);
    }
}

/// The order of every object's keys in a JSON text, objects inside arrays by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrder {
    Obj(Vec<(String, KeyOrder)>),
    Arr(Vec<KeyOrder>),
    Leaf,
}

impl KeyOrder {
    /// The key order of `text` (None when it is not JSON).
    pub fn of(text: &str) -> Option<KeyOrder> {
        serde_json::from_str(text).ok()
    }
}

impl<'de> Deserialize<'de> for KeyOrder {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(OrderVisitor)
    }
}

struct OrderVisitor;

impl<'de> serde::de::Visitor<'de> for OrderVisitor {
    type Value = KeyOrder;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<KeyOrder, A::Error> {
        let mut keys = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            keys.push((k, map.next_value::<KeyOrder>()?));
        }
        Ok(KeyOrder::Obj(keys))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<KeyOrder, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element::<KeyOrder>()? {
            items.push(v);
        }
        Ok(KeyOrder::Arr(items))
    }
    fn visit_bool<E>(self, _: bool) -> Result<KeyOrder, E> {
        Ok(KeyOrder::Leaf)
    }
    fn visit_i64<E>(self, _: i64) -> Result<KeyOrder, E> {
        Ok(KeyOrder::Leaf)
    }
    fn visit_u64<E>(self, _: u64) -> Result<KeyOrder, E> {
        Ok(KeyOrder::Leaf)
    }
    fn visit_f64<E>(self, _: f64) -> Result<KeyOrder, E> {
        Ok(KeyOrder::Leaf)
    }
    fn visit_str<E>(self, _: &str) -> Result<KeyOrder, E> {
        Ok(KeyOrder::Leaf)
    }
    fn visit_unit<E>(self) -> Result<KeyOrder, E> {
        Ok(KeyOrder::Leaf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> String {
        let v: Value = serde_json::from_str(text).unwrap();
        Style::detect(text).render(&v, KeyOrder::of(text).as_ref())
    }

    #[test]
    fn a_file_is_written_back_as_it_was_written() {
        for text in [
            "{\n    \"z\": 1,\n    \"a\": [\n        {\"y\": 1.50, \"b\": null}\n    ]\n}\n",
            "{\n\t\"z\": \"é\\n\",\n\t\"a\": {}\n}",
            "{\"z\":1,\"a\":[1,2,{\"q\":true,\"b\":false}]}",
            "{\"z\": 1, \"a\": [1, 2]}\n",
            "{\r\n  \"b\": [],\r\n  \"a\": -0.25\r\n}\r\n",
        ] {
            let v: Value = serde_json::from_str(text).unwrap();
            let out = round_trip(text);
            assert_eq!(serde_json::from_str::<Value>(&out).unwrap(), v);
            // A one-line object inside a pretty file is written out over lines; all else is kept.
            if !text.contains("{\"y\"") {
                assert_eq!(out, text);
            }
        }
    }

    #[test]
    fn new_keys_follow_the_keys_the_file_had() {
        let text = "{\n  \"z\": 1,\n  \"m\": 2\n}\n";
        let v = serde_json::json!({"z": 1, "a": 0, "m": 3, "b": 4});
        let out = Style::detect(text).render(&v, KeyOrder::of(text).as_ref());
        assert_eq!(
            out,
            "{\n  \"z\": 1,\n  \"m\": 3,\n  \"a\": 0,\n  \"b\": 4\n}\n"
        );
        assert_eq!(
            Style::default().render(&serde_json::json!({"b": [1], "a": {}}), None),
            "{\n  \"a\": {},\n  \"b\": [\n    1\n  ]\n}\n"
        );
    }
}
