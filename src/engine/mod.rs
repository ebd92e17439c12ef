//! The sync engine: JSON documents whose replicas converge, with no I/O.
//!
//! A [`Document`] is one replica. Local edits go through paths (`foo.bar[1].baz`); what a peer
//! lacks comes out of [`Document::changes_for`] as a [`Changes`] object; [`Document::apply`] merges
//! one in. The agent and the transports only call into this module; it knows nothing of them.

mod change_index;
mod client_table;
pub mod compact;
mod digest;
mod doc;
mod emit;
mod error;
mod fugue;
mod id_index;
mod json;
mod local_text;
mod merge;
mod part_load;
pub mod path;
mod scalar;
mod snapshot;
mod stamp;
mod streamed;
mod text;
mod text_cols;
mod value_diff;
mod wire;
mod wire_out;

pub use doc::{Document, PeerState, WallClock, common_ids, json_order, random_token};
pub use error::{Error, Result};
pub use merge::{Divergence, MergeOutcome};
pub use part_load::{MOST_NODES, PartLoad, Reach, Wanted};
pub use snapshot::{SaveMark, SavedParts};
pub use stamp::{ClientId, DEFAULT_MAX_SKEW_MS, Hlc, Stamp, system_now_ms};
pub use streamed::Envelope;
pub use value_diff::{Edit, diff};
pub use wire::{
    Changes, ClientState, FORMAT_VERSION, Knowledge, MAX_DEPTH, MAX_ITEMS, MAX_JSON_DEPTH,
    RepairKind,
};

/// The engine's hash maps: foldhash, seeded at random per process (hashbrown's own default),
/// instead of the standard library's SipHash. Keys are stamps and small numbers, hashed millions
/// of times in a full sync; the random seed keeps crafted stamps from colliding on purpose.
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// A set hashed as [`HashMap`].
pub(crate) type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
