//! The side-by-side benchmarks (relay vs inboxd with 0 and 3 plugins, at full speed and at half
//! the relay's rate; chat21-server vs inboxd as users run it), each on one broker, and the smoke
//! run the test command uses.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::Common;
use crate::report::{self, Report};
use crate::run::{self, Broker, Load};
use crate::target::{Kind, Paths, Store};

/// The compare run's JSON: every row, and the targets of the performance issue worked out.
#[derive(Serialize)]
struct Comparison {
    rows: Vec<Report>,
    /// inboxd (3 plugins) throughput ÷ relay throughput, at full speed.
    throughput_ratio_3_plugins: f64,
    /// inboxd (3 plugins) CPU per message, microseconds.
    cpu_us_per_message_3_plugins: Option<f64>,
    /// inboxd p99 − relay p99 at half the relay's rate, milliseconds.
    p99_gap_at_half_rate_ms: f64,
    /// inboxd's resident memory at half rate, MiB.
    rss_mib_at_half_rate: Option<f64>,
}

pub async fn compare(common: &Common) -> Result<()> {
    let (broker, _node) = common.broker().await?;
    let paths = common.paths()?;
    let load = common.load();
    let (zero, three) = (common.inboxd(0, 1)?, common.inboxd(3, 1)?);
    let mut rows = Vec::new();
    rows.push(measure("relay", &Kind::Relay, &load, &broker, &paths).await?);
    rows.push(measure("inboxd 0 plugins", &zero, &load, &broker, &paths).await?);
    rows.push(measure("inboxd 3 plugins", &three, &load, &broker, &paths).await?);
    let half = Load { rate: rows[0].messages_per_s / 2.0, ..load.clone() };
    rows.push(measure("relay @50%", &Kind::Relay, &half, &broker, &paths).await?);
    rows.push(measure("inboxd 3 plugins @50%", &three, &half, &broker, &paths).await?);
    eprintln!();
    report::print_table(&rows);
    let comparison = Comparison {
        throughput_ratio_3_plugins: rows[2].messages_per_s / rows[0].messages_per_s.max(f64::EPSILON),
        cpu_us_per_message_3_plugins: rows[2].observer.as_ref().map(|o| o.cpu_us_per_message),
        p99_gap_at_half_rate_ms: rows[4].latency.p99_ms - rows[3].latency.p99_ms,
        rss_mib_at_half_rate: rows[4].observer.as_ref().map(|o| o.rss_mib),
        rows,
    };
    eprintln!(
        "inboxd/relay throughput {:.0}%, inboxd CPU {} µs/msg, p99 gap at 50% {:+.2} ms, RSS {} MiB",
        comparison.throughput_ratio_3_plugins * 100.0,
        comparison.cpu_us_per_message_3_plugins.map_or_else(|| "-".into(), |v| format!("{v:.1}")),
        comparison.p99_gap_at_half_rate_ms,
        comparison.rss_mib_at_half_rate.map_or_else(|| "-".into(), |v| format!("{v:.1}")),
    );
    let path = report::write_json(&common.out, "compare", &comparison)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// The versus run's JSON: every row of every round, the performance issue's targets worked out
/// for each round (its rows ran side by side), and their medians.
#[derive(Serialize)]
struct Versus {
    rows: Vec<Report>,
    rounds: Vec<Targets>,
    median: Targets,
}

/// The performance issue's targets, worked out from one round's rows.
#[derive(Clone, Serialize)]
struct Targets {
    /// inboxd default (SQLite, no plugins) throughput ÷ inboxd without a store (target ≥ 0.9).
    store_throughput_ratio: f64,
    /// inboxd throughput ÷ chat21-server's, with and without the store (target ≥ 2.5).
    times_chat21_with_store: f64,
    times_chat21_without_store: f64,
    /// inboxd (SQLite, 3 plugins) CPU per message ÷ chat21-server's (target ≤ 0.25).
    cpu_ratio_store_3_plugins: Option<f64>,
    /// inboxd (SQLite, 3 plugins) peak resident memory, MiB (target ≤ 64).
    peak_rss_mib_store_3_plugins: Option<f64>,
}

impl Targets {
    /// From one round's rows, in [`versus`]'s order of targets.
    fn of(rows: &[Report]) -> Targets {
        let throughput = |row: usize| rows[row].messages_per_s.max(f64::EPSILON);
        let cpu = |row: usize| rows[row].observer.as_ref().map(|cost| cost.cpu_us_per_message);
        Targets {
            store_throughput_ratio: throughput(1) / throughput(2),
            times_chat21_with_store: throughput(1) / throughput(0),
            times_chat21_without_store: throughput(2) / throughput(0),
            cpu_ratio_store_3_plugins: cpu(4).zip(cpu(0)).map(|(inboxd, chat21)| inboxd / chat21.max(f64::EPSILON)),
            peak_rss_mib_store_3_plugins: rows[4].observer.as_ref().map(|cost| cost.peak_rss_mib),
        }
    }

    /// Each target's median over `rounds` (the upper median of an even count).
    fn median(rounds: &[Targets]) -> Targets {
        let of = |value: fn(&Targets) -> Option<f64>| {
            let mut values: Vec<f64> = rounds.iter().filter_map(value).collect();
            values.sort_by(f64::total_cmp);
            values.get(values.len() / 2).copied()
        };
        Targets {
            store_throughput_ratio: of(|t| Some(t.store_throughput_ratio)).unwrap_or_default(),
            times_chat21_with_store: of(|t| Some(t.times_chat21_with_store)).unwrap_or_default(),
            times_chat21_without_store: of(|t| Some(t.times_chat21_without_store)).unwrap_or_default(),
            cpu_ratio_store_3_plugins: of(|t| t.cpu_ratio_store_3_plugins),
            peak_rss_mib_store_3_plugins: of(|t| t.peak_rss_mib_store_3_plugins),
        }
    }

    fn print(&self, what: &str) {
        let or_dash = |value: Option<f64>, digits: usize| value.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"));
        eprintln!(
            "{what}: store on/off {:.0}%, ×chat21 {:.2} (store) {:.2} (none), CPU/msg SQLite+3 plugins ÷ chat21 {}, peak RSS {} MiB",
            self.store_throughput_ratio * 100.0,
            self.times_chat21_with_store,
            self.times_chat21_without_store,
            or_dash(self.cpu_ratio_store_3_plugins, 2),
            or_dash(self.peak_rss_mib_store_3_plugins, 1),
        );
    }
}

/// chat21-server, then inboxd with the SQLite store on and off, with no plugins and with the
/// example 3-plugin chain, one after the other at the same load on one broker; `rounds` times,
/// every other round in reverse order.
pub async fn versus(common: &Common, chat21_cmd: &str, rounds: u32) -> Result<()> {
    let (broker, _node) = common.broker().await?;
    let paths = common.paths()?;
    let load = common.load();
    let durable_ids = common.durable_ids;
    let inboxd = |plugins, store| Kind::Inboxd { plugins, processes: 1, shards: 0, store, durable_ids };
    let chat21 = Kind::Command { command: chat21_cmd.to_owned(), queue: "messages".to_owned() };
    let targets = [
        ("chat21-server 0.2.21", chat21),
        ("inboxd default (SQLite)", inboxd(0, Store::Sqlite)),
        ("inboxd store none", inboxd(0, Store::None)),
        ("inboxd none + 3 plugins", inboxd(3, Store::None)),
        ("inboxd SQLite + 3 plugins", inboxd(3, Store::Sqlite)),
    ];
    let mut rows = Vec::new();
    let mut per_round = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut measured: Vec<Option<Report>> = targets.iter().map(|_| None).collect();
        for index in order {
            let (label, kind) = &targets[index];
            measured[index] = Some(measure(label, kind, &load, &broker, &paths).await?);
        }
        let measured: Vec<Report> = measured.into_iter().flatten().collect();
        let targets = Targets::of(&measured);
        if rounds > 1 {
            targets.print(&format!("round {}", round + 1));
        }
        per_round.push(targets);
        rows.extend(measured);
    }
    eprintln!();
    report::print_table(&rows);
    let median = Targets::median(&per_round);
    median.print(if rounds > 1 { "median of the rounds" } else { "targets" });
    let versus = Versus { rows, rounds: per_round, median };
    let path = report::write_json(&common.out, "versus", &versus)?;
    eprintln!("written to {}", path.display());
    Ok(())
}

