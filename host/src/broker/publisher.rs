//! Publishing with publisher confirms: inbox copies to the topic exchange and refused input
//! to the dead-letter queue. Publishes are queued without waiting; writes and confirms are awaited later.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use thiserror::Error;

use crate::chat21::{InboxCopy, Payload};
use crate::pipeline::HeldMessage;

/// AMQP delivery mode 2: written to disk by the broker, so a restart keeps it.
const PERSISTENT: u8 = 2;

/// Why a publish was not confirmed; the consumed delivery must then not be acked.
#[derive(Debug, Error)]
pub enum ConfirmError {
    #[error("broker nacked the publish")]
    Nacked,
    #[error("broker returned the publish as unroutable: {0}")]
    Returned(String),
    #[error("publisher confirms are not enabled on the channel")]
    NotRequested,
    #[error("confirm lost: {0}")]
    Lost(#[from] lapin::Error),
}

/// A value too long for an AMQP short string (routing keys, queue names, message ids).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("{what} is {bytes} bytes, over AMQP's limit of 255")]
pub struct TooLong {
    pub what: &'static str,
    pub bytes: usize,
}

/// `value` as an AMQP short string, refused if it is too long: lapin's `From` conversions
/// panic there, so whatever comes from input goes through this instead.
///
/// # Errors
/// [`TooLong`] above 255 bytes, naming the value as `what`.
pub fn short_string(what: &'static str, value: &str) -> Result<ShortString, TooLong> {
    ShortString::try_new(value).map_err(|_| TooLong { what, bytes: value.len() })
}

/// Why a publish could not be queued.
#[derive(Debug, Error)]
pub enum PublishError {
    /// The routing key cannot be sent; the input that led to it must be refused.
    #[error(transparent)]
    TooLong(#[from] TooLong),
    /// The channel is no longer usable.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
}

/// A publish whose frames are queued on the channel, in call order. lapin's connection thread
/// writes them; [`confirmed`] awaits the write and then the broker's confirm.
pub struct Queued(Pin<Box<dyn Future<Output = Result<PublisherConfirm, lapin::Error>> + Send>>);

impl Queued {
    /// Polls `publish` once, which hands its frames to the channel, and keeps the rest for later.
    /// The caller never waits for the connection thread, so a worker is not woken per write.
    fn start(
        publish: impl Future<Output = Result<PublisherConfirm, lapin::Error>> + Send + 'static,
    ) -> Result<Queued, lapin::Error> {
        let mut publish = Box::pin(publish);
        // No waker of ours: whoever awaits the `Queued` later registers theirs.
        match publish.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Err(err)) => Err(err),
            Poll::Ready(Ok(confirm)) => Ok(Queued(Box::pin(std::future::ready(Ok(confirm))))),
            Poll::Pending => Ok(Queued(publish)),
        }
    }
}

/// A confirm-mode channel that publishes what the pipeline produced.
pub struct InboxPublisher {
    channel: Channel,
    exchange: ShortString,
    dead_letter_queue: ShortString,
    held_queue: ShortString,
}

