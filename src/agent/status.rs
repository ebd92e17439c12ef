//! `agent status`: per document and peer, what was received and acknowledged, what is pending,
//! when mail last went each way, and the last error.

use serde::Serialize;

use crate::config::{Config, DocumentConfig, TransportKind};
use crate::engine::ClientId;
use crate::store::{LearnedLimit, Quarantined, Store, Transfer};

/// The whole status report.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Transports whose last pass failed to receive (a refused IMAP command, a lost connection).
    pub receiving: Vec<ReceiveError>,
    pub documents: Vec<DocStatus>,
    /// Quarantined mail not merged (`agent quarantine` shows, releases or drops it), with the
    /// reason and the sender; none of it is "in step".
    pub quarantined: Vec<Quarantined>,
    /// Each mail peer's OpenPGP key: pinned, waited for, or changed (refused until accepted).
    pub keys: Vec<KeyStatus>,
    /// The account's devices (this one first) and each peer's, with what each replica has
    /// acknowledged and when it was last heard from.
    pub devices: Vec<super::DeviceStatus>,
    /// Mail sizes and the transfers of mail parts waiting for parts (None without an account).
    pub mail: Option<MailStatus>,
    /// Whether any peer is failing (the command then exits non-zero).
    pub failing: bool,
}

/// How large the agent's mails may be, and the transfers (changes sent in several mails) of
/// which some parts are here and others not yet.
#[derive(Debug, Serialize)]
pub struct MailStatus {
    /// `max-mail-size` in bytes.
    pub max_mail_size: u64,
    /// The smaller size learned from the SMTP server's refusal of a larger mail, if any.
    pub learned_limit: Option<LearnedLimit>,
    /// The size mails are cut to now (bytes): the smaller of the two.
    pub mail_size: u64,
    /// Transfers waiting for parts: sender, document, how many of how many parts are here.
    pub incomplete_transfers: Vec<Transfer>,
}

/// The mail sizes and incomplete transfers (see [`MailStatus`]).
fn mail_status(cfg: &Config, store: &Store) -> crate::store::Result<Option<MailStatus>> {
    let Some(account) = &cfg.account else {
        return Ok(None);
    };
    let server = format!("{}:{}", account.smtp.host, account.smtp.port);
    let learned = store.mail_limit(&server)?;
    let incomplete = store
        .transfers()?
        .into_iter()
        .filter(|t| t.have < t.count)
        .collect();
    Ok(Some(MailStatus {
        max_mail_size: account.max_mail_size,
        mail_size: learned.as_ref().map_or(account.max_mail_size, |l| {
            l.bytes.min(account.max_mail_size)
        }),
        learned_limit: learned,
        incomplete_transfers: incomplete,
    }))
}

impl MailStatus {
    fn fmt_lines(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(l) = &self.learned_limit {
            writeln!(
                f,
                "mail size: at most {} bytes (max-mail-size {}; SMTP {} refused larger mail {}: {})",
                self.mail_size,
                self.max_mail_size,
                l.server,
                when(Some(l.at)).unwrap_or_default(),
                l.reason
            )?;
        }
        if !self.incomplete_transfers.is_empty() {
            writeln!(
                f,
                "changes sent in mail parts, waiting for the rest (or the sender's resend):"
            )?;
        }
        for t in &self.incomplete_transfers {
            writeln!(
                f,
                "  from {} ({}): {} of {} parts here since {}",
                t.sender,
                t.doc,
                t.have,
                t.count,
                when(Some(t.first_at)).unwrap_or_default()
            )?;
        }
        Ok(())
    }
}

/// What is known of one peer's key.
#[derive(Debug, Serialize)]
pub struct KeyStatus {
    pub peer: String,
    /// The pinned key's fingerprint (None: not known yet; only a hello goes there).
    pub fingerprint: Option<String>,
    /// How it was pinned: first-use, invitation, accepted, verified.
    pub trust: Option<String>,
    /// A key other than the pinned one signed mail in the peer's name: its fingerprint.
    pub key_changed: Option<String>,
    /// The command that accepts the changed key (after the user made sure it is theirs).
    pub accept_with: Option<String>,
}

/// The key lines of every configured mail peer.
fn key_status(cfg: &Config, store: &Store) -> crate::store::Result<Vec<KeyStatus>> {
    let mut out = Vec::new();
    for p in cfg.peers.iter() {
        let known = store.peer_key(&p.address)?;
        out.push(KeyStatus {
            accept_with: known
                .new_fingerprint
                .as_ref()
                .map(|_| format!("agent peer accept-key {}", p.address)),
            peer: p.address.clone(),
            fingerprint: known.fingerprint,
            trust: known.trust,
            key_changed: known.new_fingerprint,
        });
    }
    Ok(out)
}

