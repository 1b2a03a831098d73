//! Publishing with publisher confirms: inbox copies to the topic exchange, refused input to the
//! dead-letter queue, held messages (signed) to the held queue. Publishes are queued without
//! waiting; writes and confirms are awaited later.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use thiserror::Error;

use super::held_entry::{self, HeldKey};
use crate::chat21::{HeldMessage, InboxCopy, Payload};
use crate::telemetry;

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

/// A confirm-mode channel that publishes what the pipeline produced; a clone shares the channel
/// (and keeps it open).
#[derive(Clone)]
pub struct InboxPublisher {
    channel: Channel,
    exchange: ShortString,
    dead_letter_queue: ShortString,
    held_queue: ShortString,
    /// Signs held entries; `None`: held messages are dead-lettered (see [`InboxPublisher::hold`]).
    held_key: Option<HeldKey>,
}

impl InboxPublisher {
    /// The channel it publishes on.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

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
            held_key: None,
        })
    }

    /// Signs held entries with `key` from now on.
    #[must_use]
    pub fn signing_held_with(mut self, key: Option<HeldKey>) -> Self {
        self.held_key = key;
        self
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
        let properties = json_properties();
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

    /// Parks a held message in the held queue, signed (see [`held_entry`]). Without a
    /// key (`[held] secret` unset) it could never be released, so it is dead-lettered instead
    /// (reason `held-unsigned`, with the held headers and the original routing key).
    ///
    /// # Errors
    /// The lapin error when the channel is no longer usable.
    pub fn hold(&self, held: &HeldMessage) -> Result<Queued, lapin::Error> {
        let m = &held.message;
        let Some(key) = &self.held_key else {
            telemetry::hold_unsigned(HELD_UNSIGNED, &held.plugin, &m.message_id);
            let (payload, headers) = held_entry::unsigned(held);
            let properties = json_properties().with_headers(headers);
            let key = format!("apps.{}.outgoing.users.{}.messages.{}.outgoing", m.app, m.sender, m.recipient);
            let error = format!("plugin {} held it, but held.secret is not set: it could not be released", held.plugin);
            return self.dead_letter(&key, &properties, &payload, HELD_UNSIGNED, &error);
        };
        let (payload, headers) = held_entry::encode(held, key);
        let properties = json_properties().with_message_id(m.message_id.as_str().into()).with_headers(headers);
        self.to_queue(self.held_queue.clone(), payload, properties)
    }
}

/// `x-inboxd-reason` of a message a plugin held on a daemon without `[held] secret`.
pub const HELD_UNSIGNED: &str = "held-unsigned";

/// Persistent JSON.
fn json_properties() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(PERSISTENT).with_content_type("application/json".into())
}

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