impl InboxPublisher {
    /// Opens a channel in confirm mode.
    ///
    /// # Errors
    /// The lapin error when the channel cannot be opened.
    pub async fn open(
        connection: &Connection,
        exchange: &str,
        dead_letter_queue: &str,
        held_queue: &str,
    ) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(InboxPublisher {
            channel,
            exchange: exchange.into(),
            dead_letter_queue: dead_letter_queue.into(),
            held_queue: held_queue.into(),
        })
    }

    /// A handle that keeps the channel open: lapin closes a channel when its last handle is
    /// dropped, which loses the confirms still pending. Each settle task holds one until its
    /// confirms are in, so a worker that ends (shutdown drain) does not close the channel early.
    pub fn hold_open(&self) -> Channel {
        self.channel.clone()
    }

    /// Publishes one inbox copy (persistent JSON) and returns its pending confirm.
    ///
    /// Not mandatory: a user with no live or persistent MQTT session has no queue bound,
    /// and chat21 drops such copies by design.
    ///
    /// # Errors
    /// [`PublishError::TooLong`] for a routing key AMQP cannot carry (nothing is published),
    /// [`PublishError::Broker`] when the channel is no longer usable.
    pub fn publish(&self, copy: &InboxCopy) -> Result<Queued, PublishError> {
        let key = short_string("routing key", &copy.routing_key)?;
        Ok(self.publish_to(key, &copy.body)?)
    }

    /// Publishes `body` (persistent JSON, its shared bytes) with routing key `key`.
    ///
    /// # Errors
    /// The lapin error when the channel is no longer usable.
    pub fn publish_to(&self, key: ShortString, body: &Payload) -> Result<Queued, lapin::Error> {
        let payload = body.bytes();
        let properties =
            BasicProperties::default().with_delivery_mode(PERSISTENT).with_content_type("application/json".into());
        let (channel, exchange) = (self.channel.clone(), self.exchange.clone());
        Queued::start(async move {
            channel.basic_publish(exchange, key, BasicPublishOptions::default(), &payload, properties).await
        })
    }

    /// Parks a refused delivery in the dead-letter queue, unchanged, with the reason in headers
    /// (`x-inboxd-reason` code, `x-inboxd-error` text, `x-inboxd-routing-key` original key).
    ///
    /// # Errors
    /// The lapin error when the channel is no longer usable.
    pub fn dead_letter(
        &self,
        routing_key: &str,
        properties: &BasicProperties,
        payload: &[u8],
        code: &str,
        error: &str,
    ) -> Result<Queued, lapin::Error> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert("x-inboxd-reason".into(), AMQPValue::LongString(code.into()));
        headers.insert("x-inboxd-error".into(), AMQPValue::LongString(error.into()));
        headers.insert("x-inboxd-routing-key".into(), AMQPValue::LongString(routing_key.into()));
        let properties = properties.clone().with_delivery_mode(PERSISTENT).with_headers(headers);
        self.to_queue(self.dead_letter_queue.clone(), payload.to_vec(), properties)
    }

    /// Publishes to `queue` through the default exchange, mandatory (the queue must exist).
    fn to_queue(
        &self,
        queue: ShortString,
        payload: Vec<u8>,
        properties: BasicProperties,
    ) -> Result<Queued, lapin::Error> {
        let channel = self.channel.clone();
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        Queued::start(async move { channel.basic_publish("".into(), queue, options, &payload, properties).await })
    }

    /// Parks a held message in the held queue: the normalised body, with headers naming the
    /// plugin and reason and the protected fields (see [`HELD_HEADERS`]).
    ///
    /// # Errors
    /// The lapin error when the channel is no longer usable.
    pub fn hold(&self, held: &HeldMessage) -> Result<Queued, lapin::Error> {
        let payload = serde_json::to_vec(&held.message.body).expect("serialising a JSON map cannot fail");
        let m = &held.message;
        let mut headers = lapin::types::FieldTable::default();
        for (name, value) in [
            (HELD_HEADERS[0], &held.plugin),
            (HELD_HEADERS[1], &held.reason),
            (HELD_HEADERS[2], &m.app),
            (HELD_HEADERS[3], &m.sender),
            (HELD_HEADERS[4], &m.recipient),
            (HELD_HEADERS[5], &m.message_id),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
        }
        headers.insert(HELD_HEADERS[6].into(), AMQPValue::LongLongInt(m.received_at_ms));
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(m.message_id.as_str().into())
            .with_headers(headers);
        self.to_queue(self.held_queue.clone(), payload, properties)
    }
}

/// Headers of a held message: plugin, reason, app, sender, recipient, message id, received-at (ms).
pub const HELD_HEADERS: [&str; 7] = [
    "x-inboxd-plugin",
    "x-inboxd-reason",
    "x-inboxd-app",
    "x-inboxd-sender",
    "x-inboxd-recipient",
    "x-inboxd-message-id",
    "x-inboxd-received-at",
];

/// Waits for every write and confirm; fails on the first nack or return.
///
/// # Errors
/// A [`ConfirmError`] saying why the publishes cannot be counted as delivered.
pub async fn confirmed(pending: Vec<Queued>) -> Result<(), ConfirmError> {
    for Queued(publish) in pending {
        match publish.await?.await? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(returned)) => return Err(ConfirmError::Returned(returned.reply_text.to_string())),
            Confirmation::Nack(_) => return Err(ConfirmError::Nacked),
            Confirmation::NotRequested => return Err(ConfirmError::NotRequested),
        }
    }
    Ok(())
}
