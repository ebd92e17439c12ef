//! End-to-end OpenPGP over the real mail stack: keys learned by hello (trust on first use) or
//! pinned from invitation lines, no document value in any stored mail, forged, unsigned, tampered
//! and misaddressed mail quarantined with the reason, a changed key refused until accepted, and
//! replayed mail without effect. Without the stack these tests are reported as ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::*;
use minisync::transport::mail::openpgp;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);

/// Every stored message file under a maildir, all folders.
fn all_mail(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .parent()
                .and_then(|x| x.file_name())
                .is_some_and(|n| n == "cur" || n == "new")
            {
                out.push(p);
            }
        }
    }
    out
}

/// Both replicas equal and every change acknowledged.
fn in_step(alice: &Node, bob: &Node) {
    let (a, b) = (&alice.address, &bob.address);
    wait_until(T, "both replicas in step", || {
        alice.cmd(&["sync"]);
        bob.cmd(&["sync"]);
        alice.doc("todo").is_some()
            && alice.doc("todo") == bob.doc("todo")
            && alice.acks("todo", b).1 == alice.version("todo")
            && bob.acks("todo", a).1 == bob.version("todo")
    });
}

fn key_of<'a>(status: &'a Value, peer: &str) -> &'a Value {
    status["keys"]
        .as_array()
        .and_then(|ks| ks.iter().find(|k| k["peer"] == json!(peer)))
        .unwrap_or(&Value::Null)
}

/// A well-formed changes object of `node`'s client setting `n` (merged when genuine).
fn change_n(node: &Node, value: i64) -> Value {
    let r = replica(node, "todo");
    let client = r.client_id().to_string();
    let root = r.changes().to_value()["changes"]["_s"]["id"].clone();
    let hlc = format!("{:x}", minisync::engine::system_now_ms() << 16);
    json!({
        "minisync": "changes", "formatVersion": minisync::engine::FORMAT_VERSION, "id": r.id(), "sentBy": client,
        "fromVersion": 100, "changesSince": 0, "knows": {&client: hlc}, "clientStates": [],
        "changes": {"n": value, "_s": {"id": root, "u": 100, "k": {"n": format!("{hlc}-{client}")}}}
    })
}

