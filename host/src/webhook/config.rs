//! The `[webhook]` section: which chat21 events go to which endpoints, signed how, retried
//! how often and how fast.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::EVENTS;
use super::endpoint::redact;
use crate::settings::{ConfigError, in_range, invalid, millis};

/// Longest webhook timeout or retry delay accepted (a day).
const MAX_WEBHOOK_MS: u64 = 86_400_000;

/// The file format of `[webhook]` (env: `INBOXD_WEBHOOK_<KEY>`, chat21's `WEBHOOK_*`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhook {
    enabled: bool,
    endpoints: Vec<String>,
    events: Vec<String>,
    secret: String,
    max_attempts: i64,
    concurrency: i64,
    timeout_ms: i64,
    retry_initial_ms: i64,
    retry_max_ms: i64,
}

impl Default for RawWebhook {
    fn default() -> Self {
        RawWebhook {
            enabled: false,
            endpoints: Vec::new(),
            events: Vec::new(),
            secret: String::new(),
            max_attempts: 10,
            concurrency: 4,
            timeout_ms: 5000,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
        }
    }
}

/// Webhooks: chat21's events POSTed to each endpoint through a durable outbox in the store.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub enabled: bool,
    /// `http://` URLs; every event goes to each of them.
    pub endpoints: Vec<String>,
    /// The chat21 event names sent (all of [`EVENTS`] when the list is empty).
    pub events: Vec<String>,
    /// HMAC-SHA256 key of the `X-Inboxd-Signature` header (empty: no signature).
    pub secret: String,
    /// Attempts before an event is dead-lettered (`inboxd webhooks dead|replay`).
    pub max_attempts: u32,
    /// Requests in flight per endpoint.
    pub concurrency: usize,
    pub timeout: Duration,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// Validates `[webhook]`.
///
/// # Errors
/// A [`ConfigError`] naming the `webhook.*` key at fault.
pub fn validate(raw: RawWebhook) -> Result<WebhookConfig, ConfigError> {
    if let Some(bad) = raw.endpoints.iter().find(|e| !e.starts_with("http://")) {
        return Err(invalid("webhook.endpoints", format!("{}: only http:// endpoints are supported", redact(bad))));
    }
    if let Some(bad) = raw.events.iter().find(|e| !EVENTS.contains(&e.as_str())) {
        return Err(invalid("webhook.events", format!("{bad:?} is not one of {}", EVENTS.join(", "))));
    }
    let retry_initial = millis("webhook.retry_initial_ms", raw.retry_initial_ms, 1..=MAX_WEBHOOK_MS)?;
    let retry_max = millis("webhook.retry_max_ms", raw.retry_max_ms, 1..=MAX_WEBHOOK_MS)?;
    if retry_max < retry_initial {
        return Err(invalid("webhook.retry_max_ms", "must not be below webhook.retry_initial_ms"));
    }
    Ok(WebhookConfig {
        enabled: raw.enabled,
        endpoints: raw.endpoints,
        events: raw.events,
        secret: raw.secret,
        max_attempts: in_range("webhook.max_attempts", raw.max_attempts, 1..=1000)?,
        concurrency: in_range("webhook.concurrency", raw.concurrency, 1..=1024)?,
        timeout: millis("webhook.timeout_ms", raw.timeout_ms, 1..=MAX_WEBHOOK_MS)?,
        retry_initial,
        retry_max,
    })
}
