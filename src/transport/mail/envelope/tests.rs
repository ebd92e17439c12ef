//! Round trips of the format-5 envelope and the refusals of mail that is not what it claims.

use super::*;
use crate::engine::ClientId;
use crate::transport::mail::openpgp::{SecretKey, generate};

fn out<'a>(body: &'a str, reply: Option<&'a str>, peer_key: &'a [u8]) -> Outgoing<'a> {
    Outgoing {
        doc_name: "todo",
        doc_id: "d",
        client_id: ClientId::random(),
        peer: "bob@example.test",
        message_id: "<m1@example.test>",
        in_reply_to: reply,
        body: body.as_bytes(),
        ack_only: false,
        version: 3,
        base: None,
        base_version: 0,
        base_len: 0,
        peer_key: Some(peer_key),
        want: false,
    }
}

/// The device tag every test mail carries.
fn device() -> &'static DeviceTag {
    static TAG: std::sync::OnceLock<DeviceTag> = std::sync::OnceLock::new();
    TAG.get_or_init(|| DeviceTag {
        id: "dddddddddddddddd".into(),
        name: Some("laptop".into()),
        retired: vec!["rrrrrrrrrrrrrrrr".into()],
    })
}

fn sender<'a>(address: &'a str, key: &'a SecretKey) -> Sender<'a> {
    Sender {
        address,
        name: Some("Alice"),
        key,
        device: device(),
    }
}

fn read(raw: &[u8], key: &SecretKey) -> Arrival {
    let known = |_: &str| true;
    let accept = |_: &str, _: &str| true;
    parse(
        "1".into(),
        raw,
        &Receiver {
            own: "alice@example.test",
            key,
            known: &known,
            accept: &accept,
        },
    )
}

#[test]
fn changes_round_trip_encrypted_with_nothing_of_them_outside() {
    let (a, b) = (
        generate("alice@example.test").unwrap(),
        generate("bob@example.test").unwrap(),
    );
    let bob_pub = b.public().to_bytes().unwrap();
    for body in [
        "{\"minisync\":\"changes\",\"secret\":\"swordfish\"}".to_string(),
        format!(
            "{{\"x\":\"{}\",\"secret\":\"swordfish\"}}",
            "y".repeat(100_000)
        ),
    ] {
        let (env, raw) = build(
            &out(&body, Some("<prev@example.test>"), &bob_pub),
            &sender("alice@example.test", &a),
        )
        .unwrap();
        assert_eq!(env.to()[0].to_string(), "bob@example.test");
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Minisync-Version: 5"), "{text}");
        assert!(
            !text.contains("laptop") && !text.contains("dddddddddddddddd"),
            "{text}"
        );
        assert!(text.contains("multipart/encrypted"), "{text}");
        assert!(
            text.contains("Autocrypt: addr=alice@example.test; prefer-encrypt=mutual;"),
            "{text}"
        );
        for hidden in [
            "swordfish",
            "todo",
            "Minisync-Document",
            "prev@example.test",
        ] {
            assert!(!text.contains(hidden), "{hidden} outside the encryption");
        }
        assert!(
            raw.len() < body.len() / 10 + 4000,
            "compressed: {}",
            raw.len()
        );
        let header_end = text.find("\r\n\r\n").unwrap();
        assert!(is_agent_mail(&raw[..header_end + 4]));
        let got = read(&raw, &b);
        assert_eq!(got.payloads.unwrap(), vec![body.clone().into_bytes()]);
        assert_eq!(got.from, "alice@example.test");
        assert_eq!(got.doc, "todo");
        assert_eq!(got.message_id.as_deref(), Some("<m1@example.test>"));
        assert_eq!(got.in_reply_to.as_deref(), Some("<prev@example.test>"));
        assert_eq!(got.device.as_ref(), Some(device()));
        assert!(!got.want);
        let sealed = got.sealed.unwrap();
        assert_eq!(sealed.fingerprint, a.fingerprint());
        assert_eq!(sealed.hello, None);
        // Our own copy decrypts too (encrypted to ourselves as well).
        assert!(read(&raw, &a).payloads.is_ok());
    }
}

