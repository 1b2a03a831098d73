//! The observers a run measures: inboxd (spawned with a plugin chain), the relay baseline
//! (this binary's `relay` subcommand), another observer started from a command line (e.g.
//! chat21-server), or an external observer someone else started.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::process::{Child, Command};

use crate::run::Broker;

/// How long a spawned observer gets to start consuming.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Which observer to measure.
#[derive(Clone, Debug)]
pub enum Kind {
    /// inboxd with the first `plugins` of the example chain (redactor, blocklist, rate limiter),
    /// `processes` of it (on `shards` shard queues when > 0), keeping history in `store`.
    Inboxd {
        plugins: usize,
        processes: usize,
        shards: usize,
        store: Store,
        /// `pipeline.durable_ids` (matters only with a store).
        durable_ids: bool,
    },
    Relay,
    /// Started by `sh -c command` (BENCH_AMQP_URL, BENCH_APP, BENCH_PREFETCH in its
    /// environment); started once it consumes from `queue`.
    Command {
        command: String,
        queue: String,
    },
    /// Already running; its pid, if given, is sampled for CPU and memory.
    External {
        pid: Option<u32>,
    },
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Inboxd { .. } => "inboxd",
            Kind::Relay => "relay",
            Kind::Command { .. } => "command",
            Kind::External { .. } => "external",
        }
    }

    pub fn plugins(&self) -> usize {
        match self {
            Kind::Inboxd { plugins, .. } => *plugins,
            _ => 0,
        }
    }

    pub fn processes(&self) -> usize {
        match self {
            Kind::Inboxd { processes, .. } => *processes,
            _ => 1,
        }
    }
}

/// Where a spawned inboxd keeps history.
#[derive(Clone, Debug)]
pub enum Store {
    None,
    /// A fresh SQLite file in the work dir.
    Sqlite,
    /// This PostgreSQL database.
    Postgres(String),
}

impl Store {
    /// `none`, `sqlite` or a `postgres://` URL.
    ///
    /// # Errors
    /// For anything else.
    pub fn parse(value: &str) -> Result<Store> {
        Ok(match value {
            "none" => Store::None,
            "sqlite" => Store::Sqlite,
            url if url.starts_with("postgres://") => Store::Postgres(url.to_owned()),
            other => bail!("--store {other:?}: none, sqlite or a postgres:// URL"),
        })
    }

    fn url(&self, work_dir: &Path, app: &str) -> String {
        match self {
            Store::None => "none".into(),
            Store::Sqlite => format!("sqlite://{}", work_dir.join(format!("{app}.db")).display()),
            Store::Postgres(url) => url.clone(),
        }
    }
}

/// Where spawned observers find things.
pub struct Paths {
    pub inboxd_bin: PathBuf,
    pub plugin_dir: PathBuf,
    /// Scratch space for configs and the plugin compile cache.
    pub work_dir: PathBuf,
}

/// A running observer (spawned ones are killed when dropped).
pub struct Running {
    children: Vec<Child>,
    external_pid: Option<u32>,
}

impl Running {
    /// The pids to sample, if any.
    pub fn pids(&self) -> Vec<u32> {
        let spawned = self.children.iter().filter_map(Child::id);
        spawned.chain(self.external_pid).collect()
    }

