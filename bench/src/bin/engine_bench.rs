//! Engine benchmark: minisync against automerge and yrs on the same workloads, in one run.
//!
//! `cargo run --release -p minisync-bench --bin engine_bench -- --records N [--json]`
//!
//! Workloads on a document of N records (`title`, `done`, `n`, `owner`): build it; W1 full changes
//! for a new peer and a replica made from them; W2 one field changed, delta made and applied;
//! W3 1,000 fields changed, delta made and applied (minisync's changes objects in the compact form
//! that mail carries; `w1_json_bytes` the full one as JSON text). Peak memory is the process's resident high-water
//! mark, reset before each library runs. For minisync also the replica saved in parts as the agent
//! stores it (`saved_bytes`) and restored from them (`load_ms`, against `parse_ms`, serde_json's
//! parse of the same JSON), and the memory a replica of the document holds, measured in a process
//! of its own (`replica_mb` and the other figures of `replica_one`). W4 (`w4.rs`): a real editing trace replayed into one
//! string, also against Loro and diamond-types.

#[path = "../w4.rs"]
mod w4;

use std::time::Instant;

use minisync::engine::{Changes, Document};
use serde_json::{Value, json};

#[derive(Default)]
struct Figures {
    build_ms: f64,
    w1_ms: f64,
    w1_bytes: usize,
    w2_ms: f64,
    w2_bytes: usize,
    w3_ms: f64,
    w3_bytes: usize,
    peak_mb: f64,
    /// minisync only: the replica saved in parts (head and node rows, as the agent stores it).
    saved_bytes: Option<usize>,
    /// minisync only: restoring the replica from those parts.
    load_ms: Option<f64>,
    /// minisync only: W1's changes object as JSON text (`w1_bytes` is its compact form).
    w1_json_bytes: Option<usize>,
}

