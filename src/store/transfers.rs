//! Mail parts kept until their transfer is complete, and the mail sizes learned from SMTP
//! refusals. A part is kept in the same transaction that records its mail's Message-ID as seen,
//! so a crash either keeps both or neither (the mail is read again). A transfer's parts are
//! dropped in the transaction that merges it (see the agent's `receive.rs`), when it is refused,
//! or [`INCOMPLETE_TRANSFER_KEEP_MS`] after its latest part arrived while parts are missing.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::store::{Result, Store, now_ms, text_or_blob};
use crate::transport::parts::{INCOMPLETE_TRANSFER_KEEP_MS, PartInfo};

pub(super) const SCHEMA: &str = r#"
-- One row per transfer (a changes object sent in several mails) with parts kept here; `sender`
-- is the mail address, `signer` the fingerprint whose signature verified on its parts.
CREATE TABLE IF NOT EXISTS transfers (
    sender TEXT NOT NULL,
    id TEXT NOT NULL,
    doc TEXT NOT NULL,
    of_message TEXT NOT NULL,
    count INTEGER NOT NULL,
    size INTEGER NOT NULL,
    hash TEXT NOT NULL,
    signer TEXT NOT NULL,
    device TEXT,
    device_name TEXT,
    first_at INTEGER NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (sender, id)
);
CREATE TABLE IF NOT EXISTS transfer_parts (
    sender TEXT NOT NULL,
    id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    chunk BLOB NOT NULL,
    PRIMARY KEY (sender, id, idx)
);
-- The largest mail an SMTP server (`host:port`) took, learned from its refusal of a larger one.
CREATE TABLE IF NOT EXISTS mail_limits (
    server TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at INTEGER NOT NULL
);
"#;

/// One part mail that passed every check of its own, to be kept.
#[derive(Debug, Clone)]
pub struct IncomingPart<'a> {
    /// The sender's address.
    pub sender: &'a str,
    /// The document (configured name).
    pub doc: &'a str,
    pub info: &'a PartInfo,
    /// This part's text.
    pub chunk: &'a [u8],
    /// The fingerprint of the key whose signature verified on it.
    pub signer: &'a str,
    /// The sending device's id and name.
    pub device: Option<(&'a str, Option<&'a str>)>,
    /// The part mail's own Message-ID, recorded as seen with it.
    pub message_id: &'a str,
}

/// A transfer with parts kept here.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Transfer {
    pub sender: String,
    pub id: String,
    pub doc: String,
    /// The whole changes object's Message-ID.
    pub of: String,
    pub count: u32,
    /// Bytes of the whole changes object.
    pub size: u64,
    pub hash: String,
    #[serde(skip)]
    pub signer: String,
    #[serde(skip)]
    pub device: Option<String>,
    #[serde(skip)]
    pub device_name: Option<String>,
    /// How many of its parts are here.
    pub have: u32,
    /// When its first and its latest part arrived (ms since the epoch).
    pub first_at: i64,
    pub last_at: i64,
}

impl Transfer {
    /// The description its parts share (as part 1).
    pub fn info(&self) -> PartInfo {
        PartInfo {
            transfer: self.id.clone(),
            index: 1,
            count: self.count,
            size: self.size,
            hash: self.hash.clone(),
            of: self.of.clone(),
        }
    }
}

/// A mail size learned from an SMTP server's refusal.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LearnedLimit {
    /// `host:port` of the SMTP server.
    pub server: String,
    /// The largest mail sent there from now on, in bytes.
    pub bytes: u64,
    /// The server's refusal that taught it.
    pub reason: String,
    /// When (ms since the epoch).
    pub at: i64,
}

const TRANSFER_COLUMNS: &str = "t.sender, t.id, t.doc, t.of_message, t.count, t.size, t.hash, \
     t.signer, t.device, t.device_name, t.first_at, t.last_at, \
     (SELECT COUNT(*) FROM transfer_parts p WHERE p.sender = t.sender AND p.id = t.id)";

