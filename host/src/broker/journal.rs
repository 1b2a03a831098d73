//! The settle journal: a consuming channel's acks are committed in one AMQP transaction with a
//! marker naming the messages they settle, so after a crash the markers tell which stored ids
//! belong to acked messages (see `pipeline::ledger`).
//!
//! The journal is the queue `<queue>.settled`, bounded to its last [`JOURNAL_LIMIT`] markers:
//! in the normal course the settling process deletes the ids' intents itself right after the
//! commit, so only the last few markers of a process that died can matter, and whoever reads
//! the journal applies and removes what it holds.

use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions};
use lapin::{BasicProperties, Channel, Connection};
use thiserror::Error;
use tokio::sync::Mutex;

use super::QueueLimit;
use super::connection::{ConnectError, Failover};
use crate::telemetry;

/// Markers the journal keeps; older ones are dropped (their ids' intents were deleted long ago).
pub const JOURNAL_LIMIT: QueueLimit = QueueLimit { max_length: Some(10_000), max_bytes: None };

/// The journal queue of the consumed `queue`.
pub fn journal_queue(queue: &str) -> String {
    format!("{queue}.settled")
}

/// A consuming channel in transaction mode: its acks and nacks take effect only with the
/// marker of the messages they settle, together or not at all.
pub struct Committer {
    channel: Mutex<Channel>,
    journal: String,
}

/// One commit's worth of settling.
#[derive(Debug, Default)]
pub struct Settlement {
    /// Delivery tags to requeue, written first.
    pub requeues: Vec<u64>,
    /// Delivery tags to ack, in order.
    pub acks: Vec<u64>,
    /// Ack them all by one `multiple` ack of the last (the channel's every delivery up to it is
    /// in this settlement or settled before).
    pub multiple: bool,
    /// The message ids the acks settle (the marker's lines).
    pub ids: Vec<String>,
}

impl Committer {
    /// Puts the consuming `channel` of `queue` in transaction mode when `transactional` (acks
    /// committed with the settle journal), and returns its committer; `None` otherwise.
    ///
    /// # Errors
    /// The broker's refusal.
    pub async fn select_if(
        transactional: bool,
        channel: &Channel,
        queue: &str,
    ) -> Result<Option<Arc<Committer>>, lapin::Error> {
        if !transactional {
            return Ok(None);
        }
        channel.tx_select().await?;
        Ok(Some(Arc::new(Committer { channel: Mutex::new(channel.clone()), journal: journal_queue(queue) })))
    }

    /// Writes `settlement`'s acks and requeues and its marker, and commits them as one.
    ///
    /// # Errors
    /// The channel's error: nothing of the settlement took effect, or (the connection lost while
    /// the commit was under way) all of it did.
    pub async fn commit(&self, settlement: Settlement) -> Result<(), lapin::Error> {
        let Settlement { requeues, acks, multiple, ids } = settlement;
        let counts = (acks.len(), ids.len());
        let channel = self.channel.lock().await;
        // Each ack and nack frame is queued as it is polled first, in this order, ahead of the
        // commit; the commit's answer comes after all of them are applied.
        for tag in requeues {
            queue(channel.basic_nack(tag, BasicNackOptions { multiple: false, requeue: true }))?;
        }
        match acks.last() {
            Some(&last) if multiple => queue(channel.basic_ack(last, BasicAckOptions { multiple: true }))?,
            _ => {
                for tag in acks {
                    queue(channel.basic_ack(tag, BasicAckOptions::default()))?;
                }
            }
        }
        if !ids.is_empty() {
            let marker = ids.join("\n");
            let journal = self.journal.as_str().into();
            let options = BasicPublishOptions::default();
            // Awaited until written: lapin queues content frames apart from method frames, and the
            // commit must not overtake the marker.
            channel.basic_publish("".into(), journal, options, marker.as_bytes(), BasicProperties::default()).await?;
        }
        channel.tx_commit().await?;
        telemetry::settle_committed(counts.0, counts.1);
        Ok(())
    }

    /// Cancels the channel's consumer `tag` between two commits.
    ///
    /// # Errors
    /// The channel's error.
    pub async fn cancel(&self, tag: &str) -> Result<(), lapin::Error> {
        self.channel.lock().await.basic_cancel(tag.into(), BasicCancelOptions::default()).await
    }
}

