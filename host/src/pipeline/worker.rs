//! A sequential worker on its own thread: routes each job (plugins run right here), starts its
//! completion (writes handed to the store, publishes queued on its channel; with durable intents
//! the publishes wait for the writes' commit) and leaves the confirms and the ack to its settler.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tokio::sync::mpsc;
use tracing::Span;

use super::Job;
use super::complete::{Completion, Prepared};
use super::ledger::{Arrival, Claim, Ledger, Session};
use crate::broker::{Lease, Marked, Settle, Settler};
use crate::chat21::{Inbound, InputError, Topic};
use crate::clock::now_ms;
use crate::refusals::{Refusals, Refused};
use crate::routing::{INTERNAL_ERROR, Outcome, Refusal, Routed, Router, Stamp, guarded};
use crate::store::{Durable, NotDurable, STORE_REFUSED, Synced, Write};
use crate::telemetry;

/// One shard of the pipeline, with its own confirm-mode channel so its publishes stay in order.
pub struct Worker {
    pub router: Arc<Router>,
    /// Gives a message delivered again the id it had the first time.
    pub ledger: Arc<Ledger>,
    /// The broker session whose deliveries this worker handles.
    pub session: Session,
    pub completion: Completion,
    /// Settles this worker's deliveries in the order it handled them.
    pub settler: Settler,
    /// Where rejected and dropped messages are remembered for the moderation console.
    pub refusals: Refusals,
}

/// Deliveries a worker stages (routes, and hands their writes to the store) before it completes
/// the first: with durable intents the copies wait for the commit, and the writes of all staged
/// deliveries go into one, so under load a commit costs a batch one wait, not each delivery.
const MAX_STAGED: usize = 64;

/// The writes a staged delivery commits before its copies are published.
enum Recorded {
    /// Nothing to commit first.
    Nothing,
    /// Taken, not yet handed to the store.
    Taken(Vec<Write>),
    /// Handed to the store: resolves once committed.
    Handed(Durable),
}

/// A delivery routed, its writes handed to the store, its publishes and settling still to come.
struct Staged {
    delivery: Delivery,
    lease: Option<Lease>,
    span: Span,
    started: Instant,
    claim: Option<Claim>,
    /// Sender and recipient, kept when the console remembers refusals.
    parties: Option<(String, String)>,
    step: Step,
}

enum Step {
    /// A retransmission of a message delivered already: acked, not published again.
    Retransmission,
    Refused(Refusal),
    Routed {
        /// Boxed: a routed plan is much larger than the other steps.
        plan: Box<Routed>,
        prepared: Prepared,
        /// The writes to commit ahead of the publishes (durable intents): taken when staged,
        /// handed to the store with the rest of the staged batch's.
        recorded: Recorded,
    },
}

impl Worker {
    /// Handles jobs until the dispatcher hangs up. Blocking: run it on a thread of its own
    /// (`spawn_blocking`). Plugins are called synchronously here — WASI host code must not run
    /// on an async worker thread — and nothing here waits for another thread per message, but
    /// for the store's commit of the staged deliveries' intents when they are durable.
    ///
    /// # Errors
    /// When a publish cannot be handed to the channel: the connection is gone, and the
    /// unacked deliveries will be redelivered.
    pub fn run(self, mut jobs: mpsc::Receiver<Job>) -> anyhow::Result<()> {
        let most = if self.ledger.is_durable() { MAX_STAGED } else { 1 };
        let mut staged = Vec::with_capacity(most);
        while let Some(job) = jobs.blocking_recv() {
            staged.extend(self.stage(job)?);
            while staged.len() < most
                && let Ok(job) = jobs.try_recv()
            {
                staged.extend(self.stage(job)?);
            }
            self.record(&mut staged)?;
            for delivery in staged.drain(..) {
                self.complete(delivery)?;
            }
        }
        Ok(())
    }

    /// Hands the writes the staged deliveries took to the store in one go, so that one commit
    /// holds them all (handed over one by one, the writer would start on the first while the
    /// rest are still being routed, and commit them in several transactions). With SQLite the
    /// commit happens right here, on this thread.
    ///
    /// # Errors
    /// When the store writer is gone: the deliveries will be redelivered.
    fn record(&self, staged: &mut [Staged]) -> anyhow::Result<()> {
        let (slots, writes): (Vec<&mut Recorded>, Vec<Vec<Write>>) = staged
            .iter_mut()
            .filter_map(|s| match &mut s.step {
                Step::Routed { recorded, .. } => match &mut *recorded {
                    Recorded::Taken(writes) => {
                        let writes = std::mem::take(writes);
                        Some((recorded, writes))
                    }
                    Recorded::Nothing | Recorded::Handed(_) => None,
                },
                Step::Retransmission | Step::Refused(_) => None,
            })
            .unzip();
        // Writes are only taken when there is a store, so there is a writer.
        let Some(writer) = self.completion.writer().filter(|_| !writes.is_empty()) else { return Ok(()) };
        let durables = writer.submit_all(writes).context("handing writes to the store")?;
        for (recorded, durable) in slots.into_iter().zip(durables) {
            *recorded = Recorded::Handed(durable);
        }
        Ok(())
    }

