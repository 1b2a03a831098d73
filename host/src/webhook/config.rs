//! The `[webhook]` section: which chat21 events go to which endpoints, signed how, retried
//! how often and how fast.

use std::collections::HashMap;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};

use super::endpoint::redact;
use super::{EVENTS, NEVER_EMITTED, known_event};
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
    retry_client_errors: bool,
    ca_file: String,
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
            retry_client_errors: false,
            ca_file: String::new(),
        }
    }
}

/// Webhooks: chat21's events POSTed to each endpoint through a durable outbox in the store.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub enabled: bool,
    /// `http://` or `https://` URLs; every event goes to each of them.
    pub endpoints: Vec<String>,
    /// The chat21 event names sent (all of [`EVENTS`] when the list is empty); may name the
    /// [`NEVER_EMITTED`] ones, which are accepted and never sent.
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
    /// Retry a 4xx answer other than 408 and 429 too (by default it is the endpoint's final
    /// answer: the event is dropped as rejected, neither retried nor dead-lettered).
    pub retry_client_errors: bool,
    /// CA certificates trusted for `https://` endpoints besides Mozilla's roots (`ca_file`, PEM).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Set when the deployment is configured through chat21-server's own variables: then the
    /// events are gated as chat21-server gates them (see [`Chat21Webhook`]).
    pub chat21: Option<Chat21Webhook>,
}

/// chat21-server's gating, for a deployment configured through its variables
/// (`WEBHOOK_ENDPOINTS`, `WEBHOOK_EVENTS` or `PRESENCE_ENABLED`): the event list gates only the
/// message events; `conversation-archived` is always sent; `presence-change` only with
/// `PRESENCE_ENABLED=true`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chat21Webhook {
    /// `PRESENCE_ENABLED` is `true`.
    pub presence: bool,
    /// The names of `WEBHOOK_EVENTS` that are no event at all, ignored as chat21-server ignores
    /// them, each with the known name it is closest to (a likely typo), warned about at start.
    pub ignored: Vec<(String, Option<&'static str>)>,
}

/// What chat21-server's webhook variables ask of the configuration root.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chat21Env {
    /// The known names of `WEBHOOK_EVENTS`, for `webhook.events`; `None` when it is unset or
    /// names no known event (then the list is left as it is: all events, as when unset).
    pub events: Option<Vec<String>>,
    /// `WEBHOOK_ENDPOINTS` is set and `WEBHOOK_ENABLED` is not: chat21-server's default is on.
    pub enable: bool,
    /// How the events are gated, when any of chat21's webhook variables is set.
    pub webhook: Option<Chat21Webhook>,
}

/// Reads chat21-server's `WEBHOOK_ENDPOINTS`, `WEBHOOK_ENABLED`, `WEBHOOK_EVENTS` and
/// `PRESENCE_ENABLED` from `env`. Unknown event names are not refused (chat21-server accepts
/// anything): they are set aside for a warning.
pub fn chat21_env(env: &HashMap<String, String>) -> Chat21Env {
    let var = |name: &str| env.get(name).map(String::as_str);
    let configured = ["WEBHOOK_ENDPOINTS", "WEBHOOK_EVENTS", "PRESENCE_ENABLED"].iter().any(|v| var(v).is_some());
    let mut webhook =
        Chat21Webhook { presence: var("PRESENCE_ENABLED").map(str::trim) == Some("true"), ignored: Vec::new() };
    let events = var("WEBHOOK_EVENTS").and_then(|list| {
        let (known, unknown): (Vec<&str>, Vec<&str>) =
            list.split(',').map(str::trim).filter(|n| !n.is_empty()).partition(|n| known_event(n));
        webhook.ignored = unknown.into_iter().map(|n| (n.to_owned(), closest(n))).collect();
        (!known.is_empty()).then(|| known.into_iter().map(str::to_owned).collect())
    });
    Chat21Env {
        events,
        enable: var("WEBHOOK_ENDPOINTS").is_some() && var("WEBHOOK_ENABLED").is_none(),
        webhook: configured.then_some(webhook),
    }
}

