//! `agent doc …`: reading and editing documents by path. Edits are local changes like any other:
//! saved in one transaction, and a running agent sends them after the document's send delay.

use serde_json::Value;

use crate::agent::{AgentError, Result};
use crate::config::{Config, DocumentConfig};
use crate::engine::{Changes, Document, Reach, path};
use crate::store::{PeerChange, Save, Store};

/// One `agent doc` subcommand. Values (`Set`, `Insert`, `Push`) are JSON text: text that is not
/// JSON is refused (the CLI's `--string` turns plain text into a JSON string first).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum DocCommand {
    List {
        json: bool,
    },
    Get {
        name: String,
        path: String,
        json: bool,
    },
    Set {
        name: String,
        path: String,
        value: String,
    },
    Rm {
        name: String,
        path: String,
    },
    /// Insert a value at an index of an array (the elements from there on move up one).
    Insert {
        name: String,
        path: String,
        index: usize,
        value: String,
    },
    /// Append a value to an array.
    Push {
        name: String,
        path: String,
        value: String,
    },
    /// Move an array element from one index to another, in one local edit.
    Move {
        name: String,
        path: String,
        from: usize,
        to: usize,
    },
    Import {
        name: String,
        json: String,
    },
    /// Make the value at a path equal to `value` by difference (see `Document::update`),
    /// provided it still is `expected` (what an editor session started from): a merge that
    /// arrived meanwhile is never overwritten.
    Update {
        name: String,
        path: String,
        value: Value,
        expected: Option<Value>,
    },
    Export {
        name: String,
    },
    /// Replace our replica by a peer's document of the same name (both sides created it).
    Adopt {
        name: String,
        from: String,
    },
    /// The document's recent changes, newest first: when, who, which paths.
    Log {
        name: String,
        limit: usize,
        json: bool,
    },
}

/// Parses a value given on the command line as JSON. Malformed JSON is an error naming the line
/// and column, never silently a string: `{"what": milk}` or `007` would otherwise reach every
/// peer as text.
///
/// # Errors
///
/// `text` is not JSON.
pub fn parse_value(text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| {
        AgentError::Other(format!(
            "the value {text:?} is not JSON ({e}); values are JSON (numbers, true, \"quoted text\", \
             {{\"key\": \"value\"}}, [1, 2]); to give plain text, add --string, e.g. \
             `agent doc set --string NAME PATH 'some text'`"
        ))
    })
}

fn configured<'a>(cfg: &'a Config, name: &str) -> Result<&'a DocumentConfig> {
    let Some(doc) = cfg.document(name) else {
        let names: Vec<&str> = cfg.documents.iter().map(|d| d.name.as_str()).collect();
        return Err(AgentError::Other(format!(
            "no document named {name:?} in {} (configured: {}); add it as a [[documents]] table",
            cfg.path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        )));
    };
    Ok(doc)
}

/// Pretty JSON and a newline.
fn pretty(v: &impl serde::Serialize) -> Result<String> {
    serde_json::to_string_pretty(v)
        .map(|t| t + "\n")
        .map_err(|e| AgentError::Other(format!("cannot write JSON: {e}")))
}

/// Runs a `doc` subcommand and returns what to print.
pub fn doc_command(cfg: &Config, store: &mut Store, cmd: DocCommand) -> Result<String> {
    match cmd {
        DocCommand::List { json } => list(cfg, store, json),
        DocCommand::Get { name, path, json } => get(cfg, store, &name, &path, json),
        DocCommand::Export { name } => {
            configured(cfg, &name)?;
            let v = store.read_doc(&name, |d| d.to_json())?;
            pretty(&v)
        }
        DocCommand::Import { name, json } => import(cfg, store, &name, &json),
        DocCommand::Update {
            name,
            path,
            value,
            expected,
        } => update(cfg, store, &name, &path, value, expected.as_ref()),
        DocCommand::Set { name, path, value } => {
            let value = parse_value(&value)?;
            let what = format!("set {path}");
            edit(cfg, store, &name, &what, &[Reach::Parent(&path)], |doc| {
                doc.set(&path, value.clone())?;
                Ok(true)
            })?;
            Ok(String::new())
        }
        DocCommand::Insert {
            name,
            path,
            index,
            value,
        } => {
            let value = parse_value(&value)?;
            let what = format!("insert {path}[{index}]");
            edit(cfg, store, &name, &what, &[Reach::Node(&path)], |doc| {
                doc.insert(&path, index, value.clone())?;
                Ok(true)
            })?;
            Ok(String::new())
        }
        DocCommand::Push { name, path, value } => {
            let value = parse_value(&value)?;
            let mut len = 0;
            let what = format!("push {path}");
            edit(cfg, store, &name, &what, &[Reach::Node(&path)], |doc| {
                len = doc.push(&path, value.clone())?;
                Ok(true)
            })?;
            let elements = if len == 1 { "element" } else { "elements" };
            Ok(format!("{name}: {path} now has {len} {elements}\n"))
        }
        DocCommand::Move {
            name,
            path,
            from,
            to,
        } => move_element(cfg, store, &name, &path, from, to),
        DocCommand::Adopt { name, from } => adopt(cfg, store, &name, &from),
        DocCommand::Rm { name, path } => rm(cfg, store, &name, &path),
        DocCommand::Log { name, limit, json } => log(cfg, store, &name, limit, json),
    }
}

