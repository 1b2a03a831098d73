//! The queues and bindings inboxd needs, declared idempotently on every (re)connect.
//! Durable, so accepted messages survive a broker restart.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ErrorKind};

use super::{BrokerConfig, QueueLimit};
use crate::chat21::binding_keys;
use crate::telemetry;

/// Declares the consumed queue, its bindings (exactly the protocol table), the dead-letter
/// queue (bounded, see [`declare_bounded`]) and the held queue. The last two are bound to no
/// exchange: only the default exchange (`amq.default`) reaches them. The observer may write
/// to it; an MQTT user's token must not (it would reach every queue by name).
///
/// # Errors
/// The lapin error of the first declaration the broker refuses.
pub async fn declare(connection: &Connection, broker: &BrokerConfig, app: &str) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
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
    channel.close(200, "declared".into()).await?;
    declare_bounded(connection, &broker.dead_letter_queue(), FieldTable::default(), broker.dead_letter_limit).await
}

/// Declares the durable `queue` with `arguments` plus `limit` (`x-max-length`,
/// `x-max-length-bytes`, `x-overflow: drop-head`). A queue that exists with other arguments
/// (one made before the limit was configured, or with other values) cannot be redeclared:
/// the broker refuses with PRECONDITION_FAILED. It is then used as it is, with a warning
/// naming what to do (an operator policy, or deleting the queue once empty).
///
/// # Errors
/// The lapin error when the queue can neither be declared nor found.
pub async fn declare_bounded(
    connection: &Connection,
    queue: &str,
    mut arguments: FieldTable,
    limit: QueueLimit,
) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    if let Some(max) = limit.max_length {
        arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(max.try_into().unwrap_or(i64::MAX)));
    }
    if let Some(max) = limit.max_bytes {
        arguments.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(max.try_into().unwrap_or(i64::MAX)));
    }
    if limit.max_length.is_some() || limit.max_bytes.is_some() {
        arguments.insert("x-overflow".into(), AMQPValue::LongString("drop-head".into()));
    }
    // The refusal closes the channel it happened on: try on a channel of its own.
    let channel = connection.create_channel().await?;
    match channel.queue_declare(queue.into(), durable, arguments).await {
        Ok(_) => channel.close(200, "declared".into()).await,
        Err(err) if is_precondition_failed(&err) => {
            telemetry::queue_limit_not_applied(queue, &err);
            let channel = connection.create_channel().await?;
            let passive = QueueDeclareOptions { passive: true, ..durable };
            channel.queue_declare(queue.into(), passive, FieldTable::default()).await?;
            channel.close(200, "declared".into()).await
        }
        Err(err) => Err(err),
    }
}

/// The broker's answer to a declare whose arguments differ from the existing queue's.
fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(e)
        if *e.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
}
