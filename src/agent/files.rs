//! JSON files bound to documents (`[[documents]] file = "PATH"`): differential synchronization
//! on files. The shadow is the content the agent last read from or wrote to the file; a save is
//! the difference between the file and the shadow, applied as local edits (`Document::update`,
//! three-way with any merge that landed meanwhile, see `file_merge.rs`); a document that changed
//! (a merge, a CLI edit) is written to the file in the file's own style.
//!
//! No edit is lost: the file is read again just before it is written, and a save made in between
//! is applied first. A file is never half-written: the text goes to a temporary file in the same
//! directory, is synced, and replaces the file by rename, with the file's permissions. A file
//! that is not valid JSON (a half-saved buffer, a typo) is neither applied nor overwritten; a
//! missing file does not delete the document. Either is recorded for `agent status`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::agent::Result;
use crate::agent::docs::{edit_summary, local_who};
use crate::agent::file_merge::merge3;
use crate::agent::file_style::{KeyOrder, Style};
use crate::config::Config;
use crate::engine::{Document, Edit};
use crate::store::{FileInfo, Save, Store, now_ms};

/// A modification time this close to now may still change without a new time (coarse file
/// system clocks), so a signature that recent is not trusted to mean "unchanged".
const RACY_MS: i64 = 2000;

/// How many saves racing the agent's writes one check applies before it leaves the rest to the
/// next pass.
const MAX_ROUNDS: usize = 5;

/// A bound file as read.
pub enum Read {
    Missing,
    /// Unreadable, not JSON (with line and column), or not an object at its top.
    Bad(String),
    Good(FileText),
}

/// A bound file's text, its JSON value, and its signature when old enough to be trusted.
pub struct FileText {
    pub text: String,
    pub value: Value,
    pub signature: Option<String>,
}

/// A bound file's state while a pass works on it: what the store knows of it, and its shadow,
/// read only when the file is (the shadow is the whole document's text) and written back only
/// when it changed.
struct FileState {
    info: FileInfo,
    shadow: Option<String>,
    shadow_changed: bool,
}

impl FileState {
    fn set_shadow(&mut self, text: String) {
        if self.shadow.as_deref() != Some(text.as_str()) {
            self.shadow = Some(text);
            self.shadow_changed = true;
        }
    }
}

/// The file's modification time, length and inode, and whether that time is recent.
pub fn signature(path: &Path) -> Option<(String, bool)> {
    let m = std::fs::metadata(path).ok()?;
    let modified = m.modified().ok()?;
    let since = modified.duration_since(std::time::UNIX_EPOCH).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0u64;
    let recent = now_ms() - (since.as_millis() as i64) < RACY_MS;
    Some((format!("{}:{}:{ino}", since.as_nanos(), m.len()), recent))
}

/// The signature to record: none when too recent to be trusted.
fn trusted_signature(path: &Path) -> Option<String> {
    signature(path).and_then(|(s, recent)| (!recent).then_some(s))
}

/// Reads and parses the file at `path` (see [`Read`]).
pub fn read(path: &Path) -> Read {
    match read_text(path) {
        Ok((text, signature)) => parse(path, text, signature),
        Err(r) => r,
    }
}

