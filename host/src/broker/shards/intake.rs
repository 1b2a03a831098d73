//! Consuming the shard queues: one channel and consumer per shard, all feeding the one
//! dispatcher, and handing the shards beyond this process's fair share over to other processes.
//!
//! Every process subscribes to every shard; the broker's single-active-consumer picks one
//! process per shard and, when that process's channel or connection goes away, activates the
//! next in line. A hand-over is the same thing done on purpose, and done so order survives:
//! stop taking the shard's deliveries, wait until every delivery already taken is settled
//! (published, confirmed, acked), then close the shard's channel. Closing hands the rest back
//! to the queue in order and activates the next consumer in one step; the process then
//! subscribes again, at the back of the line.
//!
//! A process learns that it is a shard's active consumer from the shard's deliveries. So that
//! idle shards are known too, a process that does not know itself active on a shard sends it a
//! probe (an empty message with the [`PROBE_HEADER`], by the default exchange, which MQTT
//! clients cannot reach); whoever is active receives it, learns, and acks it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, info};

use super::{ShardsConfig, processes_queue, queue_name};
use crate::broker::BrokerConfig;
use crate::broker::journal::{Committer, Settlement};

/// Keeps its shard from being handed over until the delivery it came with is settled: drop
/// it only after the ack (or nack) was sent (committed, on a transactional shard channel).
pub struct Lease {
    _token: TaskTrackerToken,
    /// The shard channel's committer, when its acks commit with the settle journal.
    pub committer: Option<Arc<Committer>>,
}

/// A delivery and, when it came from a shard queue, its [`Lease`].
pub type Incoming = (Delivery, Option<Lease>);

/// Marks a probe (its value: the sending process id); only valid on a message whose routing key
/// is the shard queue's own name, i.e. that came by the default exchange.
pub const PROBE_HEADER: &str = "x-inboxd-probe";

/// Deliveries buffered between the shard consumers and the dispatcher; the prefetch bounds the rest.
const FORWARD_DEPTH: usize = 64;

/// The shard subscriptions of one broker session.
pub struct Intake<'c> {
    connection: &'c Connection,
    broker: BrokerConfig,
    config: ShardsConfig,
    /// Consumes the processes queue (this process's presence) and reads its consumer count.
    control: Channel,
    /// Held, not read: dropping a lapin consumer cancels it.
    _presence: Consumer,
    shards: Vec<Subscription>,
    tx: mpsc::Sender<anyhow::Result<Incoming>>,
    /// Shard channels in transaction mode, their acks committed with the settle journal.
    transactional: bool,
}

/// One subscription to one shard queue, on its own channel.
struct Subscription {
    index: usize,
    channel: Channel,
    state: Arc<ShardState>,
}

/// What a shard's consumer hands on with each delivery.
struct Shard {
    queue: String,
    state: Arc<ShardState>,
    committer: Option<Arc<Committer>>,
}

#[derive(Default)]
struct ShardState {
    /// A delivery arrived: the broker made this subscription the shard's active consumer, and it
    /// stays so until its channel closes.
    active: AtomicBool,
    /// Set (under the lock, before waiting for the leases) when the shard is being handed over;
    /// from then on deliveries are left unacked, for the next owner.
    releasing: Mutex<bool>,
    /// Leases of the deliveries taken and not settled yet.
    leases: TaskTracker,
}

