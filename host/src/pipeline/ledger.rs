//! One message, one id: each chat message in flight holds an intent (the fingerprint of what was
//! consumed → the id it was given), so when the broker delivers it again (a lost connection, a
//! broker node loss, inboxd's own requeue, inboxd killed, a shard handed to another process) or
//! an MQTT client retransmits it (QoS 1 with the DUP flag), its copies carry the id they carried
//! the first time.
//!
//! A delivery the broker marks as not redelivered is new for certain (AMQP guarantees it), so it
//! always gets a new id: a user who sends "ok" twice sends two messages. A redelivered one takes
//! the oldest intent of its fingerprint no delivery holds; identical messages in flight map one
//! to one onto their redeliveries. When this process has none (it was restarted, or the shard
//! was another process's), it asks the store: with one, the worker commits each intent before the
//! copies are published (see `worker`). The ack and the intent's deletion cannot be one step, so
//! the ack is committed in one AMQP transaction with a marker naming the ids it settles (the
//! settle journal, `broker::journal`), and the journal's markers are what deletes intents: in
//! bulk every second ([`Ledger::catch_up`]), and always before the store is asked ([`CatchUp`]).
//! So an intent the store answers with is one whose message may come back.
//!
//! Without the journal (no store) an ack is never confirmed by the broker, so when a session is
//! lost the ids settled last (up to [`MAX_UNCERTAIN`]) wait for a redelivery too, for
//! [`UNCERTAIN_FOR`]: their acks may not have arrived. The price: a message identical to one of
//! those (same sender, conversation and body), prefetched but not yet handled when the session
//! was lost, takes that id and shows as the earlier one. With the journal, an id whose ack's
//! commit was answered is certain ([`Ledger::committed`]) and waits for nothing.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use super::journal_outage::Outage;
use super::kept_id::KeptId;
use super::on_runtime::wait_on;
use super::recent::RecentIds;
use crate::store::Store;
use crate::telemetry;

/// How long a retransmission (DUP) may come after its original was settled and still get the
/// original's id. MQTT clients retransmit once reconnected, within seconds to minutes.
pub const RETRANSMIT_WINDOW: Duration = Duration::from_secs(600);
/// How long an intent waits for a redelivery that does not come (the message was purged, or
/// consumed by another process) before it is forgotten.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(3600);
/// Ids settled last whose acks a lost session may not have delivered: far more than the acks a
/// connection can have unwritten (the prefetch bounds what is in flight).
pub const MAX_UNCERTAIN: usize = 8192;
/// How long an id whose ack may have been lost waits for its redelivery, which comes first on the
/// next session (redeliveries lead the queue).
pub const UNCERTAIN_FOR: Duration = Duration::from_secs(120);
/// How long redeliveries wait for a settle journal that cannot be read (after a broker node is
/// lost, a quorum journal elects its leader again within seconds) before they get new ids: a
/// redelivery's stored intent is only taken once the store is up to date with the journal.
pub const CATCH_UP_PATIENCE: Duration = Duration::from_secs(15);
/// How often a redelivery waiting for the journal tries again.
const CATCH_UP_RETRY: Duration = Duration::from_millis(250);
/// Assignments between two sweeps for orphaned intents.
const SWEEP_EVERY: u32 = 4096;

/// The ids of the messages in flight, and of those settled within [`RETRANSMIT_WINDOW`].
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Intents>,
    /// Where the intents of other processes (and of this one before a restart) are found.
    durable: Option<DurableIntents>,
    /// Brings the store up to date before it is asked (the session's settle journal).
    catch_up: Mutex<Option<Arc<dyn CatchUp>>>,
}

/// Deletes the stored intents of messages whose acks are committed: those the settle journal
/// names (any process's) and those this process committed. Blocking: called from a worker thread.
pub trait CatchUp: Send + Sync {
    /// Deletes the intents of `committed` and of every id the journal names.
    fn catch_up(&self, committed: Vec<String>) -> CaughtUp;
}

/// What a catch-up did.
#[derive(Debug, Default)]
pub struct CaughtUp {
    /// The ids whose intents were deleted.
    pub deleted: Vec<String>,
    /// Ids whose intents are still to delete, the store could not be written: those of
    /// `committed`, and those of the markers taken with them.
    pub undeleted: Vec<String>,
    /// Why the store may not be up to date with every ack committed before the call (the journal
    /// could not be read, applied or emptied); `None` when it is.
    pub failure: Option<String>,
}

