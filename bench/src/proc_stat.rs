//! What a process costs, read from /proc: CPU time (user + system, all threads) and memory
//! (resident now and at its peak), for the observer, the broker and the load tool itself.

use std::fs;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub cpu: Duration,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
}

/// Reads `pid`'s CPU time and memory now.
///
/// # Errors
/// When the process is gone or /proc is not readable.
pub fn sample(pid: u32) -> Result<Sample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name may contain spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else { bail!("unexpected /proc/{pid}/stat") };
    let ticks: u64 = utime.parse::<u64>()? + stime.parse::<u64>()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    let cpu = Duration::from_micros(ticks * 1_000_000 / per_second);
    let status =
        fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(Sample { cpu, rss_kib: kib("VmRSS:"), peak_rss_kib: kib("VmHWM:") })
}

/// The Erlang VM (`beam.smp`) of the RabbitMQ node whose data lives in `dir` (its `-home`).
pub fn find_beam(dir: &std::path::Path) -> Option<u32> {
    let home = format!("-home {}", dir.join("home").display());
    let home = home.replace(' ', "\0");
    let contains = |haystack: &[u8], needle: &str| haystack.windows(needle.len()).any(|w| w == needle.as_bytes());
    fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
        (contains(&cmdline, "beam.smp") && contains(&cmdline, &home)).then_some(pid)
    })
}
