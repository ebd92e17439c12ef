//! `agent peer …`: learning and checking peers' keys by hand. An invitation line (address and
//! fingerprint) passed out of band pins a key before any mail; `show` prints both fingerprints in
//! groups to read over the phone; `verify` records that they were compared; `accept-key` takes a
//! peer's changed key after the user made sure it is theirs.

use crate::agent::keys::{ACCEPTED, VERIFIED, account_key, expected_fingerprint};
use crate::agent::{AgentError, Result};
use crate::config::{Config, normalize_fingerprint, write_private_file};
use crate::store::Store;

/// The first word of an invitation line.
pub const INVITE_PREFIX: &str = "minisync-peer";

/// One `agent peer` command.
#[derive(Debug, Clone)]
pub enum PeerCommand {
    /// Print our invitation line.
    Invite,
    /// Pin the fingerprint of an invitation line in the config.
    Add { line: String },
    /// Both fingerprints, for comparing.
    Show { address: String },
    /// Mark the peer's key as compared.
    Verify { address: String },
    /// Take the peer's changed key.
    AcceptKey { address: String },
}

/// Parses an invitation line: `minisync-peer ADDRESS FINGERPRINT` (the fingerprint's 40 hex
/// digits may be split in groups). Returns (address, fingerprint without spaces).
///
/// # Errors
///
/// A message naming what is wrong with the line.
pub fn parse_invite(line: &str) -> Result<(String, String)> {
    let bad = |why: &str| {
        AgentError::Other(format!(
            "not an invitation line ({why}); it looks like `{INVITE_PREFIX} alice@example.org \
             0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567` (from `agent peer invite`)"
        ))
    };
    let mut words = line.split_whitespace();
    if words.next() != Some(INVITE_PREFIX) {
        return Err(bad(&format!("it does not start with {INVITE_PREFIX}")));
    }
    let address = words
        .next()
        .ok_or_else(|| bad("no address"))?
        .to_ascii_lowercase();
    if !address.contains('@') {
        return Err(bad(&format!("{address:?} is not an e-mail address")));
    }
    let fingerprint = normalize_fingerprint(&words.collect::<Vec<_>>().join(" "));
    if fingerprint.len() != 40 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad("the fingerprint is not 40 hex digits"));
    }
    Ok((address, fingerprint))
}

/// A fingerprint in groups of four, two halves: how people read it to each other.
pub fn grouped(fingerprint: &str) -> String {
    let groups: Vec<&str> = fingerprint
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap_or("?"))
        .collect();
    let half = groups.len().div_ceil(2);
    format!("{}  {}", groups[..half].join(" "), groups[half..].join(" "))
}

/// Config text with `fingerprint = "…"` set in the `[[peers]]` table of `address` (added at the
/// end when there is none); every other line is kept as it is.
pub fn with_peer_fingerprint(text: &str, address: &str, fingerprint: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 4);
    let (mut in_peers, mut this_peer, mut done) = (false, false, false);
    for line in &lines {
        let t = line.trim();
        if t.starts_with('[') {
            in_peers = t == "[[peers]]";
            this_peer = false;
        } else if in_peers
            && key_of(t) == Some("address")
            && value_of(t).eq_ignore_ascii_case(address)
        {
            this_peer = true;
            done = true;
            out.push(line.to_string());
            out.push(format!("fingerprint = \"{fingerprint}\""));
            continue;
        } else if in_peers && this_peer && key_of(t) == Some("fingerprint") {
            continue;
        }
        out.push(line.to_string());
    }
    // A fingerprint line written before the address line of the same table goes too.
    let mut text = out.join("\n");
    if !done {
        text.push_str(&format!(
            "\n\n[[peers]]\naddress = \"{address}\"\nfingerprint = \"{fingerprint}\""
        ));
    }
    text.push('\n');
    text
}

fn key_of(line: &str) -> Option<&str> {
    line.split_once('=').map(|(k, _)| k.trim())
}

fn value_of(line: &str) -> &str {
    line.split_once('=')
        .map(|(_, v)| v.trim().trim_matches('"'))
        .unwrap_or("")
}

/// Writes the peer's fingerprint into the config file, checking that the result still loads.
fn pin_in_config(cfg: &Config, address: &str, fingerprint: &str) -> Result<()> {
    let text = std::fs::read_to_string(&cfg.path)
        .map_err(|e| AgentError::Other(format!("cannot read {}: {e}", cfg.path.display())))?;
    let new = with_peer_fingerprint(&text, address, fingerprint);
    Config::parse(&new, &cfg.path)?;
    write_private_file(&cfg.path, new.as_bytes())
        .map_err(|e| AgentError::Other(format!("cannot write {}: {e}", cfg.path.display())))
}

/// Runs one `agent peer` command; returns what to print.
///
/// # Errors
///
/// A bad invitation line, an unknown peer, no key to verify or accept, or a failing store.
pub fn peer_command(cfg: &Config, store: &mut Store, cmd: PeerCommand) -> Result<String> {
    match cmd {
        PeerCommand::Invite => {
            let key = account_key(cfg, store)?;
            Ok(format!(
                "{INVITE_PREFIX} {} {}\n",
                cfg.address(),
                grouped(&key.fingerprint())
            ))
        }
        PeerCommand::Add { line } => {
            let (address, fingerprint) = parse_invite(&line)?;
            if address.eq_ignore_ascii_case(cfg.address()) {
                return Err(AgentError::Other(
                    "that is this account's own invitation".into(),
                ));
            }
            pin_in_config(cfg, &address, &fingerprint)?;
            Ok(format!(
                "{address} is in [[peers]] of {} with its key's fingerprint pinned; add it to the \
                 `peers` of the documents to share with it\n",
                cfg.path.display()
            ))
        }
        PeerCommand::Show { address } => show(cfg, store, &address),
        PeerCommand::Verify { address } => {
            let known = store.peer_key(&address)?;
            if known.new_fingerprint.is_some() {
                return Err(AgentError::Other(format!(
                    "the key of {address} changed: see `agent peer show {address}`, then `agent peer accept-key {address}` first"
                )));
            }
            if !store.set_key_trust(&address, VERIFIED)? {
                return Err(no_key(&address));
            }
            Ok(format!("the key of {address} is marked verified\n"))
        }
        PeerCommand::AcceptKey { address } => accept_key(cfg, store, &address),
    }
}