/// The text of the file at `path` and its trusted signature, or why there is none.
fn read_text(path: &Path) -> std::result::Result<(String, Option<String>), Read> {
    let signature = trusted_signature(path);
    match std::fs::read_to_string(path) {
        Ok(t) => Ok((t, signature)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Read::Missing),
        Err(e) => Err(Read::Bad(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The file's `text` parsed (see [`Read`]).
fn parse(path: &Path, text: String, signature: Option<String>) -> Read {
    let value: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            return Read::Bad(format!(
                "{} is not valid JSON at line {}, column {}: {e}; nothing applied, the file is not \
                 overwritten until it is valid",
                path.display(),
                e.line(),
                e.column()
            ));
        }
    };
    if !value.is_object() {
        return Read::Bad(format!(
            "{} must hold a JSON object ({{...}}) at its top; nothing applied",
            path.display()
        ));
    }
    Read::Good(FileText {
        text,
        value,
        signature,
    })
}

/// Writes `text` to `path` whole or not at all: a temporary file beside it, synced, renamed
/// over it, with its permissions. A symbolic link is followed: the file it points to is replaced.
fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = target.parent().unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp: PathBuf = dir.join(format!(
        ".{name}.minisync-{}.tmp",
        crate::engine::random_token()
    ));
    let permissions = std::fs::metadata(&target).ok().map(|m| m.permissions());
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        if let Some(p) = permissions {
            f.set_permissions(p)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &target)?;
        // The rename itself reaches the disk with the directory.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Brings the file bound to document `name` and the document in step (see the module comment).
/// `before_write` runs between the last read of the file and its write (tests race a save there).
///
/// # Errors
///
/// Only the store's and the engine's: a problem with the file is recorded in its state.
pub fn sync_file(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    path: &Path,
    before_write: &mut dyn FnMut(),
) -> Result<()> {
    let shown = path.display().to_string();
    let stored = store.file_info(name)?;
    // A row about another path is about a file no longer bound: its shadow is not this file's.
    let same_path = stored.as_ref().is_some_and(|s| s.path == shown);
    let info = match &stored {
        Some(s) if same_path => s.clone(),
        _ => FileInfo {
            path: shown,
            ..FileInfo::default()
        },
    };
    let rev = store.doc_rev(name)?;
    let sig = signature(path).map(|(s, _)| s);
    if rev.is_some() && info.rev == rev && sig.is_some() && sig == info.signature {
        return Ok(());
    }
    let mut st = FileState {
        info,
        shadow: if same_path {
            store.file_shadow(name)?
        } else {
            None
        },
        shadow_changed: stored.is_some() && !same_path,
    };
    match read(path) {
        Read::Missing => missing(store, name, path, &mut st, rev)?,
        Read::Bad(e) => st.info.error = Some(e),
        Read::Good(file) if rev.is_none() => import(cfg, store, name, &mut st, file)?,
        Read::Good(file) => reconcile(cfg, store, name, path, &mut st, file, before_write)?,
    }
    if stored.as_ref() != Some(&st.info) || st.shadow_changed {
        store.set_file_info(name, &st.info)?;
    }
    if st.shadow_changed {
        store.set_file_shadow(name, st.shadow.as_deref())?;
    }
    Ok(())
}

/// The file does not exist: a replica never written to it is written (the first binding); a
/// file that was bound is reported missing and the document kept; with neither file nor replica
/// there is nothing to do yet (the document arrives from a peer, or the file is written).
fn missing(
    store: &mut Store,
    name: &str,
    path: &Path,
    st: &mut FileState,
    rev: Option<i64>,
) -> Result<()> {
    st.info.rev = None;
    st.info.signature = None;
    if rev.is_none() {
        st.info.error = None;
        return Ok(());
    }
    if st.shadow.is_some() {
        st.info.error = Some(format!(
            "{} is missing; the document is kept, and saving the file again binds it again",
            path.display()
        ));
        return Ok(());
    }
    let doc = store.read_doc(name, Document::to_json)?;
    write(path, &doc, &Style::default(), None, st, rev);
    Ok(())
}

/// The text of `doc` written to the file, and the state that follows (or the error).
fn write(
    path: &Path,
    doc: &Value,
    style: &Style,
    order: Option<&KeyOrder>,
    st: &mut FileState,
    rev: Option<i64>,
) {
    match write_atomic(path, &style.render(doc, order)) {
        Ok(()) => {
            st.set_shadow(doc.to_string());
            st.info.rev = rev;
            st.info.signature = trusted_signature(path);
            st.info.written_at = Some(now_ms());
            st.info.error = None;
        }
        Err(e) => {
            st.info.rev = None;
            st.info.error = Some(format!("cannot write {}: {e}", path.display()));
        }
    }
}

/// No replica yet: the file's content becomes the document.
fn import(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    st: &mut FileState,
    file: FileText,
) -> Result<()> {
    // The common document of this name: another machine that imports its own file under the
    // same name starts the same document, and the two files merge key by key when they meet.
    let doc = Document::common(name, &file.value)?;
    store.create_doc(name, &doc, true)?;
    Store::log_change(
        store.conn(),
        name,
        &local_who(cfg),
        "import from the bound file (created)",
    )?;
    st.set_shadow(file.value.to_string());
    st.info.rev = store.doc_rev(name)?;
    st.info.signature = file.signature;
    st.info.read_at = Some(now_ms());
    st.info.error = None;
    Ok(())
}

/// Applies the file's save, then writes the document to the file if it differs; a save made
/// between the read and the write is applied first, then the write is tried again.
fn reconcile(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    path: &Path,
    st: &mut FileState,
    mut file: FileText,
    before_write: &mut dyn FnMut(),
) -> Result<()> {
    for _ in 0..MAX_ROUNDS {
        // The file as the agent last read or wrote it (usually: a merge landed and the file is
        // only to be written) holds no save; checked on the text, so that the document, the
        // shadow and their merge are not made as JSON values (each ~8 times the text) for nothing.
        let text = file.value.to_string();
        if st.shadow.as_deref() != Some(text.as_str()) {
            apply_save(cfg, store, name, st, &file.value)?;
        }
        // From here on only the file's text is needed (its style and key order), unless a save
        // comes meanwhile: its value (~8 times the text) is not held while the document is made
        // and written out, and the file read again is parsed only if it changed. The document is
        // compared with the file as compact JSON text, the shadow's: serde_json writes a value's
        // keys sorted and its numbers as read, so equal texts are equal values.
        drop(file.value);
        let doc = store.read_doc(name, Document::to_json)?;
        let rev = store.doc_rev(name)?;
        // As text: `Value == String` would compare with a JSON string value.
        let same = serde_json::to_string(&doc).is_ok_and(|t| t == text);
        st.set_shadow(text);
        st.info.read_at = Some(now_ms());
        st.info.error = None;
        if same {
            st.info.rev = rev;
            st.info.signature = file.signature;
            return Ok(());
        }
        let text = file.text;
        before_write();
        match read_text(path) {
            Ok((again, signature)) if again != text => match parse(path, again, signature) {
                Read::Good(again) => file = again,
                // Saved meanwhile as something not applicable: left as it is, reported next time.
                Read::Missing | Read::Bad(_) => {
                    st.info.rev = None;
                    return Ok(());
                }
            },
            Ok(_) => {
                let order = KeyOrder::of(&text);
                write(path, &doc, &Style::detect(&text), order.as_ref(), st, rev);
                return Ok(());
            }
            Err(_) => {
                st.info.rev = None;
                return Ok(());
            }
        }
    }
    st.info.rev = None;
    Ok(())
}

/// The edits that turn the shadow (`shadow`, the JSON text last read from or written to the
/// file) into the file's content `file`: a save as differential synchronization sees it. None
/// when the shadow is not valid JSON (never written by this agent; the save is then merged with
/// the document instead).
pub fn save_edits(shadow: &str, file: &Value) -> Option<Vec<Edit>> {
    let shadow: Value = serde_json::from_str(shadow).ok()?;
    Some(crate::engine::diff(&[], &shadow, file))
}

/// The file's content, where it differs from the shadow, applied as local edits. While the
/// document is still at the revision the shadow was taken from, it equals the shadow and the
/// save's edits apply as they are; otherwise merges landed meanwhile and the save is merged
/// three ways with the document first (`merge3`).
fn apply_save(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    st: &FileState,
    value: &Value,
) -> Result<()> {
    let in_step = st.info.rev.is_some() && store.doc_rev(name)? == st.info.rev;
    let direct = match (&st.shadow, in_step) {
        (Some(shadow), true) => save_edits(shadow, value),
        _ => None,
    };
    let who = local_who(cfg);
    store.update_doc::<_, crate::agent::AgentError>(name, |doc, tx| {
        let edits = match direct {
            Some(edits) => edits,
            None => {
                let now = doc.to_json();
                let shadow = st
                    .shadow
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok());
                // Never read nor written (a file bound to a replica that came from a peer): the
                // file and the document are merged as two sides of an empty object, so that
                // neither's keys are lost.
                let empty = Value::Object(serde_json::Map::new());
                let target = merge3(shadow.as_ref().unwrap_or(&empty), value, &now);
                crate::engine::diff(&[], &now, &target)
            }
        };
        if edits.is_empty() {
            return Ok(((), Save::No));
        }
        let what = format!("file: {}", edit_summary(&edits, 10));
        doc.apply_edits(edits)?;
        Store::log_change(tx, name, &who, &what)?;
        Ok(((), Save::Edited))
    })
}

impl super::Agent {
    /// The bound files, by document.
    pub(super) fn bound_files(&self) -> Vec<(String, PathBuf)> {
        self.docs
            .iter()
            .filter_map(|s| Some((s.cfg.name.clone(), self.cfg.bound_file(&s.cfg)?)))
            .collect()
    }

    /// Brings every bound file and its document in step; a store or engine failure is the pass's
    /// error (a problem with a file itself is recorded for `agent status` instead).
    pub(super) fn sync_files(&mut self, report: &mut super::PassReport) {
        for (name, path) in self.bound_files() {
            let problem = |store: &Store| store.file_info(&name).ok().flatten()?.error;
            let written = |store: &Store| store.file_info(&name).ok().flatten()?.written_at;
            let before = problem(&self.store);
            let (looked, wrote_before) = (signature(&path).map(|(s, _)| s), written(&self.store));
            let synced = sync_file(&self.cfg, &mut self.store, &name, &path, &mut || {});
            // What the wait compares the file with (see `file_change`): the file as this look
            // left it when it did not change meanwhile or this agent wrote it; else as it was
            // before (a save during the look: the next pass reads it).
            let after = signature(&path).map(|(s, _)| s);
            let wrote = written(&self.store) != wrote_before;
            let seen = if after == looked || wrote {
                after
            } else {
                looked
            };
            self.files_seen.insert(path.clone(), seen);
            if let Err(e) = synced {
                tracing::warn!(doc = %name, file = %path.display(), error = %e, "syncing the bound file failed");
                report
                    .errors
                    .push(format!("{name}: file {}: {e}", path.display()));
            } else if let Some(e) = problem(&self.store) {
                if before.as_ref() != Some(&e) {
                    tracing::warn!(doc = %name, error = %e, "the bound file waits");
                }
                report.files_waiting.push(format!("{name}: {e}"));
            }
        }
    }
}

/// How often `agent run` also looks at the bound files while it waits (when file notifications
/// are missed or unavailable), and how long a file must stay unchanged before it is read (an
/// editor's save in several writes is read once, whole).
const POLL: std::time::Duration = std::time::Duration::from_millis(1000);
const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);

