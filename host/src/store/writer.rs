//! The store writer: one task per daemon that batches the writes the workers hand it (one
//! transaction per batch), retries a failed batch with backoff until it commits, then says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Store, Write, records};
use crate::pipeline::Plan;
use crate::telemetry;
use crate::webhook::Webhooks;

/// Requests queued before a worker waits; with the prefetch this bounds what waits on the store.
const QUEUE_DEPTH: usize = 1024;
/// Rows per transaction at most.
const MAX_BATCH_ROWS: usize = 512;
const RETRY_INITIAL: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The writer stopped before the writes were durable (shutdown); the delivery must not be acked.
#[derive(Debug, Error)]
#[error("the store writer stopped before the writes were durable")]
pub struct WriterGone;

struct Request {
    writes: Vec<Write>,
    done: oneshot::Sender<()>,
}

/// Hands writes to the writer task; cheap to clone, one per worker.
#[derive(Clone)]
pub struct StoreWriter {
    requests: mpsc::Sender<Request>,
    webhooks: Option<Arc<Webhooks>>,
}

/// Resolves once the writes it stands for are committed.
pub struct Durable(oneshot::Receiver<()>);

impl Durable {
    /// Waits for the commit.
    ///
    /// # Errors
    /// [`WriterGone`] when the writer stopped first.
    pub async fn wait(self) -> Result<(), WriterGone> {
        self.0.await.map_err(|_| WriterGone)
    }
}

impl StoreWriter {
    /// Starts the writer task for app `app`, with `webhooks` events going into the outbox
    /// (`wake` is notified when some commit); it runs until `stop` is cancelled.
    pub fn spawn(
        store: Store,
        app: String,
        webhooks: Option<Webhooks>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) -> (StoreWriter, JoinHandle<()>) {
        let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
        let task = tokio::spawn(write_batches(store, app, queue, wake, stop));
        (StoreWriter { requests, webhooks: webhooks.map(Arc::new) }, task)
    }

    /// Everything `plan` writes: history, lists, groups, and its webhook events.
    pub fn writes(&self, plan: &Plan) -> Vec<Write> {
        let mut writes = records::writes_for(plan);
        if let Some(webhooks) = &self.webhooks {
            writes.extend(webhooks.writes_for(plan, records::now_ms()));
        }
        writes
    }

    /// Queues `writes` (blocking while the queue is full: call it from a worker thread, not an
    /// async task) and returns what to await before acking.
    ///
    /// # Errors
    /// [`WriterGone`] when the writer has stopped.
    pub fn submit(&self, writes: Vec<Write>) -> Result<Durable, WriterGone> {
        let (done, durable) = oneshot::channel();
        self.requests.blocking_send(Request { writes, done }).map_err(|_| WriterGone)?;
        Ok(Durable(durable))
    }
}

async fn write_batches(
    store: Store,
    app: String,
    mut queue: mpsc::Receiver<Request>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            () = stop.cancelled() => return,
            next = queue.recv() => match next {
                Some(request) => request,
                None => return,
            },
        };
        let mut rows = first.writes.len();
        let mut batch = vec![first];
        while rows < MAX_BATCH_ROWS {
            match queue.try_recv() {
                Ok(request) => {
                    rows += request.writes.len();
                    batch.push(request);
                }
                Err(_) => break,
            }
        }
        let writes: Arc<[Write]> = batch.iter_mut().flat_map(|r| std::mem::take(&mut r.writes)).collect();
        let webhooks = writes.iter().any(|w| matches!(w, Write::Webhook { .. }));
        let started = Instant::now();
        let mut delay = RETRY_INITIAL;
        while let Err(err) = store.apply(&app, Arc::clone(&writes)).await {
            telemetry::store_failed(&err, delay);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RETRY_MAX);
        }
        telemetry::store_committed(rows, started.elapsed());
        if webhooks {
            wake.notify_one();
        }
        for request in batch {
            // The worker may have given up on the delivery (its session ended); nothing to do.
            let _ = request.done.send(());
        }
    }
}
