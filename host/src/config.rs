//! The daemon's configuration root: a TOML file, overridden by `INBOXD_<SECTION>_<KEY>`
//! environment variables and by chat21-server's own variables, validated into [`Config`] by
//! each component's own section (`broker::config`, `store::config`, ...) before start.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use toml::{Table, Value};

use crate::broker::shards::{self, ShardsConfig};
use crate::broker::{self, BrokerConfig};
use crate::console::{self, ConsoleConfig};
use crate::held::{self, HeldConfig};
use crate::http::{self, HttpConfig};
use crate::pipeline::{self, PipelineConfig};
use crate::plugin::{self, PluginsConfig};
use crate::routing::{self, RoutingConfig};
pub use crate::settings::ConfigError;
use crate::settings::invalid;
use crate::store::{self, StoreConfig};
use crate::telemetry::LogFormat;
use crate::token::{self, AuthConfig};
use crate::webhook::{self, WebhookConfig};

/// chat21-server's environment variables and the keys they set (lower precedence than `INBOXD_*`).
/// `WEBHOOK_EVENTS` and `PRESENCE_ENABLED` are read with chat21's semantics by
/// [`webhook::chat21_env`], `LOG_LEVEL`'s names by [`crate::chat21::env::log_level`].
const CHAT21_ALIASES: &[(&str, &str)] = &[
    ("RABBITMQ_URI", "broker.url"),
    ("APP_ID", "app.id"),
    ("PREFETCH_MESSAGES", "broker.prefetch"),
    ("WEBHOOK_ENABLED", "webhook.enabled"),
    ("WEBHOOK_ENDPOINTS", "webhook.endpoints"),
];

/// The file format: each component's section. Every section and key is optional; unknown keys
/// are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    broker: broker::RawBroker,
    app: RawApp,
    pipeline: pipeline::RawPipeline,
    log: RawLog,
    webhook: webhook::RawWebhook,
    http: http::RawHttp,
    auth: token::RawAuth,
    plugins: plugin::RawPlugins,
    shards: shards::RawShards,
    store: store::RawStore,
    held: held::RawHeld,
    routing: routing::RawRouting,
    console: console::RawConsole,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawApp {
    id: String,
}

