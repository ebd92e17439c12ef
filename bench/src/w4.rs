//! W4: the automerge-paper editing trace (259,778 single-character edits, `tests/data/traces`)
//! replayed edit by edit into one string of a document; then the document saved, loaded, and
//! fully synced to a new replica. The same replay into automerge's and yrs's text, and into the
//! two engines that lead the field natively, Loro and diamond-types, in the same run.
//!
//! Figures per library: `w4_ms` (replay), `w4_peak_mb` (resident high-water mark of the replay
//! and what follows), `w4_saved_bytes` (for minisync the records the agent stores: the head and
//! each node, deflated when long), `w4_load_ms`, `w4_sync_bytes` and `w4_sync_gz_bytes` (a
//! full sync to a new replica, raw and gzipped); for minisync also `w4_type_ms` and
//! `w4_type_bytes`: one character typed into the finished text, its delta made for a peer that
//! holds the rest, and merged there.

use std::io::Write;
use std::time::Instant;

use serde_json::{Value, json};

use crate::{ms, peak_mb, reset_peak, round};

/// The trace's edits as (position, removed count, inserted text), and the expected result.
pub struct Trace {
    pub edits: Vec<(usize, usize, String)>,
    pub end: String,
}

/// Reads the trace straight from the gzip stream into its edits, so that loading it leaves no
/// large heap behind to blur the peak memory figures.
pub fn load_trace() -> Trace {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(rename = "endContent")]
        end: String,
        txns: Vec<Txn>,
    }
    #[derive(serde::Deserialize)]
    struct Txn {
        patches: Vec<(usize, usize, String)>,
    }
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/data/traces/automerge-paper.json.gz"
    );
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).expect("trace file"));
    let f: File = serde_json::from_reader(std::io::BufReader::new(gz)).expect("trace is JSON");
    Trace {
        edits: f.txns.into_iter().flat_map(|t| t.patches).collect(),
        end: f.end,
    }
}

/// Runs one library's W4 in a child process (`--w4-one NAME`), so that its peak memory is its
/// own: the figure is the child's resident high-water mark less its resident size before the
/// replay (the loaded trace).
pub fn in_child(name: &str) -> Value {
    crate::child_json(&["--w4-one", name])
}

/// The body of `--w4-one NAME`: one library's figures as JSON.
pub fn one(name: &str) -> Value {
    let tr = load_trace();
    let base = rss_mb();
    reset_peak();
    let mut f = match name {
        "minisync" => minisync(&tr),
        "automerge" => automerge(&tr),
        "yrs" => yrs(&tr),
        "loro" => loro(&tr),
        "diamond_types" => diamond_types(&tr),
        other => panic!("unknown library {other}"),
    };
    f.peak_mb = peak_mb() - base;
    let mut v = json!({});
    f.add_to(&mut v);
    v
}

fn rss_mb() -> f64 {
    crate::status_mb("VmRSS:")
}

#[derive(Default)]
pub struct W4 {
    ms: f64,
    peak_mb: f64,
    saved_bytes: usize,
    load_ms: f64,
    sync_bytes: usize,
    sync_gz_bytes: usize,
    type_ms: Option<f64>,
    type_bytes: Option<usize>,
}

impl W4 {
    pub fn from_json(v: &Value) -> W4 {
        let num = |k: &str| v[k].as_f64().unwrap_or(0.0);
        W4 {
            ms: num("w4_ms"),
            peak_mb: num("w4_peak_mb"),
            saved_bytes: num("w4_saved_bytes") as usize,
            load_ms: num("w4_load_ms"),
            sync_bytes: num("w4_sync_bytes") as usize,
            sync_gz_bytes: num("w4_sync_gz_bytes") as usize,
            type_ms: v["w4_type_ms"].as_f64(),
            type_bytes: v["w4_type_bytes"].as_u64().map(|b| b as usize),
        }
    }
    pub fn add_to(&self, obj: &mut Value) {
        let m = obj.as_object_mut().expect("an object");
        m.insert("w4_ms".into(), json!(round(self.ms)));
        m.insert("w4_peak_mb".into(), json!(round(self.peak_mb)));
        m.insert("w4_saved_bytes".into(), json!(self.saved_bytes));
        m.insert("w4_load_ms".into(), json!(round(self.load_ms)));
        m.insert("w4_sync_bytes".into(), json!(self.sync_bytes));
        m.insert("w4_sync_gz_bytes".into(), json!(self.sync_gz_bytes));
        if let (Some(t), Some(b)) = (self.type_ms, self.type_bytes) {
            m.insert("w4_type_ms".into(), json!(round(t)));
            m.insert("w4_type_bytes".into(), json!(b));
        }
    }
    pub fn row(&self, name: &str) -> String {
        format!(
            "| {name} | {:.1} | {:.1} | {} | {:.1} | {} | {} |",
            self.ms,
            self.peak_mb,
            self.saved_bytes,
            self.load_ms,
            self.sync_bytes,
            self.sync_gz_bytes
        )
    }
}

fn gz_len(bytes: &[u8]) -> usize {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory").len()
}