fn transfer_row(r: &rusqlite::Row) -> rusqlite::Result<Transfer> {
    Ok(Transfer {
        sender: r.get(0)?,
        id: r.get(1)?,
        doc: r.get(2)?,
        of: r.get(3)?,
        count: r.get::<_, i64>(4)? as u32,
        size: r.get::<_, i64>(5)? as u64,
        hash: r.get(6)?,
        signer: r.get(7)?,
        device: r.get(8)?,
        device_name: r.get(9)?,
        first_at: r.get(10)?,
        last_at: r.get(11)?,
        have: r.get::<_, i64>(12)? as u32,
    })
}

/// Whether a new part fits the transfer kept so far: same description, sender's key, device and
/// document as its earlier parts, and within the announced size. Reads only.
fn check_fits(
    conn: &Connection,
    part: &IncomingPart<'_>,
    known: &Transfer,
) -> Result<Option<String>> {
    let info = part.info;
    if let Err(e) = info.agrees_with(&known.info()) {
        return Ok(Some(e));
    }
    let same = |a: &str, b: &str| a == b;
    if !same(&known.doc, part.doc) || !same(&known.signer, part.signer) {
        return Ok(Some(format!(
            "part {} of transfer {} names document {:?} (key {}), its earlier parts {:?} (key {})",
            info.index, info.transfer, part.doc, part.signer, known.doc, known.signer
        )));
    }
    if known.device.as_deref() != part.device.map(|d| d.0) {
        return Ok(Some(format!(
            "part {} of transfer {} comes from another device than its earlier parts",
            info.index, info.transfer
        )));
    }
    let held: i64 = conn.query_row(
        "SELECT COALESCE(SUM(LENGTH(CAST(chunk AS BLOB))), 0) FROM transfer_parts \
         WHERE sender = ?1 AND id = ?2 AND idx != ?3",
        params![part.sender, info.transfer, info.index],
        |r| r.get(0),
    )?;
    if held as u64 + part.chunk.len() as u64 > info.size {
        return Ok(Some(format!(
            "the parts of transfer {} hold more than the {} bytes it announced",
            info.transfer, info.size
        )));
    }
    Ok(None)
}

impl Store {
    /// Keeps one part of a transfer and records its mail's Message-ID as seen, in one
    /// transaction. A part already kept (the same index again) is taken as a duplicate: its
    /// Message-ID is recorded, nothing else changes.
    ///
    /// Returns `Ok(Ok(have))`, how many parts of the transfer are here now, or `Ok(Err(reason))`
    /// when the part does not fit its transfer's earlier parts (then nothing is written).
    ///
    /// # Errors
    ///
    /// The database failed (nothing is written).
    pub fn keep_part(
        &mut self,
        part: &IncomingPart<'_>,
    ) -> Result<std::result::Result<u32, String>> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let info = part.info;
        let known = tx
            .query_row(
                &format!(
                    "SELECT {TRANSFER_COLUMNS} FROM transfers t WHERE t.sender = ?1 AND t.id = ?2"
                ),
                params![part.sender, info.transfer],
                transfer_row,
            )
            .optional()?;
        let now = now_ms();
        match &known {
            Some(k) => {
                if let Some(reason) = check_fits(&tx, part, k)? {
                    return Ok(Err(reason));
                }
                tx.execute(
                    "UPDATE transfers SET last_at = ?3 WHERE sender = ?1 AND id = ?2",
                    params![part.sender, info.transfer, now],
                )?;
            }
            None => {
                tx.execute(
                    "INSERT INTO transfers (sender, id, doc, of_message, count, size, hash, signer, \
                     device, device_name, first_at, last_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11)",
                    params![
                        part.sender,
                        info.transfer,
                        part.doc,
                        info.of,
                        info.count,
                        info.size as i64,
                        info.hash,
                        part.signer,
                        part.device.map(|d| d.0),
                        part.device.and_then(|d| d.1),
                        now
                    ],
                )?;
            }
        }
        tx.execute(
            "INSERT OR IGNORE INTO transfer_parts (sender, id, idx, chunk) VALUES (?1, ?2, ?3, ?4)",
            params![part.sender, info.transfer, info.index, part.chunk],
        )?;
        Store::mark_seen(&tx, part.message_id)?;
        let have: i64 = tx.query_row(
            "SELECT COUNT(*) FROM transfer_parts WHERE sender = ?1 AND id = ?2",
            params![part.sender, info.transfer],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(Ok(have as u32))
    }

