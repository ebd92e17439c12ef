//! SMTP through lettre's client, over a connection we open ourselves so that Nagle's algorithm is
//! off (see `net.rs`: lettre leaves it on, which costs 40 ms per mail). One authenticated
//! connection is kept between sends and checked with NOOP before reuse; replies are classified into
//! "try again" (4xx, network) and "refused" (5xx, with the server's words kept for `agent status`).

use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;

use crate::config::{Encryption, Server};
use crate::transport::SendError;
use crate::transport::mail::net::{MailStream, connect_tcp, port_hint, read_pem, step, tls_wrap};

/// How long one SMTP step (connecting, one message) may take before the connection is dropped.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// The account's SMTP server, with at most one open connection kept for the next mail.
pub struct Smtp {
    server: Server,
    credentials: Credentials,
    /// The login name, for messages.
    login: String,
    hello: ClientId,
    starttls: Option<TlsParameters>,
    idle: tokio::sync::Mutex<Option<AsyncSmtpConnection>>,
}

impl Smtp {
    /// Resolves the password and the TLS settings now, so a wrong config fails at start-up.
    pub fn new(server: &Server, address: &str) -> Result<Smtp, String> {
        let password = server.password("SMTP").map_err(|e| e.to_string())?;
        let starttls = match server.encryption {
            Encryption::StartTls => {
                let mut b = TlsParameters::builder(server.host.clone());
                // The same reading of the CA file as for IMAP and SMTP over TLS (`net.rs`).
                if let Some(ca) = &server.ca_file {
                    for cert in read_pem(ca)? {
                        b = b.add_root_certificate(
                            Certificate::from_der(cert.to_vec())
                                .map_err(|e| format!("CA file {}: {e}", ca.display()))?,
                        );
                    }
                }
                Some(
                    b.build_rustls()
                        .map_err(|e| format!("SMTP TLS settings: {e}"))?,
                )
            }
            Encryption::Tls | Encryption::None => None,
        };
        Ok(Smtp {
            credentials: Credentials::new(server.login_or(address).to_string(), password),
            login: server.login_or(address).to_string(),
            server: server.clone(),
            hello: ClientId::default(),
            starttls,
            idle: tokio::sync::Mutex::new(None),
        })
    }

    /// Opens, secures and authenticates a new connection.
    async fn connect(&self) -> Result<AsyncSmtpConnection, SendError> {
        self.connect_showing(&|step| tracing::debug!(step, "SMTP"))
            .await
    }

