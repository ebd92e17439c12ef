//! Whose key signed a mail, and whether that is the key we trust for its sender: the account's
//! own key (created on first use), trust on first use or an invitation's fingerprint, a key that
//! changed (refused until the user accepts it), and the hellos that carry our key to a peer whose
//! key we do not know yet.

use std::time::Duration;

use crate::agent::receive::Refusal;
use crate::agent::{Agent, AgentError, PassReport, Result, new_message_id};
use crate::config::Config;
use crate::store::{PeerChange, PeerKey, Store, now_ms};
use crate::transport::mail::openpgp::{self, SecretKey};
use crate::transport::{Arrival, Delivery, Sealed, SendError};

/// A hello not answered is sent again after this long.
pub const HELLO_EVERY: Duration = Duration::from_secs(10 * 60);

/// How a pinned key came to be trusted (stored with it).
pub const FIRST_USE: &str = "first-use";
pub const INVITATION: &str = "invitation";
pub const ACCEPTED: &str = "accepted";
pub const VERIFIED: &str = "verified";

/// The account's secret key, created and stored the first time (at `agent init`, or at the first
/// start of an installation made before OpenPGP).
///
/// # Errors
///
/// No `[account]`, the stored key is unreadable, or the store fails.
pub fn account_key(cfg: &Config, store: &Store) -> Result<SecretKey> {
    let address = cfg
        .account
        .as_ref()
        .map(|a| a.address.as_str())
        .ok_or_else(|| {
            AgentError::Other("no [account] in the config: keys belong to a mail account".into())
        })?;
    if let Some(text) = store.account_key(address)? {
        return SecretKey::from_armored(&text).map_err(|e| {
            AgentError::Other(format!("the stored key of {address} cannot be used: {e}"))
        });
    }
    let key = openpgp::generate(address).map_err(|e| AgentError::Other(e.to_string()))?;
    let text = key
        .to_armored()
        .map_err(|e| AgentError::Other(e.to_string()))?;
    store.set_account_key(address, &text)?;
    tracing::info!(fingerprint = %key.fingerprint(), "created this account's OpenPGP key");
    // Another process may have created one at the same moment: the stored one wins.
    let stored = store.account_key(address)?.unwrap_or(text);
    SecretKey::from_armored(&stored).map_err(|e| AgentError::Other(e.to_string()))
}

/// The fingerprint we expect for `address`: the configured one (an invitation) over the pinned
/// one. None: no key known, the next signed mail's key is pinned (trust on first use).
pub fn expected_fingerprint(cfg: &Config, known: &PeerKey) -> Option<String> {
    cfg.peers
        .iter()
        .find(|p| p.address.eq_ignore_ascii_case(&known.address))
        .and_then(|p| p.pinned_fingerprint())
        .or_else(|| known.fingerprint.clone())
}

/// The key to encrypt to for `address`, when it is the expected one.
pub fn usable_key(cfg: &Config, known: &PeerKey) -> Option<Vec<u8>> {
    let expected = expected_fingerprint(cfg, known)?;
    (known.fingerprint.as_deref() == Some(expected.as_str()))
        .then(|| known.key.clone())
        .flatten()
}

/// The reason a mail signed by a key other than the pinned one is refused.
pub fn key_changed_reason(peer: &str, pinned: &str, new: &str) -> String {
    format!(
        "KEY CHANGED: mail in the name of {peer} is signed by key {new}, but {pinned} is pinned. \
         Ask {peer} (not by mail) whether they have a new key and compare `agent peer show {peer}`; \
         if it is theirs: `agent peer accept-key {peer}`, then `agent quarantine release ID`"
    )
}

/// Why a quarantined message without a document (a hello, mail never opened) cannot be
/// released.
pub fn nothing_to_release(id: i64, reason: &str, sender: &str) -> AgentError {
    AgentError::Other(format!(
        "message #{id} carries no changes to merge (a hello, or mail never opened or not \
         readable: {reason}). Once {sender} is a peer with a trusted key, its next mail brings \
         its changes (or ask for one: `agent send --to YOUR-ADDRESS` on its side); then `agent \
         quarantine drop {id}`"
    ))
}

