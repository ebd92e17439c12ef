//! `agent doc …` beside a running `agent run`: the agent runs the command on the replica it holds
//! loaded; the command line runs it itself when the agent is stopped, reads another config, or
//! is not there. Runs the real binary on a folder document, so no mail stack is needed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use minisync::agent::TAKE_WITHIN;
use minisync::config::Config;

const CONFIG: &str = "[agent]\nstate-dir = \"state\"\n\n[[documents]]\nname = \"todo\"\ntransport = \"folder\"\nfolder = \"shared\"\n";

/// The agent under test, killed if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn agent(cfg: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

fn ok(cfg: &Path, args: &[&str]) -> String {
    let out = agent(cfg, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A config with document `todo` imported; returns its path.
fn setup(dir: &Path) -> PathBuf {
    let cfg = dir.join("agent.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    let file = dir.join("todo.json");
    std::fs::write(&file, r#"{"items": ["milk"], "n": 1}"#).unwrap();
    ok(&cfg, &["doc", "import", "todo", file.to_str().unwrap()]);
    cfg
}

/// `agent run` with its log in `log`, once it serves doc commands.
fn start(cfg: &Path, log: &Path) -> Running {
    let child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(cfg)
        .arg("run")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let running = Running(child);
    let config = Config::load(cfg).unwrap();
    let store = minisync::agent::open_store(&config).unwrap();
    let start = Instant::now();
    while store.doc_server().unwrap().map(|s| s.pid) != Some(running.0.id()) {
        assert!(start.elapsed() < Duration::from_secs(30), "never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    running
}

fn served(log: &Path, command: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter(|l| {
            l.contains("ran a doc command for the command line")
                && l.contains(&format!("command=\"{command}\""))
        })
        .count()
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn doc_commands_beside_a_running_agent_are_run_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let log = dir.path().join("agent.log");
    let mut running = start(&cfg, &log);

    ok(&cfg, &["doc", "set", "todo", "n", "2"]);
    assert_eq!(
        ok(&cfg, &["doc", "push", "todo", "items", "--string", "eggs"]),
        "todo: items now has 2 elements\n"
    );
    assert_eq!(ok(&cfg, &["doc", "get", "todo", "items[1]"]), "\"eggs\"\n");
    assert_eq!(served(&log, "set"), 1);
    assert_eq!(served(&log, "push"), 1);
    assert_eq!(served(&log, "get"), 1);

    // An error is the command's own, with its exit code, and nothing changes.
    let out = agent(&cfg, &["doc", "rm", "todo", "gone"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nothing at path \"gone\""), "{err}");
    assert_eq!(served(&log, "rm"), 1);

    // What the agent did is in the database: a command line without the agent reads it.
    signal(running.0.id(), "TERM");
    running.0.wait().unwrap();
    let config = Config::load(&cfg).unwrap();
    let store = minisync::agent::open_store(&config).unwrap();
    assert_eq!(
        store.doc_server().unwrap(),
        None,
        "a stopped agent serves nothing"
    );
    assert!(ok(&cfg, &["doc", "get", "todo", "--json"]).contains("\"eggs\""));
    assert_eq!(ok(&cfg, &["doc", "get", "todo", "n"]), "2\n");
}

/// A stopped agent (SIGSTOP) holds the lock but takes nothing: the command line withdraws its
/// command after `TAKE_WITHIN` and runs it itself, and the agent, once it goes on, never runs it
/// a second time.
#[test]
fn a_stopped_agent_leaves_the_command_to_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let log = dir.path().join("agent.log");
    let running = start(&cfg, &log);
    signal(running.0.id(), "STOP");
    let started = Instant::now();
    ok(&cfg, &["doc", "push", "todo", "items", "--string", "bread"]);
    assert!(started.elapsed() >= TAKE_WITHIN);
    signal(running.0.id(), "CONT");
    // The agent goes on: the next command is its again.
    assert_eq!(
        ok(&cfg, &["doc", "get", "todo", "items"])
            .matches("bread")
            .count(),
        1
    );
    assert_eq!(
        served(&log, "push"),
        0,
        "the withdrawn command ran once, here"
    );
    assert_eq!(served(&log, "get"), 1);
}

/// A command line reading another config (or the agent's config file changed since it started)
/// runs its commands itself, with its own config.
#[test]
fn a_command_line_with_another_config_runs_its_command_itself() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = setup(dir.path());
    let log = dir.path().join("agent.log");
    let _running = start(&cfg, &log);
    ok(&cfg, &["doc", "set", "todo", "n", "3"]);
    assert_eq!(served(&log, "set"), 1);
    std::fs::write(&cfg, format!("{CONFIG}# edited after the agent started\n")).unwrap();
    ok(&cfg, &["doc", "set", "todo", "n", "4"]);
    assert_eq!(served(&log, "set"), 1, "not the agent's");
    assert_eq!(ok(&cfg, &["doc", "get", "todo", "n"]), "4\n");
}
