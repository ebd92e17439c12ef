//! Errors of the sync engine.
//!
//! Every error names what is wrong and, where it applies, where in the input it was found, so that a
//! user (or the agent's log) can tell a truncated mail from a hostile one without a debugger.

/// Why an engine operation was refused. The replica is unchanged whenever one of these is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The changes text is not JSON, or is truncated.
    #[error("changes are not valid JSON: {0}")]
    Json(String),
    /// Bytes said to be a changes object in the compact form are not one.
    #[error("changes in the compact form are unreadable: {0}")]
    Compact(String),
    /// The changes object does not follow the format; `at` is a JSON path into the object.
    #[error("malformed changes at {at}: {msg}")]
    Malformed { at: String, msg: String },
    /// The changes object was written by a newer minisync.
    #[error(
        "changes use format version {found}, newer than this minisync reads ({supported}): upgrade minisync"
    )]
    UnsupportedVersion { found: u64, supported: u64 },
    /// The changes object was made by an older minisync whose format this build no longer reads.
    #[error(
        "changes in format version {found} come from an older minisync; this one reads version {supported}: upgrade minisync on the replica that sent them"
    )]
    OlderVersion { found: u64, supported: u64 },
    /// The changes object belongs to another document.
    #[error("changes are for document {found:?} but this replica holds document {expected:?}")]
    WrongDocument { expected: String, found: String },
    /// The sender holds another value under a stamp this replica holds: the two replicas have
    /// diverged (one was changed behind the engine's back). Nothing is merged; a repair
    /// (docs/PROTOCOL.md, "Digest") settles it.
    #[error(
        "changes rejected at {at}: stamp {stamp} is used here for another value (the replicas have diverged)"
    )]
    Diverged { at: String, stamp: String },
    /// The changes object is well formed but contradicts what this replica knows.
    #[error("changes rejected at {at}: {msg}")]
    Conflict { at: String, msg: String },
    /// The changes carry a clock value further ahead of this replica's clock than the allowed
    /// skew: the sending client's clock (or one it relays) is wrong, or the sender is hostile.
    /// Nothing is merged; the same changes are accepted once they are within the skew.
    #[error(
        "changes carry a clock value of client {client} {} ahead of this replica's clock (at most {} is accepted): refused; that device's system clock is probably wrong",
        human_ms(*ahead_ms), human_ms(*limit_ms)
    )]
    ClockAhead {
        client: crate::engine::ClientId,
        ahead_ms: u64,
        limit_ms: u64,
    },
    /// Input nests deeper than the engine accepts.
    #[error("{what} nests deeper than {limit} levels")]
    TooDeep { what: &'static str, limit: usize },
    /// A path does not name something that the operation can act on.
    #[error("path {path:?}: {msg}")]
    Path { path: String, msg: String },
    /// A value given to a local operation cannot be stored (for example the root set to a number).
    #[error("invalid value: {0}")]
    Value(String),
    /// A saved replica state could not be restored.
    #[error("saved state is corrupt: {0}")]
    Snapshot(String),
}

impl Error {
    pub(crate) fn malformed(at: impl std::fmt::Display, msg: impl Into<String>) -> Self {
        Error::Malformed {
            at: at.to_string(),
            msg: msg.into(),
        }
    }
    pub(crate) fn conflict(at: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Conflict {
            at: at.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn path(path: &str, msg: impl Into<String>) -> Self {
        Error::Path {
            path: path.to_string(),
            msg: msg.into(),
        }
    }
}

/// A duration in milliseconds as a person reads it ("3 days", "41 years").
pub(crate) fn human_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 6] = [
        (365 * 86_400_000, "year"),
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1000, "second"),
        (1, "millisecond"),
    ];
    let (unit, name) = UNITS
        .iter()
        .copied()
        .find(|(u, _)| ms >= *u)
        .unwrap_or((1, "millisecond"));
    let n = ms / unit;
    format!("{n} {name}{}", if n == 1 { "" } else { "s" })
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, Error>;
