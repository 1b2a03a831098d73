//! A sequential worker: routes each job, publishes its copies without waiting, and leaves
//! the confirms to a settle task that acks the delivery once all of them are confirmed.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::{Acker, PublisherConfirm};
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{Job, Plan, Router};
use crate::broker::{InboxPublisher, confirmed};
use crate::chat21::{Inbound, InputError};
use crate::store::{Durable, StoreWriter};
use crate::telemetry;

/// One shard of the pipeline, with its own confirm-mode channel so its publishes stay in order.
pub struct Worker {
    pub publisher: InboxPublisher,
    pub router: Arc<Router>,
    /// Where the plan's history writes go; `None` when nothing is persisted.
    pub store: Option<StoreWriter>,
    /// Settle tasks, awaited on shutdown so in-flight deliveries get acked.
    pub settling: TaskTracker,
}

impl Worker {
    /// Handles jobs until the dispatcher hangs up.
    ///
    /// # Errors
    /// When a publish cannot be handed to the channel: the connection is gone, and the
    /// unacked deliveries will be redelivered.
    pub async fn run(self, mut jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        while let Some(job) = jobs.recv().await {
            self.handle(job).await?;
        }
        Ok(())
    }

    async fn handle(&self, job: Job) -> anyhow::Result<()> {
        let Job { delivery, inbound } = job;
        let routing_key = delivery.routing_key.as_str();
        let mut pending = Vec::new();
        let mut durable = None;
        let published = Instant::now();
        let planned = match inbound {
            Ok(inbound) => self.route(inbound).await?,
            Err(err) => Err(err),
        };
        match planned {
            Ok(plan) => {
                telemetry::routed(&plan, delivery.redelivered);
                for copy in &plan.copies {
                    pending.push(self.publisher.publish(copy).await.context("publishing an inbox copy")?);
                }
                if let Some(held) = &plan.held {
                    pending.push(self.publisher.hold(held).await.context("publishing to the held queue")?);
                }
                if let Some(store) = &self.store {
                    let writes = store.writes(&plan);
                    if !writes.is_empty() {
                        durable = Some(store.submit(writes).await.context("handing writes to the store")?);
                    }
                }
            }
            Err(err) => {
                telemetry::dead_lettered(&err, routing_key);
                let confirm = self
                    .publisher
                    .dead_letter(routing_key, &delivery.properties, &delivery.data, err.code(), &err.to_string())
                    .await
                    .context("publishing to the dead-letter queue")?;
                pending.push(confirm);
            }
        }
        self.settling.spawn(settle(delivery.acker, pending, durable, published));
        Ok(())
    }

    /// Routes with one policy snapshot. Plugins run on the blocking pool: a call may take up
    /// to its deadline, and WASI host code must not run on an async worker thread.
    async fn route(&self, inbound: Inbound) -> anyhow::Result<Result<Plan, InputError>> {
        let policy = self.router.policy();
        if policy.is_noop() {
            return Ok(self.router.plan_with(policy.as_ref(), inbound));
        }
        let router = Arc::clone(&self.router);
        tokio::task::spawn_blocking(move || router.plan_with(policy.as_ref(), inbound))
            .await
            .context("the policy chain panicked")
    }
}

/// Acks the delivery once every publish it caused is confirmed and its store writes are
/// durable; otherwise requeues it.
async fn settle(acker: Acker, pending: Vec<PublisherConfirm>, durable: Option<Durable>, published: Instant) {
    let count = pending.len();
    match confirmed(pending).await {
        Ok(()) => {
            if let Some(durable) = durable
                && durable.wait().await.is_err()
            {
                let _ = acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
                return;
            }
            if count > 0 {
                telemetry::confirmed(published.elapsed());
            }
            if let Err(err) = acker.ack(BasicAckOptions::default()).await {
                telemetry::ack_failed(&err);
            }
        }
        Err(err) => {
            telemetry::unconfirmed(&err);
            // If the channel is gone the broker requeues it anyway.
            let _ = acker.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await;
        }
    }
}
