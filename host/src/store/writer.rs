//! The store writer: one task per daemon that batches the writes the workers hand it (one
//! transaction per batch), retries a batch the database cannot take now, splits one it refuses.
//! With SQLite, a worker's staged batch is committed the same way on the worker's own thread.
//!
//! A failure is either transient (connection lost, pool timeout, a busy database, I/O: the batch
//! is retried with backoff, and acks wait; a connection the database terminated is retried at
//! the backoff's first step each time) or a refusal of the data ([`ApplyError::is_refusal`]):
//! then the batch is bisected by delivery until the refused deliveries are alone, the rest is
//! committed, and each refused delivery learns why ([`NotDurable::Refused`]), to be dead-lettered.

use std::future::{Future, ready};
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::runtime::Handle;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::sqlite::SqliteWriter;
use super::wal_sync::Synced;
use super::{ApplyError, Store, Write};
use crate::clock::Backoff;
use crate::telemetry;

/// Hand-overs (of one request or a worker's batch of them) queued before a worker waits; with
/// the prefetch this bounds what waits on the store.
const QUEUE_DEPTH: usize = 1024;
/// Rows per transaction at most.
const MAX_BATCH_ROWS: usize = 512;
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The dead-letter reason (`x-inboxd-reason`) of a delivery whose writes the store refused.
pub const STORE_REFUSED: &str = "store-refused";

/// The writer stopped before the writes were durable (shutdown); the delivery must not be acked.
#[derive(Debug, Error)]
#[error("the store writer stopped before the writes were durable")]
pub struct WriterGone;

/// Why a delivery's writes are not durable.
#[derive(Debug, Error)]
pub enum NotDurable {
    /// Shutdown: leave the delivery to the broker (it is redelivered).
    #[error(transparent)]
    Gone(#[from] WriterGone),
    /// The database refuses these writes (the database's message): no retry can store them.
    #[error("the store refused the writes: {0}")]
    Refused(String),
}

/// Each request's fate: committed, with the sync its ack waits for, or `Err(the database's
/// message)` when its writes were refused.
type Outcome = Result<Synced, String>;

struct Request {
    writes: Vec<Write>,
    done: oneshot::Sender<Outcome>,
}

/// Hands writes to the writer task; cheap to clone, one per worker.
#[derive(Clone)]
pub struct StoreWriter {
    /// Requests handed over together arrive together, so they are committed together.
    requests: mpsc::Sender<Vec<Request>>,
    /// With SQLite: what commits a worker's batch on its own thread ([`StoreWriter::submit_all`]).
    here: Option<Arc<Here>>,
}

/// Commits on the calling thread, through SQLite's one writer connection (which serialises
/// them with the writer task's commits): a batch the writer task would commit while the worker
/// waits costs no hand-over to the task, to a blocking thread and back.
struct Here {
    sqlite: Arc<SqliteWriter>,
    app: String,
    wake: Arc<Notify>,
    stop: CancellationToken,
    /// For the retries' backoff (a worker's thread is not an async one).
    runtime: Handle,
}

/// Resolves once the writes it stands for are committed, or refused.
pub struct Durable(oneshot::Receiver<Outcome>);

impl Durable {
    /// Waits for the commit, and for its sync.
    ///
    /// # Errors
    /// [`NotDurable::Gone`] when the writer stopped first, [`NotDurable::Refused`] when the
    /// database refused these writes (the others of the batch are committed).
    pub async fn wait(self) -> Result<(), NotDurable> {
        Ok(outcome(self.0.await)?.wait().await?)
    }