/// `doc edit` after the editor exits: the edited value applied by difference, unless a merge
/// changed it meanwhile (`expected`: the value the editor was opened on).
fn update(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    path: &str,
    value: serde_json::Value,
    expected: Option<&serde_json::Value>,
) -> Result<String> {
    let what = format!("edit {path}");
    edit(cfg, store, name, &what, &[Reach::Value(path)], |doc| {
        let now = doc.get(path)?;
        if let Some(expected) = expected
            && now.as_ref() != Some(expected)
        {
            return Err(AgentError::Other(format!(
                "{name}: {path:?} changed while it was being edited (a merge arrived); nothing was applied"
            )));
        }
        doc.update(path, value.clone())?;
        Ok(true)
    })?;
    Ok(String::new())
}

/// `doc rm`: removes the value at `path`; nothing there is an error.
fn rm(cfg: &Config, store: &mut Store, name: &str, path: &str) -> Result<String> {
    let mut found = false;
    let what = format!("rm {path}");
    edit(cfg, store, name, &what, &[Reach::Value(path)], |doc| {
        found = doc.remove(path)?.is_some();
        Ok(found)
    })?;
    if found {
        Ok(String::new())
    } else {
        Err(AgentError::Other(format!(
            "{name}: nothing at path {path:?} (see `agent doc get {name}`)"
        )))
    }
}

/// The paths at which `before` and `after` differ, as a short summary for the change log
/// (`Store::log_change`): see `edit_summary`.
pub fn changed_paths(before: &Value, after: &Value, limit: usize) -> String {
    edit_summary(&crate::engine::diff(&[], before, after), limit)
}

/// The paths `edits` touch, sorted, as a short summary for the change log: at most `limit`
/// paths, then "and N more". Elements inserted into or removed from an array count at the
/// array's path; an edit of the whole document is "(whole document)".
pub fn edit_summary(edits: &[crate::engine::Edit], limit: usize) -> String {
    use crate::engine::Edit;
    let paths: std::collections::BTreeSet<&str> = edits
        .iter()
        .map(|e| match e {
            Edit::Set(p, _) | Edit::Remove(p) | Edit::Splice { path: p, .. } => p.as_str(),
        })
        .map(|p| if p.is_empty() { "(whole document)" } else { p })
        .collect();
    let more = paths.len().saturating_sub(limit);
    let mut text = paths.into_iter().take(limit).collect::<Vec<_>>().join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// Who a local edit is by, for the change log.
pub(super) fn local_who(cfg: &Config) -> String {
    match cfg.address() {
        "" => "this device".to_string(),
        address => format!("{address} (this device)"),
    }
}

/// A local edit of an existing replica: `f` changes the document and says whether it changed
/// anything; the edit, its save and its change-log row commit together. `reach`: what of the
/// replica the edit needs, when it is not loaded here (see [`Store::update_doc_reaching`]; `f`
/// may then run twice, the first run's effects dropped).
fn edit(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    what: &str,
    reach: &[Reach],
    mut f: impl FnMut(&mut Document) -> Result<bool>,
) -> Result<()> {
    configured(cfg, name)?;
    if !store.has_doc(name)? {
        // Creating it here would fork the document: a peer's copy would be another document.
        return Err(AgentError::Other(format!(
            "no replica of {name:?} here yet: start it with `agent doc import {name} FILE`, \
             or receive it from a peer with `agent sync`"
        )));
    }
    let who = local_who(cfg);
    store.update_doc_reaching::<_, AgentError>(name, reach, |doc, tx| {
        if !f(doc)? {
            return Ok(((), Save::No));
        }
        Store::log_change(tx, name, &who, what)?;
        Ok(((), Save::Edited))
    })
}

fn list(cfg: &Config, store: &mut Store, json: bool) -> Result<String> {
    let mut rows = Vec::new();
    for d in &cfg.documents {
        let replica = if store.has_doc(&d.name)? {
            Some(store.read_doc(&d.name, |doc| (doc.id().to_string(), doc.version()))?)
        } else {
            None
        };
        rows.push((d, replica));
    }
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|(d, r)| {
                serde_json::json!({
                    "name": d.name,
                    "transport": match d.transport {
                        crate::config::TransportKind::Mail => "mail",
                        crate::config::TransportKind::Folder => "folder",
                    },
                    "peers": d.peers,
                    "replica": r.is_some(),
                    "id": r.as_ref().map(|(id, _)| id),
                    "version": r.as_ref().map(|(_, v)| v),
                })
            })
            .collect();
        return pretty(&list);
    }
    let mut out = String::new();
    for (d, r) in rows {
        match r {
            Some((id, v)) => out.push_str(&format!("{}\t{id}\tversion {v}\n", d.name)),
            None => out.push_str(&format!("{}\t-\tno replica here yet\n", d.name)),
        }
    }
    Ok(out)
}

