//! IMAP servers that answer otherwise than Dovecot does, imitated by a proxy in front of the real
//! Dovecot (`common::imap_proxy`): no `[UIDNEXT]` in SELECT, no MOVE and no UIDPLUS with `UID
//! EXPUNGE` refused, a header search that answers every message, commands refused with `BAD`.
//! Also SMTP refusals: a message too large (552), which goes again in smaller parts, and an outage
//! during which the outbox must not pile up mails that newer ones supersede. Each test asserts on
//! the mailbox afterwards (the maildir files: what is where, with which flags), on the exit code of
//! `agent sync` and on what `agent status` says. Without the stack these tests are ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::imap_proxy::{HeaderSearch, ImapProxy, Quirks, hide_caps, literal};
use crate::common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

/// Points a `[account.imap]` or `[account.smtp]` table of a node's config at another port.
fn set_port(node: &Node, table: &str, port: u16) {
    let text = std::fs::read_to_string(&node.config).unwrap();
    let header = format!("[{table}]\n");
    let (head, tail) = text.split_once(&header).unwrap();
    let (before, after) = tail.split_once("port = ").unwrap();
    let (_, rest) = after.split_once('\n').unwrap();
    std::fs::write(
        &node.config,
        format!("{head}{header}{before}port = {port}\n{rest}"),
    )
    .unwrap();
}

fn proxy(stack: &Stack, quirks: Quirks) -> ImapProxy {
    ImapProxy::start(stack.var("IMAP_PORT").parse().unwrap(), quirks)
}

