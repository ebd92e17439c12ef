//! Mail the agent refused to merge, kept so that a person can see why (`agent status`), look at
//! it (`agent quarantine show`) and, where it makes sense, merge it after all (`release`) or let
//! it go (`drop`). The mail itself sits in the mailbox's quarantine folder; this is the agent's
//! record of it, with the changes it carried.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{Result, Store, now_ms};

/// The reasons (SQL `LIKE` patterns) of mail quarantined because the sender has its own document
/// of that name, and because the sender was not a peer: settled when the fork is, and when the
/// sender's changes come again as a peer.
pub(crate) const FORKED: &str = "%has another document named%";
pub(crate) const NOT_A_PEER: &str = "%is not a peer of%";
/// Mail that did not decrypt with our key (sent to a key we replaced): settled by the sender's
/// next mail that does.
pub(crate) const UNDECRYPTABLE: &str = "%does not decrypt%";

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc TEXT NOT NULL,
    sender TEXT NOT NULL,
    message_id TEXT,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL,
    -- JSON array of the changes texts the mail carried, or NULL when it carried none readable
    payloads TEXT,
    -- fingerprint of the OpenPGP key whose signature on it verified (NULL: none did)
    signer TEXT
);
CREATE INDEX IF NOT EXISTS quarantine_doc ON quarantine (doc, sender);
"#;

/// One quarantined message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Quarantined {
    pub id: i64,
    /// The document it named.
    pub doc: String,
    /// Its sender (address, or client id for a shared folder).
    pub sender: String,
    pub message_id: Option<String>,
    /// Why it was not merged.
    pub reason: String,
    /// When (ms since the epoch).
    pub at: i64,
    /// The changes texts it carried (empty when none could be read).
    #[serde(skip)]
    pub payloads: Vec<String>,
    /// The fingerprint of the key whose signature on it verified, if any.
    pub signer: Option<String>,
}

/// Adds the `signer` column to a quarantine table made before OpenPGP.
pub(super) fn migrate(conn: &Connection) -> Result<()> {
    let has: bool = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('quarantine') WHERE name = 'signer'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)?;
    if !has {
        conn.execute_batch("ALTER TABLE quarantine ADD COLUMN signer TEXT")?;
    }
    Ok(())
}

impl Store {
    /// Records a quarantined message (once per Message-ID: a copy read again updates the reason).
    pub fn quarantine(
        conn: &Connection,
        doc: &str,
        sender: &str,
        message_id: Option<&str>,
        reason: &str,
        payloads: Option<&[Vec<u8>]>,
        signer: Option<&str>,
    ) -> Result<()> {
        // Kept as JSON text (compact bytes decoded), for `agent quarantine show` and release.
        let payloads: Option<Vec<String>> = payloads.map(|p| {
            p.iter()
                .map(|b| crate::engine::compact::json_view(b))
                .collect()
        });
        if let Some(mid) = message_id {
            conn.execute("DELETE FROM quarantine WHERE message_id = ?1", params![mid])?;
        }
        let payloads = payloads.map(|p| serde_json::to_string(&p).unwrap_or_default());
        conn.execute(
            "INSERT INTO quarantine (doc, sender, message_id, reason, at, payloads, signer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![doc, sender, message_id, reason, now_ms(), payloads, signer],
        )?;
        Ok(())
    }

    /// Every quarantined message, oldest first (with its changes when `with_payloads`).
    pub fn quarantined(&self, with_payloads: bool) -> Result<Vec<Quarantined>> {
        let mut st = self.conn.prepare(
            "SELECT id, doc, sender, message_id, reason, at, CASE WHEN ?1 THEN payloads END, signer FROM quarantine ORDER BY id",
        )?;
        let rows = st.query_map([with_payloads], quarantined_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// One quarantined message, with its changes.
    pub fn quarantined_one(&self, id: i64) -> Result<Option<Quarantined>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, doc, sender, message_id, reason, at, payloads, signer FROM quarantine WHERE id = ?1",
                [id],
                quarantined_row,
            )
            .optional()?)
    }

    /// Gives a quarantined message a new reason (a release refused again).
    pub fn requarantine(conn: &Connection, id: i64, reason: &str) -> Result<()> {
        conn.execute(
            "UPDATE quarantine SET reason = ?2, at = ?3 WHERE id = ?1",
            params![id, reason, now_ms()],
        )?;
        Ok(())
    }

    /// Forgets a quarantined message (after a release merged it, or when dropped).
    pub fn unquarantine(conn: &Connection, id: i64) -> Result<bool> {
        Ok(conn.execute("DELETE FROM quarantine WHERE id = ?1", [id])? > 0)
    }

    /// Forgets the quarantined messages of a peer that were refused for a reason now resolved
    /// (its pin, its forked document).
    pub fn unquarantine_peer(conn: &Connection, doc: &str, sender: &str, like: &str) -> Result<()> {
        conn.execute(
            "DELETE FROM quarantine WHERE doc = ?1 AND sender = ?2 COLLATE NOCASE AND reason LIKE ?3",
            params![doc, sender, like],
        )?;
        Ok(())
    }
}

fn quarantined_row(r: &rusqlite::Row) -> rusqlite::Result<Quarantined> {
    let payloads: Option<String> = r.get(6)?;
    Ok(Quarantined {
        id: r.get(0)?,
        doc: r.get(1)?,
        sender: r.get(2)?,
        message_id: r.get(3)?,
        reason: r.get(4)?,
        at: r.get(5)?,
        payloads: payloads
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default(),
        signer: r.get(7)?,
    })
}
