//! From a consumed delivery to acked inbox copies: the dispatcher shards deliveries by
//! conversation, workers route and publish them, and each delivery is acked once confirmed.

mod config;
mod dispatch;
#[cfg(test)]
mod published_keys;
mod refusal;
mod route;
mod worker;

pub use config::{DEFAULT_MAX_BODY_BYTES, PipelineConfig, RawPipeline, validate};
pub use dispatch::{Job, dispatch};
pub use refusal::{INTERNAL_ERROR, Refusal, guarded};
pub use route::{HeldMessage, Outcome, Plan, Presence, Router};
pub use worker::Worker;
