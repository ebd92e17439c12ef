//! The MIME envelope of agent mail (format 5): building it and reading it.
//!
//! A changes mail is PGP/MIME (RFC 3156 §4): `multipart/encrypted;
//! protocol="application/pgp-encrypted"`, a `Version: 1` part and an `application/octet-stream`
//! part holding one armored OpenPGP message, signed, compressed and encrypted to the peer and to
//! ourselves (RFC 3156 §6.2, see [`super::openpgp`]). Outside it only what routing needs: `From`,
//! `To`, `Date`, `Message-ID`, the marker `Minisync-Version: 5`, `Auto-Submitted` and the
//! sender's key in `Autocrypt:` (Autocrypt Level 1). The encrypted entity is `multipart/mixed;
//! protected-headers="v1"` with the real headers (document name, kind, Message-ID, the reply's
//! In-Reply-To), a short text part and the changes object in the compact form
//! ([`crate::engine::compact`]) as `minisync-changes.bin` (`application/octet-stream`, binary:
//! the entity is only ever carried encrypted); the receiver trusts only these inner headers.
//!
//! A changes object larger than the account's `max-mail-size` travels in several such mails
//! (format 4 on): each carries one piece of its bytes as `minisync-changes.bin` and, among the
//! protected headers, `Minisync-Transfer`, `Minisync-Part` (index/count), the whole object's size,
//! hash and Message-ID (see [`crate::transport::parts`]).
//!
//! A hello (`Minisync-Kind: hello`, sent while the peer's key is unknown) is not encrypted and
//! carries no document: a text part and `minisync-hello.asc`, an OpenPGP message signed with the
//! key in its `Autocrypt:` header that names sender, recipient and whether the sender still
//! lacks the recipient's key.

use lettre::message::header::{ContentTransferEncoding, ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use mail_parser::{MessageParser, MimeHeaders};

use crate::transport::mail::{autocrypt, openpgp};
use crate::transport::parts::PartInfo;
use crate::transport::{Arrival, DeviceTag, Outgoing, Sealed, Split};

/// The envelope format version, in the `Minisync-Version` header. Format 1 (until minisync
/// 0.1 without OpenPGP) was plaintext, format 2 named no device, format 3 had no part mails (a
/// format-3 reader would take a part for a broken changes object), format 4 carried changes
/// as JSON text; all are refused with a request to upgrade.
pub const ENVELOPE_VERSION: &str = "5";
/// Header that marks agent mail.
pub const VERSION_HEADER: &str = "Minisync-Version";
/// Header that names the document (inside the encryption only).
pub const DOCUMENT_HEADER: &str = "Minisync-Document";
/// Header that says whether the mail carries changes, only acknowledges, or is a hello.
pub const KIND_HEADER: &str = "Minisync-Kind";
/// Header naming the sending device (inside the encryption only).
pub const DEVICE_HEADER: &str = "Minisync-Device";
/// Header with the sending device's name (inside the encryption only).
pub const DEVICE_NAME_HEADER: &str = "Minisync-Device-Name";
/// Header listing the devices of the sender's address that were removed (inside only).
pub const RETIRED_HEADER: &str = "Minisync-Retired";
/// Largest changes object accepted, 256 MiB: a compression bomb stops here, with an error that
/// says so. (A 10 MB document's full sync is a 13 MB changes object.)
pub const MAX_CHANGES_BYTES: u64 = 256 * 1024 * 1024;
/// Room for the MIME around the changes object inside the encryption.
const MIME_SLACK: u64 = 64 * 1024;
/// The hello's signed text is a few lines.
const MAX_HELLO_BYTES: u64 = 4096;
/// The changes attachment's file name.
const CHANGES_FILE: &str = "minisync-changes.bin";
/// The hello's signed attachment.
const HELLO_FILE: &str = "minisync-hello.asc";

/// The sender's side of a mail: address, display name, key, and which device of the address.
pub struct Sender<'a> {
    pub address: &'a str,
    pub name: Option<&'a str>,
    pub key: &'a openpgp::SecretKey,
    pub device: &'a DeviceTag,
}

