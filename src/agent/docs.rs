//! `agent doc …`: reading and editing documents by path. Edits are local changes like any other:
//! saved in one transaction, and a running agent sends them after the document's send delay.

use serde_json::Value;

use crate::agent::{AgentError, Result};
use crate::config::{Config, DocumentConfig};
use crate::engine::{Changes, Document};
use crate::store::{PeerChange, Save, Store};

/// One `agent doc` subcommand.
#[derive(Debug, Clone)]
pub enum DocCommand {
    List,
    Get {
        name: String,
        path: String,
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
    Import {
        name: String,
        json: String,
    },
    Export {
        name: String,
    },
    /// Replace our replica by a peer's document of the same name (both sides created it).
    Adopt {
        name: String,
        from: String,
    },
}

/// Parses a command-line value: JSON when it is JSON, otherwise the text as a string.
pub fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

fn configured<'a>(cfg: &'a Config, name: &str) -> Result<&'a DocumentConfig> {
    let Some(doc) = cfg.document(name) else {
        let names: Vec<&str> = cfg.documents.iter().map(|d| d.name.as_str()).collect();
        return Err(AgentError::Other(format!(
            "no document named {name:?} in {} (configured: {})",
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

/// Runs a `doc` subcommand and returns what to print.
pub fn doc_command(cfg: &Config, store: &mut Store, cmd: DocCommand) -> Result<String> {
    match cmd {
        DocCommand::List => {
            let mut out = String::new();
            for d in &cfg.documents {
                if store.has_doc(&d.name)? {
                    let (id, v) =
                        store.read_doc(&d.name, |doc| (doc.id().to_string(), doc.version()))?;
                    out.push_str(&format!("{}\t{id}\tversion {v}\n", d.name));
                } else {
                    out.push_str(&format!("{}\t-\tno replica here yet\n", d.name));
                }
            }
            Ok(out)
        }
        DocCommand::Get { name, path } => {
            configured(cfg, &name)?;
            let v = store.read_doc(&name, |d| d.get(&path))??;
            match v {
                Some(v) => Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"),
                None => Err(AgentError::Other(format!(
                    "{name}: nothing at path {path:?}"
                ))),
            }
        }
        DocCommand::Export { name } => {
            configured(cfg, &name)?;
            let v = store.read_doc(&name, |d| d.to_json())?;
            Ok(serde_json::to_string_pretty(&v).unwrap_or_default() + "\n")
        }
        DocCommand::Import { name, json } => {
            configured(cfg, &name)?;
            let value: Value = serde_json::from_str(&json)
                .map_err(|e| AgentError::Other(format!("the file to import is not JSON: {e}")))?;
            if store.has_doc(&name)? {
                store.update_doc::<_, AgentError>(&name, |doc, _| {
                    let Value::Object(m) = &value else {
                        return Err(AgentError::Other("a document must be a JSON object".into()));
                    };
                    for key in doc
                        .to_json()
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>())
                        .unwrap_or_default()
                    {
                        if !m.contains_key(&key) {
                            doc.remove(&crate::engine::path::render(&[
                                crate::engine::path::Segment::Key(key),
                            ]))?;
                        }
                    }
                    for (k, v) in m {
                        let p = crate::engine::path::render(&[crate::engine::path::Segment::Key(
                            k.clone(),
                        )]);
                        if doc.get(&p)?.as_ref() != Some(v) {
                            doc.set(&p, v.clone())?;
                        }
                    }
                    Ok(((), Save::Edited))
                })?;
                Ok(format!("{name}: replaced the content\n"))
            } else {
                let doc = Document::new(&value)?;
                store.create_doc(&name, &doc, true)?;
                Ok(format!("{name}: created (id {})\n", doc.id()))
            }
        }
        DocCommand::Set { name, path, value } => {
            configured(cfg, &name)?;
            if !store.has_doc(&name)? {
                // Creating it here would fork the document: a peer's copy would be another document.
                return Err(AgentError::Other(format!(
                    "no replica of {name:?} here yet: start it with `agent doc import {name} FILE`, \
                     or receive it from a peer with `agent sync`"
                )));
            }
            let value = parse_value(&value);
            store.update_doc::<_, AgentError>(&name, |doc, _| {
                doc.set(&path, value)?;
                Ok(((), Save::Edited))
            })?;
            Ok(String::new())
        }
        DocCommand::Adopt { name, from } => adopt(cfg, store, &name, &from),
        DocCommand::Rm { name, path } => {
            configured(cfg, &name)?;
            let removed = store.update_doc::<_, AgentError>(&name, |doc, _| {
                let r = doc.remove(&path)?;
                let save = if r.is_some() { Save::Edited } else { Save::No };
                Ok((r, save))
            })?;
            match removed {
                Some(_) => Ok(String::new()),
                None => Err(AgentError::Other(format!(
                    "{name}: nothing at path {path:?}"
                ))),
            }
        }
    }
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
        std::fs::write(&backup, text + "\n").map_err(|e| {
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
    store.replace_doc::<AgentError>(name, &doc, |tx| {
        Store::touch_peer(tx, name, &peer, PeerChange::Pin(sent_by.to_string()))?;
        Store::touch_peer(tx, name, &peer, PeerChange::Received)?;
        super::receive::queue_ack(tx, &doc, name, &peer, sent_by, None, address)
    })?;
    out.push_str(&format!(
        "{name}: now {peer}'s document (id {theirs}); a running agent acknowledges it to them\n"
    ));
    Ok(out)
}