/// Resolves when one of `paths` changes (saved, replaced, removed or created) and has then stayed
/// unchanged for a moment; never when there are none. The operating system's notifications
/// (`notify`: inotify, FSEvents, …) on the files' directories wake it at once, as a save by
/// rename replaces the file itself; a change is confirmed by the file's modification time, size
/// and inode, which are also compared every [`POLL`] in case a notification is missed.
///
/// `seen`: each file's signature when the pass last looked at it. A file saved after that look
/// and before this wait began is a change too (the pass that looked missed it).
pub(super) async fn file_change(paths: &[PathBuf], seen: &[Option<String>]) {
    if paths.is_empty() {
        return std::future::pending().await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _watcher = watch(paths, tx);
    let look =
        || -> Vec<Option<String>> { paths.iter().map(|p| signature(p).map(|(s, _)| s)).collect() };
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = rx.recv() => {}
            }
        }
        first = false;
        let mut now = look();
        if now == seen {
            continue;
        }
        loop {
            tokio::time::sleep(SETTLE).await;
            let again = look();
            if again == now {
                return;
            }
            now = again;
        }
    }
}

/// A watcher of the directories holding `paths` that sends on `tx` at every event there (None,
/// with a warning, when the system offers none: the poll still finds changes).
fn watch(
    paths: &[PathBuf],
    tx: tokio::sync::mpsc::UnboundedSender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |_: notify::Result<notify::Event>| {
        let _ = tx.send(());
    })
    .map_err(|e| tracing::warn!(error = %e, "no file notifications; bound files are polled"))
    .ok()?;
    for path in paths {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot watch; polled instead");
        }
    }
    Some(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A save by rename wakes the wait through the system's notification, well before the poll.
    #[tokio::test]
    async fn a_save_by_rename_is_noticed_before_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.json");
        std::fs::write(&file, "{}").unwrap();
        let paths = vec![file.clone()];
        let seen = [signature(&file).map(|(s, _)| s)];
        let save = async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            std::fs::write(dir.path().join("n.tmp"), "{\"a\": 1}").unwrap();
            std::fs::rename(dir.path().join("n.tmp"), &file).unwrap();
        };
        let started = std::time::Instant::now();
        let (noticed, ()) = tokio::join!(
            tokio::time::timeout(
                POLL - std::time::Duration::from_millis(100),
                file_change(&paths, &seen)
            ),
            save
        );
        assert!(
            noticed.is_ok(),
            "not noticed within {:?}",
            started.elapsed()
        );
    }

    /// A save that lands after the pass looked at the file and before the wait began (which
    /// would take it for the file as the pass left it) ends the wait at once, not at the next
    /// pass minutes later.
    #[tokio::test]
    async fn a_save_before_the_wait_began_ends_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("n.json");
        std::fs::write(&file, "{}").unwrap();
        let seen = signature(&file).map(|(s, _)| s);
        std::fs::write(dir.path().join("n.tmp"), "{\"a\": 1}").unwrap();
        std::fs::rename(dir.path().join("n.tmp"), &file).unwrap();
        let waited = tokio::time::timeout(
            POLL / 2,
            file_change(std::slice::from_ref(&file), std::slice::from_ref(&seen)),
        )
        .await;
        assert!(waited.is_ok(), "the earlier save was not noticed");
        // Unchanged since the look: the wait goes on.
        let seen = [signature(&file).map(|(s, _)| s)];
        let paths = [file];
        let waited = tokio::time::timeout(POLL / 2, file_change(&paths, &seen)).await;
        assert!(waited.is_err());
    }

    /// A save lands between the agent's read of the file and its write of a merge: the save is
    /// applied first, and the file written holds both.
    #[test]
    fn a_save_racing_a_merge_is_applied_before_the_write() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("agent.toml");
        let text = "[agent]\nstate-dir = \"state\"\n[[documents]]\nname = \"n\"\ntransport = \"folder\"\nfolder = \"shared\"\nfile = \"n.json\"\n";
        let cfg = Config::parse(text, &config).unwrap();
        let mut store = Store::open(&cfg.database_path()).unwrap();
        let file = dir.path().join("n.json");
        std::fs::write(&file, "{\"a\": \"one two three\", \"b\": 1}\n").unwrap();
        sync_file(&cfg, &mut store, "n", &file, &mut || {}).unwrap();
        // A merge: the document changes behind the file.
        store
            .update_doc::<_, crate::agent::AgentError>("n", |d, _| {
                d.update("", json!({"a": "one two three four", "b": 1}))?;
                Ok(((), Save::Merged))
            })
            .unwrap();
        let mut saves = 0;
        let mut race = || {
            saves += 1;
            if saves == 1 {
                std::fs::write(&file, "{\"a\": \"one 2 three\", \"b\": 1, \"c\": true}\n").unwrap();
            }
        };
        sync_file(&cfg, &mut store, "n", &file, &mut race).unwrap();
        let want = json!({"a": "one 2 three four", "b": 1, "c": true});
        let written: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(written, want);
        assert_eq!(store.read_doc("n", Document::to_json).unwrap(), want);
        assert_eq!(saves, 2, "read again after the racing save, then written");
    }
}
