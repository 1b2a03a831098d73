//! The daemon's configuration: a TOML file, overridden by `INBOXD_<SECTION>_<KEY>` environment
//! variables and by chat21-server's own variables, validated into [`Config`] before start.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use toml::{Table, Value};

use crate::plugin::Grant;
use crate::policy::{FailureMode, Hooks};
use crate::token::ClientIds;

/// Largest accepted body by default; chat21 messages are small, attachments go by URL.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// CPU budget of one plugin call (its thread's CPU time) unless the plugin's `deadline_ms` says
/// otherwise; the call's wall-clock ceiling is 20 × this, at least 1 s (`plugin::wall_ceiling`).
pub const DEFAULT_PLUGIN_DEADLINE: Duration = Duration::from_millis(50);
/// CPU budget of `init` on a fresh instance (it may parse a large config).
pub const DEFAULT_PLUGIN_INIT_DEADLINE: Duration = Duration::from_millis(1000);
/// Linear-memory cap of one plugin instance unless `memory_mb` says otherwise.
pub const DEFAULT_PLUGIN_MEMORY_BYTES: usize = 32 * 1024 * 1024;
/// Calls one warm instance serves before it is replaced by a fresh one (1 = one per call).
pub const DEFAULT_PLUGIN_RECYCLE_AFTER: u64 = 10_000;

/// Dead letters kept by default (`broker.dead_letter_max_length`); beyond, the oldest are dropped.
pub const DEFAULT_DEAD_LETTER_MAX_LENGTH: u64 = 100_000;
/// Bytes of dead-letter bodies kept by default (`broker.dead_letter_max_bytes`): 1 GiB.
pub const DEFAULT_DEAD_LETTER_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Shortest `[auth] secret` accepted (RFC 7518 §3.2: an HS256 key has at least 256 bits); a
/// short secret can be guessed offline from any one token.
pub const MIN_AUTH_SECRET_BYTES: usize = 32;
/// How long one HTTP request may take to be answered unless `http.request_timeout_ms` says otherwise.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request head (also the idle time of a kept-alive
/// connection) unless `http.header_read_timeout_ms` says otherwise.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Open HTTP connections unless `http.max_connections` says otherwise; more wait to be accepted.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 256;
/// Most ids a message may list in inline `group.members` unless `routing.max_inline_members`
/// says otherwise: far above a chat21/Tiledesk group (a support group is a handful of agents,
/// a bot and the requester), far below what makes one publish a flood.
pub const DEFAULT_MAX_INLINE_MEMBERS: usize = 1000;
/// Upper bound of `routing.max_inline_members` (a 256 KiB body holds about 20,000 short ids).
pub const MAX_INLINE_MEMBERS_LIMIT: usize = 100_000;

