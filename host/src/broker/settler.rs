//! Settling consumed deliveries: each is acked, requeued or dead-lettered once what it waits
//! for resolves (whatever that is: the settler only sees a future per delivery), one after the
//! other in the order they were handed in.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::ShortString;
use lapin::{Acker, BasicProperties, Channel};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::journal::{Committer, Settlement};
use super::publisher::{InboxPublisher, confirmed};
use super::shards::Lease;
use crate::telemetry;

/// What becomes of a delivery once what it waited for resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Everything it caused is confirmed and durable: ack.
    Ack,
    /// Something failed (or nothing was decided): requeue, it is tried again.
    Requeue,
    /// It can never succeed and must not come back: park it in the dead-letter queue with
    /// `reason` (`x-inboxd-reason`) and `detail` (`x-inboxd-error`); acked once that publish is
    /// confirmed, else requeued. Only for a delivery handed in as `refusable`.
    DeadLetter { reason: &'static str, detail: String },
}

/// Deliveries a settler takes in one go; their acks become one `multiple` ack when it may.
const SETTLE_BATCH: usize = 256;

/// Requeue a delivery (if the channel is gone the broker requeues it anyway).
const REQUEUE: BasicNackOptions = BasicNackOptions { multiple: false, requeue: true };

/// Hands deliveries to a settler task; dropping it lets the task finish the deliveries handed
/// in and end.
pub struct Settler {
    queue: mpsc::UnboundedSender<Unsettled>,
}

/// A delivery waiting for its outcome.
struct Unsettled {
    acker: Acker,
    tag: u64,
    /// The delivery as consumed, when it was handed in as refusable (to dead-letter it).
    original: Option<Original>,
    /// Released once the delivery is acked (sharded consumption, see [`Lease`]).
    lease: Option<Lease>,
    outcome: Pin<Box<dyn Future<Output = Settle> + Send>>,
    /// The message id its ack settles, and what to do once the ack is in (never when it is
    /// requeued).
    marked: Option<Marked>,
}

/// What to do once a delivery's ack is in (see [`Settler::settle_then`]).
pub type Acked = Box<dyn FnOnce() + Send>;

/// The id of the message a delivery's ack settles: named in the ack's journal marker (with a
/// [`Committer`]), and `then` called once the ack is committed (without one: written to the
/// connection).
pub struct Marked {
    pub id: String,
    pub then: Acked,
}

/// What the dead-letter queue keeps of a delivery.
struct Original {
    routing_key: ShortString,
    properties: BasicProperties,
    data: Vec<u8>,
}

impl Settler {
    /// Starts a settler task on `tracker` (awaited on shutdown so in-flight deliveries get
    /// acked). `publisher` dead-letters, and keeps its channel open until the last confirm is
    /// in (lapin closes a channel when its last handle goes).
    ///
    /// With `sole` (the consuming channel, when every delivery of that channel passes through
    /// this settler, in delivery-tag order, without shard leases): the acked deliveries of a
    /// batch are acked by one `multiple` ack of the last, the requeued ones nacked singly before
    /// it. Both go straight to the channel, in this order (lapin's `Acker` runs each on a task of
    /// its own, which may reorder them, and a `multiple` ack overtaking a single one is a
    /// channel error).
    ///
    /// With `committer` (the consuming channel of the one queue, in transaction mode), each
    /// batch's acks and requeues are committed with the marker of the ids they settle.
    pub fn spawn(
        publisher: InboxPublisher,
        sole: Option<Channel>,
        committer: Option<Arc<Committer>>,
        tracker: &TaskTracker,
    ) -> Settler {
        // Unbounded: what waits there is bounded by the prefetch.
        let (queue, unsettled) = mpsc::unbounded_channel();
        tracker.spawn(run(unsettled, publisher, sole, committer));
        Settler { queue }
    }

    /// Settles `delivery` as `outcome` says once it resolves, after every delivery handed in
    /// before it. `refusable`: the outcome may be [`Settle::DeadLetter`], so the delivery's key,
    /// properties and body are kept (moved, not copied) until then; otherwise they are dropped
    /// here. `lease` is released once the ack or nack is written.
    pub fn settle(
        &self,
        delivery: Delivery,
        lease: Option<Lease>,
        refusable: bool,
        outcome: impl Future<Output = Settle> + Send + 'static,
    ) {
        self.settle_then(delivery, lease, refusable, outcome, None);
    }

    /// Like [`Settler::settle`], for the delivery of the message `marked` names: its `then` is
    /// called once the ack (of this delivery, or a `multiple` one covering it) is in, not when it
    /// is requeued.
    pub fn settle_then(
        &self,
        delivery: Delivery,
        lease: Option<Lease>,
        refusable: bool,
        outcome: impl Future<Output = Settle> + Send + 'static,
        marked: Option<Marked>,
    ) {
        let original = refusable.then_some(Original {
            routing_key: delivery.routing_key,
            properties: delivery.properties,
            data: delivery.data,
        });
        let unsettled = Unsettled {
            acker: delivery.acker,
            tag: delivery.delivery_tag,
            original,
            lease,
            outcome: Box::pin(outcome),
            marked,
        };
        // The task outlives every handle (it drains after the last), so the send cannot fail.
        let _ = self.queue.send(unsettled);
    }
}

