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

/// The versus run's JSON: every row, and the performance issue's targets worked out.
#[derive(Serialize)]
struct Versus {
    rows: Vec<Report>,
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

/// chat21-server, then inboxd with the SQLite store on and off, with no plugins and with the
/// example 3-plugin chain, one after the other at the same load on one broker.
pub async fn versus(common: &Common, chat21_cmd: &str) -> Result<()> {
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
    for (label, kind) in &targets {
        rows.push(measure(label, kind, &load, &broker, &paths).await?);
    }
    eprintln!();
    report::print_table(&rows);
    let throughput = |row: usize| rows[row].messages_per_s.max(f64::EPSILON);
    let cpu = |row: usize| rows[row].observer.as_ref().map(|cost| cost.cpu_us_per_message);
    let versus = Versus {
        store_throughput_ratio: throughput(1) / throughput(2),
        times_chat21_with_store: throughput(1) / throughput(0),
        times_chat21_without_store: throughput(2) / throughput(0),
        cpu_ratio_store_3_plugins: cpu(4).zip(cpu(0)).map(|(inboxd, chat21)| inboxd / chat21.max(f64::EPSILON)),
        peak_rss_mib_store_3_plugins: rows[4].observer.as_ref().map(|cost| cost.peak_rss_mib),
        rows,
    };
    eprintln!(
        "store on/off {:.0}%, ×chat21 {:.2} (store) {:.2} (none), CPU/msg SQLite+3 plugins ÷ chat21 {}, peak RSS {} MiB",
        versus.store_throughput_ratio * 100.0,
        versus.times_chat21_with_store,
        versus.times_chat21_without_store,
        versus.cpu_ratio_store_3_plugins.map_or_else(|| "-".into(), |v| format!("{v:.2}")),
        versus.peak_rss_mib_store_3_plugins.map_or_else(|| "-".into(), |v| format!("{v:.1}")),
    );
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
