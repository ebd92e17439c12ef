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
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nstate-dir = \"state\"\npoll-interval = \"1s\"\n\n[[documents]]\nname = \"notes\"\n\
         transport = \"folder\"\nfolder = \"{}\"\nsend-delay = \"0s\"\nfile = \"notes.json\"\n",
        shared.display()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap();
    let agent = Some(Agent::new(cfg.clone()).unwrap());
    Peer { dir, cfg, agent }
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
