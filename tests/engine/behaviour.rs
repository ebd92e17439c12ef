//! The original minisync library's behaviour, ported, plus the acknowledgement rules.

use minisync::engine::{Changes, ClientId, Document};
use serde_json::json;

fn doc(v: serde_json::Value) -> Document {
    Document::new(&v).unwrap()
}

/// Sends `from`'s changes for `to` through JSON text, as a transport would.
fn send(from: &Document, to: &mut Document) {
    let text = from.changes_for(to.client_id()).to_json_string();
    to.apply(&Changes::parse(&text).unwrap()).unwrap();
}

fn replica_of(d: &Document) -> Document {
    let text = d.changes().to_json_string();
    Document::from_changes(&Changes::parse(&text).unwrap()).unwrap()
}

#[test]
fn set_get_remove_object_properties() {
    let mut d = doc(json!({"foo": "bar"}));
    assert_eq!(d.get("foo").unwrap(), Some(json!("bar")));
    d.set("baz", json!(42)).unwrap();
    d.set("foo", json!("quu")).unwrap();
    assert_eq!(d.to_json(), json!({"foo": "quu", "baz": 42}));
    assert_eq!(d.remove("foo").unwrap(), Some(json!("quu")));
    assert_eq!(d.get("foo").unwrap(), None);
    assert_eq!(d.remove("foo").unwrap(), None);
    assert_eq!(d.to_json(), json!({"baz": 42}));
}

#[test]
fn what_changed_carries_only_new_keys() {
    let mut a = doc(json!({"foo": "bar", "keep": 1}));
    let mut b = replica_of(&a);
    send(&b, &mut a); // acknowledge
    let v = a.version();
    a.set("foo", json!("new")).unwrap();
    assert!(a.version() > v);
    let ch = a.changes_for(b.client_id());
    let text = ch.to_json_string();
    // A string set over a string is a text edit: the new word travels as a run of characters.
    assert!(text.contains("\"s\":\"new\""), "{text}");
    assert!(
        !text.contains("keep"),
        "unchanged keys must not travel: {text}"
    );
    b.apply(&ch).unwrap();
    assert_eq!(b.to_json(), a.to_json());
}

#[test]
fn nested_objects_and_removed_objects() {
    let mut a = doc(json!({"foo": {"bar": {"baz": 1}}}));
    assert_eq!(a.get("foo.bar.baz").unwrap(), Some(json!(1)));
    a.set("foo.bar.quu", json!([1, 2])).unwrap();
    assert_eq!(a.get("foo.bar.quu[1]").unwrap(), Some(json!(2)));
    let mut b = replica_of(&a);
    assert_eq!(b.to_json(), a.to_json());
    send(&b, &mut a);
    a.remove("foo.bar").unwrap();
    assert_eq!(a.to_json(), json!({"foo": {}}));
    send(&a, &mut b);
    assert_eq!(b.to_json(), json!({"foo": {}}));
    assert!(
        a.set("foo.bar.x", json!(1)).is_err(),
        "writing inside a removed object fails"
    );
}

