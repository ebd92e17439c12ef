//! The MIME envelope of a changes mail: building it (lettre) and reading it (mail-parser).
//!
//! A changes mail is `multipart/mixed`: a short `text/plain` part for a human who opens it, and the
//! changes object as a base64 attachment, `application/json` (`minisync-changes.json`), or gzip
//! (`application/gzip`, `minisync-changes.json.gz`) when it is larger than [`COMPRESS_ABOVE`].
//! Headers mark it as ours (`Minisync-Version`), name the document (`Minisync-Document`) and say
//! `Auto-Submitted: auto-generated`.

use std::io::{Read, Write};

use lettre::message::header::{
    ContentDisposition, ContentTransferEncoding, ContentType, HeaderName, HeaderValue,
};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use mail_parser::{MessageParser, MimeHeaders};

use crate::transport::{Arrival, Outgoing};

/// The envelope format version, in the `Minisync-Version` header.
pub const ENVELOPE_VERSION: &str = "1";
/// Header that marks agent mail.
pub const VERSION_HEADER: &str = "Minisync-Version";
/// Header that names the document.
pub const DOCUMENT_HEADER: &str = "Minisync-Document";
/// Header that says whether the mail carries changes or only acknowledges.
pub const KIND_HEADER: &str = "Minisync-Kind";
/// Changes objects larger than this are gzipped before base64.
pub const COMPRESS_ABOVE: usize = 16 * 1024;
/// Largest decompressed changes object accepted, 256 MiB: a gzip bomb stops here, with an error
/// that says so. (A 10 MB document's full sync is a 13 MB changes object.)
pub const MAX_CHANGES_BYTES: u64 = 256 * 1024 * 1024;

/// Builds the RFC 5322 message for an outgoing changes object.
pub fn build(
    out: &Outgoing<'_>,
    from: &str,
    from_name: Option<&str>,
) -> Result<(lettre::address::Envelope, Vec<u8>), String> {
    let from_addr: Address = from
        .parse()
        .map_err(|e| format!("account address {from:?}: {e}"))?;
    let to_addr: Address = out
        .peer
        .parse()
        .map_err(|e| format!("peer address {:?}: {e}", out.peer))?;
    let what = if out.ack_only {
        "acknowledgement"
    } else {
        "changes"
    };
    let text = format!(
        "This message carries minisync {what} for the document \"{}\".\n\
         It is processed automatically by the minisync agent of {}; you do not need to open or answer it.\n\
         The attached file is the changes object (see docs/PROTOCOL.md of minisync).\n",
        out.doc_name, out.peer
    );
    let (ctype, filename, bytes) = if out.body.len() > COMPRESS_ABOVE {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(out.body.as_bytes())
            .map_err(|e| format!("compressing: {e}"))?;
        let gz = enc.finish().map_err(|e| format!("compressing: {e}"))?;
        ("application/gzip", "minisync-changes.json.gz", gz)
    } else {
        (
            "application/json",
            "minisync-changes.json",
            out.body.as_bytes().to_vec(),
        )
    };
    let attachment = SinglePart::builder()
        .header(ContentType::parse(ctype).map_err(|e| e.to_string())?)
        .header(ContentDisposition::attachment(filename))
        .header(ContentTransferEncoding::Base64)
        .body(bytes);
    let mut builder = Message::builder()
        .from(Mailbox::new(from_name.map(str::to_string), from_addr))
        .to(Mailbox::new(None, to_addr))
        .subject(format!("minisync {what}: {}", out.doc_name))
        .message_id(Some(out.message_id.to_string()));
    if let Some(r) = out.in_reply_to {
        builder = builder.in_reply_to(r.to_string()).references(r.to_string());
    }
    let mut message = builder
        .multipart(
            MultiPart::mixed()
                .singlepart(SinglePart::plain(text))
                .singlepart(attachment),
        )
        .map_err(|e| format!("building the message: {e}"))?;
    let headers = message.headers_mut();
    for (name, value) in [
        (VERSION_HEADER, ENVELOPE_VERSION.to_string()),
        (DOCUMENT_HEADER, out.doc_name.to_string()),
        (
            KIND_HEADER,
            if out.ack_only { "ack" } else { "changes" }.to_string(),
        ),
        ("Auto-Submitted", "auto-generated".to_string()),
    ] {
        headers.insert_raw(HeaderValue::new(
            HeaderName::new_from_ascii_str(name),
            value,
        ));
    }
    Ok((message.envelope().clone(), message.formatted()))
}

