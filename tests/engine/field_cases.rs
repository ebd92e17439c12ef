//! Field cases: failure modes reported against other sync engines and mail tools (see
//! `../shared/field-cases/`), each turned into a test of the right result.

use std::sync::Arc;

use minisync::engine::{Changes, Document};
use serde_json::{Value, json};

fn wire(c: &Changes) -> Changes {
    Changes::parse(&c.to_json_string()).unwrap()
}

/// `from` sends `to` what it lacks, through JSON text.
fn send(from: &Document, to: &mut Document) -> minisync::engine::Result<()> {
    let ch = wire(&from.changes_for(to.client_id()));
    to.apply(&ch).map(|_| ())
}

fn replica(d: &Document) -> Document {
    Document::from_changes(&wire(&d.changes())).unwrap()
}

fn exchange(a: &mut Document, b: &mut Document) {
    for _ in 0..3 {
        send(a, b).unwrap();
        send(b, a).unwrap();
    }
}

// ---------------------------------------------------------------- clock skew (yugabyte#10628)

/// A peer whose wall clock is far in the future (a dead RTC, a hostile peer). Its changes are
/// refused with an error that names it and how far ahead it is, so no replica's clock is dragged
/// along; every replica's own clock keeps advancing, even one whose own wall clock is broken, and
/// nothing saved ever becomes unloadable.
#[test]
fn fc_clock_from_far_future_is_refused_and_never_wedges() {
    let mut a = Document::new(&json!({"list": [], "n": 0})).unwrap();
    let mut b = replica(&a);
    exchange(&mut a, &mut b);
    // B's clock: year ~4200 (2^46 ms), beyond what a clock value can hold.
    b.set_wall_clock(Arc::new(|| 1u64 << 46));
    b.set("n", json!(1)).unwrap();
    b.push("list", json!("b1")).unwrap();
    b.push("list", json!("b2")).unwrap();
    let r = send(&b, &mut a);
    println!("A merging B's far-future edit: {r:?}");
    match r {
        Err(minisync::engine::Error::ClockAhead {
            client, ahead_ms, ..
        }) => {
            assert_eq!(client, b.client_id());
            assert!(ahead_ms > 1000 * 365 * 86_400_000, "{ahead_ms}");
        }
        other => panic!("expected ClockAhead, got {other:?}"),
    }
    assert_eq!(a.get("n").unwrap(), Some(json!(0)), "nothing of it merged");
    // A, with a normal clock, edits and pushes; every stamp is new.
    a.set("p", json!("first")).unwrap();
    a.set("q", json!("second")).unwrap();
    a.push("list", json!("x")).unwrap();
    a.push("list", json!("y")).unwrap();
    let text = a.changes_for(b.client_id()).to_json_string();
    let r = b.apply(&Changes::parse(&text).unwrap());
    assert!(r.is_ok(), "B refused A's ordinary edits: {r:?}");
    // B's own clock, capped, still advances: its saved state loads and its pushes stay distinct.
    for i in 0..50 {
        b.push("list", json!(i)).unwrap();
    }
    let restored = Document::restore(&b.save()).unwrap();
    assert_eq!(restored.to_json(), b.to_json());
    // A third replica made from A now, and A's saved state, load.
    let c = Document::from_changes(&wire(&a.changes()));
    assert!(c.is_ok());
    assert!(Document::restore(&a.save()).is_ok());
}

/// The same refusal over the wire from a relayed clock value: a third replica's knowledge that a
/// far-future peer poisoned is refused too, with that client named.
#[test]
fn fc_relayed_far_future_knowledge_is_refused() {
    let mut a = Document::new(&json!({"n": 0})).unwrap();
    let mut b = replica(&a);
    exchange(&mut a, &mut b);
    let mut v = a.changes_for(b.client_id()).to_value();
    let rogue = "zzzzzzzzzzzzzzzz";
    v["knows"][rogue] = json!(format!("{:x}", (1u64 << 46) << 16 >> 2));
    let r = Changes::parse(&v.to_string()).and_then(|c| b.apply(&c));
    assert!(
        matches!(r, Err(minisync::engine::Error::ClockAhead { client, .. }) if client.to_string() == rogue),
        "{r:?}"
    );
}

// ---------------------------------------------------------------- numbers (jsonpack#33, js-yaml#56)

