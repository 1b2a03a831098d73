//! The held queue's depth, read now and then for the `inboxd_held_messages` gauge.

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// How often the held queue's depth is read for `inboxd_held_messages`.
const HELD_DEPTH_INTERVAL: Duration = Duration::from_secs(15);

/// Publishes the depth of the held queue `queue` as a gauge until `stop` (or the channel dies).
pub async fn watch_held(channel: Channel, queue: String, stop: CancellationToken) {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    loop {
        match channel.queue_declare(queue.as_str().into(), passive, FieldTable::default()).await {
            Ok(q) => telemetry::held_depth(q.message_count()),
            Err(_) => return,
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HELD_DEPTH_INTERVAL) => {}
        }
    }
}
