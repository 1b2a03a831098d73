//! Catching the store up with the settle journal: the intents of messages whose acks are
//! committed (the journal's and this process's own) are deleted in bulk, before intents are read
//! and every second meanwhile.

use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::sync::Mutex;

use super::ledger::CatchUp;
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
    fn catch_up(&self, committed: Vec<String>) -> Result<Vec<String>, Vec<String>> {
        let shared = Arc::clone(&self.shared);
        let undone = committed.clone();
        match wait_on(&self.runtime, async move { shared.apply(committed).await }) {
            Ok(applied) => applied,
            Err(stopped) => Err(failed(&stopped, undone)),
        }
    }
}

impl Shared {
    async fn apply(&self, committed: Vec<String>) -> Result<Vec<String>, Vec<String>> {
        let mut journal = self.journal.lock().await;
        let mut taken = match journal.take().await {
            Ok(taken) => taken,
            Err(err) => return Err(failed(&err, committed)),
        };
        // This process's own ids are in its markers too (unless the journal dropped them).
        // Sorted, the deletes also walk the table's key order.
        let mut ids = committed;
        ids.append(&mut taken.ids);
        ids.sort_unstable();
        ids.dedup();
        if !ids.is_empty() {
            let writes = ids.iter().map(|id| Write::Settled { message_id: id.clone() }).collect();
            let deleted = match self.writer.send(writes).await {
                Ok(durable) => durable.wait().await.map_err(|err| err.to_string()),
                Err(err) => Err(err.to_string()),
            };
            if let Err(err) = deleted {
                return Err(failed(&err, ids));
            }
            telemetry::journal_applied(ids.len());
        }
        match journal.remove(taken).await {
            Ok(()) => Ok(ids),
            Err(err) => Err(failed(&err, ids)),
        }
    }
}

/// Logs a catch-up that failed, and hands back the ids it was to delete.
fn failed(err: &dyn std::fmt::Display, ids: Vec<String>) -> Vec<String> {
    telemetry::journal_failed(err);
    ids
}