/// A device name as a header value: printable ASCII and spaces, at most 64 characters.
fn header_safe(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

fn addresses(from: &str, to: &str) -> Result<(Address, Address), String> {
    let f = from
        .parse()
        .map_err(|e| format!("account address {from:?}: {e}"))?;
    let t = to
        .parse()
        .map_err(|e| format!("peer address {to:?}: {e}"))?;
    Ok((f, t))
}

/// The outer headers every agent mail carries besides From/To/Subject/Message-ID.
fn mark(message: &mut Message, kind: Option<&str>, autocrypt: String) {
    let headers = message.headers_mut();
    let mut add = vec![
        (VERSION_HEADER, ENVELOPE_VERSION.to_string()),
        ("Auto-Submitted", "auto-generated".to_string()),
        (autocrypt::HEADER, autocrypt),
    ];
    if let Some(k) = kind {
        add.push((KIND_HEADER, k.to_string()));
    }
    for (name, value) in add {
        headers.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str(name),
            value,
        ));
    }
}

/// What one mail carries of an outgoing changes object: the whole of it (`out.body`, under
/// `out.message_id`), or one part of a transfer under a Message-ID of its own.
pub struct Piece<'a> {
    pub body: &'a [u8],
    pub message_id: &'a str,
    pub part: Option<&'a PartInfo>,
}

/// The encrypted entity of a changes mail (protected headers, RFC 3156 §6.2 payload).
fn inner(out: &Outgoing<'_>, me: &Sender<'_>, piece: &Piece<'_>) -> Vec<u8> {
    let from = me.address;
    let (what, kind) = if out.want {
        ("a request for the whole document", "want")
    } else if out.ack_only {
        ("acknowledgement", "ack")
    } else {
        ("changes", "changes")
    };
    let boundary = format!(
        "inner-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let mut head = format!(
        "Content-Type: multipart/mixed; boundary=\"{boundary}\"; protected-headers=\"v1\"\r\n\
         From: <{from}>\r\nTo: <{}>\r\nSubject: minisync {what}: {}{}\r\nMessage-ID: {}\r\n",
        out.peer,
        out.doc_name,
        part_note(piece.part),
        piece.message_id
    );
    if let Some(part) = piece.part {
        head.push_str(&part.headers());
    }
    if let Some(r) = out.in_reply_to {
        head.push_str(&format!("In-Reply-To: {r}\r\nReferences: {r}\r\n"));
    }
    head.push_str(&format!(
        "{DOCUMENT_HEADER}: {}\r\n{KIND_HEADER}: {kind}\r\n{DEVICE_HEADER}: {}\r\n",
        out.doc_name, me.device.id
    ));
    if let Some(name) = &me.device.name {
        head.push_str(&format!("{DEVICE_NAME_HEADER}: {}\r\n", header_safe(name)));
    }
    if !me.device.retired.is_empty() {
        head.push_str(&format!(
            "{RETIRED_HEADER}: {}\r\n",
            me.device.retired.join(" ")
        ));
    }
    head.push_str("\r\n");
    let text = format!(
        "This message carries minisync {what} for the document \"{}\".\r\n\
         It is processed automatically by the minisync agent of {}; you do not need to open or answer it.\r\n",
        out.doc_name, out.peer
    );
    let mut body = head.into_bytes();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\n{text}\r\n--{boundary}\r\n\
             Content-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"{CHANGES_FILE}\"\r\n\
             Content-Transfer-Encoding: binary\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(piece.body);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

/// " (part 2 of 5)" for a part mail's subject, "" for a whole one.
fn part_note(part: Option<&PartInfo>) -> String {
    part.map(|p| format!(" (part {} of {})", p.index, p.count))
        .unwrap_or_default()
}

/// Builds the PGP/MIME message for an outgoing changes object, whole, encrypted to
/// `out.peer_key` and to the sender's own key.
///
/// # Errors
///
/// A bad address, no or an unusable peer key, or a failure to build the message.
pub fn build(
    out: &Outgoing<'_>,
    me: &Sender<'_>,
) -> Result<(lettre::address::Envelope, Vec<u8>), String> {
    let whole = Piece {
        body: out.body,
        message_id: out.message_id,
        part: None,
    };
    build_piece(out, me, &whole)
}

/// Builds the PGP/MIME message that carries `piece` of an outgoing changes object (the whole of
/// it, or one part of a transfer), as [`build`] does.
///
/// # Errors
///
/// As [`build`].
pub fn build_piece(
    out: &Outgoing<'_>,
    me: &Sender<'_>,
    piece: &Piece<'_>,
) -> Result<(lettre::address::Envelope, Vec<u8>), String> {
    let (from_addr, to_addr) = addresses(me.address, out.peer)?;
    let peer_key = out
        .peer_key
        .ok_or_else(|| format!("no key of {} known: only a hello may go there", out.peer))?;
    let peer_key = openpgp::PublicKey::from_bytes(peer_key)
        .map_err(|e| format!("the key of {}: {e}", out.peer))?;
    let own = me.key.public();
    let armored = openpgp::seal(inner(out, me, piece), me.key, &[&peer_key, &own])
        .map_err(|e| e.to_string())?;
    let parts = MultiPart::encrypted("application/pgp-encrypted".to_string())
        .singlepart(
            SinglePart::builder()
                .header(ContentType::parse("application/pgp-encrypted").map_err(|e| e.to_string())?)
                .header(ContentTransferEncoding::SevenBit)
                .body("Version: 1\r\n".to_string()),
        )
        .singlepart(
            SinglePart::builder()
                .header(
                    ContentType::parse("application/octet-stream; name=\"encrypted.asc\"")
                        .map_err(|e| e.to_string())?,
                )
                .header(ContentTransferEncoding::SevenBit)
                .body(armored),
        );
    let mut message = Message::builder()
        .from(Mailbox::new(me.name.map(str::to_string), from_addr))
        .to(Mailbox::new(None, to_addr))
        .subject(format!("minisync{}", part_note(piece.part)))
        .message_id(Some(piece.message_id.to_string()))
        .multipart(parts)
        .map_err(|e| format!("building the message: {e}"))?;
    let public = own.to_bytes().map_err(|e| e.to_string())?;
    mark(&mut message, None, autocrypt::build(me.address, &public));
    Ok((message.envelope().clone(), message.formatted()))
}

/// The signed text of a hello.
fn hello_text(from: &str, to: &str, wants_key: bool) -> String {
    format!(
        "minisync hello\r\nfrom: {from}\r\nto: {to}\r\nwants-key: {}\r\n",
        if wants_key { "yes" } else { "no" }
    )
}

/// Builds a hello to `peer`: our key, signed, and no document content. `wants_key`: we do not
/// know the peer's key yet (the peer answers with a hello of its own).
///
/// # Errors
///
/// A bad address or a failure to build the message.
pub fn build_hello(
    peer: &str,
    message_id: &str,
    wants_key: bool,
    me: &Sender<'_>,
) -> Result<(lettre::address::Envelope, Vec<u8>), String> {
    let (from_addr, to_addr) = addresses(me.address, peer)?;
    let signed = openpgp::sign(hello_text(me.address, peer, wants_key).into_bytes(), me.key)
        .map_err(|e| e.to_string())?;
    let text = format!(
        "The minisync agent of {} introduces its OpenPGP key (in the Autocrypt header) to {peer}.\r\n\
         Documents travel only encrypted. You do not need to open or answer this message.\r\n",
        me.address
    );
    let attachment = SinglePart::builder()
        .header(ContentType::parse("application/octet-stream").map_err(|e| e.to_string())?)
        .header(lettre::message::header::ContentDisposition::attachment(
            HELLO_FILE,
        ))
        .header(ContentTransferEncoding::SevenBit)
        .body(signed);
    let mut message = Message::builder()
        .from(Mailbox::new(me.name.map(str::to_string), from_addr))
        .to(Mailbox::new(None, to_addr))
        .subject("minisync hello")
        .message_id(Some(message_id.to_string()))
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(text))
                .singlepart(attachment),
        )
        .map_err(|e| format!("building the message: {e}"))?;
    let public = me.key.public().to_bytes().map_err(|e| e.to_string())?;
    mark(
        &mut message,
        Some("hello"),
        autocrypt::build(me.address, &public),
    );
    Ok((message.envelope().clone(), message.formatted()))
}

