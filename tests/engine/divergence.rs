//! Replicas that say they are in step prove it: a replica changed behind the engine's back (its
//! saved state edited) is found by the content digest and repaired by a full exchange.

use minisync::engine::{Changes, Document, RepairKind};
use serde_json::json;

fn wire(c: &Changes) -> Changes {
    Changes::parse(&c.to_json_string()).unwrap()
}

/// A pair in step, then `b`'s saved state edited: the value of "title" replaced under its stamp.
fn tampered_pair() -> (Document, Document) {
    let mut a = Document::new(&json!({"title": "original", "n": 1, "list": [1, 2]})).unwrap();
    let mut b = Document::from_changes(&wire(&a.changes())).unwrap();
    a.apply(&wire(&b.changes_for(a.client_id()))).unwrap();
    b.apply(&wire(&a.changes_for(b.client_id()))).unwrap();
    let saved = b.save();
    assert!(saved.contains("\"original\""));
    let b = Document::restore(&saved.replace("\"original\"", "\"tampered\"")).unwrap();
    assert_eq!(b.get("title").unwrap(), Some(json!("tampered")));
    (a, b)
}

#[test]
fn a_replica_edited_behind_the_engines_back_is_found_and_repaired() {
    let (mut a, mut b) = tampered_pair();
    // An ordinary edit travels; after merging it both hold the same knowledge.
    a.set("n", json!(2)).unwrap();
    let out = b.apply(&wire(&a.changes_for(b.client_id()))).unwrap();
    let d = out.diverged.expect("the divergence is found");
    assert_eq!(d.ours, b.digest());
    assert_eq!(d.theirs, a.digest());
    // The repair: b sends all of its state as a request, a merges it and answers with all of its.
    let request = wire(&b.changes().into_repair(RepairKind::Request));
    assert_eq!(request.repair(), Some(RepairKind::Request));
    a.apply(&request).unwrap();
    let reply = wire(&a.changes().into_repair(RepairKind::Reply));
    let out = b.apply(&reply).unwrap();
    assert!(
        out.verified,
        "after the exchange the digests agree: {out:?}"
    );
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.digest(), b.digest());
    // And the next ordinary exchange confirms it.
    b.set("n", json!(3)).unwrap();
    let out = a.apply(&wire(&b.changes_for(a.client_id()))).unwrap();
    assert!(out.verified && out.diverged.is_none(), "{out:?}");
}

#[test]
fn without_the_repair_mark_the_conflicting_full_state_is_refused() {
    let (a, mut b) = tampered_pair();
    let err = b.apply(&wire(&a.changes())).unwrap_err();
    assert!(
        err.to_string().contains("used here for another value"),
        "{err}"
    );
}

#[test]
fn the_digest_is_the_same_whatever_the_order_of_merges() {
    let mut a = Document::new(&json!({"t": "x", "l": []})).unwrap();
    let mut b = Document::from_changes(&wire(&a.changes())).unwrap();
    let mut c = Document::from_changes(&wire(&a.changes())).unwrap();
    a.push("l", json!(1)).unwrap();
    b.push("l", json!(2)).unwrap();
    c.set("t", json!({"deep": [1, {"x": 2}]})).unwrap();
    b.remove("t").unwrap();
    let (ca, cb, cc) = (wire(&a.changes()), wire(&b.changes()), wire(&c.changes()));
    let mut x = Document::from_changes(&ca).unwrap();
    x.apply(&cb).unwrap();
    x.apply(&cc).unwrap();
    let mut y = Document::from_changes(&cc).unwrap();
    y.apply(&cb).unwrap();
    y.apply(&ca).unwrap();
    assert_eq!(x.to_json(), y.to_json());
    assert_eq!(x.digest(), y.digest());
    assert_eq!(Document::restore(&x.save()).unwrap().digest(), x.digest());
}
