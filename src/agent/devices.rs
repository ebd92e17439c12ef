//! `agent device`: adding a device of the same person (the account's key and pinned peer keys
//! go to the own address, encrypted with a one-time setup code), joining with that code,
//! listing the devices of the account and of each peer, and removing a lost one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::agent::{AgentError, Result, account_key, new_message_id, open_store};
use crate::config::{Config, TransportKind};
use crate::engine::ClientId;
use crate::store::Store;
use crate::transport::mail::openpgp::{PublicKey, SecretKey};
use crate::transport::mail::{imap, setup, smtp};

/// What the setup message carries, inside the encryption with the code.
#[derive(Debug, Serialize, Deserialize)]
struct SetupPayload {
    /// The marker `"minisync-setup"`.
    minisync: String,
    address: String,
    /// The account's ASCII-armored secret key.
    key: String,
    /// The peer keys pinned on the sending device, so that the new device trusts what it does.
    peers: Vec<SetupPeer>,
}

/// One pinned peer key.
#[derive(Debug, Serialize, Deserialize)]
struct SetupPeer {
    address: String,
    fingerprint: String,
    /// The binary public key, base64.
    key: String,
    trust: String,
}

const SETUP_MARKER: &str = "minisync-setup";

/// A checked setup payload: the account key, and each pinned peer key with its binary form.
type Imported = (SecretKey, Vec<(SetupPeer, Vec<u8>)>);

fn other(e: impl std::fmt::Display) -> AgentError {
    AgentError::Other(e.to_string())
}

fn account(cfg: &Config) -> Result<&crate::config::Account> {
    cfg.account.as_ref().ok_or_else(|| {
        other("no [account] in the config: devices share a mail account, add it first")
    })
}

/// `agent device add`: sends the account's key and pinned peer keys to the own address,
/// encrypted with a new setup code, and returns the code (shown once, never sent).
///
/// # Errors
///
/// No `[account]`, the state cannot be read, or the SMTP server does not take the message.
pub async fn device_add(cfg: &Config) -> Result<String> {
    let account = account(cfg)?;
    let store = open_store(cfg)?;
    let key = account_key(cfg, &store)?;
    let mut peers = Vec::new();
    for k in store.peer_keys()? {
        let full = store.peer_key(&k.address)?;
        if let (Some(fingerprint), Some(bytes)) = (full.fingerprint, full.key) {
            peers.push(SetupPeer {
                address: full.address,
                fingerprint,
                key: STANDARD.encode(bytes),
                trust: full.trust.unwrap_or_default(),
            });
        }
    }
    let payload = SetupPayload {
        minisync: SETUP_MARKER.into(),
        address: account.address.clone(),
        key: key.to_armored().map_err(other)?,
        peers,
    };
    let json = serde_json::to_vec(&payload).map_err(other)?;
    let code = setup::new_code();
    let mid = new_message_id(&account.address);
    let (env, raw) = setup::build(&account.address, &mid, &json, &code).map_err(other)?;
    let smtp = smtp::Smtp::new(&account.smtp, &account.address).map_err(other)?;
    smtp.send(&env, &raw)
        .await
        .map_err(|e| other(format!("sending the setup message: {}", e.error)))?;
    Ok(code)
}

/// Reads and checks a setup payload: the marker, the address, the key (its own and each
/// peer's fingerprint).
fn read_payload(bytes: &[u8], address: &str) -> Result<Imported> {
    let p: SetupPayload = serde_json::from_slice(bytes)
        .map_err(|e| other(format!("the setup message's content is not readable: {e}")))?;
    if p.minisync != SETUP_MARKER {
        return Err(other("the setup message's content is not a minisync setup"));
    }
    if !p.address.eq_ignore_ascii_case(address) {
        return Err(other(format!(
            "the setup message is for {}, this device's account is {address}",
            p.address
        )));
    }
    let key = SecretKey::from_armored(&p.key)
        .map_err(|e| other(format!("the account key in the setup message: {e}")))?;
    let mut peers = Vec::new();
    for peer in p.peers {
        let bytes = STANDARD.decode(&peer.key).map_err(|e| {
            other(format!(
                "the key of {} in the setup message: {e}",
                peer.address
            ))
        })?;
        let public = PublicKey::from_bytes(&bytes).map_err(|e| {
            other(format!(
                "the key of {} in the setup message: {e}",
                peer.address
            ))
        })?;
        if public.fingerprint() != peer.fingerprint {
            return Err(other(format!(
                "the key of {} in the setup message does not have the fingerprint it names",
                peer.address
            )));
        }
        peers.push((peer, bytes));
    }
    Ok((key, peers))
}

