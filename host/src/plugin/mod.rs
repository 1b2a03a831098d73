//! The Wasm mechanics of policy plugins on wasmtime: one engine and linker, the compile
//! cache, import checks, sandbox limits, and pooled instances behind [`crate::policy::Link`].

mod bindings;
mod budget;
mod cache;
mod compiler;
mod config;
mod engine;
mod error;
mod host;
mod imports;
mod inspect;
mod instance;
mod reload;
mod reloads;
mod state;
mod stdio;
pub mod trial;

pub use budget::{MIN_WALL_CEILING, WALL_CEILING_FACTOR, wall_ceiling};
pub use cache::{CacheOutcome, sha256_hex};
pub use compiler::Compiler;
pub use config::{
    DEFAULT_PLUGIN_DEADLINE, DEFAULT_PLUGIN_INIT_DEADLINE, DEFAULT_PLUGIN_MEMORY_BYTES, DEFAULT_PLUGIN_RECYCLE_AFTER,
    PluginConfig, PluginsConfig, RawPlugins, validate,
};
pub use engine::{EPOCH_TICK, Runtime, precompile};
pub use error::LoadError;
pub use imports::{Access, CONTRACT_VERSION, Grant};
pub use inspect::Inspection;
pub use instance::WasmPlugin;
pub use reload::{ChainBuilder, PluginsSource, RELOAD_DEBOUNCE, Reloader};
pub use reloads::{RELOADS_KEPT, ReloadRecord, Reloads};
