//! OpenPGP keys beside the rest of the state: the account's secret key and, per peer address,
//! the pinned public key, how it came to be trusted, a changed key waiting for the user's word,
//! and when a hello last went out. In the same database, so a backup of the state directory
//! (0700, the database 0600) restores them with everything else.

use rusqlite::{OptionalExtension, params};

use crate::store::{Result, Store, now_ms};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS account_keys (
    address TEXT PRIMARY KEY COLLATE NOCASE,
    -- ASCII-armored transferable secret key
    secret TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peer_keys (
    address TEXT PRIMARY KEY COLLATE NOCASE,
    -- the pinned key (binary transferable public key) and its fingerprint
    fingerprint TEXT,
    key BLOB,
    -- how it was pinned: 'first-use', 'invitation', 'accepted' (a changed key the user took),
    -- 'verified' (compared over another channel)
    trust TEXT,
    pinned_at INTEGER,
    -- a key other than the pinned one that signed a mail, waiting for `agent peer accept-key`
    new_fingerprint TEXT,
    new_key BLOB,
    changed_at INTEGER,
    hello_at INTEGER
);
"#;

/// What is known of a peer's key.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerKey {
    pub address: String,
    /// The pinned key's fingerprint.
    pub fingerprint: Option<String>,
    /// The pinned key (binary).
    #[serde(skip)]
    pub key: Option<Vec<u8>>,
    /// How it was pinned (see the schema).
    pub trust: Option<String>,
    /// Another key that signed mail in the peer's name, refused until accepted.
    pub new_fingerprint: Option<String>,
    #[serde(skip)]
    pub new_key: Option<Vec<u8>>,
    /// When that key was first seen (ms since the epoch).
    pub changed_at: Option<i64>,
    /// When our last hello went to the peer.
    #[serde(skip)]
    pub hello_at: Option<i64>,
}

