//! JSON files bound to documents (`[[documents]] file`), end to end: real agents syncing through a
//! shared folder, each bound to its own file and edited only by writing that file, by rename (as
//! vim and VS Code save) and in place (truncate and write).

use std::path::{Path, PathBuf};

use minisync::agent::{Agent, status};
use minisync::config::Config;
use serde_json::{Value, json};

struct Peer {
    dir: tempfile::TempDir,
    cfg: Config,
    agent: Option<Agent>,
}

fn peer(shared: &Path) -> Peer {
    peer_binding(shared, Some("notes.json"))
}

/// A replica of the folder's document, its config binding `file` (None: no file bound).
fn peer_binding(shared: &Path, file: Option<&str>) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nstate-dir = \"state\"\npoll-interval = \"1s\"\n\n[[documents]]\nname = \"notes\"\n\
         transport = \"folder\"\nfolder = \"{}\"\nsend-delay = \"0s\"\n{}",
        shared.display(),
        file.map(|f| format!("file = \"{f}\"\n"))
            .unwrap_or_default()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap();
    let agent = Some(Agent::new(cfg.clone()).unwrap());
    Peer { dir, cfg, agent }
}

/// The same replica, its config now binding `notes.json` (the agent restarted).
fn rebound(mut p: Peer) -> Peer {
    drop(p.agent.take());
    let path = p.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap() + "file = \"notes.json\"\n";
    std::fs::write(&path, text).unwrap();
    p.cfg = Config::load(&path).unwrap();
    p.agent = Some(Agent::new(p.cfg.clone()).unwrap());
    p
}

