//! The API's own way into the broker, as chat21-http-server's `Chat21Api.publish`: one AMQP
//! connection (opened on first use, again after it fails) with a confirm-mode channel; a request
//! is answered only once the broker confirmed every publish it made.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::broker::{BrokerConfig, Failover, InboxPublisher, confirmed, short_string};
use crate::chat21::Payload;

/// Publishes JSON to the topic exchange with publisher confirms; a clone shares the connection.
#[derive(Clone)]
pub struct Outbound {
    inner: Arc<Inner>,
}

struct Inner {
    broker: BrokerConfig,
    /// The open connection and its channel; `None` until first use and after a failure.
    open: Mutex<Option<(Connection, InboxPublisher)>>,
    failover: Mutex<Failover>,
}

impl Outbound {
    /// Connects lazily to the nodes of `broker` (its exchange is where it publishes).
    pub fn new(broker: &BrokerConfig) -> Outbound {
        let failover = Mutex::new(Failover::new(&broker.urls));
        Outbound { inner: Arc::new(Inner { broker: broker.clone(), open: Mutex::new(None), failover }) }
    }

    /// Publishes each `(routing key, body)` in order and waits until the broker confirmed all.
    ///
    /// # Errors
    /// When no node takes the connection, a key is too long, or a publish is not confirmed;
    /// the connection is then opened afresh for the next request.
    pub async fn publish(&self, messages: &[(String, Value)]) -> anyhow::Result<()> {
        let publisher = self.publisher().await?;
        let result = async {
            let mut queued = Vec::with_capacity(messages.len());
            for (key, body) in messages {
                let key = short_string("routing key", key)?;
                queued.push(publisher.publish_to(key, &Payload::new(body.clone())).context("publishing")?);
            }
            confirmed(queued).await.context("waiting for the broker's confirms")
        }
        .await;
        if result.is_err() {
            self.inner.open.lock().await.take();
        }
        result
    }

    /// Like [`Outbound::publish`], then waits at most `wait` for the first message published to
    /// `watched` (a binding key on the exchange, bound before the publish) and returns it.
    ///
    /// # Errors
    /// As [`Outbound::publish`], or when the watching queue cannot be set up.
    pub async fn publish_and_receive(
        &self,
        messages: &[(String, Value)],
        watched: &str,
        wait: Duration,
    ) -> anyhow::Result<Option<Value>> {
        let channel = self.channel().await?;
        let exclusive = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare("".into(), exclusive, FieldTable::default()).await?;
        let exchange = self.inner.broker.exchange.as_str();
        let key = short_string("binding key", watched)?;
        channel
            .queue_bind(queue.name().clone(), exchange.into(), key, QueueBindOptions::default(), FieldTable::default())
            .await?;
        let no_ack = BasicConsumeOptions { no_ack: true, ..BasicConsumeOptions::default() };
        let mut consumer =
            channel.basic_consume(queue.name().clone(), "".into(), no_ack, FieldTable::default()).await?;
        let received = async {
            self.publish(messages).await?;
            let Ok(next) = tokio::time::timeout(wait, consumer.next()).await else { return Ok(None) };
            let delivery = next.context("the watching consumer ended")??;
            Ok(serde_json::from_slice(&delivery.data).ok())
        }
        .await;
        let _ = channel.close(200, "done".into()).await;
        received
    }

    /// A channel of its own on the open connection (connecting first if there is none).
    async fn channel(&self) -> anyhow::Result<Channel> {
        self.publisher().await?;
        let open = self.inner.open.lock().await;
        let (connection, _) = open.as_ref().context("the API's broker connection closed")?;
        Ok(connection.create_channel().await?)
    }

    /// The open channel, connecting first if there is none.
    async fn publisher(&self) -> anyhow::Result<InboxPublisher> {
        let mut open = self.inner.open.lock().await;
        if let Some((connection, publisher)) = open.as_ref()
            && connection.status().connected()
        {
            return Ok(publisher.clone());
        }
        let name = format!("inboxd {} API (pid {})", self.inner.broker.queue, std::process::id());
        let connection = self.inner.failover.lock().await.connect(&name).await.context("connecting to the broker")?;
        let broker = &self.inner.broker;
        let publisher =
            InboxPublisher::open(&connection, &broker.exchange, &broker.dead_letter_queue(), &broker.held_queue())
                .await
                .context("opening the API's publishing channel")?;
        *open = Some((connection, publisher.clone()));
        Ok(publisher)
    }
}