/// Syncs `node` until it holds `count` quarantined messages; returns the newest one's reason.
fn quarantined(node: &Node, count: usize) -> String {
    let mut reason = String::new();
    wait_until(T, &format!("{count} quarantined"), || {
        node.cmd(&["sync"]);
        let s = node.status();
        let q = s["quarantined"].as_array().cloned().unwrap_or_default();
        reason = q
            .last()
            .map(|m| m["reason"].to_string())
            .unwrap_or_default();
        q.len() == count
    });
    reason
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn agents_knowing_only_addresses_exchange_keys_converge_and_store_no_value_in_clear() {
    let stack = Stack::get();
    let (a, b) = (address("alice"), address("bob"));
    let alice = sharing_todo(&stack, &a, &[&b], Security::Plain);
    let bob = sharing_todo(&stack, &b, &[&a], Security::Plain);
    let (s1, s2) = (
        format!("swordfish{:08x}", rand::random::<u32>()),
        format!("marlin{:08x}", rand::random::<u32>()),
    );
    alice.import("todo", &json!({"secret": s1}));
    // The first pass sends no changes yet, only a hello, and says so.
    let first = alice.ok(&["sync"]);
    assert!(
        first.contains("sent 0") && first.contains("hellos sent 1"),
        "{first}"
    );
    in_step(&alice, &bob);
    bob.ok(&["doc", "set", "todo", "other", &format!("\"{s2}\"")]);
    in_step(&alice, &bob);
    assert_eq!(
        alice.doc("todo").unwrap(),
        json!({"secret": s1, "other": s2})
    );
    for (node, peer) in [(&alice, &b), (&bob, &a)] {
        let k = key_of(&node.status(), peer).clone();
        assert_eq!(k["trust"], json!("first-use"), "{k}");
        assert_eq!(k["fingerprint"].as_str().unwrap().len(), 40, "{k}");
    }
    let files: Vec<PathBuf> = [&a, &b]
        .iter()
        .flat_map(|who| all_mail(&stack.maildir(who)))
        .collect();
    assert!(files.len() >= 6, "the mails are kept: {}", files.len());
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for value in [&s1, &s2, &"Minisync-Document".to_string()] {
            assert!(
                !text.contains(value.as_str()),
                "{value} in clear in {}",
                f.display()
            );
        }
    }
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn with_invitation_lines_no_document_mail_goes_unencrypted() {
    let stack = Stack::get();
    let (a, b) = (address("alice"), address("bob"));
    let alice = sharing_todo(&stack, &a, &[&b], Security::Plain);
    let bob = sharing_todo(&stack, &b, &[&a], Security::Plain);
    let (ia, ib) = (alice.ok(&["peer", "invite"]), bob.ok(&["peer", "invite"]));
    assert!(ia.starts_with(&format!("minisync-peer {a} ")), "{ia}");
    bob.ok(&["peer", "add", ia.trim()]);
    alice.ok(&["peer", "add", ib.trim()]);
    assert!(
        std::fs::read_to_string(&bob.config)
            .unwrap()
            .contains("fingerprint = \"")
    );
    let value = format!("tuna{:08x}", rand::random::<u32>());
    alice.import("todo", &json!({"v": value}));
    in_step(&alice, &bob);
    assert_eq!(key_of(&bob.status(), &a)["trust"], json!("invitation"));
    let shown = bob.ok(&["peer", "show", &a]);
    let fpr = ia.split_whitespace().skip(2).collect::<Vec<_>>().join(" ");
    assert!(
        shown.contains(&fpr.replace(' ', "")[..4]) && shown.contains("invitation"),
        "{shown}"
    );
    bob.ok(&["peer", "verify", &a]);
    assert_eq!(key_of(&bob.status(), &a)["trust"], json!("verified"));
    for f in [&a, &b]
        .iter()
        .flat_map(|who| all_mail(&stack.maildir(who)))
    {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        let head = &text[..text
            .find("\r\n\r\n")
            .or(text.find("\n\n"))
            .unwrap_or(text.len())];
        assert!(head.contains("Minisync-Version: 5"), "{head}");
        assert!(
            head.contains("multipart/encrypted") || head.contains("Minisync-Kind: hello"),
            "agent mail neither encrypted nor a hello: {head}"
        );
        assert!(
            !text.contains(&value) && !text.contains("minisync-changes.bin"),
            "{text}"
        );
    }
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn forged_unsigned_tampered_misaddressed_and_missigned_mail_is_quarantined_with_the_reason() {
    let stack = Stack::get();
    let (a, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    alice.import("todo", &json!({"n": 0}));
    in_step(&alice, &bob);
    let (alice_key, bob_pub) = (node_key(&alice), node_key(&bob).public());
    let other = openpgp::generate(&a).unwrap();
    // 1. Signed by another key than alice's (carried in its Autocrypt header).
    send_sealed(
        &stack,
        &a,
        &b,
        &other,
        &bob_pub,
        "todo",
        &change_n(&alice, 1),
    );
    let reason = quarantined(&bob, 1);
    assert!(reason.contains("KEY CHANGED"), "{reason}");
    let out = bob.cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains(&format!("agent peer accept-key {a}")),
        "{text}"
    );
    // 2. Not encrypted (a plain changes mail, as format 1 was, but claiming format 2).
    let ac =
        minisync::transport::mail::autocrypt::build(&a, &alice_key.public().to_bytes().unwrap());
    let body = change_n(&alice, 2).to_string();
    let plain = format!(
        "From: {a}\r\nTo: {b}\r\nSubject: x\r\nMessage-ID: <plain{:x}@example.test>\r\nMinisync-Version: 5\r\n\
         Autocrypt: {ac}\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: application/json\r\n\
         Content-Disposition: attachment; filename=\"minisync-changes.bin\"\r\n\r\n{body}\r\n--zz--\r\n",
        rand::random::<u32>()
    );
    send_raw(&stack, &a, &b, plain.as_bytes());
    let reason = quarantined(&bob, 2);
    assert!(reason.contains("not encrypted"), "{reason}");
    // 3. Genuine, but its ciphertext changed on the way.
    let raw = sealed_raw(&a, &b, &alice_key, &bob_pub, &change_n(&alice, 3));
    let mut text = String::from_utf8(raw).unwrap();
    // In the encrypted data (its end), not in one of the session key packets at its start.
    let end = text.find("-----END PGP MESSAGE-----").unwrap();
    let at = text[..end].rfind("\n=").unwrap() - 10;
    let c = if &text[at..at + 1] == "A" { "B" } else { "A" };
    text.replace_range(at..at + 1, c);
    send_raw(&stack, &a, &b, text.as_bytes());
    let reason = quarantined(&bob, 3);
    assert!(reason.contains("does not decrypt"), "{reason}");
    // 4. Signed by alice, but encrypted to another key than bob's.
    let carol = openpgp::generate("carol@example.test").unwrap().public();
    send_sealed(
        &stack,
        &a,
        &b,
        &alice_key,
        &carol,
        "todo",
        &change_n(&alice, 4),
    );
    let reason = quarantined(&bob, 4);
    assert!(reason.contains("does not decrypt"), "{reason}");
    // 5. Signed and encrypted with alice's real key, but the signed sender inside is another.
    let body = change_n(&alice, 6).to_string();
    let inner = format!(
        "Content-Type: multipart/mixed; boundary=\"in\"; protected-headers=\"v1\"\r\n\
         From: <carol@example.test>\r\nTo: <{b}>\r\nMessage-ID: <inner{:x}@example.test>\r\n\
         Minisync-Document: todo\r\nMinisync-Kind: changes\r\n\r\n--in\r\n\
         Content-Type: application/json\r\n\
         Content-Disposition: attachment; filename=\"minisync-changes.bin\"\r\n\r\n\
         {body}\r\n--in--\r\n",
        rand::random::<u32>()
    );
    let armored = openpgp::seal(inner.into_bytes(), &alice_key, &[&bob_pub]).unwrap();
    let outer = format!(
        "From: {a}\r\nTo: {b}\r\nSubject: minisync\r\nMessage-ID: <outer{:x}@example.test>\r\n\
         Minisync-Version: 5\r\nAutocrypt: {ac}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"out\"\r\n\r\n\
         --out\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\
         --out\r\nContent-Type: application/octet-stream\r\n\r\n{}\r\n--out--\r\n",
        rand::random::<u32>(),
        armored.replace('\n', "\r\n")
    );
    send_raw(&stack, &a, &b, outer.as_bytes());
    let reason = quarantined(&bob, 5);
    assert!(reason.contains("signed sender is"), "{reason}");
    assert_eq!(
        bob.doc("todo").unwrap(),
        json!({"n": 0}),
        "nothing of it merged"
    );
    // The same changes, genuinely signed and encrypted, merge: the refusals were for the mail.
    send_changes_as(&stack, &alice, &bob, "todo", &change_n(&alice, 5));
    wait_until(T, "the genuine mail merges", || {
        bob.cmd(&["sync"]);
        bob.doc("todo") == Some(json!({"n": 5}))
    });
}

/// A genuine changes mail's bytes, not sent.
fn sealed_raw(
    from: &str,
    to: &str,
    key: &openpgp::SecretKey,
    recipient: &openpgp::PublicKey,
    body: &Value,
) -> Vec<u8> {
    // In the compact form, as the agent writes it.
    let bytes = minisync::engine::compact::encode(body);
    let peer_key = recipient.to_bytes().unwrap();
    let mid = format!("<t{:08x}@example.test>", rand::random::<u32>());
    let out = minisync::transport::Outgoing {
        doc_name: "todo",
        doc_id: body["id"].as_str().unwrap(),
        client_id: minisync::engine::ClientId::parse(body["sentBy"].as_str().unwrap()).unwrap(),
        peer: to,
        message_id: &mid,
        in_reply_to: None,
        body: &bytes,
        ack_only: false,
        version: 100,
        base: None,
        base_version: 0,
        base_len: 0,
        peer_key: Some(&peer_key),
        want: false,
    };
    let device = minisync::transport::DeviceTag {
        id: "tttttttttttttttt".into(),
        name: None,
        retired: Vec::new(),
    };
    let me = minisync::transport::mail::envelope::Sender {
        address: from,
        name: None,
        key,
        device: &device,
    };
    minisync::transport::mail::envelope::build(&out, &me)
        .unwrap()
        .1
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_changed_key_is_refused_until_accepted_then_nothing_is_lost() {
    let stack = Stack::get();
    let (a, _b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    alice.import("todo", &json!({"n": 0}));
    in_step(&alice, &bob);
    // Alice's key is replaced (her next start creates a new one).
    let db = rusqlite::Connection::open(alice.dir.path().join("state/agent.sqlite")).unwrap();
    assert_eq!(db.execute("DELETE FROM account_keys", []).unwrap(), 1);
    drop(db);
    alice.ok(&["doc", "set", "todo", "n", "1"]);
    alice.sync();
    let reason = quarantined(&bob, 1);
    assert!(reason.contains("KEY CHANGED"), "{reason}");
    assert_eq!(bob.doc("todo").unwrap()["n"], json!(0));
    let k = key_of(&bob.status(), &a).clone();
    assert_eq!(
        k["accept_with"],
        json!(format!("agent peer accept-key {a}")),
        "{k}"
    );
    // Meanwhile bob edits: his mail goes to alice's old key, which she no longer has.
    bob.ok(&["doc", "set", "todo", "m", "1"]);
    bob.sync();
    let reason = quarantined(&alice, 1);
    assert!(reason.contains("does not decrypt"), "{reason}");
    // Still refused on the next passes, until bob accepts the key.
    bob.sync();
    assert_eq!(bob.doc("todo").unwrap()["n"], json!(0));
    assert!(bob.ok(&["peer", "show", &a]).contains("KEY CHANGED"));
    let out = bob.ok(&["peer", "accept-key", &a]);
    assert!(out.contains("accepted"), "{out}");
    let list: Value = serde_json::from_str(&bob.ok(&["quarantine", "list", "--json"])).unwrap();
    let id = list[0]["id"].as_i64().unwrap().to_string();
    let out = bob.ok(&["quarantine", "release", &id]);
    assert!(out.contains("merged"), "{out}");
    in_step(&alice, &bob);
    assert_eq!(alice.doc("todo").unwrap(), json!({"n": 1, "m": 1}));
    for node in [&alice, &bob] {
        let s = node.status();
        assert_eq!(s["quarantined"], json!([]), "{s}");
        assert!(
            s["keys"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["key_changed"].is_null())
        );
    }
    // Edits flow both ways again.
    alice.ok(&["doc", "set", "todo", "n", "2"]);
    in_step(&alice, &bob);
    assert_eq!(bob.doc("todo").unwrap()["n"], json!(2));
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn replaying_old_genuine_mail_changes_nothing() {
    let stack = Stack::get();
    let (_a, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    alice.import("todo", &json!({"n": 1}));
    in_step(&alice, &bob);
    alice.ok(&["doc", "set", "todo", "n", "2"]);
    in_step(&alice, &bob);
    let version = bob.version("todo");
    let old = messages(&stack.maildir(&b), "Minisync");
    assert!(old.len() >= 2, "{old:?}");
    for (i, f) in old.iter().enumerate() {
        let raw = String::from_utf8(std::fs::read(f).unwrap()).unwrap();
        // Every other copy with a new outer Message-ID: only the signed one inside counts.
        let raw = if i % 2 == 0 {
            raw
        } else {
            let at = raw.find("Message-ID: <").unwrap() + "Message-ID: <".len();
            format!("{}replay{i}.{}", &raw[..at], &raw[at..])
        };
        send_raw(&stack, &alice.address, &b, raw.as_bytes());
    }
    wait_until(T, "the replays are read", || {
        bob.cmd(&["sync"]);
        messages(&stack.maildir(&b), "").is_empty()
            && messages(&stack.maildir(&b), "Minisync").len() == 2 * old.len()
    });
    assert_eq!(bob.doc("todo").unwrap(), json!({"n": 2}));
    assert_eq!(bob.version("todo"), version);
    assert_eq!(bob.status()["quarantined"], json!([]));
}
