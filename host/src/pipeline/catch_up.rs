//! Catching the store up with the settle journal: the intents of messages whose acks are
//! committed (the journal's and this process's own) are deleted in bulk, before intents are read
//! and every second meanwhile.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Instant;

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
    journal: Mutex<Reading>,
    writer: StoreWriter,
}

/// The journal, and the outage catching up with it is in, if any.
struct Reading {
    journal: Journal,
    outage: Outage,
}

/// Whether catching up has been failing, since when and how often. During an outage every
/// waiting redelivery tries again every 250 ms: the outage is told once when it begins (a
/// warning) and once when it ends, each attempt between at debug level.
#[derive(Default)]
struct Outage(Option<Failing>);

struct Failing {
    since: Instant,
    attempts: u64,
}

impl Outage {
    /// Tells of a failed attempt; whether it began an outage.
    fn failed(&mut self, err: &dyn Display) -> bool {
        match &mut self.0 {
            Some(failing) => {
                failing.attempts += 1;
                telemetry::journal_still_failing(err, failing.attempts);
                false
            }
            None => {
                telemetry::journal_failed(err);
                self.0 = Some(Failing { since: Instant::now(), attempts: 1 });
                true
            }
        }
    }

    /// Tells of a successful catch-up; the failed attempts of the outage it ended, if any.
    fn succeeded(&mut self) -> Option<u64> {
        let Failing { since, attempts } = self.0.take()?;
        telemetry::journal_recovered(attempts, since.elapsed());
        Some(attempts)
    }
}

impl JournalCatchUp {
    /// Applies `journal` through `writer`, as tasks of `runtime` (the workers' runtime).
    pub fn new(journal: Journal, writer: StoreWriter, runtime: Handle) -> JournalCatchUp {
        let journal = Mutex::new(Reading { journal, outage: Outage::default() });
        JournalCatchUp { shared: Arc::new(Shared { journal, writer }), runtime }
    }
}

impl CatchUp for JournalCatchUp {
    fn catch_up(&self, committed: Vec<String>) -> CaughtUp {
        let shared = Arc::clone(&self.shared);
        let undone = committed.clone();
        match wait_on(&self.runtime, async move { shared.apply(committed).await }) {
            Ok(caught_up) => caught_up,
            Err(stopped) => {
                telemetry::journal_failed(&stopped);
                CaughtUp { deleted: Vec::new(), undeleted: undone, up_to_date: false }
            }
        }
    }
}

impl Shared {
    /// Deletes the intents of `committed` and of the ids the journal's markers name. When the
    /// journal cannot be read, this process's own ids are deleted all the same (their acks are
    /// committed), so they do not pile up in memory while it is unreadable.
    async fn apply(&self, committed: Vec<String>) -> CaughtUp {
        let mut reading = self.journal.lock().await;
        let taken = match reading.journal.take().await {
            Ok(taken) => Some(taken),
            Err(err) => {
                reading.outage.failed(&err);
                None
            }
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
                reading.outage.failed(&err);
                return CaughtUp { deleted: Vec::new(), undeleted: ids, up_to_date: false };
            }
            telemetry::journal_applied(ids.len());
        }
        let up_to_date = match taken {
            Some(taken) => match reading.journal.remove(taken).await {
                Ok(()) => {
                    reading.outage.succeeded();
                    true
                }
                Err(err) => {
                    reading.outage.failed(&err);
                    false
                }
            },
            None => false,
        };
        CaughtUp { deleted: ids, undeleted: Vec::new(), up_to_date }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_told_when_it_begins_and_when_it_ends() {
        let mut outage = Outage::default();
        assert_eq!(outage.succeeded(), None, "no outage, nothing ended");
        assert!(outage.failed(&"noproc"), "the first failure begins one");
        assert!(!outage.failed(&"noproc"));
        assert!(!outage.failed(&"nodedown"));
        assert_eq!(outage.succeeded(), Some(3));
        assert_eq!(outage.succeeded(), None);
        assert!(outage.failed(&"noproc"), "the next failure begins another");
    }
}
