//! `agent doc edit`: a string (as plain text) or a subtree (as JSON) opened in the user's editor,
//! as `git commit` and `crontab -e` do, and what changed applied as edits that merge.
//!
//! The file lives in the state directory (`edits/`), readable only by the user, and is removed
//! once its content is applied; when it cannot be (invalid JSON, an editor that failed, a merge
//! that arrived meanwhile) it is kept and the message names it, so no edit is ever lost.

use std::path::{Path, PathBuf};

use anyhow::Context;
use minisync::agent::{DocCommand, run_doc_command};
use minisync::config::{Config, write_private_file};
use minisync::store::Store;
use serde_json::Value;

/// Runs the edit of `path` in document `name`; returns what to print.
///
/// # Errors
///
/// No such document or path, no editor that runs, an editor that exits with a failure, invalid
/// JSON (with line and column), or a merge that changed the value meanwhile; in each case after
/// the editor ran, the message names the file that keeps the edited text.
pub fn edit(cfg: &Config, store: &mut Store, name: &str, path: &str) -> anyhow::Result<String> {
    let shown = run_doc_command(
        cfg,
        store,
        DocCommand::Get {
            name: name.into(),
            path: path.into(),
            json: true,
        },
    )?;
    let shadow = serde_json::from_str::<Value>(&shown)?["value"].clone();
    let (text, is_string) = match &shadow {
        Value::String(s) => (s.clone(), true),
        other => (format!("{}\n", serde_json::to_string_pretty(other)?), false),
    };
    let file = edit_file(cfg, name, is_string)?;
    write_private_file(&file, text.as_bytes())
        .with_context(|| format!("cannot write {}", file.display()))?;
    run_editor(&file)?;
    let edited = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {} back", file.display()))?;
    let value = if is_string {
        Value::String(strip_added_newline(&text, edited))
    } else {
        serde_json::from_str(&edited).map_err(|e| {
            anyhow::anyhow!(
                "the edited text is not valid JSON: {e} (line {}, column {}); nothing was applied; your text is kept in {}",
                e.line(),
                e.column(),
                file.display()
            )
        })?
    };
    if value == shadow {
        let _ = std::fs::remove_file(&file);
        return Ok(format!("{name}: nothing changed\n"));
    }
    let update = DocCommand::Update {
        name: name.into(),
        path: path.into(),
        value,
        expected: Some(shadow),
    };
    match run_doc_command(cfg, store, update) {
        Ok(_) => {
            let _ = std::fs::remove_file(&file);
            let what = if path.is_empty() {
                "the document"
            } else {
                path
            };
            Ok(format!("{name}: {what} updated\n"))
        }
        Err(e) => Err(anyhow::anyhow!(
            "{e}; your text is kept in {} (run `agent doc edit {name} {path}` again and paste it)",
            file.display()
        )),
    }
}

/// Editors end a file with a newline; a string that had none gets none added.
fn strip_added_newline(before: &str, mut after: String) -> String {
    if !before.ends_with('\n') && after.ends_with('\n') {
        after.pop();
        if after.ends_with('\r') {
            after.pop();
        }
    }
    after
}

/// `<state>/edits/<name>-<seconds>-<n>.txt|json`, a name no kept file has.
fn edit_file(cfg: &Config, name: &str, is_string: bool) -> anyhow::Result<PathBuf> {
    let dir = cfg.state_dir().join("edits");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ext = if is_string { "txt" } else { "json" };
    // Never the name of a kept file: each holds an edit not yet applied.
    for n in 0u32.. {
        let p = dir.join(format!("{safe}-{}-{n}.{ext}", now.as_secs()));
        if !p.exists() {
            return Ok(p);
        }
    }
    anyhow::bail!("no free file name in {}", dir.display())
}

/// Runs `$VISUAL`, else `$EDITOR`, else `vi`, through the shell (so `code --wait` works), and
/// waits for it.
fn run_editor(file: &Path) -> anyhow::Result<()> {
    let editor = std::env::var("VISUAL")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| {
            std::env::var("EDITOR")
                .ok()
                .filter(|e| !e.trim().is_empty())
        })
        .unwrap_or_else(|| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("sh")
        .arg(file)
        .status()
        .with_context(|| format!("cannot start the editor {editor:?}"))?;
    if !status.success() {
        anyhow::bail!(
            "the editor {editor:?} exited with {status}; nothing was applied; your text is kept in {}",
            file.display()
        );
    }
    Ok(())
}
