//! inboxd-bench: the end-to-end load tool. MQTT users with real JWTs drive a chat21 observer
//! (inboxd, the relay baseline, or an external one) on a RabbitMQ node; it reports what arrived.

#[path = "../../plugins/built.rs"]
mod built;
mod compare;
mod load;
mod proc_stat;
mod relay;
mod report;
mod run;
mod target;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use inboxd_e2e::Cluster;
use inboxd_e2e::PrivateNode;

use crate::run::{Broker, Load};
use crate::target::{Kind, Paths};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measures one observer.
    Run {
        /// inboxd, relay, command (an observer --observer-cmd starts) or external (one already
        /// running).
        #[arg(long, default_value = "inboxd")]
        target: String,
        /// command: the observer's command line, run by `sh -c` with BENCH_AMQP_URL, BENCH_APP
        /// and BENCH_PREFETCH set (e.g. `node bench/chat21/observer.js` for chat21-server).
        #[arg(long)]
        observer_cmd: Option<String>,
        /// command: the queue it consumes, to know when it has started.
        #[arg(long, default_value = "messages")]
        observer_queue: String,
        /// inboxd: how many of the example plugins (redactor, blocklist, rate limiter) to chain.
        #[arg(long, default_value_t = 3)]
        plugins: usize,
        /// inboxd: how many processes to start on the same queue.
        #[arg(long, default_value_t = 1)]
        observers: usize,
        /// external: the observer's pid, to sample its CPU and memory.
        #[arg(long)]
        observer_pid: Option<u32>,
        /// external: the app id the observer serves.
        #[arg(long)]
        app: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// relay, inboxd with 0 and with 3 plugins at full speed, then relay and inboxd at half the
    /// relay's rate; one table, one JSON file.
    Compare {
        #[command(flatten)]
        common: Common,
    },
    /// chat21-server 0.2.21 (bench/chat21, its MongoDB answered in memory) and inboxd as users
    /// run it (SQLite store on or off, no plugins or the 3-plugin chain), one after the other on
    /// one broker at the same load; one table, one JSON file. Use with `--preset chat21`.
    Versus {
        /// The chat21-server observer's command line (see `run --observer-cmd`).
        #[arg(long, default_value = concat!("node ", env!("CARGO_MANIFEST_DIR"), "/chat21/observer.js"))]
        chat21_cmd: String,
        /// Rounds of the five rows, every other one in reverse order (the machine state drifts
        /// over minutes); the targets are worked out per round, and their medians reported.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
        rounds: u32,
        #[command(flatten)]
        common: Common,
    },
    /// A short run through inboxd with 3 plugins (a few hundred messages); fails if any is lost.
    Smoke {
        #[command(flatten)]
        common: Common,
    },
    /// (internal) The relay baseline observer.
    #[command(hide = true)]
    Relay {
        #[arg(long)]
        url: String,
        #[arg(long)]
        app: String,
        #[arg(long)]
        prefetch: u16,
    },
    /// (internal) One load process, driven over stdin/stdout.
    #[command(hide = true)]
    Load,
}

/// Named load shapes.
#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The shape of the performance issue's comparison with chat21-server: 10 sender/recipient
    /// pairs with 5 messages in flight each, MQTT QoS 0 (as chat21's clients publish).
    Chat21,
    /// Many users: 200 sender/recipient pairs (400 users) with one message in flight each, QoS
    /// 0: as many messages in flight as 10 pairs × 20, but a commit writes ~2.7 pages a message.
    Many,
}

