//! The shared-folder transport: replicas that share a directory (Syncthing, Dropbox, a network
//! share, a USB stick) sync through it.
//!
//! Each client writes into `<folder>/<document id>/<client id>/`:
//! `changes.base.json` (everything up to the base version), `changes.latest.json` (everything after
//! the base version) and `version.json` (written last: the versions and byte sizes of both). Every
//! file is written to a temporary name and renamed, so a reader never sees half a file; a file
//! whose size or versions disagree with `version.json` has not been fully delivered by the sync
//! tool yet (sync tools deliver the files of one write in any order) and is left for the next
//! pass. Files a sync tool leaves beside ours (conflict copies such as
//! `changes.latest (1).json`) are never read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::ClientId;
use crate::transport::{
    Arrival, Delivery, Outgoing, Route, SendError, Settle, Transport, TransportError,
};

/// File names inside a client's directory.
pub const VERSION_FILE: &str = "version.json";
pub const LATEST_FILE: &str = "changes.latest.json";
pub const BASE_FILE: &str = "changes.base.json";

/// The contents of `version.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionFile {
    /// The writer's version that `changes.latest.json` reaches.
    pub version: u64,
    /// The version `changes.base.json` holds and `changes.latest.json` starts after.
    pub base_version: u64,
    pub latest_bytes: u64,
    pub base_bytes: u64,
    /// When it was written (milliseconds since the epoch).
    pub written: u64,
}

/// A transport over one shared folder.
pub struct FolderTransport {
    root: PathBuf,
    poll: Duration,
}

impl FolderTransport {
    /// A transport over `root`, checked for news every `poll`.
    pub fn new(root: PathBuf, poll: Duration) -> Self {
        FolderTransport { root, poll }
    }

    /// Document ids present in the folder (for a replica that does not exist here yet).
    pub fn documents(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        ids.sort();
        ids
    }

    fn read_client(&self, dir: &Path, last_received: u64) -> Option<Result<Vec<Vec<u8>>, String>> {
        let version_path = dir.join(VERSION_FILE);
        let text = match std::fs::read_to_string(&version_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let has_any = dir.join(LATEST_FILE).exists() || dir.join(BASE_FILE).exists();
                return has_any.then(|| {
                    Err(format!(
                        "{} is missing (not fully delivered yet?)",
                        version_path.display()
                    ))
                });
            }
            Err(e) => return Some(Err(format!("cannot read {}: {e}", version_path.display()))),
        };
        let v: VersionFile = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Some(Err(format!("{} is not valid: {e}", version_path.display()))),
        };
        if v.version <= last_received {
            return None;
        }
        let read = |name: &str, expected: u64| -> Result<Vec<u8>, String> {
            let p = dir.join(name);
            let body = std::fs::read(&p).map_err(|e| {
                format!(
                    "cannot read {}: {e} (not fully delivered yet?)",
                    p.display()
                )
            })?;
            if body.len() as u64 != expected {
                return Err(format!(
                    "{} is {} bytes but {VERSION_FILE} says {expected}: not fully delivered yet",
                    p.display(),
                    body.len()
                ));
            }
            Ok(body)
        };
        let mut payloads = Vec::new();
        if last_received < v.base_version {
            let base = read(BASE_FILE, v.base_bytes)
                .and_then(|b| expect_versions(&dir.join(BASE_FILE), b, 0, v.base_version));
            match base {
                Ok(b) => payloads.push(b),
                Err(e) => return Some(Err(e)),
            }
        }
        let latest = read(LATEST_FILE, v.latest_bytes)
            .and_then(|l| expect_versions(&dir.join(LATEST_FILE), l, v.base_version, v.version));
        match latest {
            Ok(l) => payloads.push(l),
            Err(e) => return Some(Err(e)),
        }
        Some(Ok(payloads))
    }
}

/// The two versions of a changes file that say which write it belongs to.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChangesHead {
    changes_since: u64,
    from_version: u64,
}