    /// Every transfer with parts kept here, the complete ones (all parts here) first, then by
    /// arrival of their first part.
    pub fn transfers(&self) -> Result<Vec<Transfer>> {
        let mut st = self.conn.prepare(&format!(
            "SELECT {TRANSFER_COLUMNS} FROM transfers t ORDER BY t.first_at, t.id"
        ))?;
        let rows = st.query_map([], transfer_row)?;
        let mut all: Vec<Transfer> = rows.collect::<rusqlite::Result<_>>()?;
        all.sort_by_key(|t| t.have < t.count);
        Ok(all)
    }

    /// The parts kept of one transfer: (index, bytes).
    pub fn transfer_parts(&self, sender: &str, id: &str) -> Result<Vec<(u32, Vec<u8>)>> {
        let mut st = self.conn.prepare(
            "SELECT idx, chunk FROM transfer_parts WHERE sender = ?1 AND id = ?2 ORDER BY idx",
        )?;
        let rows = st.query_map(params![sender, id], |r| {
            Ok((r.get::<_, i64>(0)? as u32, text_or_blob(r.get_ref(1)?)))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Drops a transfer and its parts (inside the merge's transaction, or on its own).
    pub fn drop_transfer(conn: &Connection, sender: &str, id: &str) -> Result<()> {
        conn.execute(
            "DELETE FROM transfer_parts WHERE sender = ?1 AND id = ?2",
            params![sender, id],
        )?;
        conn.execute(
            "DELETE FROM transfers WHERE sender = ?1 AND id = ?2",
            params![sender, id],
        )?;
        Ok(())
    }

    /// Drops the transfers whose latest part arrived more than [`INCOMPLETE_TRANSFER_KEEP_MS`]
    /// before `now` (ms since the epoch); returns how many went.
    pub fn drop_stale_transfers(&self, now: i64) -> Result<usize> {
        let before = now - INCOMPLETE_TRANSFER_KEEP_MS;
        let tx = self.conn.unchecked_transaction()?;
        tx.execute(
            "DELETE FROM transfer_parts WHERE (sender, id) IN \
             (SELECT sender, id FROM transfers WHERE last_at < ?1)",
            [before],
        )?;
        let n = tx.execute("DELETE FROM transfers WHERE last_at < ?1", [before])?;
        tx.commit()?;
        Ok(n)
    }

    /// The mail size learned for an SMTP server (`host:port`), if one refused a larger mail.
    pub fn mail_limit(&self, server: &str) -> Result<Option<LearnedLimit>> {
        Ok(self
            .conn
            .query_row(
                "SELECT server, bytes, reason, at FROM mail_limits WHERE server = ?1",
                [server],
                |r| {
                    Ok(LearnedLimit {
                        server: r.get(0)?,
                        bytes: r.get::<_, i64>(1)? as u64,
                        reason: r.get(2)?,
                        at: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Remembers that `server` (`host:port`) refused a mail as too large: from now on no mail
    /// over `bytes` goes there (a smaller size replaces a larger one, never the reverse).
    pub fn learn_mail_limit(&self, server: &str, bytes: u64, reason: &str) -> Result<()> {
        self.conn.execute(
            "INSERT INTO mail_limits (server, bytes, reason, at) VALUES (?1, ?2, ?3, ?4) \
             ON CONFLICT(server) DO UPDATE SET bytes = ?2, reason = ?3, at = ?4 WHERE ?2 < bytes",
            params![server, bytes as i64, reason, now_ms()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;
    use crate::transport::parts::{assemble, hash, split};

    fn infos(text: &str, pieces: usize) -> PartInfo {
        PartInfo {
            transfer: "00112233445566778899aabbccddeeff".into(),
            index: 1,
            count: pieces as u32,
            size: text.len() as u64,
            hash: hash(text.as_bytes()),
            of: "<whole@x>".into(),
        }
    }

    fn part<'a>(info: &'a PartInfo, chunk: &'a [u8], mid: &'a str) -> IncomingPart<'a> {
        IncomingPart {
            sender: "bob@example.test",
            doc: "todo",
            info,
            chunk,
            signer: "FP",
            device: Some(("dddddddddddddddd", Some("laptop"))),
            message_id: mid,
        }
    }

    #[test]
    fn parts_in_any_order_and_twice_make_one_complete_transfer_that_survives_reopening() {
        let (dir, mut s) = store();
        let text = "{\"a\":\"".to_string() + &"x".repeat(300) + "\"}";
        let pieces = split(text.as_bytes(), 100);
        let base = infos(&text, pieces.len());
        let order = [3, 0, 3, 2];
        for (n, &i) in order.iter().enumerate() {
            let info = PartInfo {
                index: i as u32 + 1,
                ..base.clone()
            };
            let mid = format!("<p{n}@x>");
            let have = s.keep_part(&part(&info, pieces[i], &mid)).unwrap().unwrap();
            assert_eq!(have, [1, 2, 2, 3][n]);
            assert!(s.seen(&mid).unwrap());
        }
        let t = s.transfers().unwrap();
        assert_eq!((t.len(), t[0].have, t[0].count), (1, 3, 4));
        drop(s);
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        let info = PartInfo {
            index: 2,
            ..base.clone()
        };
        assert_eq!(
            s.keep_part(&part(&info, pieces[1], "<last@x>")).unwrap(),
            Ok(4)
        );
        let t = &s.transfers().unwrap()[0];
        let chunks = s.transfer_parts(&t.sender, &t.id).unwrap();
        assert_eq!(assemble(&t.info(), &chunks).unwrap(), text.as_bytes());
        Store::drop_transfer(s.conn(), &t.sender, &t.id).unwrap();
        assert!(s.transfers().unwrap().is_empty());
        assert!(s.transfer_parts(&t.sender, &t.id).unwrap().is_empty());
    }

    #[test]
    fn a_part_that_disagrees_with_its_transfer_is_refused_and_writes_nothing() {
        let (_dir, mut s) = store();
        let text = "y".repeat(300);
        let base = infos(&text, 3);
        s.keep_part(&part(&base, &text.as_bytes()[..100], "<a@x>"))
            .unwrap()
            .unwrap();
        let other = PartInfo {
            index: 2,
            count: 5,
            ..base.clone()
        };
        let e = s
            .keep_part(&part(&other, &text.as_bytes()[..100], "<b@x>"))
            .unwrap()
            .unwrap_err();
        assert!(e.contains("count 5") && e.contains("disagree"), "{e}");
        assert!(!s.seen("<b@x>").unwrap());
        let big = PartInfo {
            index: 2,
            ..base.clone()
        };
        let e = s
            .keep_part(&part(&big, &[b'y'; 250], "<c@x>"))
            .unwrap()
            .unwrap_err();
        assert!(e.contains("more than the 300 bytes"), "{e}");
        let third = PartInfo {
            index: 3,
            ..base.clone()
        };
        let mut from_other_key = part(&third, b"z", "<d@x>");
        from_other_key.signer = "OTHER";
        let e = s.keep_part(&from_other_key).unwrap().unwrap_err();
        assert!(e.contains("key OTHER"), "{e}");
        assert_eq!(s.transfers().unwrap()[0].have, 1);
    }

    #[test]
    fn stale_transfers_go_and_learned_limits_only_shrink() {
        let (_dir, mut s) = store();
        let text = "y".repeat(300);
        let base = infos(&text, 3);
        s.keep_part(&part(&base, &text.as_bytes()[..100], "<a@x>"))
            .unwrap()
            .unwrap();
        assert_eq!(s.drop_stale_transfers(now_ms()).unwrap(), 0);
        let later = now_ms() + INCOMPLETE_TRANSFER_KEEP_MS + 1000;
        assert_eq!(s.drop_stale_transfers(later).unwrap(), 1);
        assert!(s.transfers().unwrap().is_empty());
        assert!(
            s.transfer_parts("bob@example.test", &base.transfer)
                .unwrap()
                .is_empty()
        );
        assert_eq!(s.mail_limit("smtp:25").unwrap(), None);
        s.learn_mail_limit("smtp:25", 50_000, "552 too big")
            .unwrap();
        s.learn_mail_limit("smtp:25", 80_000, "552 again").unwrap();
        assert_eq!(s.mail_limit("smtp:25").unwrap().unwrap().bytes, 50_000);
        s.learn_mail_limit("smtp:25", 25_000, "552 smaller")
            .unwrap();
        let l = s.mail_limit("smtp:25").unwrap().unwrap();
        assert_eq!((l.bytes, l.reason.as_str()), (25_000, "552 smaller"));
    }
}
