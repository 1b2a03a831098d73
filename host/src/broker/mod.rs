//! RabbitMQ over AMQP 0-9-1 with lapin, end to end: connecting with backoff, declaring the
//! topology (one queue or shards), consuming, settling each delivery (ack, requeue or
//! dead-letter) and publishing inbox copies with publisher confirms.
//!
//! # Layout
//! - `connection`: connect with backoff and failover over the configured nodes.
//! - `topology`: the queues, exchanges and bindings of either layout.
//! - [`shards`]: the sharded layout's names, settings and shard consumers.
//! - `consumer`: the deliveries of either layout as one stream.
//! - `settler`: acks, nacks and late dead letters, in order, once a delivery's outcome is known.
//! - `journal`: the one queue's acks committed with markers of the messages they settle.
//! - `open_channels`: a session's channels, closed before its connection.
//! - `publisher`: confirm-mode publishing of copies, held entries and dead letters.
//! - [`held_entry`]: the signed held-entry codec (written by the publisher, read by `inboxd held`).
//! - `depth`: the held queue's depth, for its gauge.
//! - `group_watch`: every process's group directory told of every group change.

mod config;
mod connection;
mod consumer;
mod depth;
mod group_watch;
pub mod held_entry;
mod journal;
mod open_channels;
mod publisher;
mod scan;
mod settler;
pub mod shards;
mod topology;

pub use config::{
    BrokerConfig, DEFAULT_DEAD_LETTER_MAX_BYTES, DEFAULT_DEAD_LETTER_MAX_LENGTH, QueueLimit, RawBroker, validate,
};
pub use connection::{ConnectError, Failover};
pub use consumer::Consumer;
pub use depth::watch_held;
pub use group_watch::watch_groups;
pub use held_entry::{EntryError, HeldEntry, HeldKey};
pub use journal::{Committer, Journal, JournalError, Taken};
pub use open_channels::OpenChannels;
pub use publisher::{
    ConfirmError, HELD_UNSIGNED, InboxPublisher, PublishError, Queued, TooLong, confirmed, short_string,
};
pub use scan::{Scan, close_reader, open_reader};
pub use settler::{Acked, Marked, Settle, Settler};
pub use shards::{Incoming, Lease};
pub use topology::declare;
