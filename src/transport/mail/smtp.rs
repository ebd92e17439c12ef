//! SMTP through lettre: one pooled transport per account; replies classified into "try again"
//! (4xx, network) and "refused" (5xx, with the server's words kept for `agent status`).

use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::config::{Encryption, Server};
use crate::transport::SendError;

pub type Smtp = AsyncSmtpTransport<Tokio1Executor>;

/// Builds the SMTP transport for a server.
pub fn transport(server: &Server, address: &str) -> Result<Smtp, String> {
    let password = server.password("SMTP").map_err(|e| e.to_string())?;
    let tls = || -> Result<TlsParameters, String> {
        let mut b = TlsParameters::builder(server.host.clone());
        if let Some(ca) = &server.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| format!("cannot read CA file {}: {e}", ca.display()))?;
            b = b.add_root_certificate(
                Certificate::from_pem(&pem)
                    .map_err(|e| format!("CA file {}: {e}", ca.display()))?,
            );
        }
        b.build_rustls()
            .map_err(|e| format!("SMTP TLS settings: {e}"))
    };
    let mode = match server.encryption {
        Encryption::Tls => Tls::Wrapper(tls()?),
        Encryption::StartTls => Tls::Required(tls()?),
        Encryption::None => Tls::None,
    };
    Ok(Smtp::builder_dangerous(server.host.clone())
        .port(server.port)
        .tls(mode)
        .credentials(Credentials::new(
            server.login_or(address).to_string(),
            password,
        ))
        .timeout(Some(std::time::Duration::from_secs(60)))
        .build())
}

/// Sends a formatted message.
pub async fn send(
    smtp: &Smtp,
    envelope: &lettre::address::Envelope,
    raw: &[u8],
) -> Result<(), SendError> {
    match smtp.send_raw(envelope, raw).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(SendError::Permanent(describe(&e))),
        Err(e) => Err(SendError::Temporary(describe(&e))),
    }
}

fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Connects, authenticates and says what the server is.
pub async fn check(server: &Server, address: &str) -> Result<String, String> {
    let smtp = transport(server, address)?;
    match smtp.test_connection().await {
        Ok(true) => Ok(format!("{}:{} accepts our login", server.host, server.port)),
        Ok(false) => Err(format!(
            "{}:{} did not answer as an SMTP server",
            server.host, server.port
        )),
        Err(e) => Err(describe(&e)),
    }
}
