//! The agent as a service, seen from outside: what systemd hears on its notify socket, how it stops
//! on SIGTERM, and the exit code that tells systemd not to restart after a config error. Runs the
//! real binary on a folder document, so no mail stack is needed.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        "[agent]\nstate-dir = \"state\"\n\n[[documents]]\nname = \"todo\"\ntransport = \"folder\"\nfolder = \"shared\"\n",
    )
    .unwrap();
    path
}

/// The agent under test, killed if the test fails before it stops it.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A notify socket in `dir`, as systemd provides one: (socket, its path for NOTIFY_SOCKET).
fn notify_socket(dir: &Path) -> (UnixDatagram, std::path::PathBuf) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (socket, path)
}

/// Reads notify datagrams (keeping them in `heard`) until one has a line that is `what`, or that
/// starts with it when `what` ends in a space.
fn hear(socket: &UnixDatagram, what: &str, heard: &mut Vec<String>) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            heard.push(text.clone());
            let wanted = |l: &str| {
                if what.ends_with(' ') {
                    l.starts_with(what)
                } else {
                    l == what
                }
            };
            if text.lines().any(wanted) {
                return;
            }
        }
    }
    panic!("never heard {what:?}; heard {heard:?}");
}

#[test]
fn run_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (socket, socket_path) = notify_socket(dir.path());
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .env("NOTIFY_SOCKET", &socket_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut heard = Vec::new();
    hear(&socket, "READY=1", &mut heard);
    hear(&socket, "STATUS=merged ", &mut heard); // after the first pass
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    hear(&socket, "STOPPING=1", &mut heard);
    let exit = child.0.wait().unwrap();
    assert!(
        exit.success(),
        "SIGTERM is a clean stop, not a failure: {exit}"
    );
}

#[test]
fn under_the_systemd_watchdog_it_keeps_saying_it_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let (socket, socket_path) = notify_socket(dir.path());
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's pid for the agent.
    let child = Command::new("sh")
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" --config \"$1\" run")
        .arg(env!("CARGO_BIN_EXE_agent"))
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Running(child);
    let mut heard = Vec::new();
    hear(&socket, "READY=1", &mut heard);
    let start = Instant::now();
    for _ in 0..4 {
        hear(&socket, "WATCHDOG=1", &mut heard);
    }
    drop(child);
    // A 1 s watchdog with nothing to do: a ping at least every half second.
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_config_error_exits_78_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("transport = ", "transprot = ")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "systemd's unit does not restart on 78"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("agent.toml:6:"), "{err}");
    assert!(err.contains("did you mean `transport`"), "{err}");
}

/// CPU seconds (user + system) the process `pid` has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command name (in parentheses, which may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// After an edit of a folder document has been published, the service waits: it does not come
/// round again at once, for ever (it did while the edit's time stayed recorded as unsent).
#[test]
fn an_agent_with_nothing_to_do_rests() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let file = dir.path().join("todo.json");
    std::fs::write(&file, r#"{"items": []}"#).unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    cli(&["doc", "import", "todo", file.to_str().unwrap()]);
    let child = Running(
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(&cfg)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(1));
    cli(&["doc", "push", "todo", "items", "1"]);
    // The send delay (2 s) passes and the edit is published; then the agent rests.
    std::thread::sleep(Duration::from_secs(4));
    let before = cpu_seconds(child.0.id());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(child.0.id()) - before;
    assert!(used < 0.3, "{used} CPU seconds in 3 s of rest");
}
