//! Catching the store up with the settle journal: the intents of messages whose acks are
//! committed but whose process died before deleting them are deleted before intents are read.

use std::sync::Mutex;

use tokio::runtime::Handle;

use super::ledger::CatchUp;
use crate::broker::Journal;
use crate::store::{StoreWriter, Write};
use crate::telemetry;

/// One session's reader of the settle journal, applying it through the store's writer.
pub struct JournalCatchUp {
    /// One catch-up at a time: markers are removed only once applied.
    journal: Mutex<Journal>,
    writer: StoreWriter,
    runtime: Handle,
}

impl JournalCatchUp {
    /// Applies `journal` through `writer`, blocking on `runtime` (the workers' runtime).
    pub fn new(journal: Journal, writer: StoreWriter, runtime: Handle) -> JournalCatchUp {
        JournalCatchUp { journal: Mutex::new(journal), writer, runtime }
    }
}

impl CatchUp for JournalCatchUp {
    fn catch_up(&self) -> bool {
        let journal = self.journal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let applied = self.runtime.block_on(async {
            let taken = journal.take().await.map_err(|err| err.to_string())?;
            let count = taken.ids.len();
            if count > 0 {
                let writes = taken.ids.iter().map(|id| Write::Settled { message_id: id.clone() }).collect();
                let durable = self.writer.send(writes).await.map_err(|err| err.to_string())?;
                durable.wait().await.map_err(|err| err.to_string())?;
                telemetry::journal_applied(count);
            }
            journal.remove(taken).await.map_err(|err| err.to_string())
        });
        match applied {
            Ok(()) => true,
            Err(err) => {
                telemetry::journal_failed(&err);
                false
            }
        }
    }
}
