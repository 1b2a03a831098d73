//! An outage of the settle journal as the ledger lives through it: since when catching up fails,
//! how often, and whether redeliveries were told they get new ids; each told once, not per retry.

use std::time::Instant;

use crate::telemetry;

/// Whether catching up with the journal has been failing. During an outage every waiting
/// redelivery tries again every 250 ms: the outage is told once when it begins (a warning), once
/// when redeliveries start getting new ids and once when it ends, each attempt between at debug
/// level.
#[derive(Debug, Default)]
pub(super) struct Outage(Option<Failing>);

#[derive(Debug)]
struct Failing {
    since: Instant,
    attempts: u64,
    /// Whether a redelivery has been told it gets a new id.
    new_ids_told: bool,
}

impl Outage {
    /// Tells of a failed catch-up; whether it began an outage.
    pub(super) fn failed(&mut self, err: &str) -> bool {
        match &mut self.0 {
            Some(failing) => {
                failing.attempts += 1;
                telemetry::journal_still_failing(&err, failing.attempts);
                false
            }
            None => {
                telemetry::journal_failed(&err);
                self.0 = Some(Failing { since: Instant::now(), attempts: 1, new_ids_told: false });
                true
            }
        }
    }

    /// Tells of a successful catch-up; the failed attempts of the outage it ended, if any.
    pub(super) fn succeeded(&mut self) -> Option<u64> {
        let Failing { since, attempts, .. } = self.0.take()?;
        telemetry::journal_recovered(attempts, since.elapsed());
        Some(attempts)
    }

    /// When the outage began (`None`: there is none).
    pub(super) fn since(&self) -> Option<Instant> {
        self.0.as_ref().map(|failing| failing.since)
    }

    /// Marks that a redelivery was told it gets a new id; whether it is the first of the outage.
    pub(super) fn tell_new_id(&mut self) -> bool {
        self.0.as_mut().is_some_and(|failing| !std::mem::replace(&mut failing.new_ids_told, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_told_when_it_begins_when_new_ids_start_and_when_it_ends() {
        let mut outage = Outage::default();
        assert_eq!((outage.succeeded(), outage.since()), (None, None), "no outage, nothing ended");
        assert!(!outage.tell_new_id(), "no outage, no new ids");
        assert!(outage.failed("noproc"), "the first failure begins one");
        assert!(outage.since().is_some());
        assert!(!outage.failed("noproc"));
        assert!(outage.tell_new_id(), "the first new id is told");
        assert!(!outage.tell_new_id());
        assert!(!outage.failed("nodedown"));
        assert_eq!(outage.succeeded(), Some(3));
        assert_eq!((outage.succeeded(), outage.since()), (None, None));
        assert!(outage.failed("noproc"), "the next failure begins another");
        assert!(outage.tell_new_id(), "and its first new id is told again");
    }
}
