//! A run's figures: merged from the load processes and the /proc samples, printed as one table
//! row and written as JSON under target/bench/.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::load::Outcome;

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    fn of(latencies_us: &mut [u64]) -> Latency {
        latencies_us.sort_unstable();
        let at = |q: f64| {
            let index = ((latencies_us.len() as f64 - 1.0) * q).round() as usize;
            latencies_us.get(index).map_or(0.0, |us| *us as f64 / 1000.0)
        };
        Latency { p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// What a process cost during the measuring window.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cost {
    /// CPU used, in cores (1.0 = one core busy all the time).
    pub cpu_cores: f64,
    /// CPU per delivered chat message, in microseconds.
    pub cpu_us_per_message: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Resident memory every [`RSS_EVERY`] of the window, from its start (flatness over long runs).
    pub rss_mib_series: Vec<f64>,
}

/// How often the observer's resident memory is read during the window.
pub const RSS_EVERY: Duration = Duration::from_secs(10);

/// One run of one target.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub label: String,
    pub target: String,
    pub plugins: usize,
    pub observers: usize,
    pub pairs: usize,
    pub group_size: usize,
    pub window: usize,
    /// Offered load in messages per second (0: as fast as the window allows).
    pub offered_rate: f64,
    pub loaders: usize,
    pub measure_s: f64,
    /// Chat messages fully handled per second during the window (copies ÷ receivers per message).
    pub messages_per_s: f64,
    /// Copies received per second during the window.
    pub copies_per_s: f64,
    pub latency: Latency,
    /// The slowest copy sent in each second of the window, in milliseconds: where a stall was.
    pub max_ms_by_second: Vec<f64>,
    pub sent: u64,
    /// Sent messages the broker accepted (PUBACK); losses are counted against these.
    pub accepted: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub observer: Option<Cost>,
    pub broker_cpu_cores: Option<f64>,
    /// The load processes' CPU, in cores.
    pub tool_cpu_cores: f64,
}

/// The run's settings the report repeats.
pub struct Setup<'a> {
    pub label: &'a str,
    pub target: &'a str,
    pub plugins: usize,
    pub observers: usize,
    pub pairs: usize,
    pub group_size: usize,
    pub window: usize,
    pub offered_rate: f64,
    pub measure: Duration,
}

/// Observer and broker CPU and memory over the window, from /proc.
pub struct Costs {
    pub observer_cpu: Option<Duration>,
    pub observer_rss_kib: u64,
    pub observer_peak_rss_kib: u64,
    /// The observer processes' resident memory every [`RSS_EVERY`] of the window.
    pub observer_rss_series_kib: Vec<u64>,
    pub broker_cpu: Option<Duration>,
}

