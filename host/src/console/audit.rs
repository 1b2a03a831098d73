//! The console's audit log: every action (who, what, when, on which message, with what
//! result) goes to the daemon's log at `info` (the durable record) and to a bounded in-memory
//! list the console shows.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

use crate::clock::now_ms;

/// Actions the console shows; older ones remain in the daemon's log only.
pub const AUDIT_KEPT: usize = 1000;

/// One action.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Action {
    pub at_ms: i64,
    pub user: String,
    /// `login`, `login-failed`, `logout`, `release`, `discard`, `replay`, `discard-dead`, `reload`.
    pub action: &'static str,
    /// The message ids acted on (empty when none applies).
    pub targets: Vec<String>,
    /// What came of it, for a person.
    pub result: String,
}

/// The in-memory part of the log.
#[derive(Debug, Default)]
pub struct Audit {
    kept: Mutex<VecDeque<Action>>,
}

impl Audit {
    /// Logs and keeps one action.
    pub fn record(&self, user: &str, action: &'static str, targets: Vec<String>, result: impl Into<String>) {
        let result = result.into();
        tracing::info!(user, action, targets = ?targets, result = %result, "console action");
        let entry = Action { at_ms: now_ms(), user: user.to_owned(), action, targets, result };
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if kept.len() == AUDIT_KEPT {
            kept.pop_front();
        }
        kept.push_back(entry);
    }

    /// The kept actions, newest first.
    pub fn newest_first(&self) -> Vec<Action> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_kept_newest_first_and_bounded() {
        let audit = Audit::default();
        for i in 0..=AUDIT_KEPT {
            audit.record("ann", "release", vec![i.to_string()], "released 1");
        }
        let kept = audit.newest_first();
        assert_eq!(kept.len(), AUDIT_KEPT);
        assert_eq!(kept[0].targets, [AUDIT_KEPT.to_string()]);
        assert_eq!(kept.last().unwrap().targets, ["1"]);
    }
}
