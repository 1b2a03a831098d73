//! Every process's group directory hears every group change: besides the queue (or shard) that
//! routes `apps.observer.<app>.groups.update` once, each process binds a queue of its own
//! (exclusive, gone with the connection) to it and tells its directory, so a change made through
//! one process's API is routed by all of them at once, not after their next store refresh.

use futures_util::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use std::sync::Arc;

use crate::chat21::{GroupUpdate, Topic};
use crate::routing::GroupLookup;

/// Tells `directory` of each group update of `app` published on `exchange` until the channel
/// closes (the session ends); one that does not parse, or has more than `max_members`, is
/// skipped (the pipeline dead-letters it).
///
/// # Errors
/// When the queue cannot be declared, bound or consumed.
pub async fn watch_groups(
    channel: Channel,
    exchange: String,
    app: String,
    directory: Arc<dyn GroupLookup>,
    max_members: usize,
) -> Result<(), lapin::Error> {
    let own = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    let queue = channel.queue_declare("".into(), own, FieldTable::default()).await?;
    let key = Topic::GroupUpdate.routing_key(&app);
    let bind = QueueBindOptions::default();
    channel
        .queue_bind(queue.name().clone(), exchange.as_str().into(), key.as_str().into(), bind, FieldTable::default())
        .await?;
    let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
    let mut updates = channel.basic_consume(queue.name().clone(), "".into(), no_ack, FieldTable::default()).await?;
    while let Some(delivery) = updates.next().await {
        let delivery = delivery?;
        let update = match serde_json::from_slice(&delivery.data) {
            Ok(Value::Object(body)) => GroupUpdate::parse(&app, &body, max_members).ok(),
            _ => None,
        };
        if let Some(update) = update {
            directory.remember(update.group);
        }
    }
    Ok(())
}
