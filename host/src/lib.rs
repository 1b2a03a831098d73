//! inboxd: the chat21 inbox-pattern observer for RabbitMQ, with a policy seam for plugins.
//!
//! # Layout
//! - [`config`]: TOML + environment → validated [`config::Config`].
//! - [`chat21`]: the wire protocol, pure: routing keys, normalisation, inbox copies.
//! - [`policy`]: the seam where plugins decide (accept, modify, reject, drop, hold): the
//!   ordered chain, and its hot reload.
//! - [`plugin`]: the Wasm mechanics on wasmtime: engine, compile cache, sandbox, instances.
//! - [`pipeline`]: dispatcher → sharded workers → routing → the one completion stage (publish
//!   with confirms, store, webhooks) → ack.
//! - [`broker`]: AMQP end to end: connection, topology (one queue or shards), consumer,
//!   settler (ack, requeue, dead-letter), confirm-mode publishing, the held-entry codec;
//!   [`broker::shards`]: scale-out over shard queues, one active process per shard.
//! - [`daemon`]: wires store, webhooks, broker and pipeline; sessions, reconnects, graceful
//!   shutdown. [`telemetry`]: logs and counters.
//! - [`store`]: history, conversation lists and stored groups (SQLite or PostgreSQL), written
//!   in batches before a delivery is acked.
//! - [`history`]: the read-only history API (`/api/...`) on the operator HTTP server.
//! - [`webhook`]: chat21's webhook events through a durable outbox, signed, retried, dead-lettered.
//! - [`held`]: the moderator's side of held messages (`inboxd held list|release|discard`).

pub mod broker;
pub mod chat21;
pub mod config;
pub mod daemon;
pub mod health;
pub mod held;
pub mod history;
pub mod http;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod webhook;

pub use daemon::{run, serve};
