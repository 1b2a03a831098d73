//! A sequential worker on its own thread: routes each job (plugins run right here), queues its
//! copies on its channel without waiting, and leaves confirms and acks to its settler task
//! (which dead-letters a delivery whose store writes the database refused).

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::ShortString;
use lapin::{Acker, BasicProperties, Channel};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::Job;
use crate::broker::{self, InboxPublisher, Queued, confirmed};
use crate::chat21::{Inbound, InputError};
use crate::clock::now_ms;
use crate::routing::{self, INTERNAL_ERROR, Outcome, Refusal, Router, Stamp, guarded};
use crate::shards::Lease;
use crate::store::records::Write;
use crate::store::{Durable, NotDurable, STORE_REFUSED, StoreWriter};
use crate::telemetry;

/// One shard of the pipeline, with its own confirm-mode channel so its publishes stay in order.
pub struct Worker {
    pub publisher: InboxPublisher,
    pub router: Arc<Router>,
    /// Where the plan's history writes go; `None` when nothing is persisted.
    pub store: Option<StoreWriter>,
    /// Settler tasks, awaited on shutdown so in-flight deliveries get acked.
    pub settling: TaskTracker,
    /// The runtime the settler runs on.
    pub runtime: Handle,
    /// The consuming channel, when this is its only worker: the settler then acks with `multiple`.
    pub sole: Option<Channel>,
}

impl Worker {
    /// Handles jobs until the dispatcher hangs up. Blocking: run it on a thread of its own
    /// (`spawn_blocking`). Plugins are called synchronously here — WASI host code must not run
    /// on an async worker thread — and nothing here waits for another thread per message.
    ///
    /// # Errors
    /// When a publish cannot be handed to the channel: the connection is gone, and the
    /// unacked deliveries will be redelivered.
    pub fn run(self, mut jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        // Unbounded: what waits there is bounded by the prefetch.
        let (unsettled, queue) = mpsc::unbounded_channel();
        let settling = settler(queue, self.publisher.clone(), self.sole.clone());
        self.settling.spawn_on(settling, &self.runtime);
        while let Some(job) = jobs.blocking_recv() {
            self.handle(job, &unsettled)?;
        }
        Ok(())
    }

    fn handle(&self, job: Job, unsettled: &mpsc::UnboundedSender<Unsettled>) -> anyhow::Result<()> {
        let Job { delivery, inbound, lease } = job;
        let routing_key = delivery.routing_key.as_str();
        let mut pending = Vec::new();
        let mut durable = None;
        let mut requeue = false;
        let published = Instant::now();
        match route(&self.router, self.store.as_ref(), inbound) {
            // A plugin could not run for want of CPU: nothing was decided, try again later.
            Ok(Routed { plan, .. }) if matches!(plan.outcome, Outcome::Deferred { .. }) => {
                report(&plan, delivery.redelivered);
                requeue = true;
            }
            Ok(Routed { plan, keys, writes }) => {
                report(&plan, delivery.redelivered);
                for (key, copy) in keys.into_iter().zip(&plan.copies) {
                    pending.push(self.publisher.publish_to(key, &copy.body).context("publishing an inbox copy")?);
                }
                if let Some(held) = &plan.held {
                    pending.push(self.publisher.hold(held).context("publishing to the held queue")?);
                }
                if let (Some(store), false) = (&self.store, writes.is_empty()) {
                    durable = Some(store.submit(writes).context("handing writes to the store")?);
                }
            }
            Err(refusal) => {
                match &refusal {
                    Refusal::Input(err) => telemetry::dead_lettered(err.code(), err, routing_key),
                    Refusal::Panicked(message) => telemetry::panicked(INTERNAL_ERROR, message, routing_key),
                }
                let queued = self
                    .publisher
                    .dead_letter(routing_key, &delivery.properties, &delivery.data, refusal.code(), &refusal.text())
                    .context("publishing to the dead-letter queue")?;
                pending.push(queued);
            }
        }
        // Kept (moved, not copied) only while the store may refuse the writes and the delivery
        // must then go to the dead-letter queue.
        let original = durable.is_some().then_some(Original {
            routing_key: delivery.routing_key,
            properties: delivery.properties,
            data: delivery.data,
        });
        // The settler outlives this loop (it drains after the last job), so the send cannot fail.
        let tag = delivery.delivery_tag;
        let _ = unsettled.send(Unsettled {
            acker: delivery.acker,
            tag,
            pending,
            durable,
            original,
            published,
            lease,
            requeue,
        });
        Ok(())
    }
}

