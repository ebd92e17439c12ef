//! The shared-folder transport end to end: real agents (state in SQLite) syncing through a
//! temporary directory.

use std::path::{Path, PathBuf};

use minisync::agent::{Agent, DocCommand, PassReport, doc_command};
use minisync::config::Config;
use minisync::engine::{Changes, Document};
use minisync::transport::folder::{BASE_FILE, LATEST_FILE, VERSION_FILE, VersionFile};
use serde_json::{Value, json};

struct Peer {
    _dir: tempfile::TempDir,
    cfg: Config,
    agent: Agent,
}

fn peer(shared: &Path) -> Peer {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[agent]\nstate-dir = \"state\"\npoll-interval = \"1s\"\n\n[[documents]]\nname = \"todo\"\ntransport = \"folder\"\nfolder = \"{}\"\nsend-delay = \"0s\"\n",
        shared.display()
    );
    let path = dir.path().join("agent.toml");
    std::fs::write(&path, &text).unwrap();
    let cfg = Config::load(&path).unwrap();
    let agent = Agent::new(cfg.clone()).unwrap();
    Peer {
        _dir: dir,
        cfg,
        agent,
    }
}

impl Peer {
    fn cmd(&mut self, c: DocCommand) -> String {
        doc_command(&self.cfg, self.agent.store(), c).unwrap()
    }
    fn set(&mut self, path: &str, value: Value) {
        self.cmd(DocCommand::Set {
            name: "todo".into(),
            path: path.into(),
            value: value.to_string(),
        });
    }
    fn json(&mut self) -> Value {
        self.agent
            .store()
            .read_doc("todo", |d| d.to_json())
            .unwrap()
    }
    fn client(&mut self) -> String {
        self.agent
            .store()
            .read_doc("todo", |d| d.client_id().to_string())
            .unwrap()
    }
    fn doc_id(&mut self) -> String {
        self.agent
            .store()
            .read_doc("todo", |d| d.id().to_string())
            .unwrap()
    }
    async fn sync(&mut self) -> PassReport {
        self.agent.sync_once().await
    }
}

async fn settle(peers: &mut [&mut Peer]) {
    for _ in 0..4 {
        for p in peers.iter_mut() {
            let r = p.sync().await;
            assert!(r.errors.is_empty(), "{:?}", r.errors);
        }
    }
}

fn client_dir(shared: &Path, p: &mut Peer) -> PathBuf {
    shared.join(p.doc_id()).join(p.client())
}

#[tokio::test]
async fn two_peers_converge_and_acknowledge() {
    let shared = tempfile::tempdir().unwrap();
    let mut alice = peer(shared.path());
    let mut bob = peer(shared.path());
    alice.cmd(DocCommand::Import {
        name: "todo".into(),
        json: r#"{"items": [], "title": "groceries"}"#.into(),
    });
    alice.sync().await;
    bob.sync().await; // bob has no replica: he adopts the one in the folder
    assert_eq!(bob.json(), alice.json());
    alice.set("title", json!("weekend groceries"));
    alice.cmd(DocCommand::Set {
        name: "todo".into(),
        path: "items[0]".into(),
        value: "\"milk\"".into(),
    });
    bob.set("items[0]", json!("bread"));
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(alice.json(), bob.json());
    let items = alice.json()["items"].as_array().unwrap().len();
    assert_eq!(
        items,
        2,
        "both concurrent inserts are kept: {}",
        alice.json()
    );
    // Acknowledgements travel through the folder too.
    let (a, b) = (alice.client(), bob.client());
    let av = alice
        .agent
        .store()
        .read_doc("todo", |d| d.version())
        .unwrap();
    let ack = bob.agent.store().read_doc("todo", |d| {
        d.peer(minisync::engine::ClientId::parse(&a).unwrap())
            .map(|p| p.last_received)
    });
    assert_eq!(ack.unwrap(), Some(av));
    let st = minisync::agent::status(&bob.cfg, bob.agent.store()).unwrap();
    assert!(st.documents[0].peers.iter().any(|p| p.peer == a), "{st}");
    let _ = b;
}

#[tokio::test]
async fn three_peers_converge() {
    let shared = tempfile::tempdir().unwrap();
    let mut alice = peer(shared.path());
    let mut bob = peer(shared.path());
    let mut carol = peer(shared.path());
    alice.cmd(DocCommand::Import {
        name: "todo".into(),
        json: r#"{"n": 0}"#.into(),
    });
    settle(&mut [&mut alice, &mut bob, &mut carol]).await;
    alice.set("a", json!(1));
    bob.set("b", json!(2));
    carol.set("c", json!(3));
    carol.set("n", json!("carol"));
    settle(&mut [&mut alice, &mut bob, &mut carol]).await;
    assert_eq!(alice.json(), json!({"n": "carol", "a": 1, "b": 2, "c": 3}));
    assert_eq!(bob.json(), alice.json());
    assert_eq!(carol.json(), alice.json());
}