/// Whether a message's header block marks it as agent mail.
pub fn is_agent_mail(header: &[u8]) -> bool {
    MessageParser::default()
        .parse_headers(header)
        .is_some_and(|m| m.header(VERSION_HEADER).is_some())
}

/// The (outer) Message-ID in a message's header block, as `<id>`.
pub fn outer_id(header: &[u8]) -> Option<String> {
    MessageParser::default()
        .parse_headers(header)
        .and_then(|m| m.message_id().map(|s| format!("<{s}>")))
}

fn text_header(m: &mail_parser::Message<'_>, name: &str) -> String {
    m.header(name)
        .and_then(|h| h.as_text())
        .unwrap_or("")
        .trim()
        .to_string()
}

fn from_of(m: &mail_parser::Message<'_>) -> String {
    m.from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// The signed device headers: the sending device's id and name, and the removed devices.
fn device_tag(m: &mail_parser::Message<'_>) -> Result<DeviceTag, String> {
    let valid = |id: &str| crate::engine::ClientId::parse(id).is_ok();
    let id = text_header(m, DEVICE_HEADER);
    if id.is_empty() {
        return Err(format!("no {DEVICE_HEADER} header inside the encryption"));
    }
    if !valid(&id) {
        return Err(format!(
            "{DEVICE_HEADER} {id:?} is not a device id (16 letters or digits)"
        ));
    }
    let retired: Vec<String> = text_header(m, RETIRED_HEADER)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    if let Some(bad) = retired.iter().find(|r| !valid(r)) {
        return Err(format!(
            "{RETIRED_HEADER} names {bad:?}, which is not a device id (16 letters or digits)"
        ));
    }
    let name = Some(header_safe(&text_header(m, DEVICE_NAME_HEADER))).filter(|n| !n.is_empty());
    Ok(DeviceTag { id, name, retired })
}

/// What [`parse`] needs to know about the receiving side.
pub struct Receiver<'a> {
    /// The account's own address: its other devices write to it.
    pub own: &'a str,
    /// Our key, to decrypt.
    pub key: &'a openpgp::SecretKey,
    /// Whether an address is a peer of any document: a stranger's mail is not decrypted.
    pub known: &'a (dyn Fn(&str) -> bool + Sync),
    /// Whether the sender may send changes for that document.
    pub accept: &'a (dyn Fn(&str, &str) -> bool + Sync),
}

