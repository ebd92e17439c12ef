//! The whole path over the real mail stack: latency, the mail stack's own floor, drain throughput,
//! mails per burst of edits and bytes on the wire. Prints one JSON object.
//!
//! Run it through `scripts/bench-mail`, which starts Postfix + Dovecot and builds the agent:
//! `mail_bench --stack DIR/env --agent target/release/agent [--edits 200]`

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use minisync::agent::{Agent, AgentError};
use minisync::config::Config;
use minisync::store::{Save, Store};
use serde_json::{Value, json};
use support::{Bench, Kill, Node, percentile, store_of, wait_for};

/// What this benchmark adds to the shared [`Bench`].
trait Pair {
    fn node(&self, address: &str, peer: &str, send_delay: &str) -> anyhow::Result<Node>;
    fn node_with(
        &self,
        address: &str,
        peer: &str,
        send_delay: &str,
        idle_check: &str,
    ) -> anyhow::Result<Node>;
    fn introduce(&self, x: &Node, y: &Node) -> anyhow::Result<()>;
    fn import(&self, node: &Node, value: &Value) -> anyhow::Result<()>;
}

impl Pair for Bench {
    fn node(&self, address: &str, peer: &str, send_delay: &str) -> anyhow::Result<Node> {
        self.node_with(address, peer, send_delay, "auto")
    }

    /// A node whose `[account.imap] idle-check` is set to `idle_check`.
    fn node_with(
        &self,
        address: &str,
        peer: &str,
        send_delay: &str,
        idle_check: &str,
    ) -> anyhow::Result<Node> {
        let mut toml = self.account_toml(address, idle_check)?;
        toml.push_str(&format!(
            "[[peers]]\naddress = \"{peer}\"\n\
             [[documents]]\nname = \"doc\"\npeers = [\"{peer}\"]\nsend-delay = \"{send_delay}\"\nresend-interval = \"1h\"\n"
        ));
        self.node_from(address, &toml)
    }

    /// The first contact of two agents: hellos carry each one's OpenPGP key to the other (agent
    /// mail is encrypted end to end, so content waits for the key). Leaves both inboxes empty.
    fn introduce(&self, x: &Node, y: &Node) -> anyhow::Result<()> {
        let (xdir, ydir) = (self.maildir(&x.address)?, self.maildir(&y.address)?);
        self.cli(x, &["sync"])?;
        wait_for(Duration::from_secs(60), "the hello", || {
            !inbox(&ydir).is_empty()
        })?;
        self.cli(y, &["sync"])?;
        wait_for(Duration::from_secs(60), "the answer", || {
            !inbox(&xdir).is_empty()
        })?;
        self.cli(x, &["sync"])?;
        Ok(())
    }

    fn import(&self, node: &Node, value: &Value) -> anyhow::Result<()> {
        let file = node.config.with_file_name("import.json");
        std::fs::write(&file, value.to_string())?;
        self.cli(node, &["doc", "import", "doc", file.to_str().unwrap_or("")])?;
        Ok(())
    }
}

fn edit(store: &mut Store, path: &str, value: Value) -> anyhow::Result<()> {
    store.update_doc::<_, AgentError>("doc", |d, _| {
        d.set(path, value)?;
        Ok(((), Save::Edited))
    })?;
    Ok(())
}

