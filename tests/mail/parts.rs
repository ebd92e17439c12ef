//! Changes larger than `max-mail-size` travel in several mails (a transfer of parts) over the real
//! mail stack: the parts arrive in any order and twice, a lost part comes again with the sender's
//! resend (as a fresh transfer, never mixed with the old one), and parts that are broken or
//! hostile (a wrong hash, absurd counts, parts that disagree) are quarantined with a reason while
//! nothing of them is merged and the agent goes on. The parts are lost, duplicated and reordered
//! in the receiver's Maildir itself. Without the stack these tests are ignored.

use std::path::{Path, PathBuf};

use crate::common::*;
use minisync::transport::parts::{PartInfo, hash};
use serde_json::{Value, json};

/// Sets `max-mail-size` in a node's `[account]` table.
fn set_max_mail_size(node: &Node, size: &str) {
    let text = std::fs::read_to_string(&node.config).unwrap();
    let text = text.replacen(
        "[account]\n",
        &format!("[account]\nmax-mail-size = \"{size}\"\n"),
        1,
    );
    std::fs::write(&node.config, text).unwrap();
}

/// Base64 of random bytes: text that compresses little, so its size on the wire is foreseeable.
fn noise(n: usize) -> String {
    use base64::Engine;
    let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The part number of a part mail, from its outer Subject ("minisync (part 2 of 5)").
fn part_number(mail: &Path) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string(mail).ok()?;
    let subject = text.lines().find(|l| l.starts_with("Subject: "))?;
    let rest = subject.split_once("(part ")?.1;
    let (i, n) = rest.trim_end_matches(')').split_once(" of ")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

/// Moves every mail out of `who`'s inbox into `stash`; returns them by part number.
fn stash_inbox(stack: &Stack, who: &str, stash: &Path) -> Vec<(u32, u32, PathBuf)> {
    // Postfix delivers the parts one by one after the send returned: wait for all of them.
    wait_until(T, "every part mail in the inbox", || {
        let inbox = messages(&stack.maildir(who), "");
        inbox
            .first()
            .and_then(|m| part_number(m))
            .is_some_and(|(_, n)| inbox.len() == n as usize)
    });
    std::fs::create_dir_all(stash).unwrap();
    let mut out = Vec::new();
    for m in messages(&stack.maildir(who), "") {
        let (i, n) = part_number(&m).unwrap_or_else(|| panic!("not a part mail: {}", m.display()));
        let to = stash.join(format!("part{i}"));
        std::fs::rename(&m, &to).unwrap();
        out.push((i, n, to));
    }
    out.sort();
    out
}

/// Delivers a copy of a mail file into `who`'s inbox under a new name (Dovecot takes it as a
/// new message), readable by Dovecot.
fn deliver(stack: &Stack, who: &str, mail: &Path) {
    let name = format!(
        "{}.M{}P1.test",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        rand::random::<u32>()
    );
    let to = stack.maildir(who).join("new").join(&name);
    std::fs::copy(mail, &to).unwrap();
    // Dovecot reads mail files as its own user.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644)).unwrap();
}

fn incomplete(node: &Node) -> Vec<Value> {
    node.status()["mail"]["incomplete_transfers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn parts_in_reverse_order_and_twice_merge_once_the_last_is_there() {
    let stack = Stack::get();
    let (a, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    set_max_mail_size(&alice, "20kB");
    alice.import("todo", &json!({ "photo": noise(60_000), "n": 1 }));
    let out = alice.sync();
    assert!(out.contains("sent 1"), "{out}");
    let parts = stash_inbox(&stack, &b, &alice.dir.path().join("stash"));
    let count = parts.len() as u32;
    assert!(count >= 4, "{count} parts");
    for (_, n, mail) in &parts {
        assert_eq!(*n, count);
        let size = std::fs::metadata(mail).unwrap().len();
        assert!(size <= 20_000, "a part of {size} bytes");
    }
    // Last part first, then down to the first; part `count` comes twice.
    for (k, (i, _, mail)) in parts.iter().rev().enumerate() {
        deliver(&stack, &b, mail);
        if k == 1 {
            deliver(&stack, &b, &parts[parts.len() - 1].2);
        }
        let log = bob.cmd(&["sync"]);
        let log = String::from_utf8_lossy(&log.stderr);
        if *i > 1 {
            assert_eq!(bob.doc("todo"), None, "merged with part {i} still missing");
            let waiting = incomplete(&bob);
            assert_eq!(waiting.len(), 1, "{waiting:?} {log}");
            assert_eq!(waiting[0]["have"], json!(k + 1), "{waiting:?}");
            assert_eq!(waiting[0]["count"], json!(count));
            assert_eq!(waiting[0]["sender"], json!(a));
        }
    }
    assert_eq!(bob.doc("todo"), alice.doc("todo"));
    let st = bob.status();
    assert_eq!(incomplete(&bob), Vec::<Value>::new());
    assert_eq!(st["quarantined"], json!([]), "{st}");
    // Every part mail, the duplicate too, went to the processed folder.
    assert_eq!(
        messages(&stack.maildir(&b), "Minisync").len(),
        parts.len() + 1
    );
    // Bob's acknowledgement reaches alice: she counts the changes as received.
    alice.sync();
    let (_, acked) = alice.acks("todo", &b);
    assert_eq!(acked, alice.version("todo"));
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_lost_part_comes_again_with_the_resend_as_a_fresh_transfer() {
    let stack = Stack::get();
    let (a, b, alice, bob) = pair(&stack, "0s", "3s", Security::Plain, Security::Plain);
    set_max_mail_size(&alice, "20kB");
    alice.import("todo", &json!({ "photo": noise(50_000) }));
    alice.sync();
    let parts = stash_inbox(&stack, &b, &alice.dir.path().join("stash"));
    assert!(parts.len() >= 3, "{} parts", parts.len());
    // Part 2 is lost; the others arrive.
    for (i, _, mail) in &parts {
        if *i != 2 {
            deliver(&stack, &b, mail);
        }
    }
    bob.sync();
    assert_eq!(bob.doc("todo"), None);
    let waiting = incomplete(&bob);
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["have"], json!(parts.len() - 1));
    // No acknowledgement came: after the resend interval alice sends everything again, in a new
    // transfer, which completes on its own.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let out = alice.sync();
    assert!(out.contains("sent 1"), "{out}");
    bob.sync();
    assert_eq!(bob.doc("todo"), alice.doc("todo"));
    let st = bob.status();
    assert_eq!(st["quarantined"], json!([]), "{st}");
    // The old transfer still waits for its part 2 (it goes after a week); the two never mixed.
    let waiting = incomplete(&bob);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["sender"], json!(a));
    assert_eq!(waiting[0]["have"], json!(parts.len() - 1));
    let text = bob.ok(&["status"]);
    assert!(text.contains("waiting for the rest"), "{text}");
}

/// Sends one part mail from the node `from` to the node `to`, signed and encrypted with their
/// real keys, carrying `chunk` under the description `info` (which may lie).
fn send_part(stack: &Stack, from: &Node, to: &Node, info: &PartInfo, chunk: &str) {
    let key = node_key(from);
    let recipient = node_key(to).public().to_bytes().unwrap();
    let whole_id = info.of.clone();
    let out = minisync::transport::Outgoing {
        doc_name: "todo",
        doc_id: "",
        client_id: minisync::engine::ClientId::random(),
        peer: &to.address,
        message_id: &whole_id,
        in_reply_to: None,
        body: b"",
        ack_only: false,
        version: 1,
        base: None,
        base_version: 0,
        base_len: 0,
        peer_key: Some(&recipient),
        want: false,
    };
    let device = test_device();
    let me = minisync::transport::mail::envelope::Sender {
        address: &from.address,
        name: None,
        key: &key,
        device: &device,
    };
    let mid = format!("<crafted{:08x}@example.test>", rand::random::<u32>());
    let piece = minisync::transport::mail::envelope::Piece {
        body: chunk.as_bytes(),
        message_id: &mid,
        part: Some(info),
    };
    let (_, raw) = minisync::transport::mail::envelope::build_piece(&out, &me, &piece).unwrap();
    send_raw(stack, &from.address, &to.address, &raw);
}

fn transfer(text: &str, count: u32) -> PartInfo {
    PartInfo {
        transfer: format!("{:032x}", rand::random::<u128>()),
        index: 1,
        count,
        size: text.len() as u64,
        hash: hash(text.as_bytes()),
        of: format!("<whole{:08x}@example.test>", rand::random::<u32>()),
    }
}

fn reasons(node: &Node) -> Vec<String> {
    node.status()["quarantined"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|q| q["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn broken_and_hostile_parts_are_quarantined_with_reasons_and_nothing_is_merged() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let text = json!({"minisync": "changes", "padding": "p".repeat(3000)}).to_string();
    let (one, two) = text.split_at(1500);
    // A transfer whose parts, put together, do not match its hash.
    let lying = PartInfo {
        hash: hash(b"something else"),
        ..transfer(&text, 2)
    };
    send_part(&stack, &alice, &bob, &lying, one);
    send_part(
        &stack,
        &alice,
        &bob,
        &PartInfo {
            index: 2,
            ..lying.clone()
        },
        two,
    );
    // A count of a billion, an index beyond the count.
    let billion = PartInfo {
        count: 1_000_000_000,
        size: 200_000_000,
        ..transfer(&text, 1)
    };
    send_part(&stack, &alice, &bob, &billion, one);
    let beyond = PartInfo {
        index: 5,
        ..transfer(&text, 3)
    };
    send_part(&stack, &alice, &bob, &beyond, one);
    // Two parts of one transfer that disagree on the count.
    let first = transfer(&text, 2);
    send_part(&stack, &alice, &bob, &first, one);
    let other = PartInfo {
        index: 2,
        count: 3,
        ..first.clone()
    };
    send_part(&stack, &alice, &bob, &other, two);
    wait_until(T, "the six crafted parts arrive", || {
        messages(&stack.maildir(&b), "").len() == 6
    });
    bob.cmd(&["sync"]);
    let got = reasons(&bob);
    let has = |what: &str| got.iter().any(|r| r.contains(what));
    assert!(
        has("hash to sha256:") && has("nothing of it was merged"),
        "{got:?}"
    );
    assert!(has("1000000000 parts"), "{got:?}");
    assert!(has("part 5 of 3"), "{got:?}");
    assert!(has("says count 3") && has("disagree"), "{got:?}");
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(bob.doc("todo"), None);
    // The refused transfer is gone; the first part of the disagreeing one still waits.
    let waiting = incomplete(&bob);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    assert_eq!(waiting[0]["id"], json!(first.transfer));
    // The agent goes on: alice's real changes, in parts, still merge.
    set_max_mail_size(&alice, "20kB");
    alice.import("todo", &json!({ "photo": noise(40_000) }));
    alice.sync();
    bob.sync();
    assert_eq!(bob.doc("todo"), alice.doc("todo"));
}

const T: std::time::Duration = std::time::Duration::from_secs(60);