#[derive(Args, Clone)]
struct Common {
    /// A named load shape; it sets --pairs, --window, --qos and --group-size (given values of
    /// those are ignored).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// MQTT QoS of the load's publishes and subscriptions: 0 or 1.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    qos: u8,
    /// Sender/recipient pairs (or groups with --group-size).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Group messages to groups of this many users (one sender); 0: direct messages.
    #[arg(long, default_value_t = 0)]
    group_size: usize,
    /// Messages a pair may have in flight (sent, not yet received).
    #[arg(long, default_value_t = 20)]
    window: usize,
    /// Total messages per second; 0: as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Load processes to split the pairs over.
    #[arg(long, default_value_t = 1)]
    loaders: usize,
    #[arg(long, default_value_t = 3.0)]
    warmup_s: f64,
    #[arg(long, default_value_t = 15.0)]
    measure_s: f64,
    #[arg(long, default_value_t = 30.0)]
    drain_s: f64,
    /// The observer's prefetch, the same for every observer (inboxd's default; chat21-server's
    /// own is 10).
    #[arg(long, default_value_t = 1024)]
    prefetch: u16,
    /// Where JSON results go.
    #[arg(long, default_value = default_out())]
    out: PathBuf,
    /// The inboxd binary (default: next to this one).
    #[arg(long)]
    inboxd_bin: Option<PathBuf>,
    /// Built example plugins (default: INBOXD_TEST_PLUGINS or target/plugins).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Use this broker instead of starting a private node: AMQP URL (admin rights for spawned
    /// observers); needs --mqtt-port, --jwt-secret and --jwt-kid too.
    #[arg(long)]
    amqp_url: Option<String>,
    #[arg(long, default_value = "127.0.0.1")]
    mqtt_host: String,
    #[arg(long)]
    mqtt_port: Option<u16>,
    #[arg(long)]
    jwt_secret: Option<String>,
    #[arg(long)]
    jwt_kid: Option<String>,
    /// The external broker's pid, to sample its CPU.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Start a private cluster of this many nodes instead of one node (pairs and observer
    /// processes are spread over the nodes; shard queues are quorum queues).
    #[arg(long, default_value_t = 1)]
    cluster: usize,
    /// inboxd: shard queues (`[shards] count`); 0: the one queue.
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// inboxd: where history is kept: none, sqlite (a fresh file) or a postgres:// URL.
    #[arg(long, default_value = "none")]
    store: String,
    /// inboxd with a store: commit each message's id before publishing its copies
    /// (`pipeline.durable_ids`); `false` to measure what that costs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    durable_ids: bool,
}

fn default_out() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench")
}

impl Common {
    fn load(&self) -> Load {
        let (pairs, window, qos, group_size) = match self.preset {
            Some(Preset::Chat21) => (10, 5, 0, 0),
            Some(Preset::Many) => (200, 1, 0, 0),
            None => (self.pairs, self.window, self.qos, self.group_size),
        };
        Load {
            pairs,
            group_size,
            window,
            qos,
            rate: self.rate,
            loaders: self.loaders,
            warmup: Duration::from_secs_f64(self.warmup_s),
            measure: Duration::from_secs_f64(self.measure_s),
            drain: Duration::from_secs_f64(self.drain_s),
            prefetch: self.prefetch,
        }
    }

    fn paths(&self) -> Result<Paths> {
        let inboxd_bin = match &self.inboxd_bin {
            Some(path) => path.clone(),
            None => std::env::current_exe()?.with_file_name("inboxd"),
        };
        if !inboxd_bin.exists() {
            bail!("{} does not exist: build inboxd in the same profile, or pass --inboxd-bin", inboxd_bin.display());
        }
        let plugin_dir = self.plugin_dir.clone().unwrap_or_else(built::built_plugins_dir);
        Ok(Paths { inboxd_bin, plugin_dir, work_dir: self.out.join("work") })
    }

    /// An inboxd target as configured by the common options.
    fn inboxd(&self, plugins: usize, processes: usize) -> Result<Kind> {
        let store = target::Store::parse(&self.store)?;
        Ok(Kind::Inboxd {
            plugins,
            processes: processes.max(1),
            shards: self.shards,
            store,
            durable_ids: self.durable_ids,
        })
    }

