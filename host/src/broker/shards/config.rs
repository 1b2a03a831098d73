//! The `[shards]` section: how many shard queues the outgoing traffic is split into, their
//! queue type, and how often a process checks whether it owns more than its fair share.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::ConfigError;

/// Most shard queues; each is one consumer and one channel per process.
pub const MAX_SHARDS: usize = 1024;
/// How often a process compares the shards it owns with its fair share, by default.
pub const DEFAULT_REBALANCE_INTERVAL: Duration = Duration::from_secs(5);

/// The file format of `[shards]` (env: `INBOXD_SHARDS_<KEY>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawShards {
    count: i64,
    queue_type: String,
    rebalance_ms: i64,
}

impl Default for RawShards {
    fn default() -> Self {
        RawShards {
            count: 0,
            queue_type: "classic".into(),
            rebalance_ms: DEFAULT_REBALANCE_INTERVAL.as_millis() as i64,
        }
    }
}

/// The durable queue type of the shard, dead-letter and held queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// One node's queue: enough for a single broker.
    Classic,
    /// Raft-replicated over the cluster: an accepted message survives the loss of a minority of nodes.
    Quorum,
}

impl QueueType {
    /// The `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Sharded consumption, when configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardsConfig {
    /// Fixed number of shard queues; a conversation's direction always hashes to the same one.
    pub count: usize,
    pub queue_type: QueueType,
    /// How often owned shards are compared with the fair share; `None`: shards only move on failure.
    pub rebalance_interval: Option<Duration>,
}

/// `None` when `count` is 0 (one queue, today's default).
///
/// # Errors
/// A [`ConfigError`] naming the `shards.*` key at fault.
pub fn validate(raw: RawShards) -> Result<Option<ShardsConfig>, ConfigError> {
    let invalid = |key: &'static str, message: &str| ConfigError::Invalid { key, message: message.to_owned() };
    let count = usize::try_from(raw.count)
        .ok()
        .filter(|n| *n <= MAX_SHARDS)
        .ok_or_else(|| invalid("shards.count", "must be between 0 (one queue, no sharding) and 1024"))?;
    let queue_type = match raw.queue_type.as_str() {
        "classic" => QueueType::Classic,
        "quorum" => QueueType::Quorum,
        _ => return Err(invalid("shards.queue_type", "must be `classic` or `quorum`")),
    };
    let rebalance_interval = match u64::try_from(raw.rebalance_ms) {
        Ok(0) => None,
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => return Err(invalid("shards.rebalance_ms", "must be 0 (never) or a number of milliseconds")),
    };
    Ok((count > 0).then_some(ShardsConfig { count, queue_type, rebalance_interval }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::config::Config;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::load(None, &env)
    }

    #[test]
    fn off_unless_a_count_is_set() {
        assert_eq!(load(&[]).unwrap().shards, None);
        let c = load(&[("INBOXD_SHARDS_COUNT", "16"), ("INBOXD_SHARDS_QUEUE_TYPE", "quorum")]).unwrap();
        let shards = c.shards.unwrap();
        assert_eq!((shards.count, shards.queue_type), (16, QueueType::Quorum));
        assert_eq!(shards.rebalance_interval, Some(DEFAULT_REBALANCE_INTERVAL));
        let c = load(&[("INBOXD_SHARDS_COUNT", "2"), ("INBOXD_SHARDS_REBALANCE_MS", "0")]).unwrap();
        assert_eq!(c.shards.unwrap().rebalance_interval, None);
    }

    #[test]
    fn bad_values_name_the_key() {
        let msg = |pairs: &[(&str, &str)]| load(pairs).unwrap_err().to_string();
        assert!(msg(&[("INBOXD_SHARDS_COUNT", "-1")]).contains("shards.count"));
        assert!(msg(&[("INBOXD_SHARDS_COUNT", "5000")]).contains("shards.count"));
        assert!(msg(&[("INBOXD_SHARDS_QUEUE_TYPE", "stream")]).contains("shards.queue_type"));
        assert!(msg(&[("INBOXD_SHARDS_REBALANCE_MS", "-5")]).contains("shards.rebalance_ms"));
    }
}
