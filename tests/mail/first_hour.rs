//! The first hour's JSON output against the real mail stack: `agent check --json` when both
//! servers work. Without the stack this test is reported as ignored.

use crate::common::*;
use serde_json::Value;

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn check_json_reports_each_working_server() {
    let stack = Stack::get();
    let (_, _, alice, _bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Tls);
    let text = alice.ok(&["check", "--json"]);
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["ok"], true, "{v}");
    let checks = v["checks"].as_array().unwrap();
    for what in ["IMAP", "IMAP IDLE", "IMAP MOVE", "IMAP UIDPLUS", "SMTP"] {
        assert!(
            checks.iter().any(|c| c["what"] == what),
            "{what} missing: {v}"
        );
    }
    for c in checks {
        assert_eq!(c["ok"], true, "{c}");
        let said = c["detail"].as_str().or(c["instead"].as_str());
        assert!(said.is_some_and(|d| !d.is_empty()), "{c}");
        assert!(c["what"].is_string(), "{c}");
    }
}
