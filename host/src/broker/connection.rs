//! Opening the AMQP connection and pacing reconnects with capped exponential backoff.
//! What to do after a lost connection is the daemon's business, not this module's.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Connects to `url`, naming the connection so operators can find it in the management UI.
///
/// # Errors
/// The lapin error when the broker is unreachable or refuses the login.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

/// Exponential backoff with full jitter between `initial` and `max`.
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

    /// Back to the first step, after a connection that worked.
    pub fn reset(&mut self) {
        self.current = self.initial;
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
}
