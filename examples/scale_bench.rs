//! Many peers and documents on one loopback mail stack: N agents (default 20), each holding the
//! same M documents (default 50) shared with all the others, run as services for a bounded time
//! (default 10 minutes) of random edits, then left to settle. Prints one JSON object: whether
//! every document ended identical everywhere, mails sent per edit, agents' resident memory at
//! the start and the end, edit-to-merged latency (until every other agent holds the edit) and
//! CPU seconds per agent. A benchmark: it never fails on speed; edits that have not reached every
//! agent 5 minutes after the last one are counted (`undelivered_edits`, and `converged` is false).
//!
//! Run it through `scripts/bench-scale`, which starts Postfix + Dovecot and builds the agent:
//! `scale_bench --stack DIR/env --agent target/release/agent [--peers 20] [--docs 50]
//! [--minutes 10] [--edits-per-s 2]`

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use minisync::agent::AgentError;
use minisync::store::{Save, Store};
use rand::Rng;
use serde_json::{Value, json};
use support::{Bench, Kill, Node, percentile, store_of, wait_every};

struct Args {
    stack: String,
    agent: PathBuf,
    peers: usize,
    docs: usize,
    minutes: f64,
    rate: f64,
}

fn args() -> anyhow::Result<Args> {
    let all: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        all.iter()
            .position(|a| a == name)
            .and_then(|i| all.get(i + 1))
            .cloned()
    };
    let num = |name: &str, default: f64| -> anyhow::Result<f64> {
        match arg(name) {
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0)
                .with_context(|| format!("{name} takes a positive number, not {v:?}")),
            None => Ok(default),
        }
    };
    Ok(Args {
        stack: arg("--stack")
            .context("--stack DIR/env is required (scripts/bench-scale passes it)")?,
        agent: PathBuf::from(arg("--agent").context("--agent PATH is required")?),
        peers: num("--peers", 20.0)? as usize,
        docs: num("--docs", 50.0)? as usize,
        minutes: num("--minutes", 10.0)?,
        rate: num("--edits-per-s", 2.0)?,
    })
}

fn doc_name(j: usize) -> String {
    format!("d{j:02}")
}

/// N agents, each with every other as a peer and every document shared with all of them.
fn nodes(b: &Bench, a: &Args) -> anyhow::Result<Vec<Node>> {
    let addresses: Vec<String> = (0..a.peers).map(|i| b.address(&format!("s{i}"))).collect();
    let mut out = Vec::new();
    for me in &addresses {
        let others: Vec<&String> = addresses.iter().filter(|x| *x != me).collect();
        let mut toml = b.account_toml(me, "auto")?;
        for p in &others {
            toml.push_str(&format!("[[peers]]\naddress = \"{p}\"\n"));
        }
        let list = others
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        for j in 0..a.docs {
            toml.push_str(&format!(
                "[[documents]]\nname = \"{}\"\npeers = [{list}]\n",
                doc_name(j)
            ));
        }
        out.push(b.node_from(me, &toml)?);
    }
    Ok(out)
}

fn db(node: &Node) -> anyhow::Result<rusqlite::Connection> {
    let cfg = minisync::config::Config::load(&node.config)?;
    Ok(rusqlite::Connection::open(cfg.database_path())?)
}

