//! One loaded plugin ([`WasmPlugin`]): its `InstancePre`, a pool of warm instances recycled
//! after N calls and always after a failure, the limits armed before every call, and the one
//! retry of a call that the wall-clock ceiling (not the plugin) cut short.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Store, Trap};

use super::PluginConfig;
use super::bindings::{Envelope, EventKind, Policy, PolicyPre, Verdict as WitVerdict};
use super::budget::{CallBudget, Cut, wall_ceiling};
use super::cache::{CacheOutcome, sha256_hex};
use super::engine::{EpochTicker, Runtime};
use super::error::LoadError;
use super::host::PluginHost;
use super::imports::{Grant, classify};
use super::state::{PluginState, truncate};
use crate::policy::{Decision, Failure, FailureKind, FailureMode, Hook, Hooks, Link, Subject};
use crate::telemetry;

/// The exports every policy must have.
pub const REQUIRED_EXPORTS: [&str; 3] = ["init", "on-message", "on-deliver"];
/// Longest failure detail kept (traps carry a wasm backtrace).
const MAX_FAILURE_DETAIL_BYTES: usize = 300;

/// A compiled, linked and init-checked plugin, ready to be called from any thread.
pub struct WasmPlugin {
    name: Arc<str>,
    /// First 12 hex digits of the wasm's sha256.
    digest: String,
    pre: PolicyPre<PluginHost>,
    config_json: String,
    failure: FailureMode,
    hooks: Hooks,
    /// CPU budget of one call (its wall-clock ceiling follows from it, see [`wall_ceiling`]).
    deadline: Duration,
    /// CPU budget of instantiation plus `init`.
    init_deadline: Duration,
    memory_bytes: usize,
    /// The budget per call; `None` with a metering engine means unlimited.
    fuel: Option<u64>,
    meters_fuel: bool,
    stdio: bool,
    recycle_after: u64,
    state: Arc<PluginState>,
    /// Idle warm instances; at most `idle_max` are kept.
    idle: Mutex<Vec<Warm>>,
    idle_max: usize,
    /// How the code was obtained, for reports.
    cache: CacheOutcome,
    /// Keeps deadlines enforced while this plugin lives, even if the runtime is gone.
    _ticker: Arc<EpochTicker>,
}

/// A live instance with its store, and how many calls it has served.
struct Warm {
    store: Store<PluginHost>,
    policy: Policy,
    calls: u64,
}

impl WasmPlugin {
    /// Reads, compiles (or loads from the cache), checks the imports, links, and makes one
    /// instance and runs `init` on it, keeping it warm. Slow: call it off the async runtime.
    ///
    /// # Errors
    /// A [`LoadError`] naming the plugin and the step that failed.
    pub fn load(runtime: &Runtime, spec: &PluginConfig, idle_max: usize) -> Result<WasmPlugin, LoadError> {
        let plugin = spec.name.clone();
        if spec.fuel.is_some() && !runtime.meters_fuel() {
            return Err(LoadError::FuelUnavailable { plugin });
        }
        let path = spec.file.display().to_string();
        let wasm = std::fs::read(&spec.file).map_err(|source| LoadError::Read {
            plugin: plugin.clone(),
            path: path.clone(),
            source,
        })?;
        let digest = sha256_hex(&wasm);
        let (component, cache) = runtime.compile(&digest, &wasm).map_err(|e| LoadError::Compile {
            plugin: plugin.clone(),
            path,
            message: format!("{e:#}"),
        })?;
        check_component(runtime, &component, &spec.grants).map_err(|e| e.named(&plugin))?;
        let pre = runtime
            .linker()
            .instantiate_pre(&component)
            .and_then(PolicyPre::new)
            .map_err(|e| LoadError::Link { plugin: plugin.clone(), message: format!("{e:#}") })?;
        let loaded = WasmPlugin {
            name: Arc::from(spec.name.as_str()),
            digest: digest[..12].to_owned(),
            pre,
            config_json: spec.config_json.clone(),
            failure: spec.failure,
            hooks: spec.hooks,
            deadline: spec.deadline,
            init_deadline: spec.init_deadline,
            memory_bytes: spec.memory_bytes,
            fuel: spec.fuel,
            meters_fuel: runtime.meters_fuel(),
            stdio: spec.grants.contains(&Grant::Stdio),
            recycle_after: spec.recycle_after.max(1),
            state: runtime.state_of(&spec.name),
            idle: Mutex::new(Vec::new()),
            idle_max: idle_max.max(1),
            cache,
            _ticker: runtime.ticker(),
        };
        let warm = loaded.fresh().map_err(|e| match e {
            Fresh::Refused(message) => LoadError::InitRefused { plugin: plugin.clone(), message },
            Fresh::Failed(failure) => LoadError::InitFailed { plugin: plugin.clone(), failure },
        })?;
        loaded.park(warm);
        Ok(loaded)
    }