impl Figures {
    fn json(&self) -> Value {
        let mut v = json!({
            "build_ms": round(self.build_ms), "w1_ms": round(self.w1_ms), "w1_bytes": self.w1_bytes,
            "w2_ms": round(self.w2_ms), "w2_bytes": self.w2_bytes,
            "w3_ms": round(self.w3_ms), "w3_bytes": self.w3_bytes, "peak_mb": round(self.peak_mb),
        });
        if let (Some(b), Some(l)) = (self.saved_bytes, self.load_ms) {
            v["saved_bytes"] = json!(b);
            v["load_ms"] = json!(round(l));
        }
        if let Some(b) = self.w1_json_bytes {
            v["w1_json_bytes"] = json!(b);
        }
        v
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Resets the resident-memory high-water mark (Linux); elsewhere the figure covers the whole run.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_mb() -> f64 {
    status_mb("VmHWM:")
}

/// A memory figure of this process from /proc/self/status (`VmHWM:`, `VmRSS:`), in MB.
fn status_mb(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn record(i: usize) -> (String, bool, i64, String) {
    (
        format!("Task number {i} with a reasonably descriptive title"),
        i.is_multiple_of(3),
        i as i64,
        format!("owner{}@example.com", i % 97),
    )
}

fn document(n: usize) -> Value {
    let records: Vec<Value> = (0..n)
        .map(|i| {
            let (title, done, num, owner) = record(i);
            json!({"title": title, "done": done, "n": num, "owner": owner})
        })
        .collect();
    json!({ "records": records })
}

/// Indexes of the records W3 changes: 1,000 spread over the document.
fn spread(n: usize) -> Vec<usize> {
    let k = n.min(1000);
    (0..k).map(|i| i * n / k).collect()
}

/// The floor: serde_json parse + serialize of the document, and the parse alone (the floor of
/// loading a saved replica), in ms.
fn floor(value: &Value) -> (f64, f64) {
    let text = value.to_string();
    let t = Instant::now();
    let parsed: Value = serde_json::from_str(&text).expect("own output parses");
    let parse = ms(t);
    let again = parsed.to_string();
    let elapsed = ms(t);
    assert_eq!(again.len(), text.len());
    (elapsed, parse)
}

fn minisync(n: usize, value: &Value) -> Figures {
    reset_peak();
    let mut f = Figures::default();
    let t = Instant::now();
    let mut a = Document::new(value).expect("benchmark document is valid");
    f.build_ms = ms(t);

    // In the compact form, as mail carries changes (`w1_json_bytes`: the same as JSON text).
    let t = Instant::now();
    let bytes = a.changes().to_compact();
    let mut b = Document::from_bytes(&bytes).expect("creates");
    f.w1_ms = ms(t);
    f.w1_bytes = bytes.len();
    a.apply(&b.changes_for(a.client_id())).expect("ack");

    let t = Instant::now();
    a.set(&format!("records[{}].done", n / 2), json!(true))
        .expect("set");
    let bytes = a.changes_for(b.client_id()).to_compact();
    b.apply(&Changes::from_bytes(&bytes).expect("reads"))
        .expect("applies");
    f.w2_ms = ms(t);
    f.w2_bytes = bytes.len();
    a.apply(&b.changes_for(a.client_id())).expect("ack");

    let t = Instant::now();
    for i in spread(n) {
        a.set(&format!("records[{i}].n"), json!(-(i as i64)))
            .expect("set");
    }
    let bytes = a.changes_for(b.client_id()).to_compact();
    b.apply(&Changes::from_bytes(&bytes).expect("reads"))
        .expect("applies");
    f.w3_ms = ms(t);
    f.w3_bytes = bytes.len();
    assert_eq!(a.get("records[0].n").ok(), b.get("records[0].n").ok());
    f.peak_mb = peak_mb();
    drop(b);
    // After the peak is taken: the JSON text of W1's changes object, for comparison.
    f.w1_json_bytes = Some(a.changes().to_json_string().len());
    let parts = a.save_parts(None);
    let rows: usize = parts.nodes.iter().map(|(_, row)| row.len()).sum();
    f.saved_bytes = Some(parts.head.len() + rows);
    let t = Instant::now();
    let (back, _) = Document::restore_parts(&parts.head, parts.nodes).expect("restores");
    f.load_ms = Some(ms(t));
    assert_eq!(back.digest(), a.digest());
    f
}

fn automerge(n: usize) -> Figures {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
    reset_peak();
    let mut f = Figures::default();
    let t = Instant::now();
    let mut a = AutoCommit::new();
    let list = a.put_object(ROOT, "records", ObjType::List).expect("put");
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (title, done, num, owner) = record(i);
        let r = a.insert_object(&list, i, ObjType::Map).expect("insert");
        a.put(&r, "title", title).expect("put");
        a.put(&r, "done", done).expect("put");
        a.put(&r, "n", num).expect("put");
        a.put(&r, "owner", owner).expect("put");
        ids.push(r);
    }
    a.commit();
    f.build_ms = ms(t);

    let t = Instant::now();
    let bytes = a.save();
    let mut b = AutoCommit::load(&bytes).expect("load");
    f.w1_ms = ms(t);
    f.w1_bytes = bytes.len();

    let t = Instant::now();
    let heads = a.get_heads();
    a.put(&ids[n / 2], "done", true).expect("put");
    let bytes = a.save_after(&heads);
    b.load_incremental(&bytes).expect("apply");
    f.w2_ms = ms(t);
    f.w2_bytes = bytes.len();

    let t = Instant::now();
    let heads = a.get_heads();
    for i in spread(n) {
        a.put(&ids[i], "n", -(i as i64)).expect("put");
    }
    let bytes = a.save_after(&heads);
    b.load_incremental(&bytes).expect("apply");
    f.w3_ms = ms(t);
    f.w3_bytes = bytes.len();
    assert_eq!(b.length(&list), n);
    f.peak_mb = peak_mb();
    f
}

fn yrs(n: usize) -> Figures {
    use yrs::updates::decoder::Decode;
    use yrs::{Any, Array, Doc, Map, MapPrelim, ReadTxn, StateVector, Transact, Update};
    reset_peak();
    let mut f = Figures::default();
    let t = Instant::now();
    let a = Doc::new();
    let list = a.get_or_insert_array("records");
    let mut maps = Vec::with_capacity(n);
    {
        let mut txn = a.transact_mut();
        for i in 0..n {
            let (title, done, num, owner) = record(i);
            let m = list.push_back(
                &mut txn,
                MapPrelim::from([
                    ("title", Any::from(title)),
                    ("done", Any::from(done)),
                    ("n", Any::from(num)),
                    ("owner", Any::from(owner)),
                ]),
            );
            maps.push(m);
        }
    }
    f.build_ms = ms(t);

    let t = Instant::now();
    let bytes = a
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    let b = Doc::new();
    b.transact_mut()
        .apply_update(Update::decode_v1(&bytes).expect("decode"))
        .expect("apply");
    f.w1_ms = ms(t);
    f.w1_bytes = bytes.len();

    let t = Instant::now();
    let sv = b.transact().state_vector();
    maps[n / 2].insert(&mut a.transact_mut(), "done", true);
    let bytes = a.transact().encode_state_as_update_v1(&sv);
    b.transact_mut()
        .apply_update(Update::decode_v1(&bytes).expect("decode"))
        .expect("apply");
    f.w2_ms = ms(t);
    f.w2_bytes = bytes.len();

    let t = Instant::now();
    let sv = b.transact().state_vector();
    {
        let mut txn = a.transact_mut();
        for i in spread(n) {
            maps[i].insert(&mut txn, "n", -(i as i64));
        }
    }
    let bytes = a.transact().encode_state_as_update_v1(&sv);
    b.transact_mut()
        .apply_update(Update::decode_v1(&bytes).expect("decode"))
        .expect("apply");
    f.w3_ms = ms(t);
    f.w3_bytes = bytes.len();
    assert_eq!(
        b.get_or_insert_array("records").len(&b.transact()),
        n as u32
    );
    f.peak_mb = peak_mb();
    f
}

/// `--replica-one` (after `--records N`): the memory a minisync replica of the N-record document
/// holds, in a process of its own so that nothing else the benchmark did is in the figures. Each
/// is the growth of the resident set over the process before the replica was made (the saved
/// parts or changes object it is made from already resident), in MiB: `replica_mb` restored
/// from its saved parts as the agent loads it, once made and freed memory given back to the
/// system (`malloc_trim`, as the agent does after a pass), `replica_load_peak_mb` the high-water
/// mark while it loads; `replica_w1_mb` and `replica_w1_peak_mb` the same for the replica made
/// from the full changes object (W1's receiving side: reading the changes object is in the
/// peak). `json_mb`: the document's JSON text, compact, in the same unit.
fn replica_one(n: usize) -> Value {
    let value = document(n);
    let json_mb = value.to_string().len() as f64 / (1024.0 * 1024.0);
    let a = Document::new(&value).expect("benchmark document is valid");
    let parts = a.save_parts(None);
    let bytes = a.changes().to_compact();
    drop(a);
    drop(value);
    let measure = |make: &dyn Fn() -> Document| {
        trim();
        let base = status_mb("VmRSS:");
        reset_peak();
        let replica = make();
        let peak = peak_mb() - base;
        trim();
        let held = status_mb("VmRSS:") - base;
        drop(replica);
        (round(held), round(peak))
    };
    let (loaded, load_peak) = measure(&|| {
        let rows = parts.nodes.iter().cloned();
        Document::restore_parts(&parts.head, rows)
            .expect("restores")
            .0
    });
    let (w1, w1_peak) = measure(&|| Document::from_bytes(&bytes).expect("creates"));
    json!({"json_mb": round(json_mb), "replica_mb": loaded, "replica_load_peak_mb": load_peak,
           "replica_w1_mb": w1, "replica_w1_peak_mb": w1_peak})
}

/// [`replica_one`] in a child process.
fn replica_in_child(n: usize) -> Value {
    child_json(&["--records", &n.to_string(), "--replica-one"])
}

/// Runs this benchmark again with `args` and returns the JSON it prints: a measurement in a
/// process of its own.
fn child_json(args: &[&str]) -> Value {
    let exe = std::env::current_exe().expect("own path");
    let out = std::process::Command::new(exe)
        .args(args)
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("child prints JSON")
}

/// Gives freed memory back to the system (glibc keeps it resident otherwise).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut n = 100_000usize;
    let mut as_json = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--records" => {
                n = args
                    .get(i + 1)
                    .and_then(|s| s.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| {
                        eprintln!("--records needs a positive number");
                        std::process::exit(2)
                    });
                i += 1;
            }
            "--json" => as_json = true,
            "--replica-one" => {
                println!("{}", replica_one(n));
                return;
            }
            "--w4-one" => {
                let name = args.get(i + 1).cloned().unwrap_or_default();
                println!("{}", w4::one(&name));
                return;
            }
            other => {
                eprintln!("unknown argument {other:?}; usage: engine_bench [--records N] [--json]");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    // W4 first, each library in a child of its own, while the machine is quiet: run after the
    // minutes of W1-W3 (and with their memory just freed), the first child measured up to half
    // again slower than the same child alone.
    let names = ["minisync", "automerge", "yrs", "loro", "diamond_types"];
    let w4s: Vec<(&str, w4::W4)> = names
        .iter()
        .map(|n| (*n, w4::W4::from_json(&w4::in_child(n))))
        .collect();
    let replica = replica_in_child(n);
    let value = document(n);
    let (floor_ms, parse_ms) = floor(&value);
    let m = minisync(n, &value);
    drop(value);
    let am = automerge(n);
    let y = yrs(n);
    let mut out = json!({
        "records": n, "floor_ms": round(floor_ms), "parse_ms": round(parse_ms),
        "minisync": m.json(), "automerge": am.json(), "yrs": y.json(),
        "loro": {}, "diamond_types": {},
    });
    for (name, f) in &w4s {
        f.add_to(&mut out[name]);
    }
    if let Some(figures) = replica.as_object() {
        for (k, v) in figures {
            out["minisync"][k] = v.clone();
        }
    }
    if as_json {
        println!("{out}");
        return;
    }
    println!("{n} records; floor (serde_json parse + serialize): {floor_ms:.1} ms\n");
    println!(
        "| library | build ms | W1 ms | W1 bytes | W2 ms | W2 bytes | W3 ms | W3 bytes | peak MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, f) in [("minisync", &m), ("automerge", &am), ("yrs", &y)] {
        println!(
            "| {name} | {:.1} | {:.1} | {} | {:.3} | {} | {:.1} | {} | {:.0} |",
            f.build_ms, f.w1_ms, f.w1_bytes, f.w2_ms, f.w2_bytes, f.w3_ms, f.w3_bytes, f.peak_mb
        );
    }
    if let (Some(b), Some(l)) = (m.saved_bytes, m.load_ms) {
        println!(
            "\nminisync replica saved in parts: {b} bytes; loaded in {l:.1} ms ({:.1}x the parse alone, {parse_ms:.1} ms)",
            l / parse_ms
        );
    }
    println!(
        "minisync replica in memory ({} MiB of JSON): {} MiB restored from its parts (peak {}), {} MiB made from the full changes object (peak {})",
        replica["json_mb"],
        replica["replica_mb"],
        replica["replica_load_peak_mb"],
        replica["replica_w1_mb"],
        replica["replica_w1_peak_mb"]
    );
    println!("\nW4, automerge-paper trace (259,778 edits):\n");
    println!(
        "| library | replay ms | peak MB | saved bytes | load ms | sync bytes | sync gz bytes |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, f) in &w4s {
        println!("{}", f.row(name));
    }
    if let Some(v) = out["minisync"].get("w4_type_ms") {
        println!(
            "\nminisync, one character typed into the finished text: {v} ms, {} bytes",
            out["minisync"]["w4_type_bytes"]
        );
    }
}