impl Agent {
    /// The key checks of a mail arrival ([`Self::check_signer`]); true when it is a hello, which
    /// is then done with (answered in this pass when its sender lacks our key). Signed mail that
    /// could not be read as far as its document is refused here with the transport's reason.
    pub(super) fn signed_hello(&mut self, a: &Arrival) -> std::result::Result<bool, Refusal> {
        self.check_signer(a)?;
        let Some(wants_key) = a.sealed.as_ref().and_then(|s| s.hello) else {
            // Signed by the right key but unreadable before its document was known (a signed
            // sender other than `From`, no document header): that is the reason, not the document.
            if let (true, Err(why)) = (a.doc.is_empty(), &a.payloads) {
                return Err(Refusal::Quarantine(why.clone()));
            }
            return Ok(false);
        };
        tracing::info!(wants_key, "hello: the peer's key is known");
        if wants_key && !self.hello_owed.contains(&a.from) {
            self.hello_owed.push(a.from.clone());
        }
        Ok(true)
    }

    /// Checks the key that signed a mail arrival against the one trusted for its sender, pinning
    /// it on first use (or when it matches the invitation's fingerprint). Mail that is not
    /// signed and encrypted is refused with the reason the transport gave.
    fn check_signer(&mut self, a: &Arrival) -> std::result::Result<(), Refusal> {
        let Some(sealed) = &a.sealed else {
            let why = a.payloads.as_ref().err().cloned().unwrap_or_else(|| {
                "agent mail that is not signed and encrypted with OpenPGP".to_string()
            });
            return Err(Refusal::Quarantine(why));
        };
        if a.from.eq_ignore_ascii_case(self.cfg.address()) {
            return self.check_own_signer(sealed);
        }
        let Some(peer) = self
            .cfg
            .peers
            .iter()
            .find(|p| p.address.eq_ignore_ascii_case(&a.from))
        else {
            return Err(Refusal::Quarantine(format!(
                "{} is not a peer of any document: its key ({}) was not taken",
                a.from, sealed.fingerprint
            )));
        };
        let address = peer.address.clone();
        let known = self.store.peer_key(&address).map_err(internal)?;
        match expected_fingerprint(&self.cfg, &known) {
            Some(e) if e == sealed.fingerprint => {
                if known.fingerprint.as_deref() != Some(e.as_str()) || known.key.is_none() {
                    self.pin(&address, sealed, INVITATION)?;
                }
                Ok(())
            }
            Some(pinned) => {
                if !sealed.key.is_empty() {
                    self.store
                        .key_changed(&address, &sealed.fingerprint, &sealed.key)
                        .map_err(internal)?;
                }
                Err(Refusal::Quarantine(key_changed_reason(
                    &address,
                    &pinned,
                    &sealed.fingerprint,
                )))
            }
            None => self.pin(&address, sealed, FIRST_USE),
        }
    }

    /// Mail in the account's own name (its other devices) must be signed by the account's key.
    fn check_own_signer(&self, sealed: &Sealed) -> std::result::Result<(), Refusal> {
        let ours = self.account_key.as_ref().map(SecretKey::fingerprint);
        if ours.as_deref() == Some(sealed.fingerprint.as_str()) {
            return Ok(());
        }
        Err(Refusal::Quarantine(format!(
            "mail in this account's own name signed by key {}, not by the account's key {}: not \
             from one of your devices (or one that has not joined with `agent device join`)",
            sealed.fingerprint,
            ours.as_deref().unwrap_or("(none)")
        )))
    }

    /// Pins a verified key and sends what waited for it.
    fn pin(
        &mut self,
        address: &str,
        sealed: &Sealed,
        trust: &str,
    ) -> std::result::Result<(), Refusal> {
        if sealed.key.is_empty() {
            return Err(Refusal::Quarantine(format!(
                "no key of {address} is pinned to check this message's signature against"
            )));
        }
        self.store
            .pin_peer_key(address, &sealed.fingerprint, &sealed.key, trust)
            .map_err(internal)?;
        let waiting = self.store.retry_now_for(address).map_err(internal)?;
        tracing::info!(peer = %address, fingerprint = %sealed.fingerprint, trust, waiting, "pinned the peer's key");
        Ok(())
    }

