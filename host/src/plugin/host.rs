//! The store data of one plugin instance ([`PluginHost`]) and the host imports it serves:
//! log, clock, windowed counters and metrics, plus the deny-by-default WASI context.

use std::fmt::Write as _;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::inboxd::policy::{clock, counters, log, metrics, types};
use super::bindings::{Field, Level};
use super::budget::CallBudget;
use super::state::{PluginState, truncate};
use super::stdio::{LogStream, Stdio};

/// Longest log message kept from a plugin.
pub const MAX_LOG_MESSAGE_BYTES: usize = 1024;
/// Most fields kept on one plugin log record.
pub const MAX_LOG_FIELDS: usize = 16;
/// Most resources (WASI streams, pollables) one instance may hold at once.
pub const MAX_TABLE_RESOURCES: usize = 1_000;

/// Everything a plugin instance's `Store` carries.
pub struct PluginHost {
    /// The plugin's configured name, on every log line and metric it causes.
    name: Arc<str>,
    /// Counters and metric names, shared with the plugin's other instances.
    state: Arc<PluginState>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) memory: MemoryCap,
    /// The clocks of the call in progress, read by the epoch callback; reset before each call.
    pub(super) budget: CallBudget,
}

impl PluginHost {
    /// Store data for a fresh instance: WASI denies everything; `stdio` routes output to the log.
    pub fn new(name: Arc<str>, state: Arc<PluginState>, memory_bytes: usize, stdio: bool) -> PluginHost {
        let mut wasi = WasiCtx::builder();
        wasi.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        if stdio {
            wasi.stdout(LogStream::new(Arc::clone(&name), Stdio::Stdout));
            wasi.stderr(LogStream::new(Arc::clone(&name), Stdio::Stderr));
        }
        let limits = StoreLimitsBuilder::new().memory_size(memory_bytes).instances(100).build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_TABLE_RESOURCES);
        let budget = CallBudget::start(std::time::Duration::ZERO, std::time::Duration::ZERO);
        PluginHost { name, state, wasi: wasi.build(), table, memory: MemoryCap { limits, denied: false }, budget }
    }

    /// The instance's resource table (WASI streams and pollables).
    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

/// [`StoreLimits`] that remembers a refused memory growth, so a trap after it reads as out-of-memory.
pub struct MemoryCap {
    limits: StoreLimits,
    /// Set when the cap refused a `memory.grow`; cleared before each call.
    pub denied: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

impl WasiView for PluginHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for PluginHost {}

impl log::Host for PluginHost {
    fn log(&mut self, level: Level, message: String, fields: Vec<Field>) {
        let message = truncate(&message, MAX_LOG_MESSAGE_BYTES);
        let mut rendered = String::new();
        for field in fields.iter().take(MAX_LOG_FIELDS) {
            let sep = if rendered.is_empty() { "" } else { " " };
            let _ = write!(rendered, "{sep}{}={:?}", truncate(&field.key, 64), truncate(&field.value, 256));
        }
        let plugin = &*self.name;
        match level {
            Level::Trace => tracing::trace!(plugin, fields = %rendered, "{message}"),
            Level::Debug => tracing::debug!(plugin, fields = %rendered, "{message}"),
            Level::Info => tracing::info!(plugin, fields = %rendered, "{message}"),
            Level::Warn => tracing::warn!(plugin, fields = %rendered, "{message}"),
            Level::Error => tracing::error!(plugin, fields = %rendered, "{message}"),
        }
    }
}

impl clock::Host for PluginHost {
    fn now_ms(&mut self) -> u64 {
        now_ms_unsigned()
    }
}

impl counters::Host for PluginHost {
    fn incr(&mut self, key: String, window_ms: u64) -> u64 {
        let incremented = self.state.incr(&key, window_ms, now_ms_unsigned());
        if incremented.overflowed {
            crate::telemetry::plugin_counters_full(&self.name);
        }
        incremented.count
    }
}

impl metrics::Host for PluginHost {
    fn count(&mut self, name: String, delta: u64) {
        if self.state.admit_metric(&name) {
            ::metrics::counter!("inboxd_plugin_events_total", "plugin" => self.name.to_string(), "name" => name)
                .increment(delta);
        }
    }
}

fn now_ms_unsigned() -> u64 {
    u64::try_from(crate::clock::now_ms()).unwrap_or(0)
}
