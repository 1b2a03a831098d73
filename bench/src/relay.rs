//! The baseline observer: the least a chat21 observer must do per message — consume with manual
//! ack, publish the sender's and the recipient's copy with confirms, ack. No parsing beyond the key.

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

/// The queue the relay consumes for `app`.
pub fn queue(app: &str) -> String {
    format!("inboxd-bench-relay.{app}")
}

/// Relays direct messages of `app` until the process is killed.
///
/// # Errors
/// When the broker connection fails or a routing key is not a chat21 message key.
pub async fn run(url: &str, app: &str, prefetch: u16) -> Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await.context("connecting")?;
    let consuming = connection.create_channel().await?;
    let queue = queue(app);
    let durable = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    consuming.queue_declare(queue.as_str().into(), durable, FieldTable::default()).await?;
    let key = format!("apps.{app}.outgoing.users.*.messages.*.outgoing");
    consuming
        .queue_bind(
            queue.as_str().into(),
            "amq.topic".into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    consuming.basic_qos(prefetch, BasicQosOptions::default()).await?;
    let publishing = connection.create_channel().await?;
    publishing.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut consumer = consuming
        .basic_consume(queue.as_str().into(), "relay".into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    let persistent = BasicProperties::default().with_delivery_mode(2);
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.context("consuming")?;
        // apps.<app>.outgoing.users.<sender>.messages.<recipient>.outgoing
        let parts: Vec<&str> = delivery.routing_key.as_str().split('.').collect();
        let [_, _, _, _, sender, _, recipient, _] = parts[..] else {
            bail!("not a message key: {}", delivery.routing_key);
        };
        let keys = [
            format!("apps.{app}.users.{sender}.messages.{recipient}.clientadded"),
            format!("apps.{app}.users.{recipient}.messages.{sender}.clientadded"),
        ];
        let mut confirms = Vec::with_capacity(keys.len());
        for key in &keys {
            let confirm = publishing
                .basic_publish(
                    "amq.topic".into(),
                    key.as_str().into(),
                    BasicPublishOptions::default(),
                    &delivery.data,
                    persistent.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        let acker = delivery.acker;
        tokio::spawn(async move {
            let mut confirmed = true;
            for confirm in confirms {
                confirmed &= matches!(confirm.await, Ok(c) if c.is_ack());
            }
            let _ = if confirmed {
                acker.ack(BasicAckOptions::default()).await
            } else {
                acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
            };
        });
    }
    bail!("the broker cancelled the consumer")
}
