//! Changes objects too large for one mail: how they are cut into parts (a *transfer*), what each
//! part says about the whole, and the rule by which a receiver puts them back together.
//!
//! Everything here is pure: the mail transport builds and sends the part mails
//! ([`plan`] chooses the cut by measuring the finished mails), the agent keeps the parts that came
//! in its store and calls [`assemble`] when a transfer is complete. See docs/PROTOCOL.md, "Mail
//! parts".

use sha2::{Digest, Sha256};

/// The most parts one transfer may have: a part mail announcing more is refused, and a sender
/// that would need more gives up with an error saying to raise `max-mail-size`.
pub const MAX_PARTS: u32 = 10_000;
/// The largest changes object a transfer may carry: the same 256 MiB a single mail may carry.
pub const MAX_TRANSFER_BYTES: u64 = crate::transport::mail::envelope::MAX_CHANGES_BYTES;
/// The smallest `max-mail-size` (bytes, after encoding): below it the fixed cost of a mail (its
/// headers, the sender's key, the OpenPGP packets: about 3 kB) leaves too little room for content.
/// A size learned from a 552 refusal never goes below it either.
pub const MIN_MAIL_SIZE: u64 = 16_000;
/// The default `max-mail-size`: 10 MB after encoding, below the 20–50 MB most providers take.
pub const DEFAULT_MAX_MAIL_SIZE: u64 = 10_000_000;
/// A transfer whose parts stop coming is dropped this long after its latest part arrived (7
/// days): by then the sender's resend has brought the changes again in a fresh transfer.
pub const INCOMPLETE_TRANSFER_KEEP_MS: i64 = 7 * 24 * 3600 * 1000;
/// The prefix of the hash, which names its algorithm.
const HASH_PREFIX: &str = "sha256:";
/// Rounds of measuring before [`plan`] gives up (each cuts the parts smaller).
const PLAN_ROUNDS: usize = 12;
/// The smallest piece of content a part carries: below it a mail is nearly all overhead.
const MIN_CHUNK: usize = 1024;

/// What a part mail says about itself and its transfer (protected headers, inside the
/// encryption): see [`PartInfo::headers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// The transfer's id: 32 lower-case hex digits, random per send attempt.
    pub transfer: String,
    /// This part's number, 1 to `count`.
    pub index: u32,
    /// How many parts the transfer has (1 to [`MAX_PARTS`]).
    pub count: u32,
    /// The length in bytes of the whole changes object (in its compact form, or JSON text).
    pub size: u64,
    /// `sha256:` and 64 lower-case hex digits: the SHA-256 of the whole changes object.
    pub hash: String,
    /// The Message-ID of the whole changes object (`<…>`): what the receiver records as merged
    /// and acknowledges.
    pub of: String,
}

/// The header names of a part mail (all inside the encryption).
pub const TRANSFER_HEADER: &str = "Minisync-Transfer";
pub const PART_HEADER: &str = "Minisync-Part";
pub const SIZE_HEADER: &str = "Minisync-Transfer-Size";
pub const HASH_HEADER: &str = "Minisync-Transfer-Hash";
pub const OF_HEADER: &str = "Minisync-Transfer-Of";

impl PartInfo {
    /// The header lines (CRLF-terminated) that carry this part's description.
    pub fn headers(&self) -> String {
        format!(
            "{TRANSFER_HEADER}: {}\r\n{PART_HEADER}: {}/{}\r\n{SIZE_HEADER}: {}\r\n\
             {HASH_HEADER}: {}\r\n{OF_HEADER}: {}\r\n",
            self.transfer, self.index, self.count, self.size, self.hash, self.of
        )
    }

    /// Reads a part's description from its headers (`header` gives a header's trimmed text, ""
    /// when absent). `Ok(None)`: not a part mail (no `Minisync-Transfer` header).
    ///
    /// # Errors
    ///
    /// A header missing or malformed, an index outside 1..=count, a count above [`MAX_PARTS`],
    /// a size above [`MAX_TRANSFER_BYTES`]: the message names the header and the value.
    pub fn from_headers(header: impl Fn(&str) -> String) -> Result<Option<PartInfo>, String> {
        let transfer = header(TRANSFER_HEADER);
        if transfer.is_empty() {
            return Ok(None);
        }
        if transfer.len() != 32 || !is_lower_hex(&transfer) {
            return Err(format!(
                "{TRANSFER_HEADER} {transfer:?} is not a transfer id (32 hex digits)"
            ));
        }
        let part = header(PART_HEADER);
        let (index, count) = part
            .split_once('/')
            .and_then(|(i, n)| Some((i.trim().parse::<u32>().ok()?, n.trim().parse::<u32>().ok()?)))
            .ok_or_else(|| format!("{PART_HEADER} {part:?} is not INDEX/COUNT"))?;
        let size = header(SIZE_HEADER);
        let size: u64 = size
            .parse()
            .map_err(|_| format!("{SIZE_HEADER} {size:?} is not a number of bytes"))?;
        let info = PartInfo {
            transfer,
            index,
            count,
            size,
            hash: header(HASH_HEADER),
            of: header(OF_HEADER),
        };
        info.check()?;
        Ok(Some(info))
    }