    /// The given broker, or private nodes (kept alive by the guard): one, or a cluster.
    async fn broker(&self) -> Result<(Broker, Nodes)> {
        if let Some(amqp_url) = &self.amqp_url {
            let (Some(mqtt_port), Some(jwt_secret), Some(jwt_kid)) = (self.mqtt_port, &self.jwt_secret, &self.jwt_kid)
            else {
                bail!("--amqp-url needs --mqtt-port, --jwt-secret and --jwt-kid");
            };
            let broker = Broker {
                amqp_urls: vec![amqp_url.clone()],
                mqtt_host: self.mqtt_host.clone(),
                mqtt_ports: vec![mqtt_port],
                jwt_secret: jwt_secret.clone(),
                jwt_kid: jwt_kid.clone(),
                pids: self.broker_pid.into_iter().collect(),
                cluster: false,
            };
            return Ok((broker, Nodes::default()));
        }
        if self.cluster > 1 {
            let cluster = Cluster::start(self.cluster).await.context("starting a private RabbitMQ cluster")?;
            let nodes: Vec<&PrivateNode> = (0..self.cluster).map(|i| cluster.node(i)).collect();
            let broker = Broker {
                amqp_urls: cluster.amqp_urls(),
                mqtt_host: "127.0.0.1".into(),
                mqtt_ports: nodes.iter().map(|node| node.mqtt_port()).collect(),
                jwt_secret: nodes[0].jwt_secret().to_owned(),
                jwt_kid: nodes[0].jwt_kid().to_owned(),
                pids: nodes.iter().filter_map(|node| proc_stat::find_beam(node.dir())).collect(),
                cluster: true,
            };
            return Ok((broker, Nodes { _cluster: Some(cluster), ..Nodes::default() }));
        }
        let work = self.out.join("work");
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        // Canonical, so the node's command line (which names its home) can be recognised.
        let dir = work.canonicalize()?.join(inboxd_e2e::unique_id("node"));
        let node = PrivateNode::start(&dir).await.context("starting a private RabbitMQ node")?;
        let broker = Broker {
            amqp_urls: vec![node.amqp_url()],
            mqtt_host: "127.0.0.1".into(),
            mqtt_ports: vec![node.mqtt_port()],
            jwt_secret: node.jwt_secret().to_owned(),
            jwt_kid: node.jwt_kid().to_owned(),
            pids: proc_stat::find_beam(node.dir()).into_iter().collect(),
            cluster: false,
        };
        Ok((broker, Nodes { _node: Some(node), ..Nodes::default() }))
    }
}

/// The private broker nodes of a run (none for an external broker), stopped when dropped.
#[derive(Default)]
struct Nodes {
    _node: Option<PrivateNode>,
    _cluster: Option<Cluster>,
}

/// The observer `run --target` names.
struct Target {
    name: String,
    plugins: usize,
    observers: usize,
    observer_pid: Option<u32>,
    observer_cmd: Option<String>,
    observer_queue: String,
}

fn kind(common: &Common, target: Target) -> Result<Kind> {
    Ok(match target.name.as_str() {
        "inboxd" => common.inboxd(target.plugins, target.observers)?,
        "relay" => Kind::Relay,
        "command" => {
            let Some(command) = target.observer_cmd else { bail!("--target command needs --observer-cmd") };
            Kind::Command { command, queue: target.observer_queue }
        }
        "external" => Kind::External { pid: target.observer_pid },
        other => bail!("unknown target {other:?}: inboxd, relay, command or external"),
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Relay { url, app, prefetch } => relay::run(&url, &app, prefetch).await,
        Command::Load => run::load_process().await,
        Command::Run { target, plugins, observers, observer_pid, observer_cmd, observer_queue, app, common } => {
            let name = target.clone();
            let kind = kind(&common, Target { name, plugins, observers, observer_pid, observer_cmd, observer_queue })?;
            let app = match (&kind, app) {
                (_, Some(app)) => app,
                (Kind::External { .. }, None) => bail!("--target external needs --app"),
                _ => inboxd_e2e::unique_id("bench"),
            };
            let (broker, node) = common.broker().await?;
            let label = match &kind {
                Kind::Inboxd { durable_ids: false, .. } => format!("{target}, durable ids off"),
                _ => target.clone(),
            };
            let report = run::run(&label, &kind, &common.load(), &broker, &common.paths()?, &app).await?;
            drop(node);
            report::print_table(std::slice::from_ref(&report));
            report::print_rss_series(&report);
            let path = report::write_json(&common.out, &format!("run-{target}"), &report)?;
            eprintln!("written to {}", path.display());
            Ok(())
        }
        Command::Compare { common } => compare::compare(&common).await,
        Command::Versus { chat21_cmd, rounds, common } => compare::versus(&common, &chat21_cmd, rounds).await,
        Command::Smoke { common } => compare::smoke(&common).await,
    }
}
