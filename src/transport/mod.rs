//! The one thing the agent knows about carrying changes: the [`Transport`] trait.
//!
//! A transport moves changes objects (as JSON text) and knows nothing of how they merge. Two kinds
//! of delivery exist: *per peer* (mail: one message per document and peer, acknowledged by reply)
//! and *shared* (a folder every replica reads: each replica publishes one base and one latest file
//! that all the others read).

pub mod folder;
pub mod mail;
pub mod parts;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::ClientId;

/// How a transport delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// One message per peer; the agent keeps an outbox and resends.
    PerPeer,
    /// One publication read by everyone.
    Shared,
}

/// What a transport needs to know about a document to receive for it.
#[derive(Debug, Clone)]
pub struct Route {
    /// The document's name in the config.
    pub name: String,
    /// Its document id, when a replica exists here.
    pub doc_id: Option<String>,
    /// This replica's client id, when a replica exists here.
    pub client_id: Option<ClientId>,
    /// The version last merged from each client.
    pub last_received: BTreeMap<ClientId, u64>,
    /// Who may send changes for it (mail addresses; empty for the folder transport). Lets the mail
    /// transport leave a stranger's attachment unopened.
    pub peers: Vec<String>,
}

/// One outgoing changes object.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    pub doc_name: &'a str,
    pub doc_id: &'a str,
    pub client_id: ClientId,
    /// The peer's address (per-peer delivery only).
    pub peer: &'a str,
    pub message_id: &'a str,
    pub in_reply_to: Option<&'a str>,
    /// The changes object: in the compact form for mail, JSON text for a shared folder (see
    /// [`crate::engine::compact`]).
    pub body: &'a [u8],
    /// Whether it carries no changes (a pure acknowledgement).
    pub ack_only: bool,
    /// The sender's version it was made at.
    pub version: u64,
    /// Shared delivery: the full changes at `base_version`, when rewritten this time.
    pub base: Option<&'a [u8]>,
    pub base_version: u64,
    pub base_len: u64,
    /// The peer's binary OpenPGP public key (mail: what the changes are encrypted to; the mail
    /// transport refuses to send changes without it). Unused by shared delivery.
    pub peer_key: Option<&'a [u8]>,
    /// Mail to the own address only: no changes, a request for the whole document from the
    /// account's other devices (this device has it configured but holds no replica yet).
    pub want: bool,
}

/// Which device of an address a mail comes from (mail format 3, inside the encryption): its id
/// (16 letters or digits, one per installation), its name, and the devices of that address its
/// agent was told are removed (`agent device remove`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTag {
    pub id: String,
    pub name: Option<String>,
    pub retired: Vec<String>,
}

/// What the mail transport found out about the key that signed an arrival: the key carried in
/// its `Autocrypt:` header, and that it made the arrival's signature. Whether that is the key
/// pinned for the sender is for the agent to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The signing key's fingerprint (40 upper-case hex digits).
    pub fingerprint: String,
    /// The binary transferable public key.
    pub key: Vec<u8>,
    /// For a hello (a key and no document): whether its sender still lacks our key.
    pub hello: Option<bool>,
}

/// One incoming changes message (or publication), not yet merged.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// The transport's handle for it (an IMAP UID, a folder path).
    pub key: String,
    /// Message-ID, for transports that can deliver twice.
    pub message_id: Option<String>,
    /// Who sent it: an e-mail address, or a client id for shared delivery.
    pub from: String,
    /// The document it names (name for mail, id for a folder).
    pub doc: String,
    pub in_reply_to: Option<String>,
    /// The changes objects in the order to apply them, or why they cannot be read.
    /// Each in the compact form or JSON text ([`crate::engine::Changes::from_bytes`] reads both).
    pub payloads: Result<Vec<Vec<u8>>, String>,
    /// Mail: the verified signer (None when unsigned, undecryptable, or not mail).
    pub sealed: Option<Sealed>,
    /// Mail: the sending device, from the signed headers (None for a hello or unreadable mail).
    pub device: Option<DeviceTag>,
    /// Mail from the own address: a sibling device asks for the whole document.
    pub want: bool,
    /// A whole changes object, one part of a transfer, or a transfer put together.
    pub split: Split,
    /// Mail: when the sender says it sent it (its `Date`, ms since the epoch): what `agent
    /// device list` shows as "last heard", rather than when this device got to read it.
    pub sent_at: Option<i64>,
}

/// Whether an arrival carries a whole changes object, one part of a larger one (mail format 4:
/// a changes object over the account's `max-mail-size` travels in several mails, see
/// [`parts`]), or a transfer the agent put together from the parts it kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Split {
    #[default]
    Whole,
    /// One part mail: its payload is this part's text, not a changes object.
    Part(parts::PartInfo),
    /// A complete transfer put together from its stored parts (the transfer's id).
    Assembled(String),
}

/// What became of an arrival.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Merged (or a harmless duplicate): move it out of the way.
    Processed,
    /// Refused: set aside with the reason.
    Quarantined(String),
    /// Not merged this time (for example a half-delivered folder): leave it to be read again.
    Retry,
}

/// A send that did not go through.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// Try again later (network trouble, SMTP 4xx).
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// Will not succeed as it is (SMTP 5xx); the server's reply is kept for `agent status`.
    #[error("refused: {0}")]
    Permanent(String),
    /// The account, not the message, is the problem (SMTP 535: the login was refused): every
    /// message would fail the same way until the account's settings are fixed, so none is given
    /// up; they wait for the next try.
    #[error("{0}")]
    Account(String),
}

/// A receive-side failure (connection lost, login refused, folder unreadable).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TransportError(pub String);

/// A way to carry changes objects between replicas.
#[async_trait::async_trait]
pub trait Transport: Send + Sync {
    /// A short name for logs and status ("mail", "folder").
    fn name(&self) -> &'static str;
    /// Per-peer or shared delivery.
    fn delivery(&self) -> Delivery;
    /// Delivers one changes object.
    async fn send(&self, out: &Outgoing<'_>) -> Result<(), SendError>;
    /// Sends a hello to a peer whose key is not known yet (mail): our key and no document.
    /// `wants_key`: we lack the peer's key (it answers with a hello of its own).
    ///
    /// # Errors
    ///
    /// [`SendError::Permanent`] for a transport without hellos (shared delivery).
    async fn hello(&self, peer: &str, message_id: &str, wants_key: bool) -> Result<(), SendError> {
        let _ = (peer, message_id, wants_key);
        Err(SendError::Permanent(format!(
            "the {} transport has no hellos",
            self.name()
        )))
    }
    /// Collects what has arrived for these documents.
    async fn receive(&self, routes: &[Route]) -> Result<Vec<Arrival>, TransportError>;
    /// Moves an arrival out of the way once its merge is committed (or quarantines it).
    async fn settle(&self, arrival: &Arrival, how: &Settle) -> Result<(), TransportError>;
    /// Removes what the transport keeps that is no longer needed (mail: processed agent mail older
    /// than the account's `keep-processed`); returns how many items went. Called now and then.
    async fn tidy(&self) -> Result<usize, TransportError> {
        Ok(0)
    }
    /// Waits until something may have arrived, at most `max`, or until `interrupt` is notified (a
    /// local edit): then it returns promptly and keeps its connection for the next pass.
    async fn wait(
        &self,
        max: Duration,
        interrupt: &tokio::sync::Notify,
    ) -> Result<(), TransportError>;
}
