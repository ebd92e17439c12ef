//! Devices: this installation's device id, the devices seen behind every address (the account's
//! own included) with the client id each uses for each document, the devices removed, the
//! documents a sibling device asked for, and the agent mail this device has dealt with (so that
//! it does not read its own mail again in the processed folder).

use rusqlite::{Connection, OptionalExtension, params};

use crate::engine::ClientId;
use crate::store::{Result, Store, now_ms};

pub(super) const SCHEMA: &str = r#"
-- One row: this installation's device id (random, 16 letters or digits) and name.
CREATE TABLE IF NOT EXISTS this_device (
    id TEXT NOT NULL,
    name TEXT NOT NULL
);
-- Every device seen behind an address (ours and peers'), and the removed ones.
CREATE TABLE IF NOT EXISTS devices (
    address TEXT NOT NULL COLLATE NOCASE,
    device TEXT NOT NULL,
    name TEXT,
    first_seen INTEGER NOT NULL,
    last_heard INTEGER,
    retired_at INTEGER,
    PRIMARY KEY (address, device)
);
-- Mail of removed devices, refused (not quarantined: their owner removed them): how much and
-- when last, for `agent device list` (a lost device that still runs).
CREATE TABLE IF NOT EXISTS refused_devices (
    address TEXT NOT NULL COLLATE NOCASE,
    device TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (address, device)
);
-- The client id a device uses for a document (one replica per device and document).
CREATE TABLE IF NOT EXISTS device_clients (
    doc TEXT NOT NULL,
    address TEXT NOT NULL COLLATE NOCASE,
    device TEXT NOT NULL,
    client_id TEXT NOT NULL,
    last_heard INTEGER NOT NULL,
    PRIMARY KEY (doc, address, client_id)
);
-- Documents a sibling device asked for (it has them configured but holds no replica yet);
-- device = this device's id: when we last asked.
CREATE TABLE IF NOT EXISTS wants (
    doc TEXT NOT NULL,
    device TEXT NOT NULL,
    at INTEGER NOT NULL,
    PRIMARY KEY (doc, device)
);
-- Agent mail this device has settled (outer Message-ID): skipped in the processed folder.
CREATE TABLE IF NOT EXISTS handled (
    message_id TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
-- Documents this device told its siblings it holds (an acknowledgement to the own address).
CREATE TABLE IF NOT EXISTS announced (
    doc TEXT PRIMARY KEY,
    at INTEGER NOT NULL
);
-- The addresses each client says it writes a document to itself (the `writesTo` tags of its
-- newest changes object, see `agent::health::address_tag`): its changes are not relayed there
-- at once.
CREATE TABLE IF NOT EXISTS writes_to (
    doc TEXT NOT NULL,
    client TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (doc, client, tag)
);
-- Forwarding of others' changes held back until the resend interval (see `agent::send`).
CREATE TABLE IF NOT EXISTS deferrals (
    doc TEXT NOT NULL,
    peer TEXT NOT NULL COLLATE NOCASE,
    since INTEGER NOT NULL,
    PRIMARY KEY (doc, peer)
);
"#;

/// The client ids a query's first column lists (a row that is not one is skipped).
fn client_ids(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> Result<Vec<ClientId>> {
    let mut q = conn.prepare_cached(sql)?;
    let rows = q.query_map(args, |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for client in rows {
        if let Ok(c) = ClientId::parse(&client?) {
            out.push(c);
        }
    }
    Ok(out)
}

/// When a device was heard from: when its mail says it was sent (`at`, its `Date`), never later
/// than now (a clock ahead), or now when the mail does not say.
fn heard_at(at: Option<i64>) -> i64 {
    let now = now_ms();
    at.map_or(now, |t| t.min(now))
}

/// This installation, as its mail names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThisDevice {
    pub id: String,
    pub name: String,
}

/// A device behind an address, as recorded here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRow {
    pub address: String,
    pub device: String,
    pub name: Option<String>,
    /// When its mail was first and last merged (ms since the epoch).
    pub first_seen: i64,
    pub last_heard: Option<i64>,
    /// When it was removed (`agent device remove`, here or on a sibling device).
    pub retired_at: Option<i64>,
}

/// A device's replica of a document: its client id and when it was last heard from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceClient {
    pub device: String,
    pub client_id: String,
    pub last_heard: i64,
}

/// The name a new device takes: the machine's host name, or "device".
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_graphic()))
        .unwrap_or_else(|| "device".to_string())
}