/// A delivery routed: its plan, the routing key of each copy as AMQP takes it, its store writes.
struct Routed {
    plan: routing::Routed,
    keys: Vec<ShortString>,
    writes: Vec<Write>,
}

/// Routes one delivery (a new message gets its id and time here), applies what it announced
/// to the group directory, converts its keys and derives its store writes, a panic included
/// (see [`guarded`]): whatever goes wrong with one delivery is that delivery's refusal.
fn route(router: &Router, store: Option<&StoreWriter>, inbound: Result<Inbound, Refusal>) -> Result<Routed, Refusal> {
    let inbound = inbound?;
    guarded(|| {
        let plan = router.route(inbound, stamp())?;
        router.apply(&plan);
        let keys = plan
            .copies
            .iter()
            .map(|copy| broker::short_string("routing key", &copy.routing_key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|too_long| InputError::IdTooLong { what: "inbox copy", bytes: too_long.bytes })?;
        let writes = store.map(|store| store.writes(&plan)).unwrap_or_default();
        Ok(Routed { plan, keys, writes })
    })
}

/// A new id (UUIDv7: it carries the time it was made, which the store dates history by) and
/// the clock, for a message about to be routed.
fn stamp() -> Stamp {
    Stamp { message_id: uuid::Uuid::now_v7().to_string(), now_ms: now_ms() }
}

/// Logs and counts how a delivery was routed.
fn report(routed: &routing::Routed, redelivered: bool) {
    let kind = routed.event.kind().as_str();
    let message_id = routed.message_id().unwrap_or("");
    let outcome = &routed.outcome;
    telemetry::routed(kind, message_id, outcome.label(), outcome.decided_by(), routed.copies.len(), redelivered);
}

/// A delivery whose publishes are queued, waiting for their confirms (and its store commit).
struct Unsettled {
    acker: Acker,
    tag: u64,
    pending: Vec<Queued>,
    durable: Option<Durable>,
    /// The delivery as consumed, when it has store writes (to dead-letter it if they are refused).
    original: Option<Original>,
    published: Instant,
    /// Released once the delivery is acked (sharded consumption, see [`Lease`]).
    lease: Option<Lease>,
    /// Nothing was decided (a deferred plan): nack it back to the queue.
    requeue: bool,
}

/// What the dead-letter queue keeps of a delivery.
struct Original {
    routing_key: ShortString,
    properties: BasicProperties,
    data: Vec<u8>,
}

/// Deliveries a settler takes in one go; their acks become one `multiple` ack when it may.
const SETTLE_BATCH: usize = 256;

/// Settles one worker's deliveries in the order it published them. Their confirms arrive in
/// that order on the worker's channel, so waiting for them one after the other costs nothing,
/// and one long-lived task replaces a task per delivery. `publisher` keeps the channel open until
/// the last confirm is in (lapin closes a channel when its last handle goes).
///
/// With `sole` (this worker is the consuming channel's only one, no shard leases), every
/// delivery of that channel passes here in delivery-tag order: the confirmed ones of a batch are
/// acked by one `multiple` ack of the last, failed ones nacked singly before it. Both go straight
/// to the channel, in this order (lapin's `Acker` runs each on a task of its own, which may
/// reorder them, and a `multiple` ack overtaking a single one is a channel error).
///
/// A delivery whose writes the store refused is dead-lettered (`store-refused`, with the
/// database's message) and counts as confirmed once that publish is: redelivering it could only
/// be refused again.
async fn settler(mut queue: mpsc::UnboundedReceiver<Unsettled>, publisher: InboxPublisher, sole: Option<Channel>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while queue.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let mut last_confirmed = None;
        for Unsettled { acker, tag, pending, durable, original, published, lease, requeue } in batch.drain(..) {
            let confirmed = !requeue
                && match confirm(pending, durable, published).await {
                    Settled::Confirmed => true,
                    Settled::Failed => false,
                    Settled::Refused(detail) => dead_letter_refused(&publisher, original.as_ref(), &detail).await,
                };
            if let (Some(channel), None) = (&sole, &lease) {
                if confirmed {
                    last_confirmed = Some(tag);
                } else {
                    finish(ok(channel.basic_nack(tag, REQUEUE)), false).await;
                }
                continue;
            }
            // A shard is handed over once its leases are gone: its acks must be written by then.
            let until_written = lease.is_some();
            if confirmed {
                finish(acker.ack(BasicAckOptions::default()), until_written).await;
            } else {
                finish(acker.nack(REQUEUE), until_written).await;
            }
            drop(lease);
        }
        if let (Some(channel), Some(tag)) = (&sole, last_confirmed) {
            finish(ok(channel.basic_ack(tag, BasicAckOptions { multiple: true })), false).await;
        }
    }
}

