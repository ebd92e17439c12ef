use minisync::engine::{Changes, Document};
use serde_json::json;
fn main() {
    let n = 100_000;
    let records: Vec<_> = (0..n).map(|i| json!({"title": format!("Task number {i} with a reasonably descriptive title"), "done": i % 3 == 0, "n": i, "owner": format!("owner{}@example.com", i % 97)})).collect();
    let v = json!({"records": records});
    let a = Document::new(&v).unwrap();
    for _ in 0..3 {
        let t = std::time::Instant::now();
        let text = a.changes().to_json_string();
        let t1 = t.elapsed();
        let c = Changes::parse(&text).unwrap();
        let t2 = t.elapsed();
        let b = Document::from_changes(&c).unwrap();
        eprintln!(
            "emit {:?} parse {:?} total {:?} {}",
            t1,
            t2 - t1,
            t.elapsed(),
            b.version()
        );
    }
}
