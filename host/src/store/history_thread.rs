//! SQLite's history thread: it applies the history's writes that commits queued (in
//! `history_queue`) to the tables in batches, a [`PAUSE`]'s worth at a time.
//!
//! Applied in place, each commit of a few messages dirtied a leaf of the timeline's index by
//! conversation per copy, and the conversation rows, and SQLite writes every dirty page whole into
//! its log: ~37 pages for 9 messages among 20 users. Batched, a pass dirties each leaf once and
//! upserts each conversation once, with its newest message. Readers apply the queue before they
//! read; acks wait for the pass that applied their history.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::history_queue::Queue;
use crate::clock::Backoff;
use crate::telemetry;

/// How long queued commits gather before the thread applies them. Reads do not wait for it:
/// they apply the queue themselves.
const PAUSE: Duration = Duration::from_millis(50);
/// Queued commits applied per transaction at most: the writer's connection is held that long.
pub(super) const MOST_PER_PASS: usize = 64;
/// History writes waiting that end the pause early: the default prefetch, until the daemon says
/// its own (see `Store::unacked_at_most`).
const DEFAULT_URGENT: usize = 1024;
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The thread that applies the queued history; dropping it applies what is left and ends it.
pub(super) struct Indexer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    queue: Arc<Queue>,
    /// History writes waiting that end the pause early.
    urgent: AtomicUsize,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    stop: bool,
    /// The thread waits for a queued commit (it is woken only then: a wake-up is a system call).
    idle: bool,
    /// Enough writes wait (`Shared::urgent`): the pause ends now.
    urgent: bool,
}

impl Indexer {
    /// Starts the thread; `apply` applies up to [`MOST_PER_PASS`] queued commits in one
    /// transaction and says how many it applied. It runs whenever `queue` holds commits, after a
    /// pause that ends early once [`DEFAULT_URGENT`] history writes wait (see
    /// [`Indexer::hurry_at`]).
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(
        queue: Arc<Queue>,
        apply: impl FnMut() -> rusqlite::Result<usize> + Send + 'static,
    ) -> std::io::Result<Indexer> {
        let urgent = AtomicUsize::new(DEFAULT_URGENT);
        let shared = Arc::new(Shared { queue, urgent, state: Mutex::default(), wake: Condvar::new() });
        let running = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("inboxd-history".into()).spawn(move || running.run(apply))?;
        Ok(Indexer { shared, thread: Some(thread) })
    }

    /// Ends the pause once `writes` history writes wait.
    pub(super) fn hurry_at(&self, writes: usize) {
        self.shared.urgent.store(writes.max(1), Ordering::Relaxed);
    }

    /// A commit queued history writes, `waiting` of them now: wakes the thread if idle, or
    /// pausing while enough wait.
    pub(super) fn queued(&self, waiting: usize) {
        let urgent = waiting >= self.shared.urgent.load(Ordering::Relaxed);
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        // Once per pause: the flag stays set until the thread's pause ends.
        let hurry = urgent && !state.urgent;
        state.urgent |= urgent;
        if state.idle || hurry {
            self.shared.wake.notify_one();
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner).stop = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Waits for queued commits, lets them gather for [`PAUSE`], applies all of them; on stop,
    /// applies what is left and ends. A failed pass is retried with backoff (the queue keeps it).
    fn run(&self, mut apply: impl FnMut() -> rusqlite::Result<usize>) {
        loop {
            let stop = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                while self.queue.is_empty() && !state.stop {
                    state.idle = true;
                    state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
                    state.idle = false;
                }
                let (mut state, _) = self
                    .wake
                    .wait_timeout_while(state, PAUSE, |state| !state.urgent && !state.stop)
                    .unwrap_or_else(PoisonError::into_inner);
                state.urgent = false;
                state.stop
            };
            if !self.apply_all(&mut apply) || stop {
                return;
            }
        }
    }

