//! Building chains from `[plugins]` and hot reload: a file change or SIGHUP builds the whole
//! new chain off the async runtime and swaps it in atomically, or keeps the running one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::reloads::{ReloadRecord, Reloads};
use super::{Compiler, PluginsConfig, Runtime, WasmPlugin};
use crate::policy::{Link, PolicyChain, PolicyHandle};
use crate::telemetry;

/// Quiet time after a file event before reloading: editors and copies write in bursts.
pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(250);

/// Turns `[plugins]` into a [`PolicyChain`]; owns the wasmtime runtime, made on first need.
pub struct ChainBuilder {
    runtime: Mutex<Option<Arc<Runtime>>>,
    /// Warm instances kept per plugin: one per concurrent caller (pipeline worker).
    idle_max: usize,
    compiler: Compiler,
}

impl ChainBuilder {
    /// A builder keeping `idle_max` warm instances per plugin, compiling with `compiler`.
    pub fn new(idle_max: usize, compiler: Compiler) -> ChainBuilder {
        ChainBuilder { runtime: Mutex::new(None), idle_max, compiler }
    }

    /// Compiles (or loads from the cache), links and inits every plugin of `plugins.chain`.
    /// Blocking and possibly slow: call it off the async runtime.
    ///
    /// # Errors
    /// The first plugin that fails to load, with the step and the reason.
    pub fn build(&self, plugins: &PluginsConfig) -> anyhow::Result<PolicyChain> {
        if plugins.chain.is_empty() {
            return Ok(PolicyChain::default());
        }
        let runtime = self.runtime(plugins)?;
        let mut links: Vec<Arc<dyn Link>> = Vec::with_capacity(plugins.chain.len());
        for spec in &plugins.chain {
            let started = Instant::now();
            let plugin = WasmPlugin::load(&runtime, spec, self.idle_max)
                .with_context(|| format!("loading plugin `{}` from {}", spec.name, spec.file.display()))?;
            telemetry::plugin_loaded(&spec.name, plugin.digest(), plugin.cache_outcome().as_str(), started.elapsed());
            links.push(Arc::new(plugin));
        }
        Ok(PolicyChain::new(links))
    }

    /// The runtime, created for the first non-empty chain: its cache directory, and fuel
    /// metering if a plugin has a fuel budget (changing either later needs a restart).
    fn runtime(&self, plugins: &PluginsConfig) -> anyhow::Result<Arc<Runtime>> {
        let mut runtime = self.runtime.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(runtime) = runtime.as_ref() {
            return Ok(Arc::clone(runtime));
        }
        let fuel = plugins.chain.iter().any(|p| p.fuel.is_some());
        let made = Runtime::new(Some(&plugins.cache_dir), fuel).context("starting the plugin runtime")?;
        let made = Arc::new(made.compiling_with(self.compiler.clone()));
        *runtime = Some(Arc::clone(&made));
        Ok(made)
    }
}

/// Reads the current `[plugins]` section (the daemon re-reads its config file).
pub type PluginsSource = Box<dyn Fn() -> anyhow::Result<PluginsConfig> + Send + Sync>;

/// Reloads the chain from the config file into a [`PolicyHandle`].
pub struct Reloader {
    builder: Arc<ChainBuilder>,
    handle: PolicyHandle,
    /// Watched for changes, with the plugin directory.
    config_path: Option<PathBuf>,
    /// Called on every reload; only `[plugins]` takes effect without a restart.
    source: PluginsSource,
    /// What the console shows of reloads, and its reload requests.
    reloads: Reloads,
}

impl Reloader {
    /// A reloader of the chain in `handle`, which `reloads` says was loaded from its config.
    pub fn new(
        builder: Arc<ChainBuilder>,
        handle: PolicyHandle,
        config_path: Option<PathBuf>,
        source: PluginsSource,
        reloads: Reloads,
    ) -> Reloader {
        Reloader { builder, handle, config_path, source, reloads }
    }

    /// Re-reads the config, builds the new chain on the blocking pool and swaps it in.
    /// Messages in flight finish on the chain they started with.
    ///
    /// # Errors
    /// When the config or any plugin does not load; the running chain is then untouched.
    pub async fn reload(&self) -> anyhow::Result<usize> {
        self.reload_from().await.map(|(plugins, _)| plugins)
    }

    async fn reload_from(&self) -> anyhow::Result<(usize, PluginsConfig)> {
        let config = (self.source)().context("re-reading the config")?;
        let (builder, plugins) = (Arc::clone(&self.builder), config.clone());
        let chain = tokio::task::spawn_blocking(move || builder.build(&plugins))
            .await
            .context("the chain builder panicked")??;
        let plugins = chain.len();
        self.handle.replace(Arc::new(chain));
        Ok((plugins, config))
    }

    /// Reloads on SIGHUP and, if `plugins.watch`, when a `.wasm` in the plugin directory or
    /// the config file changes; returns when `shutdown` is cancelled.
    ///
    /// # Errors
    /// When the SIGHUP handler cannot be installed.
    pub async fn run(self, plugins: &PluginsConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let (tx, mut changes) = mpsc::channel::<()>(1);
        let _watcher = if plugins.watch { self.watch(&plugins.dir, tx) } else { None };
        loop {
            let trigger = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                _ = hup.recv() => "sighup",
                () = self.reloads.requested() => "console",
                Some(()) = changes.recv() => {
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(RELOAD_DEBOUNCE) => {}
                    }
                    while changes.try_recv().is_ok() {}
                    "file-change"
                }
            };
            let started = Instant::now();
            let reloaded = self.reload_from().await;
            let elapsed_ms = started.elapsed().as_millis() as u64;
            let record = ReloadRecord { at_ms: 0, trigger, plugins: None, error: None, elapsed_ms };
            match reloaded {
                Ok((plugins, config)) => {
                    telemetry::chain_loaded(plugins, trigger, started.elapsed());
                    self.reloads.record(ReloadRecord { plugins: Some(plugins), ..record }, Some(config));
                }
                Err(err) => {
                    telemetry::reload_failed(&err, trigger);
                    self.reloads.record(ReloadRecord { error: Some(format!("{err:#}")), ..record }, None);
                }
            }
        }
    }

    /// Watches the plugin directory and the config file's directory; `None` (logged) when
    /// watching is impossible, leaving SIGHUP.
    fn watch(&self, dir: &Path, changes: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
        let config_file = self.config_path.as_ref().and_then(|p| p.file_name()).map(ToOwned::to_owned);
        let handler = move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) {
                return;
            }
            let relevant = event.paths.iter().any(|path| {
                let is_wasm = path.extension().is_some_and(|e| e == "wasm");
                is_wasm || (config_file.is_some() && path.file_name() == config_file.as_deref())
            });
            if relevant {
                // Full means a reload is already pending; it will see this change too.
                let _ = changes.try_send(());
            }
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(watcher) => watcher,
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch for plugin changes; reload with SIGHUP");
                return None;
            }
        };
        let config_dir = self.config_path.as_ref().map(|p| p.parent().unwrap_or(Path::new(".")).to_owned());
        // Without plugins there may be no plugin directory; the config file is still watched.
        let plugin_dir = dir.is_dir().then(|| dir.to_owned());
        for target in plugin_dir.into_iter().chain(config_dir) {
            let target = if target.as_os_str().is_empty() { PathBuf::from(".") } else { target };
            if let Err(err) = watcher.watch(&target, RecursiveMode::NonRecursive) {
                tracing::warn!(path = %target.display(), error = %err, "cannot watch; reload with SIGHUP");
            }
        }
        Some(watcher)
    }
}
