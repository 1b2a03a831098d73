//! The queues and bindings inboxd needs, declared idempotently on every (re)connect.
//! Durable, so accepted messages survive a broker restart.

use lapin::Channel;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use crate::chat21::binding_keys;
use crate::config::BrokerConfig;

/// Declares the consumed queue, its bindings (exactly the protocol table), the dead-letter
/// queue and the held queue. The last two are bound to no exchange: only the default
/// exchange reaches them, which needs write permission on the queue (the observer's, no
/// MQTT user's).
///
/// # Errors
/// The lapin error of the first declaration the broker refuses.
pub async fn declare(channel: &Channel, broker: &BrokerConfig, app: &str) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    // `amq.*` exchanges exist already and may not be declared by clients.
    if !broker.exchange.starts_with("amq.") {
        let options = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        channel
            .exchange_declare(
                broker.exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await?;
    }
    channel.queue_declare(broker.queue.as_str().into(), durable, FieldTable::default()).await?;
    channel.queue_declare(broker.dead_letter_queue().as_str().into(), durable, FieldTable::default()).await?;
    channel.queue_declare(broker.held_queue().as_str().into(), durable, FieldTable::default()).await?;
    for key in binding_keys(app) {
        channel
            .queue_bind(
                broker.queue.as_str().into(),
                broker.exchange.as_str().into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}
