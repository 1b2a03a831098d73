//! The `[broker]` section: which nodes, exchange and queue inboxd consumes, its prefetch,
//! reconnect backoff and the dead-letter queue's bounds.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{ConfigError, in_range, invalid, millis};

/// Dead letters kept by default (`broker.dead_letter_max_length`); beyond, the oldest are dropped.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u64 = 100_000;
/// Bytes of dead-letter bodies kept by default (`broker.dead_letter_max_bytes`): 1 GiB.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Longest reconnect delay accepted (a day).
const MAX_RECONNECT_MS: u64 = 86_400_000;

/// The file format of `[broker]` (env: `INBOXD_BROKER_<KEY>`, chat21's `RABBITMQ_URI`, `PREFETCH_MESSAGES`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawBroker {
    url: String,
    urls: Vec<String>,
    exchange: String,
    queue: String,
    prefetch: i64,
    reconnect_initial_ms: i64,
    reconnect_max_ms: i64,
    dead_letter_max_length: i64,
    dead_letter_max_bytes: i64,
}

impl Default for RawBroker {
    fn default() -> Self {
        RawBroker {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            exchange: "amq.topic".into(),
            queue: String::new(),
            prefetch: 1024,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
            dead_letter_max_length: DEFAULT_DEAD_LETTER_MAX_LENGTH as i64,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES as i64,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker nodes to connect to, tried in turn (`urls`, or else the one `url`); never empty.
    pub urls: Vec<String>,
    /// The topic exchange MQTT publishes to (`mqtt.exchange` of the broker).
    pub exchange: String,
    /// The durable queue inboxd consumes (`inboxd.<app>` by default).
    pub queue: String,
    /// Unacked deliveries in flight; bounds memory and the redelivery burst after a crash.
    pub prefetch: u16,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Bounds of the dead-letter queue, applied when inboxd creates it (overflow: drop-head).
    pub dead_letter_limit: QueueLimit,
}

/// A queue's length limits (`None`: unlimited). The oldest messages are dropped beyond them
/// (`x-overflow: drop-head`): refusing the publish instead would requeue the delivery being
/// dead-lettered forever, a stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimit {
    /// `x-max-length`: messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: body bytes.
    pub max_bytes: Option<u64>,
}

impl BrokerConfig {
    /// Where malformed input is parked, with the reason in a header.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }

    /// Where messages a policy held wait for a moderator (`inboxd held ...`).
    pub fn held_queue(&self) -> String {
        format!("{}.held", self.queue)
    }
}

/// Validates `[broker]`; the queue defaults to `inboxd.<app_id>`.
///
/// # Errors
/// A [`ConfigError`] naming the `broker.*` key at fault.
pub fn validate(raw: RawBroker, app_id: &str) -> Result<BrokerConfig, ConfigError> {
    let is_amqp = |url: &String| url.starts_with("amqp://") || url.starts_with("amqps://");
    if !is_amqp(&raw.url) {
        return Err(invalid("broker.url", "must be an amqp:// or amqps:// URI"));
    }
    if !raw.urls.iter().all(is_amqp) {
        return Err(invalid("broker.urls", "must all be amqp:// or amqps:// URIs"));
    }
    let urls = if raw.urls.is_empty() { vec![raw.url] } else { raw.urls };
    if raw.exchange.is_empty() {
        return Err(invalid("broker.exchange", "must not be empty"));
    }
    let queue = if raw.queue.is_empty() { format!("inboxd.{app_id}") } else { raw.queue };
    let reconnect_initial = millis("broker.reconnect_initial_ms", raw.reconnect_initial_ms, 1..=MAX_RECONNECT_MS)?;
    let reconnect_max = millis("broker.reconnect_max_ms", raw.reconnect_max_ms, 1..=MAX_RECONNECT_MS)?;
    if reconnect_max < reconnect_initial {
        return Err(invalid("broker.reconnect_max_ms", "must not be below broker.reconnect_initial_ms"));
    }
    let limit = |key: &'static str, v: i64| {
        u64::try_from(v).map(|v| (v > 0).then_some(v)).map_err(|_| invalid(key, "must be 0 (no limit) or positive"))
    };
    Ok(BrokerConfig {
        urls,
        exchange: raw.exchange,
        queue,
        prefetch: in_range("broker.prefetch", raw.prefetch, 1..=u16::MAX)?,
        reconnect_initial,
        reconnect_max,
        dead_letter_limit: QueueLimit {
            max_length: limit("broker.dead_letter_max_length", raw.dead_letter_max_length)?,
            max_bytes: limit("broker.dead_letter_max_bytes", raw.dead_letter_max_bytes)?,
        },
    })
}
