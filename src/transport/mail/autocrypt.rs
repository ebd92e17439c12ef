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

/// The value of an `Autocrypt:` header for `address` and its binary public key; the keydata is
/// split by spaces every 64 characters, where the header may be folded (whitespace in keydata
/// is ignored on reading).
pub fn build(address: &str, key: &[u8]) -> String {
    let data = STANDARD.encode(key);
    let chunks: Vec<&str> = data
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    format!(
        "addr={address}; prefer-encrypt=mutual; keydata={}",
        chunks.join(" ")
    )
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
        assert!(value.split(' ').all(|w| w.len() <= 72), "{value}");
        assert!(value.starts_with("addr=alice@example.test; prefer-encrypt=mutual; keydata="));
        assert_eq!(
            parse(&value).unwrap(),
            ("alice@example.test".to_string(), key.clone())
        );
        // Folded by a mail writer, unfolded by a reader.
        let folded = value.replace(' ', "\r\n ");
        assert_eq!(parse(&folded).unwrap().1, key);
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
