//! The agent's TOML configuration: the account, the peers, the documents and where state lives.
//!
//! Parsing is strict: an unknown key is an error that names its line and suggests the nearest valid
//! key, because a typo in a sync tool's config silently means "not synced". The binary exits with
//! code 78 (EX_CONFIG) on any [`ConfigError`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Exit code for a configuration error (sysexits.h EX_CONFIG); the systemd unit does not restart on it.
pub const EX_CONFIG: i32 = 78;

/// What is wrong with a configuration, in words that say what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("password for {what}: {msg}")]
    Secret { what: String, msg: String },
}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encryption {
    /// TLS from the first byte (IMAPS 993, SMTPS 465).
    Tls,
    /// Plain connection upgraded with STARTTLS (IMAP 143, submission 587).
    StartTls,
    /// No encryption: only for loopback test servers.
    None,
}

/// One server (IMAP or SMTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Server {
    pub host: String,
    pub port: u16,
    pub encryption: Encryption,
    /// Login name; the account address when absent.
    pub login: Option<String>,
    /// Inline password (prefer `password-cmd` or `password-env`).
    pub password: Option<String>,
    /// Name of an environment variable that holds the password.
    pub password_env: Option<String>,
    /// Shell command (run with `sh -c`) whose first output line is the password.
    pub password_cmd: Option<String>,
    /// PEM file of a CA to trust besides the public roots (private or self-signed servers).
    pub ca_file: Option<PathBuf>,
    /// How long one step (connecting, the greeting, TLS, login, one message) may take.
    #[serde(default = "default_imap_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

/// The IMAP side: the server plus which folders to use. The server fields repeat [`Server`]'s
/// rather than `#[serde(flatten)]` it, because flattening loses the line numbers in error messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Imap {
    pub host: String,
    pub port: u16,
    pub encryption: Encryption,
    pub login: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
    pub password_cmd: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// Mailbox watched for incoming changes.
    #[serde(default = "default_mailbox")]
    pub mailbox: String,
    /// Folder that processed agent mail is moved to (created if missing).
    #[serde(default = "default_processed")]
    pub processed_folder: String,
    /// Folder for agent mail that was refused (created if missing).
    #[serde(default = "default_quarantine")]
    pub quarantine_folder: String,
    /// How often to also look for news while IDLE waits. See [`IdleCheck`].
    #[serde(default)]
    pub idle_check: IdleCheck,
    /// How long processed agent mail stays in the processed folder (`None`: forever). Every change
    /// and every acknowledgement is a mail, so without this the folder grows without end.
    #[serde(
        default = "default_keep_processed",
        deserialize_with = "keep_processed"
    )]
    pub keep_processed: Option<Duration>,
    /// How long one IMAP exchange may take before the connection is taken for dead and reopened.
    #[serde(default = "default_imap_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
}

fn default_keep_processed() -> Option<Duration> {
    Some(Duration::from_secs(14 * 24 * 3600))
}

/// `keep-processed`: a duration such as "14d", or "forever".
fn keep_processed<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    if text == "forever" {
        return Ok(None);
    }
    humantime::parse_duration(&text).map(Some).map_err(|e| {
        serde::de::Error::custom(format!(
            "keep-processed {text:?}: {e}; write a duration such as \"14d\" or \"12h\", or \"forever\""
        ))
    })
}

fn default_imap_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Whether the agent also asks the server for news while it waits in IDLE.
///
/// IDLE alone is enough on most providers, but some servers hold notifications back: Dovecot
/// batches them for about half a second, which is most of the delay between an edit and its merge
/// on a nearby server. Ending IDLE briefly (`DONE`, `NOOP`, `IDLE`) makes the server report at
/// once. That costs three commands per check, which a provider with millions of users would not
/// welcome from every client, so it is only automatic for a server on the same machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleCheck {
    /// Every [`IdleCheck::AUTO_INTERVAL`] when the IMAP host is a loopback address, otherwise off.
    #[default]
    Auto,
    /// IDLE only.
    Off,
    /// At this interval (at least [`IdleCheck::MIN_INTERVAL`]).
    Every(Duration),
}