impl Store {
    /// This installation's device id and name, created on first use.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn this_device(&self) -> Result<ThisDevice> {
        let read = |c: &Connection| {
            c.query_row("SELECT id, name FROM this_device LIMIT 1", [], |r| {
                Ok(ThisDevice {
                    id: r.get(0)?,
                    name: r.get(1)?,
                })
            })
            .optional()
        };
        if let Some(d) = read(&self.conn)? {
            return Ok(d);
        }
        let tx = self.conn.unchecked_transaction()?;
        if read(&tx)?.is_none() {
            tx.execute(
                "INSERT INTO this_device (id, name) VALUES (?1, ?2)",
                params![ClientId::random().to_string(), host_name()],
            )?;
        }
        tx.commit()?;
        Ok(read(&self.conn)?.unwrap_or(ThisDevice {
            id: String::new(),
            name: String::new(),
        }))
    }

    /// Records that `device` of `address` sent mail for `doc` as `client` (inside the merge's
    /// transaction).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn heard_device(
        conn: &Connection,
        doc: &str,
        address: &str,
        device: &str,
        name: Option<&str>,
        (client, at): (&str, Option<i64>),
    ) -> Result<()> {
        Self::heard_of_device(conn, address, device, (name, at))?;
        conn.execute(
            "INSERT INTO device_clients (doc, address, device, client_id, last_heard) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT(doc, address, client_id) DO UPDATE SET device = ?3, \
             last_heard = MAX(last_heard, ?5)",
            params![doc, address, device, client, heard_at(at)],
        )?;
        Ok(())
    }

    /// Records a device behind `address` heard from in a mail that names no replica (a request
    /// for a document, an announcement).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn heard_of_device(
        conn: &Connection,
        address: &str,
        device: &str,
        (name, at): (Option<&str>, Option<i64>),
    ) -> Result<()> {
        conn.execute(
            "INSERT INTO devices (address, device, name, first_seen, last_heard) VALUES (?1, ?2, ?3, ?4, ?4) \
             ON CONFLICT(address, device) DO UPDATE SET last_heard = MAX(COALESCE(last_heard, 0), ?4), \
             name = COALESCE(?3, name)",
            params![address, device, name, heard_at(at)],
        )?;
        Ok(())
    }

    /// Whether this device (`me`) knows it has siblings behind the own address `own`: it heard
    /// from one not removed, or it joined with a setup code (its own requests are recorded).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn knows_siblings(&self, own: &str, me: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE address = ?1 AND device != ?2 \
             AND retired_at IS NULL) OR EXISTS (SELECT 1 FROM wants WHERE device = ?2)",
            params![own, me],
            |r| r.get(0),
        )?)
    }

    /// Whether this device told its siblings that it holds `doc`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn announced(&self, doc: &str) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM announced WHERE doc = ?1)",
            [doc],
            |r| r.get(0),
        )?)
    }

    /// Records that this device told its siblings it holds `doc`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn set_announced(conn: &Connection, doc: &str) -> Result<()> {
        conn.execute(
            "INSERT OR REPLACE INTO announced (doc, at) VALUES (?1, ?2)",
            params![doc, now_ms()],
        )?;
        Ok(())
    }

    /// The client ids of the devices behind `address` for `doc`, removed devices left out.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn clients_of(conn: &Connection, doc: &str, address: &str) -> Result<Vec<ClientId>> {
        client_ids(
            conn,
            "SELECT c.client_id FROM device_clients c LEFT JOIN devices d \
             ON d.address = c.address AND d.device = c.device \
             WHERE c.doc = ?1 AND c.address = ?2 AND d.retired_at IS NULL ORDER BY c.client_id",
            params![doc, address],
        )
    }

    /// Every replica of `doc` recorded behind `address`, removed devices included.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn device_clients(&self, doc: &str, address: &str) -> Result<Vec<DeviceClient>> {
        let mut st = self.conn.prepare(
            "SELECT device, client_id, last_heard FROM device_clients WHERE doc = ?1 AND address = ?2 ORDER BY device",
        )?;
        let rows = st.query_map(params![doc, address], |r| {
            Ok(DeviceClient {
                device: r.get(0)?,
                client_id: r.get(1)?,
                last_heard: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The devices recorded behind `address`, oldest first.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn devices(&self, address: &str) -> Result<Vec<DeviceRow>> {
        let mut st = self.conn.prepare(
            "SELECT address, device, name, first_seen, last_heard, retired_at FROM devices WHERE address = ?1 ORDER BY first_seen, device",
        )?;
        let rows = st.query_map([address], |r| {
            Ok(DeviceRow {
                address: r.get(0)?,
                device: r.get(1)?,
                name: r.get(2)?,
                first_seen: r.get(3)?,
                last_heard: r.get(4)?,
                retired_at: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Marks devices of `address` removed (creating their rows when unknown here). Returns how
    /// many were not removed before.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn retire_devices(conn: &Connection, address: &str, devices: &[String]) -> Result<usize> {
        let now = now_ms();
        let mut n = 0;
        for d in devices {
            conn.execute(
                "INSERT OR IGNORE INTO devices (address, device, first_seen) VALUES (?1, ?2, ?3)",
                params![address, d, now],
            )?;
            n += conn.execute(
                "UPDATE devices SET retired_at = ?3 WHERE address = ?1 AND device = ?2 AND retired_at IS NULL",
                params![address, d, now],
            )?;
        }
        Ok(n)
    }

    /// Counts a refused mail of removed device `device` of `address`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn note_refused(conn: &Connection, address: &str, device: &str) -> Result<()> {
        conn.execute(
            "INSERT INTO refused_devices (address, device, count, last_at) VALUES (?1, ?2, 1, ?3) \
             ON CONFLICT(address, device) DO UPDATE SET count = count + 1, last_at = ?3",
            params![address, device, now_ms()],
        )?;
        Ok(())
    }

    /// How many mails of removed device `device` of `address` were refused, and when last.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn refused_of(&self, address: &str, device: &str) -> Result<Option<(u64, i64)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT count, last_at FROM refused_devices WHERE address = ?1 AND device = ?2",
                params![address, device],
                |r| Ok((r.get::<_, i64>(0)?.max(0).unsigned_abs(), r.get(1)?)),
            )
            .optional()?)
    }

    /// The removed devices of `address`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn retired(&self, address: &str) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(
            "SELECT device FROM devices WHERE address = ?1 AND retired_at IS NOT NULL ORDER BY device",
        )?;
        let rows = st.query_map([address], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Whether `device` of `address` was removed.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn is_retired(&self, address: &str, device: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM devices WHERE address = ?1 AND device = ?2 AND retired_at IS NOT NULL",
                params![address, device],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Records that `device` asked for `doc` at `at` (ms since the epoch; for this device's id:
    /// when we asked, 0 for "ask now").
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn set_want(conn: &Connection, doc: &str, device: &str, at: i64) -> Result<()> {
        conn.execute(
            "INSERT INTO wants (doc, device, at) VALUES (?1, ?2, ?3) ON CONFLICT(doc, device) DO UPDATE SET at = ?3",
            params![doc, device, at],
        )?;
        Ok(())
    }

    /// When `device` last asked for `doc`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn want(&self, doc: &str, device: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT at FROM wants WHERE doc = ?1 AND device = ?2",
                params![doc, device],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The devices (other than `except`, removed ones left out) that asked for `doc`.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn wanting(&self, doc: &str, address: &str, except: &str) -> Result<Vec<String>> {
        let mut st = self.conn.prepare(
            "SELECT w.device FROM wants w LEFT JOIN devices d ON d.address = ?2 AND d.device = w.device \
             WHERE w.doc = ?1 AND w.device != ?3 AND d.retired_at IS NULL ORDER BY w.device",
        )?;
        let rows = st.query_map(params![doc, address, except], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Forgets that `device` asked for `doc` (its replica is known now).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn clear_want(conn: &Connection, doc: &str, device: &str) -> Result<()> {
        conn.execute(
            "DELETE FROM wants WHERE doc = ?1 AND device = ?2",
            params![doc, device],
        )?;
        Ok(())
    }

    /// Records that this device settled the agent mail with this (outer) Message-ID.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn mark_handled(&self, message_id: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR IGNORE INTO handled (message_id, at) VALUES (?1, ?2)",
            params![message_id, now_ms()],
        )?;
        Ok(())
    }

    /// Whether this device settled the agent mail with this (outer) Message-ID.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn handled(&self, message_id: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM handled WHERE message_id = ?1",
                [message_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Since when forwarding to `peer` has been held back (None: it is not).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn deferred_since(&self, doc: &str, peer: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row(
                "SELECT since FROM deferrals WHERE doc = ?1 AND peer = ?2",
                params![doc, peer],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Records the tags `client` listed as the addresses it writes document `doc` to itself
    /// (its newest changes object's `writesTo`), replacing what it listed before.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn set_writes_to(
        conn: &Connection,
        doc: &str,
        client: &str,
        tags: &[String],
    ) -> Result<()> {
        conn.execute(
            "DELETE FROM writes_to WHERE doc = ?1 AND client = ?2",
            params![doc, client],
        )?;
        let mut insert = conn.prepare_cached(
            "INSERT OR IGNORE INTO writes_to (doc, client, tag) VALUES (?1, ?2, ?3)",
        )?;
        for tag in tags {
            insert.execute(params![doc, client, tag])?;
        }
        Ok(())
    }

    /// The clients that listed `tag` as an address they write document `doc` to themselves.
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn writers_to(conn: &Connection, doc: &str, tag: &str) -> Result<Vec<ClientId>> {
        client_ids(
            conn,
            "SELECT client FROM writes_to WHERE doc = ?1 AND tag = ?2",
            params![doc, tag],
        )
    }

    /// The clients that listed where they write document `doc` (`writesTo`).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn listing_writers(conn: &Connection, doc: &str) -> Result<Vec<ClientId>> {
        client_ids(
            conn,
            "SELECT DISTINCT client FROM writes_to WHERE doc = ?1",
            params![doc],
        )
    }

    /// Starts holding forwarding back (keeping an earlier start), or ends it (`on` false).
    ///
    /// # Errors
    ///
    /// A database error.
    pub fn set_deferred(&self, doc: &str, peer: &str, on: bool) -> Result<()> {
        if on {
            self.conn.execute(
                "INSERT OR IGNORE INTO deferrals (doc, peer, since) VALUES (?1, ?2, ?3)",
                params![doc, peer, now_ms()],
            )?;
        } else {
            self.conn.execute(
                "DELETE FROM deferrals WHERE doc = ?1 AND peer = ?2",
                params![doc, peer],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_heard_from_when_its_mail_was_sent_never_later_than_now_nor_backwards() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let conn = store.conn();
        let c = ClientId::random().to_string();
        let heard = |store: &Store| store.device_clients("todo", "bob@x").unwrap()[0].last_heard;
        let day_ago = now_ms() - 86_400_000;
        Store::heard_device(conn, "todo", "bob@x", "d1", None, (&c, Some(day_ago))).unwrap();
        assert_eq!(heard(&store), day_ago);
        assert_eq!(store.devices("bob@x").unwrap()[0].last_heard, Some(day_ago));
        // An older mail read later does not move it back.
        Store::heard_device(conn, "todo", "bob@x", "d1", None, (&c, Some(day_ago - 5))).unwrap();
        assert_eq!(heard(&store), day_ago);
        // A date in the future counts as now.
        let before = now_ms();
        Store::heard_device(conn, "todo", "bob@x", "d1", None, (&c, Some(i64::MAX))).unwrap();
        assert!((before..=now_ms()).contains(&heard(&store)));
    }

    #[test]
    fn devices_clients_and_removals_are_kept_per_address() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let me = store.this_device().unwrap();
        assert_eq!(store.this_device().unwrap(), me);
        assert_eq!(me.id.len(), 16);
        let (c1, c2) = (ClientId::random(), ClientId::random());
        let conn = store.conn();
        Store::heard_device(
            conn,
            "todo",
            "bob@x",
            "d1",
            Some("phone"),
            (&c1.to_string(), None),
        )
        .unwrap();
        Store::heard_device(conn, "todo", "bob@x", "d2", None, (&c2.to_string(), None)).unwrap();
        let mut both = vec![c1, c2];
        both.sort();
        assert_eq!(Store::clients_of(conn, "todo", "BOB@x").unwrap(), both);
        assert!(
            Store::clients_of(conn, "other", "bob@x")
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            Store::retire_devices(conn, "bob@x", &["d1".to_string()]).unwrap(),
            1
        );
        assert_eq!(
            Store::retire_devices(conn, "bob@x", &["d1".to_string()]).unwrap(),
            0
        );
        assert_eq!(Store::clients_of(conn, "todo", "bob@x").unwrap(), vec![c2]);
        assert!(store.is_retired("bob@x", "d1").unwrap());
        assert_eq!(store.retired("bob@x").unwrap(), vec!["d1".to_string()]);
        assert_eq!(store.devices("bob@x").unwrap().len(), 2);
        assert_eq!(
            store.devices("bob@x").unwrap()[0].name.as_deref(),
            Some("phone")
        );
        Store::set_want(conn, "todo", "d2", now_ms()).unwrap();
        Store::set_want(conn, "todo", "d1", now_ms()).unwrap();
        assert_eq!(store.wanting("todo", "bob@x", "me").unwrap(), vec!["d2"]);
        Store::clear_want(conn, "todo", "d2").unwrap();
        assert!(store.wanting("todo", "bob@x", "me").unwrap().is_empty());
        assert!(!store.handled("<m@x>").unwrap());
        store.mark_handled("<m@x>").unwrap();
        assert!(store.handled("<m@x>").unwrap());
        assert_eq!(store.deferred_since("todo", "bob@x").unwrap(), None);
        store.set_deferred("todo", "bob@x", true).unwrap();
        let since = store.deferred_since("todo", "bob@x").unwrap();
        store.set_deferred("todo", "bob@x", true).unwrap();
        assert_eq!(store.deferred_since("todo", "bob@x").unwrap(), since);
        store.set_deferred("todo", "bob@x", false).unwrap();
        assert_eq!(store.deferred_since("todo", "bob@x").unwrap(), None);
    }
}
