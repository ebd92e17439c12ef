//! Client ids, change stamps and the hybrid logical clock that orders them.
//!
//! Conflicts are decided by comparing [`Stamp`]s: a 64-bit hybrid logical clock value and, to break
//! ties, the id of the client that made the change. Every replica computes the same order, so
//! replicas that have seen the same changes hold the same values, whatever their wall clocks say.

use std::fmt;

use std::num::NonZeroU32;

use crate::engine::client_table;
use crate::engine::error::{Error, Result};

/// Number of characters in a client id.
pub const CLIENT_ID_LEN: usize = 16;

/// Stamps at or above this value are refused: they could only come from a broken or hostile peer,
/// and accepting one would let it push every clock to the end of time.
pub const MAX_HLC: u64 = 1 << 62;

/// Bits of the clock value that count events within one millisecond.
pub(crate) const COUNTER_BITS: u32 = 16;

/// The latest wall time (ms since the epoch, about year 3084) a local clock reads from its wall
/// clock. A wall clock beyond it is broken; capping it here leaves 2^61 clock values of headroom
/// between the capped wall time and [`MAX_HLC`], so the clock keeps advancing by its counter.
pub const MAX_WALL_MS: u64 = 1 << 45;

/// How far ahead of this replica's clock a peer's stamps may be, by default: one day. Stamps
/// further ahead come from a broken or hostile clock and are refused (see docs/PROTOCOL.md,
/// "Clock skew"); accepting them would drag every replica's clock along.
pub const DEFAULT_MAX_SKEW_MS: u64 = 24 * 60 * 60 * 1000;

/// A replica's identity: 16 ASCII letters or digits. Held as its number in the process's table
/// of ids (see `client_table.rs`), so that a stamp is 16 bytes; ids compare in the order of
/// their text.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientId(NonZeroU32);

impl Ord for ClientId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        if self.0 == other.0 {
            return std::cmp::Ordering::Equal;
        }
        self.to_bytes().cmp(&other.to_bytes())
    }
}

impl PartialOrd for ClientId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl ClientId {
    /// A fresh random id (lower-case letters and digits), as a new replica needs.
    pub fn random() -> Self {
        loop {
            if let Some(id) = ClientId::made(client_table::random_text()) {
                return id;
            }
        }
    }

    /// The id of these bytes, made by this process (random, or derived from a name), not read
    /// from outside: not bounded by [`client_table::MAX_READ`]. `None` only once all 2^32
    /// numbers are taken, which no process lives to see.
    pub(crate) fn made(bytes: [u8; CLIENT_ID_LEN]) -> Option<Self> {
        client_table::number(bytes, None).map(ClientId)
    }

    /// Parses an id, refusing anything but exactly 16 ASCII letters and digits.
    ///
    /// # Errors
    ///
    /// [`Error::Value`] for any other text, and once the process holds
    /// `client_table::MAX_READ` distinct ids, for an id it does not hold yet.
    pub fn parse(s: &str) -> Result<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != CLIENT_ID_LEN || !bytes.iter().all(u8::is_ascii_alphanumeric) {
            return Err(Error::Value(format!(
                "client id {s:?} is not {CLIENT_ID_LEN} ASCII letters or digits"
            )));
        }
        let mut v = [0u8; CLIENT_ID_LEN];
        v.copy_from_slice(bytes);
        client_table::number(v, Some(client_table::MAX_READ))
            .map(ClientId)
            .ok_or_else(|| {
                Error::Value(format!(
                    "client id {s:?} is one too many: this process already took in {} \
                     distinct client ids from peers",
                    client_table::MAX_READ
                ))
            })
    }
}

impl ClientId {
    /// The id's 16 ASCII bytes.
    pub(crate) fn to_bytes(self) -> [u8; 16] {
        client_table::bytes(self.0)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        // Only ASCII alphanumerics can be stored (see `parse` and `random`).
        f.write_str(std::str::from_utf8(&bytes).unwrap_or("????????????????"))
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientId({self})")
    }
}

/// The identity and order of one change: clock value first, client id to break ties.
///
/// Stamps also name things: a node's id is the stamp of the write that created it, and an array
/// element's id is the stamp of its insertion.
///
/// Packed to 4-byte alignment: 12 bytes, not 16 with 4 of padding. A replica holds two or three
/// stamps per slot, so this is a tenth of a large document's memory (an array element 64 bytes,
/// not 72); the clock value is read unaligned, which costs nothing measurable on current CPUs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(Rust, packed(4))]
pub struct Stamp {
    /// Hybrid logical clock value: wall-clock milliseconds << 16 plus a counter.
    pub hlc: u64,
    /// Who made the change.
    pub client: ClientId,
}

impl Stamp {
    /// Older than every real stamp: the stamp of a key that was never written.
    pub const ZERO: Stamp = Stamp {
        hlc: 0,
        client: ClientId(client_table::ZERO_NUMBER),
    };