#[test]
fn a_hello_carries_the_key_and_no_document() {
    let (a, b) = (
        generate("alice@example.test").unwrap(),
        generate("bob@example.test").unwrap(),
    );
    let (_, raw) = build_hello(
        "bob@example.test",
        "<h1@example.test>",
        true,
        &sender("alice@example.test", &a),
    )
    .unwrap();
    let got = read(&raw, &b);
    assert_eq!(got.payloads.unwrap(), Vec::<Vec<u8>>::new());
    let sealed = got.sealed.unwrap();
    assert_eq!(sealed.hello, Some(true));
    assert_eq!(sealed.fingerprint, a.fingerprint());
    assert_eq!(
        openpgp::PublicKey::from_bytes(&sealed.key)
            .unwrap()
            .fingerprint(),
        a.fingerprint()
    );
    // A hello whose Autocrypt key did not sign it.
    let m = generate("alice@example.test").unwrap();
    let (_, forged) = build_hello(
        "bob@example.test",
        "<h2@example.test>",
        false,
        &sender("alice@example.test", &m),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&forged).into_owned();
    let real = autocrypt::build("alice@example.test", &a.public().to_bytes().unwrap());
    let start = text.find("Autocrypt: ").unwrap() + "Autocrypt: ".len();
    let end = start + text[start..].find("\r\n").unwrap();
    let mut end = end;
    while text[end + 2..].starts_with(' ') {
        end = end + 2 + text[end + 2..].find("\r\n").unwrap();
    }
    let swapped = format!("{}{}{}", &text[..start], real, &text[end..]);
    let e = read(swapped.as_bytes(), &b).payloads.unwrap_err();
    assert!(e.contains("bad signature"), "{e}");
}

#[test]
fn mail_for_another_key_unencrypted_or_old_is_refused_with_the_reason() {
    let (a, b, c) = (
        generate("alice@example.test").unwrap(),
        generate("bob@example.test").unwrap(),
        generate("carol@example.test").unwrap(),
    );
    let carol_pub = c.public().to_bytes().unwrap();
    let (_, raw) = build(
        &out("{}", None, &carol_pub),
        &sender("alice@example.test", &a),
    )
    .unwrap();
    let got = read(&raw, &b);
    let e = got.payloads.unwrap_err();
    assert!(e.contains("does not decrypt"), "{e}");
    // From the own address (the reader's `own` here): the hint for a device not joined yet.
    assert!(e.contains("agent device join"), "{e}");
    assert!(got.sealed.is_none());
    let (_, raw) = build(
        &out("{}", None, &carol_pub),
        &sender("bob@example.test", &b),
    )
    .unwrap();
    let e = read(&raw, &a).payloads.unwrap_err();
    assert!(
        e.contains("does not decrypt") && !e.contains("device join"),
        "{e}"
    );
    let plain = b"Minisync-Version: 5\r\nFrom: alice@example.test\r\nMessage-ID: <x@y>\r\nContent-Type: text/plain\r\n\r\n{}";
    let e = read(plain, &b).payloads.unwrap_err();
    assert!(e.contains("Autocrypt header without addr"), "{e}");
    let old = b"Minisync-Version: 4\r\nFrom: a@b.c\r\nMessage-ID: <x@y>\r\n\r\n";
    let e = read(old, &b).payloads.unwrap_err();
    assert!(
        e.contains("older minisync") && e.contains("upgrade minisync"),
        "{e}"
    );
    let new = b"Minisync-Version: 10\r\nFrom: a@b.c\r\nMessage-ID: <x@y>\r\n\r\n";
    assert!(
        read(new, &b)
            .payloads
            .unwrap_err()
            .contains("newer minisync")
    );
    assert!(!is_agent_mail(
        b"From: friend@example.test\r\nSubject: lunch?\r\n\r\n"
    ));
}

#[test]
fn a_strangers_mail_is_not_decrypted_and_a_forged_inner_sender_is_refused() {
    let (a, b) = (
        generate("alice@example.test").unwrap(),
        generate("bob@example.test").unwrap(),
    );
    let bob_pub = b.public().to_bytes().unwrap();
    let (_, raw) = build(
        &out("{}", None, &bob_pub),
        &sender("alice@example.test", &a),
    )
    .unwrap();
    let known = |from: &str| from == "carol@example.test";
    let accept = |_: &str, _: &str| true;
    let rx = Receiver {
        own: "bob@example.test",
        key: &b,
        known: &known,
        accept: &accept,
    };
    let got = parse("1".into(), &raw, &rx);
    assert!(got.payloads.unwrap_err().contains("not decrypted"));
    // Signed by alice's key, but the signed (inner) From is mallory's.
    let o = out("{}", None, &bob_pub);
    let whole = Piece {
        body: o.body,
        message_id: o.message_id,
        part: None,
    };
    let inner_mallory = inner(&o, &sender("mallory@example.test", &a), &whole);
    let armored = openpgp::seal(inner_mallory, &a, &[&b.public()]).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let start = text.find("-----BEGIN PGP MESSAGE-----").unwrap();
    let end = text.find("-----END PGP MESSAGE-----").unwrap() + "-----END PGP MESSAGE-----".len();
    let forged = format!(
        "{}{}{}",
        &text[..start],
        armored.trim_end().replace('\n', "\r\n"),
        &text[end..]
    );
    let e = read(forged.as_bytes(), &b).payloads.unwrap_err();
    assert!(
        e.contains("signed sender is \"mallory@example.test\""),
        "{e}"
    );
}

