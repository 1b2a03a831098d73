//! A sequential worker on its own thread: routes each job (plugins run right here), starts its
//! completion (publishes queued on its channel without waiting, writes handed to the store)
//! and leaves the confirms and the ack to its settler.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tokio::sync::mpsc;
use tracing::Span;

use super::Job;
use super::complete::{Completion, Prepared};
use super::ledger::{Arrival, Claim, Ledger};
use crate::broker::{Settle, Settler};
use crate::chat21::{Inbound, Topic};
use crate::clock::now_ms;
use crate::refusals::{Refusals, Refused};
use crate::routing::{INTERNAL_ERROR, Outcome, Refusal, Routed, Router, Stamp, guarded};
use crate::telemetry;

/// One shard of the pipeline, with its own confirm-mode channel so its publishes stay in order.
pub struct Worker {
    pub router: Arc<Router>,
    /// Gives a message delivered again the id it had the first time.
    pub ledger: Arc<Ledger>,
    pub completion: Completion,
    /// Settles this worker's deliveries in the order it handled them.
    pub settler: Settler,
    /// Where rejected and dropped messages are remembered for the moderation console.
    pub refusals: Refusals,
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
        let claim = inbound.as_ref().ok().filter(|i| matches!(i.topic, Topic::Outgoing { .. })).map(|_| {
            let fingerprint = self.ledger.fingerprint(delivery.routing_key.as_str(), &delivery.data);
            self.ledger.assign(fingerprint, arrival(&delivery), new_id)
        });
        if let Some(claim) = claim.as_ref().filter(|c| c.is_retransmission()) {
            // Delivered already under this id; publishing it again would only show it twice.
            telemetry::retransmission_dropped(&claim.id);
            self.settler.settle(delivery, lease, false, async { Settle::Ack });
            return Ok(());
        }
        let parties = self.refusals.is_on().then(|| (sender.to_owned(), recipient.to_owned()));
        let stamp = Stamp { message_id: claim.as_ref().map_or_else(new_id, |c| c.id.clone()), now_ms: now_ms() };
        match route(&self.router, &self.completion, inbound, stamp) {
            // A plugin could not run for want of CPU: nothing was decided, try again later.
            Ok((plan, _)) if matches!(plan.outcome, Outcome::Deferred { .. }) => {
                report(&plan, delivery.redelivered);
                let settled = self.account(claim, async { Settle::Requeue });
                self.settler.settle(delivery, lease, false, settled);
            }
            Ok((plan, prepared)) => {
                report(&plan, delivery.redelivered);
                if let Some((sender, recipient)) = parties {
                    remember_refusal(&self.refusals, &plan, sender, recipient, &delivery.data);
                }
                let pending = self.completion.start(&plan, prepared, started)?;
                let refusable = pending.writes_store();
                self.settler.settle(delivery, lease, refusable, self.account(claim, pending.settle()));
            }
            Err(refusal) => {
                let routing_key = delivery.routing_key.as_str();
                match &refusal {
                    Refusal::Input(err) => telemetry::dead_lettered(err.code(), err, routing_key),
                    Refusal::Panicked(message) => telemetry::panicked(INTERNAL_ERROR, message, routing_key),
                }
                let pending = self.completion.dead_letter(&delivery, &refusal, started)?;
                self.settler.settle(delivery, lease, false, self.account(claim, pending.settle()));
            }
        }
        Ok(())
    }

    /// `settling`, then the message's id released for its redelivery (requeued) or settled.
    fn account(
        &self,
        claim: Option<Claim>,
        settling: impl Future<Output = Settle> + Send + 'static,
    ) -> impl Future<Output = Settle> + Send + 'static {
        let ledger = Arc::clone(&self.ledger);
        async move {
            let settled = settling.await;
            if let Some(claim) = &claim {
                match settled {
                    Settle::Requeue => ledger.release(claim),
                    Settle::Ack | Settle::DeadLetter { .. } => ledger.settle(claim),
                }
            }
            settled
        }
    }
}

/// How the broker handed `delivery` over: redelivered, retransmitted by its MQTT client (QoS 1
/// with DUP: RabbitMQ 3.10 and 3.11 say so in `x-mqtt-dup`), or new.
fn arrival(delivery: &Delivery) -> Arrival {
    let dup = delivery.properties.headers().as_ref().and_then(|h| h.inner().get("x-mqtt-dup"));
    if delivery.redelivered {
        Arrival::Redelivered
    } else if matches!(dup, Some(AMQPValue::Boolean(true))) {
        Arrival::Retransmitted
    } else {
        Arrival::New
    }
}

/// Routes one delivery (a message with the id `stamp` gives it), applies what it announced
/// to the group directory and prepares its completion, a panic included (see [`guarded`]):
/// whatever goes wrong with one delivery is that delivery's refusal.
fn route(
    router: &Router,
    completion: &Completion,
    inbound: Result<Inbound, Refusal>,
    stamp: Stamp,
) -> Result<(Routed, Prepared), Refusal> {
    let inbound = inbound?;
    guarded(|| {
        let routed = router.route(inbound, stamp)?;
        router.apply(&routed);
        let prepared = completion.prepare(&routed)?;
        Ok((routed, prepared))
    })
}

/// A new message id: a UUIDv7, which carries the time it was made (the store dates history by
/// it, so a redelivered message keeps its first time too).
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Remembers a rejected or dropped message for the console, with the reason its sender was
/// told (in the FAILED copy, if any) and the body as it arrived.
fn remember_refusal(refusals: &Refusals, plan: &Routed, sender: String, recipient: String, data: &[u8]) {
    let (outcome, plugin, code) = match &plan.outcome {
        Outcome::Rejected { plugin, code } => ("rejected", plugin.clone(), code.clone()),
        Outcome::Dropped => ("dropped", String::new(), String::new()),
        _ => return,
    };
    let reason = plan
        .copies
        .iter()
        .find_map(|copy| {
            let body: serde_json::Value = serde_json::from_slice(&copy.body.bytes()).ok()?;
            body.pointer("/attributes/rejection/reason")?.as_str().map(str::to_owned)
        })
        .unwrap_or_default();
    let body = refusals.keeps_bodies().then(|| String::from_utf8_lossy(data).into_owned());
    let message_id = plan.message_id().unwrap_or_default().to_owned();
    refusals.record(Refused { at_ms: now_ms(), message_id, outcome, plugin, code, reason, sender, recipient, body });
}

/// Logs and counts how a delivery was routed.
fn report(routed: &Routed, redelivered: bool) {
    let kind = routed.event.kind().as_str();
    let message_id = routed.message_id().unwrap_or("");
    Span::current().record("message_id", message_id);
    let outcome = &routed.outcome;
    telemetry::routed(kind, message_id, outcome.label(), outcome.decided_by(), routed.copies.len(), redelivered);
}
