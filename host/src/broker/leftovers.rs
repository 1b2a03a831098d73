//! chat21-server's own queues left on the broker after a move to inboxd: looked for at each
//! connect, so that an operator who did not delete them (or left chat21-server running) is told.

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

/// chat21-server 0.2.x's durable queues: `messages` (the clients' traffic, bound to `amq.topic`),
/// `persist` (its copies to store) and `webhooks` (its webhook events).
pub const CHAT21_QUEUES: [&str; 3] = ["messages", "persist", "webhooks"];

/// A chat21 queue that still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub queue: &'static str,
    /// Messages ready in it.
    pub messages: u32,
    /// Consumers on it: chat21-server, still running.
    pub consumers: u32,
}

/// The queues of [`CHAT21_QUEUES`] that exist on `connection`'s virtual host, other than `own`
/// (inboxd's queue, should it have been given one of those names). A passive declare each, on a
/// channel of its own (a missing queue closes the channel); a probe that fails counts as absent.
pub async fn chat21_leftovers(connection: &Connection, own: &str) -> Vec<Leftover> {
    let passive = QueueDeclareOptions { passive: true, ..Default::default() };
    let mut found = Vec::new();
    for queue in CHAT21_QUEUES.into_iter().filter(|queue| *queue != own) {
        let Ok(channel) = connection.create_channel().await else { break };
        if let Ok(declared) = channel.queue_declare(queue.into(), passive, FieldTable::default()).await {
            found.push(Leftover { queue, messages: declared.message_count(), consumers: declared.consumer_count() });
            let _ = channel.close(200, "probed".into()).await;
        }
    }
    found
}
