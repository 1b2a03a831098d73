//! chat21-server's and chat21-http-server's environment variables, as inboxd reads them:
//! `LOG_LEVEL`'s names mapped to tracing levels, and the variables inboxd does not support,
//! each with what to use instead (named in one warning at start, never refused). Pure.

use std::collections::HashMap;

/// What chat21's `LOG_LEVEL` asks for, as a tracing filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel {
    /// A tracing `EnvFilter` directive.
    pub filter: String,
    /// The value was no level chat21 knows; chat21 logs everything then (its `DEBUG`), so does inboxd.
    pub unknown: bool,
}

/// `LOG_LEVEL` as chat21's logger reads it (case-insensitive): `DEBUG` and `LOG` log everything,
/// `VERBOSE` everything but chat21's debug lines, `INFO` and `ERROR` what they say, anything
/// else everything. inboxd has no level between debug and info, so `VERBOSE` is `debug`;
/// `warn` and `trace` (not chat21's, but tracing's) are kept. A value with `=` or `,` is a
/// tracing directive (`inboxd=debug`) and is passed on as it is.
pub fn log_level(value: &str) -> LogLevel {
    let value = value.trim();
    if value.contains(['=', ',']) {
        return LogLevel { filter: value.to_owned(), unknown: false };
    }
    let filter = match value.to_ascii_uppercase().as_str() {
        "DEBUG" | "LOG" | "VERBOSE" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" => "error",
        "TRACE" => "trace",
        _ => return LogLevel { filter: "debug".into(), unknown: true },
    };
    LogLevel { filter: filter.into(), unknown: false }
}

/// The variables of chat21-server (0.2.x) and chat21-http-server that inboxd does not read,
/// with what an operator uses instead.
pub const UNSUPPORTED: &[(&str, &str)] = &[
    ("MONGODB_URI", "the store is store.url (INBOXD_STORE_URL); bring MongoDB's data over with `inboxd import chat21`"),
    ("AUTO_RESTART", "inboxd always reconnects, with backoff"),
    ("ACTIVE_QUEUES", "inboxd consumes one queue, or [shards]"),
    ("DURABLE_ENABLED", "inboxd's queues are durable"),
    (
        "NODE_TLS_REJECT_UNAUTHORIZED",
        "webhook certificates are always verified; trust a private CA with webhook.ca_file",
    ),
    ("PRESENCE_WEBHOOK_ENDPOINT", "presence-change goes to WEBHOOK_ENDPOINTS"),
    ("WEBHOOK_ENDPOINT", "chat21-server never read it either: the list is WEBHOOK_ENDPOINTS"),
    ("UNIQUE_CONVERSATIONS_INDEX", "a user has one conversation per peer"),
    ("METRICS_PORT", "metrics are /metrics on http.address"),
    ("ANALYTICS_ENABLED", "no analytics exchange"),
    ("ANALYTICS_EXCHANGE", "no analytics exchange"),
    ("ANALYTICS_RABBITMQ_URI", "no analytics exchange"),
    ("BUCKET_MSG_CAPACITY", "rate limits are a policy plugin (plugins/rust-ratelimit)"),
    ("BUCKET_MSG_REFILL_RATE_PER_MIN", "rate limits are a policy plugin (plugins/rust-ratelimit)"),
    ("BUCKET_WH_CAPACITY", "webhooks are queued in the store's outbox"),
    ("BUCKET_WH_REFILL_RATE_PER_MIN", "webhooks are queued in the store's outbox"),
    ("BUCKET_BLK_CAPACITY", "rate limits are a policy plugin (plugins/rust-ratelimit)"),
    ("BUCKET_BLK_REFILL_RATE_PER_MIN", "rate limits are a policy plugin (plugins/rust-ratelimit)"),
    ("CACHE_ENABLED", "groups are cached in memory (store.group_cache), no Redis"),
    ("CACHE_REDIS_HOST", "groups are cached in memory (store.group_cache), no Redis"),
    ("CACHE_REDIS_PORT", "groups are cached in memory (store.group_cache), no Redis"),
    ("CACHE_REDIS_PASSWORD", "groups are cached in memory (store.group_cache), no Redis"),
    ("REDIS_HOST", "groups are cached in memory (store.group_cache), no Redis"),
    ("REDIS_PORT", "groups are cached in memory (store.group_cache), no Redis"),
    ("REDIS_PASSWORD", "groups are cached in memory (store.group_cache), no Redis"),
    ("JWT_KEY", "the API verifies tokens with auth.secret (INBOXD_AUTH_SECRET, at least 32 bytes)"),
    ("PORT", "the API is served on http.address (INBOXD_HTTP_ADDRESS)"),
    ("BASEURL", "the API is served under /api"),
    ("KEY_PEM", "the API speaks plain HTTP: terminate TLS in front of it"),
    ("CERT_PEM", "the API speaks plain HTTP: terminate TLS in front of it"),
    ("CONTACTS_LOOKUP_ENDPOINT", "no contact lookup"),
    ("PUSH_ENABLED", "no push notifications"),
    ("PUSH_WH_WEBHOOK_TOKEN", "no push notifications"),
    ("PUSH_WH_NOTIFY_URL", "no push notifications"),
    ("PUSH_WH_CHAT21_API_ADMIN_TOKEN", "no push notifications"),
    ("FIREBASE_PRIVATE_KEY", "no push notifications"),
    ("FIREBASE_APIKEY", "no push notifications"),
    ("FIREBASE_PROJECT_ID", "no push notifications"),
    ("FIREBASE_CLIENT_EMAIL", "no push notifications"),
    ("WEB_CLICK_ACTION", "no push notifications"),
    ("MOBILE_CLICK_ACTION", "no push notifications"),
];

/// The unsupported chat21 variables set in `env`, each with what to use instead, in
/// [`UNSUPPORTED`]'s order.
pub fn unsupported(env: &HashMap<String, String>) -> Vec<(&'static str, &'static str)> {
    UNSUPPORTED.iter().copied().filter(|(name, _)| env.contains_key(*name)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat21_level_names_map_to_tracing_levels() {
        let filter = |v: &str| log_level(v).filter;
        assert_eq!(filter("DEBUG"), "debug");
        assert_eq!(filter("log"), "debug");
        assert_eq!(filter("verbose"), "debug");
        assert_eq!(filter(" INFO "), "info");
        assert_eq!(filter("Error"), "error");
        assert_eq!(filter("warn"), "warn");
        assert_eq!(filter("trace"), "trace");
        assert_eq!(filter("inboxd=debug,lapin=warn"), "inboxd=debug,lapin=warn");
        assert_eq!(log_level("loud"), LogLevel { filter: "debug".into(), unknown: true });
        assert!(!log_level("info").unknown);
    }

    #[test]
    fn unsupported_variables_are_named_in_order_and_supported_ones_are_not() {
        let env: HashMap<String, String> =
            [("JWT_KEY", "k"), ("MONGODB_URI", "m"), ("RABBITMQ_URI", "r"), ("LOG_LEVEL", "info")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        let names: Vec<&str> = unsupported(&env).into_iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["MONGODB_URI", "JWT_KEY"]);
        let supported = [
            "RABBITMQ_URI",
            "APP_ID",
            "PREFETCH_MESSAGES",
            "LOG_LEVEL",
            "WEBHOOK_ENABLED",
            "WEBHOOK_ENDPOINTS",
            "WEBHOOK_EVENTS",
            "PRESENCE_ENABLED",
        ];
        assert!(UNSUPPORTED.iter().all(|(name, _)| !supported.contains(name)));
    }
}
