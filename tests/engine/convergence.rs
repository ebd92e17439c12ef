//! Randomized convergence: replicas make random edits while a lossy, duplicating, reordering network
//! carries their changes, in the mail style (what the receiver is not known to hold) and in the
//! shared-folder style (everything since a base the receiver may never have got: a gap); after a final exchange they must all hold the same JSON and owe each other
//! nothing. `MINISYNC_FUZZ_CASES=N` runs more cases; `MINISYNC_FUZZ_SEED=S` replays one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use minisync::engine::{Changes, ClientId, Document};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

fn client(seed: u64, i: usize) -> ClientId {
    ClientId::parse(&format!("{:012x}c{:03}", seed & 0xffff_ffff_ffff, i)).unwrap()
}

fn random_prim(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..4) {
        0 => json!(rng.random_range(0..100)),
        1 => json!(format!("s{}", rng.random_range(0..50))),
        2 => json!(rng.random_bool(0.5)),
        _ => Value::Null,
    }
}

fn random_value(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..10) {
        0..=5 => random_prim(rng),
        6 | 7 => json!({"x": random_prim(rng), "_s": random_prim(rng)}),
        _ => json!([random_prim(rng), {"v": random_prim(rng)}]),
    }
}

/// Paths of every object and array in a JSON value.
fn containers(v: &Value, path: String, out: &mut Vec<(String, bool)>) {
    match v {
        Value::Object(m) => {
            out.push((path.clone(), false));
            for (k, c) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                containers(c, p, out);
            }
        }
        Value::Array(a) => {
            out.push((path.clone(), true));
            for (i, c) in a.iter().enumerate() {
                containers(c, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Paths of every string in a JSON value.
fn strings(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::String(_) => out.push(path),
        Value::Object(m) => {
            for (k, c) in m {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                strings(c, p, out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                strings(c, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A text edit: a splice of a few characters (typed forward or backward), or the whole string
/// replaced by another that shares some of it (applied as the difference).
fn random_text_edit(d: &mut Document, path: &str, rng: &mut ChaCha8Rng) {
    const BITS: [&str; 6] = ["a", "bc", "déf", "🙂", " word ", "xyz"];
    let len = d.text_len(path).unwrap();
    match rng.random_range(0..4) {
        0 => {
            let old = d.get(path).unwrap().unwrap();
            let old = old.as_str().unwrap();
            let cut = rng.random_range(0..=old.chars().count());
            let kept: String = old.chars().take(cut).collect();
            let new = format!("{kept}{}", BITS[rng.random_range(0..BITS.len())]);
            d.set(path, json!(new)).unwrap();
        }
        1 => {
            // Backward typing: each character at the same index.
            let at = rng.random_range(0..=len);
            for c in ["p", "q", "r"] {
                d.splice_text(path, at, 0, c).unwrap();
            }
        }
        _ => {
            let at = rng.random_range(0..=len);
            let del = rng.random_range(0..3).min(len - at);
            d.splice_text(path, at, del, BITS[rng.random_range(0..BITS.len())])
                .unwrap();
        }
    }
}

fn random_edit(d: &mut Document, rng: &mut ChaCha8Rng) {
    let mut texts = Vec::new();
    strings(&d.to_json(), String::new(), &mut texts);
    if !texts.is_empty() && rng.random_bool(0.35) {
        let path = texts[rng.random_range(0..texts.len())].clone();
        random_text_edit(d, &path, rng);
        return;
    }
    let mut cs = Vec::new();
    containers(&d.to_json(), String::new(), &mut cs);
    let (path, is_array) = cs[rng.random_range(0..cs.len())].clone();
    const KEYS: [&str; 6] = ["a", "b", "c", "_s", "v", "list"];
    if is_array {
        let len = d.len(&path).unwrap();
        match rng.random_range(0..6) {
            0 | 1 => d
                .insert(&path, rng.random_range(0..=len), random_value(rng))
                .unwrap(),
            2 if len > 0 => {
                d.remove_at(&path, rng.random_range(0..len)).unwrap();
            }
            3 if len > 0 => d
                .set(
                    &format!("{path}[{}]", rng.random_range(0..len)),
                    random_value(rng),
                )
                .unwrap(),
            4 => {
                let start = rng.random_range(0..=len);
                let items = (0..rng.random_range(0..3))
                    .map(|_| random_value(rng))
                    .collect();
                d.splice(&path, start, rng.random_range(0..2), items)
                    .unwrap();
            }
            _ => {
                d.push(&path, random_value(rng)).unwrap();
            }
        }
    } else {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let p = if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        };
        if rng.random_bool(0.2) {
            d.remove(&p).unwrap();
        } else if key == "list" {
            d.set(&p, json!([random_prim(rng)])).unwrap();
        } else {
            d.set(&p, random_value(rng)).unwrap();
        }
    }
}

/// A replica's saved state as the store keeps it: the head, and one record per node, written
/// incrementally (`Document::save_parts` since the last mark).
#[derive(Default)]
struct Disk {
    head: String,
    nodes: std::collections::BTreeMap<u32, Vec<u8>>,
    mark: Option<minisync::engine::SaveMark>,
}

impl Disk {
    fn save(&mut self, d: &Document) {
        let parts = d.save_parts(self.mark);
        if self.mark.is_none() {
            self.nodes.clear();
        }
        self.head = parts.head;
        self.nodes.extend(parts.nodes);
        self.mark = Some(parts.mark);
    }

    /// The replica read back from the saved parts; it must be exactly the one saved.
    fn load(&mut self, d: &Document) -> Result<Document, String> {
        let (back, mark) = Document::restore_parts(&self.head, self.nodes.clone())
            .map_err(|e| format!("restore from parts: {e}"))?;
        if back.save() != d.save() {
            return Err("the replica saved in parts differs from the one saved whole".into());
        }
        self.mark = Some(mark);
        Ok(back)
    }
}

fn run_case(seed: u64) -> Result<(), String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.random_range(3..=5);
    // The simulated wall clock starts at the real time: the first replica's root is stamped with
    // the real clock, and a replica refuses clock values more than a day ahead of its own.
    let now = Arc::new(AtomicU64::new(minisync::engine::system_now_ms()));
    let mut first = Document::with_ids(
        &json!({"a": 1, "list": [1, 2], "t": "hello world"}),
        "doc".into(),
        client(seed, 0),
    )
    .unwrap();
    let clock_for = |skew: u64| {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::Relaxed) + skew) as minisync::engine::WallClock
    };
    first.set_wall_clock(clock_for(0));
    let full = first.changes();
    let mut docs = vec![first];
    let mut skews = vec![0];
    for i in 1..n {
        let mut d = Document::from_changes_as(&full, client(seed, i)).unwrap();
        // One replica in four runs hours ahead.
        let skew = if rng.random_bool(0.25) {
            3 * 3600 * 1000
        } else {
            0
        };
        d.set_wall_clock(clock_for(skew));
        docs.push(d);
        skews.push(skew);
    }
    let mut disks: Vec<Disk> = (0..n).map(|_| Disk::default()).collect();
    for (disk, d) in disks.iter_mut().zip(&docs) {
        disk.save(d);
    }
    let mut queue: Vec<(usize, String)> = Vec::new();
    let steps = rng.random_range(20..60);
    for _ in 0..steps {
        now.fetch_add(rng.random_range(0..3), Ordering::Relaxed);
        // Saved after each step; now and then one replica restarts from what was saved.
        for (i, disk) in disks.iter_mut().enumerate() {
            disk.save(&docs[i]);
            if rng.random_bool(0.05) {
                let mut back = disk.load(&docs[i])?;
                back.set_wall_clock(clock_for(skews[i]));
                docs[i] = back;
            }
        }
        match rng.random_range(0..10) {
            0..=4 => {
                let i = rng.random_range(0..n);
                random_edit(&mut docs[i], &mut rng);
            }
            5..=7 => {
                let i = rng.random_range(0..n);
                let j = (i + rng.random_range(1..n)) % n;
                let changes = match rng.random_range(0..10) {
                    // Mail style: what j is not known to hold, since what j last confirmed.
                    0..=6 => docs[i].changes_for(docs[j].client_id()),
                    // Folder style: everything since a base, which j may never have received.
                    7 | 8 => {
                        let base = rng.random_range(0..=docs[i].version());
                        docs[i].changes_since(base)
                    }
                    // A folder's base file: everything.
                    _ => docs[i].changes(),
                };
                queue.push((j, changes.to_json_string()));
            }
            _ if !queue.is_empty() => {
                let k = rng.random_range(0..queue.len());
                let (to, text) = if rng.random_bool(0.1) {
                    queue[k].clone() // duplicated: a copy stays queued
                } else {
                    queue.swap_remove(k)
                };
                if rng.random_bool(0.2) {
                    continue; // lost
                }
                let ch = Changes::parse(&text).map_err(|e| format!("parse: {e}"))?;
                let out = docs[to].apply(&ch).map_err(|e| format!("apply: {e}"))?;
                if let Some(d) = out.diverged {
                    return Err(format!("false divergence reported: {d:?}"));
                }
            }
            _ => {}
        }
    }
    // Final exchange, reliable, until quiet.
    for _round in 0..12 {
        let mut any = false;
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let ch = docs[i].changes_for(docs[j].client_id());
                if ch.has_changes() {
                    any = true;
                }
                let parsed =
                    Changes::parse(&ch.to_json_string()).map_err(|e| format!("parse: {e}"))?;
                let out = docs[j]
                    .apply(&parsed)
                    .map_err(|e| format!("final apply: {e}"))?;
                if let Some(d) = out.diverged {
                    return Err(format!("false divergence reported: {d:?}"));
                }
            }
        }
        if !any {
            let first = docs[0].to_json();
            for d in &docs[1..] {
                if d.to_json() != first {
                    return Err(format!("diverged:\n{first}\n{}", d.to_json()));
                }
                if d.digest() != docs[0].digest() {
                    return Err(format!("same content, different digests: {}", d.to_json()));
                }
            }
            for (disk, d) in disks.iter_mut().zip(&docs) {
                disk.save(d);
                disk.load(d)?;
            }
            for d in &docs {
                streamed_is_usual(d, client(seed, 99))?;
                let restored = Document::restore(&d.save()).map_err(|e| format!("restore: {e}"))?;
                if restored.digest() != d.digest() {
                    return Err(
                        "the digest kept with each write differs from a recomputed one".into(),
                    );
                }
            }
            // That quiet round was all acknowledgements: each one confirms the other's version.
            for d in &docs {
                for e in &docs {
                    let acked = d.peer(e.client_id()).map(|p| p.last_acknowledged);
                    if e.client_id() != d.client_id() && acked != Some(d.version()) {
                        return Err(format!(
                            "quiet, yet {} has acknowledged {acked:?} of {}'s version {}",
                            e.client_id(),
                            d.client_id(),
                            d.version()
                        ));
                    }
                }
            }
            return Ok(());
        }
    }
    Err("never went quiet: replicas keep sending changes".into())
}

/// A new replica made from `d`'s full changes while they are read (`Document::from_bytes_as`)
/// is exactly the one made from them parsed whole.
fn streamed_is_usual(d: &Document, client: ClientId) -> Result<(), String> {
    let bytes = d.changes().to_compact();
    let streamed = Document::from_bytes_as(&bytes, client).map_err(|e| format!("streamed: {e}"))?;
    let parsed = Changes::from_bytes(&bytes).map_err(|e| format!("read: {e}"))?;
    let usual = Document::from_changes_as(&parsed, client).map_err(|e| format!("usual: {e}"))?;
    if streamed.save() != usual.save() {
        return Err(format!(
            "a replica made while reading differs from one made the usual way: {}",
            d.to_json()
        ));
    }
    Ok(())
}

#[test]
fn random_edits_over_a_lossy_network_converge() {
    if let Ok(seed) = std::env::var("MINISYNC_FUZZ_SEED") {
        let seed: u64 = seed.parse().expect("MINISYNC_FUZZ_SEED is a number");
        run_case(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        return;
    }
    let cases: u64 = std::env::var("MINISYNC_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    for seed in 0..cases {
        if let Err(e) = run_case(seed) {
            panic!(
                "seed {seed} failed (replay: MINISYNC_FUZZ_SEED={seed} cargo test --test engine_convergence): {e}"
            );
        }
    }
}

fn edited_replicas(seed: u64) -> (Document, Changes, Changes) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let a = Document::with_ids(
        &json!({"a": 1, "list": [1, 2, {"x": 1}]}),
        "doc".into(),
        client(seed, 0),
    )
    .unwrap();
    let mut b = Document::from_changes_as(&a.changes(), client(seed, 1)).unwrap();
    let mut c = Document::from_changes_as(&a.changes(), client(seed, 2)).unwrap();
    for _ in 0..rng.random_range(1..8) {
        random_edit(&mut b, &mut rng);
        random_edit(&mut c, &mut rng);
    }
    let cb = b.changes_for(a.client_id());
    let cc = c.changes_for(a.client_id());
    (a, cb, cc)
}

#[test]
fn applying_the_same_changes_twice_changes_nothing() {
    for seed in 0..300 {
        let (mut a, cb, _) = edited_replicas(seed);
        a.apply(&cb).unwrap();
        let (json, version, saved) = (a.to_json(), a.version(), a.save());
        let again = a.apply(&cb).unwrap();
        assert!(!again.changed, "seed {seed}");
        assert_eq!(a.to_json(), json, "seed {seed}");
        assert_eq!(a.version(), version, "seed {seed}");
        assert_eq!(a.save(), saved, "seed {seed}");
    }
}

#[test]
fn independent_deltas_commute() {
    for seed in 0..300 {
        let (a, cb, cc) = edited_replicas(seed);
        let mut x = Document::restore(&a.save()).unwrap();
        let mut y = Document::restore(&a.save()).unwrap();
        x.apply(&cb).unwrap();
        x.apply(&cc).unwrap();
        y.apply(&cc).unwrap();
        y.apply(&cb).unwrap();
        assert_eq!(x.to_json(), y.to_json(), "seed {seed}");
    }
}
