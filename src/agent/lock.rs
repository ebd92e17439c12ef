//! One sending agent per state directory: `run`, `sync` and `send` hold an exclusive OS lock
//! (`flock` on Unix) on `agent.lock` in the state directory for as long as they run, with their
//! PID written inside, so a second one stops at once and says who holds it. Two agents on one state
//! would each send the same changes. Commands that only read or edit the database (`status`,
//! `doc …`, `check`) take no lock: SQLite keeps them consistent beside a running agent. The lock
//! is released by the OS when the process ends, however it ends, so a stale file never blocks.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::agent::{AgentError, Result};
use crate::config::{Config, create_private_dir, open_private_file};

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "agent.lock";

/// Held while this process may send; dropping it releases the lock.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The process holding the state directory's lock, if one does (its PID as it wrote it; 0 when
/// it wrote none yet). Takes the lock for an instant to find out when nobody holds it.
pub fn lock_holder(cfg: &Config) -> Option<u32> {
    let mut file = File::open(cfg.state_dir().join(LOCK_FILE)).ok()?;
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Some(text.trim().parse().unwrap_or(0))
        }
        Err(TryLockError::Error(_)) => None,
    }
}

/// Takes the state directory's lock, or fails at once naming the process that holds it.
///
/// # Errors
///
/// Another process holds the lock, or the state directory or lock file cannot be created.
pub fn lock_state(cfg: &Config) -> Result<StateLock> {
    let dir = cfg.state_dir();
    create_private_dir(&dir).map_err(|e| {
        AgentError::Other(format!(
            "cannot create the state directory {}: {e}",
            dir.display()
        ))
    })?;
    let path = dir.join(LOCK_FILE);
    let cannot = |e: std::io::Error| {
        AgentError::Other(format!("cannot use the lock file {}: {e}", path.display()))
    };
    let mut file = open_private_file(&path, false).map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = match text.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            };
            return Err(AgentError::Other(format!(
                "another agent is already running on the state in {} ({holder} holds {}); it \
                 sends for both: stop it first (`kill {}`, or `systemctl --user stop \
                 minisync-agent`), or use `agent status` and `agent doc`, which work beside it",
                dir.display(),
                path.display(),
                text.trim(),
            )));
        }
        Err(TryLockError::Error(e)) => return Err(cannot(e)),
    }
    file.set_len(0).map_err(cannot)?;
    file.seek(SeekFrom::Start(0)).map_err(cannot)?;
    writeln!(file, "{}", std::process::id()).map_err(cannot)?;
    file.flush().map_err(cannot)?;
    Ok(StateLock { _file: file, path })
}