    /// Sends hellos: to every mail peer whose key we lack (again after [`HELLO_EVERY`]), and in
    /// answer to a hello whose sender lacks ours.
    pub(super) async fn send_hellos(&mut self, report: &mut PassReport) -> Result<()> {
        let mut peers: Vec<(usize, String)> = Vec::new();
        for slot in &self.docs {
            if self.transports[slot.transport].delivery() != Delivery::PerPeer {
                continue;
            }
            for p in &slot.cfg.peers {
                if !peers.iter().any(|(_, q)| q.eq_ignore_ascii_case(p)) {
                    peers.push((slot.transport, p.clone()));
                }
            }
        }
        let owed = std::mem::take(&mut self.hello_owed);
        for (ti, peer) in peers {
            let known = self.store.peer_key(&peer)?;
            let lacking = usable_key(&self.cfg, &known).is_none();
            let stale = known
                .hello_at
                .is_none_or(|t| now_ms() >= t + HELLO_EVERY.as_millis() as i64);
            let answer = owed.iter().any(|o| o.eq_ignore_ascii_case(&peer));
            if !(answer || (lacking && stale)) {
                continue;
            }
            let mid = new_message_id(self.cfg.address());
            let sent = self.transports[ti].hello(&peer, &mid, lacking).await;
            // Tried again after HELLO_EVERY either way: a refused hello is not hammered.
            self.store.hello_sent(&peer)?;
            match sent {
                Ok(()) => {
                    report.hellos += 1;
                    tracing::info!(%peer, wants_key = lacking, "sent a hello with our key");
                }
                Err(e) => self.hello_failed(&peer, &e, report)?,
            }
        }
        Ok(())
    }

    /// A hello that did not go out is a send failure to that peer, shown for each of its
    /// documents like any other (`agent status`).
    fn hello_failed(&mut self, peer: &str, e: &SendError, report: &mut PassReport) -> Result<()> {
        tracing::warn!(%peer, error = %e, "the hello did not go out");
        report.send_failures += 1;
        let (error, failing) = match e {
            SendError::Temporary(t) => (t.clone(), false),
            SendError::Permanent(p) | SendError::Account(p) => (p.clone(), true),
        };
        let docs: Vec<String> = self
            .docs
            .iter()
            .filter(|d| d.cfg.peer(peer).is_some())
            .map(|d| d.cfg.name.clone())
            .collect();
        for doc in docs {
            let change = PeerChange::Failed {
                error: format!("hello (our key) not sent: {error}"),
                failing,
            };
            Store::touch_peer(self.store.conn(), &doc, peer, change)?;
        }
        Ok(())
    }
}

fn internal(e: impl Into<AgentError>) -> Refusal {
    Refusal::Retry(format!("internal: {}", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(fingerprint: Option<&str>) -> Config {
        let line = fingerprint
            .map(|f| format!("fingerprint = \"{f}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "[[peers]]\naddress = \"bob@example.test\"\n{line}\n[[peers]]\naddress = \"carol@example.test\"\n"
        );
        Config::parse(&text, std::path::Path::new("agent.toml")).unwrap()
    }

    fn known(fingerprint: Option<&str>) -> PeerKey {
        PeerKey {
            address: "Bob@example.test".into(),
            fingerprint: fingerprint.map(str::to_string),
            key: fingerprint.map(|_| b"key".to_vec()),
            ..PeerKey::default()
        }
    }

    const F1: &str = "0123456789ABCDEF0123456789ABCDEF01234567";
    const F2: &str = "89ABCDEF0123456789ABCDEF0123456789ABCDEF";

    #[test]
    fn the_invitation_fingerprint_wins_over_the_pinned_key() {
        assert_eq!(expected_fingerprint(&config(None), &known(None)), None);
        assert_eq!(
            expected_fingerprint(&config(None), &known(Some(F1))).as_deref(),
            Some(F1)
        );
        let grouped = "0123 4567 89ab cdef 0123  4567 89AB CDEF 0123 4567";
        assert_eq!(
            expected_fingerprint(&config(Some(grouped)), &known(None)).as_deref(),
            Some(F1)
        );
        assert_eq!(
            expected_fingerprint(&config(Some(F2)), &known(Some(F1))).as_deref(),
            Some(F2)
        );
        // A key is used only when it is the expected one.
        assert_eq!(
            usable_key(&config(None), &known(Some(F1))),
            Some(b"key".to_vec())
        );
        assert_eq!(
            usable_key(&config(Some(F1)), &known(Some(F1))),
            Some(b"key".to_vec())
        );
        assert_eq!(usable_key(&config(Some(F2)), &known(Some(F1))), None);
        assert_eq!(usable_key(&config(Some(F1)), &known(None)), None);
        let why = key_changed_reason("bob@example.test", F1, F2);
        assert!(
            why.starts_with("KEY CHANGED")
                && why.contains("agent peer accept-key bob@example.test")
        );
    }

    #[test]
    fn a_bad_configured_fingerprint_is_a_config_error() {
        let text = "[[peers]]\naddress = \"bob@example.test\"\nfingerprint = \"0123\"\n";
        let e = Config::parse(text, std::path::Path::new("agent.toml")).unwrap_err();
        assert!(e.to_string().contains("not 40 hex digits"), "{e}");
    }
}
