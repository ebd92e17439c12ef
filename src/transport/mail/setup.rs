//! The setup message that moves the account's key to a new device of the same person (the
//! Autocrypt Setup Message idea): a mail to the own address whose attachment is the key,
//! encrypted with a one-time setup code of 36 digits that never travels by mail. `agent device
//! add` sends it; `agent device join --code CODE` finds it in the mailbox, opens it with the code
//! and deletes it.
//!
//! It carries no `Minisync-Version` header: agents leave it alone like any mail that is not
//! theirs, and it stays in the inbox until a device joins with it.

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use mail_parser::{MessageParser, MimeHeaders};
use rand::Rng;

use crate::config::Account;
use crate::transport::mail::{imap, openpgp};

/// The header that marks a setup message (Autocrypt Level 1).
pub const SETUP_HEADER: &str = "Autocrypt-Setup-Message";
/// The attachment holding the key encrypted with the code.
const SETUP_FILE: &str = "minisync-setup.asc";
/// A setup payload is a key and a few pinned peer keys.
const MAX_SETUP_BYTES: u64 = 1024 * 1024;

/// A new setup code: 36 random digits in nine groups of four (`1234-5678-…`).
pub fn new_code() -> String {
    let mut rng = rand::rng();
    (0..9)
        .map(|_| format!("{:04}", rng.random_range(0..10_000u32)))
        .collect::<Vec<_>>()
        .join("-")
}

/// A code as typed: its digits only (spaces, dashes and line breaks are ignored).
///
/// # Errors
///
/// Anything but 36 digits, with what was wrong.
pub fn normalize_code(typed: &str) -> Result<String, String> {
    if let Some(c) = typed
        .chars()
        .find(|c| !c.is_ascii_digit() && !c.is_whitespace() && *c != '-')
    {
        return Err(format!(
            "the setup code has {c:?} in it: it is 36 digits (`agent device add` printed it, in groups of four)"
        ));
    }
    let digits: String = typed.chars().filter(char::is_ascii_digit).collect();
    if digits.len() != 36 {
        return Err(format!(
            "the setup code has {} digits, not 36: type it as `agent device add` printed it",
            digits.len()
        ));
    }
    Ok(digits)
}

/// Builds the setup message: `payload` encrypted with `code`, from and to `address`.
///
/// # Errors
///
/// A bad address or a failure to build the message.
pub fn build(
    address: &str,
    message_id: &str,
    payload: &[u8],
    code: &str,
) -> Result<(lettre::address::Envelope, Vec<u8>), String> {
    let digits = normalize_code(code)?;
    let armored = openpgp::seal_with_code(payload.to_vec(), &digits).map_err(|e| e.to_string())?;
    let me: lettre::Address = address
        .parse()
        .map_err(|e| format!("account address {address:?}: {e}"))?;
    let text = "This message moves your minisync account key to a new device.\r\n\
                On the new device run `agent device join` and type the setup code that `agent \
                device add` showed.\r\nNobody can use it without that code. Delete it if you \
                did not ask for it.\r\n";
    let attachment = SinglePart::builder()
        .header(ContentType::parse("application/autocrypt-setup").map_err(|e| e.to_string())?)
        .header(lettre::message::header::ContentDisposition::attachment(
            SETUP_FILE,
        ))
        .header(ContentTransferEncoding::SevenBit)
        .body(armored);
    let mut message = lettre::Message::builder()
        .from(Mailbox::new(None, me.clone()))
        .to(Mailbox::new(None, me))
        .subject("Autocrypt Setup Message (minisync)")
        .message_id(Some(message_id.to_string()))
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(text.to_string()))
                .singlepart(attachment),
        )
        .map_err(|e| format!("building the message: {e}"))?;
    message.headers_mut().insert_raw(HeaderValue::new(
        HeaderName::new_from_ascii_str(SETUP_HEADER),
        "v1".to_string(),
    ));
    Ok((message.envelope().clone(), message.formatted()))
}

