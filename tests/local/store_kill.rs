//! The incremental store survives a kill at any point of a save (issue 16).
//!
//! A child process (this test binary run again, `child_edits_until_killed`) edits one document
//! in a loop, each edit one transaction writing the changed node rows and the head; some edits
//! write hundreds of rows. The parent kills it with SIGKILL after a random moment, reopens the
//! database and checks that the replica loads and equals one rebuilt from scratch by the same
//! edits up to the count it holds; then the next child carries on from there.

use std::process::Command;
use std::time::Duration;

use minisync::engine::Document;
use minisync::store::{Save, Store};
use rand::Rng;
use serde_json::{Value, json};

const CHILD_DB: &str = "MINISYNC_STORE_KILL_CHILD_DB";

fn initial() -> Value {
    json!({"count": 0, "list": [], "t": "start", "fields": {}})
}

/// Edit `i`: a field set, an element inserted, text typed, an element removed, and every 40th
/// edit a new array of 300 objects (one save of ~300 node rows).
fn edit(d: &mut Document, i: u64) {
    let len = d.len("list").unwrap_or(0);
    match i % 4 {
        0 => d.set(&format!("fields.f{}", i % 20), json!(i)).unwrap(),
        1 => d
            .insert("list", (i as usize) % (len + 1), json!({"i": i}))
            .unwrap(),
        2 => {
            let at = (i as usize * 7) % (d.text_len("t").unwrap() + 1);
            d.splice_text("t", at, 0, "ab").unwrap();
        }
        _ if len > 0 => {
            d.remove_at("list", (i as usize) % len).unwrap();
        }
        _ => {}
    }
    if i.is_multiple_of(40) {
        let big: Vec<Value> = (0..300).map(|k| json!({"k": k, "i": i})).collect();
        d.set(&format!("big{}", i % 3), Value::Array(big)).unwrap();
    }
    d.set("count", json!(i + 1)).unwrap();
}

fn count(d: &Document) -> u64 {
    d.get("count")
        .ok()
        .flatten()
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// The child's body: runs only when the parent starts this binary with `CHILD_DB` set.
#[test]
fn child_edits_until_killed() {
    let Ok(path) = std::env::var(CHILD_DB) else {
        return;
    };
    let mut store = Store::open(std::path::Path::new(&path)).unwrap();
    if !store.has_doc("d").unwrap() {
        store
            .create_doc("d", &Document::new(&initial()).unwrap(), false)
            .unwrap();
    }
    for _ in 0..1_000_000 {
        store
            .update_doc::<_, minisync::store::StoreError>("d", |d, _| {
                let i = count(d);
                edit(d, i);
                Ok(((), Save::Edited))
            })
            .unwrap();
    }
}

#[test]
fn a_replica_killed_mid_save_reopens_equal_to_one_rebuilt_from_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.sqlite");
    let mut rng = rand::rng();
    let mut counts = Vec::new();
    for round in 0..24 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store_kill::child_edits_until_killed",
                "--test-threads",
                "1",
            ])
            .env(CHILD_DB, &db)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..300)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let mut store = Store::open(&db).unwrap();
        if !store.has_doc("d").unwrap() {
            counts.push(0);
            continue; // killed before the document's first commit
        }
        let (loaded, saved) = store
            .read_doc("d", |d| (d.to_json(), d.save()))
            .unwrap_or_else(|e| panic!("round {round}: the replica does not load: {e}"));
        let n = loaded["count"].as_u64().unwrap();
        let mut rebuilt = Document::new(&initial()).unwrap();
        for i in 0..n {
            edit(&mut rebuilt, i);
        }
        assert_eq!(loaded, rebuilt.to_json(), "round {round}, after {n} edits");
        // The loaded replica is whole: its own full save restores to the same content.
        let again = Document::restore(&saved).unwrap();
        assert_eq!(again.to_json(), loaded, "round {round}");
        counts.push(n);
    }
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "nothing committed is lost: {counts:?}"
    );
    eprintln!("edits committed after each kill: {counts:?}");
    let last = *counts.last().unwrap();
    assert!(last >= 40, "the children made progress: {counts:?}");
}