/// A transport that could not receive in its last pass.
#[derive(Debug, Serialize)]
pub struct ReceiveError {
    pub transport: String,
    pub error: String,
    /// When the failing began.
    pub since: Option<String>,
}

/// One document.
#[derive(Debug, Serialize)]
pub struct DocStatus {
    pub name: String,
    pub transport: &'static str,
    pub exists: bool,
    pub doc_id: Option<String>,
    pub client_id: Option<String>,
    pub version: Option<u64>,
    pub peers: Vec<PeerStatus>,
    /// The JSON file bound to the document, if any.
    pub file: Option<FileStatus>,
}

/// A JSON file bound to a document.
#[derive(Debug, Serialize)]
pub struct FileStatus {
    pub path: String,
    pub last_read: Option<String>,
    pub last_written: Option<String>,
    /// Missing, not valid JSON (with line and column), or not writable.
    pub error: Option<String>,
}

/// The bound file of `d`, as last seen by the agent.
fn file_status(
    cfg: &Config,
    store: &Store,
    d: &DocumentConfig,
) -> crate::store::Result<Option<FileStatus>> {
    let Some(path) = cfg.bound_file(d) else {
        return Ok(None);
    };
    let path = path.display().to_string();
    let st = store.file_info(&d.name)?.filter(|s| s.path == path);
    Ok(Some(FileStatus {
        path,
        last_read: when(st.as_ref().and_then(|s| s.read_at)),
        last_written: when(st.as_ref().and_then(|s| s.written_at)),
        error: st.and_then(|s| s.error),
    }))
}

/// One peer of one document.
#[derive(Debug, Serialize)]
pub struct PeerStatus {
    pub peer: String,
    pub client_id: Option<String>,
    pub last_received: u64,
    pub last_acknowledged: u64,
    pub pending_changes: bool,
    pub outbox: usize,
    pub last_sent: Option<String>,
    pub last_received_at: Option<String>,
    pub last_error: Option<String>,
    pub failing: bool,
    /// The id of the peer's own document of this name, when each side created one; `agent doc
    /// adopt` resolves it.
    pub other_document: Option<String>,
    /// The latest problem with this peer's changes (refused by the engine — with a clock too far
    /// ahead, the client and how far —, merged only in part, an impossible claim), and since when.
    pub problem: Option<String>,
    pub problem_since: Option<String>,
    /// Both replicas hold the same changes but their content differs: the digests (or, after a
    /// full exchange that did not reconcile them, the paths that differ), and since when.
    pub diverged: Option<String>,
    pub diverged_since: Option<String>,
    /// How many of this peer's messages are quarantined.
    pub quarantined: usize,
}

pub(super) fn when(ms: Option<i64>) -> Option<String> {
    ms.map(|m| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(m.max(0) as u64);
        humantime::format_rfc3339_seconds(t).to_string()
    })
}

/// Builds the status report from the store.
pub fn status(cfg: &Config, store: &mut Store) -> crate::store::Result<Status> {
    let mut documents = Vec::new();
    let receiving: Vec<ReceiveError> = store
        .transport_errors()?
        .into_iter()
        .map(|(transport, error, since)| ReceiveError {
            transport,
            error,
            since: when(Some(since)),
        })
        .collect();
    let quarantined = store.quarantined(false)?;
    let keys = key_status(cfg, store)?;
    let mut failing = !receiving.is_empty()
        || !quarantined.is_empty()
        || keys.iter().any(|k| k.key_changed.is_some());
    for d in &cfg.documents {
        let exists = store.has_doc(&d.name)?;
        let mut peers = Vec::new();
        let (doc_id, client_id, version) = if exists {
            store.read_doc(&d.name, |doc| {
                (
                    Some(doc.id().to_string()),
                    Some(doc.client_id().to_string()),
                    Some(doc.version()),
                )
            })?
        } else {
            (None, None, None)
        };
        let mut keys: Vec<String> = match d.transport {
            TransportKind::Mail => d.peers.clone(),
            TransportKind::Folder => store.peers(&d.name)?.into_iter().map(|r| r.peer).collect(),
        };
        // The account's other devices holding the document are shown as its own address.
        if d.transport == TransportKind::Mail
            && let Some(own) = cfg.account.as_ref().map(|a| a.address.clone())
            && !Store::clients_of(store.conn(), &d.name, &own)?.is_empty()
        {
            keys.push(own);
        }
        keys.sort();
        keys.dedup();
        for key in keys {
            let p = peer_status(store, (d, cfg.address()), key, exists, &quarantined)?;
            failing |= p.failing
                || p.other_document.is_some()
                || p.problem.is_some()
                || p.diverged.is_some();
            peers.push(p);
        }
        let file = file_status(cfg, store, d)?;
        // A bound file that is missing, invalid or not writable is out of step with its document.
        failing |= file.as_ref().is_some_and(|f| f.error.is_some());
        documents.push(DocStatus {
            name: d.name.clone(),
            transport: match d.transport {
                TransportKind::Mail => "mail",
                TransportKind::Folder => "folder",
            },
            exists,
            doc_id,
            client_id,
            version,
            peers,
            file,
        });
    }
    let devices = super::device_status(cfg, store)?;
    // Removed by another device of the account: nothing is sent from here.
    failing |= devices.iter().any(|d| d.this_device && d.removed.is_some());
    let mail = mail_status(cfg, store)?;
    Ok(Status {
        mail,
        receiving,
        documents,
        quarantined,
        keys,
        devices,
        failing,
    })
}