    /// Whether the code came from the compile cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// A new store and instance with `init` run on it.
    fn fresh(&self) -> Result<Warm, Fresh> {
        let host = PluginHost::new(Arc::clone(&self.name), Arc::clone(&self.state), self.memory_bytes, self.stdio);
        let mut store = Store::new(self.pre.engine(), host);
        store.limiter(|host| &mut host.memory);
        store.epoch_deadline_callback(|mut store| Ok(store.data_mut().budget.on_epoch()));
        self.arm(&mut store, self.init_deadline, wall_ceiling(self.init_deadline));
        let limits = (self.init_deadline, self.memory_bytes);
        let policy = self.pre.instantiate(&mut store).map_err(|e| Fresh::Failed(failure(&store, &e, limits)))?;
        match policy.call_init(&mut store, &self.config_json) {
            Ok(Ok(())) => Ok(Warm { store, policy, calls: 0 }),
            Ok(Err(message)) => Err(Fresh::Refused(message)),
            Err(e) => Err(Fresh::Failed(failure(&store, &e, limits))),
        }
    }

    /// Starts the CPU and wall clocks of the next call (`cpu` of CPU time, `ceiling` of wall
    /// time), sets its fuel and clears the out-of-memory flag.
    fn arm(&self, store: &mut Store<PluginHost>, cpu: Duration, ceiling: Duration) {
        let budget = CallBudget::start(cpu, ceiling);
        store.set_epoch_deadline(budget.first_check());
        store.data_mut().budget = budget;
        if self.meters_fuel {
            // A metering engine counts for every plugin; those without a budget get all of it.
            store.set_fuel(self.fuel.unwrap_or(u64::MAX)).expect("fuel metering is enabled on the engine");
        }
        store.data_mut().memory.denied = false;
    }

    fn take(&self) -> Option<Warm> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }

    fn park(&self, warm: Warm) {
        let mut idle = self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < self.idle_max {
            idle.push(warm);
        }
    }
}

/// Why a fresh instance could not be made: `init` returned an error, or it trapped.
enum Fresh {
    Refused(String),
    Failed(Failure),
}

impl Link for WasmPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn digest(&self) -> &str {
        &self.digest
    }

    fn failure_mode(&self) -> FailureMode {
        self.failure
    }

    fn hooks(&self) -> Hooks {
        self.hooks
    }

    /// Calls the plugin; a call that the wall-clock ceiling cut short with CPU budget left is
    /// made once more, with the whole CPU budget: the cut said nothing about the plugin, and the
    /// retry may run on a fresh instance whose first call touches memory anew. A plugin that
    /// really loops is thus stopped after at most twice its budget, once.
    fn call(&self, hook: Hook<'_>, subject: Subject<'_>) -> Result<Decision, Failure> {
        match self.attempt(hook, subject) {
            Err(failure) if failure.kind == FailureKind::Ceiling => {
                telemetry::plugin_call_retried(&self.name, &self.digest, hook.as_str(), failure.labels());
                self.attempt(hook, subject)
            }
            answer => answer,
        }
    }
}

impl WasmPlugin {
    /// One call with the plugin's CPU budget, on a warm instance or a fresh one.
    fn attempt(&self, hook: Hook<'_>, subject: Subject<'_>) -> Result<Decision, Failure> {
        let mut warm = match self.take() {
            Some(warm) => warm,
            None => self.fresh().map_err(|e| match e {
                Fresh::Refused(message) => {
                    Failure { kind: FailureKind::Trap, detail: format!("init refused its config: {message}") }
                }
                Fresh::Failed(failure) => failure,
            })?,
        };
        self.arm(&mut warm.store, self.deadline, wall_ceiling(self.deadline));
        let envelope = envelope(subject);
        let answer = match hook {
            Hook::Message => warm.policy.call_on_message(&mut warm.store, &envelope),
            Hook::Deliver { inbox_of } => warm.policy.call_on_deliver(&mut warm.store, &envelope, inbox_of),
        };
        match answer {
            Ok(verdict) => {
                warm.calls += 1;
                if warm.calls < self.recycle_after {
                    self.park(warm);
                }
                Ok(decision(verdict))
            }
            // The instance is dropped here: after a trap it cannot be entered again.
            Err(e) => Err(failure(&warm.store, &e, (self.deadline, self.memory_bytes))),
        }
    }
}

