//! The queues, exchanges and bindings inboxd needs, in either layout, declared idempotently on
//! every (re)connect. Durable, so accepted messages survive a broker restart.
//!
//! ```text
//! one queue:  <exchange> ──(protocol binding keys)──► <queue>
//! sharded:    <exchange> ──(protocol binding keys)──► <queue>.shards (x-consistent-hash) ──(weight 1 each)──► <queue>.shard.0 … N-1
//!             <queue>.processes: no messages; every process consumes it, so its consumer count is the process count
//! both:       <queue>.dead-letter (bounded) and <queue>.held, bound to no exchange
//! both:       <queue>.settled, the settle journal (bounded), bound to no exchange
//! ```
//!
//! Sharded, the hash is over the routing key, which names the sender and the conversation, so
//! all messages of one sender in one conversation land in one shard, in order. Shard queues are
//! single-active-consumer: every process subscribes to every shard, the broker lets one of them
//! consume it and hands it to the next when that one goes away (see [`super::shards`]).

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};

use super::journal::{JOURNAL_LIMIT, journal_queue};
use super::shards::{CONSISTENT_HASH, QueueType, ShardsConfig, exchange_name, processes_queue, queue_name};
use super::{BrokerConfig, QueueLimit};
use crate::chat21::binding_keys;
use crate::telemetry;

/// Declares the topology of the configured layout: the exchange, the consumed queue and its
/// bindings (exactly the protocol table) or, with `shards`, the hash exchange bound with them,
/// the shard queues (single active consumer, of the configured type) and the processes queue;
/// then the held queue, the settle journal and the dead-letter queue (the last two bounded, see
/// `declare_bounded`), of the shards' queue type (a quorum journal outlives a node: the markers
/// stay readable, and can be written, while any node is down). These three are bound to no
/// exchange: only the default exchange (`amq.default`) reaches them. The observer may write to
/// it; an MQTT user's token must not (it would reach every queue by name). Sharded, the
/// unsharded `<queue>` is not declared: nothing would consume it.
///
/// # Errors
/// The lapin error of the first declaration the broker refuses: e.g. the hash exchange type is
/// unknown (its plugin is not enabled), or a queue exists with other arguments.
pub async fn declare(
    connection: &Connection,
    broker: &BrokerConfig,
    shards: Option<&ShardsConfig>,
    app: &str,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    // `amq.*` exchanges exist already and may not be declared by clients.
    if !broker.exchange.starts_with("amq.") {
        let exchange = broker.exchange.as_str().into();
        channel.exchange_declare(exchange, ExchangeKind::Topic, durable_exchange, FieldTable::default()).await?;
    }
    let queue_type = shards.map_or(QueueType::Classic, |s| s.queue_type);
    match shards {
        None => declare_single(&channel, broker, app).await?,
        Some(shards) => declare_sharded(&channel, broker, shards, app).await?,
    }
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(broker.held_queue().as_str().into(), durable, queue_arguments(queue_type)).await?;
    channel.close(200, "declared".into()).await?;
    declare_bounded(connection, &journal_queue(&broker.queue), queue_arguments(queue_type), JOURNAL_LIMIT).await?;
    declare_bounded(connection, &broker.dead_letter_queue(), queue_arguments(queue_type), broker.dead_letter_limit)
        .await
}

/// The consumed queue, bound to the exchange with the protocol's binding keys.
async fn declare_single(channel: &Channel, broker: &BrokerConfig, app: &str) -> Result<(), lapin::Error> {
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(broker.queue.as_str().into(), durable, FieldTable::default()).await?;
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

/// The hash exchange bound with the protocol's binding keys, the shard queues on its ring and
/// the processes queue.
async fn declare_sharded(
    channel: &Channel,
    broker: &BrokerConfig,
    shards: &ShardsConfig,
    app: &str,
) -> Result<(), lapin::Error> {
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    let hash = exchange_name(broker);
    let kind = ExchangeKind::Custom(CONSISTENT_HASH.into());
    channel.exchange_declare(hash.as_str().into(), kind, durable_exchange, FieldTable::default()).await?;
    for key in binding_keys(app) {
        channel
            .exchange_bind(
                hash.as_str().into(),
                broker.exchange.as_str().into(),
                key.as_str().into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    for index in 0..shards.count {
        let queue = queue_name(broker, index);
        let mut arguments = queue_arguments(shards.queue_type);
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        channel.queue_declare(queue.as_str().into(), durable, arguments).await?;
        // The binding key of a consistent-hash exchange is the queue's weight on the ring.
        let weight = "1".into();
        let options = QueueBindOptions::default();
        channel.queue_bind(queue.as_str().into(), hash.as_str().into(), weight, options, FieldTable::default()).await?;
    }
    let processes = processes_queue(broker);
    channel.queue_declare(processes.as_str().into(), durable, queue_arguments(shards.queue_type)).await?;
    Ok(())
}

/// `x-queue-type`; a classic queue is declared without it, as the unsharded queues are, so an
/// existing classic dead-letter or held queue is accepted as it is. Quorum queues spread their
/// leaders over the nodes (`balanced`) rather than all on the node of the declaring process.
fn queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert("x-queue-type".into(), AMQPValue::LongString(queue_type.as_str().into()));
        arguments.insert("x-queue-leader-locator".into(), AMQPValue::LongString("balanced".into()));
    }
    arguments
}

/// Declares the durable `queue` with `arguments` plus `limit` (`x-max-length`,
/// `x-max-length-bytes`, `x-overflow: drop-head`). A queue that exists with other arguments
/// (one made before the limit was configured, or with other values) cannot be redeclared:
/// the broker refuses with PRECONDITION_FAILED. It is then used as it is, with a warning
/// naming what to do (an operator policy, or deleting the queue once empty).
///
/// # Errors
/// The lapin error when the queue can neither be declared nor found.
async fn declare_bounded(
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
