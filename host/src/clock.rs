//! Time as inboxd reads it: the one wall clock (milliseconds since the epoch, as chat21 stamps
//! messages) and the one retry pacing (capped exponential backoff with jitter).

use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 before it, `i64::MAX` past it).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Seconds since the Unix epoch (JWT `iat`/`exp`).
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Exponential backoff with jitter between `initial` and `max`.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, current: initial }
    }

    /// The next delay: a random point in the upper half of the current step, which then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.current;
        self.current = (self.current * 2).min(self.max);
        let jitter = RandomState::new().hash_one(step) % 1000;
        step / 2 + step.mul_f64(jitter as f64 / 2000.0)
    }

    /// Back to the first step, after an attempt that worked.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }

    /// The step before retry `attempt` (1 for the first retry) without jitter, for retries
    /// scheduled in a store rather than slept: `initial` × 2^(attempt − 1), at most `max`.
    pub fn step(initial: Duration, max: Duration, attempt: u32) -> Duration {
        initial.saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1))).min(max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<_> = (0..5).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[4] >= Duration::from_millis(200) && delays[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn scheduled_steps_double_up_to_the_cap() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let steps: Vec<_> = [1, 2, 3, 9, 10, 40].map(|n| Backoff::step(initial, max, n).as_secs()).to_vec();
        assert_eq!(steps, [1, 2, 4, 256, 300, 300]);
    }
}
