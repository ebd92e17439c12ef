//! Hostile and broken changes objects: each is refused with an error that says what is wrong, and
//! the replica is left exactly as it was.

use minisync::engine::{Changes, Document, Error};
use serde_json::{Value, json};

struct Pair {
    a: Document,
    b: Document,
}

fn pair() -> Pair {
    let mut a =
        Document::new(&json!({"title": "t", "list": [1, {"x": 1}], "o": {"k": 1}})).unwrap();
    let mut b = Document::from_changes(&a.changes()).unwrap();
    a.apply(&b.changes_for(a.client_id())).unwrap();
    // A number over the string: a write of the key (a string over a string is a text edit).
    b.set("title", json!(42)).unwrap();
    b.push("list", json!("new")).unwrap();
    Pair { a, b }
}

/// A valid delta from b to a as JSON, to be broken by each case.
fn delta(p: &Pair) -> Value {
    p.b.changes_for(p.a.client_id()).to_value()
}

/// Applies text to a, expects an error containing `needle`, and checks that a is unchanged.
fn refused(p: &mut Pair, text: &str, needle: &str) -> Error {
    let before = p.a.save();
    let result = Changes::parse(text).and_then(|c| p.a.apply(&c));
    let err = result.expect_err("hostile changes were accepted");
    assert!(
        err.to_string().contains(needle),
        "error {err:?} does not mention {needle:?}"
    );
    assert_eq!(p.a.save(), before, "replica changed by refused changes");
    err
}

#[test]
fn the_valid_delta_is_accepted() {
    let mut p = pair();
    let text = delta(&p).to_string();
    p.a.apply(&Changes::parse(&text).unwrap()).unwrap();
    assert_eq!(p.a.to_json(), p.b.to_json());
}

#[test]
fn not_json_and_truncated() {
    let mut p = pair();
    refused(&mut p, "this is not json", "not valid JSON");
    let text = delta(&p).to_string();
    refused(&mut p, &text[..text.len() / 2], "not valid JSON");
    refused(&mut p, "", "not valid JSON");
    refused(&mut p, "[1,2,3]", "must be a JSON object");
    refused(&mut p, "{}", "marker");
}

#[test]
fn wrong_document() {
    let mut p = pair();
    let mut v = delta(&p);
    v["id"] = json!("someotherdocument");
    refused(&mut p, &v.to_string(), "changes are for document");
    let other = Document::new(&json!({"x": 1})).unwrap();
    let mut v = other.changes().to_value();
    v["id"] = json!(p.a.id());
    refused(&mut p, &v.to_string(), "document root");
}

#[test]
fn newer_format_and_missing_fields() {
    let mut p = pair();
    let mut v = delta(&p);
    v["formatVersion"] = json!(4);
    refused(&mut p, &v.to_string(), "upgrade minisync");
    let mut v = delta(&p);
    v["formatVersion"] = json!(2);
    refused(&mut p, &v.to_string(), "older minisync");
    let mut v = delta(&p);
    v.as_object_mut().unwrap().remove("sentBy");
    refused(&mut p, &v.to_string(), "$.sentBy");
    let mut v = delta(&p);
    v["fromVersion"] = json!(-3);
    refused(&mut p, &v.to_string(), "$.fromVersion");
    let mut v = delta(&p);
    v["changesSince"] = json!(1_000_000);
    refused(&mut p, &v.to_string(), "after fromVersion");
}

