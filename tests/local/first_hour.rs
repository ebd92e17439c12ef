//! A new user's first hour, through the `agent` binary on a folder-transport config (no mail):
//! one sending agent per state directory, JSON values, readable errors, private files, JSON
//! output, the change log and the array verbs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Home {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate-dir = \"state\"\npoll-interval = \"1s\"\n\n[[documents]]\nname = \
             \"todo\"\ntransport = \"folder\"\nfolder = \"{}\"\nsend-delay = \"0s\"\n",
            shared.display()
        ),
    )
    .unwrap();
    Home { dir, config }
}

impl Home {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("MINISYNC_CONFIG")
            .env("MINISYNC_LOG", "warn")
            .stdin(Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }
    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "agent {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    /// Runs and requires failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "agent {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
    fn json(&self, args: &[&str]) -> Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn import(&self, value: &Value) {
        let file = self.dir.path().join("import.json");
        std::fs::write(&file, value.to_string()).unwrap();
        self.ok(&["doc", "import", "todo", file.to_str().unwrap()]);
    }
    fn todo(&self) -> Value {
        self.json(&["doc", "export", "todo"])
    }
}

/// Kills the spawned service when the test ends, whatever happens.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_sending_agent_stops_at_once_naming_the_first_while_reads_and_edits_work() {
    let h = home();
    h.import(&json!({"items": []}));
    let service = Service(h.command(&["run"]).stderr(Stdio::null()).spawn().unwrap());
    let pid = service.0.id().to_string();
    let lock = h.state().join("agent.lock");
    wait_for("the service writes its PID into the lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|t| t.trim() == pid)
    });
    for args in [
        &["sync"][..],
        &["run"],
        &["send", "--to", "bob@example.org"],
    ] {
        let start = Instant::now();
        let err = h.fails(args);
        assert!(start.elapsed() < Duration::from_secs(10), "{args:?} waited");
        assert!(err.contains(&format!("process {pid}")), "{args:?}: {err}");
        assert!(err.contains("already running"), "{err}");
    }
    h.ok(&["doc", "set", "todo", "items", "[1, 2]"]);
    h.ok(&["status"]);
    assert_eq!(h.todo(), json!({"items": [1, 2]}));
    drop(service);
    // Once it is gone, the lock is free again (the OS released it with the process).
    h.ok(&["sync"]);
}

#[test]
fn values_are_json_and_text_needs_string() {
    let h = home();
    h.import(&json!({"items": []}));
    for bad in [r#"{"what": milk}"#, "007", "milk"] {
        let err = h.fails(&["doc", "set", "todo", "x", bad]);
        assert!(err.contains("is not JSON"), "{err}");
        assert!(err.contains("line 1 column"), "{err}");
        assert!(err.contains("--string"), "{err}");
    }
    assert_eq!(h.todo(), json!({"items": []}), "nothing was set");
    h.ok(&["doc", "set", "todo", "items[0]", r#"{"what": "milk"}"#]);
    h.ok(&["doc", "set", "--string", "todo", "code", "007"]);
    h.ok(&["doc", "set", "todo", "n", "7"]);
    assert_eq!(
        h.todo(),
        json!({"items": [{"what": "milk"}], "code": "007", "n": 7})
    );
    let err = h.fails(&["doc", "push", "todo", "items", "{oops"]);
    assert!(err.contains("line 1 column 2"), "{err}");
}

#[test]
fn errors_are_sentences_said_once() {
    let h = home();
    let missing = h.dir.path().join("nowhere.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&missing)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(
        err.contains("hint: there is no config yet: `agent init`"),
        "{err}"
    );
    // A database failure: the state directory is a file.
    std::fs::write(h.state(), "not a directory").unwrap();
    let err = h.fails(&["doc", "list"]);
    for debug in ["code:", "Error {", "Some(", "None"] {
        assert!(!err.contains(debug), "debug text in {err}");
    }
    let first = err.lines().next().unwrap();
    let parts: Vec<&str> = first.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "{p:?} said twice in {first}");
    }
    let err = h.fails(&["doc", "get", "todo"]);
    assert!(err.starts_with("error: "), "{err}");
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[test]
fn init_makes_private_files_and_force_keeps_a_backup() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("conf/minisync/agent.toml");
    let state = dir.path().join("state-home");
    let init = |force: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
        c.arg("--config").arg(&config).arg("init");
        if force {
            c.arg("--force");
        }
        c.env("XDG_STATE_HOME", &state).output().unwrap()
    };
    let out = init(false);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&state.join("minisync")), 0o700);
    assert_eq!(mode(&state.join("minisync/agent.sqlite")), 0o600);
    for f in ["agent.sqlite-wal", "agent.sqlite-shm"] {
        let p = state.join("minisync").join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    let out = init(false);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    std::fs::write(&config, "# mine\n").unwrap();
    let out = init(true);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8(out.stdout).unwrap();
    let backups: Vec<PathBuf> = std::fs::read_dir(config.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("agent.toml.bak-"))
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert_eq!(std::fs::read_to_string(&backups[0]).unwrap(), "# mine\n");
    assert_eq!(mode(&backups[0]), 0o600);
    assert!(said.contains(&backups[0].display().to_string()), "{said}");
    assert_ne!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
}

