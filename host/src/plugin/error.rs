//! Why a plugin could not be loaded: each variant names the plugin and the step that failed.
//! Per-call failures are [`crate::policy::Failure`]s; these are for compile, link and init.

use thiserror::Error;

use crate::policy::Failure;

/// A plugin that cannot join a chain. On reload, the running chain is kept.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("plugin `{plugin}`: cannot read {path}: {source}")]
    Read { plugin: String, path: String, source: std::io::Error },
    #[error("plugin `{plugin}`: {path} is not a valid WebAssembly component: {message}")]
    Compile { plugin: String, path: String, message: String },
    #[error("plugin `{plugin}` imports `{import}`, which inboxd refuses: {reason}")]
    Refused { plugin: String, import: String, reason: String },
    #[error("plugin `{plugin}` does not export `{export}`: it is not an inboxd:policy@0.1.x policy")]
    MissingExport { plugin: String, export: &'static str },
    #[error("plugin `{plugin}` sets `fuel`, but inboxd started without fuel metering: restart it to apply")]
    FuelUnavailable { plugin: String },
    #[error("plugin `{plugin}`: linking failed: {message}")]
    Link { plugin: String, message: String },
    #[error("plugin `{plugin}`: init refused its config: {message}")]
    InitRefused { plugin: String, message: String },
    #[error("plugin `{plugin}`: init failed: {failure}")]
    InitFailed { plugin: String, failure: Failure },
}
