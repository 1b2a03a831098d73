//! Catching the store up with the settle journal: the intents of messages whose acks are
//! committed (the journal's and this process's own) are deleted in bulk, before intents are read
//! and every second meanwhile.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Mutex;

use super::ledger::{CatchUp, CaughtUp};
use super::on_runtime::wait_on;
use crate::broker::Journal;
use crate::store::{StoreWriter, Write};
use crate::telemetry;

/// One session's reader of the settle journal, applying it through the store's writer.
pub struct JournalCatchUp {
    shared: Arc<Shared>,
    runtime: Handle,
}

struct Shared {
    /// One catch-up at a time: markers are removed only once applied.
    journal: Mutex<Journal>,
    writer: StoreWriter,
}

impl JournalCatchUp {
    /// Applies `journal` through `writer`, as tasks of `runtime` (the workers' runtime).
    pub fn new(journal: Journal, writer: StoreWriter, runtime: Handle) -> JournalCatchUp {
        JournalCatchUp { shared: Arc::new(Shared { journal: Mutex::new(journal), writer }), runtime }
    }
}

impl CatchUp for JournalCatchUp {
    fn catch_up(&self, committed: Vec<String>) -> CaughtUp {
        let shared = Arc::clone(&self.shared);
        let undone = committed.clone();
        match wait_on(&self.runtime, async move { shared.apply(committed).await }) {
            Ok(caught_up) => caught_up,
            Err(stopped) => CaughtUp { deleted: Vec::new(), undeleted: undone, failure: Some(stopped.to_string()) },
        }
    }
}

impl Shared {
    /// Deletes the intents of `committed` and of the ids the journal's markers name. When the
    /// journal cannot be read, this process's own ids are deleted all the same (their acks are
    /// committed), so they do not pile up in memory while it is unreadable. The failure told is
    /// the first of the attempt.
    async fn apply(&self, committed: Vec<String>) -> CaughtUp {
        let mut journal = self.journal.lock().await;
        let (taken, mut failure) = match journal.take().await {
            Ok(taken) => (Some(taken), None),
            Err(err) => (None, Some(err.to_string())),
        };
        // This process's own ids are in its markers too (unless the journal dropped them).
        // Sorted, the deletes also walk the table's key order.
        let mut ids = committed;
        ids.extend(taken.iter().flat_map(|taken| taken.ids.iter().cloned()));
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let writes = ids.iter().map(|id| Write::Settled { message_id: id.clone() }).collect();
            let deleted = match self.writer.send(writes).await {
                Ok(durable) => durable.wait().await.map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            if let Err(err) = deleted {
                // Still due, this process's ids and the markers' (deleting them twice is harmless).
                return CaughtUp { deleted: Vec::new(), undeleted: ids, failure: failure.or(Some(err)) };
            }
            telemetry::journal_applied(ids.len());
        }
        if let Some(taken) = taken
            && let Err(err) = journal.remove(taken).await
        {
            failure = Some(err.to_string());
        }
        CaughtUp { deleted: ids, undeleted: Vec::new(), failure }
    }
}