#[cfg(unix)]
#[test]
fn the_lock_and_an_existing_state_are_private() {
    let h = home();
    h.import(&json!({"a": 1}));
    h.ok(&["sync"]);
    assert_eq!(mode(&h.state()), 0o700);
    assert_eq!(mode(&h.state().join("agent.sqlite")), 0o600);
    assert_eq!(mode(&h.state().join("agent.lock")), 0o600);
}

#[test]
fn json_outputs_parse() {
    let h = home();
    h.import(&json!({"items": [{"what": "milk"}]}));
    let list = h.json(&["doc", "list", "--json"]);
    assert_eq!(list[0]["name"], "todo");
    assert_eq!(list[0]["transport"], "folder");
    assert_eq!(list[0]["replica"], true);
    assert!(list[0]["version"].is_u64());
    let got = h.json(&["doc", "get", "todo", "items[0]", "--json"]);
    assert_eq!(got["value"], json!({"what": "milk"}));
    assert_eq!(got["path"], "items[0]");
    let sync = h.ok(&["sync", "--json"]);
    assert_eq!(sync.lines().count(), 1, "one JSON object: {sync}");
    let sync: Value = serde_json::from_str(&sync).unwrap();
    assert!(
        sync["merged"].is_u64() && sync["errors"].is_array(),
        "{sync}"
    );
    h.json(&["status", "--json"]);
    // check: an account whose servers refuse at once.
    let text = std::fs::read_to_string(&h.config).unwrap();
    let account = "[account]\naddress = \"me@example.org\"\n\
        [account.imap]\nhost = \"127.0.0.1\"\nport = 1\nencryption = \"none\"\npassword = \"x\"\n\
        [account.smtp]\nhost = \"127.0.0.1\"\nport = 1\nencryption = \"none\"\npassword = \"x\"\n";
    std::fs::write(&h.config, format!("{account}\n{text}")).unwrap();
    let out = h.run(&["check", "--json"]);
    assert!(!out.status.success());
    let check: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(check["ok"], false);
    let checks = check["checks"].as_array().unwrap();
    assert!(!checks.is_empty());
    assert!(
        checks
            .iter()
            .all(|c| c["ok"] == false && c["error"].is_string())
    );
}

