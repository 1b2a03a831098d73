//! A sequential worker on its own thread: routes each job (plugins run right here), queues its
//! copies on its channel without waiting, and leaves confirms and the ack to a settle task.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;

use super::{Job, Router};
use crate::broker::{InboxPublisher, Queued, confirmed};
use crate::telemetry;

/// One shard of the pipeline, with its own confirm-mode channel so its publishes stay in order.
pub struct Worker {
    pub publisher: InboxPublisher,
    pub router: Arc<Router>,
    /// Settle tasks, awaited on shutdown so in-flight deliveries get acked.
    pub settling: TaskTracker,
    /// The runtime the settle tasks run on.
    pub runtime: Handle,
}

impl Worker {
    /// Handles jobs until the dispatcher hangs up. Blocking: run it on a thread of its own
    /// (`spawn_blocking`). Plugins are called synchronously here — WASI host code must not run
    /// on an async worker thread — and nothing here waits for another thread per message.
    ///
    /// # Errors
    /// When a publish cannot be handed to the channel: the connection is gone, and the
    /// unacked deliveries will be redelivered.
    pub fn run(self, mut jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        while let Some(job) = jobs.blocking_recv() {
            self.handle(job)?;
        }
        Ok(())
    }

    fn handle(&self, job: Job) -> anyhow::Result<()> {
        let Job { delivery, inbound, lease } = job;
        let routing_key = delivery.routing_key.as_str();
        let mut pending = Vec::new();
        let published = Instant::now();
        match inbound.and_then(|inbound| self.router.plan(inbound)) {
            Ok(plan) => {
                telemetry::routed(&plan, delivery.redelivered);
                for copy in &plan.copies {
                    pending.push(self.publisher.publish(copy).context("publishing an inbox copy")?);
                }
                if let Some(held) = &plan.held {
                    pending.push(self.publisher.hold(held).context("publishing to the held queue")?);
                }
            }
            Err(err) => {
                telemetry::dead_lettered(&err, routing_key);
                let queued = self
                    .publisher
                    .dead_letter(routing_key, &delivery.properties, &delivery.data, err.code(), &err.to_string())
                    .context("publishing to the dead-letter queue")?;
                pending.push(queued);
            }
        }
        let open = self.publisher.hold_open();
        let settling = async move {
            settle(delivery.acker, pending, published).await;
            drop((lease, open));
        };
        self.settling.spawn_on(settling, &self.runtime);
        Ok(())
    }
}

/// Acks the delivery once every publish it caused is confirmed; otherwise requeues it.
async fn settle(acker: Acker, pending: Vec<Queued>, published: Instant) {
    let count = pending.len();
    match confirmed(pending).await {
        Ok(()) => {
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