impl Peer {
    fn file(&self) -> PathBuf {
        self.dir.path().join("notes.json")
    }
    fn text(&self) -> String {
        std::fs::read_to_string(self.file()).unwrap()
    }
    fn value(&self) -> Value {
        serde_json::from_str(&self.text()).unwrap()
    }
    /// A save by rename: a new file written beside it, renamed over it.
    fn save_by_rename(&self, text: &str) {
        let tmp = self.dir.path().join(".notes.json.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.file()).unwrap();
    }
    /// A save in place: the file truncated and written.
    fn save_in_place(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.file())
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
    fn doc(&mut self) -> Value {
        let agent = self.agent.as_mut().unwrap();
        agent.store().read_doc("notes", |d| d.to_json()).unwrap()
    }
    async fn sync(&mut self) {
        let r = self.agent.as_mut().unwrap().sync_once().await;
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    fn status(&mut self) -> minisync::agent::Status {
        status(&self.cfg, self.agent.as_mut().unwrap().store()).unwrap()
    }
}

async fn settle(peers: &mut [&mut Peer]) {
    for _ in 0..4 {
        for p in peers.iter_mut() {
            p.sync().await;
        }
    }
}

const START: &str = "{\n    \"title\": \"the quick brown fox\",\n    \"items\": [\n        \"apples\",\n        \"bread\",\n        \"cheese\"\n    ],\n    \"count\": 1\n}\n";

/// Alice's file starts the document; Bob, with no file and no replica, receives it and gets the
/// file written.
async fn started(shared: &Path) -> (Peer, Peer) {
    let alice = peer(shared);
    alice.save_by_rename(START);
    let mut alice = alice;
    let mut bob = peer(shared);
    alice.sync().await;
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(bob.value(), alice.value());
    assert_eq!(alice.text(), START, "alice's file is left as she wrote it");
    (alice, bob)
}

#[tokio::test]
async fn concurrent_saves_of_keys_elements_and_words_are_all_kept_in_every_file() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    alice.save_by_rename(
        "{\n    \"title\": \"the slow brown fox\",\n    \"items\": [\n        \"apples!\",\n        \"bread\",\n        \"cheese\"\n    ],\n    \"count\": 1,\n    \"by\": \"alice\"\n}\n",
    );
    let mut b = bob.value();
    b["title"] = json!("the quick brown cat");
    b["items"] = json!(["apples", "bread", "cheddar", "dates"]);
    b["count"] = json!(2);
    bob.save_in_place(&serde_json::to_string(&b).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    let want = json!({
        "title": "the slow brown cat",
        "items": ["apples!", "bread", "cheddar", "dates"],
        "count": 2,
        "by": "alice",
    });
    assert_eq!(alice.value(), want);
    assert_eq!(bob.value(), want);
    assert_eq!(alice.doc(), want);
    // Each file keeps its style: alice's four spaces and key order, bob's one compact line.
    assert!(
        alice.text().starts_with(
            "{\n    \"title\": \"the slow brown cat\",\n    \"items\": [\n        \"apples!\","
        ),
        "{}",
        alice.text()
    );
    assert!(
        alice
            .text()
            .ends_with("    \"count\": 2,\n    \"by\": \"alice\"\n}\n"),
        "{}",
        alice.text()
    );
    assert!(!bob.text().contains('\n'), "{}", bob.text());
    let st = alice.status();
    let file = st.documents[0].file.as_ref().unwrap();
    assert!(
        file.last_read.is_some() && file.last_written.is_some() && file.error.is_none(),
        "{st}"
    );
    assert!(st.to_string().contains("notes.json: last read"), "{st}");
}

#[tokio::test]
async fn three_replicas_saving_the_same_key_end_with_identical_files() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    let mut carol = peer(shared.path());
    settle(&mut [&mut alice, &mut bob, &mut carol]).await;
    for (p, who) in [(&alice, "alice"), (&bob, "bob"), (&carol, "carol")] {
        let mut v = p.value();
        v["count"] = json!(who);
        v[who] = json!(true);
        p.save_by_rename(&serde_json::to_string_pretty(&v).unwrap());
    }
    settle(&mut [&mut alice, &mut bob, &mut carol]).await;
    let a = alice.value();
    assert_eq!(bob.value(), a);
    assert_eq!(carol.value(), a);
    for who in ["alice", "bob", "carol"] {
        assert_eq!(a[who], json!(true), "{a}");
    }
    assert!(
        ["alice", "bob", "carol"].contains(&a["count"].as_str().unwrap()),
        "{a}"
    );
}

/// Two machines that each bind a file they already have: each imports its own, and the two are
/// one document (its id comes from the name), so the files merge key by key instead of standing
/// as two documents created apart.
#[tokio::test]
async fn two_files_imported_apart_become_one_document_merged_key_by_key() {
    let shared = tempfile::tempdir().unwrap();
    let mut alice = peer(shared.path());
    let mut bob = peer(shared.path());
    alice.save_by_rename(
        "{\n  \"theme\": \"dark\",\n  \"tabs\": 4,\n  \"recent\": [\"a.txt\"]\n}\n",
    );
    bob.save_by_rename("{\"tabs\": 2, \"wrap\": true, \"font\": {\"size\": 12}}");
    alice.sync().await;
    bob.sync().await;
    settle(&mut [&mut alice, &mut bob]).await;
    let a = alice.value();
    assert_eq!(bob.value(), a);
    assert_eq!(bob.doc(), a);
    assert_eq!(a["theme"], json!("dark"), "{a}");
    assert_eq!(a["recent"], json!(["a.txt"]), "{a}");
    assert_eq!(a["wrap"], json!(true), "{a}");
    assert_eq!(a["font"], json!({"size": 12}), "{a}");
    assert!(a["tabs"] == json!(4) || a["tabs"] == json!(2), "{a}");
    assert_eq!(a.as_object().unwrap().len(), 5, "{a}");
    // Each file keeps its own style.
    assert!(
        alice.text().starts_with("{\n  \"theme\": \"dark\""),
        "{}",
        alice.text()
    );
    assert!(!bob.text().contains('\n'), "{}", bob.text());
    for st in [alice.status(), bob.status()] {
        assert!(!st.failing, "{st}");
        assert!(!st.to_string().contains("CREATED TWICE"), "{st}");
    }
    // From then on it is one document like any other.
    let mut b = bob.value();
    b["theme"] = json!("light");
    bob.save_in_place(&serde_json::to_string(&b).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(alice.value()["theme"], json!("light"));
}

/// A file bound to a document the replica already holds from a peer (`file =` added to the
/// config later): the file's keys and the document's are both kept, the file's value taken
/// where both have a key, and objects both have merged key by key.
#[tokio::test]
async fn a_file_bound_later_to_a_document_from_a_peer_keeps_both_sides_keys() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    // Carol holds the document without a file, then binds a file of hers with other content.
    let mut carol = peer_binding(shared.path(), None);
    settle(&mut [&mut alice, &mut carol]).await;
    assert_eq!(carol.doc()["count"], json!(1));
    std::fs::write(
        carol.dir.path().join("notes.json"),
        "{\"count\": 5, \"mine\": {\"x\": 1}, \"title\": \"the quick brown fox\"}",
    )
    .unwrap();
    let mut carol = rebound(carol);
    settle(&mut [&mut alice, &mut bob, &mut carol]).await;
    let want = json!({
        "title": "the quick brown fox",
        "items": ["apples", "bread", "cheese"],
        "count": 5,
        "mine": {"x": 1},
    });
    assert_eq!(carol.value(), want);
    assert_eq!(alice.value(), want);
    assert_eq!(bob.value(), want);
}

/// The document bound to another file: what the agent knew of the first file (its shadow) is not
/// taken for the second's, whose content is merged with the document as if never read.
#[tokio::test]
async fn a_document_bound_to_another_path_merges_that_file_keeping_both_sides_keys() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    let moved = alice.dir.path().join("moved.json");
    std::fs::write(&moved, "{\"count\": 5, \"mine\": 1}").unwrap();
    drop(alice.agent.take());
    let path = alice.dir.path().join("agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("notes.json", "moved.json")).unwrap();
    alice.cfg = Config::load(&path).unwrap();
    alice.agent = Some(Agent::new(alice.cfg.clone()).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    let want = json!({
        "title": "the quick brown fox",
        "items": ["apples", "bread", "cheese"],
        "count": 5,
        "mine": 1,
    });
    assert_eq!(alice.doc(), want);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&moved).unwrap()).unwrap();
    assert_eq!(written, want);
    assert_eq!(bob.value(), want);
}