#[test]
fn nesting_ten_thousand_levels_deep() {
    let mut p = pair();
    let mut deep = String::new();
    for _ in 0..10_000 {
        deep.push_str("{\"_s\":{\"id\":\"1-aaaaaaaaaaaaaaaa\",\"u\":1},\"k\":");
    }
    deep.push('1');
    for _ in 0..10_000 {
        deep.push('}');
    }
    let mut v = delta(&p).to_string();
    v = v.replacen(
        "\"changes\":{",
        &format!("\"changes\":{{\"deep\":{deep},"),
        1,
    );
    refused(&mut p, &v, "nests deeper");
    // The same, built as a Value by a caller (no text parsing involved), run on a small stack.
    let handle = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let mut nested = json!(1);
            for _ in 0..10_000 {
                nested = Value::Array(vec![nested]);
            }
            let mut v = json!({"minisync": "changes", "formatVersion": 1});
            v["x"] = nested;
            let err = Changes::from_value(&v).unwrap_err();
            // Dismantle without deep recursion in Drop.
            let mut cur = v["x"].take();
            while let Value::Array(mut a) = cur {
                cur = a.pop().unwrap_or(Value::Null);
            }
            err
        })
        .unwrap();
    assert!(handle.join().unwrap().to_string().contains("nests deeper"));
    // A document deeper than the limit is refused on the local side too.
    let mut deep_value = json!(1);
    for _ in 0..300 {
        deep_value = json!({"d": deep_value});
    }
    assert!(matches!(
        p.a.set("deep", deep_value),
        Err(Error::Path { .. })
    ));
}

#[test]
fn a_huge_array_of_garbage() {
    let mut p = pair();
    let mut v = delta(&p);
    let garbage: Vec<Value> = (0..200_000).map(|i| json!(i)).collect();
    v["changes"]["list"]["v"] = Value::Array(garbage);
    refused(&mut p, &v.to_string(), "an element must be an object");
    let mut v = delta(&p);
    let many: Vec<Value> = (0..200_000)
        .map(|i| json!({"e": format!("{:x}-zzzzzzzzzzzzzzzz", i + 1), "o": "ffffff-zzzzzzzzzzzzzzzz", "v": i}))
        .collect();
    v["changes"]["list"]["v"] = Value::Array(many);
    refused(
        &mut p,
        &v.to_string(),
        "newer than what the sender says it holds",
    );
}

#[test]
fn wrong_types_inside_state() {
    let mut p = pair();
    for (path, bad, needle) in [
        ("id", json!(42), "must be a stamp string"),
        ("id", json!("nonsense"), "not <hex clock>-<client id>"),
        ("u", json!("one"), "non-negative integer"),
        ("a", json!("yes"), "must be true or false"),
        ("k", json!([1]), "must be an object"),
        ("zz", json!(1), "unknown state field"),
    ] {
        let mut v = delta(&p);
        v["changes"]["_s"][path] = bad;
        refused(&mut p, &v.to_string(), needle);
    }
    let mut v = delta(&p);
    v["changes"]["_s"] = json!("state");
    refused(&mut p, &v.to_string(), "needs its \"_s\"");
    let mut v = delta(&p);
    v["changes"]["list"]["_s"]["ri"] = json!({"not": "a list"});
    refused(&mut p, &v.to_string(), "must be an array");
    let mut v = delta(&p);
    v["changes"]["bare"] = json!([1, 2]);
    refused(&mut p, &v.to_string(), "bare array");
    let mut v = delta(&p);
    v["changes"]["_x"] = json!(1);
    refused(&mut p, &v.to_string(), "unknown metadata key");
    let mut v = delta(&p);
    v["clientStates"] = json!([{"clientID": "short"}]);
    refused(&mut p, &v.to_string(), "clientID");
}

