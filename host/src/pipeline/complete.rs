//! The one completion stage, for each delivery the daemon routes and each entry `inboxd held
//! release` delivers: publish what routing decided (inbox copies, the held entry) with
//! confirms, hand its store writes (history, lists, groups and the webhook events of the
//! outbox) to the store, and resolve once every publish is confirmed and every write durable;
//! only then is the delivery acked (by the broker's settler, or by the release).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lapin::message::Delivery;
use lapin::types::ShortString;
use thiserror::Error;

use crate::broker::{self, ConfirmError, InboxPublisher, Queued, Settle, confirmed};
use crate::chat21::InputError;
use crate::clock::now_ms;
use crate::routing::{Refusal, Routed};
use crate::store::records::{self, Write};
use crate::store::{Durable, NotDurable, STORE_REFUSED, StoreWriter, Synced};
use crate::telemetry;
use crate::webhook::Webhooks;

/// Publishes plans on one confirm-mode channel and records them in the store, if any; a clone
/// shares both.
#[derive(Clone)]
pub struct Completion {
    publisher: InboxPublisher,
    recorder: Option<Recorder>,
}

/// What a plan leaves in the store: its history, list and group rows, and with webhooks the
/// outbox rows of its events.
#[derive(Clone)]
pub struct Recorder {
    writer: StoreWriter,
    webhooks: Option<Arc<Webhooks>>,
}

impl Recorder {
    pub fn new(writer: StoreWriter, webhooks: Option<Arc<Webhooks>>) -> Recorder {
        Recorder { writer, webhooks }
    }

    /// The store's writer.
    pub fn writer(&self) -> &StoreWriter {
        &self.writer
    }

    /// Everything `plan` writes: history, lists, groups, and its webhook events.
    fn writes(&self, routed: &Routed) -> Vec<Write> {
        let now = now_ms();
        let mut writes = records::writes_for(routed, now);
        if let Some(webhooks) = &self.webhooks {
            writes.extend(webhooks.writes_for(routed, now));
        }
        writes
    }
}

/// A plan made ready to complete: the routing key of each copy as AMQP takes it, its writes.
pub struct Prepared {
    keys: Vec<ShortString>,
    writes: Vec<Write>,
}

/// The publishes and store writes of one delivery, handed over and not yet confirmed.
pub struct Pending {
    publishes: Vec<Queued>,
    durable: Option<Durable>,
    /// The sync of writes committed ahead of the publishes (durable intents).
    synced: Synced,
    /// When the delivery's handling began (for `inboxd_confirm_seconds`).
    since: Instant,
}