    /// Applies passes until the queue is empty; `false` when stopped while a pass kept failing (a
    /// failed or panicking pass is retried with backoff: the queue keeps it).
    fn apply_all(&self, apply: &mut impl FnMut() -> rusqlite::Result<usize>) -> bool {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let started = Instant::now();
        let mut commits = 0;
        loop {
            let failure = match catch_unwind(AssertUnwindSafe(&mut *apply)) {
                Ok(Ok(applied)) => {
                    commits += applied;
                    if applied < MOST_PER_PASS {
                        telemetry::history_applied(commits, started.elapsed());
                        return true;
                    }
                    None
                }
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("applying the queued history panicked".to_owned()),
            };
            if let Some(err) = failure {
                let delay = backoff.next_delay();
                telemetry::store_failed(&err, delay);
                if self.state.lock().unwrap_or_else(PoisonError::into_inner).stop {
                    return false;
                }
                std::thread::sleep(delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::apply::tests::{REFUSE_MARKED, message};
    use crate::store::history_left::{SLOTS, encode};
    use crate::store::{Store, StoreUrl};

    async fn store(dir: &tempfile::TempDir) -> Store {
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        Store::open(&url).await.unwrap().unwrap()
    }

    /// A store's file, migrated, with no process on it: for rows a crash would have left.
    async fn migrated_file() -> (tempfile::TempDir, rusqlite::Connection) {
        let dir = tempfile::tempdir().unwrap();
        let first = store(&dir).await;
        first.close().await;
        drop(first);
        let file = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        (dir, file)
    }

    /// Commits not applied yet: queued in memory, or left by an earlier version.
    async fn unapplied(store: &Store) -> i64 {
        let (rows,): (i64,) = sqlx::query_as(PENDING).fetch_one(store.pool()).await.unwrap();
        let queued = store.sqlite.as_ref().unwrap().history_behind();
        rows + i64::from(queued)
    }

    const PENDING: &str = "SELECT (SELECT COUNT(*) FROM inboxd_history_log) + (SELECT COUNT(*) FROM \
         inboxd_history_ring WHERE seq > (SELECT seq FROM inboxd_history_applied))";

    async fn timeline(store: &Store) -> Vec<String> {
        let history = store.messages("app", "bob", "alice", None, 100).await.unwrap();
        history.iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect()
    }

    /// A commit's history waits in memory, and its ack for the pass that applied it: once the
    /// ack may go, the copy is in the table, with no read having applied the queue.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_ack_waits_for_the_pass_that_applied_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let writes = vec![message("bob", "alice", "m1", 150, 1, Some(true))];
        store.apply_part("app", writes.into(), 0..1).await.unwrap().wait().await.unwrap();
        let (rows,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM inbox_timeline").fetch_one(store.pool()).await.unwrap();
        assert_eq!((rows, unapplied(&store).await), (1, 0));
    }

    /// A write the tables refuse when a pass applies it is left out; the rest of its commit and
    /// the commits after it are applied, and the queue empties.
    #[tokio::test]
    async fn a_queued_write_the_tables_refuse_is_left_out_and_the_rest_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        sqlx::query(REFUSE_MARKED).execute(store.pool()).await.unwrap();
        let copy = |id: &str, sent_at| message("bob", "alice", id, 150, sent_at, Some(true));
        store.apply("app", vec![copy("m1", 1), copy("refuse-me", 2), copy("m3", 3)].into()).await.unwrap();
        store.apply("app", vec![copy("m4", 4)].into()).await.unwrap();
        assert_eq!(timeline(&store).await, ["m4", "m3", "m1"]);
        assert_eq!(unapplied(&store).await, 0);
    }

    /// Commits queued one after another (one pass, as a rule) leave each conversation with its
    /// newest message, a late one that came last included, and every copy in the timeline.
    #[tokio::test]
    async fn the_commits_of_a_pass_leave_each_conversation_with_its_newest_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        for (id, sent_at) in [("m1", 1), ("m3", 3), ("m2", 2)] {
            let copies = vec![
                message("bob", "alice", id, 150, sent_at, Some(true)),
                message("alice", "bob", id, 100, sent_at, Some(true)),
            ];
            store.apply("app", copies.into()).await.unwrap();
        }
        for (inbox, with) in [("bob", "alice"), ("alice", "bob")] {
            let conversations = store.conversations("app", inbox, false, 10).await.unwrap();
            assert_eq!(conversations.len(), 1, "{conversations:?}");
            assert_eq!(
                (conversations[0]["key"].as_str(), conversations[0]["message_id"].as_str()),
                (Some(with), Some("m3"))
            );
        }
        assert_eq!(timeline(&store).await, ["m3", "m2", "m1"]);
    }

    /// A clean stop (the last handle on the store dropped) applies what is queued, so the file
    /// holds the whole history.
    #[tokio::test]
    async fn a_clean_stop_applies_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let writes = vec![message("bob", "alice", "m1", 150, 1, Some(true))];
        // Not waited for: the thread pauses before its pass, the stop comes first as a rule.
        let _ack = store.apply_part("app", writes.into(), 0..1).await.unwrap();
        store.close().await;
        tokio::task::spawn_blocking(move || drop(store)).await.unwrap();
        let file = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        let count = |sql: &str| -> i64 { file.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!((count("SELECT COUNT(*) FROM inbox_timeline"), count(PENDING)), (1, 0));
    }

    /// A log left by an earlier version that crashed before applying it is applied by the next
    /// start, before anything is read: a commit in the ring (version 9), and what versions
    /// before left in their table, in each form they logged (version 9's row, the bare list in
    /// postcard, JSON text).
    #[tokio::test]
    async fn a_log_left_behind_is_applied_before_reads() {
        let (dir, file) = migrated_file().await;
        let m1 = [message("bob", "alice", "m1", 150, 1, Some(true))];
        let m2 = [message("bob", "alice", "m2", 150, 2, Some(true))];
        let m3 = [message("bob", "alice", "m3", 150, 3, Some(true))];
        let m4 = [message("bob", "alice", "m4", 150, 4, Some(true))];
        let append = "INSERT INTO inboxd_history_log (app, writes) VALUES ('app', ?1)";
        file.execute(append, [encode(m1.iter()).unwrap()]).unwrap();
        file.execute(append, [postcard::to_allocvec(&m2[..]).unwrap()]).unwrap();
        file.execute(append, [serde_json::to_string(&m3).unwrap()]).unwrap();
        let ring = "INSERT INTO inboxd_history_ring (slot, seq, app, writes) VALUES (1, 1, 'app', ?1)";
        file.execute(ring, [encode(m4.iter()).unwrap()]).unwrap();
        drop(file);
        let second = store(&dir).await;
        assert_eq!(timeline(&second).await, ["m4", "m3", "m2", "m1"]);
        let conversations = second.conversations("app", "bob", false, 10).await.unwrap();
        assert_eq!(conversations.len(), 1, "{conversations:?}");
        assert_eq!(unapplied(&second).await, 0);
    }

    /// A ring left full by a crash of version 9 is applied at the next start, in order, and the
    /// commits after it come after it.
    #[tokio::test]
    async fn a_full_ring_left_behind_is_applied_in_order() {
        let (dir, file) = migrated_file().await;
        let ring = "INSERT INTO inboxd_history_ring (slot, seq, app, writes) VALUES (?1, ?2, 'app', ?3)";
        for seq in 1..=SLOTS {
            let row = encode([message("bob", "alice", &format!("m{seq}"), 150, seq, Some(true))].iter());
            file.execute(ring, (seq % SLOTS, seq, row.unwrap())).unwrap();
        }
        drop(file);
        let second = store(&dir).await;
        let last = SLOTS + 1;
        let writes = vec![message("bob", "alice", &format!("m{last}"), 150, last, Some(true))];
        second.apply_part("app", writes.into(), 0..1).await.unwrap().wait().await.unwrap();
        let history = second.messages("app", "bob", "alice", None, 1000).await.unwrap();
        let ids: Vec<&str> = history.iter().map(|m| m["message_id"].as_str().unwrap()).collect();
        let expected: Vec<String> = (1..=last).rev().map(|seq| format!("m{seq}")).collect();
        assert_eq!(ids, expected);
        let conversations = second.conversations("app", "bob", false, 10).await.unwrap();
        assert_eq!(conversations[0]["message_id"].as_str(), Some(format!("m{last}").as_str()));
        assert_eq!(unapplied(&second).await, 0);
    }
}