/// One peer of one document, from the store (`exists`: whether we hold a replica).
fn peer_status(
    store: &mut Store,
    (d, own): (&DocumentConfig, &str),
    key: String,
    exists: bool,
    quarantined: &[Quarantined],
) -> crate::store::Result<PeerStatus> {
    let row = store.peer(&d.name, &key)?;
    // Every device behind a mail address; the one client of a shared-folder peer.
    let clients: Vec<ClientId> = match d.transport {
        TransportKind::Mail => Store::clients_of(store.conn(), &d.name, &key)?,
        TransportKind::Folder => row
            .client_id
            .as_deref()
            .and_then(|c| ClientId::parse(c).ok())
            .into_iter()
            .collect(),
    };
    // The least any of them holds: the address is in step when every device is.
    // Pending: what the address lacks of ours (or to be forwarded), not what its authors write
    // to it themselves (see `agent::send`).
    let delivered = match (exists, d.transport) {
        (true, TransportKind::Mail) => {
            let (id, reaching) = store.read_doc(&d.name, |doc| {
                (doc.id().to_string(), doc.authors_reaching(&clients))
            })?;
            let route = super::receive::Route {
                name: &d.name,
                address: own,
                peers: &d.peers,
            };
            super::send::delivered_to(store.conn(), (&id, reaching), &route, &key, &clients)?
        }
        _ => Vec::new(),
    };
    let (last_received, last_acknowledged, pending_changes) = match (exists, clients.is_empty()) {
        (true, false) => store.read_doc(&d.name, |doc| {
            let states: Vec<_> = clients
                .iter()
                .map(|c| doc.peer(*c).cloned().unwrap_or_default())
                .collect();
            (
                states.iter().map(|p| p.last_received).min().unwrap_or(0),
                states
                    .iter()
                    .map(|p| p.last_acknowledged)
                    .min()
                    .unwrap_or(0),
                doc.news_for_all(&clients, &delivered, 0),
            )
        })?,
        // Never heard from: it lacks everything but what its authors write to it.
        (true, true) => (
            0,
            0,
            store.read_doc(&d.name, |doc| doc.news_for_all(&[], &delivered, 0))?,
        ),
        _ => (0, 0, false),
    };
    let health = store.health(&d.name, &key)?;
    let held = quarantined
        .iter()
        .filter(|q| q.doc == d.name && d.peer(&q.sender) == Some(&key))
        .count();
    let last_error = row
        .last_error
        .clone()
        .or(store.last_outbox_error(&d.name, &key)?);
    Ok(PeerStatus {
        outbox: store.pending_for(&d.name, &key)?,
        other_document: store.fork(&d.name, &key)?.map(|(id, _)| id),
        peer: key,
        client_id: row.client_id,
        last_received,
        last_acknowledged,
        pending_changes,
        last_sent: when(row.last_sent_at),
        last_received_at: when(row.last_received_at),
        last_error,
        failing: row.failing,
        problem_since: when(health.notice.as_ref().map(|(_, t)| *t)),
        problem: health.notice.map(|(n, _)| n),
        diverged_since: when(health.diverged.as_ref().map(|(_, t)| *t)),
        diverged: health.diverged.map(|(d, _)| d),
        quarantined: held,
    })
}