fn count(node: &Node, sql: &str) -> anyhow::Result<u64> {
    Ok(db(node)?.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
}

/// (resident MB, CPU seconds) of a process.
fn usage(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    Ok((kb / 1024.0, ticks / 100.0))
}

fn spread(mut v: Vec<f64>) -> Value {
    v.sort_by(f64::total_cmp);
    json!({"p50": percentile(&v, 0.5), "max": percentile(&v, 1.0)})
}

/// Starts every agent, lets their hellos carry the keys, and has the first one start every
/// document; returns when every agent holds every document.
fn set_up(b: &Bench, a: &Args, nodes: &[Node]) -> anyhow::Result<Kill> {
    let services = Kill(
        nodes
            .iter()
            .map(|n| b.spawn(n))
            .collect::<anyhow::Result<_>>()?,
    );
    let want = (a.peers - 1) as u64;
    let every = Duration::from_millis(250);
    wait_every(
        every,
        Duration::from_secs(600),
        "every agent's keys of every peer",
        || {
            nodes.iter().all(|n| {
                count(n, "SELECT COUNT(*) FROM peer_keys WHERE key IS NOT NULL").ok() == Some(want)
            })
        },
    )?;
    let file = nodes[0].config.with_file_name("start.json");
    for j in 0..a.docs {
        std::fs::write(&file, json!({"doc": j}).to_string())?;
        b.cli(
            &nodes[0],
            &["doc", "import", &doc_name(j), &file.to_string_lossy()],
        )?;
    }
    let mut stores: Vec<Store> = nodes.iter().map(store_of).collect::<anyhow::Result<_>>()?;
    wait_every(
        every,
        Duration::from_secs(900),
        "every document at every agent",
        || {
            stores
                .iter_mut()
                .all(|s| (0..a.docs).all(|j| s.has_doc(&doc_name(j)).unwrap_or(false)))
        },
    )?;
    Ok(services)
}

/// An edit waiting to reach every other agent.
struct Pending {
    doc: String,
    path: String,
    value: Value,
    at: Instant,
    missing: Vec<usize>,
}

/// Each agent's documents' revisions, read in one query per agent: which (agent, document)
/// changed since the last look. Only those are read, so that watching many pending edits costs
/// the agents nothing.
struct Revisions {
    conns: Vec<rusqlite::Connection>,
    seen: Vec<std::collections::HashMap<String, i64>>,
}

impl Revisions {
    fn new(nodes: &[Node]) -> anyhow::Result<Revisions> {
        Ok(Revisions {
            conns: nodes.iter().map(db).collect::<anyhow::Result<_>>()?,
            seen: nodes.iter().map(|_| Default::default()).collect(),
        })
    }

    fn changed(&mut self) -> anyhow::Result<std::collections::HashSet<(usize, String)>> {
        let mut out = std::collections::HashSet::new();
        for (i, conn) in self.conns.iter().enumerate() {
            let mut st = conn.prepare_cached("SELECT name, rev FROM documents")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (name, rev) = row?;
                if self.seen[i].insert(name.clone(), rev) != Some(rev) {
                    out.insert((i, name));
                }
            }
        }
        Ok(out)
    }
}

/// Removes from `p.missing` the agents whose copy of the document changed and holds the edit;
/// true when none is left.
fn arrived(
    stores: &mut [Store],
    changed: &std::collections::HashSet<(usize, String)>,
    p: &mut Pending,
) -> bool {
    p.missing.retain(|&i| {
        !changed.contains(&(i, p.doc.clone()))
            || stores[i]
                .read_doc(&p.doc, |d| d.get(&p.path).ok().flatten())
                .ok()
                .flatten()
                .as_ref()
                != Some(&p.value)
    });
    p.missing.is_empty()
}

