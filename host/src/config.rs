//! The daemon's configuration: a TOML file, overridden by `INBOXD_<SECTION>_<KEY>` environment
//! variables and by chat21-server's own variables, validated into [`Config`] before start.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::{Table, Value};

/// Largest accepted body by default; chat21 messages are small, attachments go by URL.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// chat21-server's environment variables and the keys they set (lower precedence than `INBOXD_*`).
const CHAT21_ALIASES: &[(&str, &str)] = &[
    ("RABBITMQ_URI", "broker.url"),
    ("APP_ID", "app.id"),
    ("PREFETCH_MESSAGES", "broker.prefetch"),
    ("LOG_LEVEL", "log.level"),
    ("WEBHOOK_ENABLED", "webhook.enabled"),
    ("WEBHOOK_ENDPOINTS", "webhook.endpoints"),
    ("WEBHOOK_EVENTS", "webhook.events"),
];

/// A configuration that cannot be used; names the key (or variable) at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var} (config key `{key}`): {message}")]
    Env { var: String, key: String, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The file format. Every section and key is optional; unknown keys are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    broker: RawBroker,
    app: RawApp,
    pipeline: RawPipeline,
    log: RawLog,
    webhook: RawWebhook,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBroker {
    url: String,
    exchange: String,
    queue: String,
    prefetch: i64,
    reconnect_initial_ms: i64,
    reconnect_max_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApp {
    id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPipeline {
    workers: i64,
    max_body_bytes: i64,
    shutdown_timeout_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebhook {
    enabled: bool,
    endpoints: Vec<String>,
    events: Vec<String>,
}

impl Default for RawBroker {
    fn default() -> Self {
        RawBroker {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "amq.topic".into(),
            queue: String::new(),
            prefetch: 256,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
        }
    }
}

impl Default for RawApp {
    fn default() -> Self {
        RawApp { id: "tilechat".into() }
    }
}

impl Default for RawPipeline {
    fn default() -> Self {
        RawPipeline { workers: 0, max_body_bytes: DEFAULT_MAX_BODY_BYTES as i64, shutdown_timeout_ms: 10_000 }
    }
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { level: "info".into(), format: "human".into() }
    }
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerConfig,
    /// The chat21 app id this daemon serves (`tilechat` by default).
    pub app_id: String,
    pub pipeline: PipelineConfig,
    pub log: LogConfig,
    pub webhook: WebhookConfig,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub url: String,
    /// The topic exchange MQTT publishes to (`mqtt.exchange` of the broker).
    pub exchange: String,
    /// The durable queue inboxd consumes (`inboxd.<app>` by default).
    pub queue: String,
    /// Unacked deliveries in flight; bounds memory and the redelivery burst after a crash.
    pub prefetch: u16,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl BrokerConfig {
    /// Where malformed input is parked, with the reason in a header.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.queue)
    }
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Sequential workers; a conversation always goes to the same one.
    pub workers: usize,
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight messages before closing anyway (they are redelivered).
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `inboxd=debug`.
    pub level: String,
    pub format: LogFormat,
}

/// Reserved for the webhook outbox; parsed and validated now so chat21 deployments start.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub enabled: bool,
    pub endpoints: Vec<String>,
    pub events: Vec<String>,
}

impl Config {
    /// Loads `path` (if any), applies chat21 aliases then `INBOXD_*` variables from `env`, validates.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the file, variable or key that is wrong.
    pub fn load(path: Option<&Path>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
        let mut table = match path {
            Some(path) => {
                let shown = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: shown.clone(), source })?;
                text.parse::<Table>().map_err(|e| ConfigError::Parse { path: shown, message: e.to_string() })?
            }
            None => Table::new(),
        };
        let defaults = Table::try_from(RawConfig::default()).expect("the default config serialises to a table");
        for (var, key) in CHAT21_ALIASES {
            if let Some(value) = env.get(*var) {
                set_from_env(&mut table, &defaults, var, key, value)?;
            }
        }
        let mut overrides: Vec<(&String, &String)> = env.iter().filter(|(k, _)| k.starts_with("INBOXD_")).collect();
        overrides.sort();
        for (var, value) in overrides {
            if let Some(key) = env_key(&defaults, var)? {
                set_from_env(&mut table, &defaults, var, &key, value)?;
            }
        }
        let shown = path.map_or_else(|| "(none)".to_owned(), |p| p.display().to_string());
        let raw: RawConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse { path: shown, message: e.to_string() })?;
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid { key, message: message.to_owned() };
        let app_id = raw.app.id;
        crate::chat21::check_id("app", &app_id).map_err(|e| invalid("app.id", &e.to_string()))?;
        if app_id == "observer" {
            return Err(invalid("app.id", "`observer` is reserved by the chat21 protocol"));
        }
        if !(raw.broker.url.starts_with("amqp://") || raw.broker.url.starts_with("amqps://")) {
            return Err(invalid("broker.url", "must be an amqp:// or amqps:// URI"));
        }
        if raw.broker.exchange.is_empty() {
            return Err(invalid("broker.exchange", "must not be empty"));
        }
        let queue = if raw.broker.queue.is_empty() { format!("inboxd.{app_id}") } else { raw.broker.queue };
        let prefetch = u16::try_from(raw.broker.prefetch)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| invalid("broker.prefetch", "must be between 1 and 65535"))?;
        let millis = |key: &'static str, v: i64| {
            u64::try_from(v)
                .ok()
                .filter(|v| *v > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| invalid(key, "must be a positive number of milliseconds"))
        };
        let reconnect_initial = millis("broker.reconnect_initial_ms", raw.broker.reconnect_initial_ms)?;
        let reconnect_max = millis("broker.reconnect_max_ms", raw.broker.reconnect_max_ms)?;
        if reconnect_max < reconnect_initial {
            return Err(invalid("broker.reconnect_max_ms", "must not be below broker.reconnect_initial_ms"));
        }
        let workers = match usize::try_from(raw.pipeline.workers) {
            Ok(0) => std::thread::available_parallelism().map_or(1, usize::from),
            Ok(n) if n <= 1024 => n,
            _ => return Err(invalid("pipeline.workers", "must be between 0 (one per core) and 1024")),
        };
        let max_body_bytes = usize::try_from(raw.pipeline.max_body_bytes)
            .ok()
            .filter(|n| (2..=128 * 1024 * 1024).contains(n))
            .ok_or_else(|| invalid("pipeline.max_body_bytes", "must be between 2 and 134217728"))?;
        let shutdown_timeout = millis("pipeline.shutdown_timeout_ms", raw.pipeline.shutdown_timeout_ms)?;
        let format = match raw.log.format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => return Err(invalid("log.format", "must be `human` or `json`")),
        };
        if raw.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        Ok(Config {
            broker: BrokerConfig {
                url: raw.broker.url,
                exchange: raw.broker.exchange,
                queue,
                prefetch,
                reconnect_initial,
                reconnect_max,
            },
            app_id,
            pipeline: PipelineConfig { workers, max_body_bytes, shutdown_timeout },
            log: LogConfig { level: raw.log.level, format },
            webhook: WebhookConfig {
                enabled: raw.webhook.enabled,
                endpoints: raw.webhook.endpoints,
                events: raw.webhook.events,
            },
        })
    }
}

