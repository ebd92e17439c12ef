//! IMAP: connecting (TLS, STARTTLS or plain), finding new agent mail by its header without
//! touching anything else, fetching it, moving it, and waiting with IDLE.

use async_imap::Session;
use async_imap::imap_proto::{AttributeValue, MailboxDatum, Response, Status};
use futures::TryStreamExt;

use crate::config::{Encryption, Imap};
use crate::transport::mail::envelope;
use crate::transport::mail::net::{MailStream, connect_tcp, port_hint, step, tls_wrap};

pub type ImapSession = Session<MailStream>;

/// Connects and logs in.
pub async fn connect(cfg: &Imap, address: &str) -> Result<ImapSession, String> {
    connect_showing(cfg, address, &|step| tracing::debug!(step, "IMAP")).await
}

/// Connects and logs in, each step (TCP, greeting, TLS, login) bounded by the configured
/// `timeout` and announced to `progress` (`agent check` prints them).
pub async fn connect_showing(
    cfg: &Imap,
    address: &str,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<ImapSession, String> {
    let password = cfg.server().password("IMAP").map_err(|e| e.to_string())?;
    let (host, port, limit) = (&cfg.host, cfg.port, cfg.timeout);
    let hint = port_hint(port, cfg.encryption == Encryption::Tls);
    let hint = Some(hint.as_str());
    let tcp = step(
        &format!("IMAP: connecting to {host}:{port}"),
        limit,
        None,
        progress,
        connect_tcp(host, port, "IMAP"),
    )
    .await?;
    let tls = |tcp| {
        step(
            "IMAP: TLS handshake",
            limit,
            hint,
            progress,
            tls_wrap(tcp, host, port, cfg.ca_file.as_deref()),
        )
    };
    let mut client = match cfg.encryption {
        Encryption::Tls => async_imap::Client::new(tls(tcp).await?),
        Encryption::None => async_imap::Client::new(MailStream::Plain(tcp)),
        Encryption::StartTls => {
            let mut plain = async_imap::Client::new(MailStream::Plain(tcp));
            greeting(&mut plain, limit, hint, progress).await?;
            step("IMAP: STARTTLS", limit, hint, progress, async {
                plain
                    .run_command_and_check_ok("STARTTLS", None)
                    .await
                    .map_err(|e| format!("IMAP STARTTLS refused: {}", said(&e)))
            })
            .await?;
            let MailStream::Plain(tcp) = plain.into_inner() else {
                return Err("internal: STARTTLS on a TLS stream".into());
            };
            let upgraded = async_imap::Client::new(tls(tcp).await?);
            return login(upgraded, cfg, address, &password, progress).await;
        }
    };
    greeting(&mut client, limit, hint, progress).await?;
    login(client, cfg, address, &password, progress).await
}

/// Waits for the server's first line (`* OK ...`).
async fn greeting(
    client: &mut async_imap::Client<MailStream>,
    limit: std::time::Duration,
    hint: Option<&str>,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<(), String> {
    step(
        "IMAP: waiting for the greeting",
        limit,
        hint,
        progress,
        async {
            client
                .read_response()
                .await
                .map_err(|e| format!("IMAP greeting: {}", said_io(&e)))?
                .ok_or_else(|| "the IMAP server closed the connection".to_string())
                .map(|_| ())
        },
    )
    .await
}

async fn login(
    client: async_imap::Client<MailStream>,
    cfg: &Imap,
    address: &str,
    password: &str,
    progress: &(dyn Fn(&str) + Send + Sync),
) -> Result<ImapSession, String> {
    let user = cfg.login.as_deref().unwrap_or(address);
    step(
        &format!("IMAP: logging in as {user}"),
        cfg.timeout,
        None,
        progress,
        async {
            client
                .login(user, password)
                .await
                .map_err(|(e, _)| format!("IMAP login as {user} refused: {}", said(&e)))
        },
    )
    .await
}

/// An async-imap error as a sentence: a reply that is not IMAP at all is said so (its parse error
/// would show raw bytes and parser codes), the rest as async-imap words it.
pub fn said(e: &async_imap::error::Error) -> String {
    match e {
        async_imap::error::Error::Parse(_) => {
            "the server's answer is not IMAP (is this the IMAP port, with the right encryption?)"
                .to_string()
        }
        async_imap::error::Error::No(s) => format!("the server answered NO: {}", server_text(s)),
        async_imap::error::Error::Bad(s) => format!("the server answered BAD: {}", server_text(s)),
        other => other.to_string(),
    }
}

/// The server's own words from async-imap's `code: Some(..), info: Some("..")` (debug text of
/// the parsed reply): the information, with the response code after it when there is one.
fn server_text(s: &str) -> String {
    let info = s
        .split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.strip_suffix("\")"))
        .map(|i| i.replace("\\\"", "\"").replace("\\\\", "\\"));
    let code = s
        .strip_prefix("code: Some(")
        .and_then(|rest| rest.split_once("), info:"))
        .map(|(c, _)| c);
    match (info, code) {
        (Some(i), Some(c)) => format!("{} ({c})", i.trim()),
        (Some(i), None) => i.trim().to_string(),
        (None, _) => s.to_string(),
    }
}

/// An I/O error while reading a reply, as a sentence: async-imap reports a reply it cannot parse as
/// an I/O error carrying its parser's debug text ("Error(Error { input: [...] }) during parsing").
fn said_io(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::InvalidData || e.to_string().contains("during parsing") {
        "the server's answer is not IMAP (is this the IMAP port, with the right encryption?)".into()
    } else {
        e.to_string()
    }
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
                let word = match status {
                    Status::Ok => return Ok(out),
                    Status::No => "NO",
                    Status::Bad => "BAD",
                    _ => "neither OK nor NO",
                };
                return Err(fail(&format!(
                    "refused by the server: {word} {}",
                    information.as_deref().unwrap_or("")
                )));
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

/// Agent mail that arrived in the selected folder more than `age` ago. The server finds what is
/// old (`OLDER`, RFC 5032 WITHIN, when it has it, else `BEFORE` a date: whole days); the agent
/// reads the header of each itself rather than ask for it in the search, which some servers
/// answer wrongly (see [`check_header_search`]).
pub async fn older_than(
    session: &mut ImapSession,
    age: std::time::Duration,
    within: bool,
) -> Result<Vec<u32>, String> {
    let when = if within {
        format!("OLDER {}", age.as_secs().max(1))
    } else {
        format!("BEFORE {}", imap_date(std::time::SystemTime::now() - age))
    };
    let old = search(session, &format!("UID 1:* {when}"), 1).await?.items;
    // In the processed folder: what it announces is not news of the watched mailbox.
    Ok(only_agent_mail(session, &old).await?.items)
}

/// `agent check`: whether `UID SEARCH HEADER Minisync-Version ""` answers only messages that
/// carry the header (some servers ignore the empty value and answer every message). The agent
/// does not rely on it: it reads the header of every message it may touch itself. Returns whether
/// the answer was right, and what to say.
pub async fn check_header_search(session: &mut ImapSession) -> Result<(bool, String), String> {
    let header = envelope::VERSION_HEADER;
    let found = match search(session, &format!("UID 1:* HEADER {header} \"\""), 1).await {
        Ok(found) => found.items,
        Err(e) => {
            let text = format!("refused ({e}); not needed: the agent reads every header itself");
            return Ok((false, text));
        }
    };
    let sample = &found[..found.len().min(FETCH_CHECK)];
    let ours = only_agent_mail(session, sample).await?.items;
    let wrong = sample.len() - ours.len();
    let text = match (sample.len(), wrong) {
        (0, _) => "nothing to try it on (no agent mail here); not needed: the agent reads every \
                   header itself"
            .to_string(),
        (n, 0) => {
            format!("yes (right on {n} messages); the agent reads every header itself anyway")
        }
        (n, wrong) => format!(
            "answers wrongly ({wrong} of {n} messages found lack the header); not needed: the \
             agent reads every header itself and moves or deletes only messages that carry it"
        ),
    };
    Ok((wrong == 0, text))
}

/// Messages whose header `agent check` reads to try the server's header search.
const FETCH_CHECK: usize = 200;

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

/// What the server announced in CAPABILITY, of what the agent uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub idle: bool,
    pub r#move: bool,
    pub uidplus: bool,
    pub within: bool,
}

impl Caps {
    /// Asks the server.
    pub async fn of(session: &mut ImapSession) -> Result<Caps, String> {
        let caps = session
            .capabilities()
            .await
            .map_err(|e| format!("CAPABILITY: {e}"))?;
        Ok(Caps {
            idle: caps.has_str("IDLE"),
            r#move: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
            within: caps.has_str("WITHIN"),
        })
    }
}

/// A mailbox name as an IMAP quoted string (which cannot hold a line break).
fn quoted(name: &str) -> Result<String, String> {
    if name.contains(['\r', '\n']) {
        return Err(format!("folder name {name:?} contains a line break"));
    }
    Ok(format!(
        "\"{}\"",
        name.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

/// A UID set (`1,5,7`).
fn uid_set(uids: &[u32]) -> String {
    uids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs a command that answers nothing the agent needs; fails unless it ends in OK. Returns
/// whether the server announced new mail (EXISTS, RECENT) meanwhile: the server says so once,
/// in whatever reply comes next, so dropping it would leave that mail unread until the next
/// timed pass.
async fn command(session: &mut ImapSession, command: &str) -> Result<bool, String> {
    checked::<()>(session, command, |_, _| {})
        .await
        .map(|r| r.news)
}

/// What [`delete`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    /// Whether the messages were expunged (else they stay flagged `\Deleted`).
    pub expunged: bool,
    /// Whether the server announced new mail meanwhile (see `command`).
    pub news: bool,
}

/// Of `uids`, those whose header the agent read itself (`BODY.PEEK`, nothing is marked read) and
/// found to carry `Minisync-Version`. Whatever a search answered, nothing else is ever moved,
/// flagged or deleted.
pub async fn only_agent_mail(
    session: &mut ImapSession,
    uids: &[u32],
) -> Result<Replies<u32>, String> {
    let mut ours = Replies {
        items: Vec::with_capacity(uids.len()),
        news: false,
    };
    for batch in uids.chunks(500) {
        let got = fetch(session, batch, Part::Marker).await?;
        ours.news |= got.news;
        ours.items.extend(
            got.items
                .into_iter()
                .filter(|(_, h)| envelope::is_agent_mail(h))
                .map(|(uid, _)| uid),
        );
    }
    Ok(ours)
}

/// Flags agent mail deleted and expunges it: only those messages with UIDPLUS (`UID EXPUNGE`);
/// without it, plain `EXPUNGE` removes every message flagged `\Deleted` in the folder, so it is
/// sent only when each of them is agent mail. Otherwise the messages stay flagged (a later pass
/// expunges them, and a flagged message is never read or copied again); `expunged` is false then.
pub async fn delete(
    session: &mut ImapSession,
    uids: &[u32],
    uidplus: bool,
) -> Result<Deleted, String> {
    let mut out = Deleted {
        expunged: true,
        news: false,
    };
    for batch in uids.chunks(500) {
        let set = uid_set(batch);
        out.news |= command(
            session,
            &format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)"),
        )
        .await?;
        let e = expunge(session, &set, uidplus).await?;
        out.expunged &= e.expunged;
        out.news |= e.news;
    }
    Ok(out)
}

async fn expunge(session: &mut ImapSession, set: &str, uidplus: bool) -> Result<Deleted, String> {
    if uidplus {
        let news = command(session, &format!("UID EXPUNGE {set}")).await?;
        return Ok(Deleted {
            expunged: true,
            news,
        });
    }
    let flagged = search(session, "DELETED", 1).await?;
    let ours = only_agent_mail(session, &flagged.items).await?;
    let news = flagged.news || ours.news;
    if ours.items.len() < flagged.items.len() {
        tracing::warn!(
            others = flagged.items.len() - ours.items.len(),
            "the server has no UIDPLUS, and messages that are not agent mail are flagged \\Deleted \
             here: not expunging (EXPUNGE would remove them too); agent mail stays flagged until then"
        );
        return Ok(Deleted {
            expunged: false,
            news,
        });
    }
    let more = command(session, "EXPUNGE").await?;
    Ok(Deleted {
        expunged: true,
        news: news || more,
    })
}

/// Every message from `from_uid` on: (UID, whether it is flagged `\Deleted`), from the index
/// (no message is read). A FETCH, not a SEARCH: the plainest question a server can be asked.
pub async fn list(
    session: &mut ImapSession,
    from_uid: u32,
) -> Result<Replies<(u32, bool)>, String> {
    let mut got = checked(
        session,
        &format!("UID FETCH {from_uid}:* (UID FLAGS)"),
        |r, out| {
            if let Response::Fetch(_, attrs) = r {
                let uid = uid_of(attrs);
                let deleted = attrs.iter().any(|a| {
                    matches!(a, AttributeValue::Flags(f) if f.iter().any(|f| f.eq_ignore_ascii_case("\\Deleted")))
                });
                if let Some(uid) = uid {
                    out.push((uid, deleted));
                }
            }
        },
    )
    .await?;
    // `n:*` also matches the last message when n is past it.
    got.items.retain(|(u, _)| *u >= from_uid);
    got.items.sort_unstable();
    got.items.dedup_by_key(|(u, _)| *u);
    Ok(got)
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

/// The UID a FETCH reply names.
fn uid_of(attrs: &[AttributeValue<'_>]) -> Option<u32> {
    attrs.iter().find_map(|a| match a {
        AttributeValue::Uid(u) => Some(*u),
        _ => None,
    })
}

/// Which part of a message to fetch.
#[derive(Debug, Clone, Copy)]
pub enum Part {
    /// Only the `Minisync-Version` and `Message-ID` header fields: enough to tell agent mail
    /// and which message it is.
    Marker,
    /// Another header field (and `Message-ID`).
    Header(&'static str),
    Whole,
}

/// The marker header field or the whole of each message in `uids`: (uid, bytes), in UID order.
/// Messages expunged meanwhile are simply missing; a message the server cannot read fails the
/// command.
pub async fn fetch(
    session: &mut ImapSession,
    uids: &[u32],
    part: Part,
) -> Result<Replies<(u32, Vec<u8>)>, String> {
    let set = uid_set(uids);
    let query = match part {
        Part::Marker => format!(
            "BODY.PEEK[HEADER.FIELDS ({} Message-ID)]",
            envelope::VERSION_HEADER
        ),
        Part::Header(name) => format!("BODY.PEEK[HEADER.FIELDS ({name} Message-ID)]"),
        Part::Whole => "BODY.PEEK[]".to_string(),
    };
    let mut got = checked(
        session,
        &format!("UID FETCH {set} (UID {query})"),
        |r, out| {
            if let Response::Fetch(_, attrs) = r {
                let uid = uid_of(attrs);
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

/// Copies one message to a folder (`UID COPY`), leaving it where it is. Returns whether the
/// server announced new mail meanwhile.
pub async fn copy_message(
    session: &mut ImapSession,
    uid: u32,
    folder: &str,
) -> Result<bool, String> {
    command(session, &format!("UID COPY {uid} {}", quoted(folder)?)).await
}

/// Moves one message to a folder: `UID MOVE` where the server announced MOVE; else `UID COPY`,
/// then `\Deleted` and an expunge (see [`delete`]). A message flagged `\Deleted` is never listed
/// for reading again, so a copy is made once even when the expunge cannot be done. Returns
/// whether the server announced new mail meanwhile.
pub async fn move_message(
    session: &mut ImapSession,
    uid: u32,
    folder: &str,
    caps: Caps,
) -> Result<bool, String> {
    let target = quoted(folder)?;
    if caps.r#move {
        return command(session, &format!("UID MOVE {uid} {target}")).await;
    }
    let copied = command(session, &format!("UID COPY {uid} {target}")).await?;
    Ok(copied || delete(session, &[uid], caps.uidplus).await?.news)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_reported_in_the_servers_words() {
        let e = async_imap::error::Error::No(
            "code: Some(AuthenticationFailed), info: Some(\"Authentication failed.\")".into(),
        );
        assert_eq!(
            said(&e),
            "the server answered NO: Authentication failed. (AuthenticationFailed)"
        );
        let e = async_imap::error::Error::Bad("code: None, info: Some(\"say \\\"hi\\\"\")".into());
        assert_eq!(said(&e), "the server answered BAD: say \"hi\"");
        let e = async_imap::error::Error::No("something else".into());
        assert_eq!(said(&e), "the server answered NO: something else");
    }

    #[test]
    fn mailbox_names_are_quoted() {
        assert_eq!(quoted("Minisync").unwrap(), "\"Minisync\"");
        assert_eq!(quoted("a \"b\" \\c").unwrap(), "\"a \\\"b\\\" \\\\c\"");
        assert!(quoted("a\r\nb").unwrap_err().contains("line break"));
    }

    #[test]
    fn imap_dates_are_day_month_name_year() {
        let at = |secs: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(imap_date(at(1_795_357_331)), "22-Nov-2026");
        assert_eq!(imap_date(at(0)), "01-Jan-1970");
        assert_eq!(imap_date(at(951_782_400)), "29-Feb-2000");
    }
}