fn get(cfg: &Config, store: &mut Store, name: &str, path: &str, json: bool) -> Result<String> {
    configured(cfg, name)?;
    let reach = [Reach::Value(path)];
    let (value, version) = store.read_doc_reaching(name, &reach, |d| (d.get(path), d.version()))?;
    let Some(value) = value? else {
        return Err(AgentError::Other(format!(
            "{name}: nothing at path {path:?} (see `agent doc get {name}` for the whole document)"
        )));
    };
    if json {
        return pretty(&serde_json::json!({
            "name": name, "path": path, "version": version, "value": value,
        }));
    }
    pretty(&value)
}

fn import(cfg: &Config, store: &mut Store, name: &str, json: &str) -> Result<String> {
    configured(cfg, name)?;
    let value: Value = serde_json::from_str(json).map_err(|e| {
        AgentError::Other(format!(
            "the file to import is not JSON ({e}); fix it there and import again"
        ))
    })?;
    let Value::Object(m) = &value else {
        return Err(AgentError::Other(
            "a document must be a JSON object ({...}) at its top".into(),
        ));
    };
    if !store.has_doc(name)? {
        let doc = Document::new(&value)?;
        store.create_doc(name, &doc, true)?;
        Store::log_change(store.conn(), name, &local_who(cfg), "import (created)")?;
        return Ok(format!("{name}: created (id {})\n", doc.id()));
    }
    let before = store.read_doc(name, |d| d.to_json())?;
    let what = format!("import: {}", changed_paths(&before, &value, 10));
    // The whole document: it is loaded whole already, for `before`.
    edit(cfg, store, name, &what, &[Reach::Value("")], |doc| {
        let key = |k: &str| path::render(&[path::Segment::Key(k.to_string())]);
        let old: Vec<String> = doc
            .to_json()
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for k in old.iter().filter(|k| !m.contains_key(*k)) {
            doc.remove(&key(k))?;
        }
        for (k, v) in m {
            if doc.get(&key(k))?.as_ref() != Some(v) {
                doc.update(&key(k), v.clone())?;
            }
        }
        Ok(true)
    })?;
    Ok(format!("{name}: replaced the content\n"))
}

fn move_element(
    cfg: &Config,
    store: &mut Store,
    name: &str,
    path: &str,
    from: usize,
    to: usize,
) -> Result<String> {
    let what = format!("move {path}[{from}] to [{to}]");
    let element = format!("{path}[{from}]");
    let reach = [Reach::Node(path), Reach::Value(&element)];
    edit(cfg, store, name, &what, &reach, |doc| {
        let len = doc.len(path)?;
        if from >= len || to >= len {
            return Err(AgentError::Other(format!(
                "{name}: {path} has {len} elements (indexes 0 to {}); cannot move [{from}] to [{to}]",
                len.saturating_sub(1)
            )));
        }
        if from == to {
            return Ok(false);
        }
        let value = doc.remove_at(path, from)?;
        doc.insert(path, to, value)?;
        Ok(true)
    })?;
    Ok(String::new())
}