impl Default for RawApp {
    fn default() -> Self {
        RawApp { id: "tilechat".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    format: String,
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
    pub plugins: PluginsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    /// Sharded consumption for several processes (`[shards]`); `None`: the one queue.
    pub shards: Option<ShardsConfig>,
    /// Where history, conversations and groups are kept (see [`crate::store`]).
    pub store: StoreConfig,
    pub held: HeldConfig,
    pub routing: RoutingConfig,
    /// The moderation console (`[console]`), off unless enabled.
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `inboxd=debug`.
    pub level: String,
    pub format: LogFormat,
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
        // chat21-server turns webhooks on when it has endpoints and WEBHOOK_ENABLED is unset;
        // an `enabled` in the file (or INBOXD_WEBHOOK_ENABLED) still decides.
        let chat21 = webhook::chat21_env(env);
        let enabled_in_file = table.get("webhook").and_then(|w| w.get("enabled")).is_some();
        if chat21.enable && !enabled_in_file {
            set_from_env(&mut table, &defaults, "WEBHOOK_ENDPOINTS", "webhook.enabled", "true")?;
        }
        for (var, key) in CHAT21_ALIASES {
            if let Some(value) = env.get(*var) {
                set_from_env(&mut table, &defaults, var, key, value)?;
            }
        }
        if let Some(level) = env.get("LOG_LEVEL") {
            let level = crate::chat21::env::log_level(level);
            set_from_env(&mut table, &defaults, "LOG_LEVEL", "log.level", &level.filter)?;
        }
        if let Some(events) = &chat21.events {
            set_from_env(&mut table, &defaults, "WEBHOOK_EVENTS", "webhook.events", &events.join(","))?;
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
        let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
        let mut config = Config::validate(raw, base)?;
        config.webhook.chat21 = chat21.webhook;
        Ok(config)
    }

    /// What `inboxd held` needs of this configuration.
    pub fn held_setup(&self) -> held::Setup<'_> {
        held::Setup {
            app_id: &self.app_id,
            broker: &self.broker,
            key: self.held.key.clone(),
            plugins: &self.plugins,
            routing: &self.routing,
            store: &self.store,
            webhook: &self.webhook,
        }
    }

    /// What the moderation console needs of this configuration.
    pub fn console_setup(&self) -> console::Setup {
        console::Setup {
            console: self.console.clone(),
            app_id: self.app_id.clone(),
            broker: self.broker.clone(),
            held_key: self.held.key.clone(),
            routing: self.routing.clone(),
            store: self.store.clone(),
            webhook: self.webhook.clone(),
        }
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let app_id = raw.app.id;
        crate::chat21::check_id("app", &app_id).map_err(|e| invalid("app.id", e.to_string()))?;
        if app_id == "observer" {
            return Err(invalid("app.id", "`observer` is reserved by the chat21 protocol"));
        }
        let console = console::validate(raw.console)?;
        let http = http::validate(&raw.http)?;
        if console.enabled && http.address.is_none() {
            return Err(invalid("console.enabled", "the console is served on the HTTP listener: set http.address"));
        }
        let format = match raw.log.format.as_str() {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => return Err(invalid("log.format", "must be `human` or `json`")),
        };
        if raw.log.level.trim().is_empty() {
            return Err(invalid("log.level", "must not be empty"));
        }
        Ok(Config {
            broker: broker::validate(raw.broker, &app_id)?,
            app_id,
            pipeline: pipeline::validate(raw.pipeline)?,
            log: LogConfig { level: raw.log.level, format },
            webhook: webhook::validate(raw.webhook)?,
            plugins: plugin::validate(raw.plugins, base)?,
            http,
            auth: token::validate(raw.auth)?,
            shards: shards::validate(raw.shards)?,
            store: store::validate(raw.store)?,
            held: held::validate(raw.held)?,
            routing: routing::validate(raw.routing)?,
            console,
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
    use std::time::Duration;

    use super::*;
    use crate::broker::{DEFAULT_DEAD_LETTER_MAX_BYTES, DEFAULT_DEAD_LETTER_MAX_LENGTH, QueueLimit};
    use crate::http::{DEFAULT_HTTP_HEADER_READ_TIMEOUT, DEFAULT_HTTP_MAX_CONNECTIONS, DEFAULT_HTTP_REQUEST_TIMEOUT};
    use crate::plugin::{DEFAULT_PLUGIN_DEADLINE, Grant};
    use crate::policy::{FailureMode, Hooks};
    use crate::routing::UnknownGroups;
    use crate::store::DEFAULT_STORE_URL;
    use crate::token::MIN_AUTH_SECRET_BYTES;

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
        assert_eq!((c.app_id.as_str(), c.broker.urls[0].as_str(), c.broker.prefetch), ("alias", "amqp://alias", 10));
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
    fn chat21_log_levels_are_mapped_and_inboxd_s_own_wins() {
        let level = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs)).unwrap().log.level;
        assert_eq!(level(&[("LOG_LEVEL", "VERBOSE")]), "debug");
        assert_eq!(level(&[("LOG_LEVEL", "LOG")]), "debug");
        assert_eq!(level(&[("LOG_LEVEL", "info")]), "info");
        assert_eq!(level(&[("LOG_LEVEL", "ERROR")]), "error");
        assert_eq!(level(&[("LOG_LEVEL", "shouty")]), "debug", "chat21 logs everything on a name it does not know");
        assert_eq!(level(&[("LOG_LEVEL", "inboxd=debug")]), "inboxd=debug");
        assert_eq!(level(&[("LOG_LEVEL", "ERROR"), ("INBOXD_LOG_LEVEL", "warn")]), "warn");
        assert_eq!(level(&[]), "info");
    }

    #[test]
    fn broker_urls_replace_the_one_url() {
        let c = Config::load(None, &env(&[("INBOXD_BROKER_URLS", "amqp://a:5672, amqp://b:5672")])).unwrap();
        assert_eq!(c.broker.urls, vec!["amqp://a:5672", "amqp://b:5672"]);
        let c = Config::load(None, &env(&[("RABBITMQ_URI", "amqp://one")])).unwrap();
        assert_eq!(c.broker.urls, vec!["amqp://one"]);
        let err = Config::load(None, &env(&[("INBOXD_BROKER_URLS", "amqp://a,http://b")])).unwrap_err();
        assert!(err.to_string().contains("broker.urls"), "{err}");
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
    fn store_and_webhooks_are_validated() {
        use crate::store::StoreUrl;
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.store.url, StoreUrl::Sqlite(DEFAULT_STORE_URL.into()));
        assert_eq!(c.webhook.max_attempts, 10);
        let c =
            Config::load(None, &env(&[("INBOXD_STORE_URL", "none"), ("WEBHOOK_EVENTS", "presence-change")])).unwrap();
        assert_eq!((c.store.url, c.webhook.events), (StoreUrl::None, vec!["presence-change".to_owned()]));
        let msg = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs)).unwrap_err().to_string();
        assert!(msg(&[("INBOXD_STORE_URL", "mysql://x")]).contains("store.url"));
        assert_eq!(c.store.group_cache, crate::store::groups::DEFAULT_GROUP_CACHE);
        let small = Config::load(None, &env(&[("INBOXD_STORE_GROUP_CACHE", "5")])).unwrap();
        assert_eq!(small.store.group_cache, 5);
        assert!(msg(&[("INBOXD_STORE_GROUP_CACHE", "0")]).contains("store.group_cache"));
        assert!(msg(&[("INBOXD_STORE_GROUP_CACHE", "10000001")]).contains("store.group_cache"));
        assert!(msg(&[("WEBHOOK_ENDPOINTS", "ftp://a")]).contains("webhook.endpoints"));
        let https = Config::load(None, &env(&[("WEBHOOK_ENDPOINTS", "https://a/hook, http://b")])).unwrap();
        assert_eq!(https.webhook.endpoints, ["https://a/hook", "http://b"]);
        assert!(msg(&[("INBOXD_WEBHOOK_CA_FILE", "/nonexistent/ca.pem")]).contains("webhook.ca_file"));
        let not_pem = file("not a certificate\n");
        let not_pem = not_pem.path().to_str().unwrap();
        assert!(msg(&[("INBOXD_WEBHOOK_CA_FILE", not_pem)]).contains("no PEM certificate"));
        let bad = file("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert!(msg(&[("INBOXD_WEBHOOK_CA_FILE", bad.path().to_str().unwrap())]).contains("webhook.ca_file"));
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tls/ca.pem");
        let c = Config::load(None, &env(&[("INBOXD_WEBHOOK_CA_FILE", ca)])).unwrap();
        assert_eq!(c.webhook.extra_roots.len(), 1);
        assert!(msg(&[("INBOXD_WEBHOOK_EVENTS", "message-sent,typing")]).contains("webhook.events"));
        assert!(msg(&[("INBOXD_WEBHOOK_RETRY_MAX_MS", "1")]).contains("webhook.retry_max_ms"));
    }

    #[test]
    fn tiledesk_webhook_environment_starts_as_chat21_does() {
        use crate::webhook::Chat21Webhook;
        // Tiledesk's docker-compose block for chat21-server: WEBHOOK_ENABLED and PRESENCE_ENABLED unset.
        let tiledesk = [
            ("WEBHOOK_ENDPOINTS", "http://tiledesk:3000/chat21/requests"),
            ("WEBHOOK_EVENTS", "message-sent,message-delivered,conversation-unarchived"),
        ];
        let c = Config::load(None, &env(&tiledesk)).unwrap();
        assert!(c.webhook.enabled, "chat21's WEBHOOK_ENABLED defaults to on");
        assert_eq!(c.webhook.events, ["message-sent", "message-delivered", "conversation-unarchived"]);
        assert_eq!(c.webhook.chat21, Some(Chat21Webhook { presence: false, ignored: vec![] }));
        // Explicitly off, in chat21's variable or inboxd's own file.
        let off = Config::load(None, &env(&[tiledesk[0], ("WEBHOOK_ENABLED", "false")])).unwrap();
        assert!(!off.webhook.enabled);
        let f = file("[webhook]\nenabled = false\n");
        assert!(!Config::load(Some(f.path()), &env(&tiledesk)).unwrap().webhook.enabled);
        // inboxd's own configuration keeps its default (off) and its own gating.
        let own = Config::load(None, &env(&[("INBOXD_WEBHOOK_ENDPOINTS", "http://a")])).unwrap();
        assert!(!own.webhook.enabled && own.webhook.chat21.is_none());
        let f = file("[webhook]\nevents = [\"message-received\", \"presence-change\"]\n");
        let own = Config::load(Some(f.path()), &env(&[])).unwrap();
        assert_eq!((own.webhook.events.len(), own.webhook.chat21), (2, None));
    }

    #[test]
    fn unknown_chat21_event_names_are_ignored_but_refused_in_inboxd_config() {
        use crate::webhook::Chat21Webhook;
        let c = Config::load(
            None,
            &env(&[("WEBHOOK_EVENTS", "message-sent, mesage-delivered,typing"), ("PRESENCE_ENABLED", "true")]),
        )
        .unwrap();
        assert_eq!(c.webhook.events, ["message-sent"]);
        let ignored = vec![("mesage-delivered".to_owned(), Some("message-delivered")), ("typing".to_owned(), None)];
        assert_eq!(c.webhook.chat21, Some(Chat21Webhook { presence: true, ignored }));
        assert!(!c.webhook.enabled, "no WEBHOOK_ENDPOINTS: nothing turns webhooks on");
        // Only unknown names: as if unset (all events), never none.
        let c = Config::load(None, &env(&[("WEBHOOK_EVENTS", "typing")])).unwrap();
        assert!(c.webhook.events.is_empty());
        // inboxd's own keys stay strict.
        let f = file("[webhook]\nevents = [\"typing\"]\n");
        let err = Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("webhook.events") && err.contains("typing"), "{err}");
        let err = Config::load(None, &env(&[("INBOXD_WEBHOOK_EVENTS", "typing")])).unwrap_err().to_string();
        assert!(err.contains("webhook.events"), "{err}");
    }