/// The store's intents of one app, asked from a worker thread.
struct DurableIntents {
    store: Store,
    app: String,
    runtime: Handle,
}

#[derive(Debug, Default)]
struct Intents {
    /// Per fingerprint, oldest first.
    open: HashMap<u64, VecDeque<Intent>>,
    /// The ids settled within the window, the latest per fingerprint.
    recent: RecentIds,
    /// The last ids settled in this session, oldest first: their acks may not have arrived.
    settled: VecDeque<(u64, String)>,
    /// Ids settled whose stored intent the settle journal has not deleted yet: never taken from
    /// the store.
    forgetting: HashSet<String>,
    /// Ids among `forgetting` whose acks are committed, for the next catch-up to delete (their
    /// markers name them too, unless the journal dropped them, full).
    committed: Vec<String>,
    since_sweep: u32,
    /// The broker session under way (how many ended before it).
    session: Session,
    /// Whether catching up has been failing (none: the last catch-up succeeded).
    outage: Outage,
}

/// One broker session of the process: deliveries of a session that has ended are dead (they
/// come back in the next), so what its workers still do with them must not take, hold or settle
/// an intent (see [`Ledger::assign`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Session(u64);

#[derive(Debug)]
struct Intent {
    id: String,
    /// A delivery of this process holds it; otherwise it waits for the redelivery.
    held: bool,
    since: Instant,
    /// Settled, but its ack may have been lost with the session: waits only [`UNCERTAIN_FOR`].
    uncertain: bool,
}

/// A delivery's hold on its message's id, until it is settled or released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    fingerprint: u64,
    pub id: String,
    /// Only a new message or a redelivery holds an intent; a retransmission borrows its id.
    holds: bool,
    /// The session whose delivery claimed it.
    session: Session,
}

impl Claim {
    /// A retransmission of a message this process has in flight or settled recently: its
    /// copies are (or are being) delivered already.
    pub fn is_retransmission(&self) -> bool {
        !self.holds
    }
}

/// How the broker handed a message over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Never delivered before (`redelivered` unset, no DUP flag).
    New,
    /// Delivered before, to this process or another (`redelivered` set).
    Redelivered,
    /// A new broker message that an MQTT client marked as a retransmission (`x-mqtt-dup`).
    Retransmitted,
}

impl Claim {
    /// The fingerprint of the claimed message, as the store keeps it.
    pub fn stored_fingerprint(&self) -> i64 {
        stored(self.fingerprint)
    }
}

/// A fingerprint as a signed 64-bit column holds it (the same bits).
fn stored(fingerprint: u64) -> i64 {
    i64::from_ne_bytes(fingerprint.to_ne_bytes())
}

impl Ledger {
    /// A ledger of app `app` that finds intents of other processes in `store` (`None`: this
    /// process's memory only). Call it on the runtime the workers' threads belong to.
    pub fn new(app: &str, store: Option<Store>) -> Ledger {
        let durable = store.and_then(|store| {
            let runtime = Handle::try_current().ok()?;
            Some(DurableIntents { store, app: app.to_owned(), runtime })
        });
        Ledger { inner: Mutex::default(), durable, catch_up: Mutex::default() }
    }

    /// Whether intents are kept in the store (committed before the copies are published).
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// What identifies one published message: its routing key (sender, conversation) and body;
    /// the same in every process and version (the store keeps it).
    pub fn fingerprint(&self, routing_key: &str, body: &[u8]) -> u64 {
        let mut hasher = Sha256::new();
        hasher.update(routing_key.as_bytes());
        hasher.update([0]);
        hasher.update(body);
        let digest = hasher.finalize();
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }

    /// The broker session under way, for its workers' [`Ledger::assign`].
    pub fn session(&self) -> Session {
        self.lock().session
    }

