//! The observer's side of a test, over AMQP: confirmed publishes (as inboxd publishes inbox
//! copies), queue inspection, and taps (queues bound to `amq.topic`) that show what reached it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    message::Delivery,
    options::{
        BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;

use crate::{broker::PrivateNode, eventually, unique_id};

/// The exchange chat21 traffic flows through (MQTT `/` is its routing-key `.`).
pub const TOPIC_EXCHANGE: &str = "amq.topic";

/// AMQP `delivery_mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// The observer's AMQP connection, with one channel in publisher-confirm mode.
pub struct Observer {
    connection: Connection,
    channel: Channel,
}

impl Observer {
    /// Logs in to `node` as the observer.
    pub async fn connect(node: &PrivateNode) -> Result<Observer> {
        let connection = Connection::connect(&node.amqp_url(), ConnectionProperties::default())
            .await
            .with_context(|| format!("AMQP login as the observer on {}", node.node_name()))?;
        let channel = connection.create_channel().await.context("opening an AMQP channel")?;
        channel.confirm_select(ConfirmSelectOptions::default()).await.context("enabling publisher confirms")?;
        Ok(Observer { connection, channel })
    }

    /// The channel (confirm mode), for what the helpers do not cover.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes `body` persistently to `amq.topic` and waits for the broker's confirm.
    pub async fn publish_json(&self, routing_key: &str, body: &Value) -> Result<()> {
        let payload = serde_json::to_vec(body).context("serialising the message")?;
        self.publish_raw(TOPIC_EXCHANGE, routing_key, &payload).await
    }

    /// Publishes `payload` persistently to `exchange` (`""`: straight into the queue named
    /// `routing_key`) and waits for the broker's confirm.
    pub async fn publish_raw(&self, exchange: &str, routing_key: &str, payload: &[u8]) -> Result<()> {
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(PERSISTENT),
            )
            .await
            .with_context(|| format!("publishing to {exchange:?} with {routing_key}"))?
            .await
            .with_context(|| format!("waiting for the confirm of {routing_key}"))?;
        match confirmation {
            Confirmation::Ack(_) => Ok(()),
            other => bail!("publish to {routing_key} not confirmed: {other:?}"),
        }
    }

    /// The number of ready messages in `queue`.
    ///
    /// # Errors
    ///
    /// When the queue does not exist.
    pub async fn queue_len(&self, queue: &str) -> Result<u32> {
        // A passive declare of a missing queue closes its channel: use a throwaway one.
        let channel = self.connection.create_channel().await.context("opening an AMQP channel")?;
        let declared = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("queue {queue} does not exist"))?;
        channel.close(200, "done".into()).await.context("closing the AMQP channel")?;
        Ok(declared.message_count())
    }

    /// Takes (and acks) the next message of `queue`, waiting up to `within` for one to arrive.
    pub async fn get_within(&self, queue: &str, within: Duration) -> Result<Option<Message>> {
        /// The queue was empty at every `basic.get`.
        #[derive(Debug, thiserror::Error)]
        #[error("the queue is empty")]
        struct Empty;
        let got = eventually(within, format!("a message in {queue}"), async || {
            let got = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .with_context(|| format!("basic.get from {queue}"))?;
            Ok(Message::from(got.ok_or(Empty)?.delivery))
        })
        .await;
        match got {
            Ok(message) => Ok(Some(message)),
            Err(error) if error.is::<Empty>() => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// A message taken from a queue.
#[derive(Debug)]
pub struct Message {
    pub routing_key: String,
    pub payload: Vec<u8>,
    /// Header values as text (numbers and other types in their debug form).
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// The payload as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.payload).with_context(|| format!("payload on {} is not JSON", self.routing_key))
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).cloned()
    }
}

impl From<Delivery> for Message {
    fn from(delivery: Delivery) -> Self {
        let headers = delivery
            .properties
            .headers()
            .iter()
            .flat_map(|table| table.inner())
            .map(|(name, value)| {
                let value = match value {
                    AMQPValue::LongString(text) => String::from_utf8_lossy(text.as_bytes()).into_owned(),
                    AMQPValue::ShortString(text) => text.as_str().to_owned(),
                    other => format!("{other:?}"),
                };
                (name.as_str().to_owned(), value)
            })
            .collect();
        Message { routing_key: delivery.routing_key.as_str().to_owned(), payload: delivery.data, headers }
    }
}

/// An exclusive, auto-delete queue with a random name, bound to `amq.topic`, consumed without
/// acks on its own connection; it disappears with the `Tap`.
pub struct Tap {
    /// Kept so the consumer stays alive; dropping it deletes the queue.
    _connection: Connection,
    queue: String,
    consumer: Consumer,
}

impl Tap {
    /// Declares the queue and binds it with each of `binding_keys` (AMQP topic patterns, e.g.
    /// `apps.app1.outgoing.users.*.messages.*.outgoing`).
    pub async fn bind(node: &PrivateNode, binding_keys: &[&str]) -> Result<Tap> {
        let connection = Connection::connect(&node.amqp_url(), ConnectionProperties::default())
            .await
            .with_context(|| format!("AMQP login as the observer on {}", node.node_name()))?;
        let channel = connection.create_channel().await.context("opening an AMQP channel")?;
        let queue = unique_id("inboxd-e2e-tap");
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("declaring queue {queue}"))?;
        for key in binding_keys {
            channel
                .queue_bind(
                    queue.as_str().into(),
                    TOPIC_EXCHANGE.into(),
                    (*key).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("binding {queue} to {TOPIC_EXCHANGE} with {key}"))?;
        }
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "inboxd-e2e-tap".into(),
                BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming {queue}"))?;
        Ok(Tap { _connection: connection, queue, consumer })
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The next message, or `None` if none arrived `within`.
    ///
    /// # Errors
    ///
    /// When the consumer failed or was cancelled (connection or channel closed).
    pub async fn recv(&mut self, within: Duration) -> Result<Option<Message>> {
        let Ok(next) = tokio::time::timeout(within, self.consumer.next()).await else {
            return Ok(None);
        };
        let delivery = next
            .with_context(|| format!("the consumer of {} was cancelled", self.queue))?
            .with_context(|| format!("consuming {}", self.queue))?;
        Ok(Some(Message::from(delivery)))
    }
}
