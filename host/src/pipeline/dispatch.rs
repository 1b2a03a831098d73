//! The single consumer loop: parses each delivery and hands it to the worker that owns its
//! conversation, over bounded channels (back-pressure up to the broker's prefetch).

use std::hash::{DefaultHasher, Hash, Hasher};

use anyhow::{Context, bail};
use futures_util::{Stream, StreamExt};
use lapin::message::Delivery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Incoming, Lease};
use crate::chat21::{Inbound, Limits};
use crate::routing::{Refusal, guarded};

/// One delivery on its way to a worker, already parsed (or refused, with the reason).
pub struct Job {
    pub delivery: Delivery,
    pub inbound: Result<Inbound, Refusal>,
    /// Held until the delivery is settled, when it came from a shard queue (see [`Lease`]).
    pub lease: Option<Lease>,
}

/// Consumes `deliveries` (the one queue's consumer, or the shard consumers merged) until `stop`
/// is cancelled (returns `Ok`) or the stream fails (returns the error).
///
/// # Errors
/// When the stream fails or ends (the connection or channel is gone), or a worker stopped.
pub async fn dispatch(
    mut deliveries: impl Stream<Item = anyhow::Result<Incoming>> + Unpin,
    workers: &[mpsc::Sender<Job>],
    app: &str,
    limits: Limits,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (delivery, lease) = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(delivery) => delivery.context("consuming deliveries")?,
                None => bail!("the broker cancelled the consumer"),
            },
        };
        let inbound = guarded(|| Inbound::parse(app, delivery.routing_key.as_str(), &delivery.data, limits));
        let shard = shard(&inbound, delivery.routing_key.as_str(), workers.len());
        let job = Job { delivery, inbound, lease };
        tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            sent = workers[shard].send(job) => if sent.is_err() { bail!("worker {shard} stopped") },
        }
    }
}

/// The worker for a delivery: a stable hash of its conversation key (refused input: of its key).
fn shard(inbound: &Result<Inbound, Refusal>, routing_key: &str, workers: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    match inbound {
        Ok(inbound) => inbound.conversation_key().hash(&mut hasher),
        Err(_) => routing_key.hash(&mut hasher),
    }
    (hasher.finish() % workers as u64) as usize
}
