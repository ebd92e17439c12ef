//! Connections shared by IMAP and SMTP: TCP with Nagle's algorithm off, and TLS trusting the public
//! web PKI roots plus, when configured, a private CA file (self-signed or company servers, and the
//! test stack's throw-away CA).
//!
//! Keepalive probes let the kernel notice a peer that vanished while we wait in IDLE.
//!
//! Nagle matters more than it looks: both protocols write a command, then wait for the reply, and
//! lettre writes a message body and its closing `.` separately. With Nagle on, that second write
//! waits for the server's delayed ACK, 40 ms on Linux, on every mail sent.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// How long opening a TCP connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// TCP keepalive: after a minute of silence (a long IDLE), probe every 15 s and give up after 4
/// unanswered probes, so a connection that died silently errors within about two minutes instead
/// of leaving IDLE waiting for a reply that cannot come.
fn keepalive() -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(15))
        .with_retries(4)
}

/// The likely mistake behind a connection that fails or hangs: a port that speaks TLS from the
/// first byte used without `tls` (such a server waits silently for our TLS hello, so we wait for
/// a greeting that never comes), or the other way round.
pub fn port_hint(port: u16, tls: bool) -> String {
    match (port, tls) {
        (993 | 465, false) => {
            format!("port {port} speaks TLS from the first byte: use encryption = \"tls\"")
        }
        (143 | 587 | 25, true) => format!(
            "port {port} starts in plain text and switches with STARTTLS: use encryption = \"start-tls\""
        ),
        (_, false) => format!(
            "a server that speaks TLS from the first byte (IMAP usually on 993, SMTP on 465) waits \
             silently for ours: if port {port} is one, use encryption = \"tls\""
        ),
        (_, true) => format!(
            "if port {port} starts in plain text (IMAP usually 143, SMTP 587), use encryption = \"start-tls\""
        ),
    }
}

/// Runs one step of opening a connection within `limit`, telling `progress` what it does; a
/// failure or a silence names the step, how long it waited, and the likely mistake if any.
pub async fn step<T>(
    what: &str,
    limit: Duration,
    hint: Option<&str>,
    progress: &(dyn Fn(&str) + Send + Sync),
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    progress(what);
    let with_hint = |e: String| match hint {
        Some(h) => format!("{e} (hint: {h})"),
        None => e,
    };
    match tokio::time::timeout(limit, work).await {
        Ok(r) => r.map_err(with_hint),
        Err(_) => Err(with_hint(format!(
            "{what}: no answer within {}",
            humantime::format_duration(limit)
        ))),
    }
}

/// A connection to a mail server, encrypted or not.
#[derive(Debug)]
pub enum MailStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Opens a TCP connection with Nagle's algorithm off; `what` names the service in errors.
pub async fn connect_tcp(host: &str, port: u16, what: &str) -> Result<TcpStream, String> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("connecting to {what} {host}:{port} timed out"))?
        .map_err(|e| format!("cannot connect to {what} {host}:{port}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("{what} {host}:{port}: cannot turn off Nagle: {e}"))?;
    socket2::SockRef::from(&tcp)
        .set_tcp_keepalive(&keepalive())
        .map_err(|e| format!("{what} {host}:{port}: cannot set TCP keepalive: {e}"))?;
    Ok(tcp)
}

/// Starts TLS on `tcp`, checking the certificate against `host`.
pub async fn tls_wrap(
    tcp: TcpStream,
    host: &str,
    port: u16,
    ca_file: Option<&Path>,
) -> Result<MailStream, String> {
    let config = client_config(ca_file)?;
    let name =
        ServerName::try_from(host.to_string()).map_err(|e| format!("server name {host:?}: {e}"))?;
    let stream = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}:{port}: {e}"))?;
    Ok(MailStream::Tls(Box::new(stream)))
}

impl MailStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            MailStream::Plain(s) => s,
            MailStream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for MailStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MailStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MailStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MailStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Lets lettre's SMTP client run over a connection we opened (with Nagle off).
impl lettre::transport::smtp::client::AsyncTokioStream for MailStream {
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }
}

/// Reads every certificate of a PEM file.
pub fn read_pem(
    path: &Path,
) -> Result<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>, String> {
    let data =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut data.as_slice()).collect();
    let certs = certs.map_err(|e| format!("CA file {} is not PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("CA file {} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// A rustls client configuration trusting the public roots and `ca_file`.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in read_pem(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("CA file {}: {e}", path.display()))?;
        }
    }
    Ok(Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}
