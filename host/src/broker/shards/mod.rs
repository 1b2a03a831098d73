//! Scale-out: the outgoing traffic split over a fixed number of shard queues by conversation,
//! each consumed by exactly one inboxd process at a time, shards moving between processes.
//! Their topology is declared with the single queue's ([`super::declare`]); this module names
//! the queues and consumes them ([`Intake`]).

mod config;
mod intake;

pub use config::{DEFAULT_REBALANCE_INTERVAL, MAX_SHARDS, QueueType, RawShards, ShardsConfig, validate};
pub use intake::{Incoming, Intake, Lease, PROBE_HEADER};

use super::BrokerConfig;

/// The exchange type of the `rabbitmq_consistent_hash_exchange` plugin.
pub const CONSISTENT_HASH: &str = "x-consistent-hash";

/// The consistent-hash exchange: `<queue>.shards`.
pub fn exchange_name(broker: &BrokerConfig) -> String {
    format!("{}.shards", broker.queue)
}

/// Shard `index`'s queue: `<queue>.shard.<index>`.
pub fn queue_name(broker: &BrokerConfig, index: usize) -> String {
    format!("{}.shard.{index}", broker.queue)
}

/// The queue whose consumers are the processes: `<queue>.processes`. The shard queues cannot
/// tell, as RabbitMQ 3.10 counts only the active consumer of a single-active-consumer quorum queue.
pub fn processes_queue(broker: &BrokerConfig) -> String {
    format!("{}.processes", broker.queue)
}