/// Maps `INBOXD_BROKER_PREFETCH` to `broker.prefetch`; `None` for variables that are not keys.
fn env_key(defaults: &Table, var: &str) -> Result<Option<String>, ConfigError> {
    let rest = &var["INBOXD_".len()..];
    for (section, keys) in defaults {
        let Some(key) = rest.strip_prefix(&section.to_uppercase()).and_then(|r| r.strip_prefix('_')) else { continue };
        let Value::Table(keys) = keys else { continue };
        return match keys.keys().find(|k| k.to_uppercase() == key) {
            Some(k) => Ok(Some(format!("{section}.{k}"))),
            None => Err(ConfigError::Env {
                var: var.to_owned(),
                key: format!("{section}.{}", key.to_lowercase()),
                message: format!(
                    "no such key; section `{section}` has {}",
                    keys.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            }),
        };
    }
    Ok(None)
}

fn set_from_env(table: &mut Table, defaults: &Table, var: &str, key: &str, raw: &str) -> Result<(), ConfigError> {
    let (section, name) = key.split_once('.').expect("config keys are section.key");
    let err = |message: String| ConfigError::Env { var: var.to_owned(), key: key.to_owned(), message };
    let value = match &defaults[section][name] {
        Value::Integer(_) => Value::Integer(raw.trim().parse().map_err(|_| err(format!("{raw:?} is not an integer")))?),
        Value::Boolean(_) => Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" | "" => false,
            _ => return Err(err(format!("{raw:?} is not a boolean"))),
        }),
        Value::Array(_) => Value::Array(
            raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
        ),
        _ => Value::String(raw.to_owned()),
    };
    let entry = table.entry(section).or_insert_with(|| Value::Table(Table::new()));
    let Value::Table(section_table) = entry else {
        return Err(err(format!("the file has `{section}` as a value, not a section")));
    };
    section_table.insert(name.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_chat21s() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.app_id, "tilechat");
        assert_eq!(c.broker.queue, "inboxd.tilechat");
        assert_eq!(c.broker.dead_letter_queue(), "inboxd.tilechat.dead");
        assert!(c.pipeline.workers >= 1);
    }

    #[test]
    fn file_then_aliases_then_inboxd_vars() {
        let f = file("[broker]\nprefetch = 10\nurl = \"amqp://file\"\n[app]\nid = \"fromfile\"\n");
        let c = Config::load(Some(f.path()), &env(&[("APP_ID", "alias"), ("RABBITMQ_URI", "amqp://alias")])).unwrap();
        assert_eq!((c.app_id.as_str(), c.broker.url.as_str(), c.broker.prefetch), ("alias", "amqp://alias", 10));
        let c = Config::load(
            Some(f.path()),
            &env(&[("APP_ID", "alias"), ("INBOXD_APP_ID", "wins"), ("PREFETCH_MESSAGES", "7")]),
        )
        .unwrap();
        assert_eq!((c.app_id.as_str(), c.broker.prefetch), ("wins", 7));
        let c = Config::load(None, &env(&[("WEBHOOK_ENABLED", "true"), ("WEBHOOK_ENDPOINTS", "http://a, http://b")]))
            .unwrap();
        assert!(c.webhook.enabled);
        assert_eq!(c.webhook.endpoints, vec!["http://a", "http://b"]);
        let c = Config::load(None, &env(&[("INBOXD_PIPELINE_MAX_BODY_BYTES", "1000")])).unwrap();
        assert_eq!(c.pipeline.max_body_bytes, 1000);
    }

    #[test]
    fn bad_config_names_the_key() {
        let msg = |r: Result<Config, ConfigError>| r.unwrap_err().to_string();
        assert!(msg(Config::load(None, &env(&[("PREFETCH_MESSAGES", "many")]))).contains("broker.prefetch"));
        assert!(msg(Config::load(None, &env(&[("INBOXD_BROKER_PREFETCH", "0")]))).contains("broker.prefetch"));
        assert!(msg(Config::load(None, &env(&[("INBOXD_BROKER_NOPE", "1")]))).contains("INBOXD_BROKER_NOPE"));
        assert!(msg(Config::load(None, &env(&[("APP_ID", "a.b")]))).contains("app.id"));
        assert!(msg(Config::load(None, &env(&[("INBOXD_LOG_FORMAT", "xml")]))).contains("log.format"));
        let f = file("[broker]\nprefetchh = 1\n");
        assert!(msg(Config::load(Some(f.path()), &env(&[]))).contains("prefetchh"));
        let f = file("[broker]\nprefetch = \"x\"\n");
        assert!(msg(Config::load(Some(f.path()), &env(&[]))).contains("prefetch"));
    }

    #[test]
    fn unrelated_inboxd_vars_are_ignored() {
        assert!(Config::load(None, &env(&[("INBOXD_CONFIG", "x"), ("INBOXD_TEST_AMQP_URL", "y")])).is_ok());
    }
}
