//! SQLite's history log: a commit logs its timeline and conversation writes as one row (in the
//! ring of `history_ring`), and a thread of its own applies them to the tables in batches.
//!
//! Applied in place, each commit of a few messages dirtied a leaf of the timeline's index by
//! conversation per copy, and the conversation rows, and SQLite writes every dirty page whole into
//! its log: ~37 pages for 9 messages among 20 users. Logged, the commit writes the one row's pages,
//! and a batch of a [`PAUSE`]'s worth of commits dirties each leaf once and upserts each
//! conversation once, with its newest message. What is logged is committed (and synced for the
//! acks) like any write; readers apply the log before they read.

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use super::records::Write;
use crate::clock::Backoff;
use crate::telemetry;

/// How long logged commits gather before the thread applies them. Reads do not wait for it:
/// they apply the log themselves.
const PAUSE: Duration = Duration::from_millis(50);
/// Logged commits applied per transaction at most: the writer's connection is held that long.
pub(super) const MOST_PER_PASS: usize = 64;
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Whether `write` goes through the log: the history's kinds (timeline and conversation list).
/// The others (groups, webhooks, intents) are read by routing and the outbox at once.
pub(super) fn is_logged(write: &Write) -> bool {
    matches!(write, Write::Message { .. } | Write::Status { .. } | Write::Conversation { .. })
}

/// The first byte of a log row in [`Logged`]'s form. The previous version's rows were the bare
/// list of writes, led by its length as a varint; a list is never empty, so that byte is never 0.
const SHARED_BODIES: u8 = 0;

/// A logged write. A message's copies share one body (the sender's and the recipient's of a
/// direct message, every member's of a group's), which the row holds once.
#[derive(Serialize, Deserialize)]
enum Logged<'a> {
    Copy {
        inbox: &'a str,
        conversation: &'a str,
        message_id: &'a str,
        status: i64,
        sent_at: i64,
        /// `None` when the body is the row's previous copy's.
        body: Option<&'a str>,
        conversation_update: Option<bool>,
    },
    Other(Cow<'a, Write>),
}

/// The bytes of a log row: [`SHARED_BODIES`], then the writes, in order, in postcard's compact
/// form (no field names, and the bodies as they are, where JSON text escaped them).
pub(super) fn encode<'a>(writes: impl Iterator<Item = &'a Write>) -> postcard::Result<Vec<u8>> {
    let mut previous: Option<&Arc<str>> = None;
    let logged: Vec<Logged<'_>> = writes
        .map(|write| match write {
            Write::Message { inbox, conversation, message_id, status, sent_at, body, conversation_update } => {
                let shared = previous.is_some_and(|previous| Arc::ptr_eq(previous, body) || previous == body);
                previous = Some(body);
                Logged::Copy {
                    inbox,
                    conversation,
                    message_id,
                    status: *status,
                    sent_at: *sent_at,
                    body: (!shared).then_some(&**body),
                    conversation_update: *conversation_update,
                }
            }
            other => Logged::Other(Cow::Borrowed(other)),
        })
        .collect();
    postcard::to_allocvec(&(SHARED_BODIES, logged))
}