#[tokio::test]
async fn damaged_folders_merge_nothing_and_the_next_pass_catches_up() {
    let shared = tempfile::tempdir().unwrap();
    let mut alice = peer(shared.path());
    let mut bob = peer(shared.path());
    alice.cmd(DocCommand::Import {
        name: "todo".into(),
        json: r#"{"k": 0}"#.into(),
    });
    settle(&mut [&mut alice, &mut bob]).await;
    let bob_dir = client_dir(shared.path(), &mut bob);
    let latest = bob_dir.join(LATEST_FILE);

    // A latest file shorter than version.json says: half delivered.
    bob.set("k", json!(1));
    bob.sync().await;
    let good = std::fs::read(&latest).unwrap();
    std::fs::write(&latest, &good[..good.len() / 2]).unwrap();
    let before = alice.json();
    let r = alice.sync().await;
    assert_eq!(r.deferred, 1, "{r:?}");
    assert_eq!(alice.json(), before);
    std::fs::write(&latest, &good).unwrap();
    alice.sync().await;
    assert_eq!(alice.json(), json!({"k": 1}));

    // A missing latest file.
    bob.set("k", json!(2));
    bob.sync().await;
    let good = std::fs::read(&latest).unwrap();
    std::fs::remove_file(&latest).unwrap();
    let r = alice.sync().await;
    assert_eq!(r.deferred, 1, "{r:?}");
    assert_eq!(alice.json(), json!({"k": 1}));
    std::fs::write(&latest, &good).unwrap();
    alice.sync().await;
    assert_eq!(alice.json(), json!({"k": 2}));

    // Corrupt JSON whose size matches version.json: refused by the parser, nothing merged.
    bob.set("k", json!(3));
    bob.sync().await;
    let good = std::fs::read(&latest).unwrap();
    let garbage = vec![b'{'; good.len()];
    std::fs::write(&latest, &garbage).unwrap();
    let r = alice.sync().await;
    assert_eq!(r.deferred, 1, "{r:?}");
    assert_eq!(alice.json(), json!({"k": 2}));
    std::fs::write(&latest, &good).unwrap();

    // A conflict copy left by a sync tool is never read.
    std::fs::write(
        bob_dir.join("changes.latest (1).json"),
        b"{\"minisync\":\"changes\", broken",
    )
    .unwrap();
    let r = alice.sync().await;
    assert_eq!(r.deferred, 0, "{r:?}");
    assert_eq!(alice.json(), json!({"k": 3}));

    // A version.json that is not valid.
    bob.set("k", json!(4));
    bob.sync().await;
    let v = std::fs::read(bob_dir.join(VERSION_FILE)).unwrap();
    std::fs::write(bob_dir.join(VERSION_FILE), b"{\"version\": \"x\"}").unwrap();
    let r = alice.sync().await;
    assert_eq!(r.deferred, 1);
    assert_eq!(alice.json(), json!({"k": 3}));
    std::fs::write(bob_dir.join(VERSION_FILE), v).unwrap();
    settle(&mut [&mut alice, &mut bob]).await;
    assert_eq!(alice.json(), json!({"k": 4}));
    assert_eq!(bob.json(), alice.json());
}

#[tokio::test]
async fn base_is_rewritten_and_a_newcomer_catches_up_from_base_and_latest() {
    let shared = tempfile::tempdir().unwrap();
    let mut alice = peer(shared.path());
    let big: Vec<Value> = (0..50)
        .map(|i| json!({"title": format!("item {i}"), "done": false}))
        .collect();
    alice.cmd(DocCommand::Import {
        name: "todo".into(),
        json: json!({"items": big}).to_string(),
    });
    alice.sync().await;
    let dir = client_dir(shared.path(), &mut alice);
    let read_version = |d: &Path| -> VersionFile {
        serde_json::from_slice(&std::fs::read(d.join(VERSION_FILE)).unwrap()).unwrap()
    };
    let v0 = read_version(&dir);
    assert_eq!(
        v0.base_version, v0.version,
        "the first publication is a base"
    );
    // A small change: only the latest file grows.
    alice.set("items[0].done", json!(true));
    alice.sync().await;
    let v1 = read_version(&dir);
    assert_eq!(v1.base_version, v0.base_version);
    assert!(v1.version > v0.version);
    assert!((v1.latest_bytes as f64) < 0.3 * v1.base_bytes as f64);
    // A newcomer now needs base + latest.
    let mut bob = peer(shared.path());
    bob.sync().await;
    assert_eq!(bob.json(), alice.json());
    // Many changes: latest passes 30 % of base and a new base is written.
    for i in 0..40 {
        alice.set(&format!("items[{i}].title"), json!(format!("renamed {i}")));
    }
    alice.sync().await;
    let v2 = read_version(&dir);
    assert_eq!(v2.base_version, v2.version, "base rewritten");
    let base_text = std::fs::read_to_string(dir.join(BASE_FILE)).unwrap();
    let base = Document::from_changes(&Changes::parse(&base_text).unwrap()).unwrap();
    assert_eq!(
        base.get("items[39].title").unwrap(),
        Some(json!("renamed 39"))
    );
    let mut carol = peer(shared.path());
    carol.sync().await;
    assert_eq!(carol.json(), alice.json());
    // One more small change after the rebase: carol and bob catch up from latest.
    alice.set("items[1].done", json!(true));
    alice.sync().await;
    settle(&mut [&mut alice, &mut bob, &mut carol]).await;
    assert_eq!(bob.json(), alice.json());
    assert_eq!(carol.json(), alice.json());
}