/// Checks that a changes file is the one `version.json` names: a sync tool delivers the files of
/// one write in any order, and an older file of the same size must not pass for the new one.
/// A file that is not readable as changes at all is handed on for the engine to refuse by name.
fn expect_versions(path: &Path, text: Vec<u8>, since: u64, to: u64) -> Result<Vec<u8>, String> {
    match serde_json::from_slice::<ChangesHead>(&text) {
        Ok(h) if h.changes_since != since || h.from_version != to => Err(format!(
            "{} holds changes {}..{} but {VERSION_FILE} names {since}..{to}: the right file is not fully delivered yet",
            path.display(),
            h.changes_since,
            h.from_version
        )),
        _ => Ok(text),
    }
}

/// Writes a file atomically: a temporary file in the same directory, synced, then renamed.
pub fn write_atomic(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[async_trait::async_trait]
impl Transport for FolderTransport {
    fn name(&self) -> &'static str {
        "folder"
    }

    fn delivery(&self) -> Delivery {
        Delivery::Shared
    }

    async fn send(&self, out: &Outgoing<'_>) -> Result<(), SendError> {
        let dir = self.root.join(out.doc_id).join(out.client_id.to_string());
        let fail = |what: &str, e: std::io::Error| {
            SendError::Temporary(format!("cannot write {what} in {}: {e}", dir.display()))
        };
        std::fs::create_dir_all(&dir).map_err(|e| fail("the directory", e))?;
        if let Some(base) = out.base {
            write_atomic(&dir.join(BASE_FILE), base).map_err(|e| fail(BASE_FILE, e))?;
        }
        write_atomic(&dir.join(LATEST_FILE), out.body).map_err(|e| fail(LATEST_FILE, e))?;
        let v = VersionFile {
            version: out.version,
            base_version: out.base_version,
            latest_bytes: out.body.len() as u64,
            base_bytes: out.base_len,
            written: crate::engine::system_now_ms(),
        };
        let text = serde_json::to_vec_pretty(&v).unwrap_or_default();
        write_atomic(&dir.join(VERSION_FILE), &text).map_err(|e| fail(VERSION_FILE, e))
    }

    async fn receive(&self, routes: &[Route]) -> Result<Vec<Arrival>, TransportError> {
        let mut out = Vec::new();
        for route in routes {
            let ids = match &route.doc_id {
                Some(id) => vec![id.clone()],
                None => self.documents(),
            };
            for doc_id in ids {
                let doc_dir = self.root.join(&doc_id);
                let Ok(entries) = std::fs::read_dir(&doc_dir) else {
                    continue;
                };
                let mut clients: Vec<(PathBuf, String)> = entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| Some((e.path(), e.file_name().into_string().ok()?)))
                    .collect();
                clients.sort();
                for (dir, name) in clients {
                    let Ok(client) = ClientId::parse(&name) else {
                        tracing::debug!(dir = %dir.display(), "not a client directory; ignored");
                        continue;
                    };
                    if Some(client) == route.client_id {
                        continue;
                    }
                    let last = route.last_received.get(&client).copied().unwrap_or(0);
                    if let Some(payloads) = self.read_client(&dir, last) {
                        out.push(Arrival {
                            key: dir.display().to_string(),
                            message_id: None,
                            from: name,
                            doc: doc_id.clone(),
                            in_reply_to: None,
                            payloads,
                            sealed: None,
                            device: None,
                            want: false,
                            split: crate::transport::Split::Whole,
                            sent_at: None,
                        });
                    }
                }
            }
        }
        Ok(out)
    }

    async fn settle(&self, _arrival: &Arrival, _how: &Settle) -> Result<(), TransportError> {
        // Other clients' files are theirs: nothing is moved. A refused publication is read again
        // when its writer publishes a newer version.
        Ok(())
    }

    async fn wait(
        &self,
        max: Duration,
        interrupt: &tokio::sync::Notify,
    ) -> Result<(), TransportError> {
        tokio::select! {
            _ = tokio::time::sleep(max.min(self.poll)) => {}
            _ = interrupt.notified() => {}
        }
        Ok(())
    }
}
