//! A replica on disk: its head (everything but the nodes) in `documents.state`, and each node in
//! a row of its own in `doc_nodes`, so that saving after an edit or a merge writes the head and
//! the nodes that changed — for a one-field edit of a 10 MB document a few hundred bytes, not
//! the whole replica — in the transaction that commits the change. A replica saved whole by an
//! older version (all of it in `state`, no node rows) still loads, and its first save writes
//! every node.

use rusqlite::{Connection, OptionalExtension, params};

use crate::engine::{Document, PartLoad, Reach, SaveMark, Wanted};
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
    if since.is_none() && !doc.is_whole() {
        // Saving from scratch replaces every row: only a whole replica has them all.
        return Err(StoreError::in_document(name)(
            crate::engine::Error::Snapshot("a replica loaded in part cannot be saved whole".into()),
        ));
    }
    if since.is_none() {
        conn.execute("DELETE FROM doc_nodes WHERE name = ?1", [name])?;
    }
    let mut put = conn
        .prepare_cached("INSERT OR REPLACE INTO doc_nodes (name, ix, node) VALUES (?1, ?2, ?3)")?;
    // Each record written as it is made: a whole save never holds them all.
    let saved = doc.save_parts_each(since, |ix, node| {
        put.execute(params![name, ix, node]).map(drop)
    })?;
    Ok(saved)
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
    let corrupt = StoreError::in_document(name);
    let mut st =
        conn.prepare_cached("SELECT ix, node FROM doc_nodes WHERE name = ?1 ORDER BY ix")?;
    let rows = st
        .query_map([name], |r| {
            // Text as older versions wrote every node; a blob since nodes may be deflated.
            Ok((r.get::<_, u32>(0)?, text_or_blob(r.get_ref(1)?)))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok((Document::restore(state).map_err(&corrupt)?, None));
    }
    let (doc, mark) = Document::restore_parts(state, rows).map_err(&corrupt)?;
    Ok((doc, Some(mark)))
}