fn list(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The maildir flags of a message file (`S` seen, `T` deleted, …).
fn flags(p: &Path) -> String {
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    name.rsplit_once(":2,")
        .map(|(_, f)| f.to_string())
        .unwrap_or_default()
}

/// Flags a message in `who`'s inbox `\Deleted`, as a mail client does before it expunges.
fn flag_deleted(stack: &Stack, who: &str, message: &Path) {
    let name = message.file_name().unwrap().to_string_lossy().into_owned();
    let base = name.split(":2,").next().unwrap().to_string();
    let cur = stack.maildir(who).join("cur");
    std::fs::rename(message, cur.join(format!("{base}:2,T"))).unwrap();
}

fn wait_count(stack: &Stack, who: &str, folder: &str, n: usize) {
    wait_until(T, &format!("{n} mails in {who}'s {folder:?}"), || {
        messages(&stack.maildir(who), folder).len() == n
    });
}

fn is_agent_mail(p: &PathBuf) -> bool {
    std::fs::read_to_string(p).is_ok_and(|t| t.contains("Minisync-Version"))
}

/// A personal message from a friend, as `personal.eml` in the field cases.
fn personal(stack: &Stack, to: &str) -> String {
    let friend = address("friend");
    let text = format!(
        "From: Friend <{friend}>\r\nTo: {to}\r\nSubject: lunch on Friday\r\nMessage-ID: <lunch.{}@example.test>\r\n\r\nAre you free for lunch on Friday?\r\n",
        rand::random::<u32>()
    );
    send_raw(stack, &friend, to, text.as_bytes());
    text
}

/// Runs `agent sync`, which must end as `success` says; returns (stdout, stderr).
fn sync_expecting(node: &Node, success: bool) -> (String, String) {
    let out = node.cmd(&["sync"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.success(),
        success,
        "agent sync exit {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );
    (stdout, stderr)
}

#[test]
fn the_proxy_hides_capabilities_and_finds_literals() {
    let hidden = list(&["MOVE", "UIDPLUS"]);
    assert_eq!(
        hide_caps(
            "* OK [CAPABILITY IMAP4rev1 MOVE IDLE UIDPLUS] ready\r\n",
            &hidden
        ),
        "* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n"
    );
    assert_eq!(
        hide_caps("* CAPABILITY IMAP4rev1 IDLE MOVE\r\n", &hidden),
        "* CAPABILITY IMAP4rev1 IDLE\r\n"
    );
    assert_eq!(literal(b"* 1 FETCH (UID 4 BODY[] {120}\r\n"), Some(120));
    assert_eq!(literal(b"a1 LOGIN {5+}\r\n"), Some(5));
    assert_eq!(literal(b"* OK done\r\n"), None);
}

/// Mail that arrives while the agent moves another message away is announced once, in the
/// MOVE's reply (`* N EXISTS`); a running agent must read it at once, not at its next timed pass
/// (minutes away here: resend 10m, IDLE renewed every 4 minutes, no idle check).
#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn mail_announced_in_a_move_reply_is_read_at_once() {
    let stack = Stack::get();
    let (_, _, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let slow = proxy(
        &stack,
        Quirks {
            hold: vec![("UID MOVE".into(), Duration::from_secs(2))],
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", slow.port);
    bob.set_imap("idle-check = \"off\"");
    let held = || slow.log().iter().filter(|l| l.starts_with("held:")).count();
    alice.import("todo", &json!({"n": 0}));
    let (_sa, _sb) = (alice.spawn(), bob.spawn());
    wait_until(T, "bob receives the document", || bob.doc("todo").is_some());
    std::thread::sleep(Duration::from_secs(3)); // the moves of that pass are done
    let before = held();
    alice.ok(&["doc", "set", "todo", "n", "1"]);
    wait_until(T, "bob moves the first change away", || held() > before);
    // While that MOVE is held, the second change reaches bob's inbox.
    alice.ok(&["doc", "set", "todo", "n", "2"]);
    wait_until(
        Duration::from_secs(15),
        "bob merges the change announced in the MOVE's reply",
        || bob.doc("todo").is_some_and(|d| d["n"] == json!(2)),
    );
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn without_uidnext_in_select_agent_mail_is_still_received() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let quirky = proxy(
        &stack,
        Quirks {
            no_uidnext: true,
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", quirky.port);
    alice.import("todo", &json!({"items": ["milk"]}));
    alice.sync();
    wait_count(&stack, &b, "", 1);
    let (out, _) = sync_expecting(&bob, true);
    assert!(out.contains("merged 1"), "{out}");
    assert_eq!(bob.doc("todo").unwrap(), json!({"items": ["milk"]}));
    // A second change, found from the cursor the first pass left.
    alice.ok(&["doc", "set", "todo", "items[1]", "\"bread\""]);
    alice.sync();
    wait_count(&stack, &b, "", 1);
    let (out, _) = sync_expecting(&bob, true);
    assert!(out.contains("merged 1"), "{out}");
    assert_eq!(
        bob.doc("todo").unwrap(),
        json!({"items": ["milk", "bread"]})
    );
    assert!(messages(&stack.maildir(&b), "").is_empty());
    assert_eq!(messages(&stack.maildir(&b), "Minisync").len(), 2);
    assert!(
        quirky.log().iter().any(|l| l.starts_with("stripped:")),
        "the proxy never stripped UIDNEXT: {:?}",
        quirky.log()
    );
    assert!(bob.cmd(&["status"]).status.success());
    let check = bob.ok(&["check"]);
    assert!(
        check.contains("note  IMAP UIDNEXT in SELECT: no: the agent lists"),
        "{check}"
    );
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn without_move_and_uidplus_processed_mail_is_copied_once_and_leaves_the_inbox() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let quirky = proxy(
        &stack,
        Quirks {
            hide_caps: list(&["MOVE", "UIDPLUS"]),
            refuse: list(&["UID MOVE", "MOVE", "UID EXPUNGE"]),
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", quirky.port);
    let inbox = || messages(&stack.maildir(&b), "");
    personal(&stack, &b);
    alice.import("todo", &json!({"n": 1}));
    alice.sync();
    wait_count(&stack, &b, "", 2);
    for _ in 0..4 {
        sync_expecting(&bob, true);
    }
    assert_eq!(bob.doc("todo").unwrap(), json!({"n": 1}));
    assert_eq!(messages(&stack.maildir(&b), "Minisync").len(), 1);
    let left = inbox();
    assert_eq!(left.len(), 1, "only the personal mail stays: {left:?}");
    assert!(!is_agent_mail(&left[0]));
    assert_eq!(flags(&left[0]), "", "personal mail untouched: {left:?}");
    assert!(
        !quirky.log().iter().any(|l| l.starts_with("refused:")),
        "the agent used a command the server did not announce: {:?}",
        quirky.log()
    );
    let check = bob.ok(&["check"]);
    assert!(check.contains("note  IMAP MOVE: no"), "{check}");
    assert!(check.contains("note  IMAP UIDPLUS: no"), "{check}");
    assert!(check.contains("ok    IMAP IDLE: yes"), "{check}");
    // The user's mail client flags the personal mail deleted without expunging it. A plain
    // EXPUNGE would now remove it too: the agent's next mail is copied once and stays flagged.
    flag_deleted(&stack, &b, &left[0]);
    alice.ok(&["doc", "set", "todo", "n", "2"]);
    alice.sync();
    wait_count(&stack, &b, "", 2);
    let mut logs = String::new();
    for _ in 0..3 {
        logs += &sync_expecting(&bob, true).1;
    }
    assert_eq!(bob.doc("todo").unwrap(), json!({"n": 2}));
    assert!(logs.contains("not expunging"), "{logs}");
    assert_eq!(messages(&stack.maildir(&b), "Minisync").len(), 2);
    let left = inbox();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.iter().any(|p| !is_agent_mail(p) && flags(p) == "T"));
    assert!(
        left.iter()
            .any(|p| is_agent_mail(p) && flags(p).contains('T'))
    );
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn without_move_but_with_uidplus_only_the_agents_mail_is_expunged() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let quirky = proxy(
        &stack,
        Quirks {
            hide_caps: list(&["MOVE"]),
            refuse: list(&["UID MOVE", "MOVE"]),
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", quirky.port);
    // A personal message the user's client flagged deleted and has not expunged yet.
    personal(&stack, &b);
    wait_count(&stack, &b, "", 1);
    flag_deleted(&stack, &b, &messages(&stack.maildir(&b), "")[0]);
    alice.import("todo", &json!({"n": 1}));
    alice.sync();
    wait_count(&stack, &b, "", 2);
    for _ in 0..3 {
        sync_expecting(&bob, true);
    }
    assert_eq!(bob.doc("todo").unwrap(), json!({"n": 1}));
    assert_eq!(messages(&stack.maildir(&b), "Minisync").len(), 1);
    let left = messages(&stack.maildir(&b), "");
    assert_eq!(
        left.len(),
        1,
        "UID EXPUNGE took the agent's mail alone: {left:?}"
    );
    assert!(
        !is_agent_mail(&left[0]) && flags(&left[0]) == "T",
        "{left:?}"
    );
    assert!(quirky.log().iter().all(|l| !l.starts_with("refused:")));
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_header_search_that_answers_every_message_touches_no_other_mail() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let quirky = proxy(
        &stack,
        Quirks {
            header_search: HeaderSearch::All,
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", quirky.port);
    bob.set_imap("keep-processed = \"1s\"");
    personal(&stack, &b);
    alice.import("todo", &json!({"n": 1}));
    alice.sync();
    wait_count(&stack, &b, "", 2);
    let text_before = messages(&stack.maildir(&b), "")
        .into_iter()
        .find(|p| !is_agent_mail(p))
        .map(|p| std::fs::read(p).unwrap())
        .unwrap();
    let check = bob.ok(&["check"]);
    assert!(
        check.contains("note  IMAP header search: answers wrongly"),
        "{check}"
    );
    let (out, _) = sync_expecting(&bob, true);
    assert!(
        out.contains("merged 1") && out.contains("quarantined 0"),
        "{out}"
    );
    let left = messages(&stack.maildir(&b), "");
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(flags(&left[0]), "", "personal mail not even marked read");
    assert_eq!(std::fs::read(&left[0]).unwrap(), text_before);
    assert!(messages(&stack.maildir(&b), "Minisync-Quarantine").is_empty());
    // Tidying the processed folder: only agent mail goes.
    std::fs::write(
        stack.maildir(&b).join(".Minisync/new/1700000000.user.vm"),
        "From: someone@example.test\r\nSubject: keep me\r\n\r\nnot agent mail\r\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    sync_expecting(&bob, true);
    let kept = messages(&stack.maildir(&b), "Minisync");
    assert_eq!(kept.len(), 1, "only the user's message stays: {kept:?}");
    assert!(!is_agent_mail(&kept[0]));
    assert_eq!(messages(&stack.maildir(&b), "").len(), 1);
    assert!(
        quirky
            .log()
            .iter()
            .any(|l| l.starts_with("search rewritten:")),
        "{:?}",
        quirky.log()
    );
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_header_search_that_answers_nothing_skips_no_agent_mail() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let quirky = proxy(
        &stack,
        Quirks {
            header_search: HeaderSearch::None,
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", quirky.port);
    alice.import("todo", &json!({"n": 1}));
    alice.sync();
    wait_count(&stack, &b, "", 1);
    let (out, _) = sync_expecting(&bob, true);
    assert!(out.contains("merged 1"), "{out}");
    assert!(messages(&stack.maildir(&b), "").is_empty());
    let check = bob.ok(&["check"]);
    assert!(check.contains("header search:"), "{check}");
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_refused_command_fails_sync_shows_in_status_and_skips_nothing() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let status = |code: i32| {
        let out = bob.cmd(&["status", "--json"]);
        assert_eq!(out.status.code(), Some(code));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    alice.import("todo", &json!({"n": 1}));
    alice.sync();
    wait_count(&stack, &b, "", 1);
    // Listing (UID FETCH) refused: nothing received, and the cursor does not move.
    let no_fetch = proxy(
        &stack,
        Quirks {
            refuse: list(&["UID FETCH"]),
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", no_fetch.port);
    let (_, log) = sync_expecting(&bob, false);
    assert!(log.contains("refused by the server: BAD"), "{log}");
    let st = status(2);
    let error = st["receiving"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("UID FETCH") && error.contains("BAD"), "{st}");
    let text = String::from_utf8_lossy(&bob.cmd(&["status"]).stdout).into_owned();
    assert!(text.contains("receiving over mail [FAILING]"), "{text}");
    assert!(bob.doc("todo").is_none());
    // UID MOVE refused although MOVE is announced: merged, but the mail stays where it was.
    let no_move = proxy(
        &stack,
        Quirks {
            refuse: list(&["UID MOVE"]),
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", no_move.port);
    let (out, log) = sync_expecting(&bob, false);
    assert!(out.contains("merged 1"), "{out}");
    assert!(log.contains("UID MOVE"), "{log}");
    assert_eq!(bob.doc("todo").unwrap(), json!({"n": 1}));
    assert_eq!(messages(&stack.maildir(&b), "").len(), 1);
    assert!(messages(&stack.maildir(&b), "Minisync").is_empty());
    let st = status(2);
    assert!(
        st["receiving"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("UID MOVE")),
        "{st}"
    );
    // The real server: the mail (a duplicate now) is moved, and the status is clean again.
    set_port(
        &bob,
        "account.imap",
        stack.var("IMAP_PORT").parse().unwrap(),
    );
    let (out, _) = sync_expecting(&bob, true);
    assert!(out.contains("duplicates 1"), "{out}");
    assert!(messages(&stack.maildir(&b), "").is_empty());
    assert_eq!(messages(&stack.maildir(&b), "Minisync").len(), 1);
    assert_eq!(status(0)["receiving"], json!([]));
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_server_that_announces_idle_but_refuses_it_is_polled() {
    let stack = Stack::get();
    let (_, _, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let quirky = proxy(
        &stack,
        Quirks {
            refuse: list(&["IDLE"]),
            ..Quirks::default()
        },
    );
    set_port(&bob, "account.imap", quirky.port);
    alice.import("todo", &json!({"n": 0}));
    let _sa = alice.spawn();
    let sb = bob.spawn();
    wait_until(T, "bob gives up on IDLE", || {
        sb.log_text().contains("polling every poll-interval")
    });
    wait_until(T, "bob receives the document", || bob.doc("todo").is_some());
    alice.ok(&["doc", "set", "todo", "n", "1"]);
    wait_until(T, "bob polls and merges the change", || {
        bob.doc("todo").is_some_and(|d| d["n"] == json!(1))
    });
    // One connection for the pass after the last refusal, and it is kept while polling.
    let log = sb.log_text();
    let after = log
        .split_once("polling every poll-interval")
        .map_or("", |(_, after)| after);
    assert_eq!(after.matches("IMAP connected").count(), 1, "{log}");
    assert!(quirky.log().iter().any(|l| l.starts_with("refused:")));
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_mail_refused_as_too_large_goes_again_in_smaller_parts_and_the_size_is_kept() {
    use base64::Engine;
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let small = stack.env.get("SMALL_SMTP_PORT").unwrap_or_else(|| {
        panic!("no SMALL_SMTP_PORT in the stack's env: restart it with this scripts/mail-stack")
    });
    set_port(&alice, "account.smtp", small.parse().unwrap());
    // Random bytes do not compress: the whole mail is well over the port's 100,000-byte limit,
    // and far under alice's max-mail-size (10 MB by default), so it goes whole at first.
    let noise = |n: usize| {
        let bytes: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
        base64::engine::general_purpose::STANDARD.encode(bytes)
    };
    let photo = noise(150_000);
    alice.import("todo", &json!({ "photo": photo }));
    let (out, log) = sync_expecting(&alice, true);
    assert!(out.contains("send failures 0"), "{out}");
    assert!(
        log.contains("552") && log.contains("smaller parts"),
        "{log}"
    );
    let st = alice.status();
    let learned = &st["mail"]["learned_limit"];
    let bytes = learned["bytes"].as_u64().unwrap_or_else(|| panic!("{st}"));
    // Half the refused mail (which was some 200 kB), at least the 16 kB floor.
    assert!((16_000..150_000).contains(&bytes), "{learned}");
    assert!(
        learned["reason"]
            .as_str()
            .is_some_and(|r| r.contains("552")),
        "{learned}"
    );
    assert_eq!(st["mail"]["mail_size"].as_u64(), Some(bytes), "{st}");
    let peer = &st["documents"][0]["peers"][0];
    assert_eq!(peer["failing"], json!(false), "{peer}");
    let text = alice.ok(&["status"]);
    assert!(
        text.contains(&format!("mail size: at most {bytes} bytes")),
        "{text}"
    );
    // Bob's inbox holds the parts, none over the limit, and they make the document.
    let inbox = messages(&stack.maildir(&b), "");
    assert!(inbox.len() >= 3, "{} mails", inbox.len());
    for m in &inbox {
        // What alice sent, and the few headers Postfix and Dovecot add on delivery.
        let size = std::fs::metadata(m).unwrap().len();
        assert!(
            size <= bytes.min(100_000) + 2_000,
            "{} is {size} bytes",
            m.display()
        );
    }
    bob.sync();
    assert_eq!(bob.doc("todo"), alice.doc("todo"));
    // The size is kept: the next large change goes in parts at once, without a refusal.
    alice.import("todo", &json!({ "photo": photo, "second": noise(120_000) }));
    let (_, log) = sync_expecting(&alice, true);
    assert!(
        !log.contains("552") && log.contains("sent in parts"),
        "{log}"
    );
    bob.sync();
    assert_eq!(bob.doc("todo"), alice.doc("todo"));
    assert!(bob.doc("todo").unwrap()["second"].is_string());
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn changes_held_up_by_an_smtp_outage_go_out_once_as_the_newest() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    // A port nothing listens on: every send is refused at once, as while Postfix is down.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    set_port(&alice, "account.smtp", closed);
    let peer = || alice.status()["documents"][0]["peers"][0].clone();
    alice.import("todo", &json!({"n": 0}));
    let (out, _) = sync_expecting(&alice, false);
    assert!(out.contains("send failures 1"), "{out}");
    alice.ok(&["doc", "set", "todo", "n", "1"]);
    let (out, _) = sync_expecting(&alice, false);
    assert!(out.contains("send failures 1"), "{out}");
    let p = peer();
    assert_eq!(p["outbox"], json!(1), "the older mail is superseded: {p}");
    assert!(
        p["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{p}"
    );
    // Postfix is back.
    set_port(
        &alice,
        "account.smtp",
        stack.var("SMTP_PORT").parse().unwrap(),
    );
    alice.ok(&["doc", "set", "todo", "n", "2"]);
    let (out, _) = sync_expecting(&alice, true);
    assert!(out.contains("sent 1"), "{out}");
    let p = peer();
    assert_eq!(p["outbox"], json!(0), "{p}");
    assert_eq!(p["last_error"], json!(null), "{p}");
    assert_eq!(p["failing"], json!(false), "{p}");
    // Past the retry time of the mails that failed: nothing more goes out.
    std::thread::sleep(Duration::from_secs(6));
    let (out, _) = sync_expecting(&alice, true);
    assert!(out.contains("sent 0"), "{out}");
    wait_count(&stack, &b, "", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(messages(&stack.maildir(&b), "").len(), 1);
    let (out, _) = sync_expecting(&bob, true);
    assert!(out.contains("merged 1"), "{out}");
    assert_eq!(bob.doc("todo").unwrap(), json!({"n": 2}));
}