    /// Checks the description on its own (no storage, no writes).
    ///
    /// # Errors
    ///
    /// What is out of bounds or malformed, by header name.
    pub fn check(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_PARTS {
            return Err(format!(
                "{PART_HEADER}: a transfer of {} parts (at most {MAX_PARTS} are accepted)",
                self.count
            ));
        }
        if self.index == 0 || self.index > self.count {
            return Err(format!(
                "{PART_HEADER}: part {} of {} (parts are numbered 1 to the count)",
                self.index, self.count
            ));
        }
        if self.size == 0 || self.size > MAX_TRANSFER_BYTES {
            return Err(format!(
                "{SIZE_HEADER}: {} bytes (a transfer carries 1 to {MAX_TRANSFER_BYTES} bytes)",
                self.size
            ));
        }
        if u64::from(self.count) > self.size {
            return Err(format!(
                "{PART_HEADER}: {} parts for {} bytes (every part carries at least one)",
                self.count, self.size
            ));
        }
        let hex = self.hash.strip_prefix(HASH_PREFIX).unwrap_or("");
        if hex.len() != 64 || !is_lower_hex(hex) {
            return Err(format!(
                "{HASH_HEADER} {:?} is not sha256: and 64 hex digits",
                self.hash
            ));
        }
        let of = self.of.as_str();
        if of.len() < 3 || of.len() > 250 || !of.starts_with('<') || !of.ends_with('>') {
            return Err(format!("{OF_HEADER} {of:?} is not a Message-ID"));
        }
        Ok(())
    }