#[test]
fn fc_numbers_round_trip() {
    let text = r#"{"id":12345678901234567890123,"u64max":18446744073709551615,"i64min":-9223372036854775808,"negzero":-0,"negzerof":-0.0,"tenth":0.1,"tiny":5e-324,"big":1.7976931348623157e308,"e":1E2,"safe":9007199254740993}"#;
    let v: Value = serde_json::from_str(text).unwrap();
    println!("input text : {text}");
    println!("serde value: {v}");
    let a = Document::new(&v).unwrap();
    let b = replica(&a);
    let snap = Document::restore(&b.save()).unwrap();
    println!("A          : {}", a.to_json());
    println!("B (wire)   : {}", b.to_json());
    println!("B restored : {}", snap.to_json());
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(
        serde_json::to_string(&a.to_json()).unwrap(),
        serde_json::to_string(&snap.to_json()).unwrap()
    );
    // Kept exactly, through the wire and a save: never rounded to a float.
    let out = serde_json::to_string(&snap.to_json()).unwrap();
    for exact in [
        "12345678901234567890123",
        "18446744073709551615",
        "-9223372036854775808",
        "9007199254740993",
    ] {
        assert!(out.contains(exact), "{exact} not kept exactly in {out}");
    }
    let mut c = Document::new(&json!({})).unwrap();
    c.set(
        "big",
        serde_json::from_str("99999999999999999999999").unwrap(),
    )
    .unwrap();
    assert_eq!(
        c.get("big").unwrap().unwrap().to_string(),
        "99999999999999999999999"
    );
}

// ---------------------------------------------------------------- keys (actor-ts#767 __proto__ keys)

#[test]
fn fc_metadata_like_and_unicode_keys() {
    let keys = [
        "_s",
        "__s",
        "_",
        "__",
        "___s",
        "",
        "v",
        "e",
        "o",
        "r",
        "t",
        "ri",
        "a",
        "k",
        "d",
        "u",
        "id",
        "__proto__",
        "constructor",
        "caf\u{e9}",
        "cafe\u{301}",
        "\u{1F600}",
        "a.b",
        "a[0]",
        "x\"y",
        "nul\u{0}byte",
        "minisync",
        "formatVersion",
    ];
    let mut obj = serde_json::Map::new();
    for k in keys {
        obj.insert(
            k.to_string(),
            json!({"_s": k, "inner": [{"_s": 1, "__s": {"_": 2}}]}),
        );
    }
    let v = Value::Object(obj);
    let mut a = Document::new(&json!({"m": v.clone()})).unwrap();
    let mut b = replica(&a);
    exchange(&mut a, &mut b);
    assert_eq!(b.to_json(), json!({"m": v}));
    // Edits to such keys through paths, and their deltas.
    for k in keys {
        let p = format!("m[\"{}\"]._s", k.replace('"', "\\\""));
        let r = a.set(&p, json!(format!("edited {k}")));
        if r.is_err() {
            println!("path {p:?}: {r:?}");
        }
    }
    exchange(&mut a, &mut b);
    let restored = Document::restore(&b.save()).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.to_json(), restored.to_json());
    // Keys that contain ']', '"', '.' or '\\' are named by quoting (docs/PROTOCOL.md, "Paths").
    let mut c = Document::new(&json!({"x]y": 1, "a.b": 1, "q\"t": 1, "b\\s": 1})).unwrap();
    for (path, key) in [
        ("[\"x]y\"]", "x]y"),
        ("[\"a.b\"]", "a.b"),
        ("[\"q\\\"t\"]", "q\"t"),
        ("[\"b\\\\s\"]", "b\\s"),
    ] {
        c.set(path, json!(2)).unwrap();
        assert_eq!(c.get(path).unwrap(), Some(json!(2)), "{path}");
        assert_eq!(c.to_json()[key], json!(2), "{key}");
    }
}

// ---------------------------------------------------------------- deep nesting (serde_json depth)

fn nested_arrays(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

fn nested_objects(levels: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!({"k": v});
    }
    v
}

#[test]
fn fc_deep_documents_that_are_accepted_also_travel() {
    for levels in [150usize, 190, 198, 199, 200] {
        for (kind, inner) in [
            ("arrays", nested_arrays(levels)),
            ("objects", nested_objects(levels)),
        ] {
            let doc = json!({ "d": inner });
            let made = Document::new(&doc);
            let Ok(a) = made else {
                println!("{kind} {levels}: refused locally: {:?}", made.err());
                continue;
            };
            let text = a.changes().to_json_string();
            let parsed = Changes::parse(&text);
            let b = parsed
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|c| Document::from_changes(c).map_err(|e| e.to_string()));
            let restored = Document::restore(&a.save())
                .map(|_| ())
                .map_err(|e| e.to_string());
            println!(
                "{kind} {levels}: local ok; wire parse {}; replica {}; snapshot {:?}",
                parsed.is_ok(),
                b.as_ref().map(|_| "ok").unwrap_or_else(|e| e),
                restored
            );
            assert!(
                b.is_ok(),
                "{kind} {levels}: accepted locally but refused by a peer"
            );
            assert!(
                restored.is_ok(),
                "{kind} {levels}: accepted locally but cannot be restored"
            );
        }
    }
}

