//! A replica on disk: its head (everything but the nodes) in `documents.state`, and each node in
//! a row of its own in `doc_nodes`, so that saving after an edit or a merge writes the head and
//! the nodes that changed — for a one-field edit of a 10 MB document a few hundred bytes, not
//! the whole replica — in the transaction that commits the change. A replica saved whole by an
//! older version (all of it in `state`, no node rows) still loads, and its first save writes
//! every node.

use rusqlite::{Connection, params};

use crate::engine::{Document, SaveMark};
use crate::store::{Result, StoreError, text_or_blob};

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS doc_nodes (
    name TEXT NOT NULL,
    ix INTEGER NOT NULL,
    node BLOB NOT NULL,
    PRIMARY KEY (name, ix)
);
"#;

/// Writes `doc`'s head into the document row's `state` and its nodes changed since `since`
/// (all of them without it); returns the mark of this save.
pub(super) fn write(
    conn: &Connection,
    name: &str,
    doc: &Document,
    since: Option<SaveMark>,
) -> Result<(String, SaveMark)> {
    let parts = doc.save_parts(since);
    if since.is_none() {
        conn.execute("DELETE FROM doc_nodes WHERE name = ?1", [name])?;
    }
    let mut put = conn
        .prepare_cached("INSERT OR REPLACE INTO doc_nodes (name, ix, node) VALUES (?1, ?2, ?3)")?;
    for (ix, node) in &parts.nodes {
        put.execute(params![name, ix, node])?;
    }
    Ok((parts.head, parts.mark))
}

/// Removes the node rows of document `name`.
pub(super) fn delete(conn: &Connection, name: &str) -> Result<()> {
    conn.execute("DELETE FROM doc_nodes WHERE name = ?1", [name])?;
    Ok(())
}

/// Restores document `name` from its row's `state`: a head with node rows (and the mark to save
/// on from), or a replica saved whole (no mark: its first save writes every node).
pub(super) fn read(
    conn: &Connection,
    name: &str,
    state: &str,
) -> Result<(Document, Option<SaveMark>)> {
    let corrupt = |source| StoreError::Document {
        name: name.to_string(),
        source,
    };
    let mut st =
        conn.prepare_cached("SELECT ix, node FROM doc_nodes WHERE name = ?1 ORDER BY ix")?;
    let rows = st
        .query_map([name], |r| {
            // Text as older versions wrote every node; a blob since nodes may be deflated.
            Ok((r.get::<_, u32>(0)?, text_or_blob(r.get_ref(1)?)))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok((Document::restore(state).map_err(corrupt)?, None));
    }
    let (doc, mark) = Document::restore_parts(state, rows).map_err(corrupt)?;
    Ok((doc, Some(mark)))
}

#[cfg(test)]
mod tests {
    use crate::engine::Document;
    use crate::store::{Save, Store, StoreError};
    use serde_json::json;

    fn node_rows(s: &Store) -> i64 {
        s.conn
            .query_row("SELECT COUNT(*) FROM doc_nodes", [], |r| r.get(0))
            .unwrap()
    }

    fn set(s: &mut Store, path: &str, v: serde_json::Value) {
        s.update_doc::<_, StoreError>("d", |doc, _| {
            doc.set(path, v).unwrap();
            Ok(((), Save::Edited))
        })
        .unwrap();
    }

    /// A one-field edit of a large replica rewrites one node row (and the head); the replica
    /// read back by another handle is exactly the one in memory.
    #[test]
    fn a_save_writes_only_the_changed_nodes_and_reads_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut s = Store::open(&path).unwrap();
        let records: Vec<_> = (0..500).map(|i| json!({"n": i, "done": false})).collect();
        s.create_doc("d", &Document::new(&json!({"r": records})).unwrap(), false)
            .unwrap();
        assert_eq!(node_rows(&s), 502);
        s.conn
            .execute_batch(
                "CREATE TEMP TABLE writes (n INTEGER); CREATE TEMP TRIGGER w AFTER INSERT ON doc_nodes BEGIN INSERT INTO writes VALUES (1); END;",
            )
            .unwrap();
        set(&mut s, "r[250].done", json!(true));
        let writes: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM writes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(writes, 1, "one node row written for one field");
        set(&mut s, "r[500]", json!({"n": 500}));
        set(&mut s, "extra", json!({"x": [1, "two"]}));
        let ours = s.read_doc("d", Document::save).unwrap();
        let mut other = Store::open(&path).unwrap();
        assert_eq!(other.read_doc("d", Document::save).unwrap(), ours);
    }

    /// A replica saved whole by an older version (all of it in `state`) loads; its first save
    /// writes every node, after which it loads from the node rows.
    #[test]
    fn a_replica_saved_whole_loads_and_is_saved_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let mut s = Store::open(&path).unwrap();
        let doc = Document::new(&json!({"a": [1, {"b": "text"}]})).unwrap();
        s.conn
            .execute(
                "INSERT INTO documents (name, doc_id, state, rev, updated_at) VALUES ('d', ?1, ?2, 1, 0)",
                rusqlite::params![doc.id(), doc.save()],
            )
            .unwrap();
        assert_eq!(s.read_doc("d", Document::to_json).unwrap(), doc.to_json());
        set(&mut s, "c", json!(true));
        assert_eq!(node_rows(&s), 3);
        let mut other = Store::open(&path).unwrap();
        assert_eq!(
            other.read_doc("d", Document::to_json).unwrap(),
            json!({"a": [1, {"b": "text"}], "c": true})
        );
    }

    /// A node row that went missing or bad makes loading fail with the document's name, never
    /// a half replica.
    #[test]
    fn a_missing_node_row_is_an_error_naming_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("s.sqlite")).unwrap();
        s.create_doc("d", &Document::new(&json!({"a": {"b": 1}})).unwrap(), false)
            .unwrap();
        s.conn
            .execute("DELETE FROM doc_nodes WHERE ix = 1", [])
            .unwrap();
        let e = s.read_doc("d", Document::to_json).unwrap_err().to_string();
        assert!(
            e.contains("\"d\"") || e.contains("d:") || e.contains(" d"),
            "{e}"
        );
        assert!(e.contains("node"), "{e}");
    }
}
