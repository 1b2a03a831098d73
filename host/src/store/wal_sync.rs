//! Group syncs of SQLite's write-ahead log: the writer commits without waiting for the disk, and
//! one thread syncs the log for every commit made meanwhile; a delivery is acked once synced.
//!
//! A commit is in the OS's file cache when it returns, so a crash of the process loses nothing of
//! it: publishing its copies may go ahead. Only power loss can undo it, so the ack waits for a
//! sync, which on this kind of machine costs as much CPU as the commit itself (~50 µs) and the
//! worker no longer waits for it.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use super::writer::WriterGone;
use crate::clock::Backoff;
use crate::telemetry;

/// The least time between two syncs: commits that come faster share one sync (which costs the
/// same for one commit as for a hundred); acks wait up to this long more.
const PAUSE: Duration = Duration::from_millis(4);
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
    wanted: Mutex<Wanted>,
    wake: Condvar,
    /// The last commit whose writes are on disk.
    synced: watch::Sender<u64>,
}

#[derive(Default)]
struct Wanted {
    /// Commits counted so far; each asks for a sync once its writes are in the log.
    committed: u64,
    stop: bool,
    /// The thread waits for a commit (it is woken only then: a wake-up is a system call).
    idle: bool,
}

/// What an ack waits for: the sync of the commit that made a delivery's writes.
#[derive(Clone, Debug)]
pub enum Synced {
    /// Durable when committed (PostgreSQL), or nothing was written.
    Already,
    Pending {
        synced: watch::Receiver<u64>,
        commit: u64,
    },
}

impl Synced {
    /// Waits until the commit is on disk.
    ///
    /// # Errors
    /// [`WriterGone`] when the store stopped first: the delivery must not be acked.
    pub async fn wait(self) -> Result<(), WriterGone> {
        match self {
            Synced::Already => Ok(()),
            Synced::Pending { mut synced, commit } => {
                synced.wait_for(|done| *done >= commit).await.map(drop).map_err(|_| WriterGone)
            }
        }
    }
}

impl WalSync {
    /// Starts the thread that syncs `wal`, the log of the database the writer commits to.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(wal: PathBuf) -> std::io::Result<WalSync> {
        let shared = Arc::new(Shared {
            wal,
            wanted: Mutex::new(Wanted::default()),
            wake: Condvar::new(),
            synced: watch::Sender::new(0),
        });
        let syncing = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("inboxd-wal-sync".into()).spawn(move || syncing.run())?;
        Ok(WalSync { shared, thread: Some(thread) })
    }

    /// Counts a commit that just returned and asks for its sync; what its acks wait for.
    pub(super) fn committed(&self) -> Synced {
        let (commit, idle) = {
            let mut wanted = self.shared.wanted.lock().unwrap_or_else(PoisonError::into_inner);
            wanted.committed += 1;
            (wanted.committed, wanted.idle)
        };
        if idle {
            self.shared.wake.notify_one();
        }
        Synced::Pending { synced: self.shared.synced.subscribe(), commit }
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
    /// Syncs whenever commits are waiting (at most once per [`PAUSE`]), each sync for all of
    /// them; on stop, syncs once more and ends (what a failed last sync leaves is not acked, and is redelivered).
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
                (wanted.committed, wanted.stop)
            };
            if target > synced {
                match std::fs::File::open(&self.wal).and_then(|wal| wal.sync_data()) {
                    Ok(()) => {
                        telemetry::store_synced(target - synced);
                        synced = target;
                        self.synced.send_replace(synced);
                        backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
                        if !stop {
                            std::thread::sleep(PAUSE);
                        }
                    }
                    Err(err) if !stop => {
                        let delay = backoff.next_delay();
                        telemetry::store_sync_failed(&err, delay);
                        std::thread::sleep(delay);
                        continue;
                    }
                    Err(err) => telemetry::store_sync_failed(&err, Duration::ZERO),
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
        assert!(*sync.shared.synced.borrow() >= 100);
    }

    /// A log that cannot be synced holds its acks back; stopping then tells them the store is
    /// gone (the deliveries are redelivered), and the drop does not hang.
    #[tokio::test]
    async fn acks_wait_while_the_log_cannot_be_synced_and_are_refused_at_stop() {
        let dir = tempfile::tempdir().unwrap();
        let sync = WalSync::start(dir.path().join("missing-wal")).unwrap();
        let commit = sync.committed();
        let waiting = tokio::spawn(commit.wait());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "an ack went ahead of its sync");
        tokio::task::spawn_blocking(move || drop(sync)).await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("ended in time").unwrap();
        assert!(outcome.is_err());
    }
}
