//! `agent doc edit` through the `agent` binary, with scripts standing in for the editor: a string
//! edited as text becomes character edits, a subtree edited as JSON becomes edits of what
//! changed, nothing changes when nothing was changed, and invalid JSON or a failing editor leave
//! the document alone and keep the edited text in a file the message names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};

struct Home {
    dir: tempfile::TempDir,
    config: PathBuf,
}

fn home() -> Home {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\nstate-dir = \"state\"\n\n[[documents]]\nname = \"notes\"\ntransport = \
             \"folder\"\nfolder = \"{}\"\n",
            dir.path().join("shared").display()
        ),
    )
    .unwrap();
    let h = Home { dir, config };
    let doc = h.dir.path().join("notes.json");
    std::fs::write(&doc, r#"{"body": "the quick brown fox", "n": 1}"#).unwrap();
    h.ok(&["doc", "import", "notes", doc.to_str().unwrap()], None);
    h
}

impl Home {
    /// Runs the agent with `editor` as `$VISUAL`.
    fn run(&self, args: &[&str], editor: Option<&str>) -> Output {
        let mut c = Command::new(env!("CARGO_BIN_EXE_agent"));
        c.arg("--config")
            .arg(&self.config)
            .args(args)
            .env_remove("MINISYNC_CONFIG")
            .env_remove("EDITOR")
            .env("MINISYNC_LOG", "warn")
            .stdin(Stdio::null());
        match editor {
            Some(e) => c.env("VISUAL", e),
            None => c.env_remove("VISUAL"),
        };
        c.output().unwrap()
    }
    fn ok(&self, args: &[&str], editor: Option<&str>) -> String {
        let out = self.run(args, editor);
        assert!(
            out.status.success(),
            "agent {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
    fn fails(&self, args: &[&str], editor: Option<&str>) -> String {
        let out = self.run(args, editor);
        assert!(!out.status.success(), "agent {args:?} succeeded");
        String::from_utf8(out.stderr).unwrap()
    }
    fn get(&self, path: &str) -> Value {
        serde_json::from_str(&self.ok(&["doc", "get", "notes", path], None)).unwrap()
    }
    /// An editor: a script that runs `body` with the file as `$1`.
    fn editor(&self, name: &str, body: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p.to_str().unwrap().to_string()
    }
    fn kept_files(&self) -> Vec<PathBuf> {
        let dir = self.dir.path().join("state/edits");
        std::fs::read_dir(&dir)
            .map(|r| r.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default()
    }
}

#[test]
fn a_string_is_edited_as_text_and_applied_as_character_edits() {
    let h = home();
    let sed = h.editor("ed.sh", "sed -i 's/quick/slow/' \"$1\"");
    let out = h.ok(&["doc", "edit", "notes", "body"], Some(&sed));
    assert!(out.contains("body updated"), "{out}");
    assert_eq!(h.get("body"), json!("the slow brown fox"));
    // sed ends the file with a newline; the string had none and gets none.
    assert!(
        h.kept_files().is_empty(),
        "the edit file is removed once applied"
    );
    let log = h.ok(&["doc", "log", "notes"], None);
    assert!(log.contains("edit body"), "{log}");
}

#[test]
fn a_subtree_is_edited_as_json_and_only_what_changed_is_written() {
    let h = home();
    let sed = h.editor("ed.sh", "sed -i 's/\"n\": 1/\"n\": 2/' \"$1\"");
    h.ok(&["doc", "edit", "notes"], Some(&sed));
    assert_eq!(h.get("n"), json!(2));
    assert_eq!(h.get("body"), json!("the quick brown fox"));
    let out = h.ok(&["doc", "edit", "notes"], Some("true"));
    assert!(out.contains("nothing changed"), "{out}");
}

#[test]
fn invalid_json_or_a_failing_editor_keep_the_text_and_change_nothing() {
    let h = home();
    let broken = h.editor("ed.sh", "printf '{\"n\": 3,\\n  oops' > \"$1\"");
    let err = h.fails(&["doc", "edit", "notes"], Some(&broken));
    assert!(err.contains("not valid JSON"), "{err}");
    assert!(err.contains("line 2, column"), "{err}");
    let kept = h.kept_files();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(err.contains(kept[0].to_str().unwrap()), "{err}");
    assert!(std::fs::read_to_string(&kept[0]).unwrap().contains("oops"));
    assert_eq!(h.get("n"), json!(1));
    let err = h.fails(&["doc", "edit", "notes", "body"], Some("false"));
    assert!(err.contains("exited"), "{err}");
    assert_eq!(h.get("body"), json!("the quick brown fox"));
    let kept = h.kept_files();
    assert_eq!(
        kept.len(),
        2,
        "both texts kept, neither overwritten: {kept:?}"
    );
    assert!(kept.iter().all(|k| private(k)));
}

fn private(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o077 == 0
}