    /// Stops spawned observers with SIGTERM (a clean drain) and waits for them.
    pub async fn stop(mut self) {
        for child in &self.children {
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
                // SAFETY: kill(2) has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(20), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }
}

/// Starts `kind` for `app` on `broker` and waits until every process consumes.
///
/// # Errors
/// When a binary is missing, a process exits at start or does not consume in time.
pub async fn start(kind: &Kind, broker: &Broker, app: &str, prefetch: u16, paths: &Paths) -> Result<Running> {
    let amqp_url = broker.amqp_urls[0].as_str();
    let mut children = Vec::new();
    let queue = match kind {
        Kind::External { pid } => return Ok(Running { children, external_pid: *pid }),
        Kind::Relay => {
            let exe = std::env::current_exe().context("locating inboxd-bench")?;
            let mut command = Command::new(exe);
            command.args(["relay", "--url", amqp_url, "--app", app, "--prefetch", &prefetch.to_string()]);
            children.push(spawn(command)?);
            crate::relay::queue(app)
        }
        Kind::Command { command, queue } => {
            let mut shell = Command::new("sh");
            shell
                .arg("-c")
                .arg(format!("exec {command}"))
                .env("BENCH_AMQP_URL", amqp_url)
                .env("BENCH_APP", app)
                .env("BENCH_PREFETCH", prefetch.to_string());
            children.push(spawn(shell)?);
            queue.clone()
        }
        Kind::Inboxd { plugins, processes, shards, store, durable_ids } => {
            let config = write_config(*plugins, paths, app, &store.url(&paths.work_dir, app))?;
            for process in 0..*processes {
                // Each process starts its node list at another node, spreading the connections.
                let mut urls = broker.amqp_urls.clone();
                let nodes = urls.len();
                urls.rotate_left(process % nodes);
                let mut command = Command::new(&paths.inboxd_bin);
                command
                    .args(["run", "--config"])
                    .arg(&config)
                    .env("INBOXD_BROKER_URLS", urls.join(","))
                    .env("INBOXD_APP_ID", app)
                    .env("INBOXD_BROKER_PREFETCH", prefetch.to_string())
                    .env("INBOXD_HTTP_ADDRESS", "")
                    .env("INBOXD_SHARDS_COUNT", shards.to_string())
                    .env("INBOXD_SHARDS_QUEUE_TYPE", if broker.cluster { "quorum" } else { "classic" })
                    .env("INBOXD_SHARDS_REBALANCE_MS", "500")
                    .env("INBOXD_PIPELINE_DURABLE_IDS", durable_ids.to_string())
                    // The load's group messages list their members inline (chat21's transient
                    // groups, as the relay baseline routes them), from ordinary senders.
                    .env("INBOXD_ROUTING_UNKNOWN_GROUPS", "transient")
                    .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()));
                children.push(spawn(command)?);
            }
            // Sharded: every process consumes `<queue>.processes` (the shard queues report only
            // their active consumer).
            if *shards > 0 { format!("inboxd.{app}.processes") } else { format!("inboxd.{app}") }
        }
    };
    let mut running = Running { children, external_pid: None };
    let consumers = u32::try_from(kind.processes()).unwrap_or(u32::MAX);
    let waited = tokio::time::timeout(START_TIMEOUT, wait_consuming(amqp_url, &queue, consumers, &mut running)).await;
    match waited {
        Ok(result) => result.map(|()| running),
        Err(_) => bail!("{} did not consume from {queue} within {START_TIMEOUT:?}", kind.name()),
    }
}

fn spawn(mut command: Command) -> Result<Child> {
    command.stdin(Stdio::null());
    die_with_parent(&mut command);
    let program = command.as_std().get_program().to_owned();
    command.spawn().with_context(|| format!("spawning {}", program.to_string_lossy()))
}

/// Kills the child when this process goes, however it goes (also on SIGKILL, where
/// `kill_on_drop` cannot run).
pub fn die_with_parent(command: &mut Command) {
    command.kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

async fn wait_consuming(url: &str, queue: &str, consumers: u32, running: &mut Running) -> Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.context("connecting")?;
    let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    loop {
        for child in &mut running.children {
            if let Some(status) = child.try_wait()? {
                bail!("the observer exited at start: {status}");
            }
        }
        // A passive declare of a missing queue closes the channel: a fresh one each time.
        let channel = connection.create_channel().await?;
        if let Ok(q) = channel.queue_declare(queue.into(), passive, FieldTable::default()).await
            && q.consumer_count() >= consumers
        {
            let _ = connection.close(200, "ok".into()).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The example chain, configured to pass benchmark traffic, each plugin on the hook it uses.
const CHAIN: [&str; 3] = [
    "[[plugins.chain]]\nname = \"redactor\"\nfile = \"rust-redactor.wasm\"\nhooks = [\"on-message\"]\n",
    "[[plugins.chain]]\nname = \"blocklist\"\nfile = \"rust-blocklist.wasm\"\nhooks = [\"on-deliver\"]\n\
     config = { blocked = { nobody = [\"mallory\"] } }\n",
    "[[plugins.chain]]\nname = \"ratelimit\"\nfile = \"rust-ratelimit.wasm\"\nhooks = [\"on-message\"]\n\
     config = { max = 4000000000, window_ms = 60000 }\n",
];

/// Writes an inboxd config with the first `plugins` of [`CHAIN`] and the store at `store_url`,
/// and returns its path.
fn write_config(plugins: usize, paths: &Paths, app: &str, store_url: &str) -> Result<PathBuf> {
    if plugins > CHAIN.len() {
        bail!("the example chain has {} plugins, not {plugins}", CHAIN.len());
    }
    if plugins > 0 && !paths.plugin_dir.join("rust-redactor.wasm").exists() {
        bail!("{} has no built plugins: run plugins/build.sh first", paths.plugin_dir.display());
    }
    std::fs::create_dir_all(&paths.work_dir)?;
    let mut toml = format!(
        "[store]\nurl = {}\n\n[plugins]\ndir = {}\ncache_dir = {}\nwatch = false\n\n",
        serde_json::to_string(store_url)?,
        quoted(&paths.plugin_dir),
        quoted(&paths.work_dir.join("plugin-cache"))
    );
    for plugin in &CHAIN[..plugins] {
        toml.push_str(plugin);
    }
    let path = paths.work_dir.join(format!("{app}.toml"));
    std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn quoted(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).unwrap_or_default()
}
