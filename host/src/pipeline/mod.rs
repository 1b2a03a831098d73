//! From a consumed delivery to acked inbox copies: the dispatcher shards deliveries by
//! conversation, workers route them ([`crate::routing`]) and publish, and each delivery is
//! acked once confirmed.

mod config;
mod dispatch;
mod worker;

pub use config::{DEFAULT_MAX_BODY_BYTES, PipelineConfig, RawPipeline, validate};
pub use dispatch::{Job, dispatch};
pub use worker::Worker;
