//! One measured run: start the observer, spawn the load processes, sample CPU and memory
//! around the measuring window, merge what the load processes saw into a [`Report`].

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::load::{Outcome, Spec};
use crate::proc_stat::{self, Sample};
use crate::report::{Costs, RSS_EVERY, Report, Setup};
use crate::target::{self, Kind, Paths};

/// The broker a run uses.
#[derive(Clone, Debug)]
pub struct Broker {
    /// One per node; observer process i starts its list at node i.
    pub amqp_urls: Vec<String>,
    pub mqtt_host: String,
    /// One per node; pair i connects to node i.
    pub mqtt_ports: Vec<u16>,
    pub jwt_secret: String,
    pub jwt_kid: String,
    /// The broker nodes' pids, sampled for CPU when known.
    pub pids: Vec<u32>,
    /// Whether the nodes form a cluster (shard queues are then quorum queues).
    pub cluster: bool,
}

/// The load shape of a run.
#[derive(Clone, Debug)]
pub struct Load {
    pub pairs: usize,
    pub group_size: usize,
    pub window: usize,
    /// Total messages per second; 0: as fast as the window allows.
    pub rate: f64,
    pub loaders: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub drain: Duration,
    pub prefetch: u16,
    /// MQTT QoS of the load's publishes and subscriptions (0 or 1).
    pub qos: u8,
}

/// Runs `kind` under `load` on `broker` with a fresh app id and returns the report.
///
/// # Errors
/// When the observer or a load process fails to start, or a load process fails.
pub async fn run(label: &str, kind: &Kind, load: &Load, broker: &Broker, paths: &Paths, app: &str) -> Result<Report> {
    ensure!(load.loaders >= 1 && load.pairs >= load.loaders, "need at least one pair per load process");
    if load.group_size > 0 && matches!(kind, Kind::Relay) {
        bail!("the relay handles direct messages only");
    }
    let observer = target::start(kind, broker, app, load.prefetch, paths).await?;
    let mut loaders = Vec::with_capacity(load.loaders);
    for share in 0..load.loaders {
        let first = load.pairs * share / load.loaders;
        let count = load.pairs * (share + 1) / load.loaders - first;
        let spec = Spec {
            mqtt_host: broker.mqtt_host.clone(),
            mqtt_ports: broker.mqtt_ports.clone(),
            jwt_secret: broker.jwt_secret.clone(),
            jwt_kid: broker.jwt_kid.clone(),
            app: app.to_owned(),
            first,
            count,
            group_size: load.group_size,
            window: load.window,
            rate_per_pair: load.rate / load.pairs as f64,
            warmup_ms: load.warmup.as_millis() as u64,
            measure_ms: load.measure.as_millis() as u64,
            drain_ms: load.drain.as_millis() as u64,
            qos: load.qos,
        };
        loaders.push(Loader::spawn(&spec).await?);
    }
    for loader in &mut loaders {
        loader.expect_line("ready").await?;
    }
    for loader in &mut loaders {
        loader.stdin.write_all(b"go\n").await?;
        loader.stdin.flush().await?;
    }
    tokio::time::sleep(load.warmup).await;
    let pids = observer.pids();
    let before = samples(&pids, &broker.pids);
    let series = rss_series(&pids, load.measure).await;
    let after = samples(&pids, &broker.pids);
    let mut outcomes = Vec::with_capacity(loaders.len());
    for loader in &mut loaders {
        let line = loader.line().await?;
        outcomes.push(serde_json::from_str::<Outcome>(&line).context("a load process's outcome")?);
        let _ = loader.child.wait().await;
    }
    observer.stop().await;
    let costs = costs(&before, &after, series);
    let setup = Setup {
        label,
        target: kind.name(),
        plugins: kind.plugins(),
        observers: kind.processes(),
        pairs: load.pairs,
        group_size: load.group_size,
        window: load.window,
        offered_rate: load.rate,
        measure: load.measure,
    };
    Ok(Report::new(&setup, outcomes, &costs))
}