/// The embedded history store, relative to the working directory (the data dir under systemd).
pub const DEFAULT_STORE_URL: &str = "sqlite://inboxd.db";

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
    #[error("config key `plugins.chain[{index}].{key}` (plugin `{name}`): {message}")]
    Plugin { index: usize, name: String, key: &'static str, message: String },
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
    http: RawHttp,
    auth: RawAuth,
    plugins: RawPlugins,
    shards: crate::broker::shards::RawShards,
    store: RawStore,
    held: RawHeld,
    routing: RawRouting,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHeld {
    secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRouting {
    trusted_senders: Vec<String>,
    max_inline_members: i64,
    unknown_groups: String,
}

impl Default for RawRouting {
    fn default() -> Self {
        RawRouting {
            trusted_senders: vec!["system".into()],
            max_inline_members: DEFAULT_MAX_INLINE_MEMBERS as i64,
            unknown_groups: "refuse".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawStore {
    url: String,
    group_cache: i64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore { url: DEFAULT_STORE_URL.into(), group_cache: crate::store::groups::DEFAULT_GROUP_CACHE as i64 }
    }
}

/// Most groups `[store] group_cache` may keep in memory.
const MAX_GROUP_CACHE: i64 = 10_000_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawBroker {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    address: String,
    request_timeout_ms: i64,
    header_read_timeout_ms: i64,
    max_connections: i64,
}

impl Default for RawHttp {
    fn default() -> Self {
        RawHttp {
            address: "127.0.0.1:9464".into(),
            request_timeout_ms: DEFAULT_HTTP_REQUEST_TIMEOUT.as_millis() as i64,
            header_read_timeout_ms: DEFAULT_HTTP_HEADER_READ_TIMEOUT.as_millis() as i64,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS as i64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    secret: String,
    key_id: String,
    resource_server_id: String,
    client_ids: String,
    ttl_secs: i64,
}

impl Default for RawAuth {
    fn default() -> Self {
        RawAuth {
            secret: String::new(),
            key_id: String::new(),
            resource_server_id: "rabbitmq".into(),
            client_ids: "any".into(),
            ttl_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebhook {
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPlugins {
    dir: String,
    cache_dir: String,
    watch: bool,
    chain: Vec<RawPlugin>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    name: String,
    file: String,
    config: Option<Value>,
    failure: Option<String>,
    deadline_ms: Option<i64>,
    init_deadline_ms: Option<i64>,
    memory_mb: Option<i64>,
    fuel: Option<i64>,
    #[serde(default)]
    grants: Vec<String>,
    recycle_after: Option<i64>,
    hooks: Option<Vec<String>>,
}

impl Default for RawPlugins {
    fn default() -> Self {
        RawPlugins { dir: "plugins".into(), cache_dir: String::new(), watch: true, chain: Vec::new() }
    }
}

impl Default for RawBroker {
    fn default() -> Self {
        RawBroker {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            urls: Vec::new(),
            exchange: "amq.topic".into(),
            queue: String::new(),
            prefetch: 256,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 30_000,
            dead_letter_max_length: DEFAULT_DEAD_LETTER_MAX_LENGTH as i64,
            dead_letter_max_bytes: DEFAULT_DEAD_LETTER_MAX_BYTES as i64,
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
    pub plugins: PluginsConfig,
    pub http: HttpConfig,
    pub auth: AuthConfig,
    /// Sharded consumption for several processes (`[shards]`); `None`: the one queue.
    pub shards: Option<crate::broker::shards::ShardsConfig>,
    /// Where history, conversations and groups are kept (see [`crate::store`]).
    pub store: crate::store::StoreUrl,
    /// `[store] group_cache`: stored groups routing keeps in memory (an LRU over the store).
    pub store_group_cache: usize,
    pub held: HeldConfig,
    pub routing: RoutingConfig,
}

/// Held messages (`[held]`).
#[derive(Debug, Clone)]
pub struct HeldConfig {
    /// Signs held entries in the daemon and verifies them on `inboxd held release`. `None`
    /// (no secret): the daemon dead-letters what a plugin holds, and release refuses to run.
    pub key: Option<crate::held::HeldKey>,
}

/// The operator HTTP listener (`[http]`) and its bounds against slow or greedy clients.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Where `/metrics`, `/healthz`, `/readyz` and the history API are served; `None` turns the
    /// listener off.
    pub address: Option<std::net::SocketAddr>,
    /// Longest time from a request's head to its answer; longer requests get 503.
    pub request_timeout: Duration,
    /// Longest time a client may take to send a request head, or stay idle between requests.
    pub header_read_timeout: Duration,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
}

/// Who may address whom through group messages (`[routing]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    /// Server-side senders (chat21-http-server's `system`, a Tiledesk bot account): their inline
    /// `group.members` are honoured for groups inboxd does not know, and they may post into
    /// stored groups they are not members of. Never a stored group's members list, though.
    pub trusted_senders: Vec<String>,
    /// Most ids a message may list in `group.members`, whoever sends it; a longer list is
    /// dead-lettered (`too-many-members`) before any member is looked at.
    pub max_inline_members: usize,
    pub unknown_groups: UnknownGroups,
}

impl RoutingConfig {
    pub fn is_trusted(&self, sender: &str) -> bool {
        self.trusted_senders.iter().any(|trusted| trusted == sender)
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            trusted_senders: vec!["system".into()],
            max_inline_members: DEFAULT_MAX_INLINE_MEMBERS,
            unknown_groups: UnknownGroups::Refuse,
        }
    }
}

/// What a group message to a group inboxd has no record of does, from an untrusted sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownGroups {
    /// The sender gets a FAILED copy (`unknown-group`); nobody else gets anything.
    Refuse,
    /// chat21's transient group: the inline `group.members` (from anyone), the sender and
    /// the group's timeline get it.
    Transient,
}

/// How `inboxd token` signs user tokens: the broker's oauth2 HS256 key.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The HS256 secret shared with RabbitMQ's `rabbitmq_auth_backend_oauth2` (empty: no tokens).
    pub secret: String,
    /// The `kid` header (empty: none, the broker's default key is used).
    pub key_id: String,
    /// RabbitMQ's `resource_server_id`: the audience and the scope prefix.
    pub resource_server_id: String,
    pub client_ids: ClientIds,
    pub ttl: Duration,
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

/// Webhooks: chat21's events POSTed to each endpoint through a durable outbox in the store.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub enabled: bool,
    /// `http://` URLs; every event goes to each of them.
    pub endpoints: Vec<String>,
    /// The chat21 event names sent (all of [`crate::webhook::EVENTS`] when the list is empty).
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

/// The policy plugins: where they are, and the ordered chain.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginsConfig {
    /// Where plugin files live; relative paths in the file are relative to the config file.
    pub dir: PathBuf,
    /// Compiled code, keyed by content hash (default `<dir>/.cache`); must stay private.
    pub cache_dir: PathBuf,
    /// Reload when a `.wasm` in `dir` or the config file changes (SIGHUP reloads regardless).
    pub watch: bool,
    /// Plugins in the order they run; empty means every message is accepted, at no cost.
    pub chain: Vec<PluginConfig>,
}

/// One plugin of the chain, with its sandbox limits.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// Unique in the chain; shown to senders in rejections and used as a metrics label.
    pub name: String,
    /// The component file (`dir` joined with the configured `file`).
    pub file: PathBuf,
    /// The JSON document passed to `init` (`{}` when the config has none).
    pub config_json: String,
    pub failure: FailureMode,
    /// The hooks the plugin is called for; the others accept without a call.
    pub hooks: Hooks,
    /// CPU budget of one `on-message` / `on-deliver` call: the calling thread's CPU time, so
    /// time the thread waits for a CPU does not count. The wall-clock ceiling is 20 × this
    /// (at least 1 s); a call cut by the ceiling alone is retried once, then deferred.
    pub deadline: Duration,
    /// CPU budget of instantiation plus `init` (same rules).
    pub init_deadline: Duration,
    /// Cap on each linear memory of an instance.
    pub memory_bytes: usize,
    /// Fuel per call (roughly, wasm instructions); `None` for no fuel limit.
    pub fuel: Option<u64>,
    /// Capabilities beyond the contract and inert WASI.
    pub grants: Vec<Grant>,
    /// Calls a warm instance serves before it is replaced; 1 gives strict per-message isolation.
    pub recycle_after: u64,
}

impl PluginConfig {
    /// A plugin with default limits, named after its file (for `inboxd plugin test`).
    pub fn for_file(file: &Path) -> PluginConfig {
        let name = file.file_stem().map_or_else(|| "plugin".to_owned(), |s| s.to_string_lossy().into_owned());
        PluginConfig {
            name,
            file: file.to_owned(),
            config_json: "{}".into(),
            failure: FailureMode::FailClosed,
            hooks: Hooks::BOTH,
            deadline: DEFAULT_PLUGIN_DEADLINE,
            init_deadline: DEFAULT_PLUGIN_INIT_DEADLINE,
            memory_bytes: DEFAULT_PLUGIN_MEMORY_BYTES,
            fuel: None,
            grants: Vec::new(),
            recycle_after: DEFAULT_PLUGIN_RECYCLE_AFTER,
        }
    }
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
        let base = path.and_then(Path::parent).unwrap_or(Path::new("."));
        Config::validate(raw, base)
    }

    fn validate(raw: RawConfig, base: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid { key, message: message.to_owned() };
        let app_id = raw.app.id;
        crate::chat21::check_id("app", &app_id).map_err(|e| invalid("app.id", &e.to_string()))?;
        if app_id == "observer" {
            return Err(invalid("app.id", "`observer` is reserved by the chat21 protocol"));
        }
        let is_amqp = |url: &String| url.starts_with("amqp://") || url.starts_with("amqps://");
        if !is_amqp(&raw.broker.url) {
            return Err(invalid("broker.url", "must be an amqp:// or amqps:// URI"));
        }
        if !raw.broker.urls.iter().all(is_amqp) {
            return Err(invalid("broker.urls", "must all be amqp:// or amqps:// URIs"));
        }
        let urls = if raw.broker.urls.is_empty() { vec![raw.broker.url] } else { raw.broker.urls };
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
        let limit = |key: &'static str, v: i64| {
            u64::try_from(v).map(|v| (v > 0).then_some(v)).map_err(|_| invalid(key, "must be 0 (no limit) or positive"))
        };
        let dead_letter_limit = QueueLimit {
            max_length: limit("broker.dead_letter_max_length", raw.broker.dead_letter_max_length)?,
            max_bytes: limit("broker.dead_letter_max_bytes", raw.broker.dead_letter_max_bytes)?,
        };
        let workers = match usize::try_from(raw.pipeline.workers) {
            // Half the cores: the broker connection's I/O thread and the async side need the rest,
            // and on small hosts an extra worker thread costs more in wake-ups than it gains.
            Ok(0) => std::thread::available_parallelism().map_or(1, |cores| (usize::from(cores) / 2).max(1)),
            Ok(n) if n <= 1024 => n,
            _ => return Err(invalid("pipeline.workers", "must be between 0 (half the cores) and 1024")),
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
        let plugins = validate_plugins(raw.plugins, base)?;
        let routing = validate_routing(raw.routing)?;
        Ok(Config {
            routing,
            plugins,
            broker: BrokerConfig {
                urls,
                exchange: raw.broker.exchange,
                queue,
                prefetch,
                reconnect_initial,
                reconnect_max,
                dead_letter_limit,
            },
            app_id,
            pipeline: PipelineConfig { workers, max_body_bytes, shutdown_timeout },
            log: LogConfig { level: raw.log.level, format },
            http: validate_http(&raw.http)?,
            auth: validate_auth(raw.auth)?,
            shards: crate::broker::shards::validate(raw.shards)?,
            store: raw
                .store
                .url
                .parse()
                .map_err(|message: String| ConfigError::Invalid { key: "store.url", message })?,
            store_group_cache: usize::try_from(raw.store.group_cache)
                .ok()
                .filter(|n| (1..=MAX_GROUP_CACHE as usize).contains(n))
                .ok_or_else(|| invalid("store.group_cache", &format!("must be between 1 and {MAX_GROUP_CACHE}")))?,
            webhook: validate_webhook(raw.webhook)?,
            held: validate_held(raw.held)?,
        })
    }
}

fn validate_routing(raw: RawRouting) -> Result<RoutingConfig, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    for sender in &raw.trusted_senders {
        crate::chat21::check_id("user", sender).map_err(|e| invalid("routing.trusted_senders", e.to_string()))?;
    }
    let max_inline_members = usize::try_from(raw.max_inline_members)
        .ok()
        .filter(|n| (1..=MAX_INLINE_MEMBERS_LIMIT).contains(n))
        .ok_or_else(|| {
            invalid("routing.max_inline_members", format!("must be between 1 and {MAX_INLINE_MEMBERS_LIMIT}"))
        })?;
    let unknown_groups = match raw.unknown_groups.as_str() {
        "refuse" => UnknownGroups::Refuse,
        "transient" => UnknownGroups::Transient,
        _ => return Err(invalid("routing.unknown_groups", "must be `refuse` or `transient`".into())),
    };
    Ok(RoutingConfig { trusted_senders: raw.trusted_senders, max_inline_members, unknown_groups })
}

fn validate_webhook(raw: RawWebhook) -> Result<WebhookConfig, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    if let Some(bad) = raw.endpoints.iter().find(|e| !e.starts_with("http://")) {
        let shown = crate::webhook::endpoint::redact(bad);
        return Err(invalid("webhook.endpoints", format!("{shown}: only http:// endpoints are supported")));
    }
    if let Some(bad) = raw.events.iter().find(|e| !crate::webhook::EVENTS.contains(&e.as_str())) {
        let known = crate::webhook::EVENTS.join(", ");
        return Err(invalid("webhook.events", format!("{bad:?} is not one of {known}")));
    }
    let positive = |key: &'static str, v: i64, max: i64| {
        (1..=max).contains(&v).then_some(v).ok_or_else(|| invalid(key, format!("must be between 1 and {max}")))
    };
    let millis = |key, v| positive(key, v, 86_400_000).map(|v| Duration::from_millis(v as u64));
    let retry_initial = millis("webhook.retry_initial_ms", raw.retry_initial_ms)?;
    let retry_max = millis("webhook.retry_max_ms", raw.retry_max_ms)?;
    if retry_max < retry_initial {
        return Err(invalid("webhook.retry_max_ms", "must not be below webhook.retry_initial_ms".into()));
    }
    Ok(WebhookConfig {
        enabled: raw.enabled,
        endpoints: raw.endpoints,
        events: raw.events,
        secret: raw.secret,
        max_attempts: positive("webhook.max_attempts", raw.max_attempts, 1000)? as u32,
        concurrency: positive("webhook.concurrency", raw.concurrency, 1024)? as usize,
        timeout: millis("webhook.timeout_ms", raw.timeout_ms)?,
        retry_initial,
        retry_max,
    })
}

fn validate_held(raw: RawHeld) -> Result<HeldConfig, ConfigError> {
    if raw.secret.is_empty() {
        return Ok(HeldConfig { key: None });
    }
    let key = crate::held::HeldKey::new(&raw.secret).map_err(|len| ConfigError::Invalid {
        key: "held.secret",
        message: format!("is {len} bytes; use at least {} random bytes", crate::held::entry::MIN_SECRET_BYTES),
    })?;
    Ok(HeldConfig { key: Some(key) })
}

fn validate_http(raw: &RawHttp) -> Result<HttpConfig, ConfigError> {
    let invalid = |key: &'static str, message: String| ConfigError::Invalid { key, message };
    let address = raw.address.trim();
    let address = if address.is_empty() {
        None
    } else {
        let parsed = address.parse().map_err(|_| {
            invalid("http.address", format!("{address:?} is not an ip:port address (empty turns the listener off)"))
        })?;
        Some(parsed)
    };
    let millis = |key: &'static str, v: i64| {
        (1..=600_000)
            .contains(&v)
            .then(|| Duration::from_millis(v as u64))
            .ok_or_else(|| invalid(key, "must be between 1 and 600000 milliseconds".into()))
    };
    let max_connections = usize::try_from(raw.max_connections)
        .ok()
        .filter(|n| (1..=65_536).contains(n))
        .ok_or_else(|| invalid("http.max_connections", "must be between 1 and 65536".into()))?;
    Ok(HttpConfig {
        address,
        request_timeout: millis("http.request_timeout_ms", raw.request_timeout_ms)?,
        header_read_timeout: millis("http.header_read_timeout_ms", raw.header_read_timeout_ms)?,
        max_connections,
    })
}

fn validate_auth(raw: RawAuth) -> Result<AuthConfig, ConfigError> {
    let invalid = |key: &'static str, message: &str| ConfigError::Invalid { key, message: message.to_owned() };
    let client_ids = match raw.client_ids.as_str() {
        "any" => ClientIds::Any,
        "prefix" => ClientIds::Prefix,
        "exact" => ClientIds::Exact,
        _ => return Err(invalid("auth.client_ids", "must be `any` (chat21-compatible), `prefix` or `exact` (strict)")),
    };
    let ttl = u64::try_from(raw.ttl_secs)
        .ok()
        .filter(|t| *t > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| invalid("auth.ttl_secs", "must be a positive number of seconds"))?;
    if raw.resource_server_id.is_empty() {
        return Err(invalid("auth.resource_server_id", "must not be empty"));
    }
    if !raw.secret.is_empty() && raw.secret.len() < MIN_AUTH_SECRET_BYTES {
        let message = format!(
            "is {} bytes; an HS256 key needs at least {MIN_AUTH_SECRET_BYTES} (e.g. `openssl rand -hex 32`), \
             and the broker's oauth2 key must be the same",
            raw.secret.len()
        );
        return Err(invalid("auth.secret", &message));
    }
    Ok(AuthConfig {
        secret: raw.secret,
        key_id: raw.key_id,
        resource_server_id: raw.resource_server_id,
        client_ids,
        ttl,
    })
}

fn validate_plugins(raw: RawPlugins, base: &Path) -> Result<PluginsConfig, ConfigError> {
    if raw.dir.trim().is_empty() {
        return Err(ConfigError::Invalid { key: "plugins.dir", message: "must not be empty".into() });
    }
    let dir = base.join(&raw.dir);
    let cache_dir = if raw.cache_dir.is_empty() { dir.join(".cache") } else { base.join(&raw.cache_dir) };
    let mut names = HashSet::new();
    let chain = raw
        .chain
        .into_iter()
        .enumerate()
        .map(|(index, plugin)| {
            let spec = validate_plugin(index, plugin, &dir)?;
            if !names.insert(spec.name.clone()) {
                let message = "the name is used twice in the chain".to_owned();
                return Err(ConfigError::Plugin { index, name: spec.name, key: "name", message });
            }
            Ok(spec)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PluginsConfig { dir, cache_dir, watch: raw.watch, chain })
}

fn validate_plugin(index: usize, raw: RawPlugin, dir: &Path) -> Result<PluginConfig, ConfigError> {
    let name = raw.name.clone();
    let invalid = |key: &'static str, message: &str| ConfigError::Plugin {
        index,
        name: name.clone(),
        key,
        message: message.to_owned(),
    };
    let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if raw.name.is_empty() || raw.name.len() > 64 || !raw.name.chars().all(valid_name) {
        return Err(invalid("name", "must be 1 to 64 letters, digits, `-` or `_`"));
    }
    if raw.file.trim().is_empty() {
        return Err(invalid("file", "must name a .wasm file in plugins.dir"));
    }
    let config_json = match raw.config {
        None => "{}".to_owned(),
        Some(Value::String(text)) => {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| invalid("config", &format!("not valid JSON: {e}")))?;
            text
        }
        Some(table @ Value::Table(_)) => serde_json::to_string(&table).expect("a TOML table serialises to JSON"),
        Some(_) => return Err(invalid("config", "must be an inline table or a JSON string")),
    };
    let failure = match raw.failure.as_deref() {
        None | Some("fail-closed") => FailureMode::FailClosed,
        Some("fail-open") => FailureMode::FailOpen,
        Some(_) => return Err(invalid("failure", "must be `fail-closed` or `fail-open`")),
    };
    let hooks = match raw.hooks {
        None => Hooks::BOTH,
        Some(names) => {
            let mut hooks = Hooks { on_message: false, on_deliver: false };
            for name in &names {
                match name.as_str() {
                    "on-message" => hooks.on_message = true,
                    "on-deliver" => hooks.on_deliver = true,
                    _ => return Err(invalid("hooks", "must list `on-message` and/or `on-deliver`")),
                }
            }
            if names.is_empty() {
                return Err(invalid("hooks", "must list `on-message` and/or `on-deliver`"));
            }
            hooks
        }
    };
    let millis = |key: &'static str, value: Option<i64>, default: Duration| match value {
        None => Ok(default),
        Some(ms) if (1..=60_000).contains(&ms) => Ok(Duration::from_millis(ms as u64)),
        Some(_) => Err(invalid(key, "must be between 1 and 60000 milliseconds")),
    };
    let deadline = millis("deadline_ms", raw.deadline_ms, DEFAULT_PLUGIN_DEADLINE)?;
    let init_deadline = millis("init_deadline_ms", raw.init_deadline_ms, DEFAULT_PLUGIN_INIT_DEADLINE)?;
    let memory_bytes = match raw.memory_mb {
        None => DEFAULT_PLUGIN_MEMORY_BYTES,
        Some(mb) if (1..=4096).contains(&mb) => mb as usize * 1024 * 1024,
        Some(_) => return Err(invalid("memory_mb", "must be between 1 and 4096")),
    };
    let fuel = match raw.fuel {
        None => None,
        Some(fuel) if fuel > 0 => Some(fuel as u64),
        Some(_) => return Err(invalid("fuel", "must be a positive number")),
    };
    let grants = raw.grants.iter().map(|g| g.parse::<Grant>()).collect::<Result<Vec<_>, _>>();
    let grants = grants.map_err(|message| invalid("grants", &message))?;
    let recycle_after = match raw.recycle_after {
        None => DEFAULT_PLUGIN_RECYCLE_AFTER,
        Some(n) if n >= 1 => n as u64,
        Some(_) => return Err(invalid("recycle_after", "must be at least 1")),
    };
    Ok(PluginConfig {
        name: raw.name,
        file: dir.join(raw.file),
        config_json,
        failure,
        hooks,
        deadline,
        init_deadline,
        memory_bytes,
        fuel,
        grants,
        recycle_after,
    })
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
        assert_eq!(c.store, StoreUrl::Sqlite(DEFAULT_STORE_URL.into()));
        assert_eq!(c.webhook.max_attempts, 10);
        let c =
            Config::load(None, &env(&[("INBOXD_STORE_URL", "none"), ("WEBHOOK_EVENTS", "presence-change")])).unwrap();
        assert_eq!((c.store, c.webhook.events), (StoreUrl::None, vec!["presence-change".to_owned()]));
        let msg = |pairs: &[(&str, &str)]| Config::load(None, &env(pairs)).unwrap_err().to_string();
        assert!(msg(&[("INBOXD_STORE_URL", "mysql://x")]).contains("store.url"));
        assert_eq!(c.store_group_cache, crate::store::groups::DEFAULT_GROUP_CACHE);
        let small = Config::load(None, &env(&[("INBOXD_STORE_GROUP_CACHE", "5")])).unwrap();
        assert_eq!(small.store_group_cache, 5);
        assert!(msg(&[("INBOXD_STORE_GROUP_CACHE", "0")]).contains("store.group_cache"));
        assert!(msg(&[("INBOXD_STORE_GROUP_CACHE", "10000001")]).contains("store.group_cache"));
        assert!(msg(&[("WEBHOOK_ENDPOINTS", "https://a")]).contains("webhook.endpoints"));
        assert!(msg(&[("WEBHOOK_EVENTS", "message-sent,typing")]).contains("webhook.events"));
        assert!(msg(&[("INBOXD_WEBHOOK_RETRY_MAX_MS", "1")]).contains("webhook.retry_max_ms"));
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
