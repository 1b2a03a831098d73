//! The `[plugins]` section: where plugin files and their compile cache live, whether changes
//! reload the chain, and each plugin of the ordered chain with its sandbox limits.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Value;

use super::Grant;
use crate::policy::{FailureMode, Hooks};
use crate::settings::{ConfigError, in_range, invalid, millis_or};

/// CPU budget of one plugin call (its thread's CPU time) unless the plugin's `deadline_ms` says
/// otherwise; the call's wall-clock ceiling is 20 × this, at least 1 s (`plugin::wall_ceiling`).
pub const DEFAULT_PLUGIN_DEADLINE: Duration = Duration::from_millis(50);
/// CPU budget of `init` on a fresh instance (it may parse a large config).
pub const DEFAULT_PLUGIN_INIT_DEADLINE: Duration = Duration::from_millis(1000);
/// Linear-memory cap of one plugin instance unless `memory_mb` says otherwise.
pub const DEFAULT_PLUGIN_MEMORY_BYTES: usize = 32 * 1024 * 1024;
/// Calls one warm instance serves before it is replaced by a fresh one (1 = one per call).
pub const DEFAULT_PLUGIN_RECYCLE_AFTER: u64 = 10_000;
/// Longest per-call CPU budget accepted (a minute).
const MAX_PLUGIN_DEADLINE_MS: u64 = 60_000;

/// The file format of `[plugins]` (env: `INBOXD_PLUGINS_<KEY>`; the chain only in the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPlugins {
    dir: String,
    cache_dir: String,
    watch: bool,
    chain: Vec<RawPlugin>,
}

impl Default for RawPlugins {
    fn default() -> Self {
        RawPlugins { dir: "plugins".into(), cache_dir: String::new(), watch: true, chain: Vec::new() }
    }
}

/// One `[[plugins.chain]]` entry.
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

/// Validates `[plugins]`; relative paths are taken from `base` (the config file's directory).
///
/// # Errors
/// A [`ConfigError`] naming the key, or the chain entry and its key, at fault.
pub fn validate(raw: RawPlugins, base: &Path) -> Result<PluginsConfig, ConfigError> {
    if raw.dir.trim().is_empty() {
        return Err(invalid("plugins.dir", "must not be empty"));
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
    // A `plugins.*` key error becomes one that names this chain entry.
    let entry = |key: &'static str| {
        let name = name.clone();
        move |err: ConfigError| match err {
            ConfigError::Invalid { message, .. } => ConfigError::Plugin { index, name, key, message },
            other => other,
        }
    };
    let fail = |key: &'static str, message: &str| entry(key)(invalid(key, message));
    let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if raw.name.is_empty() || raw.name.len() > 64 || !raw.name.chars().all(valid_name) {
        return Err(fail("name", "must be 1 to 64 letters, digits, `-` or `_`"));
    }
    if raw.file.trim().is_empty() {
        return Err(fail("file", "must name a .wasm file in plugins.dir"));
    }
    let config_json = match raw.config {
        None => "{}".to_owned(),
        Some(Value::String(text)) => {
            serde_json::from_str::<serde_json::Value>(&text)
                .map_err(|e| fail("config", &format!("not valid JSON: {e}")))?;
            text
        }
        Some(table @ Value::Table(_)) => serde_json::to_string(&table).expect("a TOML table serialises to JSON"),
        Some(_) => return Err(fail("config", "must be an inline table or a JSON string")),
    };
    let failure = match raw.failure.as_deref() {
        None | Some("fail-closed") => FailureMode::FailClosed,
        Some("fail-open") => FailureMode::FailOpen,
        Some(_) => return Err(fail("failure", "must be `fail-closed` or `fail-open`")),
    };
    let hooks = match raw.hooks {
        None => Hooks::BOTH,
        Some(names) => {
            let mut hooks = Hooks { on_message: false, on_deliver: false };
            for name in &names {
                match name.as_str() {
                    "on-message" => hooks.on_message = true,
                    "on-deliver" => hooks.on_deliver = true,
                    _ => return Err(fail("hooks", "must list `on-message` and/or `on-deliver`")),
                }
            }
            if names.is_empty() {
                return Err(fail("hooks", "must list `on-message` and/or `on-deliver`"));
            }
            hooks
        }
    };
    let limit = 1..=MAX_PLUGIN_DEADLINE_MS;
    let deadline = millis_or("deadline_ms", raw.deadline_ms, limit.clone(), DEFAULT_PLUGIN_DEADLINE)
        .map_err(entry("deadline_ms"))?;
    let init_deadline = millis_or("init_deadline_ms", raw.init_deadline_ms, limit, DEFAULT_PLUGIN_INIT_DEADLINE)
        .map_err(entry("init_deadline_ms"))?;
    let memory_bytes = match raw.memory_mb {
        None => DEFAULT_PLUGIN_MEMORY_BYTES,
        Some(mb) => in_range::<usize>("memory_mb", mb, 1..=4096).map_err(entry("memory_mb"))? * 1024 * 1024,
    };
    let positive = |key: &'static str, value: i64, message: &str| {
        u64::try_from(value).ok().filter(|v| *v > 0).ok_or_else(|| fail(key, message))
    };
    let fuel = raw.fuel.map(|fuel| positive("fuel", fuel, "must be a positive number")).transpose()?;
    let grants = raw.grants.iter().map(|g| g.parse::<Grant>()).collect::<Result<Vec<_>, _>>();
    let grants = grants.map_err(|message| fail("grants", &message))?;
    let recycle_after = match raw.recycle_after {
        None => DEFAULT_PLUGIN_RECYCLE_AFTER,
        Some(n) => positive("recycle_after", n, "must be at least 1")?,
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