    /// Parses the wire form `<hlc in hex>-<client id>`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::Value(format!("stamp {s:?} is not <hex clock>-<client id>"));
        let (h, c) = s.split_once('-').ok_or_else(bad)?;
        if h.is_empty() || h.len() > 16 {
            return Err(bad());
        }
        let hlc = u64::from_str_radix(h, 16).map_err(|_| bad())?;
        Stamp::checked(hlc, c, || s.to_string())
    }

    /// The stamp of clock value `hlc` and client `c` (its text), as [`Stamp::parse`] reads
    /// `{hlc:x}-{c}`.
    ///
    /// # Errors
    ///
    /// [`Error::Value`]: a clock value at or above 2^62, a client that is not 16 ASCII letters
    /// or digits, or one client more than the process's table of ids takes from peers.
    pub fn of_parts(hlc: u64, c: &str) -> Result<Self> {
        Stamp::checked(hlc, c, || format!("{hlc:x}-{c}"))
    }

    /// The stamp of `hlc` and `c`, checked; `text` is the stamp's text for error messages.
    fn checked(hlc: u64, c: &str, text: impl Fn() -> String) -> Result<Self> {
        if hlc >= MAX_HLC {
            return Err(Error::Value(format!(
                "stamp {:?} lies in the far future (clock value at or above 2^62)",
                text()
            )));
        }
        let well_formed = c.len() == CLIENT_ID_LEN && c.bytes().all(|b| b.is_ascii_alphanumeric());
        if !well_formed {
            return Err(Error::Value(format!(
                "stamp {:?} is not <hex clock>-<client id>",
                text()
            )));
        }
        // A well-formed id is refused only when the table of ids is full: said as such.
        Ok(Stamp {
            hlc,
            client: ClientId::parse(c)?,
        })
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (hlc, client) = (self.hlc, self.client);
        write!(f, "{hlc:x}-{client}")
    }
}

impl fmt::Debug for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Stamp({self})")
    }
}

impl serde::Serialize for Stamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Stamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Stamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        ClientId::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Hybrid logical clock: never behind the wall clock, never behind any stamp it has seen, and
/// strictly increasing. A replica whose wall clock is hours ahead only makes the others' clocks
/// jump forward with it; every replica still orders every pair of changes the same way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hlc {
    last: u64,
}

impl Hlc {
    /// A clock that has seen `last`.
    pub fn at(last: u64) -> Self {
        Hlc { last }
    }

    /// The last value handed out or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The next clock value for a local change at wall time `now_ms`: strictly greater than every
    /// value handed out or observed before. A wall clock past `MAX_WALL_MS` counts as that time,
    /// and remote values are bounded by the skew rule, so the counter has 2^61 steps of room.
    pub fn tick(&mut self, now_ms: u64) -> u64 {
        self.last = (self.last + 1).max(physical(now_ms)).min(MAX_HLC - 1);
        self.last
    }

    /// Hands out `n` consecutive clock values, the first at least `floor`, without reading the
    /// wall clock: the ids of characters typed into a text (see `text.rs`). Consecutive local
    /// inserts so get consecutive ids and stay one run.
    pub fn reserve(&mut self, floor: u64, n: u64) -> u64 {
        let base = (self.last + 1).max(floor).min(MAX_HLC - 1);
        self.last = base.saturating_add(n.saturating_sub(1)).min(MAX_HLC - 1);
        base
    }

    /// Moves the clock past a value seen in a remote change.
    pub fn observe(&mut self, hlc: u64) {
        self.last = self.last.max(hlc.min(MAX_HLC - 1));
    }
}

/// The clock value of wall time `now_ms` (capped at [`MAX_WALL_MS`]) with a zero counter.
pub fn physical(now_ms: u64) -> u64 {
    now_ms.min(MAX_WALL_MS) << COUNTER_BITS
}

/// The wall time in milliseconds a clock value stands for.
pub fn wall_ms(hlc: u64) -> u64 {
    hlc >> COUNTER_BITS
}

/// The wall clock in milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn system_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_round_trip_and_order_like_text() {
        let a = ClientId::parse("aaaaaaaaaaaaaaaa").unwrap();
        let b = ClientId::parse("aaaaaaaaaaaaaaab").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "aaaaaaaaaaaaaaaa");
        let r = ClientId::random();
        assert_eq!(ClientId::parse(&r.to_string()).unwrap(), r);
        assert!(ClientId::parse("short").is_err());
        assert!(ClientId::parse("aaaaaaaaaaaaaaa-").is_err());
    }

    #[test]
    fn stamps_round_trip_and_refuse_the_far_future() {
        let s = Stamp {
            hlc: 0x1234,
            client: ClientId::parse("abcdefghijklmnop").unwrap(),
        };
        assert_eq!(Stamp::parse(&s.to_string()).unwrap(), s);
        assert!(Stamp::parse("4000000000000000-abcdefghijklmnop").is_err());
        assert!(Stamp::parse("xyz-abcdefghijklmnop").is_err());
        assert!(Stamp::parse("12").is_err());
    }

    #[test]
    fn clock_is_monotonic_and_follows_remote_values() {
        let mut c = Hlc::default();
        let a = c.tick(1000);
        let b = c.tick(1000);
        assert!(b > a);
        c.observe(a + (5 << 30));
        let d = c.tick(1000);
        assert!(d > a + (5 << 30));
        // A wall clock that goes backwards does not move the clock back.
        let e = c.tick(1);
        assert!(e > d);
    }
}