impl Store {
    /// The account's armored secret key, if one was created.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn account_key(&self, address: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT secret FROM account_keys WHERE address = ?1",
                [address],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores the account's secret key; an existing one is never replaced (returns false then).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn set_account_key(&self, address: &str, armored: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "INSERT OR IGNORE INTO account_keys (address, secret, created_at) VALUES (?1, ?2, ?3)",
            params![address, armored, now_ms()],
        )? > 0)
    }

    /// Replaces the account's secret key (`agent device join`: the key of the account's other
    /// devices takes the place of the one this installation made for itself).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn replace_account_key(
        conn: &rusqlite::Connection,
        address: &str,
        armored: &str,
    ) -> Result<()> {
        conn.execute(
            "INSERT INTO account_keys (address, secret, created_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT(address) DO UPDATE SET secret = ?2, created_at = ?3",
            params![address, armored, now_ms()],
        )?;
        Ok(())
    }

    /// What is known of a peer's key (all empty when nothing).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn peer_key(&self, address: &str) -> Result<PeerKey> {
        Ok(self
            .conn
            .query_row(
                "SELECT address, fingerprint, key, trust, new_fingerprint, new_key, changed_at, hello_at FROM peer_keys WHERE address = ?1",
                [address],
                |r| {
                    Ok(PeerKey {
                        address: r.get(0)?,
                        fingerprint: r.get(1)?,
                        key: r.get(2)?,
                        trust: r.get(3)?,
                        new_fingerprint: r.get(4)?,
                        new_key: r.get(5)?,
                        changed_at: r.get(6)?,
                        hello_at: r.get(7)?,
                    })
                },
            )
            .optional()?
            .unwrap_or(PeerKey {
                address: address.to_string(),
                ..PeerKey::default()
            }))
    }

    fn peer_key_row(&self, address: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO peer_keys (address) VALUES (?1)",
            [address],
        )?;
        Ok(())
    }

    /// Pins a peer's key (forgetting any changed key that waited), with how it came to be trusted.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn pin_peer_key(
        &self,
        address: &str,
        fingerprint: &str,
        key: &[u8],
        trust: &str,
    ) -> Result<()> {
        self.peer_key_row(address)?;
        self.conn.execute(
            "UPDATE peer_keys SET fingerprint = ?2, key = ?3, trust = ?4, pinned_at = ?5, new_fingerprint = NULL, new_key = NULL, changed_at = NULL WHERE address = ?1",
            params![address, fingerprint, key, trust, now_ms()],
        )?;
        Ok(())
    }

    /// Records a key other than the pinned one that signed mail in the peer's name.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn key_changed(&self, address: &str, fingerprint: &str, key: &[u8]) -> Result<()> {
        self.peer_key_row(address)?;
        self.conn.execute(
            "UPDATE peer_keys SET new_fingerprint = ?2, new_key = ?3, changed_at = CASE WHEN new_fingerprint IS ?2 THEN changed_at ELSE ?4 END WHERE address = ?1",
            params![address, fingerprint, key, now_ms()],
        )?;
        Ok(())
    }

    /// Changes how the pinned key is trusted (`agent peer verify`); false when none is pinned.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn set_key_trust(&self, address: &str, trust: &str) -> Result<bool> {
        Ok(self.conn.execute(
            "UPDATE peer_keys SET trust = ?2 WHERE address = ?1 AND fingerprint IS NOT NULL",
            params![address, trust],
        )? > 0)
    }

    /// Notes that a hello went to the peer now.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn hello_sent(&self, address: &str) -> Result<()> {
        self.peer_key_row(address)?;
        self.conn.execute(
            "UPDATE peer_keys SET hello_at = ?2 WHERE address = ?1",
            params![address, now_ms()],
        )?;
        Ok(())
    }

    /// Every peer key row, by address (for `agent status`).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn peer_keys(&self) -> Result<Vec<PeerKey>> {
        let mut st = self
            .conn
            .prepare("SELECT address FROM peer_keys ORDER BY address")?;
        let names: Vec<String> = st
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        names.iter().map(|a| self.peer_key(a)).collect()
    }

    /// Makes a peer's pending outbox items due now (its key just became known).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn retry_now_for(&self, peer: &str) -> Result<usize> {
        Ok(self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?2, last_error = NULL WHERE peer = ?1 COLLATE NOCASE AND status = 'pending'",
            params![peer, now_ms()],
        )?)
    }

    /// Puts off an outbox item until `at` without counting a failed attempt (waiting for the
    /// peer's key), with a note for `agent status`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn postpone(&self, id: i64, at: i64, note: &str) -> Result<()> {
        self.conn.execute(
            "UPDATE outbox SET next_attempt_at = ?2, last_error = ?3 WHERE id = ?1",
            params![id, at, note],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_pins_and_changes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.account_key("a@x.y").unwrap(), None);
            assert!(s.set_account_key("a@x.y", "SECRET").unwrap());
            assert!(
                !s.set_account_key("A@x.y", "OTHER").unwrap(),
                "never replaced"
            );
            assert_eq!(s.peer_key("b@x.y").unwrap().fingerprint, None);
            s.pin_peer_key("b@x.y", "F1", b"k1", "first-use").unwrap();
            s.key_changed("B@X.Y", "F2", b"k2").unwrap();
            assert!(s.set_key_trust("b@x.y", "verified").unwrap());
            assert!(!s.set_key_trust("c@x.y", "verified").unwrap());
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.account_key("a@x.y").unwrap().as_deref(), Some("SECRET"));
        let k = s.peer_key("b@x.y").unwrap();
        assert_eq!(k.fingerprint.as_deref(), Some("F1"));
        assert_eq!(k.key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(k.trust.as_deref(), Some("verified"));
        assert_eq!(k.new_fingerprint.as_deref(), Some("F2"));
        assert!(k.changed_at.is_some());
        s.pin_peer_key("b@x.y", "F2", b"k2", "accepted").unwrap();
        let k = s.peer_key("b@x.y").unwrap();
        assert_eq!(
            (k.fingerprint.as_deref(), k.new_fingerprint),
            (Some("F2"), None)
        );
        assert_eq!(s.peer_keys().unwrap().len(), 1);
    }
}
