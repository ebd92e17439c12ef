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

/// Reads notify datagrams until one contains `what`; returns everything read.
fn hear(socket: &UnixDatagram, what: &str, heard: &mut Vec<String>) {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(30) {
        if let Ok(n) = socket.recv(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            heard.push(text.clone());
            if text.lines().any(|l| l == what) {
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
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut heard = Vec::new();
    hear(&socket, "READY=1", &mut heard);
    let status_line = |heard: &[String]| {
        heard
            .iter()
            .flat_map(|d| d.lines())
            .any(|l| l.starts_with("STATUS=merged "))
    };
    let start = Instant::now();
    while !status_line(&heard) && start.elapsed() < Duration::from_secs(30) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buf) {
            heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(status_line(&heard), "no STATUS= after a pass: {heard:?}");
    let killed = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    hear(&socket, "STOPPING=1", &mut heard);
    let exit = child.wait().unwrap();
    assert!(
        exit.success(),
        "SIGTERM is a clean stop, not a failure: {exit}"
    );
}

#[test]
fn under_the_systemd_watchdog_it_keeps_saying_it_is_alive() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's pid for the agent.
    let mut child = Command::new("sh")
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
    let mut heard = Vec::new();
    hear(&socket, "READY=1", &mut heard);
    let start = Instant::now();
    let mut pings = 0;
    while pings < 4 && start.elapsed() < Duration::from_secs(10) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buf)
            && String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "WATCHDOG=1")
        {
            pings += 1;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    // A 1 s watchdog with nothing to do: a ping at least every half second.
    assert!(pings >= 4, "{pings} pings in {:?}", start.elapsed());
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
