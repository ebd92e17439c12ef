//! Helpers for the tests that run against the real mail stack (`scripts/mail-stack`).
#![allow(dead_code)]

pub mod imap_proxy;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// What the test command prints when the mail stack is not running.
pub const RUN_WITH: &str =
    "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)";

/// The running mail stack, read from the env file `scripts/mail-stack` wrote.
pub struct Stack {
    pub env: HashMap<String, String>,
}

impl Stack {
    pub fn get() -> Stack {
        let path = std::env::var("MINISYNC_MAILSTACK")
            .unwrap_or_else(|_| panic!("MINISYNC_MAILSTACK is not set: this test {RUN_WITH}"));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        let env = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Stack { env }
    }
    pub fn var(&self, k: &str) -> &str {
        self.env
            .get(k)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("{k} missing from the mail stack env"))
    }
    pub fn dir(&self) -> PathBuf {
        PathBuf::from(self.var("MAILSTACK_DIR"))
    }
    /// The maildir of a user (`new/`, `cur/` inside; folders as `.Name/`).
    pub fn maildir(&self, address: &str) -> PathBuf {
        self.dir()
            .join("mail")
            .join(address.split('@').next().unwrap_or(address))
    }
}

/// A unique address for this run and test.
pub fn address(name: &str) -> String {
    let r: u32 = rand::random();
    format!("{name}-{r:08x}@example.test")
}

/// How a node connects: exercises every encryption mode across the tests.
#[derive(Clone, Copy)]
pub enum Security {
    Tls,
    StartTls,
    Plain,
}

/// One agent with its config and state in a temporary directory.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub address: String,
}

pub struct DocSpec<'a> {
    pub name: &'a str,
    pub peers: &'a [&'a str],
    pub send_delay: &'a str,
    pub resend: &'a str,
}

pub fn node(
    stack: &Stack,
    address: &str,
    peers: &[&str],
    docs: &[DocSpec],
    security: Security,
) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let ca = stack.var("CA_FILE");
    let (imap_port, imap_enc, smtp_port, smtp_enc) = match security {
        Security::Tls => (
            stack.var("IMAPS_PORT"),
            "tls",
            stack.var("SMTPS_PORT"),
            "tls",
        ),
        Security::StartTls => (
            stack.var("IMAP_PORT"),
            "start-tls",
            stack.var("SMTP_PORT"),
            "start-tls",
        ),
        Security::Plain => (
            stack.var("IMAP_PORT"),
            "none",
            stack.var("SMTP_PORT"),
            "none",
        ),
    };
    let mut text = format!(
        "[account]\naddress = \"{address}\"\n\n[account.imap]\nhost = \"localhost\"\nport = {imap_port}\nencryption = \"{imap_enc}\"\npassword-env = \"MINISYNC_TEST_PASSWORD\"\nca-file = \"{ca}\"\n\n[account.smtp]\nhost = \"localhost\"\nport = {smtp_port}\nencryption = \"{smtp_enc}\"\npassword-cmd = \"echo secret\"\nca-file = \"{ca}\"\n\n[agent]\nstate-dir = \"state\"\npoll-interval = \"2s\"\n"
    );
    for p in peers {
        text.push_str(&format!("\n[[peers]]\naddress = \"{p}\"\n"));
    }
    for d in docs {
        let peers: Vec<String> = d.peers.iter().map(|p| format!("\"{p}\"")).collect();
        text.push_str(&format!(
            "\n[[documents]]\nname = \"{}\"\npeers = [{}]\nsend-delay = \"{}\"\nresend-interval = \"{}\"\n",
            d.name,
            peers.join(", "),
            d.send_delay,
            d.resend
        ));
    }
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).unwrap();
    Node {
        dir,
        config,
        address: address.to_string(),
    }
}