/// Random edits at `rate` per second for `minutes`, then up to 5 minutes for the last to
/// arrive: (edits made, latencies in ms of those that reached every other agent, edits that did
/// not reach every other agent in that time).
fn edit_phase(a: &Args, nodes: &[Node]) -> anyhow::Result<(usize, Vec<f64>, usize)> {
    let mut stores: Vec<Store> = nodes.iter().map(store_of).collect::<anyhow::Result<_>>()?;
    let mut revisions = Revisions::new(nodes)?;
    revisions.changed()?;
    let mut rng = rand::rng();
    let gap = Duration::from_secs_f64(1.0 / a.rate);
    let (start, length) = (Instant::now(), Duration::from_secs_f64(a.minutes * 60.0));
    let (mut pending, mut latencies, mut edits) = (Vec::<Pending>::new(), Vec::new(), 0usize);
    let mut next = Instant::now();
    while start.elapsed() < length
        || (!pending.is_empty() && start.elapsed() < length + Duration::from_secs(300))
    {
        if start.elapsed() < length && Instant::now() >= next {
            let (i, j) = (
                rng.random_range(0..nodes.len()),
                rng.random_range(0..a.docs),
            );
            let (doc, path, value) = (doc_name(j), format!("e{edits}"), json!(edits));
            stores[i].update_doc::<_, AgentError>(&doc, |d, _| {
                d.set(&path, value.clone())?;
                Ok(((), Save::Edited))
            })?;
            let missing = (0..nodes.len()).filter(|k| *k != i).collect();
            pending.push(Pending {
                doc,
                path,
                value,
                at: Instant::now(),
                missing,
            });
            edits += 1;
            next += gap;
        }
        let changed = revisions.changed()?;
        let seen_at = Instant::now();
        pending.retain_mut(|p| {
            let done = arrived(&mut stores, &changed, p);
            if done {
                latencies.push(seen_at.duration_since(p.at).as_secs_f64() * 1000.0);
            }
            !done
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((edits, latencies, pending.len()))
}

/// Whether every document is identical at every agent.
fn converged(a: &Args, nodes: &[Node]) -> anyhow::Result<bool> {
    let mut stores: Vec<Store> = nodes.iter().map(store_of).collect::<anyhow::Result<_>>()?;
    for j in 0..a.docs {
        let first = stores[0].read_doc(&doc_name(j), |d| d.to_json())?;
        for s in &mut stores[1..] {
            if s.read_doc(&doc_name(j), |d| d.to_json())? != first {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

fn sent(nodes: &[Node], ack_only: bool) -> anyhow::Result<u64> {
    let sql = format!(
        "SELECT COUNT(*) FROM outbox WHERE status = 'sent' AND ack_only = {}",
        u8::from(ack_only)
    );
    nodes.iter().map(|n| count(n, &sql)).sum()
}

fn main() -> anyhow::Result<()> {
    let a = args()?;
    if a.peers < 2 {
        bail!("--peers must be at least 2");
    }
    let b = Bench::new(&a.stack, a.agent.clone())?;
    let nodes = nodes(&b, &a)?;
    let setup = Instant::now();
    let services = set_up(&b, &a, &nodes)?;
    let setup_s = setup.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(5)); // the full syncs' acknowledgements
    let pids: Vec<u32> = services.0.iter().map(|c| c.id()).collect();
    let before: Vec<(f64, f64)> = pids
        .iter()
        .map(|p| usage(*p))
        .collect::<anyhow::Result<_>>()?;
    let (changes0, acks0) = (sent(&nodes, false)?, sent(&nodes, true)?);
    let (edits, mut lat, undelivered) = edit_phase(&a, &nodes)?;
    if undelivered > 0 {
        eprintln!("{undelivered} edits did not reach every agent within 5 minutes of the last");
    }
    std::thread::sleep(Duration::from_secs(10)); // the last acknowledgements
    let after: Vec<(f64, f64)> = pids
        .iter()
        .map(|p| usage(*p))
        .collect::<anyhow::Result<_>>()?;
    let (changes, acks) = (sent(&nodes, false)? - changes0, sent(&nodes, true)? - acks0);
    drop(services);
    lat.sort_by(f64::total_cmp);
    let per_edit = |n: u64| ((n as f64 / edits.max(1) as f64) * 100.0).round() / 100.0;
    let out = json!({
        "peers": a.peers,
        "documents": a.docs,
        "minutes": a.minutes,
        "edits": edits,
        "converged": undelivered == 0 && converged(&a, &nodes)?,
        "undelivered_edits": undelivered,
        "mails_per_edit": per_edit(changes + acks),
        "change_mails_per_edit": per_edit(changes),
        "ack_mails_per_edit": per_edit(acks),
        "rss_mb_start": spread(before.iter().map(|u| u.0).collect()),
        "rss_mb_end": spread(after.iter().map(|u| u.0).collect()),
        "latency_ms": {"p50": percentile(&lat, 0.5), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0)},
        "cpu_s_per_agent": spread(after.iter().zip(&before).map(|(x, y)| x.1 - y.1).collect()),
        "setup_s": setup_s.round(),
    });
    println!("{out}");
    Ok(())
}