    /// Gives the delivery its message id, routes it and, with durable intents, takes its writes
    /// (the intent among them) to hand them to the store with the rest of its batch. `None`
    /// when the delivery's session has ended: it is dropped, to come back in the next.
    fn stage(&self, job: Job) -> anyhow::Result<Option<Staged>> {
        let Job { delivery, inbound, lease } = job;
        let started = Instant::now();
        let (sender, recipient) = inbound.as_ref().map_or(("", ""), |inbound| inbound.topic.parties());
        let span = telemetry::delivery_span(self.router.app(), sender, recipient);
        let parties = self.refusals.is_on().then(|| (sender.to_owned(), recipient.to_owned()));
        let staged = span.in_scope(|| {
            let outgoing = inbound.as_ref().is_ok_and(|i| matches!(i.topic, Topic::Outgoing { .. }));
            let claim = if outgoing {
                let fingerprint = self.ledger.fingerprint(delivery.routing_key.as_str(), &delivery.data);
                let Some(claim) = self.ledger.assign(self.session, fingerprint, arrival(&delivery), new_id) else {
                    telemetry::dead_session_delivery_dropped();
                    return Ok(None);
                };
                Some(claim)
            } else {
                None
            };
            if let Some(retransmitted) = claim.as_ref().filter(|c| c.is_retransmission()) {
                // Delivered already under this id; publishing it again would only show it twice.
                telemetry::retransmission_dropped(&retransmitted.id);
                return Ok(Some((claim, Step::Retransmission)));
            }
            let stamp = Stamp { message_id: claim.as_ref().map_or_else(new_id, |c| c.id.clone()), now_ms: now_ms() };
            let step = match route(&self.router, inbound, stamp, |routed| self.completion.prepare(routed)) {
                Err(refusal) => Step::Refused(refusal),
                Ok((plan, mut prepared)) => {
                    let mut recorded = Recorded::Nothing;
                    if self.ledger.is_durable() && !matches!(plan.outcome, Outcome::Deferred { .. }) {
                        let intent = claim.as_ref().map(|c| Write::Intent {
                            fingerprint: c.stored_fingerprint(),
                            message_id: c.id.clone(),
                            created_at: now_ms(),
                        });
                        if let Some(writes) = self.completion.take_writes(&mut prepared, intent) {
                            recorded = Recorded::Taken(writes);
                        }
                    }
                    Step::Routed { plan: Box::new(plan), prepared, recorded }
                }
            };
            anyhow::Ok(Some((claim, step)))
        })?;
        Ok(staged.map(|(claim, step)| Staged { delivery, lease, span, started, claim, parties, step }))
    }