impl Node {
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("MINISYNC_TEST_PASSWORD", "secret")
            .env("MINISYNC_LOG", "info")
            .output()
            .unwrap()
    }
    /// Points the config's IMAP server at another port on this machine.
    pub fn set_imap_port(&self, port: u16) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let (head, tail) = text.split_once("[account.imap]\n").unwrap();
        let (port_line, rest) = tail
            .split_once('\n')
            .map(|(host, rest)| (host, rest.split_once('\n').unwrap()))
            .map(|(host, (_, rest))| (format!("{host}\nport = {port}"), rest))
            .unwrap();
        std::fs::write(
            &self.config,
            format!("{head}[account.imap]\n{port_line}\n{rest}"),
        )
        .unwrap();
    }
    /// Adds a line to the config's `[account.imap]` table.
    pub fn set_imap(&self, line: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("[account.imap]\n", &format!("[account.imap]\n{line}\n"), 1);
        std::fs::write(&self.config, text).unwrap();
    }
    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "agent {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Creates a document from JSON with `agent doc import`.
    pub fn import(&self, doc: &str, value: &Value) {
        let file = self.dir.path().join(format!("{doc}-import.json"));
        std::fs::write(&file, value.to_string()).unwrap();
        self.ok(&["doc", "import", doc, file.to_str().unwrap()]);
    }
    pub fn sync(&self) -> String {
        self.ok(&["sync"])
    }
    pub fn doc(&self, name: &str) -> Option<Value> {
        let out = self.cmd(&["doc", "export", name]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }
    pub fn status(&self) -> Value {
        let out = self.cmd(&["status", "--json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }
    /// (lastReceived, lastAcknowledged) this node holds for a peer of a document.
    pub fn acks(&self, doc: &str, peer: &str) -> (u64, u64) {
        let s = self.status();
        let d = s["documents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == doc)
            .unwrap()
            .clone();
        let p = d["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == peer)
            .unwrap()
            .clone();
        (
            p["last_received"].as_u64().unwrap(),
            p["last_acknowledged"].as_u64().unwrap(),
        )
    }
    pub fn version(&self, doc: &str) -> u64 {
        let s = self.status();
        s["documents"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["name"] == doc)
            .unwrap()["version"]
            .as_u64()
            .unwrap_or(0)
    }
    /// Starts `agent run` in the background; its log goes to a file in the node's directory.
    pub fn spawn(&self) -> Service {
        let log = self
            .dir
            .path()
            .join(format!("run-{}.log", rand::random::<u32>()));
        let child = Command::new(env!("CARGO_BIN_EXE_agent"))
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .env("MINISYNC_TEST_PASSWORD", "secret")
            .env("MINISYNC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Service { child, log }
    }
}

/// A running `agent run`; killed when dropped.
pub struct Service {
    pub child: Child,
    pub log: PathBuf,
}

impl Service {
    pub fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test shows what each agent it ran was doing.
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Polls until `f` is true, failing the test with `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}

/// Message files in a maildir folder ("" for INBOX).
pub fn messages(maildir: &Path, folder: &str) -> Vec<PathBuf> {
    let base = if folder.is_empty() {
        maildir.to_path_buf()
    } else {
        maildir.join(format!(".{folder}"))
    };
    ["new", "cur"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(base.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect()
}

/// Sends a raw message through the stack's SMTP (as `from`, authenticated).
pub fn send_raw(stack: &Stack, from: &str, to: &str, raw: &[u8]) {
    use lettre::Transport;
    use lettre::transport::smtp::authentication::Credentials;
    let smtp = lettre::SmtpTransport::builder_dangerous("127.0.0.1")
        .port(stack.var("SMTP_PORT").parse().unwrap())
        .credentials(Credentials::new(from.to_string(), "secret".to_string()))
        .build();
    let env =
        lettre::address::Envelope::new(Some(from.parse().unwrap()), vec![to.parse().unwrap()])
            .unwrap();
    smtp.send_raw(&env, raw).unwrap();
}

/// Alice and Bob, peers of each other for the document "todo".
pub fn pair(
    stack: &Stack,
    delay: &str,
    resend: &str,
    sa: Security,
    sb: Security,
) -> (String, String, Node, Node) {
    let (a, b) = (address("alice"), address("bob"));
    let alice = node(stack, &a, &[&b], &[todo(&[&b], delay, resend)], sa);
    let bob = node(stack, &b, &[&a], &[todo(&[&a], delay, resend)], sb);
    introduce(&[&alice, &bob]);
    (a, b, alice, bob)
}

/// `me`, sharing the document "todo" with `peers`: sent at once, resent after ten minutes.
pub fn sharing_todo(stack: &Stack, me: &str, peers: &[&str], security: Security) -> Node {
    node(stack, me, peers, &[todo(peers, "0s", "10m")], security)
}

pub fn todo<'a>(peers: &'a [&'a str], delay: &'a str, resend: &'a str) -> DocSpec<'a> {
    DocSpec {
        name: "todo",
        peers,
        send_delay: delay,
        resend,
    }
}

/// A TCP relay in front of a real server that can play dead: after `freeze`, the connections it
/// already carries swallow everything and answer nothing (as when a NAT forgets a connection or a
/// laptop wakes on another network), while new connections are relayed normally.
pub struct Relay {
    pub port: u16,
    generation: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    pub fn to(target_port: u16) -> Relay {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicUsize::new(0));
        let gen_accept = generation.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                let born = gen_accept.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let generation = gen_accept.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        let (mut from, mut to) = (from, to);
                        let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => {
                                    // Frozen: swallow, never answer, never close.
                                    if generation.load(Ordering::SeqCst) == born
                                        && to.write_all(&buf[..n]).is_err()
                                    {
                                        return;
                                    }
                                }
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                                Err(_) => return,
                            }
                        }
                    });
                }
            }
        });
        Relay { port, generation }
    }

    /// Every connection open now goes silent for good.
    pub fn freeze(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A node's OpenPGP key (created now if the node has none yet).
pub fn node_key(node: &Node) -> minisync::transport::mail::openpgp::SecretKey {
    node.ok(&["peer", "invite"]);
    let store = minisync::store::Store::open(&node.dir.path().join("state/agent.sqlite")).unwrap();
    let text = store.account_key(&node.address).unwrap().unwrap();
    minisync::transport::mail::openpgp::SecretKey::from_armored(&text).unwrap()
}

/// The device tag of mail a test makes itself (no agent's device sent it).
pub fn test_device() -> minisync::transport::DeviceTag {
    minisync::transport::DeviceTag {
        id: "tttttttttttttttt".into(),
        name: Some("test".into()),
        retired: Vec::new(),
    }
}

/// Sends `body` (a changes object) as agent mail from `from` to `to`, signed with `signer` and
/// encrypted to `recipient` (a genuine peer's mail when they are the real keys); returns its
/// Message-ID.
#[allow(clippy::too_many_arguments)]
pub fn send_sealed(
    stack: &Stack,
    from: &str,
    to: &str,
    signer: &minisync::transport::mail::openpgp::SecretKey,
    recipient: &minisync::transport::mail::openpgp::PublicKey,
    doc: &str,
    body: &Value,
) -> String {
    let text = body.to_string();
    send_sealed_bytes(
        stack,
        from,
        to,
        signer,
        recipient,
        doc,
        body,
        text.as_bytes(),
    )
}

/// [`send_sealed`] carrying `bytes` (`body` in whichever form: JSON text or the compact form).
#[allow(clippy::too_many_arguments)]
pub fn send_sealed_bytes(
    stack: &Stack,
    from: &str,
    to: &str,
    signer: &minisync::transport::mail::openpgp::SecretKey,
    recipient: &minisync::transport::mail::openpgp::PublicKey,
    doc: &str,
    body: &Value,
    bytes: &[u8],
) -> String {
    let mid = format!("<forged-{:08x}@example.test>", rand::random::<u32>());
    let sent_by = body["sentBy"].as_str().unwrap_or("aaaaaaaaaaaaaaaa");
    let key = recipient.to_bytes().unwrap();
    let out = minisync::transport::Outgoing {
        doc_name: doc,
        doc_id: body["id"].as_str().unwrap_or(""),
        client_id: minisync::engine::ClientId::parse(sent_by).unwrap(),
        peer: to,
        message_id: &mid,
        in_reply_to: None,
        body: bytes,
        ack_only: body["changes"].is_null(),
        version: body["fromVersion"].as_u64().unwrap_or(0),
        base: None,
        base_version: 0,
        base_len: 0,
        peer_key: Some(&key),
        want: false,
    };
    let device = test_device();
    let me = minisync::transport::mail::envelope::Sender {
        address: from,
        name: None,
        key: signer,
        device: &device,
    };
    let (_, raw) = minisync::transport::mail::envelope::build(&out, &me).unwrap();
    send_raw(stack, from, to, &raw);
    mid
}

/// Sends `body` as agent mail from the node `from` to the node `to`, signed and encrypted with
/// their real keys, as `from`'s agent would (a peer whose content is wrong, not a forger).
pub fn send_changes_as(stack: &Stack, from: &Node, to: &Node, doc: &str, body: &Value) -> String {
    let recipient = node_key(to).public();
    send_sealed(
        stack,
        &from.address,
        &to.address,
        &node_key(from),
        &recipient,
        doc,
        body,
    )
}

/// [`send_changes_as`] in the compact form, as agents send changes.
pub fn send_compact_changes_as(
    stack: &Stack,
    from: &Node,
    to: &Node,
    doc: &str,
    body: &Value,
) -> String {
    let recipient = node_key(to).public();
    let bytes = minisync::engine::compact::encode(body);
    send_sealed_bytes(
        stack,
        &from.address,
        &to.address,
        &node_key(from),
        &recipient,
        doc,
        body,
        &bytes,
    )
}

/// Syncs the nodes until each has pinned the key of every other node it lists in [[peers]] (the
/// hello exchange of a first contact), so that the test starts with content flowing at once.
pub fn introduce(nodes: &[&Node]) {
    wait_until(
        Duration::from_secs(60),
        "the nodes know each other's keys",
        || {
            for n in nodes {
                n.cmd(&["sync"]);
            }
            nodes.iter().all(|n| {
                let keys = n.status()["keys"].as_array().cloned().unwrap_or_default();
                nodes.iter().filter(|o| o.address != n.address).all(|o| {
                    keys.iter().all(|k| {
                        k["peer"] != serde_json::json!(o.address) || k["fingerprint"].is_string()
                    })
                })
            })
        },
    );
    // The hellos are done with: the test counts only the mail it causes itself.
    let stack = Stack::get();
    for n in nodes {
        for f in messages(&stack.maildir(&n.address), "Minisync") {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// A node's replica of a document as the engine sees it, read from its saved state.
pub fn replica(node: &Node, doc: &str) -> minisync::engine::Document {
    let saved = store_of(node)
        .read_doc(doc, minisync::engine::Document::save)
        .unwrap();
    minisync::engine::Document::restore(&saved).unwrap()
}

/// A node's state database.
pub fn store_of(node: &Node) -> minisync::store::Store {
    minisync::store::Store::open(&node.dir.path().join("state/agent.sqlite")).unwrap()
}

/// Pins `key` for `peer` in `node`'s state, as if it had come by mail: for peers that never
/// answer (a refusing server), so that content goes out at once.
pub fn pin_key(node: &Node, peer: &str, key: &minisync::transport::mail::openpgp::PublicKey) {
    node.ok(&["peer", "invite"]);
    let bytes = key.to_bytes().unwrap();
    store_of(node)
        .pin_peer_key(peer, &key.fingerprint(), &bytes, "invitation")
        .unwrap();
}

/// Gives `to` (another agent on `from`'s account, with its own state) `from`'s account key and
/// the peer keys `from` has pinned: a second device of the same person.
pub fn share_account(from: &Node, to: &Node) {
    let key = node_key(from).to_armored().unwrap();
    let (src, dst) = (store_of(from), store_of(to));
    dst.set_account_key(&from.address, &key).unwrap();
    for k in src.peer_keys().unwrap() {
        let full = src.peer_key(&k.address).unwrap();
        if let (Some(f), Some(bytes)) = (full.fingerprint, full.key) {
            dst.pin_peer_key(&k.address, &f, &bytes, "invitation")
                .unwrap();
        }
    }
}
