//! The zero-setup quickstart: three people share a to-do list through a folder (a stand-in for a
//! Syncthing or Dropbox folder). Each runs a real minisync agent with its own SQLite state; the
//! example makes concurrent edits, runs sync passes and prints what happened at each step.
//!
//! `cargo run --example quickstart`

use std::path::Path;

use minisync::agent::{Agent, DocCommand, doc_command};
use minisync::config::Config;
use serde_json::Value;

struct Person {
    name: &'static str,
    cfg: Config,
    agent: Agent,
    _home: tempfile::TempDir,
}

impl Person {
    fn new(name: &'static str, shared: &Path) -> anyhow::Result<Person> {
        let home = tempfile::tempdir()?;
        let path = home.path().join("agent.toml");
        std::fs::write(
            &path,
            format!(
                "[agent]\nstate-dir = \"state\"\n\n[[documents]]\nname = \"todo\"\ntransport = \"folder\"\nfolder = \"{}\"\nsend-delay = \"0s\"\n",
                shared.display()
            ),
        )?;
        let cfg = Config::load(&path)?;
        let agent = Agent::new(cfg.clone())?;
        Ok(Person {
            name,
            cfg,
            agent,
            _home: home,
        })
    }

    fn doc(&mut self, cmd: DocCommand) -> anyhow::Result<String> {
        Ok(doc_command(&self.cfg, self.agent.store(), cmd)?)
    }

    fn edit(&mut self, path: &str, value: &str) -> anyhow::Result<()> {
        println!("  {:<7} sets {path} = {value}", self.name);
        self.doc(DocCommand::Set {
            name: "todo".into(),
            path: path.into(),
            value: value.into(),
        })?;
        Ok(())
    }

    async fn sync(&mut self) -> anyhow::Result<()> {
        let r = self.agent.sync_once().await;
        println!(
            "  {:<7} sync: merged {} publication(s) from others; {}",
            self.name,
            r.merged,
            if r.errors.is_empty() {
                "its own files are current"
            } else {
                "failed"
            }
        );
        for e in r.errors {
            println!("          error: {e}");
        }
        Ok(())
    }

    fn json(&mut self) -> anyhow::Result<Value> {
        Ok(self.agent.store().read_doc("todo", |d| d.to_json())?)
    }

    fn show_state(&mut self, others: &[(&str, String)]) -> anyhow::Result<()> {
        let rows = self.agent.store().read_doc("todo", |d| {
            let mut rows = vec![format!(
                "{} is client {} at version {}",
                self.name,
                d.client_id(),
                d.version()
            )];
            for (name, id) in others {
                if let Some(p) = minisync::engine::ClientId::parse(id)
                    .ok()
                    .and_then(|c| d.peer(c))
                {
                    rows.push(format!(
                        "    from {name}: lastReceived {}  |  {name} acknowledged our version {}",
                        p.last_received, p.last_acknowledged
                    ));
                }
            }
            rows
        })?;
        for r in rows {
            println!("  {r}");
        }
        Ok(())
    }

    fn client(&mut self) -> anyhow::Result<String> {
        Ok(self
            .agent
            .store()
            .read_doc("todo", |d| d.client_id().to_string())?)
    }
}

fn show_folder(shared: &Path) {
    println!("  what is in the shared folder now:");
    let mut files = Vec::new();
    for doc in std::fs::read_dir(shared).into_iter().flatten().flatten() {
        for client in std::fs::read_dir(doc.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in std::fs::read_dir(client.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let rel = f
                    .path()
                    .strip_prefix(shared)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                files.push(format!("    {rel:<70} {len:>6} bytes"));
            }
        }
    }
    files.sort();
    for f in files {
        println!("{f}");
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let shared = tempfile::tempdir()?;
    println!("Shared folder: {}", shared.path().display());
    let mut alice = Person::new("alice", shared.path())?;
    let mut bob = Person::new("bob", shared.path())?;

    step("1. Alice starts a to-do list and publishes it");
    let created = alice.doc(DocCommand::Import {
        name: "todo".into(),
        json: r#"{"title": "Weekend", "items": [{"what": "buy bread", "done": false}]}"#.into(),
    })?;
    print!("  alice   {created}");
    alice.sync().await?;
    show_folder(shared.path());

    step("2. Bob finds the document in the folder and makes his replica");
    bob.sync().await?;
    println!("  bob now holds: {}", bob.json()?);

    step("3. Both edit at the same time, without seeing each other");
    alice.edit("items[0].done", "true")?;
    alice.edit("title", "\"Weekend trip\"")?;
    bob.edit("items[1]", r#"{"what": "pack tent", "done": false}"#)?;
    bob.edit("title", "\"Camping weekend\"")?;

    step("4. Each syncs: publications travel through the folder and merge");
    alice.sync().await?;
    bob.sync().await?;
    alice.sync().await?;
    bob.sync().await?;
    show_folder(shared.path());
    let (a, b) = (alice.json()?, bob.json()?);
    println!("  alice: {a}\n  bob:   {b}");
    println!(
        "  identical: {} (the two titles were a conflict: every replica picks the same winner)",
        a == b
    );
    let (ida, idb) = (alice.client()?, bob.client()?);
    alice.show_state(&[("bob", idb.clone())])?;
    bob.show_state(&[("alice", ida.clone())])?;

    step("5. Carol joins later and catches up from the folder alone");
    let mut carol = Person::new("carol", shared.path())?;
    carol.sync().await?;
    carol.edit(
        "items[2]",
        r#"{"what": "bring marshmallows", "done": false}"#,
    )?;
    carol.sync().await?;
    for _ in 0..2 {
        alice.sync().await?;
        bob.sync().await?;
        carol.sync().await?;
    }
    let (a, b, c) = (alice.json()?, bob.json()?, carol.json()?);
    println!("  everyone holds: {a}");
    println!("  identical: {}", a == b && b == c);
    let idc = carol.client()?;
    alice.show_state(&[("bob", idb.clone()), ("carol", idc.clone())])?;
    carol.show_state(&[("alice", ida), ("bob", idb)])?;
    if !(a == b && b == c) {
        anyhow::bail!("the replicas did not converge");
    }
    println!("\nDone. The same agent syncs over e-mail: see the README's five-minute path.");
    Ok(())
}
