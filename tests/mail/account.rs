//! A wrong SMTP password is a problem of the account, not of a message: reported as such, no mail
//! given up, and sending resumes as soon as the config is fixed. Over the real mail stack; without
//! it the test is reported as ignored.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_refused_smtp_login_keeps_the_mail_and_a_fixed_config_sends_at_once() {
    let stack = Stack::get();
    let (_, b, alice, bob) = pair(&stack, "0s", "15m", Security::Plain, Security::Plain);
    let good = std::fs::read_to_string(&alice.config).unwrap();
    std::fs::write(
        &alice.config,
        good.replace(
            "password-cmd = \"echo secret\"",
            "password-cmd = \"echo wrong\"",
        ),
    )
    .unwrap();
    alice.import("todo", &json!({"n": 1}));
    let out = alice.cmd(&["sync"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "sync must fail: {err}");
    assert!(err.contains("refused the login"), "{err}");
    assert!(err.contains("535"), "the server's words: {err}");
    let status = alice.status();
    let peer = &status["documents"][0]["peers"][0];
    assert_eq!(peer["failing"], json!(true), "{status}");
    assert_eq!(
        peer["outbox"],
        json!(1),
        "the mail waits, not given up: {status}"
    );
    // A second pass right away waits for the backoff: still not sent, still not given up. (Its
    // report says "held back until" only while the backoff lasts at the pass's end: Dovecot
    // delays the next login after a failed one by seconds, which may outlast a short backoff.)
    let out = alice.cmd(&["sync"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sent 0"), "{text}");
    let status = alice.status();
    assert_eq!(
        status["documents"][0]["peers"][0]["outbox"],
        json!(1),
        "still waiting: {status}"
    );
    // The password is fixed: the next pass sends at once, whatever the backoff.
    std::thread::sleep(Duration::from_millis(20)); // a newer config file than the failure
    std::fs::write(&alice.config, &good).unwrap();
    let out = alice.ok(&["sync"]);
    assert!(out.contains("sent 1"), "{out}");
    wait_until(T, "bob receives the document", || {
        bob.cmd(&["sync"]);
        bob.doc("todo").is_some()
    });
    let status = alice.status();
    assert_eq!(
        status["documents"][0]["peers"][0]["failing"],
        json!(false),
        "{status}"
    );
    let _ = b;
}