fn log(cfg: &Config, store: &mut Store, name: &str, limit: usize, json: bool) -> Result<String> {
    configured(cfg, name)?;
    let entries = store.change_log(name, limit)?;
    if json {
        return pretty(&entries);
    }
    if entries.is_empty() {
        return Ok(format!("{name}: no changes recorded here yet\n"));
    }
    let mut out = String::new();
    for e in entries {
        let when = u64::try_from(e.at)
            .map(|ms| {
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
                )
                .to_string()
            })
            .unwrap_or_else(|_| e.at.to_string());
        out.push_str(&format!("{when}  {}  {}\n", e.who, e.paths));
    }
    Ok(out)
}

/// `agent doc adopt NAME --from PEER`: when two people each created a document of the same name,
/// one of them takes the other's. The peer's last mail (kept when it was quarantined) becomes our
/// replica, in one transaction that also drops the old replica's delivery state and queues the
/// acknowledgement that tells the peer we now follow their document. The old content is written
/// to a file in the state directory first, so nothing is lost.
fn adopt(cfg: &Config, store: &mut Store, name: &str, from: &str) -> Result<String> {
    let doc_cfg = configured(cfg, name)?;
    let peer = doc_cfg
        .peer(from)
        .ok_or_else(|| {
            AgentError::Other(format!(
                "{from} is not a peer of {name:?} (its peers: {})",
                doc_cfg.peers.join(", ")
            ))
        })?
        .clone();
    let (theirs, text) = store.fork(name, &peer)?.ok_or_else(|| {
        AgentError::Other(format!(
            "no other document named {name:?} has come from {peer}: `adopt` takes a peer's \
             document after their mail was quarantined as \"another document\" (see `agent status`)"
        ))
    })?;
    let changes = Changes::parse(&text)?;
    let doc = Document::from_changes(&changes)?;
    let mut out = String::new();
    if store.has_doc(name)? {
        let old = store.read_doc(name, |d| d.to_json())?;
        let backup = cfg.state_dir().join(format!(
            "{name}.before-adopt-{}.json",
            crate::store::now_ms()
        ));
        let text = serde_json::to_string_pretty(&old)
            .map_err(|e| AgentError::Other(format!("cannot write out {name:?}: {e}")))?;
        crate::config::write_private_file(&backup, (text + "\n").as_bytes()).map_err(|e| {
            AgentError::Other(format!(
                "cannot keep the old content in {}: {e}",
                backup.display()
            ))
        })?;
        out.push_str(&format!(
            "{name}: the previous content is kept in {}\n",
            backup.display()
        ));
    }
    let address = cfg.address();
    let sent_by = changes.sent_by();
    let who = local_who(cfg);
    store.replace_doc::<AgentError>(name, &doc, |tx| {
        Store::touch_peer(tx, name, &peer, PeerChange::Pin(sent_by.to_string()))?;
        Store::touch_peer(tx, name, &peer, PeerChange::Received)?;
        Store::log_change(
            tx,
            name,
            &who,
            &format!("adopt {peer}'s document (id {theirs})"),
        )?;
        let route = super::receive::Route {
            name,
            address,
            peers: &doc_cfg.peers,
        };
        super::receive::queue_ack(tx, &doc, &route, &peer, &[sent_by], None)
    })?;
    out.push_str(&format!(
        "{name}: now {peer}'s document (id {theirs}); a running agent acknowledges it to them\n"
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn changed_paths_names_what_differs() {
        let a = json!({"items": [{"done": false}, 2], "title": "x", "gone": 1});
        let b = json!({"items": [{"done": true}, 2], "title": "y", "new": [1]});
        assert_eq!(changed_paths(&a, &b, 10), "gone, items[0].done, new, title");
        assert_eq!(changed_paths(&a, &b, 2), "gone, items[0].done and 2 more");
        assert_eq!(changed_paths(&a, &a, 2), "");
        assert_eq!(
            changed_paths(&json!([1]), &json!([1, 2]), 2),
            "(whole document)"
        );
    }
}
