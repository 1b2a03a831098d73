//! The one wasmtime [`Engine`] and [`Linker`] of the process, the epoch ticker that bounds
//! every call, and the per-plugin host state that outlives instances and reloads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{HasSelf, Linker, Resource};
use wasmtime::{Config, Engine};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::bindings::Policy;
use super::cache::{CacheOutcome, CompileCache};
use super::compiler::{self, Compiler};
use super::host::PluginHost;
use super::state::PluginState;

/// How often the epoch advances; deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The WASI clock interface whose sleeps are replaced (the version wasmtime-wasi 48 links;
/// guests built against any 0.2.x resolve to it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// The compilation and linking context shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PluginHost>,
    cache: Option<CompileCache>,
    /// Host-side state per plugin name, so counters survive recycling and reloads.
    states: Mutex<HashMap<String, Arc<PluginState>>>,
    /// Shared with every loaded plugin: deadlines hold as long as any plugin is alive.
    ticker: Arc<EpochTicker>,
    /// Whether compiled code counts fuel (a per-call cost, so only when a plugin asks for it).
    fuel: bool,
    compiler: Compiler,
}

impl Runtime {
    /// An engine with epoch interruption (and fuel metering if `fuel`), a linker with the host
    /// imports and the deny-by-default WASI, and (if `cache_dir` is set) the on-disk compile cache.
    ///
    /// # Errors
    /// When the engine cannot be configured or the cache directory cannot be created.
    pub fn new(cache_dir: Option<&Path>, fuel: bool) -> anyhow::Result<Runtime> {
        let engine = engine(fuel)?;
        let linker = linker(&engine).context("linking the host imports")?;
        let cache = cache_dir.map(|dir| CompileCache::open(dir, &engine)).transpose()?;
        let ticker = Arc::new(EpochTicker::start(engine.clone()).context("starting the epoch ticker")?);
        Ok(Runtime { engine, linker, cache, states: Mutex::default(), ticker, fuel, compiler: Compiler::InProcess })
    }

    /// This runtime, compiling what its cache misses with `compiler`.
    #[must_use]
    pub fn compiling_with(self, compiler: Compiler) -> Runtime {
        Runtime { compiler, ..self }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether plugins of this runtime can have a fuel budget.
    pub fn meters_fuel(&self) -> bool {
        self.fuel
    }

    pub(super) fn linker(&self) -> &Linker<PluginHost> {
        &self.linker
    }

    /// A handle that keeps the epoch ticker running; plugins hold one.
    pub(super) fn ticker(&self) -> Arc<EpochTicker> {
        Arc::clone(&self.ticker)
    }

    /// The host-side state of the plugin called `name`, created on first use.
    pub(super) fn state_of(&self, name: &str) -> Arc<PluginState> {
        let mut states = self.states.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(states.entry(name.to_owned()).or_default())
    }

    /// Compiles `wasm` (sha256 `digest`), or loads it from the cache. Slow on a miss: call it
    /// off the async runtime.
    ///
    /// # Errors
    /// When `wasm` is not a valid component.
    pub fn compile(&self, digest: &str, wasm: &[u8]) -> anyhow::Result<(wasmtime::component::Component, CacheOutcome)> {
        let precompile = |out: &mut dyn std::io::Write| self.compiler.precompile(&self.engine, self.fuel, wasm, out);
        match &self.cache {
            Some(cache) => cache.load(&self.engine, digest, precompile),
            None => {
                let mut code = Vec::new();
                precompile(&mut code)?;
                Ok((compiler::load(&self.engine, &code)?, CacheOutcome::Disabled))
            }
        }
    }
}

/// The engine every plugin runs on: epoch interruption, fuel metering if `fuel`, the component
/// model. `inboxd plugin precompile` makes the same one, so the code it compiles loads here.
///
/// # Errors
/// When wasmtime refuses the settings.
pub fn engine(fuel: bool) -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config.epoch_interruption(true).consume_fuel(fuel).wasm_component_model(true);
    Engine::new(&config).map_err(anyhow::Error::from).context("configuring the wasmtime engine")
}

/// Writes `wasm` compiled for the plugin engine (with fuel metering if `fuel`) to `out`: what a
/// [`Compiler::Child`] runs.
///
/// # Errors
/// When `wasm` is not a valid component.
pub fn precompile(fuel: bool, wasm: &[u8], out: &mut dyn std::io::Write) -> anyhow::Result<()> {
    Compiler::InProcess.precompile(&engine(fuel)?, fuel, wasm, out)
}

/// Epoch ticks covering `deadline`, plus one because the current tick is already partly over.
pub fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_micros();
    u64::try_from(deadline.as_micros().div_ceil(tick)).unwrap_or(u64::MAX / 2) + 1
}

fn linker(engine: &Engine) -> anyhow::Result<Linker<PluginHost>> {
    let mut linker = Linker::new(engine);
    Policy::add_to_linker::<_, HasSelf<_>>(&mut linker, |host| host)?;
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    // A WASI sleep would wait in host code, where the epoch deadline cannot stop it: in the
    // sandbox a sleep is over at once.
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("subscribe-duration", |mut store, (_,): (u64,)| ready(store.data_mut()).map(|p| (p,)))?;
    clock.func_wrap("subscribe-instant", |mut store, (_,): (u64,)| ready(store.data_mut()).map(|p| (p,)))?;
    linker.allow_shadowing(false);
    Ok(linker)
}

/// A pollable that is always ready.
struct Ready;

#[wasmtime_wasi::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {}
}

fn ready(host: &mut PluginHost) -> wasmtime::Result<Resource<DynPollable>> {
    let table = host.table();
    let ready = table.push(Ready)?;
    subscribe(table, ready)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct EpochTicker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> std::io::Result<EpochTicker> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("inboxd-epoch".into()).spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EPOCH_TICK) {
                engine.increment_epoch();
            }
        })?;
        Ok(EpochTicker { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_up_to_ticks() {
        assert_eq!(deadline_ticks(Duration::from_millis(5)), 2);
        assert_eq!(deadline_ticks(Duration::from_millis(6)), 3);
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 21);
    }
}
