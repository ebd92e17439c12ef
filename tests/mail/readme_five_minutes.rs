//! The README's five-minute section, run exactly as written: its shell lines, typed back to back
//! by "you" and "your friend" (two agents on the real mail stack, default send delay), through
//! `sh` with the built `agent` first on PATH. Without the stack the test is reported as ignored.

use std::process::Command;

use crate::common::*;
use serde_json::json;

/// The lines of the README's five-minute block, each with who types it.
fn readme_lines() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("```sh\n# you:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("the README's five-minute block starting with `# you:`");
    let mut who = "you".to_string();
    let mut out = Vec::new();
    for line in std::iter::once("# you:").chain(block.lines()) {
        if let Some(w) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(':')) {
            who = w.to_string();
        } else if !line.trim().is_empty() {
            out.push((who.clone(), line.to_string()));
        }
    }
    out
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn the_readme_five_minutes_work_typed_back_to_back() {
    let stack = Stack::get();
    let (a, b) = (address("you"), address("friend"));
    let (pb, pa) = ([b.as_str()], [a.as_str()]);
    let you = node(&stack, &a, &pb, &[todo(&pb, "2s", "15m")], Security::Plain);
    let friend = node(&stack, &b, &pa, &[todo(&pa, "2s", "15m")], Security::Plain);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_agent"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lines = readme_lines();
    assert!(lines.len() >= 8, "{lines:?}");
    let mut syncs = std::collections::HashMap::new();
    for (who, line) in &lines {
        let n = match who.as_str() {
            "you" => &you,
            "your friend" => &friend,
            other => panic!("who is {other:?}?"),
        };
        let out = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(n.dir.path())
            .env("PATH", &path)
            .env("MINISYNC_CONFIG", &n.config)
            .env("MINISYNC_TEST_PASSWORD", "secret")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{who}: `{line}` failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if line.starts_with("agent sync") {
            let k = syncs.entry(who.clone()).or_insert(0);
            *k += 1;
            // The first syncs exchange hellos (keys, no content); your second sync sends the
            // document, your friend's third one the new item: at once, whatever the send delay.
            if (who == "you" && *k == 2) || (who == "your friend" && *k == 3) {
                assert!(
                    !stdout.contains("sent 0"),
                    "{who}: `{line}` sent nothing: {stdout}"
                );
            }
        }
    }
    // The last line is `agent status`, the one before `agent doc get todo items`: "you" sees the
    // friend's item.
    let items = you.doc("todo").unwrap()["items"].clone();
    assert_eq!(items, json!([{"what": "milk", "done": false}]));
    assert_eq!(friend.doc("todo").unwrap()["items"], items);
    // "Who changed this?": the merge of the friend's item is in your document's log.
    let log = you.ok(&["doc", "log", "todo"]);
    assert!(log.contains(&b) && log.contains("items[]"), "{log}");
}