fn envelope(subject: Subject<'_>) -> Envelope {
    let message = subject.message;
    Envelope {
        kind: if message.is_group() { EventKind::GroupMessage } else { EventKind::DirectMessage },
        app_id: message.app.clone(),
        sender: message.sender.clone(),
        recipient: message.recipient.clone(),
        message_id: message.message_id.clone(),
        message_json: subject.json.to_owned(),
        received_at_ms: u64::try_from(message.received_at_ms).unwrap_or(0),
    }
}

fn decision(verdict: WitVerdict) -> Decision {
    match verdict {
        WitVerdict::Accept => Decision::Accept,
        WitVerdict::Modify(json) => Decision::Modify(json),
        WitVerdict::Reject(r) => Decision::Reject { code: r.code, reason: r.reason, notify_sender: r.notify_sender },
        WitVerdict::Drop => Decision::Drop,
        WitVerdict::Hold(reason) => Decision::Hold(reason),
    }
}

/// Classifies a call error: CPU budget, wall-clock ceiling, fuel, memory cap, or another trap.
/// `limits` are the configured CPU budget and memory cap, for the detail.
fn failure(store: &Store<PluginHost>, error: &wasmtime::Error, limits: (Duration, usize)) -> Failure {
    let budget = &store.data().budget;
    let (kind, detail) = match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => match budget.cut() {
            Some((Cut::Ceiling, used)) => (
                FailureKind::Ceiling,
                format!(
                    "cut short by its wall-clock ceiling of {} ms after {:.3} ms of CPU time (of {} ms): \
                     the host is overloaded",
                    budget.ceiling().as_millis(),
                    used.as_secs_f64() * 1e3,
                    limits.0.as_millis()
                ),
            ),
            Some((Cut::Overran, _)) | None => {
                (FailureKind::Overran, format!("ran past its CPU budget of {} ms", limits.0.as_millis()))
            }
        },
        Some(Trap::OutOfFuel) => (FailureKind::OutOfFuel, "used up its fuel".to_owned()),
        _ if store.data().memory.denied => {
            (FailureKind::OutOfMemory, format!("hit its memory cap of {} MiB", limits.1 >> 20))
        }
        Some(trap) => (FailureKind::Trap, trap.to_string()),
        None => (FailureKind::Trap, error.root_cause().to_string()),
    };
    Failure { kind, detail: truncate(&detail, MAX_FAILURE_DETAIL_BYTES).to_owned() }
}

/// An import or export problem, before the plugin's name is attached.
pub(super) enum ComponentProblem {
    Refused { import: String, reason: String },
    MissingExport(&'static str),
}

impl ComponentProblem {
    fn named(self, plugin: &str) -> LoadError {
        match self {
            ComponentProblem::Refused { import, reason } => {
                LoadError::Refused { plugin: plugin.to_owned(), import, reason }
            }
            ComponentProblem::MissingExport(export) => LoadError::MissingExport { plugin: plugin.to_owned(), export },
        }
    }
}

/// Refuses a component whose imports are not all provided and granted, or that lacks an export.
pub(super) fn check_component(
    runtime: &Runtime,
    component: &Component,
    grants: &[Grant],
) -> Result<(), ComponentProblem> {
    let ty = component.component_type();
    let engine = runtime.engine();
    for (import, _) in ty.imports(engine) {
        if let super::imports::Access::Refused(reason) = classify(import, grants) {
            return Err(ComponentProblem::Refused { import: import.to_owned(), reason });
        }
    }
    for export in REQUIRED_EXPORTS {
        if ty.get_export(engine, export).is_none() {
            return Err(ComponentProblem::MissingExport(export));
        }
    }
    Ok(())
}
