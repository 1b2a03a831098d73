//! The moderator's side of held messages: list, release (deliver as if accepted) and discard
//! entries of the durable `<queue>.held` queue, with the observer's own broker credentials.
//!
//! Release is done here, not by the daemon: this command takes the parked message, runs the
//! current chain's `on_deliver` for each inbox, publishes the copies with confirms and only
//! then acks the held entry. No "released" message ever travels through the consumed queue,
//! so there is nothing an MQTT user could forge; the held queue itself is bound to no
//! exchange and only the default exchange (write permission on the queue: the observer's)
//! reaches it.

use std::sync::Arc;

use anyhow::{Context, bail};
use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use serde_json::{Map, Value};

use crate::broker::{self, HELD_HEADERS, InboxPublisher, confirmed};
use crate::chat21::Message;
use crate::config::Config;
use crate::pipeline::Router;
use crate::policy::{ChainBuilder, PolicyHandle};
use crate::store::{GroupDirectory, Store, records};
use crate::webhook::Webhooks;

/// Most entries one command looks at; the rest of a longer queue is left alone.
pub const MAX_SCANNED: usize = 10_000;

/// One held message, as a moderator sees it.
#[derive(Debug, Clone)]
pub struct HeldEntry {
    pub message_id: String,
    pub plugin: String,
    pub reason: String,
    pub sender: String,
    pub recipient: String,
    pub received_at_ms: i64,
    /// The normalised message body.
    pub body: Map<String, Value>,
    app: String,
}

/// Which held entries a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    One(String),
    All,
}

impl Selection {
    fn matches(&self, entry: &HeldEntry) -> bool {
        match self {
            Selection::One(id) => &entry.message_id == id,
            Selection::All => true,
        }
    }
}

/// The held entries, oldest first; they stay in the queue.
///
/// # Errors
/// When the broker is unreachable or the held queue does not exist.
pub async fn list(config: &Config) -> anyhow::Result<Vec<HeldEntry>> {
    let (connection, channel) = open(config).await?;
    let entries = scan(config, &channel).await?.into_iter().map(|(entry, _)| entry).collect();
    close(connection).await;
    Ok(entries)
}

/// Deletes the selected entries; returns how many.
///
/// # Errors
/// When the broker is unreachable or the held queue does not exist.
pub async fn discard(config: &Config, selection: &Selection) -> anyhow::Result<usize> {
    let (connection, channel) = open(config).await?;
    let mut done = 0;
    for (entry, got) in scan(config, &channel).await? {
        if selection.matches(&entry) {
            got.delivery.acker.ack(BasicAckOptions::default()).await.context("acking a discarded entry")?;
            tracing::info!(message_id = %entry.message_id, plugin = %entry.plugin, "held message discarded");
            done += 1;
        }
    }
    close(connection).await;
    Ok(done)
}

