//! The side-by-side benchmark (relay vs inboxd with 0 and 3 plugins, at full speed and at half
//! the relay's rate, on one broker) and the smoke run the test command uses.

use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::Common;
use crate::report::{self, Report};
use crate::run::{self, Broker, Load};
use crate::target::{Kind, Paths};

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
