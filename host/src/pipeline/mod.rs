//! From a consumed delivery to acked inbox copies: the dispatcher shards deliveries by
//! conversation, workers route them and start their completion (publish, store, webhooks),
//! and each delivery is settled once complete.

mod complete;
mod dispatch;
#[cfg(test)]
mod published_keys;
mod refusal;
mod route;
mod worker;

pub use complete::{Completion, Incomplete, Pending, Prepared, Recorder};
pub use dispatch::{Job, dispatch};
pub use refusal::{INTERNAL_ERROR, Refusal, guarded};
pub use route::{Outcome, Plan, Presence, Router};
pub use worker::Worker;
