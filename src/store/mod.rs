//! All agent state in one SQLite database: documents with their sync state, per-peer delivery
//! state, the outbox, the Message-IDs already processed and the IMAP cursors.
//!
//! The database runs in WAL mode with `synchronous=FULL`, so a committed merge survives a crash,
//! and every change that must happen together (a merge, the note that its mail was seen, the
//! acknowledgement it calls for) is one transaction. The CLI and a running agent may use the same
//! database at once: document updates take the write lock first (`BEGIN IMMEDIATE`) and reload a
//! document another process changed.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::engine::{self, Document, Reach, SaveMark};

mod devices;
mod files;
mod health;
mod keys;
mod quarantine;
mod replica;
mod requests;
mod transfers;
pub use devices::{DeviceClient, DeviceRow, ThisDevice};
pub use files::FileInfo;
pub use health::{Health, HealthChange, health};
pub use keys::PeerKey;
pub use quarantine::Quarantined;
pub(crate) use quarantine::{NOT_A_PEER, UNDECRYPTABLE};
pub use requests::{Answer, DocRequest, DocServer};
pub use transfers::{IncomingPart, LearnedLimit, Transfer};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("cannot create state directory {path}: {source}")]
    Dir {
        path: String,
        source: std::io::Error,
    },
    #[error("document {name:?}: {source}")]
    Document { name: String, source: engine::Error },
    #[error(
        "no replica of document {0:?} here yet (start it with `agent doc import`, or receive it from a peer with `agent sync`)"
    )]
    NoDocument(String),
}

impl StoreError {
    /// An engine error about document `name` as a store error (for `map_err`).
    pub(crate) fn in_document(name: &str) -> impl Fn(engine::Error) -> StoreError + '_ {
        move |source| StoreError::Document {
            name: name.to_string(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Milliseconds since the Unix epoch: the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    engine::system_now_ms() as i64
}

/// How long a processed Message-ID is remembered for duplicate detection: 90 days.
pub const KEEP_SEEN_MS: i64 = 90 * 24 * 3600 * 1000;
/// How long sent and refused outbox items are kept (for `agent status`): 30 days.
pub const KEEP_OUTBOX_MS: i64 = 30 * 24 * 3600 * 1000;

const SCHEMA: &str = r#"
-- `state` (the replica's head, its nodes being rows of `doc_nodes`, see replica.rs; or a whole
-- replica of megabytes saved by an older version) comes last: SQLite reads a row's columns in
-- order, so a column stored after it would cost a walk through its overflow pages.
CREATE TABLE IF NOT EXISTS documents (
    name TEXT PRIMARY KEY,
    doc_id TEXT NOT NULL,
    rev INTEGER NOT NULL,
    edited_at INTEGER,
    updated_at INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    doc TEXT NOT NULL,
    peer TEXT NOT NULL,
    client_id TEXT,
    sent_version INTEGER NOT NULL DEFAULT 0,
    last_sent_at INTEGER,
    last_received_at INTEGER,
    last_error TEXT,
    failing INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (doc, peer)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc TEXT NOT NULL,
    peer TEXT NOT NULL,
    message_id TEXT NOT NULL UNIQUE,
    in_reply_to TEXT,
    body BLOB NOT NULL,
    ack_only INTEGER NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_at);
CREATE TABLE IF NOT EXISTS seen (
    message_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    mailbox TEXT PRIMARY KEY,
    uid_validity INTEGER NOT NULL,
    next_uid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS forks (
    doc TEXT NOT NULL,
    peer TEXT NOT NULL,
    doc_id TEXT NOT NULL,
    changes TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (doc, peer)
);
-- The last pass's receive-side error of each transport ("mail", "folder"); the row goes with the
-- first pass that receives without one. `since`: when the failing began.
CREATE TABLE IF NOT EXISTS transport_errors (
    transport TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    since INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS published (
    doc TEXT PRIMARY KEY,
    base_version INTEGER NOT NULL,
    base_len INTEGER NOT NULL,
    fingerprint TEXT NOT NULL
);
-- `agent doc log`: one row per local edit and per merged arrival, the last KEEP_CHANGES per document.
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc TEXT NOT NULL,
    at INTEGER NOT NULL,
    who TEXT NOT NULL,
    paths TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_doc ON changes (doc, id);
"#;

/// A message waiting to go out (or sent, or failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutItem {
    pub id: i64,
    pub doc: String,
    pub peer: String,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    /// The changes object in the compact form (older versions queued JSON text; both are read).
    pub body: Vec<u8>,
    pub ack_only: bool,
    pub version: u64,
    pub attempts: u32,
}

/// Outbox mail for one peer of one document that waits for a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBack {
    pub doc: String,
    pub peer: String,
    pub count: usize,
    /// When the first of them is tried again (ms since the epoch).
    pub until: i64,
    pub error: Option<String>,
}

/// Delivery state of one peer of one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRow {
    pub peer: String,
    pub client_id: Option<String>,
    pub sent_version: u64,
    pub last_sent_at: Option<i64>,
    pub last_received_at: Option<i64>,
    pub last_error: Option<String>,
    pub failing: bool,
}

/// What the shared-medium publisher last wrote for a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Published {
    pub base_version: u64,
    pub base_len: u64,
    pub fingerprint: String,
}