/// Readings of the observer processes, then of the broker nodes.
type Readings = (Vec<Option<Sample>>, Vec<Option<Sample>>);

fn samples(pids: &[u32], broker: &[u32]) -> Readings {
    let read = |pids: &[u32]| pids.iter().map(|pid| proc_stat::sample(*pid).ok()).collect();
    (read(pids), read(broker))
}

/// CPU used between two readings of the same processes, if every one was read both times.
fn cpu_between(before: &[Option<Sample>], after: &[Option<Sample>]) -> Option<Duration> {
    let used: Option<Vec<Duration>> =
        before.iter().zip(after).map(|(b, a)| Some(a.as_ref()?.cpu.saturating_sub(b.as_ref()?.cpu))).collect();
    used.filter(|used| !used.is_empty()).map(|used| used.into_iter().sum())
}

fn costs(before: &Readings, after: &Readings, observer_rss_series_kib: Vec<u64>) -> Costs {
    let last = after.0.iter().flatten();
    Costs {
        observer_cpu: cpu_between(&before.0, &after.0),
        observer_rss_kib: last.clone().map(|a| a.rss_kib).sum(),
        observer_peak_rss_kib: last.map(|a| a.peak_rss_kib).max().unwrap_or(0),
        observer_rss_series_kib,
        broker_cpu: cpu_between(&before.1, &after.1),
    }
}

/// Waits out the window `measure`, reading the observer processes' resident memory (summed)
/// at its start and every [`RSS_EVERY`].
async fn rss_series(pids: &[u32], measure: Duration) -> Vec<u64> {
    let rss = || pids.iter().filter_map(|pid| proc_stat::sample(*pid).ok()).map(|s| s.rss_kib).sum();
    let end = tokio::time::Instant::now() + measure;
    let mut series = vec![rss()];
    while tokio::time::Instant::now() + RSS_EVERY <= end {
        tokio::time::sleep(RSS_EVERY).await;
        series.push(rss());
    }
    tokio::time::sleep_until(end).await;
    series
}

/// A load process (`inboxd-bench load`), driven over its stdin and stdout.
struct Loader {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Loader {
    async fn spawn(spec: &Spec) -> Result<Loader> {
        let exe = std::env::current_exe().context("locating inboxd-bench")?;
        let mut command = Command::new(exe);
        command.arg("load").stdin(Stdio::piped()).stdout(Stdio::piped());
        target::die_with_parent(&mut command);
        let mut child = command.spawn().context("spawning a load process")?;
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("a load process without pipes");
        };
        let mut line = serde_json::to_vec(spec)?;
        line.push(b'\n');
        stdin.write_all(&line).await?;
        Ok(Loader { child, stdin, stdout: BufReader::new(stdout) })
    }

    async fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line).await? == 0 {
            bail!("a load process ended early: {:?}", self.child.wait().await?);
        }
        Ok(line)
    }

    async fn expect_line(&mut self, expected: &str) -> Result<()> {
        let line = self.line().await?;
        ensure!(line.trim() == expected, "a load process said {line:?}, not {expected:?}");
        Ok(())
    }
}

/// The `load` subcommand: reads a [`Spec`] line, connects, says `ready`, waits for `go`,
/// runs and prints the [`Outcome`] as one JSON line.
///
/// # Errors
/// When the spec is unreadable or the load fails.
pub async fn load_process() -> Result<()> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let spec: Spec = serde_json::from_str(&input.next_line().await?.context("no spec on stdin")?)?;
    let start = async move {
        let mut stdout = tokio::io::stdout();
        stdout.write_all(b"ready\n").await?;
        stdout.flush().await?;
        match input.next_line().await? {
            Some(line) if line == "go" => Ok(()),
            other => bail!("expected go, got {other:?}"),
        }
    };
    let outcome = crate::load::run(spec, start).await?;
    let mut line = serde_json::to_vec(&outcome)?;
    line.push(b'\n');
    let mut stdout = tokio::io::stdout();
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    Ok(())
}
