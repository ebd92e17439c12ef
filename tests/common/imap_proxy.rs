//! An IMAP proxy between an agent and the real Dovecot that imitates servers seen in the field:
//! it hides capabilities, strips the `[UIDNEXT n]` response code, answers chosen commands with
//! `BAD`, and rewrites the agent's header search so that it answers every message (or none).
//! Line-based, like `imap_proxy.py` in the field cases; `{n}` literals pass through untouched.
//! Plain TCP only (the agent talks to it with `encryption = "none"`).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// How the header search `HEADER Minisync-Version ""` is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderSearch {
    /// As the server answers it.
    #[default]
    Real,
    /// Every message (the server ignores the empty value).
    All,
    /// No message at all.
    None,
}

/// The quirks to imitate.
#[derive(Debug, Clone, Default)]
pub struct Quirks {
    /// Capabilities removed from every CAPABILITY list (e.g. `MOVE`, `UIDPLUS`, `IDLE`).
    pub hide_caps: Vec<String>,
    /// Drop `* OK [UIDNEXT n]` from SELECT and EXAMINE replies.
    pub no_uidnext: bool,
    /// Commands (prefixes after the tag, e.g. `UID EXPUNGE`) answered with `BAD`.
    pub refuse: Vec<String>,
    pub header_search: HeaderSearch,
    /// Commands (prefixes after the tag, e.g. `UID MOVE`) held this long before they reach the
    /// server, as over a slow link: what the server has to say meanwhile comes in their reply.
    pub hold: Vec<(String, std::time::Duration)>,
}

/// A running proxy; it lives as long as the test process.
pub struct ImapProxy {
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl ImapProxy {
    /// Listens on a free loopback port and relays each connection to `upstream`.
    pub fn start(upstream: u16, quirks: Quirks) -> ImapProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("the proxy's port").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (quirks, log2) = (Arc::new(quirks), log.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((client, _)) = listener.accept().await {
                    let (quirks, log) = (quirks.clone(), log2.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await {
                            relay(client, server, quirks, log).await;
                        }
                    });
                }
            });
        });
        ImapProxy { port, log }
    }

    /// What the proxy changed so far, one line per change ("refused: …", "stripped: …", …).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    quirks: Arc<Quirks>,
    log: Arc<Mutex<Vec<String>>>,
) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let to_client = Arc::new(tokio::sync::Mutex::new(client_write));
    let down = server_to_client(server_read, to_client.clone(), &quirks, &log);
    let up = client_to_server(client_read, server_write, to_client, &quirks, &log);
    // When either side closes, so does the other.
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

fn note(log: &Mutex<Vec<String>>, what: String) {
    if let Ok(mut l) = log.lock() {
        l.push(what);
    }
}

/// The literal announced at the end of a line (`{12}\r\n` or `{12+}\r\n`), if any.
pub fn literal(line: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(line).ok()?.strip_suffix("\r\n")?;
    let inner = text.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    inner[open + 1..].trim_end_matches('+').parse().ok()
}

/// Reads one line into `line`; false at the end of the stream.
async fn read_line(from: &mut BufReader<OwnedReadHalf>, line: &mut Vec<u8>) -> bool {
    line.clear();
    matches!(from.read_until(b'\n', line).await, Ok(n) if n > 0)
}

/// Appends to `out` the literal that `line` announces, read whole from `from`; false if the
/// stream ended first.
async fn pass_literal(from: &mut BufReader<OwnedReadHalf>, line: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(n) = literal(line) else {
        return true;
    };
    let mut data = vec![0; n];
    if from.read_exact(&mut data).await.is_err() {
        return false;
    }
    out.extend(data);
    true
}

async fn server_to_client(
    from: OwnedReadHalf,
    to: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    quirks: &Quirks,
    log: &Mutex<Vec<String>>,
) {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    while read_line(&mut from, &mut line).await {
        let mut out = fix_server_line(&line, quirks, log);
        if !pass_literal(&mut from, &line, &mut out).await {
            return;
        }
        if to.lock().await.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn fix_server_line(line: &[u8], quirks: &Quirks, log: &Mutex<Vec<String>>) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    let upper = text.to_ascii_uppercase();
    if quirks.no_uidnext && upper.starts_with("* OK [UIDNEXT ") {
        note(log, format!("stripped: {}", text.trim_end()));
        return Vec::new();
    }
    if !quirks.hide_caps.is_empty() && upper.contains("CAPABILITY") {
        return hide_caps(&text, &quirks.hide_caps).into_bytes();
    }
    line.to_vec()
}

/// The line without the hidden capabilities (`MOVE` and `MOVE]` alike).
pub fn hide_caps(line: &str, hidden: &[String]) -> String {
    let (body, end) = line
        .strip_suffix("\r\n")
        .map_or((line, ""), |body| (body, "\r\n"));
    let mut words: Vec<String> = Vec::new();
    for word in body.split(' ') {
        let (core, close) = word.find(']').map_or((word, ""), |i| word.split_at(i));
        if hidden.iter().any(|h| h.eq_ignore_ascii_case(core)) {
            if let Some(last) = words.last_mut() {
                last.push_str(close);
            }
            continue;
        }
        words.push(word.to_string());
    }
    words.join(" ") + end
}

async fn client_to_server(
    from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    to_client: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    quirks: &Quirks,
    log: &Mutex<Vec<String>>,
) {
    let mut from = BufReader::new(from);
    let mut line = Vec::new();
    while read_line(&mut from, &mut line).await {
        let text = String::from_utf8_lossy(&line).into_owned();
        if let Some((tag, rest)) = text.split_once(' ') {
            let upper = rest.to_ascii_uppercase();
            if quirks
                .refuse
                .iter()
                .any(|r| upper.starts_with(&r.to_ascii_uppercase()))
            {
                note(log, format!("refused: {}", text.trim_end()));
                let reply = format!("{tag} BAD Command not supported\r\n");
                if to_client
                    .lock()
                    .await
                    .write_all(reply.as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
            if let Some((_, how_long)) = quirks
                .hold
                .iter()
                .find(|(h, _)| upper.starts_with(&h.to_ascii_uppercase()))
            {
                note(log, format!("held: {}", text.trim_end()));
                tokio::time::sleep(*how_long).await;
            }
        }
        let mut out = rewrite_search(&text, quirks.header_search, log)
            .map_or_else(|| line.clone(), String::into_bytes);
        if !pass_literal(&mut from, &line, &mut out).await {
            return;
        }
        if to.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The agent's header search, rewritten to answer every message or none.
fn rewrite_search(line: &str, how: HeaderSearch, log: &Mutex<Vec<String>>) -> Option<String> {
    const CRITERION: &str = " HEADER MINISYNC-VERSION \"\"";
    let replacement = match how {
        HeaderSearch::Real => return None,
        HeaderSearch::All => "",
        HeaderSearch::None => " NOT ALL",
    };
    let at = line.to_ascii_uppercase().find(CRITERION)?;
    let out = format!(
        "{}{replacement}{}",
        &line[..at],
        &line[at + CRITERION.len()..]
    );
    note(
        log,
        format!(
            "search rewritten: {} => {}",
            line.trim_end(),
            out.trim_end()
        ),
    );
    Some(out)
}