impl<'c> Intake<'c> {
    /// Subscribes to every shard queue (`transactional`: each shard channel in transaction
    /// mode, see [`Committer`]); returns the merged deliveries for the dispatcher.
    ///
    /// # Errors
    /// When a channel cannot be opened or a shard queue refuses the consumer.
    pub async fn open(
        connection: &'c Connection,
        broker: &BrokerConfig,
        config: &ShardsConfig,
        transactional: bool,
    ) -> anyhow::Result<(Intake<'c>, BoxStream<'static, anyhow::Result<Incoming>>)> {
        let (tx, mut rx) = mpsc::channel(FORWARD_DEPTH);
        let control = connection.create_channel().await.context("opening the shard control channel")?;
        let processes = processes_queue(broker);
        let tag = format!("inboxd-{}", std::process::id());
        let presence = control
            .basic_consume(
                processes.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {processes}"))?;
        let mut intake = Intake {
            connection,
            broker: broker.clone(),
            config: config.clone(),
            control,
            _presence: presence,
            shards: Vec::new(),
            tx,
            transactional,
        };
        for index in 0..config.count {
            let subscription = intake.subscribe(index).await?;
            intake.shards.push(subscription);
        }
        Ok((intake, futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()))
    }

    async fn subscribe(&self, index: usize) -> anyhow::Result<Subscription> {
        let queue = queue_name(&self.broker, index);
        let channel =
            self.connection.create_channel().await.with_context(|| format!("opening a channel for {queue}"))?;
        channel.basic_qos(self.broker.prefetch, BasicQosOptions::default()).await.context("setting the prefetch")?;
        let tag = format!("inboxd-{}-{index}", std::process::id());
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {queue}"))?;
        let committer = Committer::select_if(self.transactional, &channel, &self.broker.queue)
            .await
            .with_context(|| format!("putting the channel of {queue} in transaction mode"))?;
        let state = Arc::new(ShardState::default());
        let shard = Shard { queue, state: Arc::clone(&state), committer };
        tokio::spawn(forward(consumer, shard, self.tx.clone()));
        Ok(Subscription { index, channel, state })
    }

    /// Every rebalance interval, hands over the shards this process owns beyond its fair share;
    /// never returns when rebalancing is off.
    ///
    /// # Errors
    /// When the broker refuses a consumer-count query or a re-subscription: the session ends.
    pub async fn rebalance(&mut self) -> anyhow::Result<()> {
        let Some(interval) = self.config.rebalance_interval else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(interval).await;
            let processes = self.processes().await?;
            let (owned, unknown): (Vec<&Subscription>, Vec<&Subscription>) =
                self.shards.iter().partition(|s| s.state.active.load(Ordering::Relaxed));
            for shard in unknown {
                self.probe(shard.index).await?;
            }
            let owned: Vec<usize> = owned.iter().map(|s| s.index).collect();
            crate::telemetry::shards_owned(owned.len());
            let surplus = surplus(&owned, self.shards.len(), processes);
            if !surplus.is_empty() {
                debug!(owned = owned.len(), processes, "handing shards over");
            }
            for index in surplus {
                self.hand_over(index).await?;
            }
        }
    }

    /// Sends a probe to shard `index`, for its active consumer to notice.
    async fn probe(&self, index: usize) -> anyhow::Result<()> {
        let queue = queue_name(&self.broker, index);
        let mut headers = FieldTable::default();
        headers.insert(PROBE_HEADER.into(), AMQPValue::LongLongInt(i64::from(std::process::id())));
        let properties = BasicProperties::default().with_headers(headers);
        self.control
            .basic_publish("".into(), queue.as_str().into(), BasicPublishOptions::default(), &[], properties)
            .await
            .with_context(|| format!("probing {queue}"))?;
        Ok(())
    }

    /// Processes consuming the shards: the consumers of the processes queue (at least this one).
    async fn processes(&self) -> anyhow::Result<usize> {
        let passive = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let queue = processes_queue(&self.broker);
        let declared = self
            .control
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .with_context(|| format!("reading the consumer count of {queue}"))?;
        Ok((declared.consumer_count() as usize).max(1))
    }

    /// The control channel and every shard's channel.
    pub fn channels(&self) -> Vec<Channel> {
        std::iter::once(&self.control).chain(self.shards.iter().map(|shard| &shard.channel)).cloned().collect()
    }