#[test]
fn a_want_reads_only_from_the_own_address_and_device_headers_are_checked() {
    let a = generate("alice@example.test").unwrap();
    let own = a.public().to_bytes().unwrap();
    let mut o = out("", None, &own);
    o.peer = "alice@example.test";
    o.want = true;
    let (_, raw) = build(&o, &sender("alice@example.test", &a)).unwrap();
    let got = read(&raw, &a);
    assert!(got.want);
    assert_eq!(got.payloads.unwrap(), Vec::<Vec<u8>>::new());
    // The same request from someone else is refused.
    let m = generate("mallory@example.test").unwrap();
    let mut o2 = out("", None, &own);
    o2.want = true;
    let (_, raw) = build(&o2, &sender("mallory@example.test", &m)).unwrap();
    let e = read(&raw, &a).payloads.unwrap_err();
    assert!(e.contains("only the account's own devices"), "{e}");
    // A device id that is not one.
    let bad = DeviceTag {
        id: "not an id".into(),
        name: None,
        retired: Vec::new(),
    };
    let me = Sender {
        address: "alice@example.test",
        name: None,
        key: &a,
        device: &bad,
    };
    let (_, raw) = build(&out("{}", None, &own), &me).unwrap();
    let e = read(&raw, &a).payloads.unwrap_err();
    assert!(e.contains("is not a device id"), "{e}");
}

#[test]
fn a_part_mail_round_trips_its_description_and_a_bad_one_is_refused() {
    use crate::transport::parts::{PartInfo, hash};
    let (a, b) = (
        generate("alice@example.test").unwrap(),
        generate("bob@example.test").unwrap(),
    );
    let bob_pub = b.public().to_bytes().unwrap();
    let whole = "{\"minisync\":\"changes\"}";
    let info = PartInfo {
        transfer: "0123456789abcdef0123456789abcdef".into(),
        index: 2,
        count: 3,
        size: 300,
        hash: hash(whole.as_bytes()),
        of: "<m1@example.test>".into(),
    };
    let o = out("", None, &bob_pub);
    let me = sender("alice@example.test", &a);
    let piece = |part: &PartInfo| {
        let p = Piece {
            body: b"a piece of text",
            message_id: "<part2.x@example.test>",
            part: Some(part),
        };
        build_piece(&o, &me, &p).unwrap().1
    };
    let raw = piece(&info);
    let text = String::from_utf8_lossy(&raw);
    assert!(text.contains("Subject: minisync (part 2 of 3)"), "{text}");
    // The description travels inside the encryption only.
    assert!(!text.contains("Minisync-Transfer"), "{text}");
    let got = read(&raw, &b);
    assert_eq!(got.payloads, Ok(vec![b"a piece of text".to_vec()]));
    assert_eq!(got.split, Split::Part(info.clone()));
    assert_eq!(got.message_id.as_deref(), Some("<part2.x@example.test>"));
    // A whole mail is no part.
    let (_, raw) = build(&out("{}", None, &bob_pub), &me).unwrap();
    assert_eq!(read(&raw, &b).split, Split::Whole);
    // Hostile descriptions are refused with the reason, whatever the signature says.
    let billion = PartInfo {
        count: 1_000_000_000,
        ..info.clone()
    };
    let e = read(&piece(&billion), &b).payloads.unwrap_err();
    assert!(e.contains("1000000000 parts"), "{e}");
    let beyond = PartInfo {
        index: 4,
        ..info.clone()
    };
    let e = read(&piece(&beyond), &b).payloads.unwrap_err();
    assert!(e.contains("part 4 of 3"), "{e}");
    let tiny = PartInfo {
        size: 5,
        count: 1,
        index: 1,
        ..info
    };
    let e = read(&piece(&tiny), &b).payloads.unwrap_err();
    assert!(e.contains("carries 15 bytes of a 5-byte transfer"), "{e}");
}
