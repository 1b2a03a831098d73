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
//! - [`db`]: [`db::TestDb`], a fresh SQLite file or PostgreSQL database per store test.

pub mod amqp;
pub mod broker;
pub mod cluster;
pub mod daemon;
pub mod db;
pub mod jwt;
pub mod mqtt;

pub use amqp::Tap;
pub use broker::{PrivateNode, shared_node};
pub use cluster::Cluster;
pub use mqtt::{ConnectError, ConnectOptions, MqttUser};

/// `<prefix>-<12 random hex digits>`: app ids, queue names and node names that do not collide
/// between tests running in parallel. Contains no character that chat21 ids forbid.
pub fn unique_id(prefix: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &random[..12])
}
