//! RabbitMQ over AMQP 0-9-1 with lapin: connecting with backoff, declaring the topology,
//! and publishing inbox copies with publisher confirms.

mod config;
mod connection;
mod publisher;
mod topology;

pub use config::{
    BrokerConfig, DEFAULT_DEAD_LETTER_MAX_BYTES, DEFAULT_DEAD_LETTER_MAX_LENGTH, QueueLimit, RawBroker, validate,
};
pub use connection::{ConnectError, Failover};
pub use publisher::{
    ConfirmError, HELD_UNSIGNED, InboxPublisher, PublishError, Queued, TooLong, confirmed, short_string,
};
pub use topology::{declare, declare_bounded};