/// A channel-level ack or nack, shaped like an `Acker` one.
async fn ok(settling: impl Future<Output = Result<(), lapin::Error>>) -> Result<bool, lapin::Error> {
    settling.await.map(|()| true)
}

/// Requeue a delivery whose copies were not all confirmed (if the channel is gone the broker
/// requeues it anyway).
const REQUEUE: BasicNackOptions = BasicNackOptions { multiple: false, requeue: true };

/// How a delivery's publishes and store writes ended.
enum Settled {
    /// Every publish confirmed, the writes durable: ack.
    Confirmed,
    /// A publish not confirmed, or the writer gone: requeue.
    Failed,
    /// Published, but the store refused the writes (the database's message): dead-letter.
    Refused(String),
}

/// Whether every publish of a delivery was confirmed and its store writes are durable.
async fn confirm(pending: Vec<Queued>, durable: Option<Durable>, published: Instant) -> Settled {
    let count = pending.len();
    match confirmed(pending).await {
        Ok(()) => {
            if let Some(durable) = durable {
                match durable.wait().await {
                    Ok(()) => {}
                    Err(NotDurable::Gone(_)) => return Settled::Failed,
                    Err(NotDurable::Refused(detail)) => return Settled::Refused(detail),
                }
            }
            if count > 0 {
                telemetry::confirmed(published.elapsed());
            }
            Settled::Confirmed
        }
        Err(err) => {
            telemetry::unconfirmed(&err);
            Settled::Failed
        }
    }
}

/// Parks a delivery whose writes were refused in the dead-letter queue; whether that publish
/// was confirmed (else the delivery is requeued, and the store refuses it again).
async fn dead_letter_refused(publisher: &InboxPublisher, original: Option<&Original>, detail: &str) -> bool {
    // A refusal answers a submitted write, and every delivery that submits keeps its original.
    let Some(Original { routing_key, properties, data }) = original else { return false };
    telemetry::store_refused_dead_lettered(STORE_REFUSED, routing_key.as_str(), detail);
    match publisher.dead_letter(routing_key.as_str(), properties, data, STORE_REFUSED, detail) {
        Ok(queued) => match confirmed(vec![queued]).await {
            Ok(()) => true,
            Err(err) => {
                telemetry::unconfirmed(&err);
                false
            }
        },
        Err(err) => {
            telemetry::ack_failed(&err);
            false
        }
    }
}

/// Sends an ack or nack; a failure is counted (the broker requeues what was not acked).
async fn finish(settling: impl Future<Output = Result<bool, lapin::Error>>, until_written: bool) {
    if let Err(err) = send(settling, until_written).await {
        telemetry::ack_failed(&err);
    }
}

/// Hands an ack or nack to lapin. Unless `until_written`, without waiting for the connection
/// thread to write it (the first poll queues it); a failed write means the channel is gone,
/// and the broker requeues the delivery.
async fn send(
    settling: impl Future<Output = Result<bool, lapin::Error>>,
    until_written: bool,
) -> Result<(), lapin::Error> {
    let mut settling = pin!(settling);
    if until_written {
        return settling.await.map(drop);
    }
    match settling.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(result) => result.map(drop),
        Poll::Pending => Ok(()),
    }
}
