//! inboxd: the chat21 inbox-pattern observer for RabbitMQ, with a policy seam for plugins.
//!
//! # Layout
//! - [`config`]: TOML + environment → validated [`config::Config`].
//! - [`chat21`]: the wire protocol, pure: routing keys, normalisation, inbox copies.
//! - [`policy`]: the seam where plugins decide (accept, modify, reject, drop).
//! - [`pipeline`]: dispatcher → sharded workers → publish with confirms → ack.
//! - [`broker`]: lapin connection, topology, confirm-mode publishing.
//! - [`daemon`]: sessions, reconnects, graceful shutdown. [`telemetry`]: logs and counters.

pub mod broker;
pub mod chat21;
pub mod config;
pub mod daemon;
pub mod pipeline;
pub mod policy;
pub mod telemetry;

pub use daemon::run;
