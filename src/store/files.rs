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

/// What the agent knows of one bound file, but for its shadow: read on every pass, so it is
/// read apart from the shadow, which holds the whole document's text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileInfo {
    /// The file's path as configured and resolved.
    pub path: String,
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
    /// What is known of the file bound to `doc`, if one was ever seen, without its shadow.
    pub fn file_info(&self, doc: &str) -> Result<Option<FileInfo>> {
        Ok(self
            .conn
            .query_row(
                "SELECT path, rev, signature, read_at, written_at, error FROM bound_files WHERE doc = ?1",
                [doc],
                |r| {
                    Ok(FileInfo {
                        path: r.get(0)?,
                        rev: r.get(1)?,
                        signature: r.get(2)?,
                        read_at: r.get(3)?,
                        written_at: r.get(4)?,
                        error: r.get(5)?,
                    })
                },
            )
            .optional()?)
    }

    /// The shadow of the file bound to `doc`: the content last read from or written to it, as
    /// compact JSON (None: never).
    pub fn file_shadow(&self, doc: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT shadow FROM bound_files WHERE doc = ?1",
                [doc],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Records what is known of the file bound to `doc`; its shadow is kept, or none for a row
    /// new here.
    pub fn set_file_info(&self, doc: &str, i: &FileInfo) -> Result<()> {
        self.conn.execute(
            "INSERT INTO bound_files (doc, path, rev, signature, read_at, written_at, error) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (doc) DO UPDATE SET path = ?2, \
             rev = ?3, signature = ?4, read_at = ?5, written_at = ?6, error = ?7",
            params![
                doc,
                i.path,
                i.rev,
                i.signature,
                i.read_at,
                i.written_at,
                i.error
            ],
        )?;
        Ok(())
    }

    /// Records the shadow of the file bound to `doc` (its row made by [`Store::set_file_info`]).
    pub fn set_file_shadow(&self, doc: &str, shadow: Option<&str>) -> Result<()> {
        self.conn.execute(
            "UPDATE bound_files SET shadow = ?2 WHERE doc = ?1",
            params![doc, shadow],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::store;

    #[test]
    fn the_shadow_is_kept_apart_from_what_is_read_each_pass() {
        let (_dir, s) = store();
        let mut info = FileInfo {
            path: "/notes.json".into(),
            rev: Some(3),
            ..FileInfo::default()
        };
        // A row new here has no shadow until one is recorded.
        s.set_file_info("notes", &info).unwrap();
        assert_eq!(s.file_shadow("notes").unwrap(), None);
        s.set_file_shadow("notes", Some(r#"{"a":1}"#)).unwrap();
        // Recording what is known of the file again keeps the shadow.
        info.error = Some("missing".into());
        s.set_file_info("notes", &info).unwrap();
        assert_eq!(s.file_info("notes").unwrap(), Some(info));
        assert_eq!(
            s.file_shadow("notes").unwrap().as_deref(),
            Some(r#"{"a":1}"#)
        );
        s.set_file_shadow("notes", None).unwrap();
        assert_eq!(s.file_shadow("notes").unwrap(), None);
        assert_eq!(s.file_info("other").unwrap(), None);
        assert_eq!(s.file_shadow("other").unwrap(), None);
    }
}
