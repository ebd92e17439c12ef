//! What the agent knows of each JSON file bound to a document (`[[documents]] file`): the shadow
//! (the content it last read from or wrote to the file), the document revision the file was last
//! in step with, the file's last seen signature, when it was read and written, and the problem
//! with it if any. Kept beside the document so that a stopped agent knows, when it starts, what a
//! save made meanwhile changed.

use rusqlite::{OptionalExtension, params};

use crate::store::{Result, Store};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS bound_files (
    doc TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    shadow TEXT,
    rev INTEGER,
    signature TEXT,
    read_at INTEGER,
    written_at INTEGER,
    error TEXT
);
"#;

/// The state of one bound file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileState {
    /// The file's path as configured and resolved.
    pub path: String,
    /// The content last read from or written to the file, as compact JSON (None: never).
    pub shadow: Option<String>,
    /// The document revision the file was last in step with (None: not in step).
    pub rev: Option<i64>,
    /// The file's modification time, length and inode when last in step, if old enough to trust.
    pub signature: Option<String>,
    pub read_at: Option<i64>,
    pub written_at: Option<i64>,
    /// What is wrong with the file (missing, not JSON with line and column, not writable).
    pub error: Option<String>,
}

impl Store {
    /// The state of the file bound to `doc`, if one was ever seen.
    pub fn file_state(&self, doc: &str) -> Result<Option<FileState>> {
        Ok(self
            .conn
            .query_row(
                "SELECT path, shadow, rev, signature, read_at, written_at, error FROM bound_files WHERE doc = ?1",
                [doc],
                |r| {
                    Ok(FileState {
                        path: r.get(0)?,
                        shadow: r.get(1)?,
                        rev: r.get(2)?,
                        signature: r.get(3)?,
                        read_at: r.get(4)?,
                        written_at: r.get(5)?,
                        error: r.get(6)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records the state of the file bound to `doc`.
    pub fn set_file_state(&self, doc: &str, s: &FileState) -> Result<()> {
        self.conn.execute(
            "INSERT OR REPLACE INTO bound_files (doc, path, shadow, rev, signature, read_at, written_at, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![doc, s.path, s.shadow, s.rev, s.signature, s.read_at, s.written_at, s.error],
        )?;
        Ok(())
    }
}