/// A replica loaded from the database: at which revision, and where its last save left off
/// (None: loaded from a whole replica, so the next save writes every node).
struct Loaded {
    rev: i64,
    doc: Document,
    mark: Option<SaveMark>,
}

/// The database, with a cache of loaded documents keyed by revision.
/// How long a statement waits for another process's lock (an agent and a command at once).
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Puts the database in WAL mode (readers never wait for the writer). Switching a new database
/// needs an exclusive lock that SQLite does not wait for through the busy handler, so a process
/// opening it while another one creates it retries here for up to `BUSY_TIMEOUT`.
fn use_wal(conn: &Connection) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0)) {
            Ok(_) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && start.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

pub struct Store {
    conn: Connection,
    cache: HashMap<String, Loaded>,
    /// Applied to every replica loaded (see `Document::set_max_clock_skew`).
    max_clock_skew: Duration,
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        use_wal(&conn)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // 512 KiB of page cache, not SQLite's 2 MB: the replica is loaded once and then saved a
        // few changed rows at a time, so the cache holds little more than the B-tree's inner
        // pages, and the running agent's memory is mostly its replica (issue 16: ≤ 5× the JSON).
        conn.pragma_update(None, "cache_size", -512)?;
        // One write transaction taken up front (IMMEDIATE waits for the lock through the busy
        // handler), so two processes creating the tables at once never see each other's half.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        tx.execute_batch(health::SCHEMA)?;
        tx.execute_batch(quarantine::SCHEMA)?;
        quarantine::migrate(&tx)?;
        tx.execute_batch(keys::SCHEMA)?;
        tx.execute_batch(files::SCHEMA)?;
        tx.execute_batch(replica::SCHEMA)?;
        tx.execute_batch(devices::SCHEMA)?;
        tx.execute_batch(transfers::SCHEMA)?;
        tx.execute_batch(requests::SCHEMA)?;
        tx.commit()?;
        Ok(Store {
            conn,
            cache: HashMap::new(),
            max_clock_skew: Duration::from_millis(engine::DEFAULT_MAX_SKEW_MS),
        })
    }

    /// How far ahead of this machine's clock a peer's stamps may be, for every replica loaded
    /// from now on (`[agent] max-clock-skew`).
    pub fn set_max_clock_skew(&mut self, skew: Duration) {
        self.max_clock_skew = skew;
        self.cache.clear();
    }

    /// Names of the stored documents.
    pub fn doc_names(&self) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT name FROM documents ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether a document exists.
    pub fn has_doc(&self, name: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM documents WHERE name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Stores a new document (refuses to overwrite one).
    pub fn create_doc(&mut self, name: &str, doc: &Document, edited: bool) -> Result<()> {
        let tx = self.conn.transaction()?;
        Self::insert_doc(&tx, name, doc, 1, edited)?;
        Ok(tx.commit()?)
    }

    /// Writes a document row at revision `rev`, with all its nodes.
    fn insert_doc(
        conn: &Connection,
        name: &str,
        doc: &Document,
        rev: i64,
        edited: bool,
    ) -> Result<()> {
        let now = now_ms();
        let (head, _) = replica::write(conn, name, doc, None)?;
        conn.execute(
            "INSERT INTO documents (name, doc_id, state, rev, edited_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, doc.id(), head, rev, edited.then_some(now), now],
        )?;
        Ok(())
    }

    /// The current revision of a document (grows with every saved change).
    pub fn doc_rev(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT rev FROM documents WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?)
    }

    fn load_into_cache(
        conn: &Connection,
        cache: &mut HashMap<String, Loaded>,
        name: &str,
        skew: Duration,
    ) -> Result<()> {
        let rev: i64 = conn
            .query_row("SELECT rev FROM documents WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::NoDocument(name.to_string()))?;
        if cache.get(name).is_some_and(|l| l.rev == rev) {
            return Ok(());
        }
        let state: String =
            conn.query_row("SELECT state FROM documents WHERE name = ?1", [name], |r| {
                r.get(0)
            })?;
        let (mut doc, mark) = replica::read(conn, name, &state)?;
        doc.set_max_clock_skew(skew);
        cache.insert(name.to_string(), Loaded { rev, doc, mark });
        Ok(())
    }

    /// Reads a document (from the cache when it is current).
    pub fn read_doc<R>(&mut self, name: &str, f: impl FnOnce(&Document) -> R) -> Result<R> {
        // One transaction: the revision, the head and the node rows are of one commit.
        let tx = self.conn.transaction()?;
        Self::load_into_cache(&tx, &mut self.cache, name, self.max_clock_skew)?;
        drop(tx);
        let loaded = self
            .cache
            .get(name)
            .ok_or_else(|| StoreError::NoDocument(name.to_string()))?;
        Ok(f(&loaded.doc))
    }

    /// Reads a document as [`Store::read_doc`], loading of a replica not loaded here only the
    /// nodes `reach` names ([`engine::PartLoad`]); the replica loaded in part is not kept.
    pub fn read_doc_reaching<R>(
        &mut self,
        name: &str,
        reach: &[Reach],
        f: impl FnOnce(&Document) -> R,
    ) -> Result<R> {
        if self.cache.contains_key(name) {
            return self.read_doc(name, f);
        }
        // One transaction: the head and the nodes read are of one revision.
        let tx = self.conn.transaction()?;
        let part = replica::read_reaching(&tx, name, reach)?;
        drop(tx);
        match part {
            Some((_, doc, _)) => Ok(f(&doc)),
            None => self.read_doc(name, f),
        }
    }

    /// Changes a document atomically: `f` gets the document and the open transaction (for the
    /// writes that must commit with it) and says whether the document must be saved and whether
    /// the change was a local edit. If `f` fails nothing is written and the cached copy is dropped.
    pub fn update_doc<R, E>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut Document, &Transaction) -> std::result::Result<(R, Save), E>,
    ) -> std::result::Result<R, E>
    where
        E: From<StoreError>,
    {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        Self::load_into_cache(&tx, &mut self.cache, name, self.max_clock_skew)?;
        let Some(Loaded { rev, doc, mark }) = self.cache.get_mut(name) else {
            return Err(StoreError::NoDocument(name.to_string()).into());
        };
        let (value, save) = match f(doc, &tx) {
            Ok(v) => v,
            Err(e) => {
                self.cache.remove(name);
                return Err(e);
            }
        };
        match Self::save_doc(tx, name, doc, *mark, *rev, save) {
            Ok(Some((new_rev, m))) => {
                *rev = new_rev;
                *mark = Some(m);
            }
            Ok(None) => {}
            Err(e) => {
                self.cache.remove(name);
                return Err(e.into());
            }
        }
        Ok(value)
    }

    /// A local edit of a document as [`Store::update_doc`], loading of a replica not loaded here
    /// only the nodes `reach` names ([`engine::PartLoad`]): so a command run without the agent edits a
    /// large replica in a few milliseconds rather than the time a whole load takes. The edit and
    /// its save are the same as on the whole replica; the replica loaded in part is not kept. `f`
    /// runs again on the whole replica when the edit needs more than `reach` named or fails
    /// (nothing of its first run is written).
    pub fn update_doc_reaching<R, E>(
        &mut self,
        name: &str,
        reach: &[Reach],
        mut f: impl FnMut(&mut Document, &Transaction) -> std::result::Result<(R, Save), E>,
    ) -> std::result::Result<R, E>
    where
        E: From<StoreError>,
    {
        if self.cache.contains_key(name) {
            return self.update_doc(name, f);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let Some((rev, mut doc, mark)) = replica::read_reaching(&tx, name, reach)? else {
            drop(tx);
            return self.update_doc(name, f);
        };
        doc.set_max_clock_skew(self.max_clock_skew);
        // A refused edit is made again on the whole replica, so that what it says is exactly
        // what the whole replica says (it is rare: a path that leads nowhere, a wrong value).
        let result = f(&mut doc, &tx);
        let Ok((value, save)) = result.map_err(drop) else {
            drop(tx);
            return self.update_doc(name, f);
        };
        if !doc.edited_within_part(mark) {
            tracing::debug!("{name}: the edit reached past the nodes loaded; loading it whole");
            drop(tx);
            return self.update_doc(name, f);
        }
        Self::save_doc(tx, name, &doc, Some(mark), rev, save)?;
        Ok(value)
    }

    /// Saves `doc` (loaded at revision `rev`, last saved at `mark`) as `save` says and commits
    /// `tx`: the new revision and save mark, or `None` when there was nothing to save.
    fn save_doc(
        tx: Transaction,
        name: &str,
        doc: &Document,
        mark: Option<SaveMark>,
        rev: i64,
        save: Save,
    ) -> Result<Option<(i64, SaveMark)>> {
        if save == Save::No {
            tx.commit()?;
            return Ok(None);
        }
        let now = now_ms();
        let edited = save == Save::Edited;
        let new_rev = rev + 1;
        let (head, new_mark) = replica::write(&tx, name, doc, mark)?;
        tx.execute(
            "UPDATE documents SET state = ?1, rev = ?2, updated_at = ?3, edited_at = CASE WHEN ?4 THEN COALESCE(edited_at, ?3) ELSE edited_at END WHERE name = ?5",
            params![head, new_rev, now, edited, name],
        )?;
        tx.commit()?;
        Ok(Some((new_rev, new_mark)))
    }

    /// When the document's oldest unsent change was made (None: nothing waiting).
    pub fn edited_at(&self, name: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT edited_at FROM documents WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Clears the "changes waiting" mark if no newer change came in after `rev`.
    pub fn clear_edited(&self, name: &str, rev: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE documents SET edited_at = NULL WHERE name = ?1 AND rev = ?2",
            params![name, rev],
        )?;
        Ok(())
    }

    /// A peer's delivery state (default when never seen).
    pub fn peer(&self, doc: &str, peer: &str) -> Result<PeerRow> {
        Ok(self
            .conn
            .query_row(
                "SELECT peer, client_id, sent_version, last_sent_at, last_received_at, last_error, failing FROM peers WHERE doc = ?1 AND peer = ?2",
                params![doc, peer],
                peer_row,
            )
            .optional()?
            .unwrap_or(PeerRow {
                peer: peer.to_string(),
                ..PeerRow::default()
            }))
    }

    /// All peers recorded for a document.
    pub fn peers(&self, doc: &str) -> Result<Vec<PeerRow>> {
        let mut st = self.conn.prepare(
            "SELECT peer, client_id, sent_version, last_sent_at, last_received_at, last_error, failing FROM peers WHERE doc = ?1 ORDER BY peer",
        )?;
        let rows = st.query_map([doc], peer_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Updates one column group of a peer row, creating the row if needed.
    pub fn touch_peer(conn: &Connection, doc: &str, peer: &str, change: PeerChange) -> Result<()> {
        conn.execute(
            "INSERT OR IGNORE INTO peers (doc, peer) VALUES (?1, ?2)",
            params![doc, peer],
        )?;
        let now = now_ms();
        match change {
            PeerChange::Pin(client) => conn.execute(
                "UPDATE peers SET client_id = ?3 WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, client],
            )?,
            PeerChange::Received => conn.execute(
                "UPDATE peers SET last_received_at = ?3 WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, now],
            )?,
            PeerChange::Queued(version) => conn.execute(
                "UPDATE peers SET sent_version = MAX(sent_version, ?3) WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, version as i64],
            )?,
            PeerChange::Sent => conn.execute(
                "UPDATE peers SET last_sent_at = ?3, last_error = NULL, failing = 0 WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, now],
            )?,
            PeerChange::Failed { error, failing } => conn.execute(
                "UPDATE peers SET last_error = ?3, failing = ?4 WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, error, failing],
            )?,
        };
        Ok(())
    }

    /// The connection, for peer updates outside a document transaction.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Puts a message in the outbox, dropping unsent older ones for the same document and peer,
    /// those that already failed to go out included (an SMTP outage): every changes object is
    /// complete since the peer's last acknowledgement, so the newest one carries everything the
    /// older ones did, and sending them too would only repeat it. The new item takes over their
    /// count of failed attempts, so that a long outage still marks the peer failing.
    pub fn enqueue(conn: &Connection, item: &OutItem) -> Result<()> {
        const SUPERSEDED: &str = "FROM outbox WHERE doc = ?1 AND peer = ?2 AND status = 'pending' AND (ack_only = 1 OR ?3 = 0)";
        let attempts: i64 = conn.query_row(
            &format!("SELECT COALESCE(MAX(attempts), 0) {SUPERSEDED}"),
            params![item.doc, item.peer, item.ack_only],
            |r| r.get(0),
        )?;
        conn.execute(
            &format!("DELETE {SUPERSEDED}"),
            params![item.doc, item.peer, item.ack_only],
        )?;
        conn.execute(
            "INSERT INTO outbox (doc, peer, message_id, in_reply_to, body, ack_only, version, next_attempt_at, created_at, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9)",
            params![
                item.doc,
                item.peer,
                item.message_id,
                item.in_reply_to,
                item.body,
                item.ack_only,
                item.version as i64,
                now_ms(),
                attempts
            ],
        )?;
        Ok(())
    }

    /// Outbox items whose time has come.
    pub fn due(&self, now: i64) -> Result<Vec<OutItem>> {
        let mut st = self.conn.prepare(
            "SELECT id, doc, peer, message_id, in_reply_to, body, ack_only, version, attempts FROM outbox WHERE status = 'pending' AND next_attempt_at <= ?1 ORDER BY id",
        )?;
        let rows = st.query_map([now], out_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Pending outbox items not due yet (waiting for a retry), per document and peer.
    pub fn held_back(&self, now: i64) -> Result<Vec<HeldBack>> {
        let mut st = self.conn.prepare(
            "SELECT doc, peer, COUNT(*), MIN(next_attempt_at), MAX(last_error) FROM outbox WHERE status = 'pending' AND next_attempt_at > ?1 GROUP BY doc, peer ORDER BY doc, peer",
        )?;
        let rows = st.query_map([now], |r| {
            Ok(HeldBack {
                doc: r.get(0)?,
                peer: r.get(1)?,
                count: r.get::<_, i64>(2)? as usize,
                until: r.get(3)?,
                error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// When the next pending outbox item is due.
    pub fn next_due(&self) -> Result<Option<i64>> {
        Ok(self.conn.query_row(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE status = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Pending items for a document and peer.
    pub fn pending_for(&self, doc: &str, peer: &str) -> Result<usize> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE doc = ?1 AND peer = ?2 AND status = 'pending'",
            params![doc, peer],
            |r| r.get::<_, i64>(0),
        )? as usize)
    }

    /// Marks an item accepted by the server.
    pub fn mark_sent(&self, id: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'sent', last_error = NULL WHERE id = ?1",
            [id],
        )?;
        Ok(())
    }

    /// Schedules another attempt after a temporary failure.
    pub fn mark_retry(&self, id: i64, error: &str, at: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3 WHERE id = ?1",
            params![id, error, at],
        )?;
        Ok(())
    }

    /// Marks an item permanently refused.
    pub fn mark_failed(&self, id: i64, error: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET status = 'failed', attempts = attempts + 1, last_error = ?2 WHERE id = ?1",
            params![id, error],
        )?;
        Ok(())
    }

    /// Counts of outbox items by status, and sent mails per peer of a document.
    pub fn sent_count(&self, doc: &str, peer: &str) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE doc = ?1 AND peer = ?2 AND status = 'sent'",
            params![doc, peer],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Whether a Message-ID was already processed.
    pub fn seen(&self, message_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM seen WHERE message_id = ?1",
                [message_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records a processed Message-ID (inside the merge's transaction).
    pub fn mark_seen(conn: &Connection, message_id: &str) -> Result<()> {
        conn.execute(
            "INSERT OR IGNORE INTO seen (message_id, at) VALUES (?1, ?2)",
            params![message_id, now_ms()],
        )?;
        Ok(())
    }

    /// The IMAP cursor of a mailbox: (UIDVALIDITY, next UID to look at).
    pub fn cursor(&self, mailbox: &str) -> Result<Option<(u32, u32)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT uid_validity, next_uid FROM cursors WHERE mailbox = ?1",
                [mailbox],
                |r| Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)? as u32)),
            )
            .optional()?)
    }

    /// Moves the IMAP cursor.
    pub fn set_cursor(&self, mailbox: &str, uid_validity: u32, next_uid: u32) -> Result<()> {
        self.conn.execute(
            "INSERT INTO cursors (mailbox, uid_validity, next_uid) VALUES (?1, ?2, ?3) ON CONFLICT(mailbox) DO UPDATE SET uid_validity = ?2, next_uid = ?3",
            params![mailbox, uid_validity as i64, next_uid as i64],
        )?;
        Ok(())
    }

    /// Records how a pass went for a transport: its error, or None when it received without one.
    pub fn set_transport_error(&self, transport: &str, error: Option<&str>) -> Result<()> {
        match error {
            Some(e) => self.conn.execute(
                "INSERT INTO transport_errors (transport, error, since) VALUES (?1, ?2, ?3) ON CONFLICT(transport) DO UPDATE SET error = ?2",
                params![transport, e, now_ms()],
            )?,
            None => self.conn.execute(
                "DELETE FROM transport_errors WHERE transport = ?1",
                [transport],
            )?,
        };
        Ok(())
    }

    /// Transports whose last pass failed: (transport, error, since when).
    pub fn transport_errors(&self) -> Result<Vec<(String, String, i64)>> {
        let mut st = self
            .conn
            .prepare("SELECT transport, error, since FROM transport_errors ORDER BY transport")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// What was last published to a shared medium for a document.
    pub fn published(&self, doc: &str) -> Result<Option<Published>> {
        Ok(self
            .conn
            .query_row(
                "SELECT base_version, base_len, fingerprint FROM published WHERE doc = ?1",
                [doc],
                |r| {
                    Ok(Published {
                        base_version: r.get::<_, i64>(0)? as u64,
                        base_len: r.get::<_, i64>(1)? as u64,
                        fingerprint: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a publication.
    pub fn set_published(&self, doc: &str, p: &Published) -> Result<()> {
        self.conn.execute(
            "INSERT INTO published (doc, base_version, base_len, fingerprint) VALUES (?1, ?2, ?3, ?4) ON CONFLICT(doc) DO UPDATE SET base_version = ?2, base_len = ?3, fingerprint = ?4",
            params![doc, p.base_version as i64, p.base_len as i64, p.fingerprint],
        )?;
        Ok(())
    }

    /// Forgets what is no longer needed: Message-IDs seen more than [`KEEP_SEEN_MS`] ago (a
    /// duplicate that late is not expected; if one came, merging it again is harmless anyway) and
    /// outbox items sent or refused more than [`KEEP_OUTBOX_MS`] ago (their bodies are whole
    /// changes objects), and `doc` commands asked more than an hour ago (`requests.rs`).
    /// Returns how many rows went.
    pub fn prune(&self, now: i64) -> Result<usize> {
        let seen = self
            .conn
            .execute("DELETE FROM seen WHERE at < ?1", [now - KEEP_SEEN_MS])?;
        let handled = self
            .conn
            .execute("DELETE FROM handled WHERE at < ?1", [now - KEEP_SEEN_MS])?;
        let outbox = self.conn.execute(
            "DELETE FROM outbox WHERE status != 'pending' AND created_at < ?1",
            [now - KEEP_OUTBOX_MS],
        )?;
        let requests = Self::prune_doc_requests(&self.conn, now)?;
        Ok(seen + handled + outbox + requests)
    }

    /// Keeps the latest full changes object of a peer whose document of this name is another
    /// document (both sides created it), so that `agent doc adopt` can take it later.
    pub fn record_fork(&self, doc: &str, peer: &str, doc_id: &str, changes: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO forks (doc, peer, doc_id, changes, at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![doc, peer, doc_id, changes, now_ms()],
        )?;
        Ok(())
    }

    /// The peer's other document of this name: (its id, its changes object).
    pub fn fork(&self, doc: &str, peer: &str) -> Result<Option<(String, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT doc_id, changes FROM forks WHERE doc = ?1 AND peer = ?2",
                params![doc, peer],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Forgets a fork once the peer's mail merges (one of the two sides adopted the other's).
    pub fn clear_fork(conn: &Connection, doc: &str, peer: &str) -> Result<()> {
        conn.execute(
            "DELETE FROM forks WHERE doc = ?1 AND peer = ?2",
            params![doc, peer],
        )?;
        // The mail quarantined for the fork is settled with it.
        Self::unquarantine_peer(conn, doc, peer, quarantine::FORKED)
    }

    /// Replaces a document by another one (`agent doc adopt`), in one transaction: the old
    /// replica, its peers' delivery state, its unsent mail and its forks go; `then` adds the
    /// writes that belong with the new replica. The revision goes on from the old one's, so that
    /// a running agent, whose cache is keyed by revision, loads the new replica instead of saving
    /// its cached old one over it.
    pub fn replace_doc<E>(
        &mut self,
        name: &str,
        doc: &Document,
        then: impl FnOnce(&Transaction) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E>
    where
        E: From<StoreError>,
    {
        self.cache.remove(name);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let old_rev: i64 = tx
            .query_row("SELECT rev FROM documents WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(StoreError::from)?
            .unwrap_or(0);
        let clear = |sql: &str| tx.execute(sql, [name]).map_err(StoreError::from);
        clear("DELETE FROM documents WHERE name = ?1")?;
        replica::delete(&tx, name)?;
        clear("DELETE FROM peers WHERE doc = ?1")?;
        clear("DELETE FROM outbox WHERE doc = ?1")?;
        clear("DELETE FROM forks WHERE doc = ?1")?;
        clear("DELETE FROM writes_to WHERE doc = ?1")?;
        clear(&format!(
            "DELETE FROM quarantine WHERE doc = ?1 AND reason LIKE '{}'",
            quarantine::FORKED
        ))?;
        clear("DELETE FROM published WHERE doc = ?1")?;
        Self::insert_doc(&tx, name, doc, old_rev + 1, false)?;
        then(&tx)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(())
    }

    /// The last error of an outbox item of a document and peer that still waits to go out.
    pub fn last_outbox_error(&self, doc: &str, peer: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT last_error FROM outbox WHERE doc = ?1 AND peer = ?2 AND status = 'pending' AND last_error IS NOT NULL ORDER BY id DESC LIMIT 1",
                params![doc, peer],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }
}

/// How many `changes` rows (`agent doc log`) are kept per document.
pub const KEEP_CHANGES: i64 = 1000;

/// One row of a document's change log (`agent doc log`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChangeEntry {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    /// Who made it: this device (and how) for a local edit, the peer (and its client) for an
    /// arrival.
    pub who: String,
    /// What it touched, e.g. `set items[0].done` or `items[2], title`.
    pub paths: String,
}

impl Store {
    /// Records one change of `doc` in its log (`agent doc log`), keeping the last
    /// [`KEEP_CHANGES`]. Call it with the transaction that commits the change, so the log never
    /// names a change that was rolled back: `who` is who made it (a peer's address and client id
    /// for a merge), `paths` a short summary of the paths it touched.
    ///
    /// # Errors
    ///
    /// The database refuses the write.
    pub fn log_change(conn: &Connection, doc: &str, who: &str, paths: &str) -> Result<()> {
        conn.execute(
            "INSERT INTO changes (doc, at, who, paths) VALUES (?1, ?2, ?3, ?4)",
            params![doc, now_ms(), who, paths],
        )?;
        conn.execute(
            "DELETE FROM changes WHERE doc = ?1 AND id <= (SELECT id FROM changes WHERE doc = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![doc, KEEP_CHANGES],
        )?;
        Ok(())
    }

    /// The last `limit` changes of `doc`, newest first.
    ///
    /// # Errors
    ///
    /// The database cannot be read.
    pub fn change_log(&self, doc: &str, limit: usize) -> Result<Vec<ChangeEntry>> {
        let mut stmt = self.conn.prepare(
            "SELECT at, who, paths FROM changes WHERE doc = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![doc, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(ChangeEntry {
                    at: r.get(0)?,
                    who: r.get(1)?,
                    paths: r.get(2)?,
                })
            },
        )?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }
}

/// Whether `update_doc` must save the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Save {
    /// Nothing to write.
    No,
    /// Sync state changed (a merge, an acknowledgement).
    Merged,
    /// A local edit: also starts the send delay.
    Edited,
}

/// One kind of update to a peer row.
#[derive(Debug, Clone)]
pub enum PeerChange {
    Pin(String),
    Received,
    Queued(u64),
    Sent,
    Failed { error: String, failing: bool },
}

fn peer_row(r: &rusqlite::Row) -> rusqlite::Result<PeerRow> {
    Ok(PeerRow {
        peer: r.get(0)?,
        client_id: r.get(1)?,
        sent_version: r.get::<_, i64>(2)? as u64,
        last_sent_at: r.get(3)?,
        last_received_at: r.get(4)?,
        last_error: r.get(5)?,
        failing: r.get::<_, i64>(6)? != 0,
    })
}

/// The bytes of a column written as text by older versions and as a blob now.
pub(crate) fn text_or_blob(v: rusqlite::types::ValueRef<'_>) -> Vec<u8> {
    match v {
        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => b.to_vec(),
        _ => Vec::new(),
    }
}

fn out_row(r: &rusqlite::Row) -> rusqlite::Result<OutItem> {
    Ok(OutItem {
        id: r.get(0)?,
        doc: r.get(1)?,
        peer: r.get(2)?,
        message_id: r.get(3)?,
        in_reply_to: r.get(4)?,
        body: text_or_blob(r.get_ref(5)?),
        ack_only: r.get::<_, i64>(6)? != 0,
        version: r.get::<_, i64>(7)? as u64,
        attempts: r.get::<_, i64>(8)? as u32,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A store in a fresh temporary directory (kept while the first value lives).
    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        (dir, s)
    }

    #[test]
    fn documents_survive_reopening_and_failed_updates_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut s = Store::open(&path).unwrap();
        let d = Document::new(&json!({"a": 1})).unwrap();
        s.create_doc("todo", &d, false).unwrap();
        s.update_doc::<_, StoreError>("todo", |doc, _| {
            doc.set("a", json!(2))
                .map_err(StoreError::in_document("todo"))?;
            Ok(((), Save::Edited))
        })
        .unwrap();
        assert!(s.edited_at("todo").unwrap().is_some());
        let r: std::result::Result<(), StoreError> = s.update_doc("todo", |doc, _| {
            doc.set("a", json!(3)).unwrap();
            Err(StoreError::NoDocument("simulated failure".into()))
        });
        assert!(r.is_err());
        drop(s);
        let mut s = Store::open(&path).unwrap();
        assert_eq!(
            s.read_doc("todo", |d| d.to_json()).unwrap(),
            json!({"a": 2})
        );
    }

    #[test]
    fn a_replaced_document_is_not_read_from_another_handles_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        // The running agent's handle has the first replica cached, unedited (revision 1).
        let mut agent = Store::open(&path).unwrap();
        let ours = Document::new(&json!({"ours": true})).unwrap();
        agent.create_doc("todo", &ours, false).unwrap();
        assert_eq!(
            agent.read_doc("todo", |d| d.id().to_string()).unwrap(),
            ours.id()
        );
        // `agent doc adopt` replaces it from another process.
        let theirs = Document::new(&json!({"theirs": true})).unwrap();
        let mut cli = Store::open(&path).unwrap();
        cli.replace_doc::<StoreError>("todo", &theirs, |_| Ok(()))
            .unwrap();
        assert_eq!(
            agent.read_doc("todo", |d| d.to_json()).unwrap(),
            json!({"theirs": true})
        );
    }

    #[test]
    fn outbox_keeps_only_the_newest_unsent_changes_per_peer() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let item = |n: u64, ack: bool| OutItem {
            id: 0,
            doc: "todo".into(),
            peer: "bob@example.test".into(),
            message_id: format!("<m{n}@x>"),
            in_reply_to: None,
            body: b"{}".to_vec(),
            ack_only: ack,
            version: n,
            attempts: 0,
        };
        Store::enqueue(s.conn(), &item(1, false)).unwrap();
        Store::enqueue(s.conn(), &item(2, false)).unwrap();
        Store::enqueue(s.conn(), &item(3, true)).unwrap(); // an ack does not replace changes
        let due = s.due(now_ms() + 1).unwrap();
        assert_eq!(
            due.iter().map(|i| i.version).collect::<Vec<_>>(),
            vec![2, 3]
        );
        s.mark_retry(due[0].id, "421 try later", now_ms() + 60_000)
            .unwrap();
        assert_eq!(s.due(now_ms() + 1).unwrap().len(), 1);
        s.mark_sent(due[1].id).unwrap();
        assert_eq!(s.sent_count("todo", "bob@example.test").unwrap(), 1);
        // Nothing is old enough to prune yet; a month and more later the sent item goes.
        assert_eq!(s.prune(now_ms()).unwrap(), 0);
        assert_eq!(s.prune(now_ms() + KEEP_OUTBOX_MS + 1000).unwrap(), 1);
        assert_eq!(s.sent_count("todo", "bob@example.test").unwrap(), 0);
    }

    #[test]
    fn newer_changes_drop_older_ones_that_failed_to_go_out() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let item = |n: u64| OutItem {
            id: 0,
            doc: "todo".into(),
            peer: "bob@example.test".into(),
            message_id: format!("<m{n}@x>"),
            in_reply_to: None,
            body: b"{}".to_vec(),
            ack_only: false,
            version: n,
            attempts: 0,
        };
        Store::enqueue(s.conn(), &item(1)).unwrap();
        let first = s.due(now_ms() + 1).unwrap()[0].id;
        s.mark_retry(first, "Connection refused", now_ms() - 1)
            .unwrap();
        assert_eq!(
            s.last_outbox_error("todo", "bob@example.test").unwrap(),
            Some("Connection refused".into())
        );
        Store::enqueue(s.conn(), &item(2)).unwrap();
        let due = s.due(now_ms() + 1).unwrap();
        assert_eq!(due.iter().map(|i| i.version).collect::<Vec<_>>(), vec![2]);
        assert_eq!(due[0].attempts, 1, "the failed attempt is carried over");
        assert_eq!(
            s.last_outbox_error("todo", "bob@example.test").unwrap(),
            None
        );
    }

    /// An agent starting while a command (`doc export`, `status`) opens the same brand-new
    /// database: both create it, switch it to WAL and create the tables; neither may fail.
    #[test]
    fn processes_opening_a_new_database_at_once_all_succeed() {
        for round in 0..40 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.db");
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || Store::open(&path).map(|_| ()))
                })
                .collect();
            for h in handles {
                if let Err(e) = h.join().unwrap() {
                    panic!("round {round}: {e}");
                }
            }
        }
    }
}
