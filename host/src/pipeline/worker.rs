//! A sequential worker on its own thread: routes each job (plugins run right here), starts its
//! completion (publishes queued on its channel without waiting, writes handed to the store)
//! and leaves the confirms and the ack to its settler.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::complete::{Completion, Prepared};
use super::refusal::{Refusal, guarded};
use super::route::Outcome;
use super::{Job, Plan, Router};
use crate::broker::{Settle, Settler};
use crate::chat21::Inbound;
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
        match route(&self.router, &self.completion, inbound) {
            // A plugin could not run for want of CPU: nothing was decided, try again later.
            Ok((plan, _)) if matches!(plan.outcome, Outcome::Deferred { .. }) => {
                telemetry::routed(&plan, delivery.redelivered);
                self.settler.settle(delivery, lease, false, async { Settle::Requeue });
            }
            Ok((plan, prepared)) => {
                telemetry::routed(&plan, delivery.redelivered);
                let pending = self.completion.start(&plan, prepared, started)?;
                let refusable = pending.writes_store();
                self.settler.settle(delivery, lease, refusable, pending.settle());
            }
            Err(refusal) => {
                let routing_key = delivery.routing_key.as_str();
                match &refusal {
                    Refusal::Input(err) => telemetry::dead_lettered(err, routing_key),
                    Refusal::Panicked(message) => telemetry::panicked(message, routing_key),
                }
                let pending = self.completion.dead_letter(&delivery, &refusal, started)?;
                self.settler.settle(delivery, lease, false, pending.settle());
            }
        }
        Ok(())
    }
}

/// Plans one delivery and prepares its completion, a panic included (see [`guarded`]):
/// whatever goes wrong with one delivery is that delivery's refusal.
fn route(
    router: &Router,
    completion: &Completion,
    inbound: Result<Inbound, Refusal>,
) -> Result<(Plan, Prepared), Refusal> {
    let inbound = inbound?;
    guarded(|| {
        let plan = router.plan(inbound)?;
        let prepared = completion.prepare(&plan)?;
        Ok((plan, prepared))
    })
}