    /// The id of the message with `fingerprint` as it arrives now in `session`; `mint` makes a
    /// new one. A redelivery this process knows nothing of asks the store (blocking: call it from
    /// a worker thread). `None` once `session` has ended: its delivery will come back in the next
    /// one, which is where its id is claimed (claimed by the dead session's worker instead, it
    /// would be held while its redelivery looks for it, and given a new id).
    pub fn assign(
        &self,
        session: Session,
        fingerprint: u64,
        arrival: Arrival,
        mint: impl FnOnce() -> String,
    ) -> Option<Claim> {
        let now = Instant::now();
        {
            let mut intents = self.lock();
            if intents.session != session {
                return None;
            }
            intents.sweep(now);
            let known = match arrival {
                Arrival::New => None,
                Arrival::Redelivered => intents.take_waiting(fingerprint),
                Arrival::Retransmitted => {
                    if let Some(id) = intents.latest(fingerprint, now) {
                        return Some(Claim { fingerprint, id, holds: false, session });
                    }
                    None
                }
            };
            if let Some(id) = known {
                return Some(Claim { fingerprint, id, holds: true, session });
            }
        }
        if arrival == Arrival::Redelivered
            && let Some(stored) = self.stored_intents(session, fingerprint)
        {
            let mut intents = self.lock();
            if intents.session != session {
                return None;
            }
            intents.adopt(fingerprint, stored, now);
            if let Some(id) = intents.take_waiting(fingerprint) {
                telemetry::intent_recovered(&id);
                return Some(Claim { fingerprint, id, holds: true, session });
            }
        }
        let id = mint();
        let intent = Intent { id: id.clone(), held: true, since: now, uncertain: false };
        let mut intents = self.lock();
        if intents.session != session {
            return None;
        }
        intents.open.entry(fingerprint).or_default().push_back(intent);
        Some(Claim { fingerprint, id, holds: true, session })
    }

    /// Sets what brings the store up to date before it is asked (for the session starting;
    /// `None`: nothing, the shards' layout).
    pub fn set_catch_up(&self, catch_up: Option<Arc<dyn CatchUp>>) {
        *self.catch_up.lock().unwrap_or_else(PoisonError::into_inner) = catch_up;
    }

    /// Brings the store up to date with the acks committed so far (the settle journal deletes
    /// their intents), and forgets the ids it deleted; whether it is up to date. Blocking: call it
    /// from a worker thread or a blocking task.
    pub fn catch_up(&self) -> bool {
        let catch_up = self.catch_up.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let Some(journal) = catch_up else { return true };
        let committed = std::mem::take(&mut self.lock().committed);
        let CaughtUp { deleted, undeleted, failure } = journal.catch_up(committed);
        let mut intents = self.lock();
        intents.committed.extend(undeleted);
        for id in &deleted {
            intents.forgetting.remove(id);
        }
        match failure {
            None => {
                intents.outage.succeeded();
                true
            }
            Some(err) => {
                intents.outage.failed(&err);
                false
            }
        }
    }

    /// [`Ledger::catch_up`] for a redelivery: while it fails, tries again every `retry` until
    /// `patience` has passed since the failures began. The patience is spent once for every
    /// redelivery together: once it has run out, none waits until a catch-up (a redelivery's or
    /// the periodic trim's) succeeds again. Blocking, as `catch_up`.
    /// It gives up when `session` ends meanwhile.
    fn catch_up_within(&self, session: Session, patience: Duration, retry: Duration) -> bool {
        loop {
            telemetry::redelivery_catch_up();
            if self.catch_up() {
                return true;
            }
            if self.session() != session {
                return false;
            }
            let since = self.lock().outage.since().unwrap_or_else(Instant::now);
            if since.elapsed() >= patience {
                let first = self.lock().outage.tell_new_id();
                telemetry::journal_unreadable(patience, first);
                return false;
            }
            std::thread::sleep(retry.min(patience.saturating_sub(since.elapsed())));
        }
    }

    /// The store's open intents of `fingerprint`, oldest first, once the store is up to date
    /// with the acks committed so far (`None` without a store, or when it cannot answer).
    fn stored_intents(&self, session: Session, fingerprint: u64) -> Option<Vec<String>> {
        let DurableIntents { store, app, runtime } = self.durable.as_ref()?;
        if !self.catch_up_within(session, CATCH_UP_PATIENCE, CATCH_UP_RETRY) {
            return None;
        }
        let (store, app) = (store.clone(), app.clone());
        match wait_on(runtime, async move { store.open_intents(&app, stored(fingerprint)).await }) {
            Ok(Ok(ids)) => Some(ids),
            Ok(Err(err)) => {
                telemetry::intent_lookup_failed(&err);
                None
            }
            Err(stopped) => {
                telemetry::intent_lookup_failed(&stopped);
                None
            }
        }
    }