fn inbox(dir: &Path) -> Vec<PathBuf> {
    ["new", "cur"]
        .iter()
        .flat_map(|d| {
            std::fs::read_dir(dir.join(d))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect()
}

/// Edit-to-merged latency with both agents running as services, with `idle_check` as their
/// `[account.imap] idle-check` setting.
fn latency(b: &Bench, edits: usize, idle_check: &str) -> anyhow::Result<Vec<f64>> {
    let (a, bb) = (b.address("alice"), b.address("bob"));
    let alice = b.node_with(&a, &bb, "0s", idle_check)?;
    let bob = b.node_with(&bb, &a, "0s", idle_check)?;
    b.introduce(&alice, &bob)?;
    b.import(&alice, &json!({"n": 0}))?;
    let _services = Kill(vec![b.spawn(&alice)?, b.spawn(&bob)?]);
    let mut astore = store_of(&alice)?;
    let mut bstore = store_of(&bob)?;
    wait_for(Duration::from_secs(60), "bob's replica", || {
        bstore.has_doc("doc").unwrap_or(false)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let mut out = Vec::with_capacity(edits);
    for i in 1..=edits {
        let t = Instant::now();
        edit(&mut astore, "n", json!(i))?;
        wait_for(Duration::from_secs(30), "the edit at bob", || {
            bstore
                .read_doc("doc", |d| d.get("n").ok().flatten())
                .ok()
                .flatten()
                == Some(json!(i))
        })?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(20)); // let the acknowledgement settle
    }
    Ok(out)
}

/// SMTP acceptance to the mail being visible over IMAP, no agent involved: `(by NOOP polling,
/// by IDLE notification)` for each send.
async fn floor(b: &Bench, sends: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    use async_imap::types::UnsolicitedResponse;
    use lettre::AsyncTransport;
    use lettre::transport::smtp::authentication::Credentials;
    let (from, to) = (b.address("floor-a"), b.address("floor-b"));
    let smtp = lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::builder_dangerous("127.0.0.1")
        .port(b.var("SMTP_PORT")?.parse()?)
        .credentials(Credentials::new(from.clone(), "secret".into()))
        .build();
    let tcp =
        tokio::net::TcpStream::connect(("127.0.0.1", b.var("IMAP_PORT")?.parse::<u16>()?)).await?;
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await?;
    let mut session = client.login(&to, "secret").await.map_err(|(e, _)| e)?;
    session.select("INBOX").await?;
    let env = lettre::address::Envelope::new(Some(from.parse()?), vec![to.parse()?])?;
    let (mut polled, mut idled) = (Vec::with_capacity(sends), Vec::with_capacity(sends));
    for i in 0..2 * sends {
        let raw = format!(
            "From: {from}\r\nTo: {to}\r\nSubject: floor {i}\r\nMessage-ID: <floor{i}.{}@example.test>\r\n\r\nping\r\n",
            rand::random::<u32>()
        );
        if i % 2 == 0 {
            smtp.send_raw(&env, raw.as_bytes()).await?;
            let t = Instant::now();
            loop {
                session.noop().await?;
                let mut seen = false;
                while let Ok(r) = session.unsolicited_responses.try_recv() {
                    seen |= matches!(r, UnsolicitedResponse::Exists(_));
                }
                if seen {
                    break;
                }
                if t.elapsed() > Duration::from_secs(30) {
                    bail!("mail {i} never became visible");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            polled.push(t.elapsed().as_secs_f64() * 1000.0);
        } else {
            let mut idle = session.idle();
            idle.init().await?;
            smtp.send_raw(&env, raw.as_bytes()).await?;
            let t = Instant::now();
            let (wait, _stop) = idle.wait_with_timeout(Duration::from_secs(30));
            wait.await?;
            idled.push(t.elapsed().as_secs_f64() * 1000.0);
            session = idle.done().await?;
            session.noop().await?;
            while session.unsolicited_responses.try_recv().is_ok() {}
        }
    }
    Ok((polled, idled))
}

/// 1,000 change mails waiting, drained by one `agent sync`: (mails/s, peak RSS MB).
async fn drain(b: &Bench, mails: usize) -> anyhow::Result<(f64, f64)> {
    let (a, bb) = (b.address("drain-a"), b.address("drain-b"));
    let alice = b.node(&a, &bb, "0s")?;
    let bob = b.node(&bb, &a, "0s")?;
    b.introduce(&alice, &bob)?;
    b.import(&alice, &json!({"n": 0, "log": "x"}))?;
    let mut agent = Agent::new(Config::load(&alice.config)?)?;
    for i in 0..mails {
        edit(agent.store(), "n", json!(i))?;
        let r = agent.send_now(&bb, Some("doc")).await?;
        if r.sent != 1 {
            bail!("send {i} did not go out: {r:?}");
        }
    }
    drop(agent);
    let dir = b.maildir(&bb)?;
    wait_for(Duration::from_secs(120), "all mails delivered", || {
        inbox(&dir).len() >= mails
    })?;
    timed_sync(b, &bob, &dir, mails)
}

/// One `agent sync` of `node` that must drain all `mails` waiting in `dir`: (mails/s, peak RSS MB).
fn timed_sync(b: &Bench, node: &Node, dir: &Path, mails: usize) -> anyhow::Result<(f64, f64)> {
    let t = Instant::now();
    let mut child = Command::new(&b.agent)
        .arg("--config")
        .arg(&node.config)
        .arg("sync")
        .env("MINISYNC_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak_kb = 0f64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(kb) = s
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        {
            peak_kb = f64::max(peak_kb, kb);
        }
        if let Some(st) = child.try_wait()? {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        bail!("agent sync failed while draining");
    }
    let left = inbox(dir).len();
    if left != 0 {
        bail!("{left} mails left in the inbox after the drain");
    }
    Ok((mails as f64 / secs, peak_kb / 1024.0))
}

/// A ~10 MB document both sides already hold; `mails` one-field deltas waiting at bob, drained by
/// one `agent sync`: mails per second. Merges of one pass share one save of the replica.
async fn drain_big(b: &Bench, mails: usize) -> anyhow::Result<f64> {
    let (a, bb) = (b.address("bigdrain-a"), b.address("bigdrain-b"));
    let alice = b.node(&a, &bb, "0s")?;
    let bob = b.node(&bb, &a, "0s")?;
    b.introduce(&alice, &bob)?;
    b.import(&alice, &big_document())?;
    let (adir, bdir) = (b.maildir(&a)?, b.maildir(&bb)?);
    b.cli(&alice, &["send", "--to", &bb])?;
    wait_for(Duration::from_secs(120), "the full sync", || {
        inbox(&bdir).len() == 1
    })?;
    b.cli(&bob, &["sync"])?;
    wait_for(Duration::from_secs(120), "bob's acknowledgement", || {
        inbox(&adir).len() == 1
    })?;
    b.cli(&alice, &["sync"])?;
    let mut agent = Agent::new(Config::load(&alice.config)?)?;
    for i in 0..mails {
        edit(agent.store(), &format!("records[{i}].done"), json!(true))?;
        let r = agent.send_now(&bb, Some("doc")).await?;
        if r.sent != 1 {
            bail!("send {i} did not go out: {r:?}");
        }
    }
    drop(agent);
    wait_for(Duration::from_secs(120), "all deltas delivered", || {
        inbox(&bdir).len() >= mails
    })?;
    Ok(timed_sync(b, &bob, &bdir, mails)?.0)
}

/// 100,000 records, about 10 MB of JSON.
fn big_document() -> Value {
    let records: Vec<Value> = (0..100_000)
        .map(|i| json!({"title": format!("Task number {i} with a reasonably descriptive title"), "done": i % 3 == 0, "n": i, "owner": format!("owner{}@example.com", i % 97)}))
        .collect();
    json!({ "records": records })
}

/// The thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The least CPU time of `runs` runs of `f`, in milliseconds.
fn least_cpu_ms(runs: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = thread_cpu();
        f()?;
        best = best.min((thread_cpu() - t).as_secs_f64() * 1000.0);
    }
    Ok((best * 10.0).round() / 10.0)
}

/// Writes `text` to `path` as editors do: a temporary file, then a rename over the file.
fn save_by_rename(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.swp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// A bound file of the ~10 MB document on both sides, both agents running: `saves` saves of
/// alice's file changing one field, each timed until bob's replica holds the change and until
/// bob's file does; then the CPU time of the agent's reading and diffing of the saved file
/// against its shadow, next to serde_json parsing the same file.
fn bound_file(b: &Bench, saves: usize) -> anyhow::Result<Value> {
    use minisync::agent::files;
    let (a, bb) = (b.address("file-a"), b.address("file-b"));
    let alice = b.node(&a, &bb, "0s")?;
    let bob = b.node(&bb, &a, "0s")?;
    for n in [&alice, &bob] {
        let mut cfg = std::fs::read_to_string(&n.config)?;
        cfg.push_str("file = \"doc.json\"\n");
        std::fs::write(&n.config, cfg)?;
    }
    let (afile, bfile) = (
        alice.config.with_file_name("doc.json"),
        bob.config.with_file_name("doc.json"),
    );
    b.introduce(&alice, &bob)?;
    let mut value = big_document();
    std::fs::write(&afile, serde_json::to_string_pretty(&value)?)?;
    b.cli(&alice, &["sync"])?;
    let bdir = b.maildir(&bb)?;
    wait_for(Duration::from_secs(120), "the full sync", || {
        !inbox(&bdir).is_empty()
    })?;
    b.cli(&bob, &["sync"])?;
    if !bfile.exists() {
        bail!("bob's bound file was not written by the full sync");
    }
    let services = Kill(vec![b.spawn(&alice)?, b.spawn(&bob)?]);
    let bstore = store_of(&bob)?;
    let (mut merged, mut written) = (Vec::new(), Vec::new());
    let (mut shadow, mut text) = (String::new(), String::new());
    for round in 0..saves {
        std::thread::sleep(Duration::from_secs(2)); // the previous round's acknowledgements
        let want = json!(round % 2 == 0);
        shadow = value.to_string();
        value["records"][50000]["done"] = want.clone();
        text = serde_json::to_string_pretty(&value)?;
        let (mut rev, mut sig) = (bstore.doc_rev("doc")?, files::signature(&bfile));
        let t = Instant::now();
        save_by_rename(&afile, &text)?;
        // Timed when bob's replica (then file) changes; checked after the time is taken, so that
        // reading 10 MB here does not count (a change that is not the save is waited past).
        let mut store = store_of(&bob)?;
        let (mut merged_at, mut written_at) = (None, None);
        while merged_at.is_none() || written_at.is_none() {
            if t.elapsed() > Duration::from_secs(120) {
                for n in [&alice, &bob] {
                    let log = std::fs::read_to_string(n.config.with_file_name("agent.log"));
                    eprintln!("{}'s agent logged:\n{}", n.address, log.unwrap_or_default());
                }
                bail!("the save never reached bob (replica: {merged_at:?}, file: {written_at:?})");
            }
            let (now_rev, now_sig) = (store.doc_rev("doc")?, files::signature(&bfile));
            let at = t.elapsed().as_secs_f64() * 1000.0;
            if merged_at.is_none() && now_rev != rev {
                rev = now_rev;
                let got = store.read_doc("doc", |d| d.get("records[50000].done").ok().flatten())?;
                merged_at = (got == Some(want.clone())).then_some(at);
            }
            if written_at.is_none() && now_sig != sig {
                sig = now_sig;
                written_at = matches!(files::read(&bfile), files::Read::Good(f) if f.value["records"][50000]["done"] == want).then_some(at);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        merged.extend(merged_at);
        written.extend(written_at);
    }
    let diff_ms = least_cpu_ms(5, || {
        let files::Read::Good(file) = files::read(&afile) else {
            bail!("alice's file unreadable");
        };
        let edits = files::save_edits(&shadow, &file.value).context("the shadow")?;
        if edits.len() != 1 {
            bail!("{} edits for one changed field", edits.len());
        }
        Ok(())
    })?;
    let parse_ms = least_cpu_ms(5, || {
        serde_json::from_slice::<Value>(&std::fs::read(&afile)?)?;
        Ok(())
    })?;
    // Last: its edits reach alice's file, which the figures above read.
    let doc_set = doc_set(b, &bob, services)?;
    merged.sort_by(f64::total_cmp);
    written.sort_by(f64::total_cmp);
    Ok(json!({
        "file_bytes": text.len(),
        "save_to_merged_ms": {"p50": percentile(&merged, 0.5), "max": percentile(&merged, 1.0)},
        "save_to_peer_file_ms": {"p50": percentile(&written, 0.5), "max": percentile(&written, 1.0)},
        "read_diff_cpu_ms": diff_ms,
        "serde_parse_cpu_ms": parse_ms,
        "diff_over_parse": ((diff_ms / parse_ms) * 100.0).round() / 100.0,
        "doc_set": doc_set,
    }))
}

/// `agent doc set` of one field of the 10 MB document on `node`, wall time of the whole command:
/// 10 times while its agent runs (the agent runs the command on the replica it holds loaded),
/// 6 s apart, then, the agents stopped, 3 times alone (the command loads the replica itself);
/// and the running agent's resident memory with the document (and its bound file) loaded, now
/// and at its peak.
fn doc_set(b: &Bench, node: &Node, services: Kill) -> anyhow::Result<Value> {
    let set = |round: usize| -> anyhow::Result<f64> {
        // Each edit rewrites the 16 MB bound file and goes out to the peer: a command that
        // comes while the agent still does that waits for it, so the commands are spaced.
        std::thread::sleep(Duration::from_secs(6));
        let title = format!("edited {round}");
        let t = Instant::now();
        b.cli(
            node,
            &["doc", "set", "doc", "records[7].title", "--string", &title],
        )?;
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    let mut with_agent = (0..10).map(set).collect::<anyhow::Result<Vec<_>>>()?;
    let pid = services.0.last().map(|c| c.id()).unwrap_or_default();
    let rss = |field: &str| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        (kb / 1024.0 * 10.0).round() / 10.0
    };
    // Once the last edit has been written to the bound file and sent.
    std::thread::sleep(Duration::from_secs(6));
    let (rss_mb, peak_mb) = (rss("VmRSS:"), rss("VmHWM:"));
    drop(services);
    let mut alone = (10..13).map(set).collect::<anyhow::Result<Vec<_>>>()?;
    with_agent.sort_by(f64::total_cmp);
    alone.sort_by(f64::total_cmp);
    Ok(json!({
        "with_agent_ms": {"p50": percentile(&with_agent, 0.5), "max": percentile(&with_agent, 1.0)},
        "alone_ms": {"p50": percentile(&alone, 0.5), "max": percentile(&alone, 1.0)},
        "agent_rss_mb": rss_mb,
        "agent_peak_rss_mb": peak_mb,
    }))
}

/// 1,000 edits within one send delay, with the agent running: mails that went to the peer.
fn burst(b: &Bench, edits: usize) -> anyhow::Result<u64> {
    let (a, bb) = (b.address("burst-a"), b.address("burst-b"));
    let alice = b.node(&a, &bb, "3s")?;
    let bob = b.node(&bb, &a, "0s")?;
    b.introduce(&alice, &bob)?;
    b.import(&alice, &json!({"n": 0}))?;
    let dir = b.maildir(&bb)?;
    let _service = Kill(vec![b.spawn(&alice)?]);
    wait_for(Duration::from_secs(60), "the first mail", || {
        inbox(&dir).len() == 1
    })?;
    let mut store = store_of(&alice)?;
    for i in 0..edits {
        edit(&mut store, "n", json!(i))?;
    }
    std::thread::sleep(Duration::from_secs(8));
    Ok(inbox(&dir).len() as u64 - 1)
}

/// Bytes on the wire (the delivered message) for the first full sync of a ~10 MB document and for a
/// one-field delta; and the peak RSS (MB) of the receiver's `agent sync` that makes its replica
/// from that first full sync.
async fn sizes(b: &Bench) -> anyhow::Result<(u64, u64, f64)> {
    let (a, bb) = (b.address("size-a"), b.address("size-b"));
    let alice = b.node(&a, &bb, "0s")?;
    let bob = b.node(&bb, &a, "0s")?;
    b.introduce(&alice, &bob)?;
    b.import(&alice, &big_document())?;
    let bdir = b.maildir(&bb)?;
    let adir = b.maildir(&a)?;
    b.cli(&alice, &["send", "--to", &bb])?;
    wait_for(Duration::from_secs(120), "the full sync mail", || {
        inbox(&bdir).len() == 1
    })?;
    let full = std::fs::metadata(&inbox(&bdir)[0])?.len();
    let (_, first_sync_peak) = timed_sync(b, &bob, &bdir, 1)?;
    wait_for(Duration::from_secs(120), "bob's acknowledgement", || {
        inbox(&adir).len() == 1
    })?;
    b.cli(&alice, &["sync"])?;
    b.cli(
        &alice,
        &["doc", "set", "doc", "records[50000].done", "true"],
    )?;
    b.cli(&alice, &["send", "--to", &bb])?;
    wait_for(Duration::from_secs(60), "the delta mail", || {
        inbox(&bdir).len() == 1
    })?;
    let delta = std::fs::metadata(&inbox(&bdir)[0])?.len();
    Ok((full, delta, first_sync_peak))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // `--only drain`, `--only drain-big`, `--only bound-file` or `--only first-sync`: just that
    // figure (for comparing agent builds).
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let stack =
        arg("--stack").context("--stack DIR/env is required (scripts/bench-mail passes it)")?;
    let agent = PathBuf::from(arg("--agent").context("--agent PATH is required")?);
    let edits: usize = arg("--edits")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let b = Bench::new(&stack, agent)?;
    if arg("--only").as_deref() == Some("drain") {
        let (rate, rss) = drain(&b, 1000).await?;
        println!(
            "{}",
            json!({ "drain_mails_per_s": (rate * 10.0).round() / 10.0, "drain_peak_rss_mb": (rss * 10.0).round() / 10.0 })
        );
        return Ok(());
    }
    if arg("--only").as_deref() == Some("bound-file") {
        let figures = tokio::task::block_in_place(|| bound_file(&b, 5))?;
        println!("{}", json!({ "bound_file_10mb": figures }));
        return Ok(());
    }
    if arg("--only").as_deref() == Some("first-sync") {
        let (full, _, peak) = sizes(&b).await?;
        println!(
            "{}",
            json!({ "full_sync_bytes": full, "first_sync_peak_rss_mb": (peak * 10.0).round() / 10.0 })
        );
        return Ok(());
    }
    if arg("--only").as_deref() == Some("drain-big") {
        let rate = drain_big(&b, 100).await?;
        println!(
            "{}",
            json!({ "drain_10mb_doc_mails_per_s": (rate * 10.0).round() / 10.0 })
        );
        return Ok(());
    }

    let mut lat = tokio::task::block_in_place(|| latency(&b, edits, "auto"))?;
    lat.sort_by(f64::total_cmp);
    let mut idle_lat = tokio::task::block_in_place(|| latency(&b, edits, "off"))?;
    idle_lat.sort_by(f64::total_cmp);
    let (mut fl, mut idle_fl) = floor(&b, edits).await?;
    fl.sort_by(f64::total_cmp);
    idle_fl.sort_by(f64::total_cmp);
    let (rate, rss) = drain(&b, 1000).await?;
    let big_rate = drain_big(&b, 100).await?;
    let mails = tokio::task::block_in_place(|| burst(&b, 1000))?;
    let (full, delta, first_sync_peak) = sizes(&b).await?;
    let bound = tokio::task::block_in_place(|| bound_file(&b, 5))?;
    let out = json!({
        "latency_ms": {"p50": percentile(&lat, 0.5), "p90": percentile(&lat, 0.9), "p99": percentile(&lat, 0.99), "max": percentile(&lat, 1.0)},
        "latency_idle_only_ms": {"p50": percentile(&idle_lat, 0.5), "p90": percentile(&idle_lat, 0.9), "p99": percentile(&idle_lat, 0.99), "max": percentile(&idle_lat, 1.0)},
        "floor_ms": {"p50": percentile(&fl, 0.5), "p99": percentile(&fl, 0.99)},
        "idle_floor_ms": {"p50": percentile(&idle_fl, 0.5), "p99": percentile(&idle_fl, 0.99)},
        "drain_mails_per_s": (rate * 10.0).round() / 10.0,
        "drain_peak_rss_mb": (rss * 10.0).round() / 10.0,
        "drain_10mb_doc_mails_per_s": (big_rate * 10.0).round() / 10.0,
        "mails_per_peer_for_1000_edits": mails,
        "full_sync_bytes": full,
        "first_sync_peak_rss_mb": (first_sync_peak * 10.0).round() / 10.0,
        "delta_bytes": delta,
        "bound_file_10mb": bound,
    });
    println!("{out}");
    Ok(())
}
