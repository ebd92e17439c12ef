//! What the benchmarks over the real mail stack share (`mail_bench`, `scale_bench`): the stack's
//! settings, agents' configurations and processes, waiting, percentiles.

#![allow(dead_code)] // each benchmark uses its own part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use minisync::config::Config;
use minisync::store::Store;

/// The mail stack (its `env` file's settings), the agent binary, and a home for the nodes.
pub struct Bench {
    pub env: HashMap<String, String>,
    pub agent: PathBuf,
    pub home: tempfile::TempDir,
}

/// One agent: its configuration file and its address.
pub struct Node {
    pub config: PathBuf,
    pub address: String,
}

impl Bench {
    /// Reads the stack's `env` file (`KEY=value` lines) at `stack`.
    pub fn new(stack: &str, agent: PathBuf) -> anyhow::Result<Bench> {
        let env = std::fs::read_to_string(stack)
            .with_context(|| format!("reading {stack}"))?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Ok(Bench {
            env,
            agent,
            home: tempfile::tempdir()?,
        })
    }

    pub fn var(&self, k: &str) -> anyhow::Result<&str> {
        self.env
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("{k} missing from the stack env"))
    }

    /// A fresh address on the stack (any local part logs in with the password "secret").
    pub fn address(&self, name: &str) -> String {
        format!("{name}-{:08x}@example.test", rand::random::<u32>())
    }

    pub fn maildir(&self, address: &str) -> anyhow::Result<PathBuf> {
        Ok(Path::new(self.var("MAILSTACK_DIR")?)
            .join("mail")
            .join(address.split('@').next().unwrap_or("")))
    }

    /// The `[account]` tables of `address` on the stack, with `[account.imap] idle-check`.
    pub fn account_toml(&self, address: &str, idle_check: &str) -> anyhow::Result<String> {
        let (imap, smtp) = (self.var("IMAP_PORT")?, self.var("SMTP_PORT")?);
        Ok(format!(
            "[account]\naddress = \"{address}\"\n[account.imap]\nhost = \"127.0.0.1\"\nport = {imap}\nencryption = \"none\"\npassword = \"secret\"\nidle-check = \"{idle_check}\"\n\
             [account.smtp]\nhost = \"127.0.0.1\"\nport = {smtp}\nencryption = \"none\"\npassword = \"secret\"\n\
             [agent]\nstate-dir = \"state\"\n"
        ))
    }

    /// Writes `toml` as the configuration of a node with `address`, in a directory of its own.
    pub fn node_from(&self, address: &str, toml: &str) -> anyhow::Result<Node> {
        let dir = self.home.path().join(address);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml)?;
        Ok(Node {
            config,
            address: address.to_string(),
        })
    }

    pub fn cli(&self, node: &Node, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.agent)
            .arg("--config")
            .arg(&node.config)
            .args(args)
            .env("MINISYNC_LOG", "warn")
            .output()?;
        if !out.status.success() {
            bail!("agent {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `agent run` for `node`, its output discarded.
    pub fn spawn(&self, node: &Node) -> anyhow::Result<Child> {
        Ok(Command::new(&self.agent)
            .arg("--config")
            .arg(&node.config)
            .arg("run")
            .env("MINISYNC_LOG", "warn")
            .stdout(Stdio::null())
            // Kept beside the node's config, for a benchmark that fails to say what happened.
            .stderr(std::fs::File::create(
                node.config.with_file_name("agent.log"),
            )?)
            .spawn()?)
    }
}

pub fn store_of(node: &Node) -> anyhow::Result<Store> {
    Ok(Store::open(&Config::load(&node.config)?.database_path())?)
}

pub fn wait_for(timeout: Duration, what: &str, f: impl FnMut() -> bool) -> anyhow::Result<()> {
    wait_every(Duration::from_millis(1), timeout, what, f)
}

/// Calls `f` every `every` until it is true, for at most `timeout`.
pub fn wait_every(
    every: Duration,
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Ok(());
        }
        std::thread::sleep(every);
    }
    bail!("timed out waiting for {what}")
}

/// The `p` quantile (0–1) of `sorted`, to a tenth.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    (sorted[i.min(sorted.len() - 1)] * 10.0).round() / 10.0
}

/// Child processes killed when dropped.
pub struct Kill(pub Vec<Child>);
impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
