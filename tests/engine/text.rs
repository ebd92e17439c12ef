//! Strings merged character by character: concurrent edits of one string in every delivery
//! order, runs typed concurrently at one place (never interleaved, in text and in arrays), and
//! real editing traces replayed into a document's string (`tests/data/traces`, see its README).

use std::io::Read;

use minisync::engine::{Changes, ClientId, Document};
use serde_json::{Value, json};

fn client(n: usize) -> ClientId {
    ClientId::parse(&format!("client{n:010}")).unwrap()
}

/// `count` replicas of one document holding `text` at key `t`, each knowing the others.
fn replicas(text: &str, count: usize) -> Vec<Document> {
    let first =
        Document::with_ids(&json!({ "t": text, "n": [] }), "doc".into(), client(0)).unwrap();
    let full = first.changes();
    let mut out = vec![first];
    for i in 1..count {
        out.push(Document::from_changes_as(&full, client(i)).unwrap());
    }
    out
}

/// Every ordering of `items`.
fn permutations(items: &[usize]) -> Vec<Vec<usize>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut out = Vec::new();
    for (i, x) in items.iter().enumerate() {
        let mut rest = items.to_vec();
        rest.remove(i);
        for mut p in permutations(&rest) {
            p.insert(0, *x);
            out.push(p);
        }
    }
    out
}

/// Each replica makes its edit; every replica then receives the others' changes (as JSON text,
/// as mail carries them) in every order, the first one twice. Returns the single result.
fn merge_all_orders(base: &str, edits: &[&dyn Fn(&mut Document)]) -> String {
    let mut reps = replicas(base, edits.len());
    let versions: Vec<u64> = reps.iter().map(Document::version).collect();
    for (r, edit) in reps.iter_mut().zip(edits) {
        edit(r);
    }
    let msgs: Vec<String> = reps
        .iter()
        .zip(&versions)
        .map(|(r, v)| r.changes_since(*v).to_json_string())
        .collect();
    let saved: Vec<String> = reps.iter().map(Document::save).collect();
    let mut results = std::collections::BTreeSet::new();
    for (r, state) in saved.iter().enumerate() {
        let others: Vec<usize> = (0..edits.len()).filter(|o| *o != r).collect();
        for order in permutations(&others) {
            let mut d = Document::restore(state).unwrap();
            for o in order.iter().chain(order.first()) {
                d.apply(&Changes::parse(&msgs[*o]).unwrap()).unwrap();
            }
            results.insert((d.get("t").unwrap().unwrap().to_string(), d.digest()));
        }
    }
    assert_eq!(results.len(), 1, "replicas differ: {results:?}");
    let (text, _) = results.into_iter().next().unwrap();
    serde_json::from_str::<String>(&text).unwrap()
}

fn set(s: &'static str) -> impl Fn(&mut Document) {
    move |d: &mut Document| d.set("t", json!(s)).unwrap()
}

#[test]
fn different_words_are_all_kept_in_every_order() {
    let base = "the quick brown fox jumps over the lazy dog";
    let a = set("the slow brown fox jumps over the lazy dog");
    let b = set("the quick brown cat jumps over the lazy dog");
    assert_eq!(
        merge_all_orders(base, &[&a, &b]),
        "the slow brown cat jumps over the lazy dog"
    );
    let c = set("the quick brown fox jumps over the lazy dog!");
    assert_eq!(
        merge_all_orders(base, &[&a, &b, &c]),
        "the slow brown cat jumps over the lazy dog!"
    );
}

#[test]
fn the_same_word_and_overlapping_ranges_converge() {
    let base = "the quick brown fox";
    // Both change one word: both new words are kept, one after the other, never a mix of
    // their letters.
    let a = set("the quack brown fox");
    let b = set("the quirk brown fox");
    let both = merge_all_orders(base, &[&a, &b]);
    assert!(
        both == "the quackquirk brown fox" || both == "the quirkquack brown fox",
        "{both}"
    );
    // Overlapping removals and an insert inside a removed range.
    let c = |d: &mut Document| {
        d.splice_text("t", 4, 12, "").unwrap(); // "quick brown "
    };
    let e = |d: &mut Document| {
        d.splice_text("t", 10, 9, "red hen").unwrap(); // "brown fox" -> "red hen"
    };
    let f = |d: &mut Document| {
        d.splice_text("t", 0, 3, "A").unwrap();
    };
    let merged = merge_all_orders(base, &[&c, &e, &f]);
    assert_eq!(merged, "A red hen");
}