/// Polls `frame` once, which hands its frame to the connection, without waiting for the write.
fn queue<T>(frame: impl Future<Output = Result<T, lapin::Error>>) -> Result<(), lapin::Error> {
    match pin!(frame).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(result) => result.map(drop),
        Poll::Pending => Ok(()),
    }
}

/// Reads the journal on a connection of its own, opened (again) when a take needs it: RabbitMQ
/// answers a `basic.get` it cannot serve, such as one of a quorum journal whose leader is being
/// elected again after a node loss, by closing the whole connection (541 INTERNAL_ERROR), and on
/// the session's connection that took the consumers and every delivery in flight with it.
pub struct Journal {
    nodes: Failover,
    name: String,
    queue: String,
    open: Option<(Connection, Channel)>,
    /// How many times a connection or a channel was opened.
    opened: u64,
}

/// Reading the journal failed.
#[derive(Debug, Error)]
pub enum JournalError {
    #[error("connecting to read the settle journal: {0}")]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// Markers taken from the journal, removed from it by [`Journal::remove`].
pub struct Taken {
    /// Every id the markers name.
    pub ids: Vec<String>,
    /// The last marker's delivery tag, and which of the journal's channels delivered it (how
    /// many had been opened then).
    last: Option<(u64, u64)>,
}

impl Journal {
    /// The reader of the journal of `queue`, connecting to `nodes` (from the one that worked
    /// last) as `name` once it first takes.
    pub fn new(nodes: Failover, name: &str, queue: &str) -> Journal {
        Journal { nodes, name: format!("{name} (settle journal)"), queue: journal_queue(queue), open: None, opened: 0 }
    }

    /// Takes the markers the journal holds when called (they stay until [`Journal::remove`]):
    /// those of every ack committed before, and no more. Markers that other processes commit
    /// meanwhile are left for the next call, so a journal written faster than it is read does
    /// not keep the caller (a redelivery waiting for its intent) taking forever.
    ///
    /// # Errors
    /// The broker's, or no node reachable when the connection has to be opened.
    pub async fn take(&mut self) -> Result<Taken, JournalError> {
        let channel = self.channel().await?;
        let mut taken = Taken { ids: Vec::new(), last: None };
        let queue = self.queue.as_str();
        // Markers still to take: the first answer tells how many were behind it.
        let mut left = None;
        while left != Some(0) {
            let Some(marker) = channel.basic_get(queue.into(), BasicGetOptions::default()).await? else { break };
            let lines = String::from_utf8_lossy(&marker.delivery.data);
            taken.ids.extend(lines.lines().filter(|id| !id.is_empty()).map(str::to_owned));
            taken.last = Some((self.opened, marker.delivery.delivery_tag));
            left = Some(left.map_or(marker.message_count, |left: u32| left - 1));
        }
        Ok(taken)
    }

    /// Removes the markers `taken` from the journal (their ids are applied). Markers taken on a
    /// channel that closed since are back in the journal already.
    ///
    /// # Errors
    /// The broker's (the markers come back: applying them again is harmless).
    pub async fn remove(&self, taken: Taken) -> Result<(), JournalError> {
        match (taken.last, &self.open) {
            (Some((opened, tag)), Some((_, channel))) if opened == self.opened && channel.status().connected() => {
                Ok(channel.basic_ack(tag, BasicAckOptions { multiple: true }).await?)
            }
            _ => Ok(()),
        }
    }

    /// The journal's channel, opened again (with the connection, when that is gone too) once a
    /// failure closed it: its unacked markers went back to the journal.
    async fn channel(&mut self) -> Result<Channel, JournalError> {
        let kept = self.open.take().filter(|(connection, _)| connection.status().connected());
        let (connection, reconnected) = match kept {
            Some((connection, channel)) if channel.status().connected() => {
                self.open = Some((connection, channel.clone()));
                return Ok(channel);
            }
            Some((connection, _)) => (connection, false),
            None => (self.nodes.connect(&self.name).await?, true),
        };
        let channel = connection.create_channel().await?;
        if self.opened > 0 {
            telemetry::journal_reopened(reconnected);
        }
        self.opened += 1;
        self.open = Some((connection, channel.clone()));
        Ok(channel)
    }
}
