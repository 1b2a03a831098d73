//! The `[pipeline]` section: how many sequential workers route messages, the largest body
//! accepted, how long shutdown waits for messages in flight, and whether message ids are durable.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::settings::{ConfigError, in_range, invalid, millis};

/// Largest accepted body by default; chat21 messages are small, attachments go by URL.
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Most workers `pipeline.workers` may ask for.
const MAX_WORKERS: usize = 1024;

/// The file format of `[pipeline]` (env: `INBOXD_PIPELINE_<KEY>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawPipeline {
    workers: i64,
    max_body_bytes: i64,
    shutdown_timeout_ms: i64,
    durable_ids: bool,
}

impl Default for RawPipeline {
    fn default() -> Self {
        RawPipeline {
            workers: 0,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES as i64,
            shutdown_timeout_ms: 10_000,
            durable_ids: true,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Sequential workers; a conversation always goes to the same one.
    pub workers: usize,
    pub max_body_bytes: usize,
    /// How long shutdown waits for in-flight messages before closing anyway (they are redelivered).
    pub shutdown_timeout: Duration,
    /// With a store: each message's id is committed (as an intent) before its copies are
    /// published, so a redelivery after a crash or to another process keeps it.
    pub durable_ids: bool,
}

/// Validates `[pipeline]`; 0 workers means half the cores.
///
/// # Errors
/// A [`ConfigError`] naming the `pipeline.*` key at fault.
pub fn validate(raw: RawPipeline) -> Result<PipelineConfig, ConfigError> {
    let workers = match in_range("pipeline.workers", raw.workers, 0..=MAX_WORKERS) {
        // Half the cores: the broker connection's I/O thread and the async side need the rest,
        // and on small hosts an extra worker thread costs more in wake-ups than it gains.
        Ok(0) => std::thread::available_parallelism().map_or(1, |cores| (usize::from(cores) / 2).max(1)),
        Ok(n) => n,
        Err(_) => return Err(invalid("pipeline.workers", "must be between 0 (half the cores) and 1024")),
    };
    Ok(PipelineConfig {
        workers,
        max_body_bytes: in_range("pipeline.max_body_bytes", raw.max_body_bytes, 2..=128 * 1024 * 1024)?,
        shutdown_timeout: millis("pipeline.shutdown_timeout_ms", raw.shutdown_timeout_ms, 1..=3_600_000)?,
        durable_ids: raw.durable_ids,
    })
}