#[tokio::test]
async fn an_invalid_file_is_neither_applied_nor_overwritten_and_merges_wait_for_it() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    let half_saved = "{\n    \"title\": \"the quick brown fox\",\n    \"items\": [\n";
    alice.save_in_place(half_saved);
    let mut b = bob.value();
    b["count"] = json!(5);
    bob.save_by_rename(&serde_json::to_string_pretty(&b).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(
        alice.text(),
        half_saved,
        "an invalid file is not overwritten"
    );
    assert_eq!(
        alice.doc()["count"],
        json!(5),
        "the merge waits in the document"
    );
    let st = alice.status();
    let error = st.documents[0]
        .file
        .as_ref()
        .unwrap()
        .error
        .clone()
        .unwrap();
    assert!(
        error.contains("not valid JSON at line 4, column 0"),
        "{error}"
    );
    assert!(
        st.failing && st.to_string().contains("file problem"),
        "{st}"
    );
    // Fixed, with an edit made from the old content: the edit and the waiting merge both land.
    alice.save_by_rename(&START.replace("\"cheese\"", "\"cheese\",\n        \"eggs\""));
    settle(&mut [&mut alice, &mut bob]).await;
    let want = json!({"title": "the quick brown fox", "items": ["apples", "bread", "cheese", "eggs"], "count": 5});
    assert_eq!(alice.value(), want);
    assert_eq!(bob.value(), want);
    assert!(
        alice.status().documents[0]
            .file
            .as_ref()
            .unwrap()
            .error
            .is_none()
    );
    // A file that is JSON but not an object is refused the same way.
    alice.save_in_place("[1, 2]\n");
    alice.sync().await;
    assert_eq!(alice.text(), "[1, 2]\n");
    assert_eq!(alice.doc(), want);
}

#[tokio::test]
async fn a_deleted_file_keeps_the_document_and_a_recreated_one_binds_again() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    std::fs::remove_file(alice.file()).unwrap();
    let mut b = bob.value();
    b["count"] = json!(7);
    bob.save_in_place(&serde_json::to_string(&b).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    assert!(
        !alice.file().exists(),
        "a deleted file is not written again by a merge"
    );
    assert_eq!(alice.doc()["count"], json!(7));
    let error = alice.status().documents[0]
        .file
        .as_ref()
        .unwrap()
        .error
        .clone()
        .unwrap();
    assert!(
        error.contains("is missing; the document is kept"),
        "{error}"
    );
    // Written again (from the old content, with an edit): the edit is applied, the merge written.
    alice.save_by_rename(&START.replace("the quick", "a quick"));
    settle(&mut [&mut alice, &mut bob]).await;
    let want =
        json!({"title": "a quick brown fox", "items": ["apples", "bread", "cheese"], "count": 7});
    assert_eq!(alice.value(), want);
    assert_eq!(bob.value(), want);
}

