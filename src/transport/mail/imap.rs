//! IMAP: connecting (TLS, STARTTLS or plain), finding new agent mail by its header without
//! touching anything else, fetching it, moving it, and waiting with IDLE.

use async_imap::Session;
use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, Status};
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

/// What a command returned, and whether the server announced new mail meanwhile.
pub struct Replies<T> {
    pub items: Vec<T>,
    pub news: bool,
}

/// Runs a command and reads its replies here, handing each untagged one to `each`; fails unless
/// the command ends in OK. async-imap's `uid_search` and `uid_fetch` end at the tagged reply
/// without looking at it, so a refused command (`NO`) reads as an empty or partial result
/// (chatmail/async-imap#146). Taken at face value, that would move the cursor past agent mail
/// that is still waiting, or hide a message the server cannot read.
async fn checked<T>(
    session: &mut ImapSession,
    command: &str,
    mut each: impl FnMut(&Response<'_>, &mut Vec<T>),
) -> Result<Replies<T>, String> {
    let short: String = command.chars().take(60).collect();
    let fail = |e: &dyn std::fmt::Display| format!("{short}: {e}");
    let tag = session.run_command(command).await.map_err(|e| fail(&e))?;
    let mut out = Replies {
        items: Vec::new(),
        news: false,
    };
    loop {
        let reply = session
            .read_response()
            .await
            .map_err(|e| fail(&e))?
            .ok_or_else(|| fail(&"the server closed the connection"))?;
        match reply.parsed() {
            Response::MailboxData(MailboxDatum::Exists(_) | MailboxDatum::Recent(_)) => {
                out.news = true
            }
            Response::Done {
                tag: t,
                status,
                information,
                ..
            } if *t == tag => {
                return match status {
                    Status::Ok => Ok(out),
                    _ => Err(fail(&format!(
                        "{status:?} {}",
                        information.as_deref().unwrap_or("")
                    ))),
                };
            }
            Response::Data {
                status: Status::Bye,
                information,
                ..
            } => {
                return Err(fail(&format!(
                    "BYE {}",
                    information.as_deref().unwrap_or("")
                )));
            }
            other => each(other, &mut out.items),
        }
    }
}

/// UIDs from `from_uid` on of messages carrying `header`, found by the server (`UID SEARCH
/// HEADER`), so that no other mail is downloaded. Fails as a whole if the server cannot read one
/// of the messages.
pub async fn search_header(
    session: &mut ImapSession,
    from_uid: u32,
    header: &str,
) -> Result<Replies<u32>, String> {
    search(
        session,
        &format!("UID {from_uid}:* HEADER {header} \"\""),
        from_uid,
    )
    .await
}

/// Agent mail (carrying `header`) that arrived in the selected folder more than `age` ago. Uses
/// `OLDER` (RFC 5032 WITHIN) when the server has it, else `BEFORE` a date (whole days).
pub async fn older_than(
    session: &mut ImapSession,
    header: &str,
    age: std::time::Duration,
    within: bool,
) -> Result<Vec<u32>, String> {
    let when = if within {
        format!("OLDER {}", age.as_secs().max(1))
    } else {
        format!("BEFORE {}", imap_date(std::time::SystemTime::now() - age))
    };
    Ok(
        search(session, &format!("UID 1:* {when} HEADER {header} \"\""), 1)
            .await?
            .items,
    )
}

/// An IMAP date (`22-Nov-2026`).
fn imap_date(t: std::time::SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let text = humantime::format_rfc3339_seconds(t).to_string(); // 2026-11-22T10:00:00Z
    let (y, m, d) = (&text[0..4], &text[5..7], &text[8..10]);
    let month = m.parse::<usize>().map_or("Jan", |m| MONTHS[(m + 11) % 12]);
    format!("{d}-{month}-{y}")
}

/// Flags messages deleted and expunges them (only those, with UIDPLUS; the whole folder's
/// deleted messages otherwise, which in the agent's own folder are only ever its own).
pub async fn delete(session: &mut ImapSession, uids: &[u32], uidplus: bool) -> Result<(), String> {
    for batch in uids.chunks(500) {
        let set = batch
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",");
        checked::<()>(
            session,
            &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
            |_, _| {},
        )
        .await?;
        let expunge = if uidplus {
            format!("UID EXPUNGE {set}")
        } else {
            "EXPUNGE".to_string()
        };
        checked::<()>(session, &expunge, |_, _| {}).await?;
    }
    Ok(())
}

/// Every UID from `from_uid` on (from the index; no message is read).
pub async fn uids_from(session: &mut ImapSession, from_uid: u32) -> Result<Replies<u32>, String> {
    search(session, &format!("UID {from_uid}:*"), from_uid).await
}

async fn search(
    session: &mut ImapSession,
    query: &str,
    from_uid: u32,
) -> Result<Replies<u32>, String> {
    let mut found = checked(session, &format!("UID SEARCH {query}"), |r, uids| {
        if let Response::MailboxData(MailboxDatum::Search(ids)) = r {
            uids.extend(ids);
        }
    })
    .await?;
    // `n:*` also matches the last message when n is past it.
    found.items.retain(|u| *u >= from_uid);
    found.items.sort_unstable();
    Ok(found)
}

/// Which part of a message to fetch.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    Header,
    Whole,
}

/// The header block or the whole of each message in `uids`: (uid, bytes), in UID order. Messages
/// expunged meanwhile are simply missing; a message the server cannot read fails the command.
pub async fn fetch(
    session: &mut ImapSession,
    uids: &[u32],
    part: Part,
) -> Result<Replies<(u32, Vec<u8>)>, String> {
    let set = uids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let query = match part {
        Part::Header => "BODY.PEEK[HEADER]",
        Part::Whole => "BODY.PEEK[]",
    };
    let mut got = checked(
        session,
        &format!("UID FETCH {set} (UID {query})"),
        |r, out| {
            if let Response::Fetch(_, attrs) = r {
                let uid = attrs.iter().find_map(|a| match a {
                    AttributeValue::Uid(u) => Some(*u),
                    _ => None,
                });
                let data = attrs.iter().find_map(|a| match a {
                    AttributeValue::BodySection { data, .. } => data.as_deref(),
                    _ => None,
                });
                if let (Some(uid), Some(data)) = (uid, data) {
                    out.push((uid, data.to_vec()));
                }
            }
        },
    )
    .await?;
    got.items.retain(|(uid, _)| uids.contains(uid));
    got.items.sort_by_key(|(u, _)| *u);
    Ok(got)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imap_dates_are_day_month_name_year() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(imap_date(at(1_795_357_331)), "22-Nov-2026");
        assert_eq!(imap_date(at(0)), "01-Jan-1970");
        assert_eq!(imap_date(at(951_782_400)), "29-Feb-2000");
    }
}