impl IdleCheck {
    /// The interval `auto` uses for a server on this machine.
    pub const AUTO_INTERVAL: Duration = Duration::from_millis(100);
    /// Shorter intervals would keep the connection busy rather than idle.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(10);

    /// The interval in force for a server at `host`, if any.
    pub fn interval(self, host: &str) -> Option<Duration> {
        match self {
            IdleCheck::Auto if is_loopback(host) => Some(Self::AUTO_INTERVAL),
            IdleCheck::Auto | IdleCheck::Off => None,
            IdleCheck::Every(d) => Some(d),
        }
    }
}

/// Whether `host` names this machine, judged from the name alone (no DNS lookup).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl<'de> Deserialize<'de> for IdleCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bad = |why: String| {
            serde::de::Error::custom(format!(
                "idle-check {text:?}: {why}; write \"auto\", \"off\" or an interval such as \"100ms\""
            ))
        };
        match text.as_str() {
            "auto" => Ok(IdleCheck::Auto),
            "off" => Ok(IdleCheck::Off),
            t => {
                let every = humantime::parse_duration(t).map_err(|e| bad(e.to_string()))?;
                if every < Self::MIN_INTERVAL {
                    return Err(bad(format!(
                        "checking more often than every {:?} would keep the connection busy",
                        Self::MIN_INTERVAL
                    )));
                }
                Ok(IdleCheck::Every(every))
            }
        }
    }
}

impl Imap {
    /// The connection settings, in the shape shared with SMTP.
    pub fn server(&self) -> Server {
        Server {
            host: self.host.clone(),
            port: self.port,
            encryption: self.encryption,
            login: self.login.clone(),
            password: self.password.clone(),
            password_env: self.password_env.clone(),
            password_cmd: self.password_cmd.clone(),
            ca_file: self.ca_file.clone(),
            timeout: self.timeout,
        }
    }

    /// How often to look for news while IDLE waits, if at all.
    pub fn idle_check_interval(&self) -> Option<Duration> {
        self.idle_check.interval(&self.host)
    }
}

fn default_mailbox() -> String {
    "INBOX".into()
}
fn default_processed() -> String {
    "Minisync".into()
}
fn default_quarantine() -> String {
    "Minisync-Quarantine".into()
}

/// The mail account the agent sends and receives with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Account {
    pub address: String,
    pub name: Option<String>,
    /// The largest mail the agent sends, in bytes after encoding (OpenPGP, armor, MIME): a
    /// changes object that does not fit travels in several mails. `max-mail-size = "10MB"`
    /// (the default), `"100kB"`, `"512KiB"` or a number of bytes; at least 16 kB.
    #[serde(default = "default_max_mail_size", deserialize_with = "mail_size")]
    pub max_mail_size: u64,
    pub imap: Imap,
    pub smtp: Server,
}

fn default_max_mail_size() -> u64 {
    crate::transport::parts::DEFAULT_MAX_MAIL_SIZE
}

/// The largest `max-mail-size` taken: 1 GB (providers refuse mail far below it).
const MAX_MAIL_SIZE: u64 = 1_000_000_000;

/// `max-mail-size`: a number of bytes, or a text such as "10MB" (see [`parse_size`]), from
/// 16 kB to 1 GB.
fn mail_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Bytes(i64),
        Text(String),
    }
    let min = crate::transport::parts::MIN_MAIL_SIZE;
    let hint = "write a size such as \"10MB\", \"100kB\" or a number of bytes";
    let (bytes, shown) = match Given::deserialize(d)? {
        Given::Bytes(n) => (u64::try_from(n).ok(), n.to_string()),
        Given::Text(t) => (parse_size(&t), format!("{t:?}")),
    };
    let bytes = bytes.ok_or_else(|| {
        serde::de::Error::custom(format!("max-mail-size {shown} is not a size; {hint}"))
    })?;
    if !(min..=MAX_MAIL_SIZE).contains(&bytes) {
        return Err(serde::de::Error::custom(format!(
            "max-mail-size {shown} ({bytes} bytes) is out of range: a mail must hold at least \
             {min} bytes (its headers and key alone take about 3 kB) and at most {MAX_MAIL_SIZE}"
        )));
    }
    Ok(bytes)
}

