//! `agent doc …` run by the running agent on the replicas it holds loaded.
//!
//! Without this, a command line beside `agent run` loads the whole replica for every command (a
//! 10 MB document: about 0.4 s and 110 MB), and the agent loads it again after the command's edit.
//! With it, the command line hands its command over (`store/requests.rs` has the protocol) and the
//! agent runs it within a pass or less: a one-field `doc set` on that document takes a few
//! milliseconds of the agent's time. The command line runs the command itself whenever the agent
//! cannot: no agent serving, an agent reading another config (or an older version of it), or one
//! that does not take the command within [`TAKE_WITHIN`] (busy, or stopped).

use std::time::{Duration, Instant};

use crate::agent::docs::{DocCommand, doc_command};
use crate::agent::lock::lock_holder;
use crate::agent::{Agent, AgentError, Result};
use crate::config::Config;
use crate::store::{Answer, Store};

/// How long the command line waits for the agent to take its command before it runs it itself.
pub const TAKE_WITHIN: Duration = Duration::from_secs(3);

/// How long the command line waits for a command the agent took (a whole `doc get` of a large
/// document, say) before it gives up.
const ANSWER_WITHIN: Duration = Duration::from_secs(120);

/// Runs a `doc` subcommand: in the running agent when one serves commands for this config,
/// else here (as [`doc_command`]). Returns what to print.
///
/// # Errors
///
/// As [`doc_command`]; or the agent stopped, or took longer than two minutes, while it ran the
/// command (the message says that it may or may not have been applied).
pub fn run_doc_command(cfg: &Config, store: &mut Store, cmd: DocCommand) -> Result<String> {
    match ask_agent(cfg, store, &cmd)? {
        Some(answer) => answer,
        None => doc_command(cfg, store, cmd),
    }
}

/// The agent's answer, or `None` when this process must run the command itself.
fn ask_agent(cfg: &Config, store: &Store, cmd: &DocCommand) -> Result<Option<Result<String>>> {
    let Some(server) = store.doc_server()? else {
        return Ok(None);
    };
    if server.config != cfg.fingerprint || lock_holder(cfg) != Some(server.pid) {
        return Ok(None);
    }
    let text = serde_json::to_string(cmd).map_err(|e| AgentError::Other(e.to_string()))?;
    let id = store.ask_doc_request(&text, &cfg.fingerprint)?;
    let asked = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let answer = store.doc_answer(id)?;
        let waited = asked.elapsed();
        match answer {
            Some(Answer::Done(out)) => {
                store.forget_doc_request(id)?;
                return Ok(Some(Ok(out)));
            }
            Some(Answer::Failed(e)) => {
                store.forget_doc_request(id)?;
                return Ok(Some(Err(AgentError::Other(e))));
            }
            Some(Answer::Declined) | None => {
                store.forget_doc_request(id)?;
                return Ok(None);
            }
            Some(Answer::Waiting) if waited >= TAKE_WITHIN => {
                if store.withdraw_doc_request(id)? {
                    tracing::debug!("the agent did not take the command; running it here");
                    return Ok(None);
                }
                // Taken just now: wait for its answer.
            }
            Some(Answer::Taken) if waited >= ANSWER_WITHIN || lock_holder(cfg).is_none() => {
                return Ok(Some(Err(AgentError::Other(format!(
                    "the agent (process {}) took this command but {}; it may or may not have \
                     been applied: look with `agent doc get`",
                    server.pid,
                    if waited >= ANSWER_WITHIN {
                        "did not answer within two minutes"
                    } else {
                        "stopped before it answered"
                    }
                )))));
            }
            Some(Answer::Waiting | Answer::Taken) => {}
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

impl Agent {
    /// Says in the database that this agent serves doc commands (`agent run` does).
    pub(super) fn start_serving(&self) {
        let pid = std::process::id();
        if let Err(e) = self.store.serve_doc_requests(pid, &self.cfg.fingerprint) {
            tracing::warn!(error = %e, "cannot offer to run doc commands; the command line runs them itself");
        }
    }

    /// Withdraws [`Agent::start_serving`].
    pub(super) fn stop_serving(&self) {
        if let Err(e) = self.store.stop_serving_doc_requests(std::process::id()) {
            tracing::warn!(error = %e, "cannot withdraw the offer to run doc commands");
        }
    }

    /// Runs the doc commands waiting in the database and writes back their answers.
    pub(super) fn serve_doc_requests(&mut self) {
        let requests = match self.store.take_doc_requests() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "reading doc commands failed");
                return;
            }
        };
        for r in requests {
            let answer = if r.config != self.cfg.fingerprint {
                // The command line read another config (or this one changed since the agent
                // started): it runs the command itself, with its config.
                Answer::Declined
            } else {
                match serde_json::from_str::<DocCommand>(&r.command) {
                    Ok(cmd) => {
                        let what = command_name(&cmd);
                        let started = Instant::now();
                        let result = doc_command(&self.cfg, &mut self.store, cmd);
                        tracing::info!(
                            command = what,
                            ok = result.is_ok(),
                            ms = started.elapsed().as_secs_f64() * 1e3,
                            "ran a doc command for the command line"
                        );
                        match result {
                            Ok(out) => Answer::Done(out),
                            Err(e) => Answer::Failed(e.to_string()),
                        }
                    }
                    Err(e) => Answer::Failed(format!(
                        "the agent cannot read this command ({e}): is the command line of another version?"
                    )),
                }
            };
            if let Err(e) = self.store.answer_doc_request(r.id, &answer) {
                tracing::warn!(error = %e, "answering a doc command failed");
            }
        }
    }
}

/// The subcommand's name, for the log.
fn command_name(cmd: &DocCommand) -> &'static str {
    match cmd {
        DocCommand::List { .. } => "list",
        DocCommand::Get { .. } => "get",
        DocCommand::Set { .. } => "set",
        DocCommand::Rm { .. } => "rm",
        DocCommand::Insert { .. } => "insert",
        DocCommand::Push { .. } => "push",
        DocCommand::Move { .. } => "move",
        DocCommand::Import { .. } => "import",
        DocCommand::Update { .. } => "update",
        DocCommand::Export { .. } => "export",
        DocCommand::Adopt { .. } => "adopt",
        DocCommand::Log { .. } => "log",
    }
}
