//! Group syncs of SQLite's write-ahead log: the writer commits without waiting for the disk, and
//! one thread syncs the log for every commit made meanwhile; a delivery is acked once synced.
//!
//! A commit is in the OS's file cache when it returns, so a crash of the process loses nothing of
//! it: publishing its copies may go ahead. Only power loss can undo it, so the ack waits for a
//! sync, which on this kind of machine costs as much CPU as the commit itself (~50 µs) and the
//! worker no longer waits for it. A sync is made when an ack waits for one (and at the latest
//! [`UNASKED`] after a commit): most acks wait for the history thread's pass first, so the
//! commits between two passes share the one sync made after the second.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::writer::WriterGone;
use crate::clock::Backoff;
use crate::telemetry;

/// The least time between two syncs: commits that come faster share one sync (which costs the
/// same for one commit as for a hundred: ~150 µs of CPU on a virtual disk, most of it the
/// device's cache flush); acks wait up to this long more. At 6,000 messages a second that is
/// ~60 more unacked deliveries, well within the prefetch.
const PAUSE: Duration = Duration::from_millis(10);
/// How long a commit no ack waits for stays unsynced at most (a write of the HTTP API, say).
const UNASKED: Duration = Duration::from_secs(1);
const RETRY_INITIAL: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The syncing thread of one SQLite writer; dropping it syncs what was committed and ends it.
pub(super) struct WalSync {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    /// The log, synced through a descriptor of its own (a sync is of the file, not the descriptor).
    wal: PathBuf,
    /// How long a commit waits to be asked for before it is synced anyway ([`UNASKED`]).
    unasked: Duration,
    wanted: Mutex<Wanted>,
    wake: Condvar,
    synced: watch::Sender<Progress>,
}

/// How far the syncs got.
#[derive(Debug, Default)]
struct Progress {
    /// Every commit up to this one was synced, or its sync failed.
    through: u64,
    /// The commits of failed syncs.
    failed: Vec<RangeInclusive<u64>>,
}

impl Progress {
    /// The sync of `commits` failed. A failure right after another extends its range, so a disk
    /// that keeps failing grows the list by one range per episode, not per retry.
    fn fail(&mut self, commits: RangeInclusive<u64>) {
        self.through = *commits.end();
        match self.failed.last_mut() {
            Some(last) if *last.end() + 1 == *commits.start() => *last = *last.start()..=self.through,
            _ => self.failed.push(commits),
        }
    }
}

#[derive(Default)]
struct Wanted {
    /// Commits counted so far; their writes are in the log.
    committed: u64,
    /// The latest commit an ack waits for the sync of.
    asked: u64,
    stop: bool,
    /// The thread waits for a commit (it is woken only then: a wake-up is a system call).
    idle: bool,
    /// The thread waits for an ack to ask for a sync, or for [`UNASKED`] to pass.
    unasked: bool,
}

/// What an ack waits for: the sync of the commit that made a delivery's writes and, with
/// SQLite's history queue, the history thread's pass that applied its history, and that pass's
/// sync.
#[derive(Clone, Debug)]
pub struct Synced {
    commit: Option<Pending>,
    pass: Option<AfterPass>,
}

/// A commit counted by [`WalSync`], to be synced.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    /// Where a sync is asked for; gone once the thread ended (then `synced` says so too).
    asking: Weak<Shared>,
    synced: watch::Receiver<Progress>,
    commit: u64,
}

/// A commit of the history queue, to be applied by a pass (see `history_queue`).
#[derive(Clone, Debug)]
struct AfterPass {
    applied: watch::Receiver<Applied>,
    seq: u64,
}

/// How far the history thread's passes got: every queued commit up to `through` is applied, by
/// commits whose sync is `synced` (`None` when they synced themselves: not in WAL mode).
#[derive(Clone, Debug, Default)]
pub(super) struct Applied {
    pub(super) through: u64,
    pub(super) synced: Option<Pending>,
}

impl Synced {
    /// Durable when committed (PostgreSQL), or nothing was written.
    pub const ALREADY: Synced = Synced { commit: None, pass: None };

    /// What an ack waits for once queued commit `seq` is applied too (`applied` tells the passes).
    pub(super) fn after_pass(self, applied: watch::Receiver<Applied>, seq: u64) -> Synced {
        Synced { pass: Some(AfterPass { applied, seq }), ..self }
    }

    /// What waits for both `self` and `other`, made by one writer: the later commit and the
    /// later pass of the two (each covers the earlier ones).
    pub(super) fn and(self, other: Synced) -> Synced {
        Synced {
            commit: later(self.commit, other.commit, |pending| pending.commit),
            pass: later(self.pass, other.pass, |pass| pass.seq),
        }
    }

