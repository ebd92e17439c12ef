//! What is wrong between this replica and one peer, beyond delivery: changes the engine refused
//! or could merge only in part, impossible claims, and a divergence with its repair. Kept apart
//! from the delivery state (`peers`) because it is set and cleared by merges, not by sending.

use rusqlite::{Connection, OptionalExtension, params};

use crate::engine::RepairKind;
use crate::store::{Result, Store, now_ms};

pub(super) const SCHEMA: &str = r#"
-- When the SMTP server last refused the account's login (one row at most).
CREATE TABLE IF NOT EXISTS account_failure (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_health (
    doc TEXT NOT NULL,
    peer TEXT NOT NULL,
    notice TEXT,
    notice_at INTEGER,
    diverged TEXT,
    diverged_at INTEGER,
    repair TEXT,
    PRIMARY KEY (doc, peer)
);
"#;

/// The health of one peer of one document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// The latest problem with this peer's changes (refused, merged in part, an impossible
    /// claim) and when it was seen; cleared by the next complete merge.
    pub notice: Option<(String, i64)>,
    /// Since when the two replicas hold the same changes but different content, and the digests
    /// or the paths that differ.
    pub diverged: Option<(String, i64)>,
    /// The half of a repair exchange this replica owes or awaits.
    pub repair: Option<RepairKind>,
}

/// One change to a peer's health.
pub enum HealthChange<'a> {
    /// A problem seen now (replaces the previous one).
    Notice(&'a str),
    /// A complete merge: no problem any more.
    ClearNotice,
    /// A divergence was found (the first time is kept as its start).
    Diverged(&'a str),
    /// The digests were compared and agree.
    Verified,
    /// The repair half this replica owes (`Request`: it waits for the reply and asks in every
    /// message; `Reply`: it answers once), or `None` when settled.
    Repair(Option<RepairKind>),
}

impl Store {
    /// Updates a peer's health (inside a merge's transaction or on its own).
    pub fn set_health(
        conn: &Connection,
        doc: &str,
        peer: &str,
        change: HealthChange,
    ) -> Result<()> {
        conn.execute(
            "INSERT OR IGNORE INTO peer_health (doc, peer) VALUES (?1, ?2)",
            params![doc, peer],
        )?;
        let now = now_ms();
        match change {
            HealthChange::Notice(text) => conn.execute(
                "UPDATE peer_health SET notice = ?3, notice_at = ?4 WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, text, now],
            )?,
            HealthChange::ClearNotice => conn.execute(
                "UPDATE peer_health SET notice = NULL, notice_at = NULL WHERE doc = ?1 AND peer = ?2",
                params![doc, peer],
            )?,
            HealthChange::Diverged(detail) => conn.execute(
                "UPDATE peer_health SET diverged = ?3, diverged_at = COALESCE(diverged_at, ?4) WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, detail, now],
            )?,
            HealthChange::Verified => conn.execute(
                "UPDATE peer_health SET diverged = NULL, diverged_at = NULL WHERE doc = ?1 AND peer = ?2",
                params![doc, peer],
            )?,
            HealthChange::Repair(kind) => conn.execute(
                "UPDATE peer_health SET repair = ?3 WHERE doc = ?1 AND peer = ?2",
                params![doc, peer, kind.map(repair_name)],
            )?,
        };
        Ok(())
    }

    /// Records when the SMTP server refused the account's login, or clears it (a send went out).
    pub fn set_account_failure(&self, at: Option<i64>) -> Result<()> {
        match at {
            Some(t) => self.conn.execute(
                "INSERT INTO account_failure (one, at) VALUES (1, ?1) ON CONFLICT(one) DO UPDATE SET at = ?1",
                [t],
            )?,
            None => self.conn.execute("DELETE FROM account_failure", [])?,
        };
        Ok(())
    }

    /// When the SMTP server last refused the account's login, if it has not accepted it since.
    pub fn account_failure(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT at FROM account_failure", [], |r| r.get(0))
            .optional()?)
    }

    /// Makes every pending outbox item due now (the account's settings were fixed).
    pub fn retry_now(&self) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?1 WHERE status = 'pending' AND next_attempt_at > ?1",
            [now_ms()],
        )?)
    }

    /// The peers of a document that are owed, or owe, a repair.
    pub fn repairing(&self, doc: &str) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare("SELECT peer FROM peer_health WHERE doc = ?1 AND repair IS NOT NULL")?;
        let rows = st.query_map([doc], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// A peer's health (all clear when nothing was ever recorded).
    pub fn health(&self, doc: &str, peer: &str) -> Result<Health> {
        health(&self.conn, doc, peer)
    }
}

/// A peer's health, read through any connection (a merge's transaction included).
pub fn health(conn: &Connection, doc: &str, peer: &str) -> Result<Health> {
    let row = conn
        .query_row(
            "SELECT notice, notice_at, diverged, diverged_at, repair FROM peer_health WHERE doc = ?1 AND peer = ?2",
            params![doc, peer],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                ))
            },
        )
        .optional()?;
    let Some((notice, notice_at, diverged, diverged_at, repair)) = row else {
        return Ok(Health::default());
    };
    Ok(Health {
        notice: notice.zip(notice_at),
        diverged: diverged.zip(diverged_at),
        repair: match repair.as_deref() {
            Some("request") => Some(RepairKind::Request),
            Some("reply") => Some(RepairKind::Reply),
            _ => None,
        },
    })
}

fn repair_name(kind: RepairKind) -> &'static str {
    match kind {
        RepairKind::Request => "request",
        RepairKind::Reply => "reply",
    }
}