    #[test]
    fn plugin_chain_is_ordered_with_defaults_and_limits() {
        let f = file(concat!(
            "[plugins]\ndir = \"p\"\n",
            "[[plugins.chain]]\nname = \"redact\"\nfile = \"r.wasm\"\nconfig = { mask = \"*\" }\n",
            "[[plugins.chain]]\nname = \"limit\"\nfile = \"l.wasm\"\nconfig = '{\"max\": 3}'\n",
            "failure = \"fail-open\"\ndeadline_ms = 5\nmemory_mb = 8\nfuel = 1000\ngrants = [\"stdio\"]\n",
            "hooks = [\"on-message\"]\n",
        ));
        let c = Config::load(Some(f.path()), &env(&[])).unwrap();
        let dir = f.path().parent().unwrap().join("p");
        assert_eq!(c.plugins.dir, dir);
        assert_eq!(c.plugins.cache_dir, dir.join(".cache"));
        let [redact, limit] = c.plugins.chain.as_slice() else { panic!("two plugins expected") };
        assert_eq!((redact.name.as_str(), redact.file.clone()), ("redact", dir.join("r.wasm")));
        assert_eq!(redact.config_json, r#"{"mask":"*"}"#);
        assert_eq!(
            (redact.failure, redact.deadline, redact.fuel),
            (FailureMode::FailClosed, DEFAULT_PLUGIN_DEADLINE, None)
        );
        assert_eq!(limit.config_json, r#"{"max": 3}"#);
        assert_eq!(
            (limit.failure, limit.deadline, limit.memory_bytes),
            (FailureMode::FailOpen, Duration::from_millis(5), 8 << 20)
        );
        assert_eq!((limit.fuel, limit.grants.as_slice()), (Some(1000), &[Grant::Stdio][..]));
        assert_eq!((redact.hooks, limit.hooks), (Hooks::BOTH, Hooks { on_message: true, on_deliver: false }));
        let c = Config::load(Some(f.path()), &env(&[("INBOXD_PLUGINS_WATCH", "false")])).unwrap();
        assert!(!c.plugins.watch);
        assert!(Config::load(None, &env(&[])).unwrap().plugins.chain.is_empty());
    }

    #[test]
    fn bad_plugin_config_names_the_plugin_and_key() {
        let msg = |chain: &str| {
            let f = file(&format!("[[plugins.chain]]\nname = \"p\"\nfile = \"p.wasm\"\n{chain}"));
            Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string()
        };
        assert!(msg("failure = \"maybe\"").contains("plugins.chain[0].failure"));
        assert!(msg("deadline_ms = 0").contains("plugins.chain[0].deadline_ms"));
        assert!(msg("grants = [\"network\"]").contains("grant `network` is not implemented"));
        assert!(msg("config = '{nope'").contains("plugins.chain[0].config"));
        assert!(msg("memory_mb = 1000000").contains("memory_mb"));
        assert!(msg("hooks = [\"on-send\"]").contains("plugins.chain[0].hooks"));
        assert!(msg("hooks = []").contains("plugins.chain[0].hooks"));
        assert!(msg("colour = 1").contains("colour"));
        assert!(msg("[[plugins.chain]]\nname = \"p\"\nfile = \"q.wasm\"").contains("used twice"));
    }

    #[test]
    fn http_limits_have_defaults_and_bounds() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.http.address, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(
            (c.http.request_timeout, c.http.header_read_timeout, c.http.max_connections),
            (DEFAULT_HTTP_REQUEST_TIMEOUT, DEFAULT_HTTP_HEADER_READ_TIMEOUT, DEFAULT_HTTP_MAX_CONNECTIONS)
        );
        let c = Config::load(
            None,
            &env(&[
                ("INBOXD_HTTP_ADDRESS", ""),
                ("INBOXD_HTTP_REQUEST_TIMEOUT_MS", "2500"),
                ("INBOXD_HTTP_HEADER_READ_TIMEOUT_MS", "300"),
                ("INBOXD_HTTP_MAX_CONNECTIONS", "8"),
            ]),
        )
        .unwrap();
        assert_eq!(c.http.address, None);
        assert_eq!(
            (c.http.request_timeout, c.http.header_read_timeout, c.http.max_connections),
            (Duration::from_millis(2500), Duration::from_millis(300), 8)
        );
        let msg = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs)).unwrap_err().to_string();
        assert!(msg(&[("INBOXD_HTTP_ADDRESS", "localhost")]).contains("http.address"));
        assert!(msg(&[("INBOXD_HTTP_REQUEST_TIMEOUT_MS", "0")]).contains("http.request_timeout_ms"));
        assert!(msg(&[("INBOXD_HTTP_HEADER_READ_TIMEOUT_MS", "600001")]).contains("http.header_read_timeout_ms"));
        assert!(msg(&[("INBOXD_HTTP_MAX_CONNECTIONS", "0")]).contains("http.max_connections"));
    }

    #[test]
    fn a_short_auth_secret_is_refused_at_start() {
        let secret = "x".repeat(MIN_AUTH_SECRET_BYTES);
        let c = Config::load(None, &env(&[("INBOXD_AUTH_SECRET", &secret)])).unwrap();
        assert_eq!(c.auth.secret, secret);
        assert!(Config::load(None, &env(&[])).unwrap().auth.secret.is_empty(), "no secret: no tokens, no API");
        let err = Config::load(None, &env(&[("INBOXD_AUTH_SECRET", &secret[1..])])).unwrap_err().to_string();
        assert!(err.contains("auth.secret") && err.contains("31 bytes"), "{err}");
        let f = file("[auth]\nsecret = \"change-me\"\n");
        assert!(Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string().contains("auth.secret"));
    }

    #[test]
    fn the_example_config_loads() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/inboxd.toml");
        let c = Config::load(Some(&example), &env(&[])).unwrap();
        assert_eq!(c.http.max_connections, DEFAULT_HTTP_MAX_CONNECTIONS);
    }

    #[test]
    fn unrelated_inboxd_vars_are_ignored() {
        assert!(Config::load(None, &env(&[("INBOXD_CONFIG", "x"), ("INBOXD_TEST_AMQP_URL", "y")])).is_ok());
    }

    #[test]
    fn held_secret_is_optional_but_never_short() {
        assert!(Config::load(None, &env(&[])).unwrap().held.key.is_none());
        let long = "k".repeat(crate::held::entry::MIN_SECRET_BYTES);
        assert!(Config::load(None, &env(&[("INBOXD_HELD_SECRET", &long)])).unwrap().held.key.is_some());
        let f = file("[held]\nsecret = \"short\"\n");
        let err = Config::load(Some(f.path()), &env(&[])).unwrap_err().to_string();
        assert!(err.contains("held.secret") && err.contains("5 bytes") && !err.contains("short"), "{err}");
    }

    #[test]
    fn the_console_is_off_by_default_and_needs_the_http_listener() {
        assert!(!Config::load(None, &env(&[])).unwrap().console.enabled);
        let hash = crate::console::password::hash("pw").unwrap();
        let f = file(&format!(
            "[console]\nenabled = true\n[[console.accounts]]\nname = \"a\"\nrole = \"viewer\"\npassword_hash = {hash:?}\n"
        ));
        assert!(Config::load(Some(f.path()), &env(&[])).unwrap().console.enabled);
        let err = Config::load(Some(f.path()), &env(&[("INBOXD_HTTP_ADDRESS", "")])).unwrap_err().to_string();
        assert!(err.contains("console.enabled") && err.contains("http.address"), "{err}");
    }

    #[test]
    fn dead_letter_queue_is_bounded_by_default() {
        let c = Config::load(None, &env(&[])).unwrap();
        let defaults = QueueLimit {
            max_length: Some(DEFAULT_DEAD_LETTER_MAX_LENGTH),
            max_bytes: Some(DEFAULT_DEAD_LETTER_MAX_BYTES),
        };
        assert_eq!(c.broker.dead_letter_limit, defaults);
        let unbounded = [("INBOXD_BROKER_DEAD_LETTER_MAX_LENGTH", "0"), ("INBOXD_BROKER_DEAD_LETTER_MAX_BYTES", "0")];
        let c = Config::load(None, &env(&unbounded)).unwrap();
        assert_eq!(c.broker.dead_letter_limit, QueueLimit { max_length: None, max_bytes: None });
        let err = Config::load(None, &env(&[("INBOXD_BROKER_DEAD_LETTER_MAX_LENGTH", "-1")])).unwrap_err();
        assert!(err.to_string().contains("broker.dead_letter_max_length"), "{err}");
    }

    #[test]
    fn the_example_configs_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for name in ["inboxd.toml", "dev.toml", "inboxd.docker.toml"] {
            let loaded = Config::load(Some(&examples.join(name)), &env(&[]));
            assert!(loaded.is_ok(), "{name}: {}", loaded.unwrap_err());
        }
    }

    #[test]
    fn routing_defaults_overrides_and_validation() {
        let c = Config::load(None, &env(&[])).unwrap();
        assert_eq!(c.routing, RoutingConfig::default());
        assert!(c.routing.is_trusted("system") && !c.routing.is_trusted("alice"));
        let c = Config::load(
            None,
            &env(&[
                ("INBOXD_ROUTING_TRUSTED_SENDERS", "system, bot_1"),
                ("INBOXD_ROUTING_MAX_INLINE_MEMBERS", "50"),
                ("INBOXD_ROUTING_UNKNOWN_GROUPS", "transient"),
            ]),
        )
        .unwrap();
        assert_eq!(c.routing.trusted_senders, ["system", "bot_1"]);
        assert_eq!((c.routing.max_inline_members, c.routing.unknown_groups), (50, UnknownGroups::Transient));
        let none = Config::load(None, &env(&[("INBOXD_ROUTING_TRUSTED_SENDERS", "")])).unwrap();
        assert!(none.routing.trusted_senders.is_empty());
        let msg = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs)).unwrap_err().to_string();
        assert!(msg(&[("INBOXD_ROUTING_TRUSTED_SENDERS", "a.b")]).contains("routing.trusted_senders"));
        assert!(msg(&[("INBOXD_ROUTING_MAX_INLINE_MEMBERS", "0")]).contains("routing.max_inline_members"));
        assert!(msg(&[("INBOXD_ROUTING_MAX_INLINE_MEMBERS", "100001")]).contains("routing.max_inline_members"));
        assert!(msg(&[("INBOXD_ROUTING_UNKNOWN_GROUPS", "allow")]).contains("routing.unknown_groups"));
        let f = file("[routing]\ntrusted_senders = [\"system\", \"tiledesk\"]\nunknown_groups = \"refuse\"\n");
        assert_eq!(Config::load(Some(f.path()), &env(&[])).unwrap().routing.trusted_senders, ["system", "tiledesk"]);
    }
}