/// Document `name` at its revision, loaded in part for an edit that needs `reach` (see
/// [`PartLoad`]), with the mark to save on from; `None` when it must be loaded whole (saved
/// whole by an older version, or the edit needs too many nodes).
pub(super) fn read_reaching(
    conn: &Connection,
    name: &str,
    reach: &[Reach],
) -> Result<Option<(i64, Document, SaveMark)>> {
    let corrupt = StoreError::in_document(name);
    let Some((rev, state)) = conn
        .query_row(
            "SELECT rev, state FROM documents WHERE name = ?1",
            [name],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?
    else {
        return Err(StoreError::NoDocument(name.to_string()));
    };
    let Ok(mut part) = PartLoad::new(&state, reach) else {
        return Ok(None);
    };
    // The head's count against the rows (an index seek): a damaged count is the whole load's
    // to report, not stand-ins to make.
    let last: Option<u32> = conn.query_row(
        "SELECT MAX(ix) FROM doc_nodes WHERE name = ?1",
        [name],
        |r| r.get(0),
    )?;
    if last.map(|l| l + 1) != Some(part.count()) {
        return Ok(None);
    }
    let mut row = conn.prepare_cached("SELECT node FROM doc_nodes WHERE name = ?1 AND ix = ?2")?;
    loop {
        match part.wanted() {
            Wanted::Node(ix) => {
                let node = row
                    .query_row(params![name, ix], |r| Ok(text_or_blob(r.get_ref(0)?)))
                    .optional()?;
                part.add(ix, node.as_deref()).map_err(&corrupt)?;
            }
            Wanted::Whole => return Ok(None),
            Wanted::Done => break,
        }
    }
    let (doc, mark) = part.finish().map_err(&corrupt)?;
    Ok(Some((rev, doc, mark)))
}

#[cfg(test)]
mod tests {
    use crate::engine::{Document, Reach};
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

    /// A one-field edit of a replica not loaded here reads the nodes on its path, writes one
    /// node and keeps nothing loaded; an edit that goes past the nodes its reach named is made
    /// again on the whole replica, and every edit loads back as made.
    #[test]
    fn an_edit_of_a_replica_not_loaded_reads_only_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        let records: Vec<_> = (0..500).map(|i| json!({"n": i, "done": false})).collect();
        Store::open(&path)
            .unwrap()
            .create_doc("d", &Document::new(&json!({"r": records})).unwrap(), false)
            .unwrap();
        let mut s = Store::open(&path).unwrap();
        s.conn
            .execute_batch(
                "CREATE TEMP TABLE writes (n INTEGER); CREATE TEMP TRIGGER w AFTER INSERT ON doc_nodes BEGIN INSERT INTO writes VALUES (1); END;",
            )
            .unwrap();
        let edit = |s: &mut Store, reach: &[Reach], p: &str, v: serde_json::Value| {
            let mut runs = 0;
            s.update_doc_reaching::<_, StoreError>("d", reach, |doc, _| {
                runs += 1;
                assert_eq!(doc.is_whole(), runs == 2);
                doc.set(p, v.clone())
                    .map_err(StoreError::in_document("d"))?;
                Ok(((), Save::Edited))
            })
            .unwrap();
            runs
        };
        let runs = edit(
            &mut s,
            &[Reach::Parent("r[250].done")],
            "r[250].done",
            json!(true),
        );
        let writes: i64 = s
            .conn
            .query_row("SELECT COUNT(*) FROM writes", [], |r| r.get(0))
            .unwrap();
        assert_eq!((runs, writes), (1, 1));
        assert!(s.cache.is_empty(), "a replica loaded in part is not kept");
        // Named r[1] but edits r[2] (not read: the array is only passed through to r[1]): made
        // again on the whole replica.
        let runs = edit(&mut s, &[Reach::Parent("r[1].n")], "r[2].m", json!(5));
        assert_eq!(runs, 2);
        let back = Store::open(&path)
            .unwrap()
            .read_doc("d", Document::to_json)
            .unwrap();
        assert_eq!(back["r"][250], json!({"n": 250, "done": true}));
        assert_eq!(back["r"][2], json!({"n": 2, "done": false, "m": 5}));
        assert_eq!(back["r"].as_array().unwrap().len(), 500);
    }

    /// A refused edit is made again on the whole replica (so that it says what the whole
    /// replica says); a head whose node count the rows do not match is left to the whole load to
    /// report, with no stand-ins made for it.
    #[test]
    fn a_refused_edit_and_a_damaged_count_go_to_the_whole_replica() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite");
        Store::open(&path)
            .unwrap()
            .create_doc("d", &Document::new(&json!({"a": {"b": 1}})).unwrap(), false)
            .unwrap();
        let mut s = Store::open(&path).unwrap();
        let mut runs = 0;
        let e = s
            .update_doc_reaching::<(), StoreError>("d", &[Reach::Parent("x.y")], |doc, _| {
                runs += 1;
                doc.set("x.y", json!(1))
                    .map_err(StoreError::in_document("d"))?;
                Ok(((), Save::Edited))
            })
            .unwrap_err()
            .to_string();
        assert_eq!(runs, 2, "{e}");
        assert!(e.contains("\"x\""), "{e}");
        s.conn
            .execute(
                "UPDATE documents SET state = replace(state, '\"node_count\":2', '\"node_count\":4000000000')",
                [],
            )
            .unwrap();
        let mut s = Store::open(&path).unwrap();
        let e = s
            .update_doc_reaching::<(), StoreError>("d", &[Reach::Parent("a.b")], |doc, _| {
                doc.set("a.b", json!(2)).unwrap();
                Ok(((), Save::Edited))
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("saved nodes of 4000000000"), "{e}");
        let e = s
            .read_doc_reaching("d", &[Reach::Value("a")], |d| d.get("a").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("saved nodes of 4000000000"), "{e}");
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