    /// The delivery was acked or dead-lettered: its intent is done, its id kept for
    /// retransmissions. Settled once its session has ended, its ack cannot be sent: it is
    /// released instead.
    pub fn settle(&self, claim: &Claim) {
        let now = Instant::now();
        let mut intents = self.lock();
        if claim.session != intents.session {
            drop(intents);
            self.release(claim);
            return;
        }
        if claim.holds {
            intents.remove(claim);
            intents.settled.push_back((claim.fingerprint, claim.id.clone()));
            if intents.settled.len() > MAX_UNCERTAIN {
                intents.settled.pop_front();
            }
            if self.durable.is_some() {
                intents.forgetting.insert(claim.id.clone());
            }
        }
        intents.remember(claim, now);
    }

    /// The ack of the settled `claim` is committed: its message will not come back.
    pub fn committed(&self, claim: &Claim) {
        let mut intents = self.lock();
        let at = intents.settled.iter().position(|(_, id)| *id == claim.id);
        let settled = at.and_then(|at| intents.settled.remove(at));
        if self.durable.is_some() {
            let id = settled.map_or_else(|| claim.id.clone(), |(_, id)| id);
            intents.committed.push(id);
        }
    }

    /// The delivery goes back to the queue (requeued): its intent waits for the redelivery.
    pub fn release(&self, claim: &Claim) {
        if !claim.holds {
            return;
        }
        let mut intents = self.lock();
        let waiting = intents.open.get_mut(&claim.fingerprint).and_then(|q| q.iter_mut().find(|i| i.id == claim.id));
        if let Some(intent) = waiting {
            intent.held = false;
        }
    }

    /// The broker session ended: every delivery in flight comes back, so every intent waits, and
    /// so do the ids settled last, whose acks may have been lost (ahead of the others: they were
    /// earlier in the queue).
    pub fn release_all(&self) {
        let now = Instant::now();
        let mut intents = self.lock();
        intents.session.0 += 1;
        for intent in intents.open.values_mut().flatten() {
            intent.held = false;
        }
        let settled = std::mem::take(&mut intents.settled);
        for (fingerprint, id) in settled.into_iter().rev() {
            let intent = Intent { id, held: false, since: now, uncertain: true };
            intents.open.entry(fingerprint).or_default().push_front(intent);
        }
        // A settled id whose ack's commit was not answered may come back: its intent is no longer
        // kept from the store (if the commit went through, the journal names it). One whose
        // commit was answered stays kept until a catch-up deletes its intent.
        let Intents { forgetting, committed, .. } = &mut *intents;
        forgetting.clear();
        forgetting.extend(committed.iter().cloned());
    }

