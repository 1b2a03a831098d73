//! The sharded topology, declared idempotently on every (re)connect: the protocol's bindings
//! lead from the MQTT exchange to a consistent-hash exchange that splits them over N shard queues.
//!
//! ```text
//! amq.topic ──(protocol binding keys)──► <queue>.shards (x-consistent-hash) ──(weight 1 each)──► <queue>.shard.0 … N-1
//! <queue>.processes: no messages; every process consumes it, so its consumer count is the process count
//! ```
//!
//! The hash is over the routing key, which names the sender and the conversation, so all
//! messages of one sender in one conversation land in one shard, in order. Shard queues are
//! single-active-consumer: every process subscribes to every shard, the broker lets one of them
//! consume it and hands it to the next when that one goes away.

use lapin::options::{ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};

use super::{QueueType, ShardsConfig};
use crate::broker::BrokerConfig;
use crate::chat21::binding_keys;

/// The exchange type of the `rabbitmq_consistent_hash_exchange` plugin.
pub const CONSISTENT_HASH: &str = "x-consistent-hash";

/// The consistent-hash exchange: `<queue>.shards`.
pub fn exchange_name(broker: &BrokerConfig) -> String {
    format!("{}.shards", broker.queue)
}

/// Shard `index`'s queue: `<queue>.shard.<index>`.
pub fn queue_name(broker: &BrokerConfig, index: usize) -> String {
    format!("{}.shard.{index}", broker.queue)
}

/// The queue whose consumers are the processes: `<queue>.processes`. The shard queues cannot
/// tell, as RabbitMQ 3.10 counts only the active consumer of a single-active-consumer quorum queue.
pub fn processes_queue(broker: &BrokerConfig) -> String {
    format!("{}.processes", broker.queue)
}

/// Declares the hash exchange, its bindings from the MQTT exchange, the shard queues (single
/// active consumer, of the configured type), the processes queue, and the dead-letter (bounded,
/// see [`crate::broker::declare_bounded`]) and held queues (same type).
/// The unsharded queue `<queue>` is not declared: nothing would consume it.
///
/// # Errors
/// The lapin error of the first declaration the broker refuses: e.g. the exchange type is
/// unknown (the plugin is not enabled), or a queue exists with other arguments.
pub async fn declare(
    connection: &Connection,
    broker: &BrokerConfig,
    shards: &ShardsConfig,
    app: &str,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
    // `amq.*` exchanges exist already and may not be declared by clients.
    if !broker.exchange.starts_with("amq.") {
        let exchange = broker.exchange.as_str().into();
        channel.exchange_declare(exchange, ExchangeKind::Topic, durable_exchange, FieldTable::default()).await?;
    }
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
    for queue in [processes_queue(broker), broker.held_queue()] {
        channel.queue_declare(queue.as_str().into(), durable, queue_arguments(shards.queue_type)).await?;
    }
    channel.close(200, "declared".into()).await?;
    let (dead, arguments) = (broker.dead_letter_queue(), queue_arguments(shards.queue_type));
    crate::broker::declare_bounded(connection, &dead, arguments, broker.dead_letter_limit).await
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
