//! inboxd: the chat21 inbox-pattern observer for RabbitMQ, with a policy seam for plugins.
//!
//! # Layout
//! - [`config`]: TOML + environment → validated [`config::Config`].
//! - [`chat21`]: the wire protocol and domain types, pure: routing keys, normalisation, groups,
//!   held messages, inbox copies.
//! - [`policy`]: the seam where plugins decide (accept, modify, reject, drop, hold): the
//!   ordered chain, and its hot reload.
//! - [`plugin`]: the Wasm mechanics on wasmtime: engine, compile cache, sandbox, instances.
//! - [`routing`]: the pure router: an inbound event → a typed [`routing::Routed`] (the event,
//!   its inbox copies, a held message, the outcome); ids and the clock are passed in.
//! - [`pipeline`]: dispatcher → sharded workers → publish with confirms → ack.
//! - [`broker`]: lapin connection, topology, confirm-mode publishing.
//! - [`daemon`]: sessions, reconnects, graceful shutdown. [`telemetry`]: logs and counters.
//! - [`shards`]: scale-out: shard queues by conversation, one active process per shard.
//! - [`store`]: history, conversation lists and stored groups (SQLite or PostgreSQL), written
//!   in batches before a delivery is acked.
//! - [`history`]: the read-only history API (`/api/...`) on the operator HTTP server.
//! - [`webhook`]: chat21's webhook events through a durable outbox, signed, retried, dead-lettered.
//! - [`held`]: the moderator's side of held messages (`inboxd held list|release|discard`) and
//!   the signed held-entry codec the daemon writes with.

pub mod broker;
pub mod chat21;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod health;
pub mod held;
pub mod history;
pub mod http;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod routing;
pub mod settings;
pub mod shards;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod webhook;

pub use daemon::{run, serve};
