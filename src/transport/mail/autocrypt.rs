//! The `Autocrypt:` header (Autocrypt Level 1, autocrypt.org/level1.html §2.1): every agent mail
//! carries the sender's public key in it, so that a peer learns the key from the first mail.
//!
//! Shape: `addr=<address>; prefer-encrypt=mutual; keydata=<base64 of the binary transferable
//! public key>`. Attributes starting with `_` are optional and ignored; any other unknown
//! attribute makes the header invalid (Level 1 §2.1.1).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The header's name.
pub const HEADER: &str = "Autocrypt";

/// The value of an `Autocrypt:` header for `address` and its binary public key, folded into
/// lines of at most 76 characters (the whitespace is removed again on reading).
pub fn build(address: &str, key: &[u8]) -> String {
    let data = STANDARD.encode(key);
    let mut out = format!("addr={address}; prefer-encrypt=mutual; keydata=");
    for (i, chunk) in data.as_bytes().chunks(72).enumerate() {
        if i > 0 {
            out.push_str("\r\n ");
        }
        out.push_str(&String::from_utf8_lossy(chunk));
    }
    out
}

/// The address and binary key of an `Autocrypt:` header value.
///
/// # Errors
///
/// A message naming what is wrong: no `addr`, no `keydata`, keydata not base64, an unknown
/// critical attribute.
pub fn parse(value: &str) -> Result<(String, Vec<u8>), String> {
    let (mut addr, mut keydata) = (None, None);
    for attr in value.split(';') {
        let attr = attr.trim();
        if attr.is_empty() {
            continue;
        }
        let (name, val) = attr
            .split_once('=')
            .ok_or_else(|| format!("Autocrypt attribute {attr:?} has no value"))?;
        match name.trim() {
            "addr" => addr = Some(val.trim().to_ascii_lowercase()),
            "keydata" => keydata = Some(val),
            "prefer-encrypt" => {}
            n if n.starts_with('_') => {}
            n => return Err(format!("Autocrypt header has the unknown attribute {n:?}")),
        }
    }
    let addr = addr.ok_or("Autocrypt header without addr")?;
    let keydata = keydata.ok_or("Autocrypt header without keydata")?;
    let clean: String = keydata.split_whitespace().collect();
    let key = STANDARD
        .decode(clean)
        .map_err(|e| format!("Autocrypt keydata is not base64: {e}"))?;
    Ok((addr, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_folded_headers() {
        let key: Vec<u8> = (0..=255u8).cycle().take(700).collect();
        let value = build("alice@example.test", &key);
        assert!(value.lines().all(|l| l.len() <= 78), "{value}");
        assert!(value.starts_with("addr=alice@example.test; prefer-encrypt=mutual; keydata="));
        // Unfolded as a mail reader does.
        let unfolded = value.replace("\r\n", "");
        assert_eq!(
            parse(&unfolded).unwrap(),
            ("alice@example.test".to_string(), key.clone())
        );
        assert_eq!(parse(&value).unwrap().1, key);
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        assert!(parse("keydata=AAAA").unwrap_err().contains("without addr"));
        assert!(parse("addr=a@b.c").unwrap_err().contains("without keydata"));
        assert!(
            parse("addr=a@b.c; keydata=!!!")
                .unwrap_err()
                .contains("not base64")
        );
        assert!(
            parse("addr=a@b.c; x=1; keydata=AAAA")
                .unwrap_err()
                .contains("unknown")
        );
        assert!(parse("addr=a@b.c; _x=1; keydata=AAAA").is_ok());
        assert!(parse("addr").unwrap_err().contains("no value"));
    }
}
