//! The moderator's side of held messages: list, release (deliver as if accepted) and discard
//! entries of the durable `<queue>.held` queue, streamed with the observer's own credentials.
//!
//! Release is done here, not by the daemon: this command takes each parked entry, checks its
//! signature ([`entry`], the broker's held-entry codec: HMAC under `[held] secret`) and ids,
//! runs the current chain's `on_deliver` for each inbox, completes it as the daemon completes a
//! delivery ([`Completion`]: copies published with confirms, history and webhook events
//! stored) and only then acks the entry. The held queue is bound to no exchange, but anyone
//! with write access to the default exchange (`amq.default`) can put an entry in it; what is
//! not signed by inboxd is refused and left in place, and never blocks the release of the
//! genuine entries around it.
//!
//! Entries are taken one at a time with `basic.get` and never collected: an entry that is not
//! acked stays with the broker (unacked) until the command's connection closes, which returns
//! it to the queue in its place. Memory is bounded by [`RELEASE_BATCH`] whatever the length.

mod config;

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use lapin::message::BasicGetMessage;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Connection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::broker::held_entry as entry;
pub use config::{HeldConfig, RawHeld, validate};
pub use entry::{EntryError, HeldEntry, HeldKey};

use crate::broker::BrokerConfig;
use crate::broker::{self, InboxPublisher, Scan};
use crate::pipeline::{Completion, Incomplete, Recorder};
use crate::plugin::PluginsConfig;
use crate::plugin::{ChainBuilder, Compiler};
use crate::policy::PolicyHandle;
use crate::routing::RoutingConfig;
use crate::routing::{Outcome, Routed, Router};
use crate::store::StoreConfig;
use crate::store::{GroupDirectory, Store, StoreWriter};
use crate::webhook::WebhookConfig;
use crate::webhook::Webhooks;

/// Entries a release plans, publishes and confirms together before acking them; bounds the
/// memory of one command and the copies in flight.
pub const RELEASE_BATCH: usize = 64;

/// Which held entries a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    One(String),
    /// The entries with these message ids (the console's "release selected").
    Ids(std::collections::BTreeSet<String>),
    All,
}

impl Selection {
    fn matches(&self, message_id: Option<&str>) -> bool {
        match self {
            Selection::One(id) => message_id == Some(id.as_str()),
            Selection::Ids(ids) => message_id.is_some_and(|id| ids.contains(id)),
            Selection::All => true,
        }
    }
}

/// One entry as `inboxd held list` shows it.
#[derive(Debug)]
pub struct Listed {
    /// 1 for the entry at the head of the queue.
    pub position: usize,
    /// What the entry claims (unchecked), or why it cannot even be read.
    pub entry: Result<HeldEntry, EntryError>,
    /// Whether `inboxd held release` would deliver it.
    pub check: Check,
}

/// The verdict of [`entry::verify`] on a listed entry.
#[derive(Debug)]
pub enum Check {
    Valid,
    Refused(EntryError),
    /// `[held] secret` is not configured here: nothing can be verified (or released).
    NoKey,
}

/// An entry a release refused; it stays in the held queue (`inboxd held discard` removes it).
#[derive(Debug)]
pub struct Refused {
    pub position: usize,
    /// The id the entry claims, if it has one.
    pub message_id: Option<String>,
    pub error: anyhow::Error,
}

/// What a release did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub released: usize,
    pub refused: usize,
}

/// What `inboxd held` needs of the daemon's configuration (the root config lends it).
pub struct Setup<'a> {
    pub app_id: &'a str,
    pub broker: &'a BrokerConfig,
    /// Verifies entries; without it entries are listed unchecked and none is released.
    pub key: Option<HeldKey>,
    /// The chain whose `on_deliver` still applies to released messages.
    pub plugins: &'a PluginsConfig,
    pub routing: &'a RoutingConfig,
    pub store: &'a StoreConfig,
    pub webhook: &'a WebhookConfig,
}