    /// Settles what was taken from shard `index`, closes its channel (the broker activates the
    /// next consumer) and subscribes again.
    async fn hand_over(&mut self, index: usize) -> anyhow::Result<()> {
        let started = Instant::now();
        let old = &self.shards[index];
        *old.state.releasing.lock().expect("the lock is never held across a panic") = true;
        old.state.leases.close();
        old.state.leases.wait().await;
        let settled = started.elapsed();
        let queue = queue_name(&self.broker, index);
        old.channel
            .close(200, "inboxd hands the shard over".into())
            .await
            .with_context(|| format!("closing {queue}"))?;
        self.shards[index] = self.subscribe(index).await?;
        crate::telemetry::shard_handed_over(&queue, settled, started.elapsed());
        Ok(())
    }
}

/// The shards to hand over: the `owned` ones beyond the fair share (`shards / processes`,
/// rounded up), the last ones first. Every process waits on every shard, so a handed-over
/// shard always has a next owner.
fn surplus(owned: &[usize], shards: usize, processes: usize) -> Vec<usize> {
    let fair = shards.div_ceil(processes.max(1));
    owned.iter().rev().copied().take(owned.len().saturating_sub(fair)).collect()
}

/// Moves one shard's deliveries to the dispatcher, each with a lease, until the channel closes.
/// It holds the consumer until then: dropping a lapin consumer cancels it, which would activate
/// the next process while this one still has the shard's deliveries in hand.
async fn forward(mut consumer: Consumer, shard: Shard, tx: mpsc::Sender<anyhow::Result<Incoming>>) {
    let Shard { queue, state, committer } = shard;
    let mut forwarding = true;
    while let Some(next) = consumer.next().await {
        let delivery = match next {
            Ok(delivery) => delivery,
            Err(err) => {
                if forwarding && !*state.releasing.lock().expect("never poisoned") {
                    let _ = tx.send(Err(anyhow!(err).context(format!("consuming from {queue}")))).await;
                }
                return;
            }
        };
        if !state.active.swap(true, Ordering::Relaxed) {
            info!(queue = %queue, "this process now consumes the shard");
        }
        if is_probe(&delivery, &queue) {
            if !*state.releasing.lock().expect("never poisoned") {
                // A probe is dropped either way: an ack that fails leaves it for the next owner.
                if let Some(committer) = &committer {
                    let settlement = Settlement { acks: vec![delivery.delivery_tag], ..Settlement::default() };
                    let _ = committer.commit(settlement).await;
                } else {
                    let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                }
            }
            continue;
        }
        let lease = {
            let releasing = state.releasing.lock().expect("never poisoned");
            (!*releasing).then(|| Lease { _token: state.leases.token(), committer: committer.clone() })
        };
        if let Some(lease) = lease
            && forwarding
        {
            forwarding = tx.send(Ok((delivery, Some(lease)))).await.is_ok();
        }
    }
    if forwarding && !*state.releasing.lock().expect("never poisoned") {
        let _ = tx.send(Err(anyhow!("the broker cancelled the consumer of {queue}"))).await;
    }
}

fn is_probe(delivery: &Delivery, queue: &str) -> bool {
    delivery.routing_key.as_str() == queue
        && delivery.properties.headers().as_ref().is_some_and(|h| h.inner().contains_key(PROBE_HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_process_keeps_everything() {
        assert_eq!(surplus(&[0, 1, 2, 3], 4, 1), Vec::<usize>::new());
        assert_eq!(surplus(&[], 0, 1), Vec::<usize>::new());
    }

    #[test]
    fn the_first_process_gives_away_beyond_its_share() {
        // 8 shards, 3 processes: fair share 3.
        assert_eq!(surplus(&[0, 1, 2, 3, 4, 5, 6, 7], 8, 3), vec![7, 6, 5, 4, 3]);
        assert_eq!(surplus(&[0, 2, 4, 6], 8, 3), vec![6]);
        assert_eq!(surplus(&[0, 1, 2], 8, 3), Vec::<usize>::new());
        // More processes than shards: one each at most.
        assert_eq!(surplus(&[0, 1], 2, 5), vec![1]);
    }
}
