//! `agent doc …` commands handed to the running agent.
//!
//! A command line run beside `agent run` would load the whole replica itself — for a 10 MB
//! document about 0.4 s and 110 MB — although the agent holds it loaded, and the agent would then
//! load it again to see the command's edit. Instead the agent says here that it serves commands
//! (`doc_server`: its PID and its config's fingerprint), the command line writes its command into
//! `doc_requests`, and the agent runs it on its loaded replica and writes back what to print. A
//! request moves `waiting` → `taken` → `done` or `failed` (or `declined`: the agent does not run
//! it, the command line does); a command line that gives up on a request still `waiting` deletes
//! it in the same statement that checks it is still waiting, so a request is run at most once.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{Result, Store, now_ms};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS doc_requests (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    output TEXT,
    asked_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS doc_server (
    only INTEGER PRIMARY KEY CHECK (only = 1),
    pid INTEGER NOT NULL,
    config TEXT NOT NULL,
    since INTEGER NOT NULL
);
"#;

/// How long an unanswered or unread request is kept (a command line that was killed while it
/// waited leaves its request behind).
const KEEP_REQUEST_MS: i64 = 3600 * 1000;

/// The agent that serves commands: its process id and its config's fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocServer {
    pub pid: u32,
    pub config: String,
}

/// A request the agent took: its id, the command (JSON) and the asker's config fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRequest {
    pub id: i64,
    pub command: String,
    pub config: String,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Waiting,
    Taken,
    /// Run: what to print.
    Done(String),
    /// Run, and it failed: the error message.
    Failed(String),
    /// The agent does not run it (it reads another config): the command line runs it itself.
    Declined,
}