/// Whether a message's header block marks it as agent mail.
pub fn is_agent_mail(header: &[u8]) -> bool {
    MessageParser::default()
        .parse_headers(header)
        .is_some_and(|m| m.header(VERSION_HEADER).is_some())
}

/// Reads a whole agent mail into an [`Arrival`]; anything wrong goes into `payloads` as an error
/// that names the problem, so that the agent can quarantine it with that reason.
///
/// `accept(from, document)` says whether the sender may send changes for that document; when it
/// may not, the attachment is left unopened (a stranger's gzip bomb costs nothing) and the agent
/// quarantines the mail for its sender.
pub fn parse(key: String, raw: &[u8], accept: impl Fn(&str, &str) -> bool) -> Arrival {
    let mut arrival = Arrival {
        key,
        message_id: None,
        from: String::new(),
        doc: String::new(),
        in_reply_to: None,
        payloads: Err("unreadable message".into()),
    };
    let Some(m) = MessageParser::default().parse(raw) else {
        arrival.payloads = Err("the message cannot be parsed as MIME".into());
        return arrival;
    };
    arrival.message_id = m.message_id().map(|s| format!("<{s}>"));
    arrival.from = m
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .unwrap_or("")
        .to_ascii_lowercase();
    arrival.in_reply_to = m.in_reply_to().as_text().map(|s| format!("<{s}>"));
    arrival.doc = m
        .header(DOCUMENT_HEADER)
        .and_then(|h| h.as_text())
        .unwrap_or("")
        .trim()
        .to_string();
    let version = m
        .header(VERSION_HEADER)
        .and_then(|h| h.as_text())
        .unwrap_or("")
        .trim();
    arrival.payloads = (|| {
        if version != ENVELOPE_VERSION {
            return Err(format!(
                "unsupported {VERSION_HEADER} {version:?} (this agent reads {ENVELOPE_VERSION})"
            ));
        }
        if arrival.message_id.is_none() {
            return Err("no Message-ID".into());
        }
        if arrival.from.is_empty() {
            return Err("no From address".into());
        }
        if arrival.doc.is_empty() {
            return Err(format!("no {DOCUMENT_HEADER} header"));
        }
        if !accept(&arrival.from, &arrival.doc) {
            return Err(format!(
                "{} may not send changes for document {:?}; attachment not opened",
                arrival.from, arrival.doc
            ));
        }
        let part = m
            .attachments()
            .find(|p| {
                p.attachment_name().is_some_and(|n| {
                    n == "minisync-changes.json" || n == "minisync-changes.json.gz"
                })
            })
            .ok_or("no minisync-changes.json attachment")?;
        let compressed = part.attachment_name() == Some("minisync-changes.json.gz");
        let bytes = part.contents();
        let text = if compressed {
            String::from_utf8(inflate(bytes, MAX_CHANGES_BYTES)?)
                .map_err(|_| "the attachment is not UTF-8".to_string())?
        } else {
            String::from_utf8(bytes.to_vec())
                .map_err(|_| "the attachment is not UTF-8".to_string())?
        };
        Ok(vec![text])
    })();
    arrival
}