#[test]
fn duplicate_and_unknown_ids() {
    let mut p = pair();
    // A new node appearing twice.
    p.b.set("fresh", json!({"q": 1})).unwrap();
    let mut v = delta(&p);
    let fresh = v["changes"]["fresh"].clone();
    v["changes"]["fresh2"] = fresh;
    refused(&mut p, &v.to_string(), "appears twice");
    // A known node moved to another place.
    let mut v = delta(&p);
    let o = p.a.changes().to_value()["changes"]["o"].clone();
    v["changes"]["elsewhere"] = o;
    refused(&mut p, &v.to_string(), "known here at another place");
    // An element that follows an element nobody has.
    let mut v = delta(&p);
    let e = v["changes"]["list"]["v"][0].clone();
    let mut e2 = e.clone();
    let id = e["e"].as_str().unwrap().to_string();
    let (h, c) = id.split_once('-').unwrap();
    let h = u64::from_str_radix(h, 16).unwrap();
    e2["o"] = json!(format!("{:x}-{c}", h - 1));
    v["changes"]["list"]["v"] = json!([e2]);
    // Not refused for ever (an earlier message may have been lost): merged without it, and
    // reported as incomplete so that the acknowledgement asks for the rest.
    let before = p.a.to_json();
    let out = p.a.apply(&Changes::parse(&v.to_string()).unwrap()).unwrap();
    assert!(
        out.incomplete,
        "a merge that left an element out is incomplete"
    );
    assert_eq!(p.a.get("list").unwrap(), before["list"].clone().into());
    let mut p = pair();
    // The same element id twice in one array.
    let mut v = delta(&p);
    v["changes"]["list"]["v"] = json!([e.clone(), e]);
    refused(&mut p, &v.to_string(), "appears twice in one array");
    // One stamp used for two different values.
    let mut v = delta(&p);
    let stamp = p.a.changes().to_value()["changes"]["_s"]["id"].clone();
    v["changes"]["_s"]["k"] = json!({"title": stamp});
    let owner = stamp
        .as_str()
        .unwrap()
        .split_once('-')
        .unwrap()
        .1
        .to_string();
    v["knows"][&owner] = p.a.changes().to_value()["knows"][&owner].clone();
    refused(&mut p, &v.to_string(), "used here for another value");
}

#[test]
fn versions_and_stamps_from_the_future() {
    let mut p = pair();
    let mut v = delta(&p);
    let me = p.a.client_id().to_string();
    for row in v["clientStates"].as_array_mut().unwrap() {
        if row["clientID"] == json!(me) {
            row["lastReceived"] = json!(1_000_000);
        }
    }
    // An impossible claim about this replica is ignored (and reported), not obeyed: obeying it
    // would stop this replica from ever sending its changes; refusing the message would block
    // every later genuine one.
    let out = p.a.apply(&Changes::parse(&v.to_string()).unwrap()).unwrap();
    assert_eq!(out.impossible_claim, Some(1_000_000));
    assert_eq!(p.a.to_json(), p.b.to_json());
    p.a.set("after", json!(1)).unwrap();
    assert!(
        p.a.changes_for(p.b.client_id()).has_changes(),
        "the claim must not stop this replica from sending its changes"
    );
    let mut p = pair();
    // A clock value far ahead of this replica's wall clock (but inside the format's range).
    let mut v = delta(&p);
    let b = p.b.client_id().to_string();
    v["knows"][&b] = json!("3ff0000000000000");
    let err = refused(&mut p, &v.to_string(), "ahead of this replica's clock");
    assert!(matches!(err, Error::ClockAhead { .. }), "{err:?}");
    // A claim that this replica made changes it never made.
    let mut v = delta(&p);
    let a = p.a.client_id().to_string();
    v["knows"][&a] = json!(format!(
        "{:x}",
        (minisync::engine::system_now_ms() + 3_600_000) << 16
    ));
    refused(&mut p, &v.to_string(), "beyond this replica's own clock");
    let mut v = delta(&p);
    v["changes"]["_s"]["k"] = json!({"title": "7fffffffffffffff-aaaaaaaaaaaaaaaa"});
    refused(&mut p, &v.to_string(), "far future");
    // A stamp beyond what the sender says it holds.
    let mut v = delta(&p);
    let b = p.b.client_id().to_string();
    v["changes"]["_s"]["k"] = json!({"title": format!("3ffffffffffffff0-{b}")});
    refused(
        &mut p,
        &v.to_string(),
        "newer than what the sender says it holds",
    );
}

