//! End-to-end tests against a private RabbitMQ node: `cargo test -p inboxd-e2e --features e2e`.
//! One binary, one shared node (started on first use); each module covers one area.

mod chat21_api;
mod console;
mod harness;
mod hostile;
mod ids;
mod import;
mod js_clients;
mod languages;
mod operator;
mod plugins;
mod protocol;
mod reliability;
mod scale;
mod security;
mod spoofing;
mod store;
mod util;
mod webhooks;
