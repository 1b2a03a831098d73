//! inboxd: the chat21 inbox-pattern observer for RabbitMQ, with a policy seam for plugins.
//!
//! # Layers
//! Each module imports only modules of the rows above it (bottom of the stack first);
//! `host/tests/layers.rs` fails the build's tests when one does not, so the graph has no cycle.
//! 1. Leaves: [`clock`] (the wall clock, the one backoff), [`settings`] (the config error and
//!    range checks every section uses), [`telemetry`] (logs and counters; takes labels, never
//!    crate types), [`health`] (readiness flags), [`refusals`] (the last refused messages, in
//!    memory, for the console).
//! 2. [`chat21`]: the wire protocol and domain types, pure: routing keys, normalisation, groups,
//!    held messages, inbox copies.
//! 3. [`policy`]: the seam where plugins decide (accept, modify, reject, drop, hold) and the
//!    ordered chain; [`token`]: user JWTs, minted and verified.
//! 4. [`plugin`]: the Wasm mechanics on wasmtime (engine, compile cache, sandbox, instances),
//!    building chains from `[plugins]` and hot reload; [`routing`]: the pure router, an inbound
//!    event → a typed [`routing::Routed`] (event, inbox copies, held message, outcome).
//! 5. [`broker`]: AMQP end to end (connection, topology, consumers of the queue or its shards,
//!    confirm-mode publishing, the settler that acks in order, the held-entry header codec);
//!    [`store`]: history, conversation lists and stored groups (SQLite or PostgreSQL), written
//!    in batches.
//! 6. [`webhook`]: chat21's webhook events through the store's durable outbox, signed, retried;
//!    [`import`]: a chat21 deployment's `mongoexport` files read into the store.
//! 7. [`pipeline`]: dispatcher → sequential workers → one completion stage (publish, store,
//!    webhooks, then ack).
//! 8. [`held`]: the moderator's side of held messages (`inboxd held list|release|discard`);
//!    [`http`]: the operator and API listener, bounded.
//! 9. [`history`]: chat21-http-server's API (reads and writes); [`console`]: the moderation
//!    console (accounts, sessions, held queue, refusals, dead letters, chain, overview) under
//!    `/console`.
//! 10. [`config`]: the root of the configuration (file, environment, chat21's variables) over
//!     each component's own section.
//! 11. [`daemon`]: the composition root: sessions, reconnects, graceful shutdown.

pub mod broker;
pub mod chat21;
pub mod clock;
pub mod config;
pub mod console;
pub mod daemon;
pub mod health;
pub mod held;
pub mod history;
pub mod http;
pub mod import;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod refusals;
pub mod routing;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod token;
pub mod webhook;

pub use daemon::{run, serve};