/// Reads a whole agent mail into an [`Arrival`]; anything wrong goes into `payloads` as an error
/// that names the problem, so that the agent can quarantine it with that reason. `sealed` is set
/// when the mail's signature verified with the key its `Autocrypt:` header carries (whether that
/// key is the one pinned for the sender is the agent's question).
pub fn parse(key: String, raw: &[u8], rx: &Receiver<'_>) -> Arrival {
    let mut arrival = Arrival {
        key,
        message_id: None,
        from: String::new(),
        doc: String::new(),
        in_reply_to: None,
        payloads: Err("unreadable message".into()),
        sealed: None,
        device: None,
        want: false,
        split: Split::Whole,
        sent_at: None,
    };
    let Some(m) = MessageParser::default().parse(raw) else {
        arrival.payloads = Err("the message cannot be parsed as MIME".into());
        return arrival;
    };
    arrival.message_id = m.message_id().map(|s| format!("<{s}>"));
    arrival.sent_at = m.date().map(|d| d.to_timestamp().saturating_mul(1000));
    arrival.from = from_of(&m);
    arrival.payloads = read_outer(&m, rx, &mut arrival);
    arrival
}

/// The checks on the outer message, then the hello or the encrypted part.
fn read_outer(
    m: &mail_parser::Message<'_>,
    rx: &Receiver<'_>,
    arrival: &mut Arrival,
) -> Result<Vec<Vec<u8>>, String> {
    let version = text_header(m, VERSION_HEADER);
    if version != ENVELOPE_VERSION {
        // Compared as numbers ("10" is newer than "5"); anything else counts as older.
        let newer = version
            .parse::<u32>()
            .ok()
            .zip(ENVELOPE_VERSION.parse::<u32>().ok())
            .is_some_and(|(theirs, ours)| theirs > ours);
        let which = if newer { "newer" } else { "older" };
        return Err(format!(
            "unsupported {VERSION_HEADER} {version:?} (this agent reads {ENVELOPE_VERSION}): the \
             sender runs an {which} minisync; upgrade minisync so that both sides run the same version"
        ));
    }
    if arrival.message_id.is_none() {
        return Err("no Message-ID".into());
    }
    if arrival.from.is_empty() {
        return Err("no From address".into());
    }
    let (addr, keydata) = autocrypt::parse(&text_header(m, autocrypt::HEADER))?;
    if addr != arrival.from {
        return Err(format!(
            "the Autocrypt header is for {addr}, the mail is from {}",
            arrival.from
        ));
    }
    let sender = openpgp::PublicKey::from_bytes(&keydata)
        .map_err(|e| format!("the sender's key in the Autocrypt header: {e}"))?;
    if text_header(m, KIND_HEADER) == "hello" {
        return read_hello(m, &sender, keydata, arrival);
    }
    let encrypted = m.content_type().is_some_and(|c| {
        c.ctype().eq_ignore_ascii_case("multipart")
            && c.subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("encrypted"))
    });
    if !encrypted {
        return Err("agent mail that is not encrypted (PGP/MIME multipart/encrypted)".into());
    }
    if !(rx.known)(&arrival.from) {
        return Err(format!(
            "{} is not a peer of any document; the message was not decrypted",
            arrival.from
        ));
    }
    let armored = m
        .parts
        .iter()
        .skip(1)
        .find(|p| {
            p.content_type()
                .is_some_and(|c| c.subtype() == Some("octet-stream"))
        })
        .map(|p| p.contents())
        .ok_or("no application/octet-stream part with the encrypted message")?;
    let data =
        openpgp::open(armored, rx.key, &sender, MAX_CHANGES_BYTES + MIME_SLACK).map_err(|e| {
            if arrival.from.eq_ignore_ascii_case(rx.own) {
                format!(
                    "{e} (mail from another device of this account: if this device is new, run \
                     `agent device join` with the code `agent device add` printed there)"
                )
            } else {
                e.to_string()
            }
        })?;
    arrival.sealed = Some(Sealed {
        fingerprint: sender.fingerprint(),
        key: keydata,
        hello: None,
    });
    read_inner(&data, rx, arrival)
}

