//! Per-sender rate limit (on-message): at most `max` messages per `window_ms` per sender, counted
//! by the host (`counters.incr`), so all instances share the count. Over it: reject `rate-limited`.

use std::sync::OnceLock;

use inboxd::policy::counters::incr;
use inboxd::policy::types::Rejection;

wit_bindgen::generate!({ world: "policy", path: "../../wit" });

/// (max messages, window in ms), set once per instance by `init`.
static LIMIT: OnceLock<(u64, u64)> = OnceLock::new();

struct RateLimit;

impl Guest for RateLimit {
    fn init(config: String) -> Result<(), String> {
        let config: serde_json::Value = serde_json::from_str(&config).map_err(|e| format!("config: {e}"))?;
        let number = |key: &str, default: u64| match config.get(key) {
            None => Ok(default),
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or(format!("config: `{key}` must be a positive integer")),
        };
        let limit = (number("max", 10)?, number("window_ms", 60_000)?);
        LIMIT.set(limit).map_err(|_| "init called twice".to_owned())
    }

    fn on_message(envelope: Envelope) -> Verdict {
        let (max, window_ms) = LIMIT.get().copied().unwrap_or((10, 60_000));
        if incr(&envelope.sender, window_ms) <= max {
            return Verdict::Accept;
        }
        Verdict::Reject(Rejection {
            code: "rate-limited".into(),
            reason: format!("more than {max} messages in {} s; wait and try again", window_ms.div_ceil(1000)),
            notify_sender: true,
        })
    }

    fn on_deliver(_envelope: Envelope, _inbox_of: String) -> Verdict {
        Verdict::Accept
    }
}

export!(RateLimit);
