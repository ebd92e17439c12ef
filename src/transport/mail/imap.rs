//! IMAP: connecting (TLS, STARTTLS or plain), finding new agent mail by its header without
//! touching anything else, fetching it, moving it, and waiting with IDLE.

use async_imap::Session;
use futures::TryStreamExt;

use crate::config::{Encryption, Imap};
use crate::transport::mail::net::{MailStream, connect_tcp, tls_wrap};

pub type ImapSession = Session<MailStream>;

/// Connects and logs in.
pub async fn connect(cfg: &Imap, address: &str) -> Result<ImapSession, String> {
    let password = cfg.server().password("IMAP").map_err(|e| e.to_string())?;
    let tcp = connect_tcp(&cfg.host, cfg.port, "IMAP").await?;
    let tls = |tcp| tls_wrap(tcp, &cfg.host, cfg.port, cfg.ca_file.as_deref());
    let mut client = match cfg.encryption {
        Encryption::Tls => async_imap::Client::new(tls(tcp).await?),
        Encryption::None => async_imap::Client::new(MailStream::Plain(tcp)),
        Encryption::StartTls => {
            let mut plain = async_imap::Client::new(MailStream::Plain(tcp));
            plain
                .read_response()
                .await
                .map_err(|e| format!("IMAP greeting: {e}"))?
                .ok_or("the IMAP server closed the connection")?;
            plain
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|e| format!("IMAP STARTTLS refused: {e}"))?;
            let MailStream::Plain(tcp) = plain.into_inner() else {
                return Err("internal: STARTTLS on a TLS stream".into());
            };
            let upgraded = async_imap::Client::new(tls(tcp).await?);
            return login(upgraded, cfg, address, &password).await;
        }
    };
    client
        .read_response()
        .await
        .map_err(|e| format!("IMAP greeting: {e}"))?
        .ok_or("the IMAP server closed the connection")?;
    login(client, cfg, address, &password).await
}

async fn login(
    client: async_imap::Client<MailStream>,
    cfg: &Imap,
    address: &str,
    password: &str,
) -> Result<ImapSession, String> {
    let user = cfg.login.as_deref().unwrap_or(address);
    client
        .login(user, password)
        .await
        .map_err(|(e, _)| format!("IMAP login as {user} refused: {e}"))
}

/// Creates a folder unless it exists.
pub async fn ensure_folder(session: &mut ImapSession, name: &str) -> Result<(), String> {
    let exists = session
        .list(None, Some(name))
        .await
        .map_err(|e| format!("LIST {name}: {e}"))?
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| format!("LIST {name}: {e}"))?
        .iter()
        .any(|n| n.name() == name);
    if !exists {
        session
            .create(name)
            .await
            .map_err(|e| format!("cannot create folder {name}: {e}"))?;
    }
    Ok(())
}

/// Header blocks of messages from `from_uid` on: (uid, header bytes).
pub async fn headers_from(
    session: &mut ImapSession,
    from_uid: u32,
) -> Result<Vec<(u32, Vec<u8>)>, String> {
    let fetches: Vec<_> = session
        .uid_fetch(
            format!("{from_uid}:*"),
            "(UID RFC822.SIZE BODY.PEEK[HEADER])",
        )
        .await
        .map_err(|e| format!("fetching headers: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("fetching headers: {e}"))?;
    let mut out: Vec<(u32, Vec<u8>)> = fetches
        .iter()
        .filter_map(|f| Some((f.uid?, f.header()?.to_vec())))
        .filter(|(uid, _)| *uid >= from_uid)
        .collect();
    out.sort_by_key(|(u, _)| *u);
    Ok(out)
}

/// Whole messages by UID, in batches.
pub async fn bodies(
    session: &mut ImapSession,
    uids: &[u32],
) -> Result<Vec<(u32, Vec<u8>)>, String> {
    let mut out = Vec::new();
    for chunk in uids.chunks(200) {
        let set = chunk
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let fetches: Vec<_> = session
            .uid_fetch(&set, "(UID BODY.PEEK[])")
            .await
            .map_err(|e| format!("fetching messages: {e}"))?
            .try_collect()
            .await
            .map_err(|e| format!("fetching messages: {e}"))?;
        out.extend(
            fetches
                .iter()
                .filter_map(|f| Some((f.uid?, f.body()?.to_vec()))),
        );
    }
    Ok(out)
}

/// Moves one message to a folder (MOVE where offered, else COPY + \Deleted + UID EXPUNGE).
pub async fn move_message(
    session: &mut ImapSession,
    uid: u32,
    folder: &str,
    has_move: bool,
) -> Result<(), String> {
    let set = uid.to_string();
    if has_move {
        return session
            .uid_mv(&set, folder)
            .await
            .map_err(|e| format!("moving message {uid} to {folder}: {e}"));
    }
    session
        .uid_copy(&set, folder)
        .await
        .map_err(|e| format!("copying message {uid} to {folder}: {e}"))?;
    session
        .uid_store(&set, "+FLAGS.SILENT (\\Deleted)")
        .await
        .map_err(|e| format!("flagging message {uid}: {e}"))?
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| format!("flagging message {uid}: {e}"))?;
    session
        .uid_expunge(&set)
        .await
        .map_err(|e| format!("expunging message {uid}: {e}"))?
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| format!("expunging message {uid}: {e}"))?;
    Ok(())
}