    /// Opens, secures and authenticates a new connection, each step (TCP, TLS, greeting,
    /// STARTTLS, login) bounded by the server's `timeout` and announced to `progress`.
    async fn connect_showing(
        &self,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<AsyncSmtpConnection, SendError> {
        let s = &self.server;
        let hint = port_hint(s.port, s.encryption == Encryption::Tls);
        let hint = Some(hint.as_str());
        let connecting = format!("SMTP: connecting to {}:{}", s.host, s.port);
        let tcp = step(
            &connecting,
            s.timeout,
            None,
            progress,
            connect_tcp(&s.host, s.port, "SMTP"),
        )
        .await
        .map_err(SendError::Temporary)?;
        let stream = match s.encryption {
            Encryption::Tls => step(
                "SMTP: TLS handshake",
                s.timeout,
                hint,
                progress,
                tls_wrap(tcp, &s.host, s.port, s.ca_file.as_deref()),
            )
            .await
            .map_err(SendError::Temporary)?,
            Encryption::StartTls | Encryption::None => MailStream::Plain(tcp),
        };
        let greeting = async {
            AsyncSmtpConnection::connect_with_transport(Box::new(stream), &self.hello)
                .await
                .map_err(|e| describe(&e))
        };
        let mut conn = step(
            "SMTP: waiting for the greeting",
            s.timeout,
            hint,
            progress,
            greeting,
        )
        .await
        .map_err(SendError::Temporary)?;
        if let Some(tls) = &self.starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(SendError::Temporary(format!(
                    "{}:{} does not offer STARTTLS; set encryption = \"tls\" if it expects TLS from the start",
                    s.host, s.port
                )));
            }
            let upgrade = async {
                conn.starttls(tls.clone(), &self.hello)
                    .await
                    .map_err(|e| describe(&e))
            };
            step("SMTP: STARTTLS", s.timeout, hint, progress, upgrade)
                .await
                .map_err(SendError::Temporary)?;
        }
        self.log_in(conn, progress).await
    }

    /// Authenticates an open connection (bounded by the server's `timeout`); a refused login is
    /// an account error that names what to check.
    async fn log_in(
        &self,
        mut conn: AsyncSmtpConnection,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<AsyncSmtpConnection, SendError> {
        let s = &self.server;
        progress(&format!("SMTP: logging in as {}", self.login));
        let auth = conn.auth(&[Mechanism::Plain, Mechanism::Login], &self.credentials);
        let refused = match tokio::time::timeout(s.timeout, auth).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(SendError::Account(format!(
                "SMTP {}:{} refused the login as {:?}: {}. Check login and password in the config \
                 ([account.smtp]; many providers want an app password)",
                s.host,
                s.port,
                self.login,
                describe(&e)
            ))),
            Err(_) => Some(SendError::Temporary(format!(
                "SMTP: logging in as {}: no answer within {}",
                self.login,
                humantime::format_duration(s.timeout)
            ))),
        };
        if let Some(e) = refused {
            conn.abort().await;
            return Err(e);
        }
        Ok(conn)
    }

    /// The kept connection if it still answers, otherwise a new one.
    async fn connection(&self) -> Result<AsyncSmtpConnection, SendError> {
        let kept = self.idle.lock().await.take();
        if let Some(mut conn) = kept {
            if conn.test_connected().await {
                return Ok(conn);
            }
            tracing::debug!("kept SMTP connection is gone; reconnecting");
            conn.abort().await;
        }
        self.connect().await
    }

    /// Sends one formatted message.
    ///
    /// # Errors
    ///
    /// The send did not go through: see [`Failure`].
    pub async fn send(
        &self,
        envelope: &lettre::address::Envelope,
        raw: &[u8],
    ) -> Result<(), Failure> {
        let attempt = async {
            let mut conn = self.connection().await.map_err(Failure::from)?;
            match conn.send(envelope, raw).await {
                Ok(_) => {
                    *self.idle.lock().await = Some(conn);
                    Ok(())
                }
                Err(e) => {
                    conn.abort().await;
                    Err(classify(e))
                }
            }
        };
        tokio::time::timeout(STEP_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(Failure::from(SendError::Temporary(format!(
                    "SMTP {}:{} did not answer within {STEP_TIMEOUT:?}",
                    self.server.host, self.server.port
                ))))
            })
    }

    /// The server as `host:port`: what a size learned from its refusals is kept under.
    pub fn server_name(&self) -> String {
        format!("{}:{}", self.server.host, self.server.port)
    }

    /// Connects and authenticates (`agent check`), announcing each step to `progress`.
    pub async fn check(&self, progress: &(dyn Fn(&str) + Send + Sync)) -> Result<String, String> {
        let s = &self.server;
        match self.connect_showing(progress).await {
            Ok(mut conn) => {
                let _ = tokio::time::timeout(s.timeout, conn.quit()).await;
                Ok(format!("{}:{} accepts our login", s.host, s.port))
            }
            Err(SendError::Temporary(e) | SendError::Permanent(e) | SendError::Account(e)) => {
                Err(e)
            }
        }
    }
}

/// A send that did not go through: why, and whether the server refused the message for its
/// size (reply code 552, or the enhanced status code 5.3.4 "message too big for system" with
/// any permanent reply), which a smaller message may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub error: SendError,
    pub too_large: bool,
}

impl From<SendError> for Failure {
    fn from(error: SendError) -> Failure {
        Failure {
            error,
            too_large: false,
        }
    }
}

/// A permanent (5xx) refusal is not retried; everything else is.
fn classify(e: lettre::transport::smtp::Error) -> Failure {
    let text = describe(&e);
    if e.is_permanent() {
        let code = e.status().map(|c| c.to_string());
        Failure {
            too_large: too_large(code.as_deref(), &text),
            error: SendError::Permanent(text),
        }
    } else {
        Failure::from(SendError::Temporary(text))
    }
}

/// Whether a permanent refusal (its reply code, its text) says the message is too large.
fn too_large(code: Option<&str>, text: &str) -> bool {
    code == Some("552") || text.contains("5.3.4")
}

/// The error and its causes, each said once (lettre's message often repeats its cause's).
fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_refusals_are_told_from_other_refusals() {
        assert!(too_large(
            Some("552"),
            "permanent error (552): 5.3.4 Message size exceeds fixed limit"
        ));
        assert!(too_large(
            Some("554"),
            "permanent error (554): 5.3.4 Message too big for system"
        ));
        assert!(too_large(Some("552"), "Requested mail action aborted"));
        assert!(!too_large(
            Some("550"),
            "permanent error (550): 5.1.1 User unknown"
        ));
        assert!(!too_large(None, "connection refused"));
    }
}