#[test]
fn array_operations() {
    let mut d = doc(json!({"a": [1, 2, 3]}));
    assert_eq!(d.get("a[1]").unwrap(), Some(json!(2)));
    d.set("a[1]", json!("two")).unwrap();
    assert_eq!(d.push("a", json!(4)).unwrap(), 4);
    assert_eq!(d.pop("a").unwrap(), Some(json!(4)));
    assert_eq!(d.shift("a").unwrap(), Some(json!(1)));
    assert_eq!(d.unshift("a", json!(0)).unwrap(), 3);
    assert_eq!(d.to_json(), json!({"a": [0, "two", 3]}));
    let removed = d.splice("a", 1, 1, vec![json!("x"), json!("y")]).unwrap();
    assert_eq!(removed, vec![json!("two")]);
    assert_eq!(d.to_json(), json!({"a": [0, "x", "y", 3]}));
    d.insert("a", 4, json!(5)).unwrap();
    d.reverse("a").unwrap();
    assert_eq!(d.to_json(), json!({"a": [5, 3, "y", "x", 0]}));
    d.sort("a").unwrap();
    assert_eq!(d.to_json(), json!({"a": [0, 3, 5, "x", "y"]}));
    assert_eq!(d.remove_at("a", 0).unwrap(), json!(0));
    assert_eq!(d.len("a").unwrap(), 4);
    assert!(d.remove_at("a", 10).is_err());
    assert!(d.set("a[10]", json!(1)).is_err());
    d.set("a[4]", json!("end")).unwrap();
    assert_eq!(d.get("a[4]").unwrap(), Some(json!("end")));
    let mut b = replica_of(&d);
    assert_eq!(b.to_json(), d.to_json());
    send(&b, &mut d);
    d.sort_by("a", |x, y| y.to_string().cmp(&x.to_string()))
        .unwrap();
    send(&d, &mut b);
    assert_eq!(b.to_json(), d.to_json());
}

#[test]
fn replica_created_from_changes_has_same_data_and_own_id() {
    let a = doc(json!({"x": {"y": [1, {"z": true}]}}));
    let b = replica_of(&a);
    assert_eq!(b.to_json(), a.to_json());
    assert_eq!(b.id(), a.id());
    assert_ne!(b.client_id(), a.client_id());
    assert_eq!(b.peer(a.client_id()).unwrap().last_received, a.version());
    // The new replica owes the creator nothing.
    assert!(!b.changes_for(a.client_id()).has_changes());
}

#[test]
fn merging_with_and_without_knowing_the_client() {
    let mut a = doc(json!({"n": 1}));
    let mut b = replica_of(&a);
    b.set("n", json!(2)).unwrap();
    // a has never heard of b: its changes for an unknown client are everything.
    assert!(a.peer(b.client_id()).is_none());
    send(&b, &mut a);
    assert_eq!(a.get("n").unwrap(), Some(json!(2)));
    assert!(a.peer(b.client_id()).is_some());
    // Now it knows b; a change travels as a delta.
    a.set("n", json!(3)).unwrap();
    send(&a, &mut b);
    assert_eq!(b.get("n").unwrap(), Some(json!(3)));
}

#[test]
fn the_round_trip_from_the_original() {
    let mut alice = doc(json!({"foo": "initial state goes here"}));
    alice.set("foo", json!({"bar": ["baz"]})).unwrap();
    alice.set("foo.bar[1]", json!("quu")).unwrap();
    let mut bob = replica_of(&alice);
    assert_eq!(bob.to_json(), json!({"foo": {"bar": ["baz", "quu"]}}));
    bob.push("foo.bar", json!("foo you too")).unwrap();
    send(&bob, &mut alice);
    assert_eq!(alice.to_json(), bob.to_json());
    assert_eq!(
        alice.to_json(),
        json!({"foo": {"bar": ["baz", "quu", "foo you too"]}})
    );
    alice.set("foo.bar", json!([])).unwrap();
    send(&alice, &mut bob);
    assert_eq!(alice.to_json(), bob.to_json());
    assert_eq!(bob.to_json(), json!({"foo": {"bar": []}}));
}

