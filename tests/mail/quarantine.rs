//! Refused mail is visible and can be dealt with: `agent status` lists quarantined mail (sender,
//! reason) and is not "in step" while it is there; `agent quarantine list|show|release|drop`
//! inspects it, merges it after all, or lets it go. Over the real mail stack; without it the test
//! is reported as ignored.

use std::time::Duration;

use crate::common::*;
use serde_json::json;

const T: Duration = Duration::from_secs(60);

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn mail_from_a_sender_not_yet_a_peer_is_shown_and_released_once_added() {
    let stack = Stack::get();
    let (a, b, c) = (address("alice"), address("bob"), address("carol"));
    let alice = node(
        &stack,
        &a,
        &[&b, &c],
        &[todo(&[&b, &c], "0s", "10m")],
        Security::Plain,
    );
    let bob = node(
        &stack,
        &b,
        &[&a],
        &[todo(&[&a], "0s", "10m")],
        Security::Plain,
    );
    let carol = node(
        &stack,
        &c,
        &[&a, &b],
        &[todo(&[&a, &b], "0s", "10m")],
        Security::Plain,
    );
    // Alice knows both; bob does not know carol, so her hello (her key, no content) and every
    // mail after it are refused until he adds her.
    introduce(&[&alice, &bob]);
    introduce(&[&alice, &carol]);
    alice.import("todo", &json!({"items": []}));
    alice.sync();
    wait_until(T, "bob and carol receive the document", || {
        alice.cmd(&["sync"]);
        bob.cmd(&["sync"]);
        carol.cmd(&["sync"]);
        bob.doc("todo").is_some() && carol.doc("todo").is_some()
    });
    // Carol, whom bob has not configured yet, edits: her mail to bob is quarantined.
    carol.ok(&["doc", "set", "todo", "from_carol", "true"]);
    carol.sync();
    wait_until(T, "bob quarantines carol's mail", || {
        bob.cmd(&["sync"]);
        bob.status()["quarantined"]
            .as_array()
            .is_some_and(|q| q.iter().any(|m| m["sender"] == json!(c)))
    });
    let out = bob.cmd(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "status is not in step: {text}");
    assert!(
        text.contains("quarantined") && text.contains("not a peer"),
        "{text}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&bob.ok(&["quarantine", "list", "--json"])).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["sender"] == json!(c))
        .unwrap();
    let id = entry["id"].as_i64().unwrap().to_string();
    let shown = bob.ok(&["quarantine", "show", &id]);
    assert!(
        shown.contains(&c) && shown.contains("not a peer"),
        "{shown}"
    );
    // Releasing says what to do: it carries no changes (her key came, but no content can go
    // to bob before she has his).
    let out = bob.cmd(&["quarantine", "release", &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("carries no changes") && err.contains("is a peer"),
        "{err}"
    );
    // Bob adds carol. Her attachment was never opened (a stranger's never is): release says
    // that her next send brings it; it does, and bob drops the record.
    let cfg = std::fs::read_to_string(&bob.config).unwrap();
    let cfg = cfg.replace(
        &format!("peers = [\"{a}\"]"),
        &format!("peers = [\"{a}\", \"{c}\"]"),
    );
    std::fs::write(
        &bob.config,
        format!("{cfg}\n[[peers]]\naddress = \"{c}\"\n"),
    )
    .unwrap();
    let out = bob.cmd(&["quarantine", "release", &id]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("never opened") && err.contains("agent send"),
        "{err}"
    );
    carol.ok(&["send", "--to", &b]);
    wait_until(T, "bob merges carol's resend", || {
        bob.cmd(&["sync"]);
        carol.cmd(&["sync"]);
        bob.doc("todo")
            .is_some_and(|d| d["from_carol"] == json!(true))
    });
    // Her changes came again, complete: what was refused while she was not a peer is settled.
    let list: serde_json::Value =
        serde_json::from_str(&bob.ok(&["quarantine", "list", "--json"])).unwrap();
    assert!(list.as_array().unwrap().is_empty(), "{list}");
    assert_eq!(bob.cmd(&["status"]).status.code(), Some(0));
    let out = bob.cmd(&["quarantine", "drop", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no quarantined message #999999"));
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn refused_changes_are_shown_and_merged_after_all_when_released() {
    let stack = Stack::get();
    let (_, _, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    let _b = bob.address.clone();
    alice.import("todo", &json!({"n": 0}));
    alice.sync();
    wait_until(T, "bob receives the document", || {
        bob.cmd(&["sync"]);
        bob.doc("todo").is_some()
    });
    // A change of alice's client stamped ten years ahead: refused for its clock. Twice, under
    // two Message-IDs: one to release, one to drop.
    let r = replica(&alice, "todo");
    let client = r.client_id().to_string();
    let root = r.changes().to_value()["changes"]["_s"]["id"].clone();
    let ahead = minisync::engine::system_now_ms() + 10 * 365 * 86_400_000;
    let hlc = format!("{:x}", ahead << 16);
    let body = json!({
        "minisync": "changes", "formatVersion": minisync::engine::FORMAT_VERSION, "id": r.id(), "sentBy": client,
        "fromVersion": 50, "changesSince": 0, "knows": {&client: hlc}, "clientStates": [],
        "changes": {"n": 7, "_s": {"id": root, "u": 50, "k": {"n": format!("{hlc}-{client}")}}}
    });
    send_changes_as(&stack, &alice, &bob, "todo", &body);
    send_changes_as(&stack, &alice, &bob, "todo", &body);
    wait_until(T, "bob quarantines both", || {
        bob.cmd(&["sync"]);
        bob.status()["quarantined"]
            .as_array()
            .is_some_and(|q| q.len() == 2)
    });
    let list: serde_json::Value =
        serde_json::from_str(&bob.ok(&["quarantine", "list", "--json"])).unwrap();
    let id = list[0]["id"].as_i64().unwrap().to_string();
    let other = list[1]["id"].as_i64().unwrap().to_string();
    let out = bob.ok(&["quarantine", "drop", &other]);
    assert!(out.contains("dropped"), "{out}");
    assert!(
        list[0]["reason"].as_str().unwrap().contains("ahead"),
        "{list}"
    );
    let shown = bob.ok(&["quarantine", "show", &id]);
    assert!(shown.contains("\"n\": 7"), "{shown}");
    // Still refused while the skew rule stands; the record keeps the reason.
    let out = bob.cmd(&["quarantine", "release", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still refused"));
    // The user accepts a larger skew: released, merged.
    let cfg = std::fs::read_to_string(&bob.config).unwrap();
    let cfg = cfg.replace("[agent]\n", "[agent]\nmax-clock-skew = \"20years\"\n");
    std::fs::write(&bob.config, cfg).unwrap();
    let out = bob.ok(&["quarantine", "release", &id]);
    assert!(out.contains("merged"), "{out}");
    assert_eq!(bob.doc("todo").unwrap()["n"], json!(7));
    let out = bob.cmd(&["status"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("quarantined"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
#[ignore = "needs the real mail stack: run `scripts/test` (starts Postfix + Dovecot)"]
fn a_first_full_sync_refused_within_an_element_says_what_is_wrong() {
    let stack = Stack::get();
    let (_, _, alice, bob) = pair(&stack, "0s", "10m", Security::Plain, Security::Plain);
    introduce(&[&alice, &bob]);
    alice.import("todo", &json!({"items": [1, 2, 3]}));
    // Bob holds no replica: each mail would make one while its compact form is read.
    let full = replica(&alice, "todo").changes().to_value();
    let mut unreadable = full.clone();
    unreadable["changes"]["items"]["v"][1]["zz"] = json!(1);
    let mut refused = full.clone();
    let client = full["sentBy"].as_str().unwrap().to_string();
    // The last element stamped beyond what alice says she holds.
    let held = u64::from_str_radix(full["knows"][&client].as_str().unwrap(), 16).unwrap();
    refused["changes"]["items"]["v"][2]["e"] = json!(format!("{:x}-{client}", held + 1000));
    send_compact_changes_as(&stack, &alice, &bob, "todo", &unreadable);
    send_compact_changes_as(&stack, &alice, &bob, "todo", &refused);
    wait_until(T, "bob quarantines both", || {
        bob.cmd(&["sync"]);
        bob.status()["quarantined"]
            .as_array()
            .is_some_and(|q| q.len() == 2)
    });
    let list: serde_json::Value =
        serde_json::from_str(&bob.ok(&["quarantine", "list", "--json"])).unwrap();
    let reasons: Vec<&str> = (0..2)
        .map(|i| list[i]["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("bad changes") && r.contains("unknown element field \"zz\"")),
        "{list}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("cannot create document \"todo\"")
                && r.contains("newer than what the sender says it holds")),
        "{list}"
    );
    assert!(bob.doc("todo").is_none(), "nothing was made of either");
}