/// Copies one client's files from one folder to another, as a sync tool delivers them.
fn deliver(from: &Path, to: &Path, names: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for n in names {
        std::fs::copy(from.join(n), to.join(n)).unwrap();
    }
}

/// A sync tool (Syncthing pulls files in any order) delivers `version.json` and the latest file
/// of a write before its rewritten base, and the stale base has the same size: the reader waits
/// for the base `version.json` names instead of merging the stale one as if it were it.
#[tokio::test]
async fn files_of_one_write_delivered_out_of_order_are_waited_for() {
    let (share_a, share_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut alice = peer(share_a.path());
    let mut bob = peer(share_b.path());
    alice.cmd(DocCommand::Import {
        name: "todo".into(),
        json: r#"{"x": 1111, "y": 1}"#.into(),
    });
    alice.set("x", json!(2222));
    alice.sync().await;
    let (from, rel) = {
        let d = client_dir(share_a.path(), &mut alice);
        let rel = d.strip_prefix(share_a.path()).unwrap().to_path_buf();
        (d, rel)
    };
    let to = share_b.path().join(&rel);
    deliver(&from, &to, &[BASE_FILE, LATEST_FILE, VERSION_FILE]);
    bob.sync().await;
    assert_eq!(bob.json()["x"], json!(2222));
    // Alice rewrites her base; only version.json and the latest file reach bob at first.
    alice.set("x", json!(3333));
    alice.sync().await;
    let base_a = std::fs::read(from.join(BASE_FILE)).unwrap();
    let base_b = std::fs::read(to.join(BASE_FILE)).unwrap();
    assert_eq!(base_a.len(), base_b.len(), "same size, another write");
    assert_ne!(base_a, base_b);
    deliver(&from, &to, &[VERSION_FILE, LATEST_FILE]);
    let r = bob.sync().await;
    assert_eq!(r.deferred, 1, "the stale base is not merged: {r:?}");
    assert_eq!(bob.json()["x"], json!(2222));
    // The base arrives: bob ends with the latest value.
    deliver(&from, &to, &[BASE_FILE]);
    bob.sync().await;
    assert_eq!(bob.json()["x"], json!(3333));
    assert_eq!(bob.json(), alice.json());
}

/// A replica edited behind the engine's back is found by the digest over a shared folder too, and
/// repaired: each side merges the other's whole publication (base and latest, read again) by the
/// repair's rule.
#[tokio::test]
async fn a_replica_edited_behind_the_engines_back_is_found_and_repaired_over_a_folder() {
    let shared = tempfile::tempdir().unwrap();
    let mut alice = peer(shared.path());
    let mut bob = peer(shared.path());
    alice.cmd(DocCommand::Import {
        name: "todo".into(),
        json: r#"{"title": "original", "n": 1}"#.into(),
    });
    settle(&mut [&mut alice, &mut bob]).await;
    let db = rusqlite::Connection::open(bob._dir.path().join("state/agent.sqlite")).unwrap();
    // The value is in its node's row; the revision tells running agents to load it again.
    let sql = "UPDATE doc_nodes SET node = replace(node, '\"original\"', '\"tampered\"') WHERE name = 'todo' AND node LIKE '%original%'";
    assert_eq!(db.execute(sql, []).unwrap(), 1);
    db.execute("UPDATE documents SET rev = rev + 1 WHERE name = 'todo'", [])
        .unwrap();
    assert_eq!(bob.json()["title"], json!("tampered"));
    alice.set("n", json!(2));
    let diverged = |p: &mut Peer| {
        let st = minisync::agent::status(&p.cfg, p.agent.store()).unwrap();
        st.documents[0].peers.iter().any(|x| x.diverged.is_some())
    };
    let mut seen = false;
    for _ in 0..8 {
        alice.sync().await;
        bob.sync().await;
        seen |= diverged(&mut alice) || diverged(&mut bob);
    }
    assert!(seen, "the divergence was reported");
    assert_eq!(alice.json(), bob.json());
    assert_eq!(alice.json()["n"], json!(2));
    assert!(!diverged(&mut alice) && !diverged(&mut bob), "repaired");
}