/// The signed hello: its text must name the mail's sender.
fn read_hello(
    m: &mail_parser::Message<'_>,
    sender: &openpgp::PublicKey,
    keydata: Vec<u8>,
    arrival: &mut Arrival,
) -> Result<Vec<Vec<u8>>, String> {
    let part = m
        .attachments()
        .find(|p| p.attachment_name() == Some(HELLO_FILE))
        .ok_or("a hello without its signed part")?;
    let data =
        openpgp::verify(part.contents(), sender, MAX_HELLO_BYTES).map_err(|e| e.to_string())?;
    let text = String::from_utf8(data).map_err(|_| "the hello is not UTF-8".to_string())?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_ascii_lowercase()))
            .unwrap_or_default()
    };
    if field("from:") != arrival.from {
        return Err(format!(
            "the signed sender of the hello is {:?}, the mail is from {}",
            field("from:"),
            arrival.from
        ));
    }
    arrival.sealed = Some(Sealed {
        fingerprint: sender.fingerprint(),
        key: keydata,
        hello: Some(field("wants-key:") == "yes"),
    });
    Ok(Vec::new())
}

/// The decrypted entity: its protected headers (trusted) and the changes object.
fn read_inner(
    data: &[u8],
    rx: &Receiver<'_>,
    arrival: &mut Arrival,
) -> Result<Vec<Vec<u8>>, String> {
    let m = MessageParser::default()
        .parse(data)
        .ok_or("the decrypted message cannot be parsed as MIME")?;
    let signed_from = from_of(&m);
    if signed_from != arrival.from {
        return Err(format!(
            "the signed sender is {signed_from:?}, the mail is from {}",
            arrival.from
        ));
    }
    // Only the signed headers count: a Message-ID or reference changed outside is ignored.
    arrival.message_id = m.message_id().map(|s| format!("<{s}>"));
    arrival.in_reply_to = m.in_reply_to().as_text().map(|s| format!("<{s}>"));
    arrival.doc = text_header(&m, DOCUMENT_HEADER);
    if arrival.message_id.is_none() {
        return Err("no Message-ID inside the encryption".into());
    }
    if arrival.doc.is_empty() {
        return Err(format!("no {DOCUMENT_HEADER} header inside the encryption"));
    }
    if !(rx.accept)(&arrival.from, &arrival.doc) {
        return Err(format!(
            "{} may not send changes for document {:?}",
            arrival.from, arrival.doc
        ));
    }
    arrival.device = Some(device_tag(&m)?);
    if text_header(&m, KIND_HEADER) == "want" {
        if !rx.own.eq_ignore_ascii_case(&arrival.from) {
            return Err(format!(
                "a request for a whole document from {}: only the account's own devices ask for one",
                arrival.from
            ));
        }
        arrival.want = true;
        return Ok(Vec::new());
    }
    let piece = PartInfo::from_headers(|name| text_header(&m, name))?;
    let part = m
        .attachments()
        .find(|p| p.attachment_name() == Some(CHANGES_FILE))
        .ok_or("no minisync-changes.bin attachment")?;
    let text = part.contents().to_vec();
    if let Some(info) = piece {
        if text.is_empty() || text.len() as u64 > info.size {
            return Err(format!(
                "part {} of transfer {} carries {} bytes of a {}-byte transfer",
                info.index,
                info.transfer,
                text.len(),
                info.size
            ));
        }
        arrival.split = Split::Part(info);
    }
    Ok(vec![text])
}

#[cfg(test)]
mod tests;
