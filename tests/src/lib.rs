//! End-to-end harness for inboxd: a private RabbitMQ node, real MQTT clients and real JWTs.
//! The `e2e` test binary (`cargo test -p inboxd-e2e --features e2e`) is built on it.
//!
//! # Layout
//!
//! - [`broker`]: [`PrivateNode`], a private RabbitMQ 3.10 node that dies with the test process,
//!   and [`shared_node`], the one node of a test binary.
//! - [`cluster`]: [`Cluster`], private nodes joined into one RabbitMQ cluster.
//! - [`jwt`]: HS256 tokens with chat21 scopes, as the node's oauth2 backend checks them.
//! - [`mqtt`]: [`MqttUser`], a chat21 user's MQTT connection that reports broker refusals.
//! - [`amqp`]: the observer's AMQP side: [`amqp::Observer`] publishes and inspects queues,
//!   [`Tap`] shows what reached `amq.topic`.
//! - [`built`]: where `plugins/build.sh` put the example plugins ([`built::built_plugin`]).
//! - [`browser`]: [`browser::Browser`], headless chromium over WebDriver through a private
//!   chromedriver per test binary (the console tests).
//! - [`js`]: [`js::JsClient`], chat21's own JavaScript clients (chat21client.js, the node SDK).
//! - [`postgres`]: a private PostgreSQL server per test binary ([`postgres::shared_postgres`]).
//! - [`db`]: [`db::TestDb`], a fresh SQLite file or PostgreSQL database per store test.
//! - [`eventually`]: bounded polling with a clear error, for what a test cannot wait on directly.
//! - [`numbered`]: numbered conversations, checked complete and in send order.
//! - `lifeline`: the watchdog that stops a private server when the test process dies.

pub mod amqp;
pub mod broker;
pub mod browser;
#[path = "../../plugins/built.rs"]
pub mod built;
pub mod cluster;
pub mod daemon;
pub mod db;
mod eventually;
pub mod js;
pub mod jwt;
mod lifeline;
pub mod mqtt;
pub mod numbered;
pub mod ports;
pub mod postgres;

pub use amqp::Tap;
pub use broker::{PrivateNode, shared_node};
pub use cluster::Cluster;
pub use eventually::eventually;
pub use mqtt::{ConnectError, ConnectOptions, MqttUser};

/// `<prefix>-<12 random hex digits>`: app ids, queue names and node names that do not collide
/// between tests running in parallel. Contains no character that chat21 ids forbid.
pub fn unique_id(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &random[..12])
}
