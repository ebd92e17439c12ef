//! The agent: receive → merge → acknowledge → send → resend, for every configured document, over
//! whichever transport each document uses.
//!
//! One pass (`sync_once`) does all of it once; `run` repeats passes, waiting in between for news
//! from a transport (IMAP IDLE), for a local edit (another process wrote the database), for an
//! outbox item to come due, or for shutdown. State lives only in the [`Store`], so a crash at any
//! point loses nothing: see `receive.rs` for the order of commits.

mod devices;
mod docs;
mod file_merge;
mod file_style;
pub mod files;
mod health;
mod keys;
mod lock;
mod peers;
mod receive;
mod requests;
mod send;
mod status;
mod transfers;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, DocumentConfig, TransportKind};
use crate::engine::{self, ClientId};
use crate::store::{Store, StoreError};
use crate::transport::folder::FolderTransport;
use crate::transport::mail::MailTransport;
use crate::transport::{Route, Transport, TransportError};

pub use devices::{
    DeviceDoc, DeviceStatus, Refused, device_add, device_join, device_remove, device_status,
    fmt_devices,
};
pub use docs::{DocCommand, changed_paths, doc_command};
pub use keys::account_key;
pub use lock::{LOCK_FILE, StateLock, lock_state};
pub use peers::{PeerCommand, peer_command};
pub use requests::{TAKE_WITHIN, run_doc_command};
pub use send::Due;
pub use status::{DocStatus, FileStatus, PeerStatus, ReceiveError, Status, status};

/// Why the agent could not do something.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] engine::Error),
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, AgentError>;

/// A configured document and the transport that carries it.
struct DocSlot {
    cfg: DocumentConfig,
    transport: usize,
}

/// What one pass did, for `agent sync` and the service status line.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PassReport {
    pub merged: usize,
    pub duplicates: usize,
    pub quarantined: usize,
    pub deferred: usize,
    pub sent: usize,
    /// Hellos that went out (this account's key, to peers whose key it lacks or who asked).
    pub hellos: usize,
    pub send_failures: usize,
    pub errors: Vec<String>,
    /// Mail waiting in the outbox for a retry after a failure: what, for whom, until when.
    pub held_back: Vec<String>,
    /// Bound files not in step with their document, and why ("NAME: error"): invalid JSON,
    /// missing, not writable. The document waits; the pass is not failed for it.
    pub files_waiting: Vec<String>,
}

/// How often old processed mail and old state rows are cleared away.
const TIDY_EVERY: Duration = Duration::from_secs(3600);

/// The running agent.
pub struct Agent {
    cfg: Config,
    store: Store,
    transports: Vec<Arc<dyn Transport>>,
    docs: Vec<DocSlot>,
    /// When `tidy` last ran (None: not yet, so the first pass does it).
    last_tidy: Option<std::time::Instant>,
    /// Whether systemd's watchdog is on: long passes then ping it as they go.
    watchdog: bool,
    /// When changes go out: after the send delay in the service, at once in a one-shot pass.
    due: Due,
    /// Peers whose hello asked for our key: answered with a hello in this pass.
    hello_owed: Vec<String>,
    /// The account's key (mail accounts): the own address's mail must be signed by it, and
    /// mail to the account's other devices is encrypted to it.
    account_key: Option<crate::transport::mail::openpgp::SecretKey>,
    /// Each bound file's signature when the last pass looked at it (see `files::file_change`).
    files_seen: HashMap<std::path::PathBuf, Option<String>>,
}