/// Delivers the selected entries as if every plugin had accepted them in `on_message`
/// (`on_deliver` of the configured chain still applies per inbox); returns how many.
///
/// # Errors
/// When the broker is unreachable, the chain does not load, or a publish is not confirmed
/// (that entry then stays held).
pub async fn release(config: &Config, selection: &Selection) -> anyhow::Result<usize> {
    let builder = ChainBuilder::new(1);
    let plugins = config.plugins.clone();
    let chain = tokio::task::spawn_blocking(move || builder.build(&plugins)).await.context("loading the chain")??;
    let mut router = Router::new(&config.app_id, PolicyHandle::new(Arc::new(chain))).with_rules(config.routing.clone());
    // With a store, a released message reaches stored groups and lands in history like any other.
    let store = Store::open_existing(&config.store).await.context("opening the store")?;
    if let Some(store) = &store {
        let groups = GroupDirectory::load(store, &config.app_id).await.context("loading the stored groups")?;
        router = router.with_groups(Arc::new(groups));
    }
    let webhooks = Webhooks::new(&config.webhook, &config.app_id);
    let router = Arc::new(router);
    let (connection, channel) = open(config).await?;
    let broker = &config.broker;
    let publisher =
        InboxPublisher::open(&connection, &broker.exchange, &broker.dead_letter_queue(), &broker.held_queue())
            .await
            .context("opening a publishing channel")?;
    let mut done = 0;
    for (entry, got) in scan(config, &channel).await? {
        if !selection.matches(&entry) {
            continue;
        }
        let message = Message {
            app: entry.app.clone(),
            sender: entry.sender.clone(),
            recipient: entry.recipient.clone(),
            message_id: entry.message_id.clone(),
            body: entry.body.clone(),
            received_at_ms: entry.received_at_ms,
        };
        let planner = Arc::clone(&router);
        let plan = tokio::task::spawn_blocking(move || planner.plan_release(planner.policy().as_ref(), message))
            .await
            .context("the policy chain panicked")?
            .with_context(|| format!("planning the release of {}", entry.message_id))?;
        let mut pending = Vec::with_capacity(plan.copies.len());
        for copy in &plan.copies {
            pending.push(publisher.publish(copy).context("publishing an inbox copy")?);
        }
        confirmed(pending).await.with_context(|| format!("releasing {}", entry.message_id))?;
        if let Some(store) = &store {
            let mut writes = records::writes_for(&plan);
            writes.extend(webhooks.iter().flat_map(|w| w.writes_for(&plan, records::now_ms())));
            store
                .apply(&config.app_id, writes.into())
                .await
                .with_context(|| format!("storing {}", entry.message_id))?;
        }
        got.delivery.acker.ack(BasicAckOptions::default()).await.context("acking a released entry")?;
        tracing::info!(message_id = %entry.message_id, copies = plan.copies.len(), "held message released");
        done += 1;
    }
    close(connection).await;
    if let Some(store) = store {
        store.close().await;
    }
    Ok(done)
}

async fn open(config: &Config) -> anyhow::Result<(Connection, Channel)> {
    let name = format!("inboxd held (pid {})", std::process::id());
    let connection =
        broker::Failover::new(&config.broker.urls).connect(&name).await.context("connecting to the broker")?;
    let channel = connection.create_channel().await.context("opening a channel")?;
    Ok((connection, channel))
}

/// Closing the connection hands every entry that was fetched but not acked back to the queue.
async fn close(connection: Connection) {
    if let Err(err) = connection.close(200, "inboxd held done".into()).await {
        tracing::debug!(error = %err, "closing the connection");
    }
}

/// Fetches up to [`MAX_SCANNED`] entries without acking them.
async fn scan(config: &Config, channel: &Channel) -> anyhow::Result<Vec<(HeldEntry, BasicGetMessage)>> {
    let queue = config.broker.held_queue();
    let passive = QueueDeclareOptions { passive: true, durable: true, ..QueueDeclareOptions::default() };
    let declared = channel
        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
        .await
        .with_context(|| format!("the held queue {queue} does not exist (has the daemon run?)"))?;
    let count = (declared.message_count() as usize).min(MAX_SCANNED);
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("reading {queue}"))?;
        let Some(got) = got else { break };
        let entry = parse(&got).with_context(|| format!("entry {} of {queue}", entries.len() + 1))?;
        entries.push((entry, got));
    }
    Ok(entries)
}

fn parse(got: &BasicGetMessage) -> anyhow::Result<HeldEntry> {
    let empty = FieldTable::default();
    let headers = got.delivery.properties.headers().as_ref().unwrap_or(&empty);
    let text = |name: &str| match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Ok(s.as_str().to_owned()),
        _ => bail!("header {name} is missing"),
    };
    let received_at_ms = match headers.inner().get(HELD_HEADERS[6]) {
        Some(AMQPValue::LongLongInt(ms)) => *ms,
        _ => 0,
    };
    let body = match serde_json::from_slice(&got.delivery.data).context("the body is not JSON")? {
        Value::Object(body) => body,
        _ => bail!("the body is not a JSON object"),
    };
    Ok(HeldEntry {
        plugin: text(HELD_HEADERS[0])?,
        reason: text(HELD_HEADERS[1])?,
        app: text(HELD_HEADERS[2])?,
        sender: text(HELD_HEADERS[3])?,
        recipient: text(HELD_HEADERS[4])?,
        message_id: text(HELD_HEADERS[5])?,
        received_at_ms,
        body,
    })
}