    /// Intents open (in flight or waiting for their redelivery).
    pub fn open(&self) -> usize {
        self.lock().open.values().map(VecDeque::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Intents> {
        // A panic elsewhere cannot leave the maps half-updated: each operation is one step.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Intents {
    /// Takes the store's intents of `fingerprint` (oldest first) that this process does not know
    /// as waiting, ahead of its own: they were made before.
    fn adopt(&mut self, fingerprint: u64, stored: Vec<String>, now: Instant) {
        if stored.is_empty() {
            return;
        }
        let settled_last = self.recent.get(fingerprint).map(|(id, _)| id);
        let queue = self.open.entry(fingerprint).or_default();
        let unknown: Vec<String> = stored
            .into_iter()
            .filter(|id| {
                !settled_last.is_some_and(|last| last.is(id))
                    && !self.forgetting.contains(id)
                    && !queue.iter().any(|i| &i.id == id)
            })
            .collect();
        for id in unknown.into_iter().rev() {
            queue.push_front(Intent { id, held: false, since: now, uncertain: false });
        }
    }

    fn take_waiting(&mut self, fingerprint: u64) -> Option<String> {
        let now = Instant::now();
        let queue = self.open.get_mut(&fingerprint)?;
        queue.retain(|i| !(i.uncertain && now.duration_since(i.since) > UNCERTAIN_FOR));
        let intent = queue.iter_mut().find(|i| !i.held)?;
        intent.held = true;
        Some(intent.id.clone())
    }

    /// The id of the latest message with `fingerprint`: in flight, or settled within the window.
    fn latest(&self, fingerprint: u64, now: Instant) -> Option<String> {
        if let Some(intent) = self.open.get(&fingerprint).and_then(VecDeque::back) {
            return Some(intent.id.clone());
        }
        let (id, at) = self.recent.get(fingerprint)?;
        (now.duration_since(at) <= RETRANSMIT_WINDOW).then(|| id.text())
    }

    fn remove(&mut self, claim: &Claim) {
        if let Entry::Occupied(mut queue) = self.open.entry(claim.fingerprint) {
            queue.get_mut().retain(|i| i.id != claim.id);
            if queue.get().is_empty() {
                queue.remove();
            }
        }
    }

    fn remember(&mut self, claim: &Claim, now: Instant) {
        self.recent.insert(claim.fingerprint, KeptId::new(&claim.id), now);
    }

    /// Every [`SWEEP_EVERY`] assignments: forgets settled ids past the window and intents that
    /// waited longer than [`ORPHAN_AFTER`].
    fn sweep(&mut self, now: Instant) {
        self.since_sweep += 1;
        if self.since_sweep < SWEEP_EVERY {
            return;
        }
        self.since_sweep = 0;
        while self.recent.oldest_at().is_some_and(|at| now.duration_since(at) > RETRANSMIT_WINDOW) {
            self.recent.pop_oldest();
        }
        self.open.retain(|_, queue| {
            let waited = |i: &Intent| now.duration_since(i.since);
            queue.retain(|i| i.held || waited(i) <= if i.uncertain { UNCERTAIN_FOR } else { ORPHAN_AFTER });
            !queue.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// `ledger.assign` in the session under way.
    fn assign(ledger: &Ledger, fingerprint: u64, arrival: Arrival, mint: impl FnOnce() -> String) -> Claim {
        ledger.assign(ledger.session(), fingerprint, arrival, mint).expect("the session is under way")
    }

    fn minting() -> impl FnMut() -> String {
        let next = Cell::new(0);
        move || {
            next.set(next.get() + 1);
            format!("id{}", next.get())
        }
    }

    #[test]
    fn a_redelivery_gets_the_id_of_the_first_delivery() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("apps.a.outgoing.users.u.messages.v.outgoing", b"{\"text\":\"hi\"}");
        let first = assign(&ledger, fp, Arrival::New, &mut mint);
        ledger.release_all();
        let again = assign(&ledger, fp, Arrival::Redelivered, &mut mint);
        assert_eq!(again.id, first.id);
        ledger.settle(&again);
        assert_eq!(ledger.open(), 0);
    }

    #[test]
    fn the_same_text_sent_twice_is_two_messages_and_their_redeliveries_keep_both_ids() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let first = assign(&ledger, fp, Arrival::New, &mut mint);
        let second = assign(&ledger, fp, Arrival::New, &mut mint);
        assert_ne!(first.id, second.id);
        ledger.release_all();
        let ids = [
            assign(&ledger, fp, Arrival::Redelivered, &mut mint),
            assign(&ledger, fp, Arrival::Redelivered, &mut mint),
        ];
        assert_eq!(ids.map(|c| c.id), [first.id.clone(), second.id.clone()]);
        // A third redelivery with nothing waiting (its ack was lost): a new id.
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, "id3");
    }

    #[test]
    fn a_settled_message_is_never_reused_while_its_session_lives() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let first = assign(&ledger, fp, Arrival::New, &mut mint);
        ledger.settle(&first);
        assert_ne!(assign(&ledger, fp, Arrival::New, &mut mint).id, first.id);
        assert_ne!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, first.id);
    }

    #[test]
    fn a_message_settled_just_before_the_session_was_lost_keeps_its_id() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let (fp, other) = (ledger.fingerprint("k", b"0"), ledger.fingerprint("k", b"1"));
        let acked = assign(&ledger, fp, Arrival::New, &mut mint);
        let in_flight = assign(&ledger, other, Arrival::New, &mut mint);
        ledger.settle(&acked);
        // The ack of `acked` may not have reached the broker: both come back.
        ledger.release_all();
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, acked.id);
        assert_eq!(assign(&ledger, other, Arrival::Redelivered, &mut mint).id, in_flight.id);
    }

    #[test]
    fn a_committed_ack_is_certain_when_the_session_is_lost() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let [committed, uncertain] = [(); 2].map(|()| assign(&ledger, fp, Arrival::New, &mut mint));
        ledger.settle(&committed);
        ledger.committed(&committed);
        ledger.settle(&uncertain);
        ledger.release_all();
        // Only the id whose ack's commit was not answered waits for its redelivery.
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, uncertain.id);
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, "id3");
    }

    #[test]
    fn a_dead_sessions_worker_neither_claims_nor_settles_what_its_redelivery_needs() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let old = ledger.session();
        let in_flight = assign(&ledger, fp, Arrival::New, &mut mint);
        ledger.release_all();
        // The dead session's worker goes on with what it had queued: it claims nothing...
        assert_eq!(ledger.assign(old, fp, Arrival::Redelivered, &mut mint), None);
        assert_eq!(ledger.assign(old, ledger.fingerprint("k", b"new"), Arrival::New, &mut mint), None);
        // ...and its late settling of the delivery it had (the ack cannot go out) releases it.
        ledger.settle(&in_flight);
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, in_flight.id);
        assert_eq!(ledger.open(), 1);
    }

    #[test]
    fn a_requeued_delivery_keeps_its_id_and_others_in_flight_are_not_taken() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let held = assign(&ledger, fp, Arrival::New, &mut mint);
        let requeued = assign(&ledger, fp, Arrival::New, &mut mint);
        ledger.release(&requeued);
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, requeued.id);
        assert_ne!(held.id, requeued.id);
    }

    #[test]
    fn a_retransmission_borrows_the_latest_id_in_flight_or_recently_settled() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let original = assign(&ledger, fp, Arrival::New, &mut mint);
        let dup = assign(&ledger, fp, Arrival::Retransmitted, &mut mint);
        assert_eq!(dup.id, original.id);
        ledger.settle(&dup);
        assert_eq!(ledger.open(), 1, "a borrowed id does not settle the original");
        ledger.settle(&original);
        assert_eq!(assign(&ledger, fp, Arrival::Retransmitted, &mut mint).id, original.id);
        let other = ledger.fingerprint("k", b"other");
        assert_eq!(assign(&ledger, other, Arrival::Retransmitted, &mut mint).id, "id2");
    }

    #[test]
    fn fingerprints_tell_keys_and_bodies_apart_and_are_the_same_in_every_process() {
        let ledger = Ledger::default();
        assert_ne!(ledger.fingerprint("ab", b"c"), ledger.fingerprint("a", b"bc"));
        assert_eq!(ledger.fingerprint("a", b"b"), Ledger::default().fingerprint("a", b"b"));
        // SHA-256 of "a\0b", first 8 bytes: stored fingerprints must survive upgrades.
        assert_eq!(ledger.fingerprint("a", b"b"), 0x59b2_71ae_1bbc_b1d3);
    }

    /// A catch-up that deleted the intents of `0`.
    struct Deleted(Vec<String>);

    impl CatchUp for Deleted {
        fn catch_up(&self, committed: Vec<String>) -> CaughtUp {
            let deleted = self.0.iter().cloned().chain(committed).collect();
            CaughtUp { deleted, undeleted: Vec::new(), failure: None }
        }
    }

    #[test]
    fn an_id_whose_intent_the_journal_deleted_is_no_longer_kept_from_the_store() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        ledger.lock().forgetting.extend(["s".to_owned(), "t".to_owned()]);
        ledger.set_catch_up(Some(Arc::new(Deleted(vec!["s".into()]))));
        assert!(ledger.catch_up());
        // Were "s" stored again (another process's intent of that id), it would be taken.
        ledger.lock().adopt(fp, vec!["s".into(), "t".into()], Instant::now());
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, "s");
        assert_eq!(assign(&ledger, fp, Arrival::Redelivered, &mut mint).id, "id1");
    }

    #[test]
    fn stored_intents_are_taken_oldest_first_unless_known_or_being_forgotten() {
        let (ledger, mut mint) = (Ledger::default(), minting());
        let fp = ledger.fingerprint("k", b"ok");
        let now = Instant::now();
        // This process settled "s" (its intent's deletion pending) and holds "h".
        let held = assign(&ledger, fp, Arrival::New, &mut mint);
        {
            let mut intents = ledger.lock();
            intents.forgetting.insert("s".into());
            intents.adopt(fp, vec!["a".into(), "s".into(), held.id.clone(), "b".into()], now);
        }
        let ids = [(); 3].map(|()| assign(&ledger, fp, Arrival::Redelivered, &mut mint).id);
        assert_eq!(ids, ["a", "b", "id2"]);
    }

    /// A catch-up whose journal cannot be read `failures` times (this process's own ids are
    /// deleted all the same, unless `unwritable`); counts its calls.
    #[derive(Default)]
    struct Failing {
        failures: std::sync::atomic::AtomicUsize,
        unwritable: std::sync::atomic::AtomicBool,
        calls: std::sync::atomic::AtomicUsize,
    }

    impl CatchUp for Failing {
        fn catch_up(&self, committed: Vec<String>) -> CaughtUp {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            if self.unwritable.load(SeqCst) {
                return CaughtUp { deleted: Vec::new(), undeleted: committed, failure: Some("unwritable".into()) };
            }
            let failed = self.failures.fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1)).is_ok();
            let failure = failed.then(|| "unreadable".to_owned());
            CaughtUp { deleted: committed, undeleted: Vec::new(), failure }
        }
    }

    #[test]
    fn own_ids_are_deleted_while_the_journal_cannot_be_read_and_kept_while_the_store_cannot_be_written() {
        use std::sync::atomic::Ordering::SeqCst;
        let ledger = Ledger::default();
        let journal = Arc::new(Failing::default());
        ledger.set_catch_up(Some(journal.clone()));
        journal.failures.store(usize::MAX, SeqCst);
        // What a durable ledger keeps of an id whose ack's commit was answered.
        let committed = |id: &str| {
            let mut intents = ledger.lock();
            intents.forgetting.insert(id.to_owned());
            intents.committed.push(id.to_owned());
        };
        let pending = || {
            let intents = ledger.lock();
            (intents.committed.len(), intents.forgetting.len())
        };
        committed("a");
        assert!(!ledger.catch_up());
        assert_eq!(pending(), (0, 0), "own ids deleted while the journal cannot be read");
        journal.unwritable.store(true, SeqCst);
        committed("b");
        assert!(!ledger.catch_up());
        assert_eq!(pending(), (1, 1), "kept for the next catch-up");
        journal.unwritable.store(false, SeqCst);
        assert!(!ledger.catch_up());
        assert_eq!(pending(), (0, 0));
    }

    #[test]
    fn a_redelivery_waits_for_a_journal_that_fails_a_while_but_not_twice_for_one_that_stays_down() {
        use std::sync::atomic::Ordering::SeqCst;
        let retry = Duration::from_millis(1);
        let ledger = Ledger::default();
        let journal = Arc::new(Failing::default());
        ledger.set_catch_up(Some(journal.clone()));
        // Three failures, then the journal is read: the redelivery waited for it.
        journal.failures.store(3, SeqCst);
        assert!(ledger.catch_up_within(ledger.session(), Duration::from_secs(60), retry));
        assert_eq!(journal.calls.load(SeqCst), 4);
        // A journal that stays unreadable: the first redelivery waits out the patience...
        journal.failures.store(usize::MAX, SeqCst);
        let patience = Duration::from_millis(50);
        let started = Instant::now();
        assert!(!ledger.catch_up_within(ledger.session(), patience, retry));
        assert!(started.elapsed() >= patience);
        // ...and the next ones try once each, without waiting, until a catch-up succeeds again.
        let before = journal.calls.load(SeqCst);
        assert!(!ledger.catch_up_within(ledger.session(), patience, Duration::from_secs(3600)));
        assert_eq!(journal.calls.load(SeqCst), before + 1);
        journal.failures.store(0, SeqCst);
        assert!(ledger.catch_up());
        journal.failures.store(1, SeqCst);
        assert!(
            ledger.catch_up_within(ledger.session(), Duration::from_secs(60), retry),
            "a new failure is waited for again"
        );
    }
}