/// A size in bytes from text: a number (decimals allowed) and an optional unit, `B`, `kB`/`KB`/`k`
/// (1000), `KiB` (1024), `MB`/`M`, `MiB`, `GB`/`G`, `GiB`; spaces between them allowed. None when
/// it is not such a size.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    let bytes = number * factor as f64;
    (bytes.is_finite() && bytes < 1e18).then_some(bytes.round() as u64)
}

/// Someone documents are shared with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Peer {
    pub address: String,
    pub name: Option<String>,
    /// The fingerprint of the peer's OpenPGP key (40 hex digits; spaces allowed), from an
    /// invitation line (`agent peer add`): pinned from the start, no trust on first use.
    pub fingerprint: Option<String>,
}

impl Peer {
    /// The configured fingerprint without spaces, upper-case.
    pub fn pinned_fingerprint(&self) -> Option<String> {
        self.fingerprint.as_deref().map(normalize_fingerprint)
    }
}

/// A fingerprint as compared: without spaces, upper-case.
pub fn normalize_fingerprint(text: &str) -> String {
    text.split_whitespace()
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Which transport carries a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TransportKind {
    #[default]
    Mail,
    Folder,
}

/// A synced document.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DocumentConfig {
    pub name: String,
    /// Peers (e-mail addresses) that share it; mail transport only.
    #[serde(default)]
    pub peers: Vec<String>,
    #[serde(default)]
    pub transport: TransportKind,
    /// The shared folder; folder transport only.
    pub folder: Option<PathBuf>,
    /// A JSON file bound to the document: saves become local edits, merges are written to it
    /// (absolute, `~/…`, or relative to the config file).
    pub file: Option<PathBuf>,
    /// Edits within this delay go out together.
    #[serde(default = "default_send_delay", with = "humantime_serde_compat")]
    pub send_delay: Duration,
    /// Changes not acknowledged within this interval are sent again.
    #[serde(default = "default_resend", with = "humantime_serde_compat")]
    pub resend_interval: Duration,
}

impl DocumentConfig {
    /// The configured spelling of `address` if it is a peer of this document.
    pub fn peer(&self, address: &str) -> Option<&String> {
        find_address(&self.peers, address)
    }
}

/// `address` in `list`, compared without regard to case: mail systems treat addresses that way in
/// practice, and a peer's mail must match however its `From` happens to be written.
pub fn find_address<'a>(list: &'a [String], address: &str) -> Option<&'a String> {
    list.iter().find(|p| p.eq_ignore_ascii_case(address))
}

fn default_send_delay() -> Duration {
    Duration::from_secs(2)
}
fn default_resend() -> Duration {
    Duration::from_secs(15 * 60)
}

/// Agent-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AgentSettings {
    /// How often to poll the mailbox when the server has no IDLE (and the folder transport).
    #[serde(default = "default_poll", with = "humantime_serde_compat")]
    pub poll_interval: Duration,
    /// Where the SQLite state lives; the XDG state directory when absent.
    pub state_dir: Option<PathBuf>,
    /// How far ahead of this machine's clock a peer's change stamps may be; changes stamped
    /// further ahead are refused (a peer's broken clock would otherwise drag every clock along).
    #[serde(default = "default_max_skew", with = "humantime_serde_compat")]
    pub max_clock_skew: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            poll_interval: default_poll(),
            state_dir: None,
            max_clock_skew: default_max_skew(),
        }
    }
}

fn default_max_skew() -> Duration {
    Duration::from_millis(crate::engine::DEFAULT_MAX_SKEW_MS)
}