/// Settles deliveries in the order they were handed in. A worker's confirms arrive in that
/// order on its channel, so waiting for them one after the other costs nothing, and one
/// long-lived task replaces a task per delivery.
async fn run(
    mut queue: mpsc::UnboundedReceiver<Unsettled>,
    publisher: InboxPublisher,
    sole: Option<Channel>,
    committer: Option<Arc<Committer>>,
) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while queue.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let transactional = |u: &Unsettled| u.lease.as_ref().is_some_and(|lease| lease.committer.is_some());
        if committer.is_some() || batch.iter().any(transactional) {
            commit(&mut batch, &publisher, committer.as_ref(), sole.is_some()).await;
            continue;
        }
        let mut last_acked = None;
        // Waiting for the `multiple` ack of the batch to be written.
        let mut then = Vec::new();
        for Unsettled { acker, tag, original, lease, outcome, marked } in batch.drain(..) {
            let ack = decide(outcome, original.as_ref(), &publisher).await;
            let acked = marked.map(|marked| marked.then);
            if let (Some(channel), None) = (&sole, &lease) {
                if ack {
                    last_acked = Some(tag);
                    then.extend(acked);
                } else {
                    finish(ok(channel.basic_nack(tag, REQUEUE)), false).await;
                }
                continue;
            }
            // A shard is handed over once its leases are gone: its acks must be written by then.
            let until_written = lease.is_some() || (ack && acked.is_some());
            if ack {
                if finish(acker.ack(BasicAckOptions::default()), until_written).await
                    && let Some(acked) = acked
                {
                    acked();
                }
            } else {
                finish(acker.nack(REQUEUE), until_written).await;
            }
            drop(lease);
        }
        if let (Some(channel), Some(tag)) = (&sole, last_acked) {
            let multiple = ok(channel.basic_ack(tag, BasicAckOptions { multiple: true }));
            if finish(multiple, !then.is_empty()).await {
                then.drain(..).for_each(|acked| acked());
            }
        }
    }
}

/// Whether a delivery whose outcome is `outcome` is to be acked (else requeued); dead-letters it
/// first when it says so.
async fn decide(
    outcome: Pin<Box<dyn Future<Output = Settle> + Send>>,
    original: Option<&Original>,
    publisher: &InboxPublisher,
) -> bool {
    match outcome.await {
        Settle::Ack => true,
        Settle::Requeue => false,
        Settle::DeadLetter { reason, detail } => dead_letter(publisher, original, reason, &detail).await,
    }
}

/// Settles a batch through the committers of its deliveries' channels (a shard's, in its
/// lease, else `committer`, the one queue's): per channel, the acks and requeues and the
/// marker of the ids the acks settle, in one transaction (`multiple`: every delivery of the
/// one queue's channel passes through this settler, so one ack covers the batch's). Leases are
/// released once their channel's commit is answered.
async fn commit(
    batch: &mut Vec<Unsettled>,
    publisher: &InboxPublisher,
    committer: Option<&Arc<Committer>>,
    multiple: bool,
) {
    let mut groups: Vec<Group> = Vec::new();
    for Unsettled { acker, tag, original, lease, outcome, marked } in batch.drain(..) {
        let ack = decide(outcome, original.as_ref(), publisher).await;
        let Some(target) = lease.as_ref().and_then(|lease| lease.committer.as_ref()).or(committer) else {
            // A channel outside transactions (not a layout inboxd mixes in, but settled all the same).
            if ack {
                finish(acker.ack(BasicAckOptions::default()), true).await;
            } else {
                finish(acker.nack(REQUEUE), true).await;
            }
            continue;
        };
        let index = match groups.iter().position(|group| Arc::ptr_eq(&group.committer, target)) {
            Some(index) => index,
            None => {
                let settlement = Settlement { multiple: multiple && lease.is_none(), ..Settlement::default() };
                groups.push(Group { committer: Arc::clone(target), settlement, then: Vec::new(), leases: Vec::new() });
                groups.len() - 1
            }
        };
        let group = &mut groups[index];
        if ack {
            group.settlement.acks.push(tag);
            if let Some(Marked { id, then: acked }) = marked {
                group.settlement.ids.push(id);
                group.then.push(acked);
            }
        } else {
            group.settlement.requeues.push(tag);
        }
        group.leases.extend(lease);
    }
    for Group { committer, settlement, then, leases } in groups {
        match committer.commit(settlement).await {
            Ok(()) => then.into_iter().for_each(|acked| acked()),
            Err(err) => telemetry::ack_failed(&err),
        }
        drop(leases);
    }
}

/// One channel's share of a batch settled through its committer.
struct Group {
    committer: Arc<Committer>,
    settlement: Settlement,
    then: Vec<Acked>,
    leases: Vec<Lease>,
}

/// Parks a delivery in the dead-letter queue; whether that publish was confirmed (else the
/// delivery is requeued, and comes back to the same outcome).
async fn dead_letter(
    publisher: &InboxPublisher,
    original: Option<&Original>,
    reason: &'static str,
    detail: &str,
) -> bool {
    // Only a refusable delivery may be dead-lettered here, and it keeps its original.
    let Some(Original { routing_key, properties, data }) = original else { return false };
    telemetry::dead_lettered_when_settled(reason, routing_key.as_str(), detail);
    match publisher.dead_letter(routing_key.as_str(), properties, data, reason, detail) {
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

/// A channel-level ack or nack, shaped like an `Acker` one.
async fn ok(settling: impl Future<Output = Result<(), lapin::Error>>) -> Result<bool, lapin::Error> {
    settling.await.map(|()| true)
}

/// Sends an ack or nack; a failure is counted (the broker requeues what was not acked). Whether
/// it was handed over (written, with `until_written`).
async fn finish(settling: impl Future<Output = Result<bool, lapin::Error>>, until_written: bool) -> bool {
    match send(settling, until_written).await {
        Ok(()) => true,
        Err(err) => {
            telemetry::ack_failed(&err);
            false
        }
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
    match settling.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result.map(drop),
        Poll::Pending => Ok(()),
    }
}
