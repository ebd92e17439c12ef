//! The 100,000-record document (about 10 MB of JSON, as in the benchmarks) saved in parts and
//! restored: exactly the replica saved, at about twice the JSON's size at most; and after a
//! one-field edit, a save writes one node besides the head; and made from its full changes
//! object while that is read, the same replica as made from it parsed whole.

use minisync::engine::Document;
use serde_json::{Value, json};

fn big() -> Value {
    let records: Vec<Value> = (0..100_000)
        .map(|i| json!({"title": format!("Task number {i} with a reasonably descriptive title"), "done": i % 3 == 0, "n": i, "owner": format!("owner{}@example.com", i % 97)}))
        .collect();
    json!({ "records": records })
}

#[test]
fn a_ten_megabyte_replica_round_trips_in_parts_at_under_twice_its_size() {
    let value = big();
    let json_len = value.to_string().len();
    let mut doc = Document::new(&value).unwrap();
    drop(value);
    let parts = doc.save_parts(None);
    let saved: usize = parts.head.len() + parts.nodes.iter().map(|(_, n)| n.len()).sum::<usize>();
    assert!(
        saved <= 2 * json_len,
        "saved {saved} bytes for {json_len} bytes of JSON"
    );
    let mut rows: std::collections::BTreeMap<u32, Vec<u8>> = parts.nodes.into_iter().collect();
    let (back, _) = Document::restore_parts(&parts.head, rows.clone()).unwrap();
    assert_eq!(back.save(), doc.save());
    drop(back);

    doc.set("records[70000].done", json!(true)).unwrap();
    let next = doc.save_parts(Some(parts.mark));
    assert_eq!(next.nodes.len(), 1, "one node written for one field");
    rows.extend(next.nodes);
    let (back, _) = Document::restore_parts(&next.head, rows).unwrap();
    assert_eq!(back.save(), doc.save());
}

/// W1's receiving side on the 10 MB document: the replica made while its full changes object
/// is read is exactly the one made from the object parsed whole.
#[test]
fn a_ten_megabyte_replica_made_while_reading_is_the_usual_one() {
    let doc = Document::new(&big()).unwrap();
    let bytes = doc.changes().to_compact();
    let client = minisync::engine::ClientId::random();
    let streamed = Document::from_bytes_as(&bytes, client).unwrap();
    let parsed = minisync::engine::Changes::from_bytes(&bytes).unwrap();
    let usual = Document::from_changes_as(&parsed, client).unwrap();
    assert!(streamed.save() == usual.save());
    assert_eq!(streamed.digest(), doc.digest());
}