#[test]
fn own_client_id_and_causality() {
    let mut p = pair();
    let mut v = delta(&p);
    v["sentBy"] = json!(p.a.client_id().to_string());
    refused(&mut p, &v.to_string(), "own client id");
    // An element not newer than its origin.
    let mut v = delta(&p);
    let elems = p.a.changes().to_value()["changes"]["list"]["v"].clone();
    let first = elems[0]["e"].as_str().unwrap().to_string();
    let mut e = v["changes"]["list"]["v"][0].clone();
    e["e"] = json!(first.clone());
    e["o"] = json!(first);
    v["changes"]["list"]["v"] = json!([e]);
    refused(&mut p, &v.to_string(), "not newer than its origin");
}

#[test]
fn user_keys_named_like_metadata_survive_a_delta() {
    let mut p = pair();
    p.b.set("o._s", json!({"v": [1, {"_s": "x"}]})).unwrap();
    p.b.set("o.v", json!("vee")).unwrap();
    p.b.set("o.__s", json!(2)).unwrap();
    let text = p.b.changes_for(p.a.client_id()).to_json_string();
    p.a.apply(&Changes::parse(&text).unwrap()).unwrap();
    assert_eq!(
        p.a.get("o").unwrap(),
        Some(json!({"k": 1, "_s": {"v": [1, {"_s": "x"}]}, "v": "vee", "__s": 2}))
    );
}

fn piece(v: &mut Value) -> &mut Value {
    &mut v["changes"]["t"]["_t"]["p"][0]
}

/// a and b share a text; b typed into it. The delta's text object, broken in each way.
fn text_pair() -> Pair {
    let mut a = Document::new(&json!({"t": "hello world"})).unwrap();
    let mut b = Document::from_changes(&a.changes()).unwrap();
    a.apply(&b.changes_for(a.client_id())).unwrap();
    b.splice_text("t", 5, 0, " big").unwrap();
    Pair { a, b }
}

#[test]
fn hostile_text_pieces_are_refused_whole() {
    let mut p = text_pair();
    let good = delta(&p);
    assert!(good["changes"]["t"]["_t"].is_object(), "{good}");
    let mut v = good.clone();
    piece(&mut v)["s"] = json!("");
    refused(&mut p, &v.to_string(), "not empty");
    let mut v = good.clone();
    piece(&mut v)["n"] = json!(2);
    refused(&mut p, &v.to_string(), "either characters");
    let mut v = good.clone();
    piece(&mut v)["zz"] = json!(1);
    refused(&mut p, &v.to_string(), "unknown piece field");
    let mut v = good.clone();
    let own = piece(&mut v)["e"].clone();
    piece(&mut v)["o"] = own;
    refused(&mut p, &v.to_string(), "its own characters");
    // A run far beyond what the sender says it holds (its clock would drag ours along).
    let mut v = good.clone();
    let e = piece(&mut v)["e"].as_str().unwrap().to_string();
    let (_, client) = e.split_once('-').unwrap();
    piece(&mut v)["e"] = json!(format!("3fffffffffff0000-{client}"));
    refused(&mut p, &v.to_string(), "newer than what the sender says");
    let mut v = good.clone();
    v["changes"]["t"]["_t"]["p"] = json!("not a list");
    refused(&mut p, &v.to_string(), "array of pieces");
    let mut v = good;
    v["changes"]["t"]["_t"]["extra"] = json!(1);
    refused(&mut p, &v.to_string(), "unknown text field");
}

#[test]
fn a_text_piece_whose_origin_is_missing_waits() {
    let mut p = text_pair();
    let mut v = delta(&p);
    let e = v["changes"]["t"]["_t"]["p"][0]["e"]
        .as_str()
        .unwrap()
        .to_string();
    let (h, client) = e.split_once('-').unwrap();
    let h = u64::from_str_radix(h, 16).unwrap();
    v["changes"]["t"]["_t"]["p"][0]["o"] = json!(format!("{:x}-{client}", h - 1));
    let before = p.a.to_json();
    let out = p.a.apply(&Changes::parse(&v.to_string()).unwrap()).unwrap();
    assert!(out.incomplete, "a text left out makes the merge incomplete");
    assert_eq!(p.a.to_json(), before);
    // The genuine delta then merges.
    p.a.apply(&p.b.changes_for(p.a.client_id())).unwrap();
    assert_eq!(p.a.get("t").unwrap(), Some(json!("hello big world")));
}

