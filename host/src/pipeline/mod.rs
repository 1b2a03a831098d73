//! From a consumed delivery to acked inbox copies: the dispatcher shards deliveries by
//! conversation, workers route them ([`crate::routing`]) and start their completion (publish,
//! store, webhooks), and each delivery is settled once complete.

mod catch_up;
mod complete;
mod config;
mod dispatch;
mod journal_outage;
mod kept_id;
mod ledger;
mod on_runtime;
mod recent;
mod worker;

pub use catch_up::JournalCatchUp;
pub use complete::{Completion, Incomplete, Pending, Prepared, Recorder};
pub use config::{DEFAULT_MAX_BODY_BYTES, PipelineConfig, RawPipeline, validate};
pub use dispatch::{Job, dispatch};
pub use ledger::{Arrival, CatchUp, CaughtUp, Claim, Ledger, ORPHAN_AFTER, RETRANSMIT_WINDOW, Session};
pub use worker::Worker;