fn default_poll() -> Duration {
    Duration::from_secs(60)
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Config {
    pub account: Option<Account>,
    #[serde(default)]
    pub agent: AgentSettings,
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub documents: Vec<DocumentConfig>,
    /// Where the file was read from (for messages).
    #[serde(skip)]
    pub path: PathBuf,
    /// SHA-256 (hex) of the file's absolute path and text: two processes that read the same
    /// file, unchanged, have the same one (a running agent serves `agent doc` commands only to
    /// a command line that read its config).
    #[serde(skip)]
    pub fingerprint: String,
}

/// Durations written like "2s", "500ms", "15m" (humantime), or a number of seconds.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Deserializer;
    use serde::de::{Error, Visitor};

    const WANT: &str = "write e.g. \"500ms\", \"2s\" or \"15m\", or a whole number of seconds";

    struct V;

    impl Visitor<'_> for V {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a duration ({WANT})")
        }
        fn visit_u64<E: Error>(self, s: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(s))
        }
        fn visit_i64<E: Error>(self, s: i64) -> Result<Duration, E> {
            u64::try_from(s)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("{s} is negative: a duration cannot be; {WANT}")))
        }
        fn visit_f64<E: Error>(self, s: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(s)
                .map_err(|_| E::custom(format!("{s} is not a duration; {WANT}")))
        }
        fn visit_str<E: Error>(self, t: &str) -> Result<Duration, E> {
            if t.trim_start().starts_with('-') {
                return Err(E::custom(format!(
                    "{t:?} is negative: a duration cannot be; {WANT}"
                )));
            }
            humantime::parse_duration(t)
                .map_err(|e| E::custom(format!("{t:?} is not a duration ({e}); {WANT}")))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(V)
    }
}

/// The default config path: `$XDG_CONFIG_HOME/minisync/agent.toml` (or `~/.config/...`).
pub fn default_config_path() -> PathBuf {
    xdg_dir("XDG_CONFIG_HOME", ".config").join("minisync/agent.toml")
}

fn xdg_dir(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(v) if !v.is_empty() => PathBuf::from(v),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(fallback),
    }
}

/// Creates `dir` (and its parents) readable by the user only (0700 on Unix): it holds the
/// database, the lock and backups of documents. An existing directory is left as it is (it may be
/// one the user chose and shares on purpose).
///
/// # Errors
///
/// The directory cannot be created or its permissions set.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Opens `path` for writing, created readable by the user only (0600 on Unix; an existing file
/// is narrowed to 0600 too), truncated when `truncate`.
///
/// # Errors
///
/// The file cannot be opened or its permissions set.
pub fn open_private_file(path: &Path, truncate: bool) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options
        .read(true)
        .write(true)
        .create(true)
        .truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