impl Report {
    /// Merges the load processes' outcomes with the costs sampled around the window.
    pub fn new(setup: &Setup<'_>, outcomes: Vec<Outcome>, costs: &Costs) -> Report {
        let loaders = outcomes.len();
        let mut total = Outcome::default();
        for mut outcome in outcomes {
            total.sent += outcome.sent;
            total.accepted += outcome.accepted;
            total.expected += outcome.expected;
            total.received += outcome.received;
            total.unique += outcome.unique;
            total.window_received += outcome.window_received;
            total.cpu_window_us += outcome.cpu_window_us;
            total.latencies_us.append(&mut outcome.latencies_us);
            if total.max_by_second_us.len() < outcome.max_by_second_us.len() {
                total.max_by_second_us.resize(outcome.max_by_second_us.len(), 0);
            }
            for (slowest, theirs) in total.max_by_second_us.iter_mut().zip(&outcome.max_by_second_us) {
                *slowest = (*slowest).max(*theirs);
            }
        }
        let seconds = setup.measure.as_secs_f64();
        let receivers = if setup.group_size == 0 { 1 } else { setup.group_size - 1 } as f64;
        let messages = total.window_received as f64 / receivers;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let observer = costs.observer_cpu.map(|cpu| Cost {
            cpu_cores: cpu.as_secs_f64() / seconds,
            cpu_us_per_message: cpu.as_micros() as f64 / messages.max(1.0),
            rss_mib: mib(costs.observer_rss_kib),
            peak_rss_mib: mib(costs.observer_peak_rss_kib),
            rss_mib_series: costs.observer_rss_series_kib.iter().map(|kib| mib(*kib)).collect(),
        });
        Report {
            label: setup.label.to_owned(),
            target: setup.target.to_owned(),
            plugins: setup.plugins,
            observers: setup.observers,
            pairs: setup.pairs,
            group_size: setup.group_size,
            window: setup.window,
            offered_rate: setup.offered_rate,
            loaders,
            measure_s: seconds,
            messages_per_s: messages / seconds,
            copies_per_s: total.window_received as f64 / seconds,
            latency: Latency::of(&mut total.latencies_us),
            max_ms_by_second: total.max_by_second_us.iter().map(|us| *us as f64 / 1000.0).collect(),
            sent: total.sent,
            accepted: total.accepted,
            expected: total.expected,
            received: total.received,
            lost: total.expected.saturating_sub(total.unique),
            duplicates: total.received - total.unique,
            observer,
            broker_cpu_cores: costs.broker_cpu.map(|cpu| cpu.as_secs_f64() / seconds),
            tool_cpu_cores: total.cpu_window_us as f64 / 1e6 / seconds,
        }
    }
}

/// The table header matching [`row`].
pub fn header() -> String {
    format!(
        "{:<26} {:>9} {:>8} {:>8} {:>8} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "run",
        "msg/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dup",
        "obs CPU",
        "µs/msg",
        "RSS MiB",
        "peak MiB",
        "broker",
        "tool"
    )
}

/// One report as a table row (CPU columns in % of one core).
pub fn row(report: &Report) -> String {
    let percent = |cores: Option<f64>| cores.map_or_else(|| "-".to_owned(), |c| format!("{:.0}%", c * 100.0));
    let observer = report.observer.as_ref();
    format!(
        "{:<26} {:>9.0} {:>8.2} {:>8.2} {:>8.2} {:>6} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        report.label,
        report.messages_per_s,
        report.latency.p50_ms,
        report.latency.p99_ms,
        report.latency.max_ms,
        report.lost,
        report.duplicates,
        percent(observer.map(|o| o.cpu_cores)),
        observer.map_or_else(|| "-".to_owned(), |o| format!("{:.1}", o.cpu_us_per_message)),
        observer.map_or_else(|| "-".to_owned(), |o| format!("{:.1}", o.rss_mib)),
        observer.map_or_else(|| "-".to_owned(), |o| format!("{:.1}", o.peak_rss_mib)),
        percent(report.broker_cpu_cores),
        percent(Some(report.tool_cpu_cores)),
    )
}

/// Prints the header and one row per report to stderr.
pub fn print_table(reports: &[Report]) {
    eprintln!("{}", header());
    for report in reports {
        eprintln!("{}", row(report));
    }
}

/// Prints the observer's resident memory over the window, one reading a minute, when the window
/// is a minute or longer (the JSON has every reading).
pub fn print_rss_series(report: &Report) {
    let Some(series) = report.observer.as_ref().map(|o| &o.rss_mib_series) else { return };
    let per_minute = (60 / RSS_EVERY.as_secs()) as usize;
    if series.len() <= per_minute {
        return;
    }
    let minutes: Vec<String> = series.iter().step_by(per_minute).map(|mib| format!("{mib:.1}")).collect();
    let highest = series.iter().copied().fold(0.0, f64::max);
    eprintln!("RSS MiB at each minute of the window: {} (highest reading {highest:.1})", minutes.join(" "));
}

/// Writes `value` as pretty JSON to `dir/<name>-<unix seconds>.json` and returns the path.
///
/// # Errors
/// When the directory or file cannot be written.
pub fn write_json(dir: &Path, name: &str, value: &impl Serialize) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let path = dir.join(format!("{name}-{stamp}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