#[tokio::test]
async fn a_file_saved_while_the_agent_is_stopped_is_applied_when_it_starts() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    alice.agent = None;
    alice.save_in_place(&START.replace("\"bread\"", "\"rye bread\""));
    alice.agent = Some(Agent::new(alice.cfg.clone()).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(
        bob.value()["items"],
        json!(["apples", "rye bread", "cheese"])
    );
    assert_eq!(alice.value(), bob.value());
}

#[cfg(unix)]
#[tokio::test]
async fn a_written_file_keeps_its_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    std::fs::set_permissions(alice.file(), std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut b = bob.value();
    b["count"] = json!(3);
    bob.save_by_rename(&serde_json::to_string(&b).unwrap());
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(alice.value()["count"], json!(3));
    let mode = std::fs::metadata(alice.file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    let leftovers: Vec<_> = std::fs::read_dir(alice.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// `agent run` notices a save on its own (it watches the bound files while it waits) and the
/// merge lands in the peer's file without anyone running a command.
#[tokio::test]
async fn a_running_agent_picks_up_a_save_and_writes_the_peers_file() {
    let shared = tempfile::tempdir().unwrap();
    let (mut alice, mut bob) = started(shared.path()).await;
    let (alice_file, bob_file) = (alice.file(), bob.file());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let a = alice.agent.as_mut().unwrap().run(stop(rx.clone()));
    let b = bob.agent.as_mut().unwrap().run(stop(rx.clone()));
    let body = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let text = std::fs::read_to_string(&alice_file).unwrap();
        std::fs::write(&alice_file, text.replace("\"count\": 1", "\"count\": 42")).unwrap();
        let mut arrived = false;
        for _ in 0..150 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let now: Value =
                serde_json::from_str(&std::fs::read_to_string(&bob_file).unwrap()).unwrap();
            if now["count"] == json!(42) {
                arrived = true;
                break;
            }
        }
        tx.send(true).unwrap();
        arrived
    };
    let (_, _, arrived) = tokio::join!(a, b, body);
    assert!(arrived, "bob's file never got alice's save");
}

/// Through the `agent` binary: `agent sync` imports the file and then applies a save; `agent
/// status --json` shows the file, and an invalid save with its line and column (exit code 2).
#[test]
fn the_cli_syncs_a_bound_file_and_status_shows_it() {
    let shared = tempfile::tempdir().unwrap();
    let p = peer(shared.path());
    let config = p.dir.path().join("agent.toml");
    drop(p.agent);
    let agent = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("MINISYNC_CONFIG")
            .env("MINISYNC_LOG", "warn")
            .output()
            .unwrap()
    };
    let file = p.dir.path().join("notes.json");
    std::fs::write(&file, "{\"list\": [\"a\"]}").unwrap();
    assert!(agent(&["sync"]).status.success());
    std::fs::write(&file, "{\"list\": [\"a\", \"b\"]}").unwrap();
    assert!(agent(&["sync"]).status.success());
    let got = agent(&["doc", "get", "notes", "list"]);
    let got: Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(got, json!(["a", "b"]));
    let out = agent(&["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let f = &st["documents"][0]["file"];
    assert_eq!(f["path"], json!(file.display().to_string()));
    assert!(f["last_read"].is_string() && f["error"].is_null(), "{st}");
    std::fs::write(&file, "{\"list\": [\"a\",\n  \"b\" \"c\"]}").unwrap();
    // Every sync says so (the document waits; the pass itself succeeds).
    for _ in 0..2 {
        let out = agent(&["sync"]);
        assert!(out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning: bound file of notes:") && err.contains("line 2, column 7"),
            "{err}"
        );
    }
    let out = agent(&["status", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let st: Value = serde_json::from_slice(&out.stdout).unwrap();
    let error = st["documents"][0]["file"]["error"].as_str().unwrap();
    assert!(
        error.contains("not valid JSON at line 2, column 7"),
        "{error}"
    );
    let text = String::from_utf8(agent(&["status"]).stdout).unwrap();
    assert!(
        text.contains("file problem:") && text.contains("line 2, column 7"),
        "{text}"
    );
}