    /// Publishes what a staged delivery routed to (once its recorded writes are durable) and
    /// hands it to the settler, in the order the deliveries were staged.
    fn complete(&self, staged: Staged) -> anyhow::Result<()> {
        let Staged { delivery, lease, span, started, claim, parties, step } = staged;
        let _in_delivery = span.enter();
        match step {
            Step::Retransmission => self.settler.settle(delivery, lease, false, async { Settle::Ack }),
            Step::Refused(refusal) => {
                let routing_key = delivery.routing_key.as_str();
                match &refusal {
                    Refusal::Input(err) => telemetry::dead_lettered(err.code(), err, routing_key),
                    Refusal::Panicked(message) => telemetry::panicked(INTERNAL_ERROR, message, routing_key),
                }
                let pending = self.completion.dead_letter(&delivery, &refusal, started)?;
                self.settle(delivery, lease, false, claim, pending.settle());
            }
            // A plugin could not run for want of CPU: nothing was decided, try again later.
            Step::Routed { plan, .. } if matches!(plan.outcome, Outcome::Deferred { .. }) => {
                report(&plan, delivery.redelivered);
                self.settle(delivery, lease, false, claim, async { Settle::Requeue });
            }
            Step::Routed { plan, prepared, recorded } => {
                report(&plan, delivery.redelivered);
                if let Some((sender, recipient)) = parties {
                    remember_refusal(&self.refusals, &plan, sender, recipient, &delivery.data);
                }
                let committed = match recorded {
                    Recorded::Handed(durable) => durable.wait_blocking(),
                    Recorded::Nothing | Recorded::Taken(_) => Ok(Synced::ALREADY),
                };
                match committed {
                    // Nothing was published: the refused delivery goes to the dead-letter queue.
                    Err(NotDurable::Refused(detail)) => {
                        let refused = async move { Settle::DeadLetter { reason: STORE_REFUSED, detail } };
                        self.settle(delivery, lease, true, claim, refused);
                    }
                    Err(NotDurable::Gone(_)) => {
                        self.settle(delivery, lease, false, claim, async { Settle::Requeue });
                    }
                    // Committed: a crash can no longer lose the writes, the copies may go; the ack
                    // waits for the commit's sync.
                    Ok(synced) => {
                        let pending = self.completion.start(&plan, prepared, started)?.after(synced);
                        let refusable = pending.writes_store();
                        self.settle(delivery, lease, refusable, claim, pending.settle());
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands `delivery` to the settler: `settling`, then the message's id released for its
    /// redelivery (requeued) or settled; with durable intents, the ack is committed with the
    /// settle journal's marker of the id, which deletes the stored intent (see the ledger).
    fn settle(
        &self,
        delivery: Delivery,
        lease: Option<Lease>,
        refusable: bool,
        claim: Option<Claim>,
        settling: impl Future<Output = Settle> + Send + 'static,
    ) {
        let ledger = Arc::clone(&self.ledger);
        let journaled = self.ledger.is_durable() && self.completion.writer().is_some();
        let marked = match &claim {
            Some(claim) if journaled && !claim.is_retransmission() => {
                let (id, claim, ledger) = (claim.id.clone(), claim.clone(), Arc::clone(&ledger));
                Some(Marked { id, then: Box::new(move || ledger.committed(&claim)) })
            }
            _ => None,
        };
        let accounted = async move {
            let settled = settling.await;
            if let Some(claim) = &claim {
                match settled {
                    Settle::Requeue => ledger.release(claim),
                    Settle::Ack | Settle::DeadLetter { .. } => ledger.settle(claim),
                }
            }
            settled
        };
        self.settler.settle_then(delivery, lease, refusable, accounted, marked);
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
/// to the group directory and prepares its completion (`prepare`), a panic included (see
/// [`guarded`]): whatever goes wrong with one delivery is that delivery's refusal.
fn route<P>(
    router: &Router,
    inbound: Result<Inbound, Refusal>,
    stamp: Stamp,
    prepare: impl FnOnce(&Routed) -> Result<P, InputError>,
) -> Result<(Routed, P), Refusal> {
    let inbound = inbound?;
    guarded(|| {
        let routed = router.route(inbound, stamp)?;
        router.apply(&routed);
        let prepared = prepare(&routed)?;
        Ok((routed, prepared))
    })
}

/// A new message id: a UUIDv7, which carries the time it was made (the store dates history by
/// it, so a redelivered message keeps its first time too).
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Logs and counts how a delivery was routed.
fn report(routed: &Routed, redelivered: bool) {
    let kind = routed.event.kind().as_str();
    let message_id = routed.message_id().unwrap_or("");
    Span::current().record("message_id", message_id);
    let outcome = &routed.outcome;
    telemetry::routed(kind, message_id, outcome.label(), outcome.decided_by(), routed.copies.len(), redelivered);
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;
    use crate::chat21::{Group, Limits};
    use crate::policy::{PolicyChain, PolicyHandle};
    use crate::routing::{GroupLookup, GroupsUnavailable};

    /// A group directory with a bug: asked for `group-bug`, it panics; every other group is
    /// stored with members alice and bob.
    struct BuggyDirectory;

    impl GroupLookup for BuggyDirectory {
        fn get(&self, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
            assert_ne!(id, "group-bug", "a bug in the group directory");
            let members = vec!["alice".to_owned(), "bob".to_owned()];
            Ok(Some(Arc::new(Group { id: id.into(), name: None, owner: None, members, body: json!({"uid": id}) })))
        }
        fn remember(&self, _group: Group) {}
    }

    fn to_group(group: &str) -> Result<Inbound, Refusal> {
        let key = format!("apps.app.outgoing.users.alice.messages.{group}.outgoing");
        let limits = Limits { max_body_bytes: 4096, max_inline_members: 10 };
        Ok(Inbound::parse("app", &key, br#"{"text":"hi","channel_type":"group"}"#, limits).unwrap())
    }

    fn stamp() -> Stamp {
        Stamp { message_id: "m-1".into(), now_ms: 1_700_000_000_000 }
    }

    /// The worker's routing step catches a panic in routing or in preparing: that delivery is
    /// refused as `internal-error` with the panic's message, and the next one routes.
    #[test]
    fn a_panic_routing_one_delivery_refuses_it_as_an_internal_error_and_the_next_routes() {
        let policy = PolicyHandle::new(Arc::new(PolicyChain::new(Vec::new())));
        let router = Router::new("app", policy).with_groups(Arc::new(BuggyDirectory));
        let copies = |routed: &Routed| Ok(routed.copies.len());

        let refused = route(&router, to_group("group-bug"), stamp(), copies).unwrap_err();
        assert_eq!(refused.code(), INTERNAL_ERROR);
        assert!(refused.text().contains("a bug in the group directory"), "{}", refused.text());
        let refused =
            route::<usize>(&router, to_group("group-ok"), stamp(), |_| panic!("a bug preparing")).unwrap_err();
        assert_eq!((refused.code(), refused.text().contains("a bug preparing")), (INTERNAL_ERROR, true));

        let (routed, published) = route(&router, to_group("group-ok"), stamp(), copies).unwrap();
        assert_eq!(routed.outcome, Outcome::Delivered);
        // The group's timeline, then alice and bob.
        assert_eq!(published, 3);
    }
}