/// Decompresses a gzip attachment, refusing one that would grow beyond `limit` bytes.
fn inflate(bytes: &[u8], limit: u64) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the gzip attachment is broken: {e}"))?;
    if out.len() as u64 > limit {
        return Err(format!(
            "the gzip attachment decompresses to more than {} MiB",
            limit / (1024 * 1024)
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::ClientId;

    fn out<'a>(body: &'a str, reply: Option<&'a str>) -> Outgoing<'a> {
        Outgoing {
            doc_name: "todo",
            doc_id: "d",
            client_id: ClientId::random(),
            peer: "bob@example.test",
            message_id: "<m1@example.test>",
            in_reply_to: reply,
            body,
            ack_only: false,
            version: 3,
            base: None,
            base_version: 0,
            base_len: 0,
        }
    }

    #[test]
    fn round_trips_small_and_compressed_changes() {
        for body in [
            "{\"minisync\":\"changes\"}".to_string(),
            format!("{{\"x\":\"{}\"}}", "y".repeat(100_000)),
        ] {
            let (env, raw) = build(
                &out(&body, Some("<prev@example.test>")),
                "alice@example.test",
                Some("Alice"),
            )
            .unwrap();
            assert_eq!(env.to()[0].to_string(), "bob@example.test");
            let text = String::from_utf8_lossy(&raw);
            assert!(text.contains("Minisync-Version: 1"), "{text}");
            assert!(text.contains("Auto-Submitted: auto-generated"));
            assert!(text.contains("Content-Transfer-Encoding: base64"));
            let header_end = text.find("\r\n\r\n").unwrap();
            assert!(is_agent_mail(&raw[..header_end + 4]));
            let a = parse("1".into(), &raw, |_, _| true);
            assert_eq!(a.payloads.unwrap(), vec![body.clone()]);
            assert_eq!(a.from, "alice@example.test");
            assert_eq!(a.doc, "todo");
            assert_eq!(a.message_id.as_deref(), Some("<m1@example.test>"));
            assert_eq!(a.in_reply_to.as_deref(), Some("<prev@example.test>"));
        }
        assert!(
            build(&out("{}", None), "alice@example.test", None)
                .unwrap()
                .1
                .len()
                < 2000
        );
    }

    #[test]
    fn broken_mail_names_the_problem() {
        let a = parse("1".into(), b"Minisync-Version: 1\r\nFrom: a@b.c\r\nMessage-ID: <x@y>\r\nMinisync-Document: todo\r\n\r\nno attachment here", |_, _| true);
        assert!(
            a.payloads
                .unwrap_err()
                .contains("no minisync-changes.json attachment")
        );
        let a = parse(
            "1".into(),
            b"Minisync-Version: 9\r\nFrom: a@b.c\r\n\r\n",
            |_, _| true,
        );
        assert!(a.payloads.unwrap_err().contains("unsupported"));
        assert!(!is_agent_mail(
            b"From: friend@example.test\r\nSubject: lunch?\r\n\r\n"
        ));
    }

    #[test]
    fn a_strangers_attachment_is_never_opened_and_bombs_are_capped() {
        use std::io::Write;
        // 64 MiB of zeros: a 64 KiB attachment.
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 64 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        assert!(bomb.len() < 1 << 17);
        let e = inflate(&bomb, 1 << 20).unwrap_err();
        assert!(e.contains("more than 1 MiB"), "{e}");
        assert_eq!(inflate(&bomb, 64 << 20).unwrap().len(), 64 << 20);
        // Built like real agent mail, but from someone who is not a peer of the document.
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(100_000));
        let (_, raw) = build(&out(&big, None), "mallory@example.test", None).unwrap();
        let opened = std::cell::Cell::new(false);
        let a = parse("1".into(), &raw, |from, doc| {
            opened.set(true);
            from == "alice@example.test" && doc == "todo"
        });
        assert!(opened.get());
        let e = a.payloads.unwrap_err();
        assert!(
            e.contains("mallory@example.test may not send changes"),
            "{e}"
        );
        assert_eq!(a.from, "mallory@example.test");
    }
}
