//! The history's writes waiting for SQLite's history thread: each commit's timeline and
//! conversation writes, held in memory in the order they came until a pass applies them.
//!
//! Nothing here is on disk: the acks of a commit's deliveries wait for the pass that applied its
//! history (and that pass's sync), so a crash loses only what the broker redelivers.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::records::Write;
use super::wal_sync::{Applied, Pending, Synced};

/// Whether `write` is queued for the history thread: the history's kinds (timeline and
/// conversation list). The others (groups, webhooks, intents) are read by routing and the outbox
/// at once, so they are committed at once.
pub(super) fn is_history(write: &Write) -> bool {
    matches!(write, Write::Message { .. } | Write::Status { .. } | Write::Conversation { .. })
}

/// The queued commits of one process, and how far its passes applied them.
pub(super) struct Queue {
    waiting: Mutex<Waiting>,
    applied: watch::Sender<Applied>,
}

#[derive(Default)]
struct Waiting {
    commits: VecDeque<Queued>,
    /// The number the last commit was queued under (the first is 1).
    last: u64,
    /// The history writes the queued commits hold.
    writes: usize,
}

/// A commit's history writes: those of `writes[rows]` that are [`is_history`], of app `app`.
#[derive(Clone)]
pub(super) struct Queued {
    seq: u64,
    pub(super) app: Arc<str>,
    writes: Arc<[Write]>,
    rows: Range<usize>,
    count: usize,
}

impl Queued {
    /// The history writes, in order.
    pub(super) fn writes(&self) -> impl Iterator<Item = &Write> {
        self.writes[self.rows.clone()].iter().filter(|write| is_history(write))
    }
}

impl Queue {
    pub(super) fn new() -> Queue {
        Queue { waiting: Mutex::default(), applied: watch::Sender::new(Applied::default()) }
    }

    /// Queues the `count` history writes among `writes[rows]` of app `app` (there must be some);
    /// returns what the acks of their deliveries wait for on top of `synced`, and how many history
    /// writes are now waiting.
    pub(super) fn push(
        &self,
        app: &str,
        writes: &Arc<[Write]>,
        rows: Range<usize>,
        count: usize,
        synced: Synced,
    ) -> (Synced, usize) {
        let (seq, waiting) = {
            let mut waiting = self.lock();
            waiting.last += 1;
            waiting.writes += count;
            let seq = waiting.last;
            waiting.commits.push_back(Queued { seq, app: app.into(), writes: Arc::clone(writes), rows, count });
            (seq, waiting.writes)
        };
        (synced.after_pass(self.applied.subscribe(), seq), waiting)
    }

    /// Whether commits wait for a pass.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().commits.is_empty()
    }

    /// The oldest `most` queued commits, in order; they stay queued until [`Queue::applied`].
    pub(super) fn oldest(&self, most: usize) -> Vec<Queued> {
        self.lock().commits.iter().take(most).cloned().collect()
    }

    /// A pass applied the oldest `commits` (from [`Queue::oldest`]) in a commit whose sync is
    /// `synced`: they leave the queue, and the acks waiting for them go on to that sync.
    pub(super) fn applied(&self, commits: &[Queued], synced: Option<Pending>) {
        let Some(last) = commits.last() else { return };
        {
            let mut waiting = self.lock();
            let applied = waiting.commits.iter().take_while(|queued| queued.seq <= last.seq).count();
            let writes: usize = waiting.commits.drain(..applied).map(|queued| queued.count).sum();
            waiting.writes -= writes;
        }
        self.applied.send_replace(Applied { through: last.seq, synced });
    }

    fn lock(&self) -> MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
