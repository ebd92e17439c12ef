//! `agent`: the command line. Parses arguments, calls into the library, prints. Nothing else lives
//! here.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use minisync::agent::{Agent, AgentError, DocCommand, doc_command, open_store, status};
use minisync::config::{Config, ConfigError, EX_CONFIG, default_config_path};
use minisync::transport::mail::Finding;

/// Keeps JSON documents in step with your peers over e-mail or a shared folder.
#[derive(Parser)]
#[command(name = "agent", version, about)]
struct Cli {
    /// Config file (default: $XDG_CONFIG_HOME/minisync/agent.toml).
    #[arg(long, global = true, env = "MINISYNC_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented config and create the state database.
    Init {
        /// Overwrite an existing config file.
        #[arg(long)]
        force: bool,
    },
    /// Run as a service: receive, merge, acknowledge, send and resend until SIGTERM.
    Run,
    /// One pass (fetch, merge, acknowledge, send) and exit; non-zero when anything failed.
    Sync,
    /// Send a peer its pending changes now.
    Send {
        /// The peer's e-mail address.
        #[arg(long)]
        to: String,
        /// Only this document.
        #[arg(long)]
        doc: Option<String>,
    },
    /// Per document and peer: received, acknowledged, pending, last mail, last error.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read and edit documents.
    Doc {
        #[command(subcommand)]
        command: DocCmd,
    },
    /// Log in to IMAP and SMTP and report what works.
    Check,
    /// Mail the agent refused to merge: list it, look at it, merge it after all, or let it go.
    Quarantine {
        #[command(subcommand)]
        command: QuarantineCmd,
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

#[derive(Subcommand)]
enum DocCmd {
    /// List the configured documents.
    List,
    /// Print the value at a path (e.g. `items[0].done`; empty for the whole document).
    Get {
        name: String,
        #[arg(default_value = "")]
        path: String,
    },
    /// Set the value at a path (JSON, or else taken as a string).
    Set {
        name: String,
        path: String,
        value: String,
    },
    /// Remove the value at a path.
    Rm { name: String, path: String },
    /// Create (or replace the content of) a document from a JSON file (`-` for stdin).
    Import { name: String, file: PathBuf },
    /// Print a document as JSON (or write it to a file).
    Export {
        name: String,
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Take a peer's document in place of ours when you each created one of the same name (the
    /// previous content is kept in a file).
    Adopt {
        name: String,
        /// The peer whose document to take.
        #[arg(long)]
        from: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MINISYNC_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            let config_error = e.chain().any(|c| {
                c.downcast_ref::<ConfigError>().is_some()
                    || matches!(c.downcast_ref::<AgentError>(), Some(AgentError::Config(_)))
            });
            eprintln!("error: {e:#}");
            if config_error {
                ExitCode::from(EX_CONFIG as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
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

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let path = cli.config.clone().unwrap_or_else(default_config_path);
    match cli.command {
        Command::Init { force } => {
            if path.exists() && !force {
                anyhow::bail!("{} exists; use --force to overwrite it", path.display());
            }
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, include_str!("../config/agent.toml"))
                .with_context(|| format!("writing {}", path.display()))?;
            let cfg = load(&path)?;
            open_store(&cfg)?;
            println!(
                "wrote {}\nstate in {}",
                path.display(),
                cfg.database_path().display()
            );
            println!(
                "edit the [account], [[peers]] and [[documents]] tables, then run `agent check`"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let cfg = load(&path)?;
            runtime()?.block_on(async {
                let mut agent = Agent::new(cfg)?;
                tracing::info!("agent running");
                agent.run(shutdown_signal()).await;
                Ok::<_, AgentError>(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync => {
            let cfg = load(&path)?;
            let report = runtime()?.block_on(async {
                let mut agent = Agent::new(cfg)?;
                Ok::<_, AgentError>(agent.sync_once().await)
            })?;
            println!(
                "merged {}, duplicates {}, quarantined {}, not yet readable {}, sent {}, send failures {}",
                report.merged,
                report.duplicates,
                report.quarantined,
                report.deferred,
                report.sent,
                report.send_failures
            );
            for h in &report.held_back {
                println!("{h}");
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
            Ok(if report.errors.is_empty() && report.send_failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Send { to, doc } => {
            let cfg = load(&path)?;
            let report = runtime()?.block_on(async {
                let mut agent = Agent::new(cfg)?;
                agent.send_now(&to, doc.as_deref()).await
            })?;
            println!(
                "sent {} message(s) to {to}, {} failed",
                report.sent, report.send_failures
            );
            Ok(if report.send_failures == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Quarantine { command } => quarantine_command(load(&path)?, command),
        Command::Status { json } => {
            let cfg = load(&path)?;
            let mut store = open_store(&cfg)?;
            let s = status(&cfg, &mut store)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{s}");
            }
            Ok(if s.failing {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Doc { command } => {
            let cfg = load(&path)?;
            let mut store = open_store(&cfg)?;
            let (cmd, output) = match command {
                DocCmd::List => (DocCommand::List, None),
                DocCmd::Get { name, path } => (DocCommand::Get { name, path }, None),
                DocCmd::Set { name, path, value } => (DocCommand::Set { name, path, value }, None),
                DocCmd::Rm { name, path } => (DocCommand::Rm { name, path }, None),
                DocCmd::Import { name, file } => {
                    let json = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file)
                            .with_context(|| format!("reading {}", file.display()))?
                    };
                    (DocCommand::Import { name, json }, None)
                }
                DocCmd::Export { name, output } => (DocCommand::Export { name }, output),
                DocCmd::Adopt { name, from } => (DocCommand::Adopt { name, from }, None),
            };
            let text = doc_command(&cfg, &mut store, cmd)?;
            match output {
                Some(p) => {
                    std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?
                }
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check => {
            let cfg = load(&path)?;
            let account = cfg.account.clone().ok_or_else(|| {
                anyhow::anyhow!("no [account] in {}: nothing to check", path.display())
            })?;
            // Each step is said as it starts, so a server that never answers shows where.
            let progress = |step: &str| eprintln!("...   {step}");
            let results =
                runtime()?.block_on(minisync::transport::mail::check(&account, &progress));
            let mut ok = true;
            for (what, finding) in results {
                match finding {
                    Finding::Ok(detail) => println!("ok    {what}: {detail}"),
                    Finding::Instead(detail) => println!("note  {what}: {detail}"),
                    Finding::Fail(e) => {
                        ok = false;
                        println!("FAIL  {what}: {e}");
                    }
                }
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
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
