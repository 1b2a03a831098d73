//! Bounded polling, for what a test cannot wait on directly (a queue's consumers, an HTTP
//! status, a stored row, a metric). Wait on a delivery with a timeout on the receiver instead.

use std::fmt::Display;
use std::time::Duration;

use anyhow::Result;
use tokio::time::{Instant, sleep};

/// Pause between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `check` until it returns `Ok`, for at most `within` (at least once), and returns that
/// value. A check bounds its own waits (every receive and request of the harness has a bound).
///
/// # Errors
///
/// The last check's error, with the context "`what`: still failing after `within` (n checks)".
pub async fn eventually<T>(
    within: Duration,
    what: impl Display,
    mut check: impl AsyncFnMut() -> Result<T>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    let mut checks = 0_u32;
    loop {
        checks += 1;
        let error = match check().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(error.context(format!("{what}: still failing after {within:?} ({checks} checks)")));
        }
        sleep(POLL_INTERVAL).await;
    }
}