/// Calls `each` with every held entry, oldest first; they stay in the queue. Returns how many.
///
/// # Errors
/// When the broker is unreachable or the held queue does not exist.
pub async fn list(config: &Setup<'_>, mut each: impl FnMut(Listed)) -> anyhow::Result<usize> {
    let (connection, channel) = open(config).await?;
    let mut scan = held_queue(config, &channel).await?;
    while let Some(got) = scan.next().await? {
        let (headers, payload) = (got.delivery.properties.headers().as_ref(), &got.delivery.data);
        let check = match &config.key {
            None => Check::NoKey,
            Some(key) => {
                entry::verify(headers, payload, key, config.app_id).map_or_else(Check::Refused, |_| Check::Valid)
            }
        };
        each(Listed { position: scan.position, entry: entry::read(headers, payload), check });
    }
    broker::close_reader(connection).await;
    Ok(scan.position)
}

/// Deletes the selected entries, signed or not; returns how many.
///
/// # Errors
/// When the broker is unreachable or the held queue does not exist.
pub async fn discard(config: &Setup<'_>, selection: &Selection) -> anyhow::Result<usize> {
    let (connection, channel) = open(config).await?;
    let mut scan = held_queue(config, &channel).await?;
    let mut done = 0;
    while let Some(got) = scan.next().await? {
        let message_id = entry::claimed_id(got.delivery.properties.headers().as_ref());
        if selection.matches(message_id.as_deref()) {
            got.delivery.acker.ack(BasicAckOptions::default()).await.context("acking a discarded entry")?;
            tracing::info!(message_id = message_id.as_deref().unwrap_or("?"), "held message discarded");
            done += 1;
        }
    }
    broker::close_reader(connection).await;
    Ok(done)
}

/// Delivers the selected entries that are signed with `[held] secret` and name valid ids of
/// this app, as if every plugin had accepted them in `on_message` (`on_deliver` of the
/// configured chain still applies per inbox). Every other selected entry is handed to
/// `refused` and left in the queue. The store's writes go through the daemon's batching writer:
/// a database that fails for a moment is retried with backoff, one that refuses the writes
/// fails the batch.
///
/// # Errors
/// When `[held] secret` is not set, the broker is unreachable, the chain or the store does
/// not load, or a publish is not confirmed or a write not stored (the entries of that batch
/// then stay held).
pub async fn release(
    config: &Setup<'_>,
    selection: &Selection,
    mut refused: impl FnMut(Refused),
) -> anyhow::Result<Released> {
    let key = config.key.clone().ok_or_else(|| {
        anyhow!("held.secret (INBOXD_HELD_SECRET) is not set: held entries cannot be verified, so none is released")
    })?;
    let builder = ChainBuilder::new(1, Compiler::InProcess);
    let plugins = config.plugins.clone();
    let chain = tokio::task::spawn_blocking(move || builder.build(&plugins)).await.context("loading the chain")??;
    let mut router = Router::new(config.app_id, PolicyHandle::new(Arc::new(chain))).with_rules(config.routing.clone());
    // With a store, a released message reaches stored groups and lands in history like any other.
    let store = Store::open_existing(&config.store.url).await.context("opening the store")?;
    if let Some(store) = &store {
        let groups = GroupDirectory::load(store, config.app_id).await.context("loading the stored groups")?;
        router = router.with_groups(Arc::new(groups));
    }
    let stop = CancellationToken::new();
    let (recorder, writing) = match &store {
        Some(store) => {
            let app = config.app_id.to_owned();
            let (writer, task) = StoreWriter::spawn(store.clone(), app, Arc::new(Notify::new()), stop.clone());
            let webhooks = Webhooks::new(config.webhook, config.app_id).map(Arc::new);
            (Some(Recorder::new(writer, webhooks)), Some(task))
        }
        None => (None, None),
    };
    let (connection, channel) = open(config).await?;
    let broker = config.broker;
    let publisher =
        InboxPublisher::open(&connection, &broker.exchange, &broker.dead_letter_queue(), &broker.held_queue())
            .await
            .context("opening a publishing channel")?;
    let releaser = Releaser { router: Arc::new(router), completion: Completion::new(publisher, recorder) };
    let mut scan = held_queue(config, &channel).await?;
    let mut counts = Released::default();
    let mut batch = Vec::with_capacity(RELEASE_BATCH);
    while let Some(got) = scan.next().await? {
        let message_id = entry::claimed_id(got.delivery.properties.headers().as_ref());
        if !selection.matches(message_id.as_deref()) {
            continue;
        }
        let (headers, payload) = (got.delivery.properties.headers().as_ref(), &got.delivery.data);
        match entry::verify(headers, payload, &key, config.app_id) {
            Ok(entry) => batch.push(Taken { position: scan.position, entry, got }),
            Err(error) => {
                counts.refused += 1;
                refused(Refused { position: scan.position, message_id, error: error.into() });
            }
        }
        if batch.len() == RELEASE_BATCH {
            releaser.release(&mut batch, &mut counts, &mut refused).await?;
        }
    }
    releaser.release(&mut batch, &mut counts, &mut refused).await?;
    broker::close_reader(connection).await;
    stop.cancel();
    if let Some(writing) = writing {
        let _ = writing.await;
    }
    if let Some(store) = store {
        store.close().await;
    }
    Ok(counts)
}