/// Why a delivery is not complete; it must not be acked.
#[derive(Debug, Error)]
pub enum Incomplete {
    /// A publish was not confirmed.
    #[error(transparent)]
    Unconfirmed(#[from] ConfirmError),
    /// The writes are not durable: the writer stopped, or the database refused them.
    #[error(transparent)]
    NotDurable(#[from] NotDurable),
}

impl Completion {
    /// Completes on `publisher`'s channel, recording with `recorder` (`None`: nothing persisted).
    pub fn new(publisher: InboxPublisher, recorder: Option<Recorder>) -> Completion {
        Completion { publisher, recorder }
    }

    /// The publisher, which a settler keeps open until the last confirm is in.
    pub fn publisher(&self) -> &InboxPublisher {
        &self.publisher
    }

    /// Converts `plan`'s routing keys and derives its store writes. Pure.
    ///
    /// # Errors
    /// [`InputError::IdTooLong`] when a copy's routing key is too long for AMQP.
    pub fn prepare(&self, plan: &Routed) -> Result<Prepared, InputError> {
        let keys = plan
            .copies
            .iter()
            .map(|copy| broker::short_string("routing key", &copy.routing_key))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|too_long| InputError::IdTooLong { what: "inbox copy", bytes: too_long.bytes })?;
        let writes = self.recorder.as_ref().map(|recorder| recorder.writes(plan)).unwrap_or_default();
        Ok(Prepared { keys, writes })
    }

    /// Queues the publishes of `plan` (its copies, then its held entry) without waiting, and
    /// hands its writes to the store (blocking while the store's queue is full: call it from a
    /// worker thread, not an async task). `since`: when handling the delivery began.
    ///
    /// # Errors
    /// When the channel or the store writer is gone: the delivery will be redelivered.
    pub fn start(&self, plan: &Routed, prepared: Prepared, since: Instant) -> anyhow::Result<Pending> {
        let Prepared { keys, writes } = prepared;
        let mut publishes = Vec::with_capacity(keys.len() + usize::from(plan.held.is_some()));
        for (key, copy) in keys.into_iter().zip(&plan.copies) {
            publishes.push(self.publisher.publish_to(key, &copy.body).context("publishing an inbox copy")?);
        }
        if let Some(held) = &plan.held {
            publishes.push(self.publisher.hold(held).context("publishing to the held queue")?);
        }
        let mut durable = None;
        if let (Some(recorder), false) = (&self.recorder, writes.is_empty()) {
            durable = Some(recorder.writer.submit(writes).context("handing writes to the store")?);
        }
        Ok(Pending { publishes, durable, synced: Synced::ALREADY, since })
    }

    /// Takes the writes of `prepared`, and `intent` when the plan publishes copies, to hand them
    /// to the store ahead of the publishes: [`Completion::start`] then only publishes (call it
    /// once the writes are durable). `None` when there is nothing to write (or no store).
    pub fn take_writes(&self, prepared: &mut Prepared, intent: Option<Write>) -> Option<Vec<Write>> {
        self.recorder.as_ref()?;
        let mut writes = std::mem::take(&mut prepared.writes);
        writes.extend(intent.filter(|_| !prepared.keys.is_empty()));
        (!writes.is_empty()).then_some(writes)
    }

    /// The store's writer, if anything is persisted.
    pub fn writer(&self) -> Option<&StoreWriter> {
        self.recorder.as_ref().map(|recorder| &recorder.writer)
    }

    /// Parks a refused delivery in the dead-letter queue, unchanged, with the refusal's code
    /// and text.
    ///
    /// # Errors
    /// When the channel is gone: the delivery will be redelivered.
    pub fn dead_letter(&self, delivery: &Delivery, refusal: &Refusal, since: Instant) -> anyhow::Result<Pending> {
        let (key, properties, data) = (delivery.routing_key.as_str(), &delivery.properties, &delivery.data);
        let queued = self
            .publisher
            .dead_letter(key, properties, data, refusal.code(), &refusal.text())
            .context("publishing to the dead-letter queue")?;
        Ok(Pending { publishes: vec![queued], durable: None, synced: Synced::ALREADY, since })
    }
}

impl Pending {
    /// Waits for `synced` too before the delivery counts as complete (the sync of writes
    /// committed before the publishes were queued).
    pub fn after(self, synced: Synced) -> Pending {
        Pending { synced, ..self }
    }

    /// Whether the store may refuse this delivery's writes (then it is to be dead-lettered).
    pub fn writes_store(&self) -> bool {
        self.durable.is_some()
    }

    /// Waits for every confirm, then for the writes to be durable.
    ///
    /// # Errors
    /// [`Incomplete`] saying what did not happen.
    pub async fn wait(self) -> Result<(), Incomplete> {
        let count = self.publishes.len();
        if let Err(err) = confirmed(self.publishes).await {
            telemetry::unconfirmed(&err);
            return Err(err.into());
        }
        if let Some(durable) = self.durable {
            durable.wait().await?;
        }
        self.synced.wait().await.map_err(NotDurable::Gone)?;
        if count > 0 {
            telemetry::confirmed(self.since.elapsed());
        }
        Ok(())
    }

    /// What becomes of the delivery: acked once complete, dead-lettered (`store-refused`, with
    /// the database's message) when the store refused its writes (redelivering it could only be
    /// refused again), else requeued.
    pub async fn settle(self) -> Settle {
        match self.wait().await {
            Ok(()) => Settle::Ack,
            Err(Incomplete::NotDurable(NotDurable::Refused(detail))) => {
                Settle::DeadLetter { reason: STORE_REFUSED, detail }
            }
            Err(Incomplete::Unconfirmed(_) | Incomplete::NotDurable(NotDurable::Gone(_))) => Settle::Requeue,
        }
    }
}