// ------------------------------------------- concurrent delete vs edit (automerge-classic#98, #26)

#[test]
fn fc_concurrent_delete_vs_update_and_double_delete() {
    let mut a = Document::new(&json!({"foo": ["a", "b", {"x": 1}]})).unwrap();
    let mut b = replica(&a);
    exchange(&mut a, &mut b);
    a.remove_at("foo", 0).unwrap(); // delete element 0
    b.set("foo[0]", json!("dd")).unwrap(); // concurrently overwrite it
    a.remove_at("foo", 1).unwrap(); // A deletes the object (now index 1)
    b.set("foo[2].x", json!(2)).unwrap(); // B edits inside it
    b.remove_at("foo", 1).unwrap(); // both delete "b"
    a.remove_at("foo", 0).unwrap();
    let (mut a2, mut b2) = (replica_same(&a), replica_same(&b));
    // order 1: A first; order 2: B first
    send(&a, &mut b).unwrap();
    send(&b, &mut a).unwrap();
    send(&b2, &mut a2).unwrap();
    send(&a2, &mut b2).unwrap();
    exchange(&mut a, &mut b);
    exchange(&mut a2, &mut b2);
    println!(
        "A={} B={} A2={} B2={}",
        a.to_json(),
        b.to_json(),
        a2.to_json(),
        b2.to_json()
    );
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a2.to_json(), b2.to_json());
    assert_eq!(a.to_json(), a2.to_json());
}

fn replica_same(d: &Document) -> Document {
    Document::restore(&d.save()).unwrap()
}

// ------------------------------------------------ duplicated / reordered / stale delivery

#[test]
fn fc_duplicate_and_reordered_delivery() {
    let mut a = Document::new(&json!({"items": []})).unwrap();
    let mut b = replica(&a);
    exchange(&mut a, &mut b);
    let mut msgs = Vec::new();
    for i in 0..4 {
        a.push("items", json!(i)).unwrap();
        a.set("last", json!(i)).unwrap();
        msgs.push(a.changes_for(b.client_id()).to_json_string());
    }
    let full_old = msgs[0].clone();
    for i in [3usize, 1, 0, 2, 3, 1] {
        b.apply(&Changes::parse(&msgs[i]).unwrap()).unwrap();
    }
    b.apply(&Changes::parse(&full_old).unwrap()).unwrap();
    exchange(&mut a, &mut b);
    println!("A={} B={}", a.to_json(), b.to_json());
    assert_eq!(a.to_json(), b.to_json());
    assert!(!a.changes_for(b.client_id()).has_changes());
    assert!(!b.changes_for(a.client_id()).has_changes());
}

// ------------------------------------------- delivery with a gap (syncthing out-of-order files)

/// A changes object that starts after a version the receiver never got (a base file that has not
/// arrived, while the latest file has) is merged as if nothing were missing: the receiver records
/// the sender's version and knowledge, and the missing change never comes again.
#[test]
fn fc_gap_in_delivery_is_detected_or_filled() {
    let mut a = Document::new(&json!({"x": "old", "y": "old"})).unwrap();
    let mut b = replica(&a);
    exchange(&mut a, &mut b);
    let base_version = a.version();
    a.set("x", json!("changed in v+1")).unwrap(); // the change B will miss
    let missed = a.version();
    a.set("y", json!("changed in v+2")).unwrap();
    // B receives only what changed after `missed` (a delta starting past what B holds).
    let delta = wire(&a.changes_since(missed));
    println!(
        "B holds A's v{base_version}; delta has changesSince {} fromVersion {}",
        delta.changes_since(),
        delta.from_version()
    );
    let r = b.apply(&delta);
    println!("B.apply(delta with a gap) = {r:?}; B = {}", b.to_json());
    // B acknowledges what it merged (its reply reaches A before A sends again).
    send(&b, &mut a).unwrap();
    // Then the normal protocol runs to quiescence.
    exchange(&mut a, &mut b);
    println!("after full exchange: A={} B={}", a.to_json(), b.to_json());
    println!(
        "A owes B: {}; B owes A: {}",
        a.changes_for(b.client_id()).has_changes(),
        b.changes_for(a.client_id()).has_changes()
    );
    assert_eq!(a.to_json(), b.to_json(), "replicas diverge for good");
}