    /// Waits until the commit is on disk (and the pass that applied its history, if any).
    ///
    /// # Errors
    /// [`WriterGone`] when the store stopped first, or the sync failed: the delivery must not be
    /// acked (it is redelivered, and its writes are made again).
    pub async fn wait(self) -> Result<(), WriterGone> {
        if let Some(AfterPass { mut applied, seq }) = self.pass {
            let pass = applied.wait_for(|a| a.through >= seq).await.map_err(|_| WriterGone)?.synced.clone();
            // The pass's commit came after this one: its sync covers both.
            return on_disk(pass).await;
        }
        on_disk(self.commit).await
    }
}

/// The later of `a` and `b` by `number`, or the one there is.
fn later<T>(a: Option<T>, b: Option<T>, number: impl Fn(&T) -> u64) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if number(&b) >= number(&a) { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Asks for the sync of `pending`, if any, and waits for it.
async fn on_disk(pending: Option<Pending>) -> Result<(), WriterGone> {
    let Some(Pending { asking, mut synced, commit }) = pending else { return Ok(()) };
    if synced.borrow().through < commit
        && let Some(shared) = asking.upgrade()
    {
        shared.ask(commit);
    }
    let progress = synced.wait_for(|p| p.through >= commit).await.map_err(|_| WriterGone)?;
    if progress.failed.iter().any(|failed| failed.contains(&commit)) { Err(WriterGone) } else { Ok(()) }
}

impl WalSync {
    /// Starts the thread that syncs `wal`, the log of the database the writer commits to.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(wal: PathBuf) -> std::io::Result<WalSync> {
        WalSync::start_unasked(wal, UNASKED)
    }

    /// [`WalSync::start`], syncing a commit no ack asks for after `unasked`.
    fn start_unasked(wal: PathBuf, unasked: Duration) -> std::io::Result<WalSync> {
        let shared = Arc::new(Shared {
            wal,
            unasked,
            wanted: Mutex::new(Wanted::default()),
            wake: Condvar::new(),
            synced: watch::Sender::new(Progress::default()),
        });
        let syncing = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("inboxd-wal-sync".into()).spawn(move || syncing.run())?;
        Ok(WalSync { shared, thread: Some(thread) })
    }

    /// Counts a commit that just returned; what its acks wait for.
    pub(super) fn committed(&self) -> Synced {
        Synced { commit: Some(self.count()), pass: None }
    }

    /// Counts a commit that just returned; the sync to wait for (made once asked for, see
    /// [`Synced::wait`]).
    pub(super) fn count(&self) -> Pending {
        let (commit, idle) = {
            let mut wanted = self.shared.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            wanted.committed += 1;
            (wanted.committed, wanted.idle)
        };
        if idle {
            self.shared.wake.notify_one();
        }
        Pending { asking: Arc::downgrade(&self.shared), synced: self.shared.synced.subscribe(), commit }
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.shared.wanted.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// An ack waits for the sync of `commit`: wakes the thread if it waits for that.
    fn ask(&self, commit: u64) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        wanted.asked = wanted.asked.max(commit);
        if wanted.unasked {
            // Once per wait: the thread clears it when it wakes.
            wanted.unasked = false;
            self.wake.notify_one();
        }
    }

    /// Syncs whenever an ack waits for a commit not synced yet, or a commit has waited
    /// [`UNASKED`] (at most once per [`PAUSE`]), each sync for every commit made before it; on
    /// stop, syncs once more and ends. A failed sync fails its commits: Linux may have dropped
    /// the pages it could not write, and a later sync would not say so.
    fn run(&self) {
        let mut synced = 0;
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            let (target, stop) = {
                let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
                while wanted.committed == synced && !wanted.stop {
                    wanted.idle = true;
                    wanted = self.wake.wait(wanted).unwrap_or_else(PoisonError::into_inner);
                    wanted.idle = false;
                }
                let until = Instant::now() + self.unasked;
                while wanted.asked <= synced && !wanted.stop {
                    let Some(left) = until.checked_duration_since(Instant::now()).filter(|left| !left.is_zero()) else {
                        break;
                    };
                    wanted.unasked = true;
                    wanted = self.wake.wait_timeout(wanted, left).unwrap_or_else(PoisonError::into_inner).0;
                    wanted.unasked = false;
                }
                (wanted.committed, wanted.stop)
            };
            if target > synced {
                let pause = match std::fs::File::open(&self.wal).and_then(|wal| wal.sync_data()) {
                    Ok(()) => {
                        telemetry::store_synced(target - synced);
                        self.synced.send_modify(|progress| progress.through = target);
                        backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
                        PAUSE
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        telemetry::store_sync_failed(&err, target - synced, delay);
                        self.synced.send_modify(|progress| progress.fail(synced + 1..=target));
                        delay
                    }
                };
                synced = target;
                if !stop {
                    std::thread::sleep(pause);
                }
            }
            if stop {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit's ack waits for the sync that covers it; the sync covers every commit counted
    /// before it began.
    #[tokio::test]
    async fn each_commit_is_released_by_a_sync_that_covers_it() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("t.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let sync = WalSync::start(wal).unwrap();
        let commits: Vec<Synced> = (0..100).map(|_| sync.committed()).collect();
        let bound = Duration::from_secs(10);
        for commit in commits {
            tokio::time::timeout(bound, commit.wait()).await.expect("synced in time").unwrap();
        }
        assert!(sync.shared.synced.borrow().through >= 100);
    }

    /// Commits are synced once an ack waits for one of them, the sync covering all made before
    /// it; a commit no ack waits for is synced all the same, later.
    #[tokio::test]
    async fn a_sync_is_made_when_asked_for_or_once_a_commit_waited_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("t.db-wal");
        std::fs::write(&wal, b"frames").unwrap();
        let bound = Duration::from_secs(10);
        let sync = WalSync::start_unasked(wal.clone(), Duration::from_secs(3600)).unwrap();
        let commits: Vec<Synced> = (0..10).map(|_| sync.committed()).collect();
        tokio::time::timeout(bound, commits[4].clone().wait()).await.expect("synced in time").unwrap();
        assert_eq!(sync.shared.synced.borrow().through, 10, "the sync covers every commit made before it");
        tokio::task::spawn_blocking(move || drop(sync)).await.unwrap();

        let sync = WalSync::start_unasked(wal, Duration::from_millis(50)).unwrap();
        let _unasked = sync.committed();
        let mut synced = sync.shared.synced.subscribe();
        tokio::time::timeout(bound, synced.wait_for(|progress| progress.through >= 1))
            .await
            .expect("a commit nobody asked for was never synced")
            .unwrap();
        tokio::task::spawn_blocking(move || drop(sync)).await.unwrap();
    }

    /// A commit whose sync failed is not acked (its delivery is redelivered); a later commit
    /// whose sync works is.
    #[tokio::test]
    async fn a_commit_whose_sync_failed_is_not_acked_and_later_ones_are() {
        let dir = tempfile::tempdir().unwrap();
        let wal = dir.path().join("t.db-wal");
        let sync = WalSync::start(wal.clone()).unwrap();
        let bound = Duration::from_secs(10);
        let failed = tokio::time::timeout(bound, sync.committed().wait()).await.expect("decided in time");
        assert!(failed.is_err(), "a commit whose log could not be synced was acked");
        std::fs::write(&wal, b"frames").unwrap();
        let synced = tokio::time::timeout(bound, sync.committed().wait()).await.expect("decided in time");
        assert!(synced.is_ok());
        tokio::task::spawn_blocking(move || drop(sync)).await.unwrap();
    }

    /// Two parts of a batch committed one after the other: their acks wait for the later pass
    /// of the two, whichever part came last (a last part with no history waits for the first's).
    #[test]
    fn both_parts_wait_for_the_later_pass() {
        use futures_util::FutureExt;
        let applied = watch::Sender::new(Applied::default());
        let first = Synced::ALREADY.after_pass(applied.subscribe(), 2);
        let both = first.and(Synced::ALREADY);
        applied.send_replace(Applied { through: 1, synced: None });
        assert!(both.clone().wait().now_or_never().is_none(), "released before its pass");
        applied.send_replace(Applied { through: 2, synced: None });
        assert!(matches!(both.wait().now_or_never(), Some(Ok(()))));
        let (one, two) =
            (Synced::ALREADY.after_pass(applied.subscribe(), 3), Synced::ALREADY.after_pass(applied.subscribe(), 4));
        applied.send_replace(Applied { through: 3, synced: None });
        assert!(two.clone().and(one.clone()).wait().now_or_never().is_none());
        assert!(one.and(two).wait().now_or_never().is_none());
    }

    /// Failures in a row are kept as one range; one after a sync that worked starts another.
    #[test]
    fn failures_in_a_row_are_one_range() {
        let mut progress = Progress::default();
        progress.fail(1..=3);
        progress.fail(4..=4);
        progress.fail(5..=9);
        assert_eq!((progress.failed.clone(), progress.through), (vec![1..=9], 9));
        progress.through = 12;
        progress.fail(13..=14);
        assert_eq!((progress.failed, progress.through), (vec![1..=9, 13..=14], 14));
    }
}