/// Opens a setup message from `address` with `code`: the payload.
///
/// # Errors
///
/// Not a setup message from `address`, no attachment, or the code does not open it ("wrong
/// setup code").
pub fn open(raw: &[u8], address: &str, code: &str) -> Result<Vec<u8>, String> {
    let digits = normalize_code(code)?;
    let m = MessageParser::default()
        .parse(raw)
        .ok_or("the setup message cannot be parsed as MIME")?;
    let from = m
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or("");
    if !from.eq_ignore_ascii_case(address) {
        return Err(format!(
            "the setup message is from {from:?}, not from this account ({address})"
        ));
    }
    let part = m
        .attachments()
        .find(|p| p.attachment_name() == Some(SETUP_FILE))
        .ok_or("the setup message has no minisync-setup.asc attachment")?;
    openpgp::open_with_code(part.contents(), &digits, MAX_SETUP_BYTES).map_err(|e| match e {
        openpgp::CryptoError::Decrypt(_) => "wrong setup code: it does not open the setup \
            message (type it again as `agent device add` printed it, or run `agent device add` \
            again for a new one)"
            .to_string(),
        other => format!("the setup message: {other}"),
    })
}

/// Finds every setup message in the account's watched mailbox, newest first: (UID, message).
/// Each `agent device add` sends one with its own code, so a join tries them all.
///
/// # Errors
///
/// IMAP fails, or there is no setup message.
pub async fn fetch_all(
    session: &mut imap::ImapSession,
    mailbox: &str,
) -> Result<Vec<(u32, Vec<u8>)>, String> {
    session
        .select(mailbox)
        .await
        .map_err(|e| format!("SELECT {mailbox}: {e}"))?;
    let listed = imap::list(session, 1).await?;
    let uids: Vec<u32> = listed
        .items
        .iter()
        .filter(|(_, deleted)| !deleted)
        .map(|(u, _)| *u)
        .collect();
    let mut marked = Vec::new();
    for batch in uids.chunks(500) {
        let got = imap::fetch(session, batch, imap::Part::Header(SETUP_HEADER)).await?;
        for (uid, head) in got.items {
            if MessageParser::default()
                .parse_headers(&head[..])
                .is_some_and(|m| m.header(SETUP_HEADER).is_some())
            {
                marked.push(uid);
            }
        }
    }
    if marked.is_empty() {
        return Err(format!(
            "no setup message in {mailbox}: run `agent device add` on a device that has the \
             account, then `agent device join` here"
        ));
    }
    marked.sort_unstable_by(|a, b| b.cmp(a));
    let mut out = Vec::with_capacity(marked.len());
    for uid in marked {
        let got = imap::fetch(session, &[uid], imap::Part::Whole).await?;
        if let Some((_, raw)) = got.items.into_iter().next() {
            out.push((uid, raw));
        }
    }
    if out.is_empty() {
        return Err("the setup messages vanished while they were read".into());
    }
    Ok(out)
}

/// Logs in to the account's IMAP server.
///
/// # Errors
///
/// The connection or the login fails.
pub async fn connect(account: &Account) -> Result<imap::ImapSession, String> {
    imap::connect(&account.imap, &account.address).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_36_digits_and_typed_codes_are_read_leniently() {
        let c = new_code();
        assert_eq!(c.len(), 36 + 8);
        assert_eq!(normalize_code(&c).unwrap().len(), 36);
        assert_ne!(new_code(), c);
        let spaced = c.replace('-', " ");
        assert_eq!(
            normalize_code(&spaced).unwrap(),
            normalize_code(&c).unwrap()
        );
        assert!(normalize_code("1234").unwrap_err().contains("4 digits"));
        assert!(normalize_code("1234-abcd").unwrap_err().contains("'a'"));
    }

    #[test]
    fn a_setup_message_opens_with_its_code_from_its_address_only() {
        let code = new_code();
        let (_, raw) = build("alice@example.test", "<s@example.test>", b"payload", &code).unwrap();
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Autocrypt-Setup-Message: v1"), "{text}");
        assert!(!text.contains("payload") && !text.contains("Minisync-Version"));
        assert_eq!(open(&raw, "alice@example.test", &code).unwrap(), b"payload");
        let wrong = new_code();
        let e = open(&raw, "alice@example.test", &wrong).unwrap_err();
        assert!(e.starts_with("wrong setup code"), "{e}");
        let e = open(&raw, "mallory@example.test", &code).unwrap_err();
        assert!(e.contains("not from this account"), "{e}");
        assert!(open(b"garbage", "alice@example.test", &code).is_err());
    }
}
