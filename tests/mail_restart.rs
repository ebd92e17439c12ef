//! Servers going away under a running agent: Dovecot restarted while the agent idles, Postfix down
//! while it sends. The agent reconnects and carries on. In a test binary of its own, so that the
//! outages do not disturb the other mail tests; the tests here take turns.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::*;
use serde_json::json;

/// One outage at a time.
static OUTAGE: Mutex<()> = Mutex::new(());

fn mail_stack(command: &str, stack: &Stack) {
    let status = std::process::Command::new("scripts/mail-stack")
        .arg(command)
        .arg(stack.dir())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/mail-stack {command} failed");
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn dovecot_restart_while_idling() {
    let _turn = OUTAGE.lock().unwrap_or_else(|e| e.into_inner());
    let stack = Stack::get();
    let (_, _, alice, bob) = pair(&stack, "0s", "10m", Security::Tls, Security::Tls);
    alice.import("todo", &json!({"n": 0}));
    let _sa = alice.spawn();
    let sb = bob.spawn();
    wait_until(Duration::from_secs(60), "bob gets the document", || {
        bob.doc("todo").is_some()
    });
    std::thread::sleep(Duration::from_secs(1)); // both idle now
    mail_stack("restart-imap", &stack);
    alice.ok(&["doc", "set", "todo", "n", "1"]);
    wait_until(
        Duration::from_secs(60),
        "bob reconnects and merges the change",
        || bob.doc("todo").is_some_and(|d| d["n"] == json!(1)),
    );
    let connects = sb.log_text().matches("IMAP connected").count();
    assert!(
        connects >= 2,
        "bob should have reconnected after the restart:\n{}",
        sb.log_text()
    );
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn postfix_down_while_sending_is_retried_until_it_is_back() {
    let _turn = OUTAGE.lock().unwrap_or_else(|e| e.into_inner());
    let stack = Stack::get();
    let (_, _, alice, bob) = pair(&stack, "0s", "10m", Security::StartTls, Security::Plain);
    alice.import("todo", &json!({"n": 0}));
    let sa = alice.spawn();
    let _sb = bob.spawn();
    // Alice now holds an SMTP connection open from her first send.
    wait_until(Duration::from_secs(60), "bob gets the document", || {
        bob.doc("todo").is_some()
    });
    mail_stack("stop-smtp", &stack);
    alice.ok(&["doc", "set", "todo", "n", "1"]);
    wait_until(
        Duration::from_secs(30),
        "alice's status shows the failed send",
        || {
            let st = alice.status();
            st["documents"][0]["peers"][0]["last_error"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
        },
    );
    assert_eq!(
        alice.status()["documents"][0]["peers"][0]["outbox"],
        json!(1)
    );
    mail_stack("start-smtp", &stack);
    wait_until(
        Duration::from_secs(60),
        "the retry delivers the change once Postfix is back",
        || bob.doc("todo").is_some_and(|d| d["n"] == json!(1)),
    );
    wait_until(Duration::from_secs(30), "alice's outbox drains", || {
        alice.status()["documents"][0]["peers"][0]["outbox"] == json!(0)
    });
    let log = sa.log_text();
    assert!(log.contains("send failed; will retry"), "{log}");
}