/// Opens the first of the setup messages (newest first) that `code` opens: its UID and content.
/// None opening: the newest one's error (several: how many were tried).
fn open_any(found: &[(u32, Vec<u8>)], address: &str, code: &str) -> Result<(u32, Vec<u8>)> {
    let mut first_error = None;
    for (uid, raw) in found {
        match setup::open(raw, address, code) {
            Ok(payload) => return Ok((*uid, payload)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let error = first_error.unwrap_or_else(|| "no setup message".to_string());
    Err(other(if found.len() > 1 {
        format!(
            "{error} (none of the {} setup messages opens with it)",
            found.len()
        )
    } else {
        error
    }))
}

/// `agent device join --code CODE`: finds the setup message the code opens (each `agent device
/// add` sends one with its own code; newest tried first) in the mailbox, opens it
/// with the code, takes the account key and the pinned peer keys in one transaction, asks the
/// account's other devices for every mail document configured here (the next pass sends the
/// request), and deletes the setup message. Returns what was done, in words.
///
/// # Errors
///
/// No `[account]`; this state already holds documents (join a new device only); no setup
/// message; a wrong code or an unreadable message (then nothing is imported); IMAP or the store
/// fails.
pub async fn device_join(cfg: &Config, code: &str) -> Result<String> {
    let account = account(cfg)?;
    setup::normalize_code(code).map_err(other)?;
    let store = open_store(cfg)?;
    let held = store.doc_names()?;
    if !held.is_empty() {
        return Err(other(format!(
            "this device already holds documents ({}): only a new device joins (a fresh state \
             directory), since its own key may already be known to peers",
            held.join(", ")
        )));
    }
    let mut session = setup::connect(account).await.map_err(other)?;
    let caps = imap::Caps::of(&mut session).await.map_err(other)?;
    let found = setup::fetch_all(&mut session, &account.imap.mailbox)
        .await
        .map_err(other)?;
    let (uid, payload) = open_any(&found, &account.address, code)?;
    let (key, peers) = read_payload(&payload, &account.address)?;
    let me = store.this_device()?;
    let sql = |e: rusqlite::Error| AgentError::Store(e.into());
    let tx = store.conn().unchecked_transaction().map_err(sql)?;
    Store::replace_account_key(&tx, &account.address, &key.to_armored().map_err(other)?)?;
    for (peer, bytes) in &peers {
        store.pin_peer_key(&peer.address, &peer.fingerprint, bytes, &peer.trust)?;
    }
    for d in cfg
        .documents
        .iter()
        .filter(|d| d.transport == TransportKind::Mail)
    {
        Store::set_want(&tx, &d.name, &me.id, 0)?;
    }
    tx.commit().map_err(sql)?;
    if let Err(e) = imap::delete(&mut session, &[uid], caps.uidplus).await {
        tracing::warn!(error = %e, "the setup message could not be deleted; delete it by hand");
    }
    let _ = session.logout().await;
    Ok(format!(
        "joined {} as device {} ({}): account key {}, {} pinned peer key(s). The next `agent \
         sync` (or the running service) asks your other devices for every document in the config",
        account.address,
        me.id,
        me.name,
        key.fingerprint(),
        peers.len()
    ))
}

/// One document's replica on one device, as this device knows it.
#[derive(Debug, Serialize)]
pub struct DeviceDoc {
    pub doc: String,
    pub client_id: String,
    /// That replica's version this device last merged.
    pub last_received: u64,
    /// This device's version that replica is known to hold.
    pub last_acknowledged: u64,
    pub last_heard: Option<String>,
}

/// Mail of a removed device, refused: how many, and when the last came.
#[derive(Debug, Serialize)]
pub struct Refused {
    pub count: u64,
    pub last: Option<String>,
}

/// One device behind an address (the account's own, or a peer's).
#[derive(Debug, Serialize)]
pub struct DeviceStatus {
    pub address: String,
    pub device: String,
    pub name: Option<String>,
    pub this_device: bool,
    /// When it was removed (`agent device remove`), if it was; for this device, when another
    /// device of the account removed it (then nothing is sent from here).
    pub removed: Option<String>,
    /// The mail a removed device still sent, refused here.
    pub refused: Option<Refused>,
    pub last_heard: Option<String>,
    pub documents: Vec<DeviceDoc>,
}

/// Every device of the account (this one first) and of each configured peer, with what each
/// replica has acknowledged and when it was last heard from.
///
/// # Errors
///
/// A store error.
pub fn device_status(cfg: &Config, store: &mut Store) -> crate::store::Result<Vec<DeviceStatus>> {
    let mut out = Vec::new();
    let mut addresses: Vec<String> = cfg.peers.iter().map(|p| p.address.clone()).collect();
    if let Some(a) = &cfg.account {
        addresses.insert(0, a.address.clone());
        let me = store.this_device()?;
        let mut documents = Vec::new();
        for d in &cfg.documents {
            if store.has_doc(&d.name)? {
                documents.push(DeviceDoc {
                    doc: d.name.clone(),
                    client_id: store.read_doc(&d.name, |doc| doc.client_id().to_string())?,
                    last_received: 0,
                    last_acknowledged: 0,
                    last_heard: None,
                });
            }
        }
        // Removed by another device of the account (heard in its mail).
        let removed = store
            .devices(&a.address)?
            .into_iter()
            .find(|r| r.device == me.id)
            .and_then(|r| super::status::when(r.retired_at));
        out.push(DeviceStatus {
            address: a.address.clone(),
            device: me.id,
            name: Some(me.name),
            this_device: true,
            removed,
            refused: None,
            last_heard: None,
            documents,
        });
    }
    let me = store.this_device()?;
    for address in addresses {
        for row in store.devices(&address)? {
            if row.device == me.id {
                continue;
            }
            let mut documents = Vec::new();
            for d in &cfg.documents {
                for c in store.device_clients(&d.name, &address)? {
                    if c.device == row.device {
                        documents.push(replica_status(store, &d.name, &c)?);
                    }
                }
            }
            let refused = store
                .refused_of(&row.address, &row.device)?
                .map(|(count, at)| Refused {
                    count,
                    last: super::status::when(Some(at)),
                });
            out.push(DeviceStatus {
                address: row.address,
                device: row.device,
                name: row.name,
                this_device: false,
                refused,
                removed: super::status::when(row.retired_at),
                last_heard: super::status::when(row.last_heard),
                documents,
            });
        }
    }
    Ok(out)
}

/// What this device's replica of `doc` knows of another device's replica.
fn replica_status(
    store: &mut Store,
    doc: &str,
    c: &crate::store::DeviceClient,
) -> crate::store::Result<DeviceDoc> {
    let (last_received, last_acknowledged) = match ClientId::parse(&c.client_id) {
        Ok(id) if store.has_doc(doc)? => store.read_doc(doc, |d| {
            d.peer(id)
                .map_or((0, 0), |p| (p.last_received, p.last_acknowledged))
        })?,
        _ => (0, 0),
    };
    Ok(DeviceDoc {
        doc: doc.to_string(),
        client_id: c.client_id.clone(),
        last_received,
        last_acknowledged,
        last_heard: super::status::when(Some(c.last_heard)),
    })
}

/// The device lines of `agent device list` and `agent status`.
pub fn fmt_devices(devices: &[DeviceStatus], f: &mut dyn std::fmt::Write) -> std::fmt::Result {
    for d in devices {
        writeln!(
            f,
            "device {} of {}{}{}{}: last heard {}",
            d.device,
            d.address,
            d.name
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            if d.this_device { ", this device" } else { "" },
            match (&d.removed, d.this_device) {
                (Some(r), true) => format!(
                    ", REMOVED {r} by another device of the account: nothing is sent from here"
                ),
                (Some(r), false) => format!(", REMOVED {r}"),
                (None, _) => String::new(),
            },
            if d.this_device {
                "now"
            } else {
                d.last_heard.as_deref().unwrap_or("never")
            }
        )?;
        if let Some(r) = &d.refused {
            writeln!(
                f,
                "  still sends mail: {} refused, the last {} (if it was lost or stolen, change \
                 the mail account's password)",
                r.count,
                r.last.as_deref().unwrap_or("?")
            )?;
        }
        for doc in &d.documents {
            if d.this_device {
                writeln!(f, "  {}: client {}", doc.doc, doc.client_id)?;
            } else {
                writeln!(
                    f,
                    "  {}: client {}, received {} acknowledged {}, last heard {}",
                    doc.doc,
                    doc.client_id,
                    doc.last_received,
                    doc.last_acknowledged,
                    doc.last_heard.as_deref().unwrap_or("never")
                )?;
            }
        }
    }
    Ok(())
}

/// Puts in the outbox, for every mail document held here, an acknowledgement (no changes) to
/// each of its peers and to the own address: every mail names the
/// removed devices (`Minisync-Retired`), so the removal goes out with the next pass instead of
/// waiting for the next edit.
fn queue_removal_notices(cfg: &Config, store: &mut Store, own: &str) -> Result<()> {
    for d in cfg
        .documents
        .iter()
        .filter(|d| d.transport == TransportKind::Mail)
    {
        if !store.has_doc(&d.name)? {
            continue;
        }
        // The own address too: the other devices learn it, and so does the removed one, which
        // then stops sending.
        let mut to = d.peers.clone();
        to.push(own.to_string());
        let (body, version) = store.read_doc(&d.name, |doc| {
            (super::health::bare_ack(doc, &d.peers), doc.version())
        })?;
        for peer in to {
            let item = crate::store::OutItem {
                id: 0,
                doc: d.name.clone(),
                peer,
                message_id: new_message_id(own),
                in_reply_to: None,
                body: body.clone(),
                ack_only: true,
                version,
                attempts: 0,
            };
            Store::enqueue(store.conn(), &item)?;
        }
    }
    Ok(())
}

/// `agent device remove ID`: retires one of the account's other devices. Nobody waits for its
/// acknowledgements any more, its mail is refused, and every mail this device sends from now on
/// names it as removed, so that the account's other devices and the peers do the same.
///
/// # Errors
///
/// No `[account]`, ID is this device or not a device of the account known here, or the store
/// fails.
pub fn device_remove(cfg: &Config, id: &str) -> Result<String> {
    let account = account(cfg)?;
    let mut store = open_store(cfg)?;
    let me = store.this_device()?;
    if id == me.id {
        return Err(other(format!(
            "{id} is this device: remove it from one of your other devices"
        )));
    }
    let known = store.devices(&account.address)?;
    let Some(row) = known.iter().find(|d| d.device == id) else {
        let ids: Vec<&str> = known.iter().map(|d| d.device.as_str()).collect();
        return Err(other(format!(
            "no device {id:?} of {} is known here (known: {}; see `agent device list`)",
            account.address,
            if ids.is_empty() {
                "none".to_string()
            } else {
                ids.join(", ")
            }
        )));
    };
    if row.retired_at.is_some() {
        queue_removal_notices(cfg, &mut store, &account.address)?;
        return Ok(format!(
            "device {id} was removed already; your other devices, your peers and the removed \
             device itself are told again with the next pass"
        ));
    }
    Store::retire_devices(store.conn(), &account.address, &[id.to_string()])?;
    queue_removal_notices(cfg, &mut store, &account.address)?;
    Ok(format!(
        "removed device {id}{}: nobody waits for its acknowledgements any more and its mail is \
         refused; your other devices and your peers learn it with the next `agent sync` (or \
         pass of the running service). It still holds \
         the account key: change your mail password so that it cannot read or send mail",
        row.name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    ))
}

impl super::Agent {
    /// When another device of the account removed this one (`agent device remove`, heard in
    /// its mail to the own address): the error a pass reports instead of sending, since every
    /// other replica refuses this device's mail.
    pub(super) fn removed_from_account(&self) -> crate::store::Result<Option<String>> {
        let Some(own) = self.cfg.account.as_ref().map(|a| a.address.as_str()) else {
            return Ok(None);
        };
        let me = self.store.this_device()?;
        Ok(self.store.is_retired(own, &me.id)?.then(|| {
            format!(
                "this device ({}) was removed from {own} by another of its devices (`agent \
                 device remove`): its mail is refused, so nothing is sent. Its documents stay \
                 here (`agent doc export`); to use this machine again, start a new state and \
                 join it with `agent device add` / `agent device join`",
                me.id
            )
        }))
    }
}
