//! Reading a parked queue (held entries, dead letters) entry by entry on a connection of its
//! own: each entry is taken with `basic.get` and not acked, so whatever the reader does not ack
//! goes back to the queue, in its place, when the connection closes. Memory stays bounded by
//! what the reader keeps, whatever the queue's length.

use anyhow::Context;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::Failover;

/// A connection named `who (pid N)` to the first reachable node of `urls`, and a channel on it.
///
/// # Errors
/// When no node is reachable or the channel cannot be opened.
pub async fn open_reader(urls: &[String], who: &str) -> anyhow::Result<(Connection, Channel)> {
    let name = format!("{who} (pid {})", std::process::id());
    let connection = Failover::new(urls).connect(&name).await.context("connecting to the broker")?;
    let channel = connection.create_channel().await.context("opening a channel")?;
    Ok((connection, channel))
}

/// Closes a reader's connection, which hands every entry fetched but not acked back to its queue.
pub async fn close_reader(connection: Connection) {
    if let Err(err) = connection.close(200, "inboxd reader done".into()).await {
        tracing::debug!(error = %err, "closing the connection");
    }
}

/// A queue, entry by entry: as many as it held when the scan began, at most a limit (entries
/// added later are left for the next scan; a concurrent reader may take some first).
pub struct Scan<'a> {
    channel: &'a Channel,
    queue: String,
    /// Entries in the queue when the scan began.
    pub total: u32,
    left: u32,
    /// Of the last entry returned by [`Scan::next`] (1-based).
    pub position: usize,
}

impl<'a> Scan<'a> {
    /// Scans the durable `queue` (which must exist), at most `limit` entries.
    ///
    /// # Errors
    /// When the queue does not exist.
    pub async fn open(channel: &'a Channel, queue: String, limit: u32) -> anyhow::Result<Scan<'a>> {
        let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
        let declared = channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .with_context(|| format!("the queue {queue} does not exist (has the daemon run?)"))?;
        let total = declared.message_count();
        Ok(Scan { channel, queue, total, left: total.min(limit), position: 0 })
    }

    /// The next entry, not acked.
    ///
    /// # Errors
    /// When the channel fails.
    pub async fn next(&mut self) -> anyhow::Result<Option<BasicGetMessage>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let queue = self.queue.as_str();
        let got = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("reading {queue}"))?;
        if got.is_some() {
            self.position += 1;
        }
        Ok(got)
    }
}