    /// Whether another part's description is of the same transfer as this one (same count,
    /// size, hash and whole message), as every part of one transfer must be.
    ///
    /// # Errors
    ///
    /// The first field that differs, with both values.
    pub fn agrees_with(&self, other: &PartInfo) -> Result<(), String> {
        let t = &self.transfer;
        let differ = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
            Err(format!(
                "part {} of transfer {t} says {what} {a}, an earlier part said {b}: the parts \
                 disagree, so the transfer cannot be put together",
                self.index
            ))
        };
        if self.count != other.count {
            return differ("count", &self.count, &other.count);
        }
        if self.size != other.size {
            return differ("size", &self.size, &other.size);
        }
        if self.hash != other.hash {
            return differ("hash", &self.hash, &other.hash);
        }
        if self.of != other.of {
            return differ("whole message", &self.of, &other.of);
        }
        Ok(())
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `sha256:` and the SHA-256 of `data` in lower-case hex.
pub fn hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(HASH_PREFIX.len() + 64);
    out.push_str(HASH_PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A fresh transfer id: 128 random bits as 32 hex digits.
pub fn new_transfer_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Cuts `body` into consecutive pieces of at most `max` bytes each (at least one byte each).
pub fn split(body: &[u8], max: usize) -> Vec<&[u8]> {
    body.chunks(max.max(1)).collect()
}

/// Puts a complete transfer back together: `chunks` are the parts as (index, bytes) in any order.
///
/// # Errors
///
/// A part missing or twice, an index out of range, a total length other than the announced
/// size, or a hash that does not match: nothing is returned then.
pub fn assemble(info: &PartInfo, chunks: &[(u32, Vec<u8>)]) -> Result<Vec<u8>, String> {
    info.check()?;
    let t = &info.transfer;
    if chunks.len() != info.count as usize {
        return Err(format!(
            "transfer {t}: {} of {} parts are here",
            chunks.len(),
            info.count
        ));
    }
    let mut order: Vec<&(u32, Vec<u8>)> = chunks.iter().collect();
    order.sort_by_key(|(i, _)| *i);
    for (want, (i, _)) in (1..=info.count).zip(&order) {
        if *i != want {
            return Err(format!("transfer {t}: part {want} is missing or twice"));
        }
    }
    let total: u64 = order.iter().map(|(_, c)| c.len() as u64).sum();
    if total != info.size {
        return Err(format!(
            "transfer {t}: its parts hold {total} bytes, it announced {}",
            info.size
        ));
    }
    let mut whole = Vec::with_capacity(total as usize);
    for (_, chunk) in order {
        whole.extend_from_slice(chunk);
    }
    let got = hash(&whole);
    if got != info.hash {
        return Err(format!(
            "transfer {t}: the {total} bytes put together hash to {got}, the parts announced {}; \
             refused, nothing of it was merged",
            info.hash
        ));
    }
    Ok(whole)
}

/// The size to try after a mail of `refused` bytes was refused as too large: half of it, but not
/// below [`MIN_MAIL_SIZE`]. None when it was no larger than that already.
pub fn smaller_limit(refused: u64) -> Option<u64> {
    (refused > MIN_MAIL_SIZE).then(|| (refused / 2).max(MIN_MAIL_SIZE))
}

/// What [`plan`] asks its builder for: the whole changes object, or one part of it.
pub struct Piece<'a> {
    pub body: &'a [u8],
    pub part: Option<PartInfo>,
}

/// Chooses how an outgoing changes object travels so that every finished mail is at most
/// `limit` bytes: `build` makes one finished mail (encrypted, armored, MIME) from a [`Piece`]
/// and `size` measures it. The whole object in one mail when that fits; otherwise a fresh
/// transfer of parts, cut at an estimated size and cut smaller while a part comes out too large
/// (compression makes the size of a part hard to foresee). `of` is the whole object's
/// Message-ID.
///
/// # Errors
///
/// `limit` leaves no room for content, more than [`MAX_PARTS`] parts would be needed, or
/// `build` fails.
pub fn plan<M>(
    body: &[u8],
    of: &str,
    limit: u64,
    mut build: impl FnMut(Piece<'_>) -> Result<M, String>,
    size: impl Fn(&M) -> u64,
) -> Result<Vec<M>, String> {
    let whole = build(Piece { body, part: None })?;
    let whole_size = size(&whole);
    if whole_size <= limit || body.is_empty() {
        return Ok(vec![whole]);
    }
    drop(whole);
    let mut info = PartInfo {
        transfer: new_transfer_id(),
        index: 1,
        count: 1,
        size: body.len() as u64,
        hash: hash(body),
        of: of.to_string(),
    };
    // The fixed cost of a mail: one whose part carries a single byte.
    let fixed = size(&build(Piece {
        body: &body[..1],
        part: Some(info.clone()),
    })?);
    let room = limit.saturating_sub(fixed);
    if room < 2 * MIN_CHUNK as u64 {
        return Err(format!(
            "max-mail-size {limit} bytes leaves no room: a part mail costs {fixed} bytes before \
             any content"
        ));
    }
    let per_byte = whole_size as f64 / body.len() as f64;
    let mut chunk = ((room as f64 / per_byte) * 0.95) as usize;
    for _ in 0..PLAN_ROUNDS {
        if chunk < MIN_CHUNK {
            break;
        }
        let pieces = split(body, chunk);
        if pieces.len() > MAX_PARTS as usize {
            return Err(format!(
                "{} bytes of changes would need {} parts at max-mail-size {limit} bytes (at \
                 most {MAX_PARTS}): raise max-mail-size",
                body.len(),
                pieces.len()
            ));
        }
        info.count = pieces.len() as u32;
        match build_all(&pieces, &info, limit, &mut build, &size)? {
            Ok(mails) => return Ok(mails),
            Err(largest) => {
                let over = (largest.saturating_sub(fixed)).max(1) as f64;
                let shrink = (room as f64 / over).min(0.9);
                chunk = (chunk as f64 * shrink * 0.95) as usize;
            }
        }
    }
    Err(format!(
        "cannot cut {} bytes of changes into mails of at most {limit} bytes",
        body.len()
    ))
}

/// Builds every part; `Ok(Err(size))` when one came out larger than `limit` (its size).
fn build_all<M>(
    pieces: &[&[u8]],
    info: &PartInfo,
    limit: u64,
    build: &mut impl FnMut(Piece<'_>) -> Result<M, String>,
    size: &impl Fn(&M) -> u64,
) -> Result<Result<Vec<M>, u64>, String> {
    let mut mails = Vec::with_capacity(pieces.len());
    for (i, piece) in pieces.iter().enumerate() {
        let part = PartInfo {
            index: i as u32 + 1,
            ..info.clone()
        };
        let mail = build(Piece {
            body: piece,
            part: Some(part),
        })?;
        let s = size(&mail);
        if s > limit {
            return Ok(Err(s));
        }
        mails.push(mail);
    }
    Ok(Ok(mails))
}

#[cfg(test)]
mod tests;
