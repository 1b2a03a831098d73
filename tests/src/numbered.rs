//! Numbered conversations: a sender publishes `"0"`, `"1"`, ... (the message text) to one
//! recipient, whose [`Inbox`] checks that the conversation arrives complete and in send order.
//! A redelivery (inboxd delivers at least once) is counted as a duplicate, and as one with a
//! new id when its `message_id` differs from the first copy's; a gap or a message out of order
//! is an error.

use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MqttUser;
use crate::mqtt::Received;

/// Publishes `seqs` from `sender` to `recipient`, in order; the broker acknowledges each
/// (QoS 1 PUBACK) before the next is sent.
///
/// # Errors
/// When a publish is not acknowledged.
pub async fn send(sender: &MqttUser, recipient: &str, seqs: Range<usize>) -> Result<()> {
    let topic = sender.outgoing_topic(recipient);
    for seq in seqs {
        sender.publish_json(&topic, &json!({"text": seq.to_string()})).await?;
    }
    Ok(())
}

/// Conversations publishing in the background, each from its own start on, until
/// [`Stream::finish`].
pub struct Stream {
    stop: CancellationToken,
    task: JoinHandle<Result<Vec<usize>>>,
}

impl Stream {
    /// Starts every `(sender, recipient, first number)` conversation at once.
    pub fn start(conversations: Vec<(Arc<MqttUser>, String, usize)>) -> Stream {
        let stop = CancellationToken::new();
        let sending = conversations.into_iter().map(|(sender, recipient, start)| {
            let stop = stop.clone();
            async move {
                let topic = sender.outgoing_topic(&recipient);
                let mut seq = start;
                while !stop.is_cancelled() {
                    sender.publish_json(&topic, &json!({"text": seq.to_string()})).await?;
                    seq += 1;
                }
                anyhow::Ok(seq)
            }
        });
        let all = futures_util::future::join_all(sending);
        let task = tokio::spawn(async move { all.await.into_iter().collect() });
        Stream { stop, task }
    }

    /// Stops the senders; returns where each stopped (its next number), in start order.
    ///
    /// # Errors
    /// When a publish failed.
    pub async fn finish(self) -> Result<Vec<usize>> {
        self.stop.cancel();
        self.task.await.context("the sender task panicked")?
    }
}

/// The receiving end of one numbered conversation.
pub struct Inbox {
    user: MqttUser,
    /// The number expected next: every number below it has arrived.
    next: usize,
    duplicates: usize,
    /// The `message_id` each number arrived with first.
    ids: Vec<String>,
    /// Duplicates whose `message_id` differs from the first copy's.
    renamed: usize,
}

impl Inbox {
    /// `user` receives a numbered conversation that starts at 0 (its inbox is subscribed).
    pub fn new(user: MqttUser) -> Inbox {
        Inbox { user, next: 0, duplicates: 0, ids: Vec::new(), renamed: 0 }
    }

    /// The recipient's connection.
    pub fn user(&mut self) -> &mut MqttUser {
        &mut self.user
    }

    /// The number expected next: how many arrived, not counting duplicates.
    pub fn next(&self) -> usize {
        self.next
    }

    /// Redeliveries of numbers that had arrived already.
    pub fn duplicates(&self) -> usize {
        self.duplicates
    }

    /// Duplicates that carried another `message_id` than the first copy of their number.
    pub fn renamed(&self) -> usize {
        self.renamed
    }

    /// Receives until every number below `end` has arrived, or fails at `deadline`.
    ///
    /// # Errors
    /// When a number is missing or out of order, a message is not a number, or `deadline` passes.
    pub async fn receive_until(&mut self, end: usize, deadline: Instant) -> Result<()> {
        while self.next < end {
            let Ok(Some(message)) =
                tokio::time::timeout_at(deadline, self.user.recv(deadline.saturating_duration_since(Instant::now())))
                    .await
            else {
                bail!("{} got {} of 0..{end} in time", self.user.user(), self.next);
            };
            self.take(&message)?;
        }
        Ok(())
    }

    /// Takes one message: the next number, or a duplicate of an earlier one.
    fn take(&mut self, message: &Received) -> Result<()> {
        let body = message.json()?;
        let text = body["text"].as_str().with_context(|| format!("not a numbered message: {body}"))?;
        let seq: usize = text.parse().with_context(|| format!("not a numbered message: {body}"))?;
        let id = body["message_id"].as_str().with_context(|| format!("no message_id: {body}"))?;
        if seq < self.next {
            self.duplicates += 1;
            self.renamed += usize::from(self.ids[seq] != id);
            return Ok(());
        }
        ensure!(seq == self.next, "{} got message {seq} while expecting {}", self.user.user(), self.next);
        self.ids.push(id.to_owned());
        self.next += 1;
        Ok(())
    }
}
