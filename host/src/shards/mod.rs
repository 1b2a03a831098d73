//! Scale-out: the outgoing traffic split over a fixed number of shard queues by conversation,
//! each consumed by exactly one inboxd process at a time, shards moving between processes.

mod config;
mod intake;
mod topology;

pub use config::{DEFAULT_REBALANCE_INTERVAL, MAX_SHARDS, QueueType, RawShards, ShardsConfig, validate};
pub use intake::{Incoming, Intake, Lease, PROBE_HEADER};
pub use topology::{CONSISTENT_HASH, declare, exchange_name, processes_queue, queue_name};
