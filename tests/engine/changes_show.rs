//! `agent changes show FILE`: the JSON view of a changes object in the compact form that mail
//! carries (or of JSON), one command away.

use std::process::Command;

use minisync::engine::{Changes, Document};
use serde_json::{Value, json};

fn show(path: &std::path::Path) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["changes", "show"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_compact_changes_object_is_shown_as_its_json_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Document::new(&json!({"title": "Camping", "items": ["tent"]})).unwrap();
    d.splice_text("title", 7, 0, " weekend").unwrap();
    let changes = d.changes();
    let compact = dir.path().join("minisync-changes.bin");
    std::fs::write(&compact, changes.to_compact()).unwrap();
    let (code, stdout, stderr) = show(&compact);
    assert_eq!(code, Some(0), "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown, changes.to_value());
    assert_eq!(
        Document::from_changes(&Changes::from_value(&shown).unwrap())
            .unwrap()
            .to_json(),
        json!({"title": "Camping weekend", "items": ["tent"]})
    );

    // Cut short: refused with where.
    let bytes = changes.to_compact();
    std::fs::write(&compact, &bytes[..bytes.len() - 5]).unwrap();
    let (code, _, stderr) = show(&compact);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("compact form") && stderr.contains("at byte"),
        "{stderr}"
    );

    // JSON that is no changes object: shown, and said to be invalid.
    let other = dir.path().join("other.json");
    std::fs::write(&other, r#"{"hello": 1}"#).unwrap();
    let (code, stdout, stderr) = show(&other);
    assert_eq!(code, Some(1));
    assert!(stdout.contains("\"hello\": 1"), "{stdout}");
    assert!(stderr.contains("not a valid changes object"), "{stderr}");
}
