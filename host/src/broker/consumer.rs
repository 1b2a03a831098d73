//! Consuming the incoming traffic in either layout: the one queue on one channel, or every
//! shard queue on a channel each (see [`super::shards::Intake`]). Either way the deliveries come
//! as one stream, each with its [`super::Lease`] when it came from a shard queue.

use std::sync::Arc;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tracing::warn;

use super::BrokerConfig;
use super::journal::Committer;
use super::shards::{Incoming, Intake, ShardsConfig};

/// The consumer tag on the consuming channel of the one queue.
const CONSUMER_TAG: &str = "inboxd";

/// The consumers of one broker session.
pub struct Consumer<'c> {
    layout: Layout<'c>,
}

enum Layout<'c> {
    /// The one queue, on this channel (and its committer, when transactional).
    Single(Channel, Option<Arc<Committer>>),
    Sharded(Box<Intake<'c>>),
}

impl<'c> Consumer<'c> {
    /// Subscribes to the configured queue (prefetch set), or to every shard queue with
    /// `shards`; returns the deliveries. `transactional`: the consuming channels are in
    /// transaction mode, their acks committed with the settle journal (see [`Committer`]).
    ///
    /// # Errors
    /// When a channel cannot be opened or a queue refuses the consumer.
    pub async fn open(
        connection: &'c Connection,
        broker: &BrokerConfig,
        shards: Option<&ShardsConfig>,
        transactional: bool,
    ) -> anyhow::Result<(Consumer<'c>, BoxStream<'static, anyhow::Result<Incoming>>)> {
        if let Some(shards) = shards {
            let (intake, deliveries) = Intake::open(connection, broker, shards, transactional).await?;
            return Ok((Consumer { layout: Layout::Sharded(Box::new(intake)) }, deliveries));
        }
        let channel = connection.create_channel().await.context("opening the consuming channel")?;
        channel.basic_qos(broker.prefetch, BasicQosOptions::default()).await.context("setting the prefetch")?;
        let consumer = channel
            .basic_consume(
                broker.queue.as_str().into(),
                CONSUMER_TAG.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {}", broker.queue))?;
        let committer = Committer::select_if(transactional, &channel, &broker.queue)
            .await
            .context("putting the consuming channel in transaction mode")?;
        let deliveries = consumer.map(|d| d.map(|d| (d, None)).map_err(anyhow::Error::from)).boxed();
        Ok((Consumer { layout: Layout::Single(channel, committer) }, deliveries))
    }

    /// The one channel every delivery comes on, in delivery-tag order and without leases (the
    /// single layout): a settler that sees all of them may ack them with `multiple`.
    pub fn channel(&self) -> Option<&Channel> {
        match &self.layout {
            Layout::Single(channel, _) => Some(channel),
            Layout::Sharded(_) => None,
        }
    }

    /// Every channel it consumes on now (with shards, a hand-over replaces a shard's channel).
    pub fn channels(&self) -> Vec<Channel> {
        match &self.layout {
            Layout::Single(channel, _) => vec![channel.clone()],
            Layout::Sharded(intake) => intake.channels(),
        }
    }

    /// The one queue's committer, when its channel is transactional (shards carry theirs in
    /// their deliveries' leases).
    pub fn committer(&self) -> Option<&Arc<Committer>> {
        match &self.layout {
            Layout::Single(_, committer) => committer.as_ref(),
            Layout::Sharded(_) => None,
        }
    }

    /// Sharded: every rebalance interval, hands over the shards this process owns beyond its
    /// fair share. Never returns otherwise (one queue, or rebalancing off).
    ///
    /// # Errors
    /// When the broker refuses a consumer-count query or a re-subscription: the session ends.
    pub async fn rebalance(&mut self) -> anyhow::Result<()> {
        match &mut self.layout {
            Layout::Sharded(intake) => intake.rebalance().await,
            Layout::Single(..) => std::future::pending().await,
        }
    }

    /// Stops the deliveries before a drain. Sharded, nothing is cancelled: the next process
    /// would start on a shard while this one still works on it; the connection's close hands
    /// back what is left, in order.
    pub async fn cancel(&self) {
        let Layout::Single(channel, committer) = &self.layout else { return };
        // On a transactional channel nothing may be sent while a commit is under way.
        let cancelled = match committer {
            Some(committer) => committer.cancel(CONSUMER_TAG).await,
            None => channel.basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default()).await,
        };
        if let Err(err) = cancelled {
            warn!(error = %err, "cancelling the consumer failed");
        }
    }
}