/// A few hundred messages through inboxd with the 3 example plugins, at a modest rate.
pub async fn smoke(common: &Common) -> Result<()> {
    let (broker, _node) = common.broker().await?;
    let load = Load {
        pairs: 4,
        window: 10,
        rate: 200.0,
        warmup: Duration::from_millis(500),
        measure: Duration::from_secs(2),
        ..common.load()
    };
    let report = measure("smoke: inboxd 3 plugins", &common.inboxd(3, 1)?, &load, &broker, &common.paths()?).await?;
    report::write_json(&common.out, "smoke", &report)?;
    if report.sent < 100 || report.accepted < report.sent || report.lost > 0 {
        bail!(
            "smoke run failed: {} sent, {} accepted by the broker, {} of {} copies lost",
            report.sent,
            report.accepted,
            report.lost,
            report.expected
        );
    }
    eprintln!("smoke run ok: {} messages sent, none lost ({} duplicates)", report.sent, report.duplicates);
    Ok(())
}

async fn measure(label: &str, kind: &Kind, load: &Load, broker: &Broker, paths: &Paths) -> Result<Report> {
    let app = inboxd_e2e::unique_id("bench");
    let report = run::run(label, kind, load, broker, paths, &app).await?;
    eprintln!("{}", report::row(&report));
    Ok(report)
}
