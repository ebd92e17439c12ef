//! `agent check` never hangs: against a server that accepts the connection and never answers, and
//! with STARTTLS against a port that speaks TLS from the first byte, every step is bounded by the
//! configured timeout, said as it starts, and a likely mistake gets a hint.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use crate::common::*;

/// A TCP server that accepts connections and never says a word (kept open until the test ends).
fn silent_server() -> (u16, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().take(4).flatten() {
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    (port, handle)
}

fn config(
    dir: &std::path::Path,
    imap: (u16, &str),
    smtp: (u16, &str),
    ca: Option<&str>,
) -> std::path::PathBuf {
    let ca = ca
        .map(|c| format!("ca-file = \"{c}\"\n"))
        .unwrap_or_default();
    let text = format!(
        "[account]\naddress = \"me@example.test\"\n\n[account.imap]\nhost = \"127.0.0.1\"\nport = {}\nencryption = \"{}\"\npassword = \"secret\"\ntimeout = \"1s\"\n{ca}\n[account.smtp]\nhost = \"127.0.0.1\"\nport = {}\nencryption = \"{}\"\npassword = \"secret\"\ntimeout = \"1s\"\n{ca}\n[agent]\nstate-dir = \"state\"\n",
        imap.0, imap.1, smtp.0, smtp.1
    );
    let path = dir.join("agent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn check(config: &std::path::Path) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("--config")
        .arg(config)
        .arg("check")
        .output()
        .unwrap();
    (out, started.elapsed())
}

#[test]
fn check_against_a_silent_server_ends_within_the_timeout_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let (imap, _a) = silent_server();
    let (smtp, _b) = silent_server();
    let cfg = config(dir.path(), (imap, "none"), (smtp, "start-tls"), None);
    let (out, took) = check(&cfg);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}");
    assert!(took < Duration::from_secs(10), "check took {took:?}");
    assert!(
        stderr.contains(&format!("IMAP: connecting to 127.0.0.1:{imap}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("IMAP: waiting for the greeting"),
        "{stderr}"
    );
    assert!(
        stderr.contains("SMTP: waiting for the greeting"),
        "{stderr}"
    );
    assert!(
        stdout.contains("FAIL  IMAP: IMAP: waiting for the greeting: no answer within 1s"),
        "{stdout}"
    );
    assert!(
        stdout.contains("encryption = \"tls\""),
        "the likely mistake is named: {stdout}"
    );
    assert!(stdout.contains("FAIL  SMTP"), "{stdout}");
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn start_tls_against_an_implicit_tls_port_ends_within_the_timeout_with_a_hint() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let imaps: u16 = stack.var("IMAPS_PORT").parse().unwrap();
    let smtps: u16 = stack.var("SMTPS_PORT").parse().unwrap();
    let cfg = config(
        dir.path(),
        (imaps, "start-tls"),
        (smtps, "start-tls"),
        Some(stack.var("CA_FILE")),
    );
    let (out, took) = check(&cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(took < Duration::from_secs(10), "check took {took:?}");
    assert!(stdout.contains("no answer within 1s"), "{stdout}");
    assert!(
        stdout.contains("speaks TLS from the first byte")
            && stdout.contains("encryption = \"tls\""),
        "{stdout}"
    );
}

#[test]
fn a_server_that_answers_junk_gets_a_sentence_not_parser_debug_text() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let _server = std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().take(4).flatten() {
            use std::io::Write;
            let _ = conn.write_all(b"\xff\xfe\x00garbage\r\n");
            held.push(conn);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), (port, "none"), (port, "none"), None);
    let (out, took) = check(&cfg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(took < Duration::from_secs(10), "check took {took:?}");
    assert!(stdout.contains("is not IMAP"), "{stdout}");
    for debug in ["Error {", "input: [", "code:"] {
        assert!(!stdout.contains(debug), "debug text {debug:?} in {stdout}");
    }
}