/// When the SMTP server refused our login and the config file changed since, the waiting mail is
/// tried at once instead of after its backoff: the user has probably fixed the password.
fn retry_after_config_change(cfg: &Config, store: &Store) -> Result<()> {
    let Some(failed_at) = store.account_failure()? else {
        return Ok(());
    };
    let changed = std::fs::metadata(&cfg.path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .is_some_and(|t| t.as_millis() as i64 > failed_at);
    if changed {
        let n = store.retry_now()?;
        tracing::info!(
            waiting = n,
            "the config changed since the SMTP server refused our login: sending again now"
        );
    }
    Ok(())
}

/// Opens the agent's state with the config's settings for loading replicas.
///
/// # Errors
///
/// The state directory cannot be created or the database cannot be opened.
pub fn open_store(cfg: &Config) -> crate::store::Result<Store> {
    private_state(cfg)?;
    let mut store = Store::open(&cfg.database_path())?;
    store.set_max_clock_skew(cfg.agent.max_clock_skew);
    Ok(store)
}

/// Creates the state directory readable by the user only (0700) and the database file as 0600
/// before SQLite opens it (SQLite gives its `-wal` and `-shm` files the database's permissions).
fn private_state(cfg: &Config) -> crate::store::Result<()> {
    let dir = cfg.state_dir();
    let db = cfg.database_path();
    crate::config::create_private_dir(&dir)
        .and_then(|()| crate::config::open_private_file(&db, false).map(drop))
        .map_err(|source| crate::store::StoreError::Dir {
            path: dir.display().to_string(),
            source,
        })
}

impl Agent {
    /// Opens the state and sets up one transport per kind (mail) or per folder.
    pub fn new(cfg: Config) -> Result<Agent> {
        let store = open_store(&cfg)?;
        retry_after_config_change(&cfg, &store)?;
        let mut transports: Vec<Arc<dyn Transport>> = Vec::new();
        let mut mail: Option<usize> = None;
        // The account's key exists from the first start on, even before a mail document does.
        let key = match cfg.account {
            Some(_) => Some(account_key(&cfg, &store)?),
            None => None,
        };
        let mut docs = Vec::new();
        for d in &cfg.documents {
            let ti = match d.transport {
                TransportKind::Mail => match mail {
                    Some(i) => i,
                    None => {
                        let account = cfg.account.as_ref().ok_or_else(|| {
                            AgentError::Other("mail documents need an [account]".into())
                        })?;
                        let key = key.clone().ok_or_else(|| {
                            AgentError::Other("mail documents need an [account]".into())
                        })?;
                        transports.push(Arc::new(MailTransport::new(
                            account.clone(),
                            cfg.agent.poll_interval,
                            &cfg.database_path(),
                            key,
                        )?));
                        mail = Some(transports.len() - 1);
                        transports.len() - 1
                    }
                },
                TransportKind::Folder => {
                    let folder =
                        cfg.resolve(d.folder.as_deref().unwrap_or(std::path::Path::new(".")));
                    std::fs::create_dir_all(&folder).map_err(|e| {
                        AgentError::Other(format!("cannot create folder {}: {e}", folder.display()))
                    })?;
                    let poll = cfg.agent.poll_interval.min(Duration::from_secs(1));
                    transports.push(Arc::new(FolderTransport::new(folder, poll)));
                    transports.len() - 1
                }
            };
            docs.push(DocSlot {
                cfg: d.clone(),
                transport: ti,
            });
        }
        Ok(Agent {
            cfg,
            store,
            transports,
            docs,
            last_tidy: None,
            watchdog: false,
            due: Due::Pending,
            hello_owed: Vec::new(),
            account_key: key,
            files_seen: HashMap::new(),
        })
    }

    /// The store (for the CLI's reads after a pass).
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    /// One pass: receive and merge everything waiting, then send what is due. Each transport's
    /// receive-side errors (a refused command, a lost connection) are recorded for `agent
    /// status`, and cleared by its next pass without one.
    pub async fn sync_once(&mut self) -> PassReport {
        tracing::debug!(transports = self.transports.len(), due = ?self.due, "pass starts");
        let mut report = PassReport::default();
        let mut failures: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        // Commands of the command line first, and again between the steps that may take long
        // (writing a large bound file, a drain): someone waits for their answer.
        self.serve_doc_requests();
        // Saves of bound files become edits before anything is merged or sent.
        self.sync_files(&mut report);
        self.serve_doc_requests();
        for ti in 0..self.transports.len() {
            let before = report.errors.len();
            if let Err(e) = self.receive_from(ti, &mut report).await {
                tracing::warn!(transport = self.transports[ti].name(), error = %e, "receive failed");
                report.errors.push(e.to_string());
            }
            self.serve_doc_requests();
            let name = self.transports[ti].name();
            failures
                .entry(name)
                .or_default()
                .extend(report.errors[before..].iter().cloned());
        }
        // What was merged lands in the bound files.
        self.sync_files(&mut report);
        match self.removed_from_account() {
            // Its mail is refused everywhere: nothing is sent (see `agent device list`).
            Ok(Some(e)) => report.errors.push(e),
            Ok(None) => self.send_due(&mut report).await,
            Err(e) => report.errors.push(e.to_string()),
        }
        if self.last_tidy.is_none_or(|t| t.elapsed() >= TIDY_EVERY) {
            self.last_tidy = Some(std::time::Instant::now());
            self.tidy(&mut report, &mut failures).await;
        }
        for (name, errors) in failures {
            let error = errors.last().map(String::as_str);
            if let Err(e) = self.store.set_transport_error(name, error) {
                tracing::warn!(error = %e, "recording the transport's state failed");
            }
        }
        match self.store.held_back(crate::store::now_ms()) {
            Ok(held) => report.held_back = held.iter().map(describe_held).collect(),
            Err(e) => report.errors.push(e.to_string()),
        }
        report
    }

    /// The sending half of a pass: what is due queued, hellos and requests to the account's
    /// other devices, then the outbox sent.
    async fn send_due(&mut self, report: &mut PassReport) {
        if let Err(e) = self.schedule(report).await {
            tracing::warn!(error = %e, "scheduling sends failed");
            report.errors.push(e.to_string());
        }
        if let Err(e) = self.send_hellos(report).await {
            tracing::warn!(error = %e, "sending hellos failed");
            report.errors.push(e.to_string());
        }
        if let Err(e) = self.send_wants(report).await {
            tracing::warn!(error = %e, "asking the account's other devices failed");
            report.errors.push(e.to_string());
        }
        if let Err(e) = self.flush(report, None).await {
            tracing::warn!(error = %e, "sending failed");
            report.errors.push(e.to_string());
        }
    }

    /// Clears away processed mail past `keep-processed` and state rows no longer needed. A failure
    /// is logged and counts as the pass's error; it is tried again an hour later.
    async fn tidy(
        &mut self,
        report: &mut PassReport,
        failures: &mut BTreeMap<&'static str, Vec<String>>,
    ) {
        for t in &self.transports {
            match t.tidy().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        transport = t.name(),
                        deleted = n,
                        "deleted processed mail past keep-processed"
                    )
                }
                Err(e) => {
                    tracing::warn!(transport = t.name(), error = %e, "tidying failed");
                    let e = format!("tidying: {e}");
                    failures.entry(t.name()).or_default().push(e.clone());
                    report.errors.push(e);
                }
            }
        }
        if let Err(e) = self.store.prune(crate::store::now_ms()) {
            tracing::warn!(error = %e, "pruning old state failed");
        }
        match self.store.drop_stale_transfers(crate::store::now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                transfers = n,
                "dropped mail parts of transfers that stayed incomplete (their changes come again with the sender's resend)"
            ),
            Err(e) => tracing::warn!(error = %e, "dropping incomplete transfers failed"),
        }
    }

    /// Sends one peer its pending changes now, whatever the send delay (`agent send`).
    pub async fn send_now(&mut self, peer: &str, doc: Option<&str>) -> Result<PassReport> {
        let mut report = PassReport::default();
        let mut matched = false;
        for i in 0..self.docs.len() {
            let slot = &self.docs[i];
            if doc.is_some_and(|d| d != slot.cfg.name) || slot.cfg.peer(peer).is_none() {
                continue;
            }
            matched = true;
            let name = slot.cfg.name.clone();
            if self.store.has_doc(&name)? {
                self.queue_for_peer(i, peer, Due::Now)?;
            }
        }
        if !matched {
            return Err(AgentError::Other(format!(
                "{peer} shares no document{} in the config",
                doc.map(|d| format!(" named {d:?}")).unwrap_or_default()
            )));
        }
        self.flush(&mut report, Some(peer)).await?;
        Ok(report)
    }

    /// Routes for the documents a transport carries.
    fn routes(&mut self, ti: usize) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for slot in self.docs.iter().filter(|s| s.transport == ti) {
            let name = slot.cfg.name.clone();
            let peers = slot.cfg.peers.clone();
            let route = if self.store.has_doc(&name)? {
                // A shared-folder peer owed a repair is read again from its base: its whole state.
                let repairing = self.store.repairing(&name)?;
                let mut route = self.store.read_doc(&name, |d| Route {
                    name: name.clone(),
                    doc_id: Some(d.id().to_string()),
                    client_id: Some(d.client_id()),
                    last_received: d
                        .peers()
                        .iter()
                        .map(|(c, p)| (*c, p.last_received))
                        .collect::<BTreeMap<ClientId, u64>>(),
                    peers,
                })?;
                for peer in repairing {
                    if let Ok(c) = ClientId::parse(&peer) {
                        route.last_received.insert(c, 0);
                    }
                }
                route
            } else {
                Route {
                    name,
                    doc_id: None,
                    client_id: None,
                    last_received: BTreeMap::new(),
                    peers,
                }
            };
            routes.push(route);
        }
        Ok(routes)
    }

    /// Runs until `shutdown` resolves: passes, separated by waits for news.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        // The service batches edits made close together (the document's send delay).
        self.due = Due::Batched;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
        // Under systemd's watchdog (WatchdogSec=), the loop comes round at least twice per period
        // and says so; a loop stuck anywhere gets the agent restarted.
        let mut usec = 0;
        let watchdog =
            sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec) / 2);
        self.watchdog = watchdog.is_some();
        self.start_serving();
        let mut backoff = Backoff::default();
        loop {
            let started = std::time::Instant::now();
            let report = self.sync_once().await;
            if started.elapsed() >= Duration::from_millis(50) || report.merged + report.sent > 0 {
                release_free_memory();
            }
            self.alive();
            let status = format!(
                "merged {} sent {} quarantined {} errors {}",
                report.merged,
                report.sent,
                report.quarantined,
                report.errors.len()
            );
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
            if report.merged + report.sent + report.quarantined > 0 {
                tracing::info!(%status, "pass done");
            }
            let pause = if report.errors.is_empty() {
                backoff.reset();
                self.next_wake()
            } else {
                backoff.pause()
            };
            let pause = watchdog.map_or(pause, |w| pause.min(w));
            // Read before looking for commands, so that one written after the look still
            // interrupts the wait.
            let seen = data_version(&self.store);
            if self.store.doc_requests_waiting().unwrap_or(false) {
                continue;
            }
            let transports = self.transports.clone();
            let (files, files_seen) = self.files_to_watch();
            let store = &self.store;
            let interrupt = tokio::sync::Notify::new();
            // A local edit (by the CLI or a save of a bound file) interrupts the wait (IDLE ends with DONE, the connection is kept); the
            // watcher keeps notifying until the wait has returned, so no notification is missed.
            let watcher = async {
                tokio::select! {
                    _ = local_change(store, seen) => {}
                    _ = files::file_change(&files, &files_seen) => {}
                }
                loop {
                    interrupt.notify_waiters();
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            let waiting = async {
                if report.errors.is_empty() {
                    wait_any(&transports, pause, &interrupt).await;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = interrupt.notified() => {}
                    }
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = waiting => {}
                _ = watcher => {}
            }
        }
        self.stop_serving();
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        tracing::info!("stopped");
    }

    /// The bound files, and each one's signature as the last pass saw it (what a change is
    /// measured against while the agent waits; see `files::file_change`).
    fn files_to_watch(&self) -> (Vec<std::path::PathBuf>, Vec<Option<String>>) {
        let files: Vec<std::path::PathBuf> =
            self.bound_files().into_iter().map(|(_, p)| p).collect();
        let seen = files
            .iter()
            .map(|p| match self.files_seen.get(p) {
                Some(seen) => seen.clone(),
                None => files::signature(p).map(|(s, _)| s),
            })
            .collect();
        (files, seen)
    }

    /// Tells systemd's watchdog (when on) that the agent is making progress.
    fn alive(&self) {
        if self.watchdog {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// How long the loop may wait before something is due.
    fn next_wake(&self) -> Duration {
        let now = crate::store::now_ms();
        let mut at = now + 4 * 60 * 1000; // re-issue IDLE well within 5 minutes of silence
        if let Ok(Some(t)) = self.store.next_due() {
            at = at.min(t);
        }
        for slot in &self.docs {
            let name = &slot.cfg.name;
            if let Ok(Some(edited)) = self.store.edited_at(name) {
                at = at.min(edited + slot.cfg.send_delay.as_millis() as i64);
            }
            if let Ok(rows) = self.store.peers(name) {
                for r in rows {
                    if let Some(sent) = r.last_sent_at {
                        at = at.min(sent + slot.cfg.resend_interval.as_millis() as i64);
                    }
                }
            }
        }
        Duration::from_millis((at - now).clamp(0, 4 * 60 * 1000) as u64)
    }
}

/// Gives memory freed during a pass back to the operating system. glibc's allocator keeps freed
/// blocks for reuse and returns little by itself: an agent that had read and written a bound
/// file of a 10 MB document stayed at ~430 MB resident with ~120 MB in use. `malloc_trim`
/// (glibc 2.8 and later) releases the free pages; other allocators return memory themselves.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim only walks the allocator's own free lists, under its own locks;
        // it may be called from any thread at any time.
        unsafe {
            libc::malloc_trim(0);
        }
        tracing::debug!(
            ms = started.elapsed().as_secs_f64() * 1e3,
            "gave freed memory back"
        );
    }
}

