//! `agent`: the command line. Parses arguments, calls into the library, prints. Nothing else lives
//! here.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod editor;

use anyhow::Context;
use clap::{ArgAction, CommandFactory, Parser, Subcommand};
use minisync::agent::{
    Agent, AgentError, DocCommand, PassReport, PeerCommand, device_add, device_join, device_remove,
    device_status, fmt_devices, lock_state, open_store, peer_command, run_doc_command, status,
};
use minisync::config::{Config, ConfigError, EX_CONFIG, default_config_path, write_private_file};
use minisync::transport::mail::Finding;

/// Keeps JSON documents in step with your peers over e-mail or a shared folder.
#[derive(Parser)]
#[command(
    name = "agent",
    version,
    about,
    after_help = "Examples:\n  agent init\n  agent doc set todo 'items[0]' '{\"what\": \"milk\"}'\n  \
                  agent sync\n  agent status --json"
)]
struct Cli {
    /// Config file (default: $XDG_CONFIG_HOME/minisync/agent.toml), e.g. `--config ~/work.toml`.
    #[arg(long, global = true, env = "MINISYNC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// More log output: `-v` debug, `-vv` trace (overrides MINISYNC_LOG).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Less log output: `-q` warnings and errors only, `-qq` errors only (overrides MINISYNC_LOG).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented config and create the state database, e.g. `agent init`.
    Init {
        /// Replace an existing config file (a backup of it is kept beside it), e.g.
        /// `agent init --force`.
        #[arg(long)]
        force: bool,
    },
    /// Run as a service: receive, merge, acknowledge, send and resend until SIGTERM.
    Run,
    /// One pass (fetch, merge, acknowledge, send) and exit, e.g. from cron: `agent sync`.
    Sync {
        /// Print the pass report as one JSON object, e.g. `agent sync --json`.
        #[arg(long)]
        json: bool,
    },
    /// Send a peer its pending changes now, e.g. `agent send --to bob@example.org`.
    Send {
        /// The peer's e-mail address, e.g. `--to bob@example.org`.
        #[arg(long, value_name = "ADDRESS")]
        to: String,
        /// Only this document, e.g. `--doc todo`.
        #[arg(long, value_name = "NAME")]
        doc: Option<String>,
    },
    /// Per document and peer: received, acknowledged, pending, last mail, last error.
    Status {
        /// Print JSON, e.g. `agent status --json`.
        #[arg(long)]
        json: bool,
    },
    /// Read and edit documents, e.g. `agent doc get todo items`.
    Doc {
        #[command(subcommand)]
        command: DocCmd,
    },
    /// Log in to IMAP and SMTP and report what works, e.g. `agent check`.
    Check {
        /// Print JSON, e.g. `agent check --json`.
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script, e.g. `agent completions bash > ~/.local/share/bash-completion/completions/agent`.
    Completions {
        /// The shell, e.g. `bash`, `zsh`, `fish`, `elvish` or `powershell`.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `agent man > ~/.local/share/man/man1/agent.1`.
    Man,
    /// Mail the agent refused to merge: list it, look at it, merge it after all, or let it go.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCmd,
    },
    /// Peers' OpenPGP keys: invite, add an invitation, compare, verify, accept a changed key.
    Peer {
        #[command(subcommand)]
        command: PeerCmd,
    },
    /// Your other devices on the same mail account: add one, join, list, remove a lost one.
    Device {
        #[command(subcommand)]
        command: DeviceCmd,
    },
    /// Changes objects as files (mail carries them in a compact binary form): print one as JSON.
    Changes {
        #[command(subcommand)]
        command: ChangesCmd,
    },
}

#[derive(Subcommand)]
enum ChangesCmd {
    /// Print a changes object (compact form or JSON, e.g. a mail's decrypted
    /// `minisync-changes.bin`) as JSON and say whether it is valid, e.g.
    /// `agent changes show minisync-changes.bin`; `-` reads standard input.
    Show { file: PathBuf },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// On a device that has the account: mail the account key to yourself, encrypted with a
    /// one-time setup code that this prints (type it on the new device), e.g. `agent device add`.
    Add {
        /// Print `{"code": "..."}`, e.g. `agent device add --json`.
        #[arg(long)]
        json: bool,
    },
    /// On the new device (after `agent init` and the same `[account]` and documents in its
    /// config): take the account key from the setup message, e.g.
    /// `agent device join --code 1234-5678-…`; asks for the code when it is not given.
    Join {
        /// The setup code `agent device add` printed (spaces and dashes are ignored).
        #[arg(long, value_name = "CODE")]
        code: Option<String>,
    },
    /// The account's devices and each peer's, with what each acknowledged and when it was last
    /// heard from, e.g. `agent device list`.
    List {
        /// Print JSON, e.g. `agent device list --json`.
        #[arg(long)]
        json: bool,
    },
    /// Retire one of your devices (a lost phone): nobody waits for it any more and its mail is
    /// refused, e.g. `agent device remove k3j4h5g6f7d8s9a0`. It still holds the account key.
    Remove {
        /// The device id, from `agent device list`.
        id: String,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Print this account's invitation line (address and key fingerprint) to pass to a peer out
    /// of band, e.g. `agent peer invite`.
    Invite,
    /// Pin a peer's key from its invitation line in the config, e.g.
    /// `agent peer add 'minisync-peer bob@example.org 0123 …'`.
    Add {
        /// The whole line `agent peer invite` printed on the peer's side.
        line: String,
    },
    /// Both sides' fingerprints, to compare over the phone, e.g. `agent peer show bob@example.org`.
    Show { address: String },
    /// Mark a peer's key verified after comparing, e.g. `agent peer verify bob@example.org`.
    Verify { address: String },
    /// Take a peer's changed key (after making sure it is theirs), e.g.
    /// `agent peer accept-key bob@example.org`.
    AcceptKey { address: String },
}

#[derive(Subcommand)]
enum DocCmd {
    /// List the configured documents, e.g. `agent doc list`.
    List {
        /// Print JSON, e.g. `agent doc list --json`.
        #[arg(long)]
        json: bool,
    },
    /// Edit a string (as text) or a subtree (as JSON) in $VISUAL or $EDITOR; what changed is
    /// applied as edits that merge, e.g. `agent doc edit notes body`.
    Edit {
        /// The document, e.g. `notes`.
        name: String,
        /// The path, e.g. `body`; empty for the whole document.
        #[arg(default_value = "")]
        path: String,
    },
    /// Print the value at a path, e.g. `agent doc get todo 'items[0].done'`.
    Get {
        /// The document, e.g. `todo`.
        name: String,
        /// The path, e.g. `items[0].done` or `["key.with.dots"]`; empty for the whole document.
        #[arg(default_value = "")]
        path: String,
        /// Print JSON with the name, path and version, e.g. `agent doc get todo items --json`.
        #[arg(long)]
        json: bool,
    },
    /// Set the value at a path, e.g. `agent doc set todo 'items[0]' '{"what": "milk"}'`.
    Set {
        /// The document, e.g. `todo`.
        name: String,
        /// The path, e.g. `items[0].done` or `title`.
        path: String,
        /// The value as JSON, e.g. `true`, `42`, `'"milk"'`, `'{"what": "milk"}'`; with --string
        /// any text, e.g. `milk`.
        value: String,
        /// Take the value as text, not JSON, e.g. `agent doc set --string todo title 'Groceries'`.
        #[arg(long)]
        string: bool,
    },
    /// Remove the value at a path, e.g. `agent doc rm todo 'items[2]'`.
    Rm {
        /// The document, e.g. `todo`.
        name: String,
        /// The path, e.g. `items[2]` or `owner`.
        path: String,
    },
    /// Insert a value into an array at an index, e.g. `agent doc insert todo items 0 '{"what": "tea"}'`.
    Insert {
        /// The document, e.g. `todo`.
        name: String,
        /// The array's path, e.g. `items`.
        path: String,
        /// Where the value goes (0 is the front; the length appends), e.g. `0`.
        index: usize,
        /// The value as JSON, e.g. `'{"what": "tea"}'`; with --string any text.
        value: String,
        /// Take the value as text, not JSON, e.g. `agent doc insert --string todo tags 0 urgent`.
        #[arg(long)]
        string: bool,
    },
    /// Append a value to an array, e.g. `agent doc push todo items '{"what": "bread"}'`.
    Push {
        /// The document, e.g. `todo`.
        name: String,
        /// The array's path, e.g. `items`.
        path: String,
        /// The value as JSON, e.g. `'{"what": "bread"}'`; with --string any text.
        value: String,
        /// Take the value as text, not JSON, e.g. `agent doc push --string todo tags later`.
        #[arg(long)]
        string: bool,
    },
    /// Move an array element to another index, e.g. `agent doc move todo items 3 0`.
    Move {
        /// The document, e.g. `todo`.
        name: String,
        /// The array's path, e.g. `items`.
        path: String,
        /// The element's index now, e.g. `3`.
        from: usize,
        /// Its index afterwards, e.g. `0`.
        to: usize,
    },
    /// Create (or replace the content of) a document from a JSON file, e.g.
    /// `agent doc import todo todo.json`.
    Import {
        /// The document, e.g. `todo`.
        name: String,
        /// The JSON file, e.g. `todo.json`, or `-` for stdin.
        file: PathBuf,
    },
    /// Print a document as JSON (or write it to a file), e.g. `agent doc export todo`.
    Export {
        /// The document, e.g. `todo`.
        name: String,
        /// Write it to this file instead, e.g. `--output todo.json`.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Take a peer's document in place of ours when you each created one of the same name (the
    /// previous content is kept in a file), e.g. `agent doc adopt todo --from bob@example.org`.
    Adopt {
        /// The document, e.g. `todo`.
        name: String,
        /// The peer whose document to take, e.g. `--from bob@example.org`.
        #[arg(long, value_name = "ADDRESS")]
        from: String,
    },
    /// Who changed a document, newest first: when, who, which paths, e.g. `agent doc log todo`.
    Log {
        /// The document, e.g. `todo`.
        name: String,
        /// How many changes to show, e.g. `-n 50`.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        /// Print JSON, e.g. `agent doc log todo --json`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QuarantineCmd {
    /// Every quarantined message: its number, when, from whom, for which document, and why.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One message: why it was refused and the changes it carries (e.g. `agent quarantine show 3`).
    Show { id: i64 },
    /// Merge a message after all, e.g. mail from a peer's reinstalled agent (its new client id is
    /// then pinned) or changes refused for a clock that is now right (`agent quarantine release 3`).
    Release { id: i64 },
    /// Forget a message (the mail stays in the quarantine folder): `agent quarantine drop 3`.
    Drop { id: i64 },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            let config_error = e.chain().any(|c| {
                c.downcast_ref::<ConfigError>().is_some()
                    || matches!(c.downcast_ref::<AgentError>(), Some(AgentError::Config(_)))
            });
            eprintln!("error: {}", error_text(&e));
            let missing = e.chain().any(|c| {
                matches!(c.downcast_ref::<ConfigError>(),
                    Some(ConfigError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound)
            });
            if missing {
                eprintln!(
                    "hint: there is no config yet: `agent init` writes a commented one there \
                     (or give another with --config)"
                );
                ExitCode::from(EX_CONFIG as u8)
            } else if config_error {
                eprintln!(
                    "hint: fix the config file named above; `agent init` writes a commented \
                     example, and the README's \"Configuration\" lists every key"
                );
                ExitCode::from(EX_CONFIG as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes as one line, each said once: a cause whose words are already in what
/// was printed (an error that shows its source in its own message) is left out.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A message with a part repeated right after itself (`network error: X: X`, an error that
/// shows its source and then the source again) said once.
fn said_once(text: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in text.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    parts.join(": ")
}

/// Logs go to stderr; `-v`/`-q` set the level, else `MINISYNC_LOG` (any `tracing` filter), else
/// `info`.
fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => None,
        (1, _) => Some("debug"),
        (v, _) if v >= 2 => Some("trace"),
        (_, 1) => Some("warn"),
        _ => Some("error"),
    };
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_env("MINISYNC_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `agent quarantine ...`.
fn quarantine_command(cfg: Config, command: QuarantineCmd) -> anyhow::Result<ExitCode> {
    match command {
        QuarantineCmd::List { json } => {
            let list = open_store(&cfg)?.quarantined(false)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("nothing quarantined");
            }
            for q in list.iter().filter(|_| !json) {
                println!("#{} from {} ({}): {}", q.id, q.sender, q.doc, q.reason);
            }
        }
        QuarantineCmd::Show { id } => {
            let q = open_store(&cfg)?.quarantined_one(id)?.ok_or_else(|| {
                anyhow::anyhow!("no quarantined message #{id} (see `agent quarantine list`)")
            })?;
            println!("message #{id} for document {:?}", q.doc);
            println!("from:       {}", q.sender);
            println!(
                "message-id: {}",
                q.message_id.as_deref().unwrap_or("(none)")
            );
            println!("refused:    {}", q.reason);
            for p in &q.payloads {
                let pretty = serde_json::from_str::<serde_json::Value>(p)
                    .and_then(|v| serde_json::to_string_pretty(&v))
                    .unwrap_or_else(|_| p.clone());
                println!("{pretty}");
            }
        }
        QuarantineCmd::Release { id } => {
            let text = runtime()?.block_on(async {
                let mut agent = Agent::new(cfg)?;
                agent.release(id)
            })?;
            println!("{text}");
        }
        QuarantineCmd::Drop { id } => {
            let store = open_store(&cfg)?;
            if !minisync::store::Store::unquarantine(store.conn(), id)? {
                anyhow::bail!("no quarantined message #{id} (see `agent quarantine list`)");
            }
            println!("dropped message #{id} (the mail itself stays in the quarantine folder)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `agent device …`.
fn device_command(cfg: Config, command: DeviceCmd) -> anyhow::Result<ExitCode> {
    match command {
        DeviceCmd::Add { json } => {
            let code = runtime()?.block_on(device_add(&cfg))?;
            if json {
                println!("{}", serde_json::json!({ "code": code }));
            } else {
                println!(
                    "Setup code (type it on the new device with `agent device join`; it is not \
                     shown again):\n\n    {code}\n\nThe account key went to {} encrypted with it.",
                    cfg.address()
                );
            }
        }
        DeviceCmd::Join { code } => {
            let code = match code {
                Some(c) => c,
                None => ask_code()?,
            };
            let _lock = lock_state(&cfg)?;
            println!("{}", runtime()?.block_on(device_join(&cfg, &code))?);
        }
        DeviceCmd::List { json } => {
            let mut store = open_store(&cfg)?;
            let devices = device_status(&cfg, &mut store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else {
                let mut text = String::new();
                fmt_devices(&devices, &mut text)?;
                print!("{text}");
            }
        }
        DeviceCmd::Remove { id } => println!("{}", device_remove(&cfg, &id)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the setup code from the terminal (`agent device join` without `--code`).
fn ask_code() -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("no setup code: give it with `--code CODE` (there is no terminal to ask on)");
    }
    eprint!("Setup code (from `agent device add`): ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.clone().unwrap_or_else(default_config_path);
    match cli.command {
        Command::Init { force } => init(&path, force),
        Command::Run => run(&path),
        Command::Sync { json } => sync(&path, json),
        Command::Send { to, doc } => send(&path, &to, doc.as_deref()),
        Command::Status { json } => {
            let cfg = load(&path)?;
            let mut store = open_store(&cfg)?;
            let s = status(&cfg, &mut store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
            Ok(exit(!s.failing, 2))
        }
        Command::Doc { command } => doc(&path, command),
        Command::Check { json } => check(&path, json),
        Command::Quarantine { command } => quarantine_command(load(&path)?, command),
        Command::Peer { command } => {
            let cfg = load(&path)?;
            let mut store = open_store(&cfg)?;
            let cmd = match command {
                PeerCmd::Invite => PeerCommand::Invite,
                PeerCmd::Add { line } => PeerCommand::Add { line },
                PeerCmd::Show { address } => PeerCommand::Show { address },
                PeerCmd::Verify { address } => PeerCommand::Verify { address },
                PeerCmd::AcceptKey { address } => PeerCommand::AcceptKey { address },
            };
            print!("{}", peer_command(&cfg, &mut store, cmd)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Device { command } => device_command(load(&path)?, command),
        Command::Changes {
            command: ChangesCmd::Show { file },
        } => changes_show(&file),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "agent", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `agent changes show FILE`: the JSON of a changes object in either form; exit 1 when it is not
/// a valid one (the JSON is still printed when it can be read, the reason on stderr).
fn changes_show(file: &Path) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    let mut bytes = Vec::new();
    if file == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    let value = if minisync::engine::compact::is_compact(&bytes) {
        minisync::engine::compact::decode(&bytes)?
    } else {
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is neither a changes object in the compact form nor JSON",
                file.display()
            )
        })?
    };
    println!("{}", serde_json::to_string_pretty(&value)?);
    match minisync::engine::Changes::from_value(&value) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("not a valid changes object: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Success, or the given failure code.
fn exit(ok: bool, code: u8) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(code)
    }
}

/// `agent init [--force]`: the config (0600; a replaced one is kept as a backup) and the state.
fn init(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} exists; edit it, or replace it with `agent init --force` (which keeps a backup)",
            path.display()
        );
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the directory {}", dir.display()))?;
    }
    if path.exists() {
        let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now())
            .to_string()
            .replace(':', "");
        let mut backup = path.as_os_str().to_owned();
        backup.push(format!(".bak-{stamp}"));
        let backup = PathBuf::from(backup);
        std::fs::copy(path, &backup).with_context(|| {
            format!(
                "cannot keep a backup of {} in {}",
                path.display(),
                backup.display()
            )
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot make {} private", backup.display()))?;
        }
        println!("kept the previous config as {}", backup.display());
    }
    write_private_file(path, include_str!("../config/agent.toml").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let cfg = load(path)?;
    // The state exists from here on; the account's OpenPGP key is made at first use, for the
    // address you put in the config (not this template's placeholder).
    open_store(&cfg)?;
    println!(
        "wrote {}\nstate in {}",
        path.display(),
        cfg.database_path().display()
    );
    println!(
        "edit the [account], [[peers]] and [[documents]] tables, then run `agent check` (your \
         OpenPGP key is made then, for your address; `agent peer invite` shows it)"
    );
    Ok(ExitCode::SUCCESS)
}

/// `agent run`: the service, holding the state directory's lock.
fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let _lock = lock_state(&cfg)?;
    runtime()?.block_on(async {
        let mut agent = Agent::new(cfg)?;
        tracing::info!("agent running");
        agent.run(shutdown_signal()).await;
        Ok::<_, AgentError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `agent sync [--json]`: one pass, holding the state directory's lock.
fn sync(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let _lock = lock_state(&cfg)?;
    let report: PassReport = runtime()?.block_on(async {
        let mut agent = Agent::new(cfg)?;
        Ok::<_, AgentError>(agent.sync_once().await)
    })?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "merged {}, duplicates {}, quarantined {}, not yet readable {}, sent {}, send failures {}",
            report.merged,
            report.duplicates,
            report.quarantined,
            report.deferred,
            report.sent,
            report.send_failures
        );
        if report.hellos > 0 {
            println!(
                "hellos sent {} (the key exchange with peers new to each other: changes follow once both keys are known)",
                report.hellos
            );
        }
        for h in &report.held_back {
            println!("{h}");
        }
        for f in &report.files_waiting {
            eprintln!("warning: bound file of {f}");
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        if report.send_failures > 0 {
            eprintln!(
                "error: {} send(s) failed (`agent status` shows why)",
                report.send_failures
            );
        }
    }
    Ok(exit(
        report.errors.is_empty() && report.send_failures == 0,
        1,
    ))
}

/// `agent send --to PEER [--doc NAME]`, holding the state directory's lock.
fn send(path: &Path, to: &str, doc: Option<&str>) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let _lock = lock_state(&cfg)?;
    let report = runtime()?.block_on(async {
        let mut agent = Agent::new(cfg)?;
        agent.send_now(to, doc).await
    })?;
    println!(
        "sent {} message(s) to {to}, {} failed",
        report.sent, report.send_failures
    );
    Ok(exit(report.send_failures == 0, 1))
}

/// A value argument as JSON text: as given, or with `--string` the text made a JSON string.
fn json_arg(value: String, string: bool) -> String {
    if string {
        serde_json::Value::String(value).to_string()
    } else {
        value
    }
}

/// `agent doc …`: run by the running agent when it serves commands (it holds the replicas
/// loaded), else here; no lock (SQLite keeps these consistent beside a running agent).
fn doc(path: &Path, command: DocCmd) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let mut store = open_store(&cfg)?;
    if let DocCmd::Edit { name, path } = &command {
        print!("{}", editor::edit(&cfg, &mut store, name, path)?);
        return Ok(ExitCode::SUCCESS);
    }
    let (cmd, output) = doc_command_of(command)?;
    let text = run_doc_command(&cfg, &mut store, cmd)?;
    match output {
        Some(p) => {
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The library's command for a `doc` subcommand, and the file to write its output to.
fn doc_command_of(command: DocCmd) -> anyhow::Result<(DocCommand, Option<PathBuf>)> {
    let mut output = None;
    let cmd = match command {
        DocCmd::List { json } => DocCommand::List { json },
        DocCmd::Get { name, path, json } => DocCommand::Get { name, path, json },
        DocCmd::Edit { name, path } => DocCommand::Get {
            name,
            path,
            json: false,
        },
        DocCmd::Set {
            name,
            path,
            value,
            string,
        } => DocCommand::Set {
            name,
            path,
            value: json_arg(value, string),
        },
        DocCmd::Rm { name, path } => DocCommand::Rm { name, path },
        DocCmd::Insert {
            name,
            path,
            index,
            value,
            string,
        } => DocCommand::Insert {
            name,
            path,
            index,
            value: json_arg(value, string),
        },
        DocCmd::Push {
            name,
            path,
            value,
            string,
        } => DocCommand::Push {
            name,
            path,
            value: json_arg(value, string),
        },
        DocCmd::Move {
            name,
            path,
            from,
            to,
        } => DocCommand::Move {
            name,
            path,
            from,
            to,
        },
        DocCmd::Import { name, file } => DocCommand::Import {
            name,
            json: read_input(&file)?,
        },
        DocCmd::Export { name, output: o } => {
            output = o;
            DocCommand::Export { name }
        }
        DocCmd::Adopt { name, from } => DocCommand::Adopt { name, from },
        DocCmd::Log { name, limit, json } => DocCommand::Log { name, limit, json },
    };
    Ok((cmd, output))
}

/// A file's text, or stdin's for `-`.
fn read_input(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
    }
}

/// `agent check [--json]`: log in to IMAP and SMTP and say what works.
fn check(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let cfg = load(path)?;
    let account = cfg.account.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "no [account] in {}: nothing to check (folder documents need none; mail documents \
             need an [account] table, see `config/agent.toml`)",
            path.display()
        )
    })?;
    // Each step is said as it starts (on stderr), so a server that never answers shows where.
    let progress = |step: &str| eprintln!("...   {step}");
    let results = runtime()?.block_on(minisync::transport::mail::check(&account, &progress));
    let ok = results.iter().all(|(_, f)| !matches!(f, Finding::Fail(_)));
    if json {
        let checks: Vec<serde_json::Value> = results
            .iter()
            .map(|(what, f)| match f {
                Finding::Ok(detail) => {
                    serde_json::json!({"what": what, "ok": true, "detail": detail})
                }
                Finding::Instead(detail) => {
                    serde_json::json!({"what": what, "ok": true, "instead": detail})
                }
                Finding::Fail(e) => {
                    serde_json::json!({"what": what, "ok": false, "error": said_once(e)})
                }
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"ok": ok, "checks": checks}))?
        );
    } else {
        for (what, f) in results {
            match f {
                Finding::Ok(detail) => println!("ok    {what}: {detail}"),
                Finding::Instead(detail) => println!("note  {what}: {detail}"),
                Finding::Fail(e) => println!("FAIL  {what}: {}", said_once(&e)),
            }
        }
    }
    Ok(exit(ok, 1))
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are installed at once, not when the future is
/// first polled (after the first pass): a SIGTERM that came during that pass would otherwise end
/// the process by the signal's default action, without a clean stop.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = ctrl_c => {}
            }
            tracing::info!("shutting down");
            return;
        }
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        assert_eq!(
            said_once("network error: bad UTF-8: bad UTF-8"),
            "network error: bad UTF-8"
        );
        assert_eq!(said_once("a: b: a"), "a: b: a");
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(io).context("cannot read x.toml: no such file");
        assert_eq!(error_text(&e), "cannot read x.toml: no such file");
        let e = anyhow::anyhow!("disk full").context("cannot save");
        assert_eq!(error_text(&e), "cannot save: disk full");
    }
}