impl Store {
    /// Records that the agent with process id `pid`, reading the config with `fingerprint`,
    /// serves doc commands (replacing an earlier agent's record).
    pub fn serve_doc_requests(&self, pid: u32, fingerprint: &str) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO doc_server (only, pid, config, since) VALUES (1, ?1, ?2, ?3)",
            params![pid, fingerprint, now_ms()],
        )?;
        // Requests left from before are not run: whoever asked has given up on them.
        self.conn
            .execute("DELETE FROM doc_requests WHERE state = 'waiting'", [])?;
        Ok(())
    }

    /// Removes the record of agent `pid` serving doc commands.
    pub fn stop_serving_doc_requests(&self, pid: u32) -> Result<()> {
        self.conn
            .execute("DELETE FROM doc_server WHERE pid = ?1", [pid])?;
        Ok(())
    }

    /// The agent that said it serves doc commands, if one did (it may have died since: the
    /// state lock tells whether it runs).
    pub fn doc_server(&self) -> Result<Option<DocServer>> {
        Ok(self
            .conn
            .query_row("SELECT pid, config FROM doc_server", [], |r| {
                Ok(DocServer {
                    pid: r.get(0)?,
                    config: r.get(1)?,
                })
            })
            .optional()?)
    }

    /// Writes a request (`command` as JSON); returns its id.
    pub fn ask_doc_request(&self, command: &str, fingerprint: &str) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO doc_requests (command, config, asked_at) VALUES (?1, ?2, ?3)",
            params![command, fingerprint, now_ms()],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Whether a request waits to be taken.
    pub fn doc_requests_waiting(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM doc_requests WHERE state = 'waiting' LIMIT 1")?
            .exists([])?)
    }

    /// Takes every waiting request, oldest first (they are `taken` once this returns).
    pub fn take_doc_requests(&self) -> Result<Vec<DocRequest>> {
        // Looked for first: an UPDATE would take the write lock on every pass.
        if !self.doc_requests_waiting()? {
            return Ok(Vec::new());
        }
        let mut st = self.conn.prepare_cached(
            "UPDATE doc_requests SET state = 'taken' WHERE state = 'waiting' RETURNING id, command, config",
        )?;
        let mut taken = st
            .query_map([], |r| {
                Ok(DocRequest {
                    id: r.get(0)?,
                    command: r.get(1)?,
                    config: r.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        taken.sort_by_key(|r| r.id);
        Ok(taken)
    }

    /// Records a taken request's answer.
    pub fn answer_doc_request(&self, id: i64, answer: &Answer) -> Result<()> {
        let (state, output) = match answer {
            Answer::Done(out) => ("done", Some(out.as_str())),
            Answer::Failed(e) => ("failed", Some(e.as_str())),
            Answer::Declined => ("declined", None),
            Answer::Waiting | Answer::Taken => return Ok(()),
        };
        self.conn.execute(
            "UPDATE doc_requests SET state = ?2, output = ?3 WHERE id = ?1",
            params![id, state, output],
        )?;
        Ok(())
    }

    /// Where request `id` stands (`None`: no such request).
    pub fn doc_answer(&self, id: i64) -> Result<Option<Answer>> {
        let row: Option<(String, Option<String>)> = self
            .conn
            .prepare_cached("SELECT state, output FROM doc_requests WHERE id = ?1")?
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        Ok(row.map(|(state, output)| {
            let output = output.unwrap_or_default();
            match state.as_str() {
                "waiting" => Answer::Waiting,
                "taken" => Answer::Taken,
                "done" => Answer::Done(output),
                "failed" => Answer::Failed(output),
                _ => Answer::Declined,
            }
        }))
    }

    /// Deletes request `id` if it is still waiting; whether it was (then nobody runs it).
    pub fn withdraw_doc_request(&self, id: i64) -> Result<bool> {
        Ok(self.conn.execute(
            "DELETE FROM doc_requests WHERE id = ?1 AND state = 'waiting'",
            [id],
        )? == 1)
    }

    /// Deletes request `id` (its answer was read).
    pub fn forget_doc_request(&self, id: i64) -> Result<()> {
        self.conn
            .execute("DELETE FROM doc_requests WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Deletes requests older than an hour; returns how many.
    pub(super) fn prune_doc_requests(conn: &Connection, now: i64) -> Result<usize> {
        Ok(conn.execute(
            "DELETE FROM doc_requests WHERE asked_at < ?1",
            [now - KEEP_REQUEST_MS],
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[test]
    fn a_request_is_taken_once_and_answered() {
        let (_d, s) = store();
        assert_eq!(s.doc_server().unwrap(), None);
        s.serve_doc_requests(42, "f").unwrap();
        let server = s.doc_server().unwrap().unwrap();
        assert_eq!((server.pid, server.config.as_str()), (42, "f"));
        let a = s.ask_doc_request("{\"a\":1}", "f").unwrap();
        let b = s.ask_doc_request("{\"b\":2}", "g").unwrap();
        assert_eq!(s.doc_answer(a).unwrap(), Some(Answer::Waiting));
        let taken = s.take_doc_requests().unwrap();
        assert_eq!(
            taken.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![a, b],
            "oldest first"
        );
        assert_eq!(taken[1].config, "g");
        assert!(s.take_doc_requests().unwrap().is_empty(), "taken once");
        assert_eq!(s.doc_answer(a).unwrap(), Some(Answer::Taken));
        assert!(!s.withdraw_doc_request(a).unwrap(), "a taken one stays");
        s.answer_doc_request(a, &Answer::Done("out".into()))
            .unwrap();
        s.answer_doc_request(b, &Answer::Declined).unwrap();
        assert_eq!(s.doc_answer(a).unwrap(), Some(Answer::Done("out".into())));
        assert_eq!(s.doc_answer(b).unwrap(), Some(Answer::Declined));
        s.forget_doc_request(a).unwrap();
        assert_eq!(s.doc_answer(a).unwrap(), None);
        s.stop_serving_doc_requests(7).unwrap();
        assert!(s.doc_server().unwrap().is_some(), "only its own record");
        s.stop_serving_doc_requests(42).unwrap();
        assert_eq!(s.doc_server().unwrap(), None);
    }

    #[test]
    fn a_withdrawn_request_is_never_taken_and_old_ones_go() {
        let (_d, s) = store();
        let a = s.ask_doc_request("{}", "f").unwrap();
        assert!(s.withdraw_doc_request(a).unwrap());
        assert!(s.take_doc_requests().unwrap().is_empty());
        let b = s.ask_doc_request("{}", "f").unwrap();
        // An agent starting drops what was left waiting before it.
        s.serve_doc_requests(1, "f").unwrap();
        assert_eq!(s.doc_answer(b).unwrap(), None);
        let c = s.ask_doc_request("{}", "f").unwrap();
        let later = now_ms() + KEEP_REQUEST_MS + 1;
        assert_eq!(Store::prune_doc_requests(&s.conn, later).unwrap(), 1);
        assert_eq!(s.doc_answer(c).unwrap(), None);
    }
}