fn no_key(address: &str) -> AgentError {
    AgentError::Other(format!(
        "no key of {address} is known yet: it comes with their first mail (a hello); run `agent sync`"
    ))
}

/// `agent peer show ADDRESS`.
fn show(cfg: &Config, store: &Store, address: &str) -> Result<String> {
    let ours = account_key(cfg, store)?.fingerprint();
    let known = store.peer_key(address)?;
    let mut text = format!("you  {}: {}\n", cfg.address(), grouped(&ours));
    match (&known.fingerprint, expected_fingerprint(cfg, &known)) {
        (Some(f), _) => text.push_str(&format!(
            "peer {address}: {} ({})\n",
            grouped(f),
            known.trust.as_deref().unwrap_or("pinned")
        )),
        (None, Some(e)) => text.push_str(&format!(
            "peer {address}: {} (from the invitation; the key itself has not come yet)\n",
            grouped(&e)
        )),
        (None, None) => text.push_str(&format!("peer {address}: no key known yet\n")),
    }
    if let Some(n) = &known.new_fingerprint {
        text.push_str(&format!(
            "KEY CHANGED: mail in their name was signed by {}; if they confirm it: `agent peer accept-key {address}`\n",
            grouped(n)
        ));
    }
    text.push_str(
        "Read both lines to each other (not by mail); if they match: `agent peer verify ADDRESS`\n",
    );
    Ok(text)
}

/// `agent peer accept-key ADDRESS`.
fn accept_key(cfg: &Config, store: &Store, address: &str) -> Result<String> {
    let known = store.peer_key(address)?;
    let (Some(fingerprint), Some(key)) = (known.new_fingerprint, known.new_key) else {
        return Err(AgentError::Other(format!(
            "no changed key of {address} is waiting (see `agent peer show {address}`)"
        )));
    };
    let configured = cfg
        .peers
        .iter()
        .find(|p| p.address.eq_ignore_ascii_case(address))
        .is_some_and(|p| p.fingerprint.is_some());
    if configured {
        pin_in_config(cfg, address, &fingerprint)?;
    }
    store.pin_peer_key(address, &fingerprint, &key, ACCEPTED)?;
    store.retry_now_for(address)?;
    Ok(format!(
        "accepted the new key of {address} ({}); their quarantined mail can be merged now: \
         `agent quarantine list`, then `agent quarantine release ID`\n",
        grouped(&fingerprint)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FPR: &str = "0123456789ABCDEF0123456789ABCDEF01234567";

    #[test]
    fn invitation_lines_parse_with_or_without_groups() {
        let line = format!("{INVITE_PREFIX} Alice@Example.test {}", grouped(FPR));
        assert_eq!(
            parse_invite(&line).unwrap(),
            ("alice@example.test".to_string(), FPR.to_string())
        );
        assert_eq!(
            parse_invite(&format!("{INVITE_PREFIX} a@b.c {FPR}"))
                .unwrap()
                .1,
            FPR
        );
        for (bad, why) in [
            (format!("hello a@b.c {FPR}"), "does not start"),
            (format!("{INVITE_PREFIX} abc {FPR}"), "not an e-mail"),
            (format!("{INVITE_PREFIX} a@b.c 0123"), "40 hex"),
            (
                format!("{INVITE_PREFIX} a@b.c {}", FPR.replace('0', "X")),
                "40 hex",
            ),
            (INVITE_PREFIX.to_string(), "no address"),
        ] {
            let e = parse_invite(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert_eq!(
            grouped(FPR),
            "0123 4567 89AB CDEF 0123  4567 89AB CDEF 0123 4567"
        );
    }

    #[test]
    fn the_fingerprint_goes_into_the_peers_table_or_a_new_one() {
        let text = "[account]\naddress = \"me@x.y\"\n\n[[peers]]\naddress = \"bob@x.y\"\nfingerprint = \"OLD\"\nname = \"Bob\"\n\n[[peers]]\naddress = \"carol@x.y\"\n";
        let out = with_peer_fingerprint(text, "BOB@x.y", FPR);
        assert!(
            out.contains(&format!(
                "address = \"bob@x.y\"\nfingerprint = \"{FPR}\"\nname = \"Bob\""
            )),
            "{out}"
        );
        assert!(!out.contains("OLD"));
        assert!(
            out.ends_with("[[peers]]\naddress = \"carol@x.y\"\n"),
            "{out}"
        );
        let out = with_peer_fingerprint(text, "dave@x.y", FPR);
        assert!(
            out.ends_with(&format!(
                "[[peers]]\naddress = \"dave@x.y\"\nfingerprint = \"{FPR}\"\n"
            )),
            "{out}"
        );
        assert!(out.contains("fingerprint = \"OLD\""));
    }
}