/// Waits for any transport to report news, at most `max`, or for `interrupt`.
async fn wait_any(
    transports: &[Arc<dyn Transport>],
    max: Duration,
    interrupt: &tokio::sync::Notify,
) {
    if transports.is_empty() {
        tokio::select! {
            _ = tokio::time::sleep(max) => {}
            _ = interrupt.notified() => {}
        }
        return;
    }
    let waits = transports.iter().map(|t| t.wait(max, interrupt));
    let (result, _, _) = futures::future::select_all(waits.map(Box::pin)).await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "waiting for news failed");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Resolves when another process (the CLI) has committed to the database since `start` (a
/// [`data_version`]).
async fn local_change(store: &Store, start: i64) {
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if data_version(store) != start {
            return;
        }
    }
}

fn data_version(store: &Store) -> i64 {
    store
        .conn()
        .query_row("PRAGMA data_version", [], |r| r.get(0))
        .unwrap_or(0)
}

/// Exponential backoff with jitter for reconnects and retries: 1 s doubling to 2 min.
#[derive(Debug, Default)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// The next pause.
    pub fn pause(&mut self) -> Duration {
        let d = backoff_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }
    /// Back to the shortest pause after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The pause before retry number `attempt` (0-based): 1 s × 2^attempt, capped at 2 minutes, with