/// An entry taken from the queue and verified, not yet acked.
struct Taken {
    position: usize,
    entry: HeldEntry,
    got: BasicGetMessage,
}

/// What a release needs for each batch.
struct Releaser {
    router: Arc<Router>,
    completion: Completion,
}

impl Releaser {
    /// Plans, completes (publishes, confirms, stores) and then acks `batch` (emptied).
    async fn release(
        &self,
        batch: &mut Vec<Taken>,
        counts: &mut Released,
        refused: &mut impl FnMut(Refused),
    ) -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let messages: Vec<_> = batch.iter().map(|taken| taken.entry.clone().into_message()).collect();
        let router = Arc::clone(&self.router);
        let plans = tokio::task::spawn_blocking(move || {
            let policy = router.policy();
            messages.into_iter().map(|message| router.release(policy.as_ref(), message)).collect::<Vec<_>>()
        })
        .await
        .context("the policy chain panicked")?;
        let mut planned: Vec<(Taken, Routed)> = Vec::with_capacity(batch.len());
        for (taken, plan) in batch.drain(..).zip(plans) {
            match plan {
                Ok(plan) => {
                    if let Outcome::Deferred { plugin } = &plan.outcome {
                        let id = &taken.entry.message_id;
                        bail!("releasing {id}: plugin `{plugin}` could not run (host overloaded); it stays held");
                    }
                    planned.push((taken, plan));
                }
                Err(error) => {
                    counts.refused += 1;
                    let (position, message_id) = (taken.position, Some(taken.entry.message_id));
                    refused(Refused { position, message_id, error: error.into() });
                }
            }
        }
        // Handing writes to the store may block while its queue is full: off the async threads.
        let (completion, started) = (self.completion.clone(), Instant::now());
        let (planned, pending) = tokio::task::spawn_blocking(move || {
            let mut pending = Vec::with_capacity(planned.len());
            for (_, plan) in &planned {
                let prepared = completion.prepare(plan).context("publishing an inbox copy")?;
                pending.push(completion.start(plan, prepared, started)?);
            }
            anyhow::Ok((planned, pending))
        })
        .await
        .context("completing released messages panicked")??;
        for pending in pending {
            match pending.wait().await {
                Ok(()) => {}
                Err(err @ Incomplete::Unconfirmed(_)) => {
                    return Err(anyhow!(err).context("releasing held messages: a copy was not confirmed"));
                }
                Err(err @ Incomplete::NotDurable(_)) => return Err(anyhow!(err).context("storing released messages")),
            }
        }
        for (taken, plan) in planned {
            taken.got.delivery.acker.ack(BasicAckOptions::default()).await.context("acking a released entry")?;
            let message_id = &taken.entry.message_id;
            tracing::info!(message_id = %message_id, copies = plan.copies.len(), "held message released");
            counts.released += 1;
        }
        Ok(())
    }
}

async fn open(config: &Setup<'_>) -> anyhow::Result<(Connection, Channel)> {
    broker::open_reader(&config.broker.urls, "inboxd held").await
}

/// The held queue, all of it.
async fn held_queue<'a>(config: &Setup<'_>, channel: &'a Channel) -> anyhow::Result<Scan<'a>> {
    Scan::open(channel, config.broker.held_queue(), u32::MAX).await
}