#[test]
fn completions_man_and_log_levels() {
    let h = home();
    let bash = h.ok(&["completions", "bash"]);
    assert!(
        bash.contains("complete") && bash.contains("agent"),
        "{bash}"
    );
    let man = h.ok(&["man"]);
    assert!(man.contains(".TH") && man.contains("completions"), "{man}");
    let help = h.ok(&["doc", "set", "--help"]);
    assert!(help.contains("--string") && help.contains("e.g."), "{help}");
    h.import(&json!({"a": 1}));
    let quiet = h
        .command(&["-q", "sync"])
        .env("MINISYNC_LOG", "trace")
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(
        !String::from_utf8_lossy(&quiet.stderr).contains("DEBUG"),
        "-q wins"
    );
    let verbose = h.command(&["-vv", "sync"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&verbose.stderr).contains("DEBUG"),
        "-vv logs debug"
    );
}

#[test]
fn array_verbs_insert_push_and_move() {
    let h = home();
    h.import(&json!({"items": ["a", "b", "c"]}));
    h.ok(&["doc", "insert", "todo", "items", "1", r#""x""#]);
    assert_eq!(h.todo()["items"], json!(["a", "x", "b", "c"]));
    let said = h.ok(&["doc", "push", "--string", "todo", "items", "d"]);
    assert!(said.contains("5 elements"), "{said}");
    h.ok(&["doc", "move", "todo", "items", "4", "0"]);
    assert_eq!(h.todo()["items"], json!(["d", "a", "x", "b", "c"]));
    h.ok(&["doc", "move", "todo", "items", "0", "4"]);
    assert_eq!(h.todo()["items"], json!(["a", "x", "b", "c", "d"]));
    let err = h.fails(&["doc", "move", "todo", "items", "5", "0"]);
    assert!(err.contains("has 5 elements"), "{err}");
    let err = h.fails(&["doc", "insert", "todo", "items", "9", "1"]);
    assert!(err.contains("past the end"), "{err}");
    assert_eq!(h.todo()["items"], json!(["a", "x", "b", "c", "d"]));
}

#[test]
fn doc_log_says_who_changed_what() {
    let h = home();
    h.import(&json!({"items": []}));
    h.ok(&["doc", "push", "todo", "items", "1"]);
    h.ok(&["doc", "set", "todo", "title", r#""groceries""#]);
    h.ok(&["doc", "rm", "todo", "items[0]"]);
    let log = h.json(&["doc", "log", "todo", "--json"]);
    let paths: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["paths"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        ["rm items[0]", "set title", "push items", "import (created)"]
    );
    assert!(log[0]["who"].as_str().unwrap().contains("this device"));
    assert!(log[0]["at"].as_i64().unwrap() >= log[3]["at"].as_i64().unwrap());
    let two = h.json(&["doc", "log", "todo", "-n", "2", "--json"]);
    assert_eq!(two.as_array().unwrap().len(), 2);
    let text = h.ok(&["doc", "log", "todo"]);
    assert!(
        text.lines().next().unwrap().contains("rm items[0]"),
        "{text}"
    );
    // A failed edit leaves no row.
    h.fails(&["doc", "set", "todo", "title", "oops"]);
    assert_eq!(h.json(&["doc", "log", "todo", "--json"]), log);
    h.import(&json!({"items": [], "title": "camping"}));
    let log = h.json(&["doc", "log", "todo", "-n", "1", "--json"]);
    assert_eq!(log[0]["paths"], "import: title");
}

#[test]
fn the_change_log_keeps_the_last_thousand_per_document() {
    use minisync::store::{KEEP_CHANGES, Store};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("agent.sqlite")).unwrap();
    for i in 0..KEEP_CHANGES + 5 {
        Store::log_change(store.conn(), "todo", "bob@example.org", &format!("n{i}")).unwrap();
    }
    Store::log_change(store.conn(), "other", "me", "x").unwrap();
    let log = store.change_log("todo", 5000).unwrap();
    assert_eq!(log.len() as i64, KEEP_CHANGES);
    assert_eq!(log[0].paths, format!("n{}", KEEP_CHANGES + 4));
    assert_eq!(log.last().unwrap().paths, "n5");
    assert_eq!(store.change_log("other", 10).unwrap().len(), 1);
}
