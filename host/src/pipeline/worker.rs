//! A sequential worker on its own thread: routes each job (plugins run right here), starts its
//! completion (publishes queued on its channel without waiting, writes handed to the store)
//! and leaves the confirms and the ack to its settler.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::Span;

use super::Job;
use super::complete::{Completion, Prepared};
use crate::broker::{Settle, Settler};
use crate::chat21::Inbound;
use crate::clock::now_ms;
use crate::routing::{INTERNAL_ERROR, Outcome, Refusal, Routed, Router, Stamp, guarded};
use crate::telemetry;

/// One shard of the pipeline, with its own confirm-mode channel so its publishes stay in order.
pub struct Worker {
    pub router: Arc<Router>,
    pub completion: Completion,
    /// Settles this worker's deliveries in the order it handled them.
    pub settler: Settler,
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
        let started = Instant::now();
        let (sender, recipient) = inbound.as_ref().map_or(("", ""), |inbound| inbound.topic.parties());
        let span = telemetry::delivery_span(self.router.app(), sender, recipient);
        let _in_delivery = span.enter();
        match route(&self.router, &self.completion, inbound) {
            // A plugin could not run for want of CPU: nothing was decided, try again later.
            Ok((plan, _)) if matches!(plan.outcome, Outcome::Deferred { .. }) => {
                report(&plan, delivery.redelivered);
                self.settler.settle(delivery, lease, false, async { Settle::Requeue });
            }
            Ok((plan, prepared)) => {
                report(&plan, delivery.redelivered);
                let pending = self.completion.start(&plan, prepared, started)?;
                let refusable = pending.writes_store();
                self.settler.settle(delivery, lease, refusable, pending.settle());
            }
            Err(refusal) => {
                let routing_key = delivery.routing_key.as_str();
                match &refusal {
                    Refusal::Input(err) => telemetry::dead_lettered(err.code(), err, routing_key),
                    Refusal::Panicked(message) => telemetry::panicked(INTERNAL_ERROR, message, routing_key),
                }
                let pending = self.completion.dead_letter(&delivery, &refusal, started)?;
                self.settler.settle(delivery, lease, false, pending.settle());
            }
        }
        Ok(())
    }
}

/// Routes one delivery (a new message gets its id and time here), applies what it announced
/// to the group directory and prepares its completion, a panic included (see [`guarded`]):
/// whatever goes wrong with one delivery is that delivery's refusal.
fn route(
    router: &Router,
    completion: &Completion,
    inbound: Result<Inbound, Refusal>,
) -> Result<(Routed, Prepared), Refusal> {
    let inbound = inbound?;
    guarded(|| {
        let routed = router.route(inbound, stamp())?;
        router.apply(&routed);
        let prepared = completion.prepare(&routed)?;
        Ok((routed, prepared))
    })
}

/// A new id (UUIDv7: it carries the time it was made, which the store dates history by) and
/// the clock, for a message about to be routed.
fn stamp() -> Stamp {
    Stamp { message_id: uuid::Uuid::now_v7().to_string(), now_ms: now_ms() }
}

/// Logs and counts how a delivery was routed.
fn report(routed: &Routed, redelivered: bool) {
    let kind = routed.event.kind().as_str();
    let message_id = routed.message_id().unwrap_or("");
    Span::current().record("message_id", message_id);
    let outcome = &routed.outcome;
    telemetry::routed(kind, message_id, outcome.label(), outcome.decided_by(), routed.copies.len(), redelivered);
}