pub fn minisync(tr: &Trace) -> W4 {
    use minisync::engine::{Changes, Document};
    let mut f = W4::default();
    let mut a = Document::new(&json!({"text": ""})).expect("valid");
    let t = Instant::now();
    for (pos, del, ins) in &tr.edits {
        a.splice_text("text", *pos, *del, ins).expect("edit");
    }
    f.ms = ms(t);
    assert_eq!(a.get("text").ok().flatten(), Some(json!(tr.end)));
    let saved = a.save_parts(None);
    f.saved_bytes = saved.head.len() + saved.nodes.iter().map(|(_, n)| n.len()).sum::<usize>();
    let t = Instant::now();
    let (back, _) = Document::restore_parts(&saved.head, saved.nodes).expect("restores");
    f.load_ms = ms(t);
    assert_eq!(back.digest(), a.digest());
    drop(back);
    // In the compact form, as mail carries changes.
    let full = a.changes().to_compact();
    f.sync_bytes = full.len();
    f.sync_gz_bytes = gz_len(&full);
    let mut b =
        Document::from_changes(&Changes::from_bytes(&full).expect("reads")).expect("creates");
    a.apply(&b.changes_for(a.client_id())).expect("ack");
    let t = Instant::now();
    a.splice_text("text", tr.end.chars().count() / 2, 0, "x")
        .expect("type");
    let delta = a.changes_for(b.client_id()).to_compact();
    b.apply(&Changes::from_bytes(&delta).expect("reads"))
        .expect("merges");
    f.type_ms = Some(ms(t));
    f.type_bytes = Some(delta.len());
    assert_eq!(b.digest(), a.digest());
    f
}

pub fn automerge(tr: &Trace) -> W4 {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
    let mut f = W4::default();
    let mut a = AutoCommit::new();
    let text = a.put_object(ROOT, "text", ObjType::Text).expect("put");
    let t = Instant::now();
    for (pos, del, ins) in &tr.edits {
        a.splice_text(&text, *pos, *del as isize, ins)
            .expect("edit");
    }
    a.commit();
    f.ms = ms(t);
    assert_eq!(a.text(&text).expect("text"), tr.end);
    let saved = a.save();
    f.saved_bytes = saved.len();
    let t = Instant::now();
    let b = AutoCommit::load(&saved).expect("load");
    f.load_ms = ms(t);
    drop(b);
    // A full sync is the whole saved document (changes since nothing).
    let full = a.save_after(&[]);
    f.sync_bytes = full.len();
    f.sync_gz_bytes = gz_len(&full);
    f
}

pub fn yrs(tr: &Trace) -> W4 {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};
    let mut f = W4::default();
    let a = Doc::new();
    let text = a.get_or_insert_text("text");
    let t = Instant::now();
    for (pos, del, ins) in &tr.edits {
        let mut txn = a.transact_mut();
        if *del > 0 {
            text.remove_range(&mut txn, *pos as u32, *del as u32);
        }
        if !ins.is_empty() {
            text.insert(&mut txn, *pos as u32, ins);
        }
    }
    f.ms = ms(t);
    assert_eq!(text.get_string(&a.transact()), tr.end);
    let saved = a
        .transact()
        .encode_state_as_update_v1(&StateVector::default());
    f.saved_bytes = saved.len();
    let t = Instant::now();
    let b = Doc::new();
    b.transact_mut()
        .apply_update(Update::decode_v1(&saved).expect("decode"))
        .expect("apply");
    f.load_ms = ms(t);
    f.sync_bytes = saved.len();
    f.sync_gz_bytes = gz_len(&saved);
    f
}

pub fn loro(tr: &Trace) -> W4 {
    use loro::{ExportMode, LoroDoc};
    let mut f = W4::default();
    let a = LoroDoc::new();
    let text = a.get_text("text");
    let t = Instant::now();
    for (pos, del, ins) in &tr.edits {
        if *del > 0 {
            text.delete(*pos, *del).expect("delete");
        }
        if !ins.is_empty() {
            text.insert(*pos, ins).expect("insert");
        }
    }
    a.commit();
    f.ms = ms(t);
    assert_eq!(text.to_string(), tr.end);
    let saved = a.export(ExportMode::Snapshot).expect("export");
    f.saved_bytes = saved.len();
    let t = Instant::now();
    let b = LoroDoc::from_snapshot(&saved).expect("load");
    f.load_ms = ms(t);
    drop(b);
    let full = a.export(ExportMode::all_updates()).expect("export");
    f.sync_bytes = full.len();
    f.sync_gz_bytes = gz_len(&full);
    f
}

pub fn diamond_types(tr: &Trace) -> W4 {
    use diamond_types::list::ListCRDT;
    use diamond_types::list::encoding::ENCODE_FULL;
    let mut f = W4::default();
    let mut a = ListCRDT::new();
    let agent = a.oplog.get_or_create_agent_id("a");
    let t = Instant::now();
    for (pos, del, ins) in &tr.edits {
        if *del > 0 {
            a.delete_without_content(agent, *pos..*pos + *del);
        }
        if !ins.is_empty() {
            a.insert(agent, *pos, ins);
        }
    }
    f.ms = ms(t);
    assert_eq!(a.branch.content().to_string(), tr.end);
    let saved = a.oplog.encode(ENCODE_FULL);
    f.saved_bytes = saved.len();
    let t = Instant::now();
    let b = ListCRDT::load_from(&saved).expect("load");
    f.load_ms = ms(t);
    drop(b);
    f.sync_bytes = saved.len();
    f.sync_gz_bytes = gz_len(&saved);
    f
}