/// The writes of a log row: in [`Logged`]'s form, or as an earlier version logged them (the
/// bare list in postcard, or JSON text), so a log a crash left behind is applied by the next
/// version.
pub(super) fn decode(row: ValueRef<'_>) -> Result<Vec<Write>, String> {
    match row {
        ValueRef::Blob(bytes @ [SHARED_BODIES, ..]) => {
            let (_, logged): (u8, Vec<Logged<'_>>) = postcard::from_bytes(bytes).map_err(|err| err.to_string())?;
            let mut previous: Option<Arc<str>> = None;
            logged.into_iter().map(|logged| written(logged, &mut previous)).collect()
        }
        ValueRef::Blob(bytes) => postcard::from_bytes(bytes).map_err(|err| err.to_string()),
        ValueRef::Text(text) => serde_json::from_slice(text).map_err(|err| err.to_string()),
        other => Err(format!("a log row of type {}", other.data_type())),
    }
}

/// The write `logged` stands for; `previous` is the body of the row's copy before it.
fn written(logged: Logged<'_>, previous: &mut Option<Arc<str>>) -> Result<Write, String> {
    match logged {
        Logged::Copy { inbox, conversation, message_id, status, sent_at, body, conversation_update } => {
            let body = match body {
                Some(body) => Arc::from(body),
                None => previous.clone().ok_or("a copy whose body is its predecessor's comes first")?,
            };
            *previous = Some(Arc::clone(&body));
            Ok(Write::Message {
                inbox: inbox.to_owned(),
                conversation: conversation.to_owned(),
                message_id: message_id.to_owned(),
                status,
                sent_at,
                body,
                conversation_update,
            })
        }
        Logged::Other(write) => Ok(write.into_owned()),
    }
}

/// How far this process applied the log: the commits it logged, and how many of them a pass
/// that emptied the log had seen. A read whose process is not behind skips the writer's lock.
#[derive(Debug)]
pub(super) struct Progress {
    logged: AtomicU64,
    applied: AtomicU64,
}

impl Progress {
    /// At open one commit counts as not applied: a stop or a crash may have left a log.
    pub(super) fn new() -> Progress {
        Progress { logged: AtomicU64::new(1), applied: AtomicU64::new(0) }
    }

    /// A commit logged writes; count it once committed (a pass that began before may apply it
    /// uncounted: a read then makes one pass too many, never one too few).
    fn logged(&self) {
        self.logged.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether commits were logged that no pass has applied yet.
    pub(super) fn behind(&self) -> bool {
        self.pending() > 0
    }

    /// Commits logged since the last pass that emptied the log began (at most that many wait).
    fn pending(&self) -> u64 {
        self.logged.load(Ordering::Acquire).saturating_sub(self.applied.load(Ordering::Acquire))
    }

    /// The commits logged so far; read under the writer's lock, before a pass.
    pub(super) fn mark(&self) -> u64 {
        self.logged.load(Ordering::Acquire)
    }

    /// A pass that began at `mark` left the log empty.
    pub(super) fn emptied(&self, mark: u64) {
        self.applied.fetch_max(mark, Ordering::AcqRel);
    }
}

/// The thread that applies the log; dropping it applies what is left and ends it.
pub(super) struct Indexer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    progress: Arc<Progress>,
    /// Logged commits waiting that end the pause early.
    urgent: u64,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    stop: bool,
    /// The thread waits for a logged commit (it is woken only then: a wake-up is a system call).
    idle: bool,
    /// Enough commits wait (`Shared::urgent`): the pause ends now.
    urgent: bool,
}

impl Indexer {
    /// Starts the thread; `apply` applies up to [`MOST_PER_PASS`] logged commits in one
    /// transaction and says how many it applied (and tells `progress`). It runs whenever
    /// `progress` is behind, so once at start (a log left by a crash), after a pause that ends
    /// early once `urgent` commits wait.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(
        progress: Arc<Progress>,
        urgent: u64,
        apply: impl Fn() -> rusqlite::Result<usize> + Send + 'static,
    ) -> std::io::Result<Indexer> {
        let shared = Arc::new(Shared { progress, urgent, state: Mutex::default(), wake: Condvar::new() });
        let running = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("inboxd-history".into()).spawn(move || running.run(apply))?;
        Ok(Indexer { shared, thread: Some(thread) })
    }

    /// Counts a commit that logged writes (call it once committed) and wakes the thread if idle,
    /// or pausing while enough commits wait.
    pub(super) fn logged(&self) {
        self.shared.progress.logged();
        let urgent = self.shared.progress.pending() >= self.shared.urgent;
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
    /// Waits for logged commits, lets them gather for [`PAUSE`], applies all of them; on stop,
    /// applies what is left and ends. A failed pass is retried with backoff (the log keeps it).
    fn run(&self, apply: impl Fn() -> rusqlite::Result<usize>) {
        loop {
            let stop = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                while !self.progress.behind() && !state.stop {
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
            if !self.apply_all(&apply) || stop {
                return;
            }
        }
    }

    /// Applies passes until the log is empty; `false` when stopped while a pass kept failing (a
    /// failed or panicking pass is retried with backoff: the log keeps it).
    fn apply_all(&self, apply: &impl Fn() -> rusqlite::Result<usize>) -> bool {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let started = Instant::now();
        let mut commits = 0;
        loop {
            let failure = match catch_unwind(AssertUnwindSafe(apply)) {
                Ok(Ok(applied)) => {
                    commits += applied;
                    if applied < MOST_PER_PASS {
                        telemetry::history_applied(commits, started.elapsed());
                        return true;
                    }
                    None
                }
                Ok(Err(err)) => Some(err.to_string()),
                Err(_) => Some("applying the history log panicked".to_owned()),
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
    use std::sync::Arc;
    use std::time::Duration;

    use rusqlite::types::ValueRef;

    use crate::store::apply::tests::{REFUSE_MARKED, message};
    use crate::store::history_ring::SLOTS;
    use crate::store::records::Write;
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

    /// Logged commits not applied yet.
    async fn logged(store: &Store) -> i64 {
        let (rows,): (i64,) = sqlx::query_as(PENDING).fetch_one(store.pool()).await.unwrap();
        rows
    }

    const PENDING: &str = "SELECT (SELECT COUNT(*) FROM inboxd_history_log) + (SELECT COUNT(*) FROM \
         inboxd_history_ring WHERE seq > (SELECT seq FROM inboxd_history_applied))";

    async fn timeline(store: &Store) -> Vec<String> {
        let history = store.messages("app", "bob", "alice", None, 100).await.unwrap();
        history.iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect()
    }

    /// What a worker commits is logged, and the thread applies it with no read asking for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_thread_applies_what_was_logged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let writes = vec![message("bob", "alice", "m1", 150, 1, Some(true))];
        store.apply_part("app", writes.into(), 0..1).await.unwrap().wait().await.unwrap();
        let applied = async {
            loop {
                let (rows,): (i64,) =
                    sqlx::query_as("SELECT COUNT(*) FROM inbox_timeline").fetch_one(store.pool()).await.unwrap();
                if rows == 1 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), applied).await.expect("the log applied in time");
        assert_eq!(logged(&store).await, 0);
    }

    /// A write the tables refuse when the log is applied is left out; the rest of its commit and
    /// the commits after it are applied, and the log empties.
    #[tokio::test]
    async fn a_logged_write_the_tables_refuse_is_left_out_and_the_rest_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        sqlx::query(REFUSE_MARKED).execute(store.pool()).await.unwrap();
        let copy = |id: &str, sent_at| message("bob", "alice", id, 150, sent_at, Some(true));
        store.apply("app", vec![copy("m1", 1), copy("refuse-me", 2), copy("m3", 3)].into()).await.unwrap();
        store.apply("app", vec![copy("m4", 4)].into()).await.unwrap();
        assert_eq!(timeline(&store).await, ["m4", "m3", "m1"]);
        assert_eq!(logged(&store).await, 0);
    }

    /// Commits logged one after another (one pass, as a rule) leave each conversation with its
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

    /// A clean stop (the last handle on the store dropped) applies what is logged, so the file
    /// holds the whole history without the log.
    #[tokio::test]
    async fn a_clean_stop_applies_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let writes = vec![message("bob", "alice", "m1", 150, 1, Some(true))];
        store.apply_part("app", writes.into(), 0..1).await.unwrap().wait().await.unwrap();
        store.close().await;
        tokio::task::spawn_blocking(move || drop(store)).await.unwrap();
        let file = rusqlite::Connection::open(dir.path().join("t.db")).unwrap();
        let count = |sql: &str| -> i64 { file.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!((count("SELECT COUNT(*) FROM inbox_timeline"), count(PENDING)), (1, 0));
    }

    /// A log left by a process that crashed before applying it is applied by the next one,
    /// before anything is read: a commit in the ring, and what earlier versions left in their
    /// log, in each form they logged (this version's row, the bare list in postcard, JSON text).
    #[tokio::test]
    async fn a_log_left_behind_is_applied_before_reads() {
        let (dir, file) = migrated_file().await;
        let m1 = [message("bob", "alice", "m1", 150, 1, Some(true))];
        let m2 = [message("bob", "alice", "m2", 150, 2, Some(true))];
        let m3 = [message("bob", "alice", "m3", 150, 3, Some(true))];
        let m4 = [message("bob", "alice", "m4", 150, 4, Some(true))];
        let append = "INSERT INTO inboxd_history_log (app, writes) VALUES ('app', ?1)";
        file.execute(append, [super::encode(m1.iter()).unwrap()]).unwrap();
        file.execute(append, [postcard::to_allocvec(&m2[..]).unwrap()]).unwrap();
        file.execute(append, [serde_json::to_string(&m3).unwrap()]).unwrap();
        let ring = "INSERT INTO inboxd_history_ring (slot, seq, app, writes) VALUES (1, 1, 'app', ?1)";
        file.execute(ring, [super::encode(m4.iter()).unwrap()]).unwrap();
        drop(file);
        let second = store(&dir).await;
        assert_eq!(timeline(&second).await, ["m4", "m3", "m2", "m1"]);
        let conversations = second.conversations("app", "bob", false, 10).await.unwrap();
        assert_eq!(conversations.len(), 1, "{conversations:?}");
        assert_eq!(logged(&second).await, 0);
    }

    /// A ring left full by a crash, its oldest slot still unapplied, takes the next commit all
    /// the same: whoever applies the oldest first (the thread, or the commit itself), every
    /// message reaches the history in order.
    #[tokio::test]
    async fn a_commit_into_a_full_ring_applies_the_oldest_first() {
        let (dir, file) = migrated_file().await;
        let ring = "INSERT INTO inboxd_history_ring (slot, seq, app, writes) VALUES (?1, ?2, 'app', ?3)";
        for seq in 1..=SLOTS {
            let row = super::encode([message("bob", "alice", &format!("m{seq}"), 150, seq, Some(true))].iter());
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
        assert_eq!(logged(&second).await, 0);
    }

    /// Every logged kind comes back from its row as it went in, from this version's rows and
    /// from the two forms earlier versions logged.
    #[test]
    fn a_row_decodes_to_the_writes_it_was_encoded_from() {
        let writes = [
            message("bob", "alice", "m1", 150, 1, Some(true)),
            message("alice", "bob", "m1", 200, 1, None),
            Write::Status { inbox: "alice".into(), conversation: "bob".into(), message_id: "m1".into(), status: 250 },
            Write::Conversation {
                inbox: "bob".into(),
                conversation: "alice".into(),
                is_new: Some(false),
                archived: None,
            },
            message("carol", "dave", "m2", 150, 2, Some(true)),
        ];
        let row = super::encode(writes.iter()).unwrap();
        assert_eq!(super::decode(ValueRef::Blob(&row)).unwrap(), writes);
        let bare = postcard::to_allocvec(&writes[..]).unwrap();
        assert_eq!(super::decode(ValueRef::Blob(&bare)).unwrap(), writes);
        let text = serde_json::to_string(&writes).unwrap();
        assert_eq!(super::decode(ValueRef::Text(text.as_bytes())).unwrap(), writes);
        assert!(super::decode(ValueRef::Integer(1)).unwrap_err().contains("Integer"));
    }

    /// The copies of one message share a body: the row holds it once, and the decoded copies
    /// share it again.
    #[test]
    fn a_body_shared_by_copies_is_logged_once() {
        let sender = message("bob", "alice", "m1", 100, 1, Some(true));
        let Write::Message { body, .. } = &sender else { unreachable!() };
        let recipient = Write::Message {
            inbox: "alice".into(),
            conversation: "bob".into(),
            message_id: "m1".into(),
            status: 150,
            sent_at: 1,
            body: Arc::clone(body),
            conversation_update: Some(true),
        };
        let row = super::encode([&sender, &recipient].into_iter()).unwrap();
        assert!(row.len() < 2 * body.len(), "{} bytes for a body of {}", row.len(), body.len());
        let decoded = super::decode(ValueRef::Blob(&row)).unwrap();
        assert_eq!(decoded, [sender, recipient]);
        let [Write::Message { body: first, .. }, Write::Message { body: second, .. }] = &decoded[..] else {
            panic!("{decoded:?}")
        };
        assert!(Arc::ptr_eq(first, second));
    }
}