/// Writes `contents` to `path`, readable by the user only (see [`open_private_file`]).
///
/// # Errors
///
/// The file cannot be written.
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = open_private_file(path, true)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// See [`Config::fingerprint`].
fn fingerprint(path: &Path, text: &str) -> String {
    use sha2::{Digest, Sha256};
    // As given, made absolute (not canonical): relative paths in the config resolve against
    // the directory it was named by, so a config named through `..` or a symlink is, for this
    // purpose, another config (its commands run in the command line, correct but not faster).
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let hash = Sha256::new()
        .chain_update(abs.as_os_str().as_encoded_bytes())
        .chain_update([0])
        .chain_update(text.as_bytes())
        .finalize();
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text (`path` is only used in messages and for relative paths).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
                .unwrap_or(0);
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                msg: explain(e.message()),
            }
        })?;
        cfg.path = path.to_path_buf();
        cfg.fingerprint = fingerprint(path, text);
        cfg.check()?;
        Ok(cfg)
    }

    fn invalid(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut files = std::collections::HashSet::new();
        for d in &self.documents {
            if d.name.is_empty()
                || !d
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(self.invalid(format!(
                    "document name {:?}: use letters, digits, '-', '_' or '.'",
                    d.name
                )));
            }
            if !names.insert(&d.name) {
                return Err(self.invalid(format!("document {:?} is listed twice", d.name)));
            }
            if let Some(f) = self.bound_file(d)
                && !files.insert(f.clone())
            {
                return Err(self.invalid(format!(
                    "document {:?}: file {} is bound to another document too; bind each file to one document",
                    d.name,
                    f.display()
                )));
            }
            self.check_transport(d)?;
        }
        self.check_peers()?;
        self.check_account()
    }

    /// A document's transport has what it needs: the account and known peers for mail, a
    /// folder for the folder transport.
    fn check_transport(&self, d: &DocumentConfig) -> Result<(), ConfigError> {
        match d.transport {
            TransportKind::Mail => {
                if self.account.is_none() {
                    return Err(self.invalid(format!(
                        "document {:?} uses the mail transport but there is no [account] table",
                        d.name
                    )));
                }
                if d.folder.is_some() {
                    return Err(self.invalid(format!(
                        "document {:?}: `folder` only applies to transport = \"folder\"",
                        d.name
                    )));
                }
                for p in &d.peers {
                    if !self.peers.iter().any(|q| q.address.eq_ignore_ascii_case(p)) {
                        return Err(self.invalid(format!(
                            "document {:?} names peer {p:?}, which is not in [[peers]]: add it there",
                            d.name
                        )));
                    }
                }
            }
            TransportKind::Folder => {
                if d.folder.is_none() {
                    return Err(self.invalid(format!(
                        "document {:?} uses the folder transport: set `folder = \"/path/to/shared/folder\"`",
                        d.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// Every peer is an e-mail address with, if pinned, a well-formed fingerprint.
    fn check_peers(&self) -> Result<(), ConfigError> {
        for p in &self.peers {
            if !p.address.contains('@') {
                return Err(self.invalid(format!("peer {:?} is not an e-mail address", p.address)));
            }
            if let Some(f) = p.pinned_fingerprint()
                && (f.len() != 40 || !f.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Err(self.invalid(format!(
                    "peer {:?}: fingerprint {:?} is not 40 hex digits (copy it from the peer's `agent peer invite`)",
                    p.address,
                    p.fingerprint.as_deref().unwrap_or("")
                )));
            }
        }
        Ok(())
    }

    /// The account's address, and folders apart from the watched mailbox.
    fn check_account(&self) -> Result<(), ConfigError> {
        if let Some(a) = &self.account {
            if !a.address.contains('@') {
                return Err(self.invalid(format!(
                    "account address {:?} is not an e-mail address",
                    a.address
                )));
            }
            let imap = &a.imap;
            for (key, folder) in [
                ("processed-folder", &imap.processed_folder),
                ("quarantine-folder", &imap.quarantine_folder),
            ] {
                if folder.eq_ignore_ascii_case(&imap.mailbox) {
                    return Err(self.invalid(format!(
                        "[account.imap] {key} {folder:?} is the watched mailbox: agent mail is moved out of \
                         the mailbox into it, so it must be another folder"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The directory holding the agent's state.
    pub fn state_dir(&self) -> PathBuf {
        match &self.agent.state_dir {
            Some(p) if p.is_relative() => {
                self.path.parent().unwrap_or_else(|| Path::new(".")).join(p)
            }
            Some(p) => p.clone(),
            None => xdg_dir("XDG_STATE_HOME", ".local/state").join("minisync"),
        }
    }

    /// The SQLite database path.
    pub fn database_path(&self) -> PathBuf {
        self.state_dir().join("agent.sqlite")
    }

    /// The mail account's address, or "" without one (folder transport only; Message-IDs then
    /// take a placeholder domain).
    pub fn address(&self) -> &str {
        self.account.as_ref().map_or("", |a| a.address.as_str())
    }

    /// A document's settings by name.
    pub fn document(&self, name: &str) -> Option<&DocumentConfig> {
        self.documents.iter().find(|d| d.name == name)
    }

    /// A folder path, relative paths taken from the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_relative() {
            self.path.parent().unwrap_or_else(|| Path::new(".")).join(p)
        } else {
            p.to_path_buf()
        }
    }

    /// The JSON file bound to a document, if any: `~/` is the home directory, a relative path is
    /// taken from the config file's directory.
    pub fn bound_file(&self, doc: &DocumentConfig) -> Option<PathBuf> {
        let file = doc.file.as_deref()?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        match (file.strip_prefix("~"), home) {
            (Ok(rest), Some(home)) => Some(home.join(rest)),
            _ => Some(self.resolve(file)),
        }
    }
}

impl Server {
    /// The login name (the account address when not set).
    pub fn login_or<'a>(&'a self, address: &'a str) -> &'a str {
        self.login.as_deref().unwrap_or(address)
    }

    /// Resolves the password from the command, the environment variable or the inline value.
    pub fn password(&self, what: &str) -> Result<String, ConfigError> {
        let err = |msg: String| ConfigError::Secret {
            what: what.to_string(),
            msg,
        };
        if let Some(cmd) = &self.password_cmd {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .output()
                .map_err(|e| err(format!("cannot run password-cmd: {e}")))?;
            if !out.status.success() {
                let said = String::from_utf8_lossy(&out.stderr);
                let said = match said.trim() {
                    "" => "and printed no message".to_string(),
                    text => format!("saying {text:?}"),
                };
                let code = out.status.code().map_or_else(
                    || "was stopped by a signal".to_string(),
                    |c| format!("exited with code {c}"),
                );
                return Err(err(format!(
                    "password-cmd {cmd:?} {code} {said}; run it in a shell to see why"
                )));
            }
            let text = String::from_utf8_lossy(&out.stdout);
            return Ok(text.lines().next().unwrap_or("").to_string());
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var)
                .map_err(|_| err(format!("environment variable {var} is not set")));
        }
        self.password
            .clone()
            .ok_or_else(|| err("set one of password-cmd, password-env or password".to_string()))
    }
}

/// Every key the config accepts, for "did you mean" suggestions.
const KNOWN_KEYS: &[&str] = &[
    "account",
    "agent",
    "peers",
    "documents",
    "address",
    "name",
    "imap",
    "smtp",
    "host",
    "port",
    "encryption",
    "login",
    "password",
    "password-env",
    "password-cmd",
    "ca-file",
    "mailbox",
    "processed-folder",
    "quarantine-folder",
    "idle-check",
    "timeout",
    "keep-processed",
    "max-mail-size",
    "transport",
    "folder",
    "file",
    "send-delay",
    "resend-interval",
    "poll-interval",
    "state-dir",
    "max-clock-skew",
    "fingerprint",
];

/// Adds a suggestion to toml's "unknown field" messages.
fn explain(msg: &str) -> String {
    let msg = msg.trim().to_string();
    let Some(rest) = msg.strip_prefix("unknown field `") else {
        return msg;
    };
    let Some((field, _)) = rest.split_once('`') else {
        return msg;
    };
    // Prefer the keys toml lists as valid at this place; fall back to every known key.
    let listed: Vec<&str> = msg.split('`').skip(3).step_by(2).collect();
    let pool: Vec<&str> = if listed.is_empty() {
        KNOWN_KEYS.to_vec()
    } else {
        listed
    };
    let best = pool
        .iter()
        .map(|k| (edit_distance(field, k), *k))
        .min()
        .filter(|(d, _)| *d <= 3);
    match best {
        Some((_, k)) => format!("unknown key `{field}`: did you mean `{k}`? ({msg})"),
        None => format!("unknown key `{field}` ({msg})"),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[account]
address = "alice@example.test"
[account.imap]
host = "127.0.0.1"
port = 1143
encryption = "none"
password = "secret"
[account.smtp]
host = "127.0.0.1"
port = 1587
encryption = "start-tls"
password-env = "MINISYNC_TEST_PW"

[[peers]]
address = "bob@example.test"

[[documents]]
name = "todo"
peers = ["bob@example.test"]
send-delay = "500ms"

[[documents]]
name = "notes"
transport = "folder"
folder = "shared"
"#;

    #[test]
    fn reads_a_good_config() {
        let c = Config::parse(GOOD, Path::new("/etc/x/agent.toml")).unwrap();
        assert_eq!(c.documents[0].send_delay, Duration::from_millis(500));
        assert_eq!(c.documents[0].resend_interval, Duration::from_secs(900));
        let imap = c.account.as_ref().unwrap();
        assert_eq!(imap.imap.mailbox, "INBOX");
        assert_eq!(imap.imap.processed_folder, "Minisync");
        assert_eq!(
            c.resolve(c.documents[1].folder.as_ref().unwrap()),
            PathBuf::from("/etc/x/shared")
        );
        assert_eq!(imap.imap.server().password("imap").unwrap(), "secret");
    }

    #[test]
    fn unknown_keys_name_the_line_and_the_nearest_key() {
        let bad = GOOD.replace("send-delay = ", "send-dealy = ");
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.toml:21:"), "{e}");
        assert!(e.contains("did you mean `send-delay`"), "{e}");
        let bad = GOOD.replace("encryption = \"none\"", "encryption = \"ssl\"");
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.toml:7:"), "{e}");
        let bad = GOOD.replace("port = 1143", "prot = 1143");
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `port`"), "{e}");
    }

    #[test]
    fn inconsistent_configs_say_what_to_change() {
        let bad = GOOD.replace(
            "peers = [\"bob@example.test\"]",
            "peers = [\"carol@example.test\"]",
        );
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not in [[peers]]"), "{e}");
        let bad = GOOD.replace("folder = \"shared\"", "");
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("set `folder"), "{e}");
        let bad = GOOD.replace("send-delay = \"500ms\"", "send-delay = \"soon\"");
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a duration"), "{e}");
        for (value, want) in [
            ("-5", "-5 is negative"),
            ("\"-5s\"", "\"-5s\" is negative"),
            ("true", "a duration (write e.g."),
        ] {
            let bad = GOOD.replace("send-delay = \"500ms\"", &format!("send-delay = {value}"));
            let e = Config::parse(&bad, Path::new("a.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("a.toml:"), "{value}: {e}");
        }
        let ok = GOOD.replace("send-delay = \"500ms\"", "send-delay = 3");
        let c = Config::parse(&ok, Path::new("a.toml")).unwrap();
        assert_eq!(c.documents[0].send_delay, Duration::from_secs(3));
    }

    #[test]
    fn idle_check_is_automatic_only_for_a_server_on_this_machine() {
        let imap = |extra: &str, host: &str| {
            let text = GOOD.replace(
                "host = \"127.0.0.1\"\nport = 1143",
                &format!("host = \"{host}\"\nport = 1143{extra}"),
            );
            Config::parse(&text, Path::new("a.toml"))
                .map(|c| c.account.unwrap().imap.idle_check_interval())
                .map_err(|e| e.to_string())
        };
        let auto = Some(IdleCheck::AUTO_INTERVAL);
        assert_eq!(imap("", "127.0.0.1"), Ok(auto));
        assert_eq!(imap("", "localhost"), Ok(auto));
        assert_eq!(imap("", "::1"), Ok(auto));
        assert_eq!(imap("", "imap.example.com"), Ok(None));
        assert_eq!(imap("", "192.168.1.10"), Ok(None));
        assert_eq!(imap("\nidle-check = \"off\"", "127.0.0.1"), Ok(None));
        assert_eq!(
            imap("\nidle-check = \"250ms\"", "imap.example.com"),
            Ok(Some(Duration::from_millis(250)))
        );
        let e = imap("\nidle-check = \"1ms\"", "localhost").unwrap_err();
        assert!(
            e.contains("a.toml:7:") && e.contains("keep the connection busy"),
            "{e}"
        );
        let e = imap("\nidle-check = \"often\"", "localhost").unwrap_err();
        assert!(e.contains("write \"auto\", \"off\""), "{e}");
    }

    #[test]
    fn max_mail_size_takes_sizes_and_refuses_absurd_ones_naming_the_line() {
        let with = |line: &str| {
            let text = GOOD.replace("[account.imap]", &format!("{line}\n[account.imap]"));
            Config::parse(&text, Path::new("a.toml"))
                .map(|c| c.account.unwrap().max_mail_size)
                .map_err(|e| e.to_string())
        };
        assert_eq!(with(""), Ok(10_000_000));
        assert_eq!(with("max-mail-size = \"100kB\""), Ok(100_000));
        assert_eq!(with("max-mail-size = \"2 MiB\""), Ok(2 * 1024 * 1024));
        assert_eq!(with("max-mail-size = \"1.5MB\""), Ok(1_500_000));
        assert_eq!(with("max-mail-size = 50000"), Ok(50_000));
        let line = GOOD
            .lines()
            .position(|l| l == "[account.imap]")
            .map(|i| i + 1)
            .unwrap();
        for bad in [
            "0", "\"0MB\"", "\"2KB\"", "-5", "\"5TB\"", "\"lots\"", "\"2GB\"",
        ] {
            let e = with(&format!("max-mail-size = {bad}")).unwrap_err();
            assert!(
                e.contains(&format!("a.toml:{line}:")) && e.contains("max-mail-size"),
                "{bad}: {e}"
            );
        }
        let e = with("max-mail-size = \"2KB\"").unwrap_err();
        assert!(e.contains("at least 16000 bytes"), "{e}");
        let e = with("max-mail-size = \"lots\"").unwrap_err();
        assert!(e.contains("not a size") && e.contains("\"10MB\""), "{e}");
        assert_eq!(parse_size("10MB"), Some(10_000_000));
        assert_eq!(parse_size("7"), Some(7));
        assert_eq!(parse_size("MB"), None);
        assert_eq!(parse_size("1e9"), None);
    }

    #[test]
    fn keep_processed_takes_a_duration_or_forever_and_folders_must_differ() {
        let with = |line: &str| {
            let text = GOOD.replace("port = 1143", &format!("port = 1143\n{line}"));
            Config::parse(&text, Path::new("a.toml"))
                .map(|c| c.account.unwrap().imap.keep_processed)
                .map_err(|e| e.to_string())
        };
        assert_eq!(with(""), Ok(Some(Duration::from_secs(14 * 24 * 3600))));
        assert_eq!(
            with("keep-processed = \"12h\""),
            Ok(Some(Duration::from_secs(12 * 3600)))
        );
        assert_eq!(with("keep-processed = \"forever\""), Ok(None));
        let e = with("keep-processed = \"a while\"").unwrap_err();
        assert!(e.contains("a.toml:7:") && e.contains("\"forever\""), "{e}");
        let e = with("processed-folder = \"inbox\"").unwrap_err();
        assert!(
            e.contains("processed-folder \"inbox\" is the watched mailbox"),
            "{e}"
        );
    }

    #[test]
    fn a_bound_file_is_absolute_under_home_or_beside_the_config() {
        let with = |file: &str| {
            let text = GOOD.replace(
                "folder = \"shared\"",
                &format!("folder = \"shared\"\nfile = \"{file}\""),
            );
            let c = Config::parse(&text, Path::new("/etc/x/agent.toml")).unwrap();
            (c.bound_file(&c.documents[0]), c.bound_file(&c.documents[1]))
        };
        assert_eq!(
            with("notes.json"),
            (None, Some(PathBuf::from("/etc/x/notes.json")))
        );
        assert_eq!(with("/srv/n.json").1, Some(PathBuf::from("/srv/n.json")));
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(with("~/n.json").1, Some(PathBuf::from(home).join("n.json")));
        }
        let bad = GOOD.replace(
            "folder = \"shared\"",
            "folder = \"shared\"\nfiel = \"n.json\"",
        );
        let e = Config::parse(&bad, Path::new("a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `file`"), "{e}");
        // Two documents on one file (`/etc/x/n.json` both times).
        let twice = GOOD
            .replace("send-delay = \"500ms\"", "file = \"n.json\"")
            .replace(
                "folder = \"shared\"",
                "folder = \"shared\"\nfile = \"/etc/x/n.json\"",
            );
        let e = Config::parse(&twice, Path::new("/etc/x/a.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bound to another document"), "{e}");
    }

    #[test]
    fn passwords_from_commands_and_the_environment() {
        let mut s = Config::parse(GOOD, Path::new("a"))
            .unwrap()
            .account
            .unwrap()
            .imap
            .server();
        s.password = None;
        s.password_cmd = Some("echo from-cmd; echo second".into());
        assert_eq!(s.password("imap").unwrap(), "from-cmd");
        s.password_cmd = Some("exit 3".into());
        assert!(
            s.password("imap")
                .unwrap_err()
                .to_string()
                .contains("exited with code 3 and printed no message")
        );
        s.password_cmd = None;
        s.password_env = Some("MINISYNC_SURELY_UNSET_VAR".into());
        assert!(
            s.password("imap")
                .unwrap_err()
                .to_string()
                .contains("not set")
        );
    }
}