#[test]
fn array_sync_of_primitives_objects_both_directions_and_removals() {
    let mut a = doc(json!({"list": [1, {"o": 1}, 3]}));
    let mut b = replica_of(&a);
    send(&b, &mut a);
    // Both sides change at once: a pushes a primitive and edits an object, b adds an object.
    a.push("list", json!(4)).unwrap();
    a.set("list[1].o", json!(2)).unwrap();
    b.unshift("list", json!({"new": "b"})).unwrap();
    b.remove_at("list", 3).unwrap(); // the 3
    let ca = a.changes_for(b.client_id());
    let cb = b.changes_for(a.client_id());
    a.apply(&cb).unwrap();
    b.apply(&ca).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(a.to_json(), json!({"list": [{"new": "b"}, 1, {"o": 2}, 4]}));
    // Keeping new local object values: b's new object survives a's later changes.
    a.remove_at("list", 2).unwrap();
    send(&a, &mut b);
    send(&b, &mut a);
    assert_eq!(a.to_json(), json!({"list": [{"new": "b"}, 1, 4]}));
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn client_states_relay_across_three_clients() {
    // Bob syncs with Alice, then with Charlie.
    let mut alice = doc(json!({"items": [], "title": "t"}));
    let mut bob = replica_of(&alice);
    send(&bob, &mut alice);
    alice.push("items", json!("from alice")).unwrap();
    send(&alice, &mut bob);
    send(&bob, &mut alice);
    let mut charlie = replica_of(&bob);
    assert_eq!(charlie.to_json(), alice.to_json());
    // Charlie learned from Bob's client states what Alice holds: its first changes for Alice
    // leave all of that out.
    assert!(charlie.peer(alice.client_id()).is_some());
    let first = charlie.changes_for(alice.client_id());
    assert!(!first.has_changes(), "{}", first.to_json_string());
    // Charlie's own edit, and only it, goes to Alice.
    charlie.set("title", json!("charlie's")).unwrap();
    let text = charlie.changes_for(alice.client_id()).to_json_string();
    assert!(!text.contains("from alice"), "{text}");
    assert!(text.contains("charlie's"));
    // Alice's edits reach Charlie through Bob, though they never exchange a message.
    alice.push("items", json!("alice's second")).unwrap();
    send(&alice, &mut bob);
    send(&bob, &mut charlie);
    assert_eq!(
        charlie.get("items[1]").unwrap(),
        Some(json!("alice's second"))
    );
    send(&charlie, &mut bob);
    send(&bob, &mut alice);
    assert_eq!(alice.to_json(), charlie.to_json());
    assert_eq!(bob.to_json(), charlie.to_json());
}

#[test]
fn removed_objects_merge() {
    let mut a = doc(json!({"x": {"y": 1}, "arr": [{"k": 1}, {"k": 2}]}));
    let mut b = replica_of(&a);
    send(&b, &mut a);
    a.remove("x").unwrap();
    a.remove_at("arr", 0).unwrap();
    send(&a, &mut b);
    assert_eq!(b.to_json(), json!({"arr": [{"k": 2}]}));
}

#[test]
fn removal_wins_over_a_concurrent_edit_inside() {
    let mut a = doc(json!({"x": {"y": 1}, "arr": [{"k": 1}]}));
    let mut b = replica_of(&a);
    send(&b, &mut a);
    a.remove("x").unwrap();
    a.remove_at("arr", 0).unwrap();
    b.set("x.y", json!(2)).unwrap();
    b.set("x.z", json!(3)).unwrap();
    b.set("arr[0].k", json!(9)).unwrap();
    let ca = a.changes_for(b.client_id());
    let cb = b.changes_for(a.client_id());
    a.apply(&cb).unwrap();
    b.apply(&ca).unwrap();
    assert_eq!(a.to_json(), json!({"arr": []}));
    assert_eq!(b.to_json(), a.to_json());
}

#[test]
fn save_and_restore_exactly() {
    let mut a = doc(json!({"a": [1, {"b": "c"}], "_s": {"v": 1}}));
    let mut b = replica_of(&a);
    a.remove_at("a", 0).unwrap();
    send(&a, &mut b);
    send(&b, &mut a);
    let saved = a.save();
    let r = Document::restore(&saved).unwrap();
    assert_eq!(r.save(), saved);
    assert_eq!(r.to_json(), a.to_json());
    assert_eq!(r.client_id(), a.client_id());
    assert_eq!(r.version(), a.version());
    assert_eq!(r.peers(), a.peers());
    // The restored replica keeps working with its peers.
    let mut r = r;
    r.push("a", json!(7)).unwrap();
    send(&r, &mut b);
    assert_eq!(b.to_json(), r.to_json());
    assert!(Document::restore("{").is_err());
    assert!(Document::restore(&saved.replace("\"order\":[", "\"order\":[7,")).is_err());
}

#[test]
fn no_ping_pong_after_a_full_exchange() {
    let mut a = doc(json!({"k": 1, "l": []}));
    let mut b = replica_of(&a);
    a.set("k", json!(2)).unwrap();
    b.push("l", json!("b")).unwrap();
    send(&a, &mut b);
    send(&b, &mut a);
    send(&a, &mut b); // acknowledgement only
    assert_eq!(a.to_json(), b.to_json());
    assert!(!a.changes_for(b.client_id()).has_changes());
    assert!(!b.changes_for(a.client_id()).has_changes());
    // Each one's lastAcknowledged reaches the other's version.
    assert_eq!(
        a.peer(b.client_id()).unwrap().last_acknowledged,
        a.version()
    );
    assert_eq!(
        b.peer(a.client_id()).unwrap().last_acknowledged,
        b.version()
    );
}

/// Mail crossing in flight: a replica merges a peer's edit (its version moves on, but only with
/// the peer's own changes), then the peer's later message that confirms an older version. The
/// peer holds everything, so lastAcknowledged must reach the version: otherwise `status` shows
/// a peer forever "behind" that nothing will ever catch up.
#[test]
fn acknowledgement_catches_up_when_mails_cross() {
    let mut a = doc(json!({"items": []}));
    let mut b = replica_of(&a);
    send(&b, &mut a); // b acknowledges the creation
    b.set("items[0]", json!("milk")).unwrap();
    let b_edit = b.changes_for(a.client_id()).to_json_string();
    a.set("title", json!("groceries")).unwrap();
    a.set("items[0]", json!("bread")).unwrap();
    send(&a, &mut b); // b merges a's edits before it sees anything else
    let b_ack = b.changes_for(a.client_id()).to_json_string();
    // a reads both of b's mails in one go.
    a.apply(&Changes::parse(&b_edit).unwrap()).unwrap();
    a.apply(&Changes::parse(&b_ack).unwrap()).unwrap();
    assert!(!a.changes_for(b.client_id()).has_changes());
    assert_eq!(
        a.peer(b.client_id()).unwrap().last_acknowledged,
        a.version()
    );
    send(&a, &mut b); // a's reply is a pure acknowledgement
    assert_eq!(a.to_json(), b.to_json());
    assert_eq!(
        b.peer(a.client_id()).unwrap().last_acknowledged,
        b.version()
    );
}

#[test]
fn keys_that_look_like_metadata_round_trip() {
    let v = json!({"_s": {"id": "x", "u": 1}, "v": [1], "__s": 2, "_": 3, "a": [{"_s": 1, "v": 2, "e": 3}]});
    let a = doc(v.clone());
    let b = replica_of(&a);
    assert_eq!(b.to_json(), v);
}

#[test]
fn concurrent_runs_of_inserts_do_not_interleave() {
    let mut a = doc(json!({"l": ["start", "end"]}));
    let mut b = replica_of(&a);
    send(&b, &mut a);
    a.splice("l", 1, 0, vec![json!("a1"), json!("a2"), json!("a3")])
        .unwrap();
    b.splice("l", 1, 0, vec![json!("b1"), json!("b2")]).unwrap();
    b.insert("l", 3, json!("b3")).unwrap();
    let ca = a.changes_for(b.client_id());
    let cb = b.changes_for(a.client_id());
    a.apply(&cb).unwrap();
    b.apply(&ca).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    let l: Vec<String> = serde_json::from_value(a.get("l").unwrap().unwrap()).unwrap();
    let joined = l.join(",");
    assert!(
        joined.contains("a1,a2,a3") && joined.contains("b1,b2,b3"),
        "runs interleaved: {joined}"
    );
    assert_eq!(l.first().map(String::as_str), Some("start"));
    assert_eq!(l.last().map(String::as_str), Some("end"));
}

#[test]
fn same_second_conflicts_are_decided_identically_everywhere() {
    // Frozen wall clocks: both replicas change the same key "at the same time" (now: a replica
    // refuses clock values more than a day ahead of its own wall clock).
    let t = minisync::engine::system_now_ms();
    let mut a = Document::with_ids(
        &json!({"k": 0}),
        "doc".into(),
        ClientId::parse("aaaaaaaaaaaaaaaa").unwrap(),
    )
    .unwrap();
    a.set_wall_clock(std::sync::Arc::new(move || t));
    let mut b =
        Document::from_changes_as(&a.changes(), ClientId::parse("bbbbbbbbbbbbbbbb").unwrap())
            .unwrap();
    b.set_wall_clock(std::sync::Arc::new(move || t));
    a.set("k", json!("a")).unwrap();
    b.set("k", json!("b")).unwrap();
    let ca = a.changes_for(b.client_id());
    let cb = b.changes_for(a.client_id());
    a.apply(&cb).unwrap();
    b.apply(&ca).unwrap();
    assert_eq!(a.to_json(), b.to_json());
}

#[test]
fn a_clock_hours_ahead_does_not_split_replicas() {
    let mut a = doc(json!({"k": 0}));
    let mut b = replica_of(&a);
    send(&b, &mut a);
    b.set_wall_clock(std::sync::Arc::new(|| {
        minisync::engine::system_now_ms() + 5 * 3600 * 1000
    }));
    b.set("k", json!("future")).unwrap();
    a.set("k", json!("now")).unwrap();
    let ca = a.changes_for(b.client_id());
    let cb = b.changes_for(a.client_id());
    a.apply(&cb).unwrap();
    b.apply(&ca).unwrap();
    assert_eq!(a.to_json(), b.to_json());
    // After seeing the skewed stamp, a's next edit still wins: its clock moved forward.
    a.set("k", json!("later")).unwrap();
    send(&a, &mut b);
    assert_eq!(b.get("k").unwrap(), Some(json!("later")));
}

#[test]
fn bulk_created_elements_travel_compactly() {
    let items: Vec<serde_json::Value> = (0..50).map(|i| json!({"i": i})).collect();
    let a = doc(json!({"items": items}));
    let v = a.changes().to_value();
    let list = v["changes"]["items"]["v"].as_array().unwrap();
    assert!(list[0].get("e").is_some(), "the first element names its id");
    // Ids are consecutive except where the wall clock moved to the next millisecond mid-build.
    let explicit = list[1..].iter().filter(|e| e.get("e").is_some()).count();
    assert!(explicit <= 3, "{explicit} explicit ids in a bulk insert");
    for e in &list[1..] {
        assert!(e.get("o").is_none(), "origins are implied: {e}");
        assert!(
            e["v"]["_s"].get("id").is_none(),
            "a node's id is its element's: {e}"
        );
    }
    let b = replica_of(&a);
    assert_eq!(b.to_json(), a.to_json());
}

#[test]
fn a_delta_names_the_paths_it_touches() {
    let mut a = doc(json!({"title": "t", "list": [1], "o": {"x": 1, "y": 2}, "gone": 1, "a.b": 0}));
    let b = replica_of(&a);
    send(&b, &mut a);
    a.set("title", json!("new")).unwrap();
    a.push("list", json!(2)).unwrap();
    a.set("o.y", json!(3)).unwrap();
    a.remove("gone").unwrap();
    a.set("[\"a.b\"]", json!(1)).unwrap();
    let mut paths = a.changes_for(b.client_id()).touched_paths(10);
    paths.sort();
    assert_eq!(paths, ["[\"a.b\"]", "gone", "list[]", "o.y", "title"]);
    assert_eq!(a.changes_for(b.client_id()).touched_paths(2).len(), 2);
}

/// One changes object for every device behind an address: each merges it, and it carries what
/// the device furthest behind lacks.
#[test]
fn one_changes_object_serves_every_device_of_an_address() {
    let mut c = doc(json!({"n": 0}));
    let mut a = replica_of(&c);
    let mut b = replica_of(&c);
    // c hears from both of alice's devices.
    send(&a, &mut c);
    send(&b, &mut c);
    c.set("n", json!(1)).unwrap();
    let both = [a.client_id(), b.client_id()];
    let text = c.changes_for_all(&both).to_json_string();
    a.apply(&Changes::parse(&text).unwrap()).unwrap();
    // b missed that mail; a acknowledges, c changes again.
    send(&a, &mut c);
    c.set("m", json!(2)).unwrap();
    let ch = c.changes_for_all(&both);
    assert!(ch.to_value()["changes"].to_string().contains("\"n\""));
    b.apply(&ch).unwrap();
    a.apply(&Changes::parse(&ch.to_json_string()).unwrap())
        .unwrap();
    assert_eq!(a.to_json(), json!({"n": 1, "m": 2}));
    assert_eq!(b.to_json(), a.to_json());
    // A client never heard from gets everything; no client at all, too.
    let stranger = ClientId::random();
    assert!(
        c.changes_for_all(&[a.client_id(), stranger])
            .changes_since()
            == 0
    );
    assert!(c.changes_for_all(&[]).changes_since() == 0);
    // News: only b's own change is new to a, and b writes to a itself.
    send(&a, &mut c);
    send(&b, &mut c);
    b.set("b", json!(true)).unwrap();
    send(&b, &mut c);
    assert!(c.changes_for_all(&[a.client_id()]).has_changes());
    assert!(!c.news_for_all(&[a.client_id()], &[b.client_id()], 0));
    assert!(c.news_for_all(&[a.client_id()], &[], 0));
    // What was sent already (up to c's version then) is on its way: not news again; a change of
    // c's own after that is.
    let sent = c.version();
    assert!(!c.news_for_all(&[a.client_id()], &[], sent));
    c.set("c", json!(1)).unwrap();
    assert!(c.news_for_all(&[a.client_id()], &[b.client_id()], sent));
}

#[test]
fn replicas_started_apart_under_one_name_are_one_document_merged_key_by_key() {
    let mut a =
        Document::common("settings", &json!({"a": 1, "both": "x", "same": [1, 2]})).unwrap();
    let mut b = Document::common(
        "settings",
        &json!({"b": {"c": true}, "both": "y", "same": [1, 2]}),
    )
    .unwrap();
    assert_eq!(a.id(), b.id(), "one name, one document id");
    assert_ne!(a.client_id(), b.client_id());
    assert_ne!(
        Document::common("other", &json!({})).unwrap().id(),
        a.id(),
        "another name is another document"
    );
    // Each receives the other's whole content as a full changes object, both ways, in JSON and
    // in the compact form.
    let to_b = Changes::from_bytes(&a.changes().to_compact()).unwrap();
    let to_a = b.changes_for(a.client_id());
    b.apply(&to_b).unwrap();
    a.apply(&Changes::parse(&to_a.to_json_string()).unwrap())
        .unwrap();
    assert_eq!(a.to_json(), b.to_json());
    let v = a.to_json();
    assert_eq!(v["a"], json!(1));
    assert_eq!(v["b"], json!({"c": true}));
    assert_eq!(
        v["same"],
        json!([1, 2]),
        "an equal array under one key stays one array"
    );
    assert!(v["both"] == json!("x") || v["both"] == json!("y"), "{v}");
    // A third replica created from either one's changes holds the same; saved and restored, it
    // still is the same document.
    let c = Document::from_changes(&a.changes()).unwrap();
    assert_eq!(c.to_json(), v);
    let restored = Document::restore(&c.save()).unwrap();
    assert_eq!(restored.id(), a.id());
    assert_eq!(restored.to_json(), v);
    assert_eq!(
        a.digest(),
        b.digest(),
        "replicas that agree have one digest"
    );
    // A bad start is refused.
    assert!(Document::common("x", &json!([1])).is_err());
}

#[test]
fn writes_to_tags_travel_in_both_forms_and_bad_ones_are_refused() {
    let a = doc(json!({"x": 1}));
    let mut ch = a.changes();
    assert!(ch.writes_to().is_empty());
    ch.set_writes_to(vec![
        "0123456789abcdef".into(),
        "fedcba9876543210".into(),
        String::new(),
    ]);
    let want = [
        "0123456789abcdef".to_string(),
        "fedcba9876543210".to_string(),
    ];
    assert_eq!(ch.writes_to(), want, "an empty tag is dropped");
    let by_json = Changes::parse(&ch.to_json_string()).unwrap();
    assert_eq!(by_json.writes_to(), want);
    let by_bytes = Changes::from_bytes(&ch.to_compact()).unwrap();
    assert_eq!(by_bytes.writes_to(), want);
    let mut v: serde_json::Value = serde_json::from_str(&ch.to_json_string()).unwrap();
    for bad in [json!("x"), json!([1]), json!([""]), json!(["a".repeat(65)])] {
        v["writesTo"] = bad.clone();
        let e = Changes::parse(&v.to_string()).unwrap_err().to_string();
        assert!(e.contains("$.writesTo"), "{bad}: {e}");
    }
}

/// An acknowledgement leaves out what the receivers get from its author, and claims none of it:
/// a receiver that merged it still takes the author's own mail (or its resend) for that change.
#[test]
fn an_acknowledgement_leaves_out_and_does_not_claim_what_its_authors_deliver() {
    let mut a = doc(json!({"list": [1], "note": "x"}));
    let mut b = replica_of(&a); // a's sibling
    let mut c = replica_of(&a); // the peer
    send(&a, &mut b);
    send(&a, &mut c);
    send(&b, &mut a);
    send(&c, &mut a);
    send(&b, &mut c);
    send(&c, &mut b);
    // A changes something, inside an object and an array; its mail reaches C but not B (lost).
    a.set("note", json!("changed by a")).unwrap();
    a.insert("list", 1, json!({"k": 1})).unwrap();
    send(&a, &mut c);
    // C's acknowledgement to A's address (devices A and B) leaves out A's changes.
    c.set("c", json!(true)).unwrap();
    let ack = c.changes_for_all_beyond(
        &[a.client_id(), b.client_id()],
        &[a.client_id(), b.client_id()],
    );
    let text = ack.to_json_string();
    assert!(!text.contains("changed by a"), "{text}");
    assert!(text.contains("\"c\""), "C's own change is carried: {text}");
    let ack = Changes::parse(&text).unwrap();
    b.apply(&ack).unwrap();
    assert_eq!(b.get("note").unwrap(), Some(json!("x")));
    assert_eq!(b.get("c").unwrap(), Some(json!(true)));
    // B does not believe it holds A's change: told what B holds, A's next changes for B (its
    // resend) still carry it.
    send(&b, &mut a);
    let resend = a.changes_for(b.client_id());
    assert!(resend.to_json_string().contains("changed by a"));
    // Once A's mail (or its resend) arrives, everyone agrees.
    b.apply(&Changes::parse(&resend.to_json_string()).unwrap())
        .unwrap();
    send(&c, &mut a);
    send(&a, &mut b);
    send(&b, &mut c);
    send(&c, &mut b);
    assert_eq!(b.to_json(), a.to_json());
    assert_eq!(c.to_json(), a.to_json());
    assert_eq!(a.digest(), b.digest());
    // With nothing of C's own, the acknowledgement carries no changes at all.
    a.set("again", json!(1)).unwrap();
    send(&a, &mut c);
    let bare = c.changes_for_all_beyond(
        &[a.client_id(), b.client_id()],
        &[a.client_id(), b.client_id()],
    );
    assert!(!bare.has_changes(), "{}", bare.to_json_string());
    // Unknown clients: everything, as for a new replica.
    let unknown = ClientId::random();
    assert!(
        Document::from_changes(&c.changes_for_all_beyond(&[unknown], &[a.client_id()])).is_ok()
    );
}