#[test]
fn edits_by_character_index_count_unicode_scalar_values() {
    let mut d = replicas("naïve 🙂 café", 1).remove(0);
    assert_eq!(d.text_len("t").unwrap(), 12);
    assert_eq!(d.splice_text("t", 6, 1, "😀").unwrap(), "🙂");
    d.splice_text("t", 12, 0, "!").unwrap();
    assert_eq!(d.get("t").unwrap(), Some(json!("naïve 😀 café!")));
    let err = d.splice_text("t", 99, 0, "x").unwrap_err().to_string();
    assert!(err.contains("past the end"), "{err}");
    let err = d.splice_text("n", 0, 0, "x").unwrap_err().to_string();
    assert!(err.contains("is not a string"), "{err}");
    d.set("t", json!("naive cafe")).unwrap();
    assert_eq!(d.get("t").unwrap(), Some(json!("naive cafe")));
    // Nested plain paths find their string; a path the parser refuses is refused here too, even
    // where an empty key would make it lead somewhere.
    d.set("a", json!({"": {"b": "x"}, "c": {"d": "yz"}}))
        .unwrap();
    d.splice_text("a.c.d", 1, 0, "-").unwrap();
    assert_eq!(d.get("a.c.d").unwrap(), Some(json!("y-z")));
    for bad in ["a..b", ".a", "a.c.d."] {
        assert!(d.splice_text(bad, 0, 0, "!").is_err(), "{bad}");
    }
    assert_eq!(d.get(r#"a[""].b"#).unwrap(), Some(json!("x")));
}

/// How `who` types `word` at `at`: forward (each character after the last) or backward (each at
/// `at`). Each keystroke is sent as its own message.
fn type_run(d: &mut Document, at: usize, word: &str, forward: bool, arr: bool) -> Vec<String> {
    let mut msgs = Vec::new();
    let chars: Vec<char> = word.chars().collect();
    let order: Vec<usize> = if forward {
        (0..chars.len()).collect()
    } else {
        (0..chars.len()).rev().collect()
    };
    for (k, i) in order.into_iter().enumerate() {
        let v = d.version();
        let pos = if forward { at + k } else { at };
        if arr {
            d.insert("n", pos, json!(chars[i].to_string())).unwrap();
        } else {
            d.splice_text("t", pos, 0, &chars[i].to_string()).unwrap();
        }
        msgs.push(d.changes_since(v).to_json_string());
    }
    msgs
}

fn flat(d: &Document, arr: bool) -> String {
    if arr {
        let Value::Array(items) = d.get("n").unwrap().unwrap() else {
            panic!("not an array")
        };
        items
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    } else {
        d.get("t").unwrap().unwrap().as_str().unwrap().to_string()
    }
}

/// Whether every word appears whole (its characters together, in order) in `s`.
fn not_interleaved(s: &str, words: &[&str]) -> bool {
    words.iter().all(|w| s.contains(w))
}

#[test]
fn concurrent_runs_never_interleave_in_text_or_arrays() {
    let words = ["ABCD", "wxyz", "1234"];
    for arr in [false, true] {
        for dirs in [
            [true, true, true],
            [false, false, false],
            [true, false, true],
            [false, true, false],
        ] {
            for n in [2, 3] {
                let mut reps = replicas("<>", n);
                if arr {
                    // The same two elements on every replica: made once, then merged.
                    let base = reps[0].version();
                    reps[0].push("n", json!("<")).unwrap();
                    reps[0].push("n", json!(">")).unwrap();
                    let m = reps[0].changes_since(base);
                    for r in reps.iter_mut().skip(1) {
                        r.apply(&m).unwrap();
                    }
                }
                let msgs: Vec<Vec<String>> = (0..n)
                    .map(|i| type_run(&mut reps[i], 1, words[i], dirs[i], arr))
                    .collect();
                // Deliver keystroke messages round-robin, so runs arrive split and mixed.
                for (r, rep) in reps.iter_mut().enumerate() {
                    for k in 0..4 {
                        for (s, m) in msgs.iter().enumerate() {
                            if s != r {
                                rep.apply(&Changes::parse(&m[k]).unwrap()).unwrap();
                            }
                        }
                    }
                }
                let out = flat(&reps[0], arr);
                for r in &reps {
                    assert_eq!(flat(r, arr), out, "converged (arr {arr}, {dirs:?})");
                }
                assert!(
                    not_interleaved(&out, &words[..n]),
                    "interleaved (arr {arr}, dirs {dirs:?}, {n} replicas): {out}"
                );
                assert!(out.starts_with('<') && out.ends_with('>'), "{out}");
            }
        }
    }
}

/// A trace from `tests/data/traces`.
fn trace(name: &str) -> Value {
    let path = format!(
        "{}/tests/data/traces/{name}.json.gz",
        env!("CARGO_MANIFEST_DIR")
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn patches(txn: &Value) -> impl Iterator<Item = (usize, usize, &str)> {
    txn["patches"].as_array().unwrap().iter().map(|p| {
        (
            p[0].as_u64().unwrap() as usize,
            p[1].as_u64().unwrap() as usize,
            p[2].as_str().unwrap(),
        )
    })
}

fn replay_sequential(name: &str) {
    let t = trace(name);
    let mut d = replicas(t["startContent"].as_str().unwrap(), 1).remove(0);
    for txn in t["txns"].as_array().unwrap() {
        for (pos, del, ins) in patches(txn) {
            d.splice_text("t", pos, del, ins).unwrap();
        }
    }
    let end = t["endContent"].as_str().unwrap();
    assert_eq!(d.get("t").unwrap().unwrap().as_str().unwrap(), end);
    // The saved replica and a replica made by a full sync hold the same text.
    let back = Document::restore(&d.save()).unwrap();
    assert_eq!(back.get("t").unwrap().unwrap().as_str().unwrap(), end);
    assert_eq!(back.digest(), d.digest());
    let full = Changes::parse(&d.changes().to_json_string()).unwrap();
    let copy = Document::from_changes(&full).unwrap();
    assert_eq!(copy.get("t").unwrap().unwrap().as_str().unwrap(), end);
    assert_eq!(copy.digest(), d.digest());
}

#[test]
fn automerge_paper_trace_replays_to_its_end_content() {
    replay_sequential("automerge-paper");
}

#[test]
fn seph_blog1_trace_replays_to_its_end_content() {
    replay_sequential("seph-blog1");
}

/// friendsforever: two authors editing concurrently. Each agent is a replica; before each of its
/// transactions it merges the other's transactions that are among the parents (each agent's
/// own transactions form a chain, so those are a prefix of the other's), sent as the deltas the
/// other made them with. At the end both exchange what is left.
#[test]
fn friendsforever_replays_on_two_replicas_along_its_dag() {
    let t = trace("friendsforever");
    let txns = t["txns"].as_array().unwrap();
    let mut reps = replicas("", 2);
    // For each transaction, the other agent's latest ancestor.
    let mut anc: Vec<[i64; 2]> = Vec::with_capacity(txns.len());
    let mut deltas: Vec<Vec<(usize, String)>> = vec![Vec::new(), Vec::new()];
    let mut merged_upto = [0usize; 2];
    for (i, txn) in txns.iter().enumerate() {
        let agent = txn["agent"].as_u64().unwrap() as usize;
        let mut m = [-1i64; 2];
        for p in txn["parents"].as_array().unwrap() {
            let p = p.as_u64().unwrap() as usize;
            let pa = txns[p]["agent"].as_u64().unwrap() as usize;
            m = [m[0].max(anc[p][0]), m[1].max(anc[p][1])];
            m[pa] = m[pa].max(p as i64);
        }
        anc.push(m);
        let other = 1 - agent;
        while merged_upto[agent] < deltas[other].len()
            && deltas[other][merged_upto[agent]].0 as i64 <= m[other]
        {
            let msg = Changes::parse(&deltas[other][merged_upto[agent]].1).unwrap();
            reps[agent].apply(&msg).unwrap();
            merged_upto[agent] += 1;
        }
        let v = reps[agent].version();
        for (pos, del, ins) in patches(txn) {
            reps[agent].splice_text("t", pos, del, ins).unwrap();
        }
        deltas[agent].push((i, reps[agent].changes_since(v).to_json_string()));
    }
    for agent in 0..2 {
        let other = 1 - agent;
        for (_, msg) in &deltas[other][merged_upto[agent]..] {
            reps[agent].apply(&Changes::parse(msg).unwrap()).unwrap();
        }
    }
    let end = t["endContent"].as_str().unwrap();
    for r in &reps {
        assert_eq!(r.get("t").unwrap().unwrap().as_str().unwrap(), end);
    }
}

/// Updating by difference writes only what changed, so a concurrent edit elsewhere survives.
#[test]
fn update_by_difference_keeps_concurrent_edits() {
    let mut reps = replicas("a long note about camping", 2);
    let v = reps[0].version();
    reps[0]
        .update(
            "",
            json!({"t": "a short note about camping", "n": [1, {"x": "y"}], "new": true}),
        )
        .unwrap();
    let v1 = reps[1].version();
    reps[1].splice_text("t", 25, 0, " trips").unwrap();
    let m0 = reps[0].changes_since(v);
    let m1 = reps[1].changes_since(v1);
    reps[1].apply(&m0).unwrap();
    reps[0].apply(&m1).unwrap();
    for r in &reps {
        assert_eq!(
            r.to_json(),
            json!({"t": "a short note about camping trips", "n": [1, {"x": "y"}], "new": true})
        );
    }
    // Arrays: the common start and end stay, the middle is updated in place.
    let before = reps[0].version();
    reps[0].update("n", json!([1, {"x": "z"}, 3])).unwrap();
    assert_eq!(reps[0].get("n").unwrap(), Some(json!([1, {"x": "z"}, 3])));
    let delta = reps[0].changes_since(before).to_json_string();
    assert!(
        !delta.contains("\"v\":1"),
        "the unchanged first element is not rewritten: {delta}"
    );
    let err = reps[0].update("", json!(5)).unwrap_err().to_string();
    assert!(err.contains("must stay an object"), "{err}");
}

/// Arrays are matched by a longest common subsequence: one replica inserts an element at the
/// front and removes one at the end while the other edits an element in the middle; both edits
/// are kept, and the untouched elements are not rewritten.
#[test]
fn update_matches_array_elements_by_longest_common_subsequence() {
    let base = json!({"t": "", "n": ["a", "b", {"k": "c"}, "d", "e"]});
    let first = Document::with_ids(&base, "doc".into(), client(0)).unwrap();
    let full = first.changes();
    let mut reps = vec![first, Document::from_changes_as(&full, client(1)).unwrap()];
    let v0 = reps[0].version();
    reps[0]
        .update("", json!({"t": "", "n": ["z", "a", "b", {"k": "c"}, "d"]}))
        .unwrap();
    let m0 = reps[0].changes_since(v0);
    let delta = m0.to_json_string();
    for kept in ["\"b\"", "\"d\"", "\"k\""] {
        assert!(!delta.contains(kept), "{kept} is not rewritten: {delta}");
    }
    let v1 = reps[1].version();
    reps[1]
        .update("", json!({"t": "", "n": ["a", "b", {"k": "C"}, "d", "e"]}))
        .unwrap();
    let m1 = reps[1].changes_since(v1);
    reps[0].apply(&m1).unwrap();
    reps[1].apply(&m0).unwrap();
    for r in &reps {
        assert_eq!(
            r.get("n").unwrap(),
            Some(json!(["z", "a", "b", {"k": "C"}, "d"]))
        );
    }
}
