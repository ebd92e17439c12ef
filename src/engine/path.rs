//! Paths into a document: `foo.bar[1].baz`, with `["any key"]` for any key at all: inside the
//! quotes `\"` stands for a quote and `\\` for a backslash, and everything else (dots, brackets,
//! spaces) is taken as it is, so `["a]b"]`, `["say \"hi\""]` and `["v1.2"]` each name one key.

use crate::engine::error::{Error, Result};

/// One step of a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A key of an object.
    Key(String),
    /// A position in an array.
    Index(usize),
}

/// Splits a path into segments. The empty path names the document root.
pub fn parse(path: &str) -> Result<Vec<Segment>> {
    if !path.is_empty() && !path.contains(['.', '[']) {
        // One plain key (the common case of a program editing a field over and over).
        return Ok(vec![Segment::Key(path.to_string())]);
    }
    let mut out = Vec::new();
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    let mut expect_key = true;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                if out.is_empty() || expect_key {
                    return Err(Error::path(path, format!("unexpected '.' at {i}")));
                }
                expect_key = true;
                i += 1;
                if i == chars.len() {
                    return Err(Error::path(path, "ends with '.'"));
                }
            }
            '[' if chars.get(i + 1) == Some(&'"') => {
                let (key, next) = quoted_key(path, &chars, i + 2)?;
                if chars.get(next) != Some(&']') {
                    return Err(Error::path(
                        path,
                        format!("expected ']' after the quoted key at {next}"),
                    ));
                }
                out.push(Segment::Key(key));
                expect_key = false;
                i = next + 1;
            }
            '[' => {
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .map(|p| p + i)
                    .ok_or_else(|| Error::path(path, format!("'[' at {i} is never closed")))?;
                let inner: String = chars[i + 1..close].iter().collect();
                let n = inner
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| Error::path(path, format!("{inner:?} is not an array index")))?;
                out.push(Segment::Index(n));
                expect_key = false;
                i = close + 1;
            }
            _ => {
                if !expect_key && !out.is_empty() {
                    return Err(Error::path(path, format!("expected '.' or '[' at {i}")));
                }
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                out.push(Segment::Key(chars[start..i].iter().collect()));
                expect_key = false;
            }
        }
    }
    Ok(out)
}

/// Reads a quoted key starting after its opening quote; returns the key and the position after
/// the closing quote.
fn quoted_key(path: &str, chars: &[char], start: usize) -> Result<(String, usize)> {
    let mut key = String::new();
    let mut i = start;
    loop {
        match chars.get(i) {
            None => {
                return Err(Error::path(
                    path,
                    format!("the quoted key at {} is never closed", start - 1),
                ));
            }
            Some('"') => return Ok((key, i + 1)),
            Some('\\') => match chars.get(i + 1) {
                Some(c @ ('"' | '\\')) => {
                    key.push(*c);
                    i += 2;
                }
                _ => {
                    return Err(Error::path(
                        path,
                        format!("'\\' at {i} must be followed by '\"' or '\\'"),
                    ));
                }
            },
            Some(c) => {
                key.push(*c);
                i += 1;
            }
        }
    }
}

/// Renders segments back into path text (used in error messages).
pub fn render(segments: &[Segment]) -> String {
    let mut s = String::new();
    for seg in segments {
        match seg {
            Segment::Key(k) if !k.is_empty() && !k.contains(['.', '[', ']', '"', '\\']) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Segment::Key(k) => s.push_str(&format!(
                "[\"{}\"]",
                k.replace('\\', "\\\\").replace('"', "\\\"")
            )),
            Segment::Index(n) => s.push_str(&format!("[{n}]")),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use Segment::*;

    #[test]
    fn parses_keys_indexes_and_quoted_keys() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(
            parse("foo.bar[1].baz").unwrap(),
            vec![
                Key("foo".into()),
                Key("bar".into()),
                Index(1),
                Key("baz".into())
            ]
        );
        assert_eq!(
            parse("[\"a.b\"][0]").unwrap(),
            vec![Key("a.b".into()), Index(0)]
        );
        assert_eq!(
            parse("_s.v").unwrap(),
            vec![Key("_s".into()), Key("v".into())]
        );
        for bad in ["foo.", ".foo", "a[1", "a[x]", "a..b", "a[1]b"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let p = parse("foo[\"x.y\"][2].z").unwrap();
        assert_eq!(parse(&render(&p)).unwrap(), p);
        // Keys holding ']', '"', '.', '[' and '\' are named by quoting.
        for key in ["x]y", "say \"hi\"", "v1.2", "[0]", "back\\slash", "\"]", ""] {
            let p = vec![Key("m".into()), Key(key.into())];
            assert_eq!(parse(&render(&p)).unwrap(), p, "{key:?} via {}", render(&p));
        }
        assert_eq!(parse("[\"x]y\"]").unwrap(), vec![Key("x]y".into())]);
        for bad in ["[\"open", "[\"a\"b]", "[\"a\\x\"]"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