impl PeerStatus {
    /// This peer's lines of `agent status` for document `doc`.
    fn fmt_lines(&self, f: &mut std::fmt::Formatter<'_>, doc: &str) -> std::fmt::Result {
        writeln!(
            f,
            "  {}{}: received {} acknowledged {}{}{}",
            self.peer,
            if self.failing { " [FAILING]" } else { "" },
            self.last_received,
            self.last_acknowledged,
            if self.diverged.is_some() {
                ", DIVERGED"
            } else if self.pending_changes {
                ", changes pending"
            } else if self.problem.is_some() || self.quarantined > 0 {
                ", not in step"
            } else {
                ", in step"
            },
            if self.outbox > 0 {
                format!(", {} in outbox", self.outbox)
            } else {
                String::new()
            } + &if self.quarantined > 0 {
                format!(", {} quarantined", self.quarantined)
            } else {
                String::new()
            },
        )?;
        writeln!(
            f,
            "    last sent {}, last received {}",
            self.last_sent.as_deref().unwrap_or("never"),
            self.last_received_at.as_deref().unwrap_or("never")
        )?;
        if let Some(e) = &self.last_error {
            writeln!(f, "    last error: {e}")?;
        }
        if let Some(problem) = &self.problem {
            writeln!(
                f,
                "    problem since {}: {problem}",
                self.problem_since.as_deref().unwrap_or("?")
            )?;
        }
        if let Some(d) = &self.diverged {
            writeln!(
                f,
                "    DIVERGED since {}: {d}",
                self.diverged_since.as_deref().unwrap_or("?")
            )?;
        }
        if let Some(id) = &self.other_document {
            writeln!(
                f,
                "    CREATED TWICE: {} has its own document {:?} (id {id}); their mail is quarantined. \
                 Take theirs with `agent doc adopt {} --from {}`, or have them adopt yours",
                self.peer, doc, doc, self.peer
            )?;
        }
        Ok(())
    }
}

impl KeyStatus {
    fn fmt_line(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let k = self;
        match (&k.fingerprint, &k.key_changed) {
            (_, Some(new)) => writeln!(
                f,
                "key of {}: KEY CHANGED: mail in their name is signed by {new}, not the pinned {}; \
                 refused until you make sure it is theirs and run `{}`",
                k.peer,
                k.fingerprint.as_deref().unwrap_or("?"),
                k.accept_with.as_deref().unwrap_or("")
            )?,
            (Some(fp), None) => writeln!(
                f,
                "key of {}: {fp} ({})",
                k.peer,
                k.trust.as_deref().unwrap_or("pinned")
            )?,
            (None, None) => writeln!(
                f,
                "key of {}: not known yet (a hello asks for it; changes wait)",
                k.peer
            )?,
        }
        Ok(())
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for r in &self.receiving {
            writeln!(
                f,
                "receiving over {} [FAILING] since {}: {}",
                r.transport,
                r.since.as_deref().unwrap_or("?"),
                r.error
            )?;
        }
        for d in &self.documents {
            match (&d.doc_id, d.version) {
                (Some(id), Some(v)) => {
                    writeln!(f, "{} ({}, id {id}, version {v})", d.name, d.transport)?
                }
                _ => writeln!(f, "{} ({}, no replica here yet)", d.name, d.transport)?,
            }
            if let Some(file) = &d.file {
                writeln!(
                    f,
                    "  file {}: last read {}, last written {}",
                    file.path,
                    file.last_read.as_deref().unwrap_or("never"),
                    file.last_written.as_deref().unwrap_or("never")
                )?;
                if let Some(e) = &file.error {
                    writeln!(f, "    file problem: {e}")?;
                }
            }
            if d.peers.is_empty() {
                writeln!(f, "  no peers seen yet")?;
            }
            for p in &d.peers {
                p.fmt_lines(f, &d.name)?;
            }
        }
        for k in &self.keys {
            k.fmt_line(f)?;
        }
        super::fmt_devices(&self.devices, f)?;
        if let Some(m) = &self.mail {
            m.fmt_lines(f)?;
        }
        if !self.quarantined.is_empty() {
            writeln!(
                f,
                "quarantined (not merged; `agent quarantine show ID`, `release ID` or `drop ID`):"
            )?;
        }
        for q in &self.quarantined {
            writeln!(
                f,
                "  #{} {} from {} ({}): {}",
                q.id,
                when(Some(q.at)).unwrap_or_default(),
                q.sender,
                q.doc,
                q.reason
            )?;
        }
        Ok(())
    }
}