/// up to 25 % random jitter so that many agents do not retry in step.
pub fn backoff_delay(attempt: u32) -> Duration {
    use rand::Rng;
    let base = 1000u64.saturating_mul(1u64 << attempt.min(7)).min(120_000);
    let jitter = rand::rng().random_range(0..=base / 4);
    Duration::from_millis(base + jitter)
}

/// One line about mail waiting for a retry: "2 mails to bob@… (todo) held back until 20:15:03 UTC
/// (retrying after: …)".
fn describe_held(h: &crate::store::HeldBack) -> String {
    let until = std::time::UNIX_EPOCH + Duration::from_millis(h.until.max(0) as u64);
    format!(
        "{} mail{} to {} ({}) held back until {}{}",
        h.count,
        if h.count == 1 { "" } else { "s" },
        h.peer,
        h.doc,
        humantime::format_rfc3339_seconds(until),
        h.error
            .as_deref()
            .map(|e| format!(" (retrying after: {e})"))
            .unwrap_or_default()
    )
}

/// A fresh, well-formed Message-ID in the account's domain.
pub fn new_message_id(address: &str) -> String {
    let domain = address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("minisync.invalid");
    format!(
        "<minisync.{}.{}@{domain}>",
        crate::engine::random_token(),
        crate::engine::random_token()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        assert!(backoff_delay(0) >= Duration::from_secs(1));
        assert!(backoff_delay(0) <= Duration::from_millis(1250));
        assert!(backoff_delay(3) >= Duration::from_secs(8));
        assert!(backoff_delay(30) <= Duration::from_secs(150));
    }

    #[test]
    fn message_ids_are_unique_and_well_formed() {
        let a = new_message_id("alice@example.test");
        assert_ne!(a, new_message_id("alice@example.test"));
        assert!(a.starts_with('<') && a.ends_with("@example.test>"));
    }
}