/// Compact bytes damaged at random (bytes changed, cut, inserted, dropped): each is read or
/// refused, never a panic, and what is read merges or is refused with the replica unchanged when
/// refused. The reader and the merge check were rewritten for speed; this is their net.
#[test]
fn randomly_damaged_compact_bytes_are_read_or_refused() {
    use rand::{Rng, SeedableRng};
    let mut p = pair();
    let good = p.b.changes_for(p.a.client_id()).to_compact();
    let full = p.b.changes().to_compact();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    let (mut read, mut refused) = (0, 0);
    for round in 0..3000 {
        let mut bytes = if round % 2 == 0 {
            good.clone()
        } else {
            full.clone()
        };
        for _ in 0..rng.random_range(1..4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..4) {
                0 => bytes[at] = rng.random(),
                1 => bytes.truncate(at.max(1)),
                2 => bytes.insert(at, rng.random()),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        match Changes::from_bytes(&bytes) {
            Ok(c) => {
                read += 1;
                let before = p.a.save();
                if p.a.apply(&c).is_err() {
                    assert_eq!(p.a.save(), before, "a refused merge changed the replica");
                }
                let _ = Document::from_changes(&c);
            }
            Err(_) => refused += 1,
        }
    }
    assert!(read > 0 && refused > 0, "read {read}, refused {refused}");
}
/// An element id in two arrays of one object: held back in one (its origin is missing there) and
/// named as the origin of a later element in the other. Whatever the merge makes of it, nothing
/// panics, a refusal leaves the replica as it was, and what is merged saves, restores and reads
/// back the same (the later element keeps the origin it named, which this array lacks).
#[test]
fn an_element_id_in_two_arrays_leaves_a_replica_that_restores() {
    let mut a = Document::new(&json!({"a2": [1], "z1": [2]})).unwrap();
    let mut b = Document::from_changes(&a.changes()).unwrap();
    a.apply(&b.changes_for(a.client_id())).unwrap();
    a.set("k", json!(1)).unwrap();
    a.push("a2", json!(20)).unwrap();
    a.push("a2", json!(21)).unwrap();
    a.push("z1", json!(10)).unwrap();
    let mut d = a.changes_for(b.client_id()).to_value();
    // "a2" is checked first: its element x (origin held) and the next, named after x, pass.
    // "z1" then names x again, after the stamp of key "k", which no array holds: held back.
    let x = d["changes"]["a2"]["v"][0]["e"].clone();
    let k = d["changes"]["_s"]["k"]["k"].clone();
    assert!(x.is_string() && k.is_string(), "{d}");
    d["changes"]["z1"]["v"][0] = json!({"e": x, "o": k, "v": 10});
    let before = b.save();
    if Changes::parse(&d.to_string())
        .and_then(|c| b.apply(&c))
        .is_err()
    {
        assert_eq!(b.save(), before, "a refusal changed the replica");
    }
    let parts = b.save_parts(None);
    let (back, _) = Document::restore_parts(&parts.head, parts.nodes).unwrap();
    assert_eq!(back.to_json(), b.to_json());
    assert_eq!(back.digest(), b.digest());
    assert_eq!(back.save(), b.save());
    if b.to_json()["a2"] == json!([1, 21]) {
        // 21 was merged without x: it still names x as its origin, as it was written.
        let full = back.changes().to_value();
        let list = full["changes"]["a2"]["v"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let entry = list.iter().find(|e| e["v"] == json!(21));
        assert_eq!(entry.map(|e| &e["o"]), Some(&x), "{full}");
    }
}