    /// Waits for the commit only, blocking the thread (a worker's, never an async task's): a
    /// crash of the process can no longer lose it, so its copies may be published. Returns what
    /// the delivery's ack must wait for.
    ///
    /// # Errors
    /// As [`Durable::wait`].
    pub fn wait_blocking(self) -> Result<Synced, NotDurable> {
        outcome(self.0.blocking_recv())
    }
}

fn outcome(answer: Result<Outcome, oneshot::error::RecvError>) -> Result<Synced, NotDurable> {
    match answer {
        Ok(Ok(synced)) => Ok(synced),
        Ok(Err(refusal)) => Err(NotDurable::Refused(refusal)),
        Err(_) => Err(NotDurable::Gone(WriterGone)),
    }
}

impl StoreWriter {
    /// Starts the writer task for app `app` (`wake` is notified after a commit that wrote
    /// webhook outbox rows); it runs until `stop` is cancelled.
    pub fn spawn(
        store: Store,
        app: String,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> (StoreWriter, JoinHandle<()>) {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let here = store.sqlite_writer().map(|sqlite| {
            let (sqlite, app, wake, stop) = (Arc::clone(sqlite), app.clone(), Arc::clone(&wake), stop.clone());
            Arc::new(Here { sqlite, app, wake, stop, runtime: Handle::current() })
        });
        let task = tokio::spawn(write_batches(store, app, queue, wake, stop));
        (StoreWriter { requests, here }, task)
    }

    /// Queues `writes` (blocking while the queue is full: call it from a worker thread, not an
    /// async task) and returns what to await before acking.
    ///
    /// # Errors
    /// [`WriterGone`] when the writer has stopped.
    pub fn submit(&self, writes: Vec<Write>) -> Result<Durable, WriterGone> {
        let (request, durable) = request(writes);
        self.requests.blocking_send(vec![request]).map_err(|_| WriterGone)?;
        Ok(durable)
    }

    /// Commits the writes of several deliveries in one transaction (a worker's staged batch,
    /// handed over in one go rather than one by one, which would have the writer start on the
    /// first while the rest are still being routed); each keeps its own outcome (a refused one
    /// is told apart). Returns what to await for each, in order. With SQLite the batch is
    /// committed right here, and the calling thread blocks until it is; otherwise the writer
    /// task commits it (blocking like [`StoreWriter::submit`] while the queue is full). Call it
    /// from a worker thread, not an async task.
    ///
    /// # Errors
    /// [`WriterGone`] when the writer has stopped.
    pub fn submit_all(&self, writes: Vec<Vec<Write>>) -> Result<Vec<Durable>, WriterGone> {
        let (requests, durable) = writes.into_iter().map(request).unzip();
        match &self.here {
            Some(here) => here.commit(requests),
            None => self.requests.blocking_send(requests).map_err(|_| WriterGone)?,
        }
        Ok(durable)
    }

    /// Like [`StoreWriter::submit`], from an async task (waits while the queue is full).
    ///
    /// # Errors
    /// [`WriterGone`] when the writer has stopped.
    pub async fn send(&self, writes: Vec<Write>) -> Result<Durable, WriterGone> {
        let (request, durable) = request(writes);
        self.requests.send(vec![request]).await.map_err(|_| WriterGone)?;
        Ok(durable)
    }
}

/// A request for `writes`, and what resolves once they are committed.
fn request(writes: Vec<Write>) -> (Request, Durable) {
    let (done, durable) = oneshot::channel();
    (Request { writes, done }, Durable(durable))
}

async fn write_batches(
    store: Store,
    app: String,
    mut queue: mpsc::Receiver<Vec<Request>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let mut batch = tokio::select! {
            () = stop.cancelled() => return,
            next = queue.recv() => match next {
                Some(requests) => requests,
                None => return,
            },
        };
        let mut rows: usize = batch.iter().map(|request| request.writes.len()).sum();
        while rows < MAX_BATCH_ROWS {
            match queue.try_recv() {
                Ok(requests) => {
                    rows += requests.iter().map(|request| request.writes.len()).sum::<usize>();
                    batch.extend(requests);
                }
                Err(_) => break,
            }
        }
        let (store, app) = (&store, app.as_str());
        let apply = |writes, rows| store.apply_part(app, writes, rows);
        if !write_batch(batch, apply, &wake, &stop).await {
            return;
        }
    }
}

impl Here {
    /// Commits `batch` on this thread and answers its requests (see [`write_batch`]); when the
    /// daemon stops first, they are dropped unanswered (their deliveries stay unacked).
    fn commit(&self, batch: Vec<Request>) {
        let apply = |writes: Arc<[Write]>, rows: Range<usize>| {
            let applied = catch_unwind(AssertUnwindSafe(|| self.sqlite.apply(&self.app, &writes, rows)));
            ready(applied.map_err(|_| ApplyError::Panicked).and_then(|applied| Ok(applied?)))
        };
        self.runtime.block_on(write_batch(batch, apply, &self.wake, &self.stop));
    }
}

/// Commits the writes of `batch` with `apply` (see [`commit`]), answers each request with its
/// outcome and wakes the outbox (`wake`) when webhook rows were committed. `false` when `stop`
/// came first (nothing is answered then).
async fn write_batch<F, Fut>(mut batch: Vec<Request>, apply: F, wake: &Notify, stop: &CancellationToken) -> bool
where
    F: FnMut(Arc<[Write]>, Range<usize>) -> Fut,
    Fut: Future<Output = Result<Synced, ApplyError>>,
{
    // Each request's rows, in order, within the one shared array.
    let mut spans = Vec::with_capacity(batch.len());
    let mut end = 0;
    for request in &batch {
        spans.push(end..end + request.writes.len());
        end += request.writes.len();
    }
    let writes: Arc<[Write]> = batch.iter_mut().flat_map(|r| std::mem::take(&mut r.writes)).collect();
    let webhooks = writes.iter().any(|w| matches!(w, Write::Webhook { .. }));
    let started = Instant::now();
    let Some((outcomes, synced)) = commit(apply, &writes, &spans, stop).await else { return false };
    let committed = spans.iter().zip(&outcomes).filter(|(_, o)| o.is_ok()).map(|(s, _)| s.len()).sum();
    telemetry::store_committed(committed, started.elapsed());
    if webhooks {
        wake.notify_one();
    }
    for (request, outcome) in batch.into_iter().zip(outcomes) {
        // The worker may have given up on the delivery (its session ended); nothing to do.
        let _ = request.done.send(outcome.map(|()| synced.clone()));
    }
    true
}

/// Commits `writes`, whose requests span `spans`, with `apply` (one transaction per call, on the
/// rows it is given): all in one transaction when the database takes them, retrying with backoff
/// while it cannot; when it refuses them, in halves (by request, in order) until each refused
/// request is alone. Returns each request's outcome and what their acks wait for (the latest
/// commit's sync and history pass, which cover the others'), or `None` when `stop` came first
/// (nothing is answered then: the deliveries stay unacked).
async fn commit<F, Fut>(
    mut apply: F,
    writes: &Arc<[Write]>,
    spans: &[Range<usize>],
    stop: &CancellationToken,
) -> Option<(Vec<Result<(), String>>, Synced)>
where
    F: FnMut(Arc<[Write]>, Range<usize>) -> Fut,
    Fut: Future<Output = Result<Synced, ApplyError>>,
{
    let mut outcomes = vec![Ok(()); spans.len()];
    let mut synced = Synced::ALREADY;
    // Ranges of requests still to commit; the last is next (the first half is pushed last).
    let mut parts: Vec<Range<usize>> = Vec::new();
    parts.push(0..spans.len());
    while let Some(part) = parts.pop() {
        if part.is_empty() {
            continue;
        }
        let rows = spans[part.start].start..spans[part.end - 1].end;
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            match apply(Arc::clone(writes), rows.clone()).await {
                Ok(part) => {
                    synced = synced.and(part);
                    break;
                }
                Err(err) if err.is_refusal() => {
                    if part.len() == 1 {
                        telemetry::store_refused(&err);
                        outcomes[part.start] = Err(refusal(&err));
                    } else {
                        let middle = part.start + part.len() / 2;
                        telemetry::store_batch_split(part.len(), &err);
                        parts.push(middle..part.end);
                        parts.push(part.start..middle);
                    }
                    break;
                }
                Err(err) => {
                    if err.is_terminated_connection() {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    telemetry::store_failed(&err, delay);
                    tokio::select! {
                        () = stop.cancelled() => return None,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    Some((outcomes, synced))
}

/// The database's own message for a refusal (sqlx prefixes its "error returned from database").
fn refusal(err: &ApplyError) -> String {
    match err {
        ApplyError::Sql(sqlx::Error::Database(db)) => db.message().to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::StoreUrl;
    use crate::store::apply::tests::REFUSE_MARKED_INTENT;

    fn copy(inbox: &str, conversation: &str, id: &str) -> Write {
        Write::Message {
            inbox: inbox.into(),
            conversation: conversation.into(),
            message_id: id.into(),
            status: 150,
            sent_at: 1,
            body: json!({"message_id": id}).to_string().into(),
            conversation_update: Some(true),
        }
    }

    /// A delivery's writes: the intent and both copies of message `id`.
    fn delivery(id: &str) -> Vec<Write> {
        let intent = Write::Intent { fingerprint: 1, message_id: id.into(), created_at: 1 };
        vec![intent, copy("alice", "bob", id), copy("bob", "alice", id)]
    }

    async fn refusing_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        sqlx::query(REFUSE_MARKED_INTENT).execute(store.pool()).await.unwrap();
        (dir, store)
    }

    async fn stored_ids(store: &Store) -> Vec<String> {
        let history = store.messages("app", "bob", "alice", None, 100).await.unwrap();
        let mut ids: Vec<String> = history.iter().map(|m| m["message_id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    }

    /// A PostgreSQL error with SQLSTATE `code`, as the server sends it.
    #[derive(Debug, Error)]
    #[error("{0}")]
    struct ServerError(&'static str, &'static str);

    impl sqlx::error::DatabaseError for ServerError {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.1.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// How long (in the runtime's paused time) a batch takes to commit when its first `failures`
    /// attempts fail with `failure`.
    async fn committed_after(failures: usize, failure: fn() -> ApplyError) -> Duration {
        let writes: Arc<[Write]> = delivery("m").into();
        let mut attempts = 0;
        let apply = |_, _| {
            attempts += 1;
            ready(if attempts > failures { Ok(Synced::ALREADY) } else { Err(failure()) })
        };
        let spans = [writes.len()].map(|rows| 0..rows);
        let started = tokio::time::Instant::now();
        let (outcomes, _) = commit(apply, &writes, &spans, &CancellationToken::new()).await.unwrap();
        assert_eq!(outcomes, [Ok(())]);
        started.elapsed()
    }

    /// Connections the database terminates (a pooler, an administrator, a failover) are retried
    /// at the first step each time; failures to reach it back off further and further.
    #[tokio::test(start_paused = true)]
    async fn a_terminated_connection_is_retried_at_the_first_step() {
        let terminated =
            || ApplyError::Sql(sqlx::Error::Database(Box::new(ServerError("terminating connection", "57P01"))));
        let unreachable = || ApplyError::Sql(sqlx::Error::PoolTimedOut);
        assert!(terminated().is_terminated_connection() && !terminated().is_refusal());
        assert!(!unreachable().is_terminated_connection());
        // Ten retries, each at most the first step.
        assert!(committed_after(10, terminated).await <= RETRY_INITIAL * 10);
        // The steps double up to the last one: 50 ms at the least, then 100, 200, … 2.5 s.
        assert!(
            committed_after(10, unreachable).await
                >= Duration::from_millis(50 * (1 + 2 + 4 + 8 + 16 + 32)) + RETRY_MAX / 2 * 4
        );
    }

    #[tokio::test]
    async fn a_refused_batch_is_bisected_to_the_refused_deliveries() {
        let (_dir, store) = refusing_store().await;
        let ids = ["m0", "m1", "refuse-me-2", "m3", "m4", "m5", "m6", "refuse-me-7", "m8"];
        let mut spans = Vec::new();
        let mut writes = Vec::new();
        for id in ids {
            let rows = delivery(id);
            spans.push(writes.len()..writes.len() + rows.len());
            writes.extend(rows);
        }
        let writes: Arc<[Write]> = writes.into();
        let apply = |writes, rows| store.apply_part("app", writes, rows);
        let (outcomes, _) = commit(apply, &writes, &spans, &CancellationToken::new()).await.unwrap();
        for (id, outcome) in ids.iter().zip(&outcomes) {
            match outcome {
                Ok(()) => assert!(!id.starts_with("refuse-me"), "{id} was committed"),
                Err(message) => {
                    assert!(id.starts_with("refuse-me"), "{id} was refused: {message}");
                    assert!(message.contains("marked refused"), "{message}");
                }
            }
        }
        assert_eq!(stored_ids(&store).await, ["m0", "m1", "m3", "m4", "m5", "m6", "m8"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_refused_delivery_learns_why_and_the_others_commit() {
        let (_dir, store) = refusing_store().await;
        let stop = CancellationToken::new();
        let (writer, task) = StoreWriter::spawn(store.clone(), "app".into(), Arc::new(Notify::new()), stop.clone());
        let durables =
            tokio::task::spawn_blocking(move || ["a", "refuse-me", "b"].map(|id| writer.submit(delivery(id)).unwrap()))
                .await
                .unwrap();
        let [a, refused, b] = durables;
        a.wait().await.unwrap();
        b.wait().await.unwrap();
        match refused.wait().await {
            Err(NotDurable::Refused(message)) => assert!(message.contains("marked refused"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(stored_ids(&store).await, ["a", "b"]);
        stop.cancel();
        task.await.unwrap();
    }

    /// A worker's batch is committed on the worker's thread with SQLite: answered when
    /// `submit_all` returns, the refused delivery told apart as through the writer task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_committed_on_the_calling_thread_tells_the_refused_delivery_apart() {
        let (_dir, store) = refusing_store().await;
        let stop = CancellationToken::new();
        let (writer, task) = StoreWriter::spawn(store.clone(), "app".into(), Arc::new(Notify::new()), stop.clone());
        let batch = ["a", "refuse-me", "b"].map(delivery).to_vec();
        let mut durables = tokio::task::spawn_blocking(move || {
            let durables = writer.submit_all(batch).unwrap();
            durables.into_iter().map(|mut durable| durable.0.try_recv().map(|o| o.map(drop))).collect::<Vec<_>>()
        })
        .await
        .unwrap()
        .into_iter();
        assert_eq!(durables.next().unwrap(), Ok(Ok(())));
        let refused = durables.next().unwrap().unwrap().unwrap_err();
        assert!(refused.contains("marked refused"), "{refused}");
        assert_eq!(durables.next().unwrap(), Ok(Ok(())));
        assert_eq!(stored_ids(&store).await, ["a", "b"]);
        stop.cancel();
        task.await.unwrap();
    }
}