/// The known event name within two edits of `name`, if any.
fn closest(name: &str) -> Option<&'static str> {
    let known = EVENTS.iter().copied().chain(NEVER_EMITTED.iter().map(|(n, _)| *n));
    known.map(|k| (edits(name, k), k)).filter(|(d, _)| *d <= 2).min().map(|(_, k)| k)
}

/// The Levenshtein distance between `a` and `b`.
fn edits(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substituted = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substituted.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Says once, at start, what of the configured events will not be sent: names inboxd never
/// emits, and `WEBHOOK_EVENTS` names that are no event at all.
pub fn announce(config: &WebhookConfig) {
    for (name, suggestion) in config.chat21.iter().flat_map(|c| &c.ignored) {
        crate::telemetry::webhook_event_ignored(name, *suggestion);
    }
    if !config.enabled || config.endpoints.is_empty() {
        return;
    }
    for (name, why) in NEVER_EMITTED {
        if config.events.iter().any(|e| e == name) {
            crate::telemetry::webhook_event_never_sent(name, why);
        }
    }
}

/// Validates `[webhook]`.
///
/// # Errors
/// A [`ConfigError`] naming the `webhook.*` key at fault.
pub fn validate(raw: RawWebhook) -> Result<WebhookConfig, ConfigError> {
    if let Some(bad) = raw.endpoints.iter().find(|e| !e.starts_with("http://") && !e.starts_with("https://")) {
        return Err(invalid("webhook.endpoints", format!("{}: only http:// and https:// endpoints", redact(bad))));
    }
    let extra_roots = match raw.ca_file.as_str() {
        "" => Vec::new(),
        path => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| invalid("webhook.ca_file", format!("{path}: {e}")))?;
            if certs.is_empty() {
                return Err(invalid("webhook.ca_file", format!("{path}: no PEM certificate in it")));
            }
            let mut roots = rustls::RootCertStore::empty();
            for cert in &certs {
                roots.add(cert.clone()).map_err(|e| invalid("webhook.ca_file", format!("{path}: {e}")))?;
            }
            certs
        }
    };
    if let Some(bad) = raw.events.iter().find(|e| !known_event(e)) {
        let names: Vec<&str> = EVENTS.iter().copied().chain(NEVER_EMITTED.iter().map(|(n, _)| *n)).collect();
        return Err(invalid("webhook.events", format!("{bad:?} is not one of {}", names.join(", "))));
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
        retry_client_errors: raw.retry_client_errors,
        extra_roots,
        chat21: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `announce` logs for `config`.
    fn announced(config: &WebhookConfig) -> String {
        crate::telemetry::captured(|| announce(config))
    }

    #[test]
    fn names_never_sent_and_typos_are_said_once_at_start() {
        let env: HashMap<String, String> = [
            ("WEBHOOK_ENDPOINTS", "http://tiledesk:3000/chat21/requests"),
            ("WEBHOOK_EVENTS", "message-sent,mesage-delivered,conversation-unarchived"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let chat21 = chat21_env(&env);
        assert!(chat21.enable);
        let mut raw =
            RawWebhook { enabled: true, endpoints: vec![env["WEBHOOK_ENDPOINTS"].clone()], ..RawWebhook::default() };
        raw.events = chat21.events.unwrap();
        let mut config = validate(raw).unwrap();
        config.chat21 = chat21.webhook;
        let logged = announced(&config);
        assert_eq!(logged.lines().count(), 2, "{logged}");
        assert!(logged.contains("conversation-unarchived") && logged.contains("never sent"), "{logged}");
        assert!(logged.contains("mesage-delivered") && logged.contains("closest=\"message-delivered\""), "{logged}");
        // Webhooks off: the typo is still named, the never-sent names are moot.
        config.enabled = false;
        assert_eq!(announced(&config).lines().count(), 1);
    }
}
