//! Dovecot restarted while the agent idles: the agent reconnects and carries on. In a test binary
//! of its own, so that the restart does not disturb the other mail tests.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn dovecot_restart_while_idling() {
    let stack = Stack::get();
    let (a, b) = (address("alice"), address("bob"));
    let doc = |p: &'static str| DocSpec {
        name: "todo",
        peers: Box::leak(Box::new([p])),
        send_delay: "0s",
        resend: "10m",
    };
    let a_s: &'static str = Box::leak(a.clone().into_boxed_str());
    let b_s: &'static str = Box::leak(b.clone().into_boxed_str());
    let alice = node(&stack, &a, &[&b], &[doc(b_s)], Security::Tls);
    let bob = node(&stack, &b, &[&a], &[doc(a_s)], Security::Tls);
    alice.import("todo", &json!({"n": 0}));
    let _sa = alice.spawn();
    let sb = bob.spawn();
    wait_until(Duration::from_secs(60), "bob gets the document", || {
        bob.doc("todo").is_some()
    });
    std::thread::sleep(Duration::from_secs(1)); // both idle now
    let status = std::process::Command::new("scripts/mail-stack")
        .arg("restart-imap")
        .arg(stack.dir())
        .status()
        .unwrap();
    assert!(status.success());
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
