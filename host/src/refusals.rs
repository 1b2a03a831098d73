//! The last messages the policy chain refused (rejected or dropped), kept in memory for the
//! moderation console: bounded, oldest forgotten first, bodies only where the operator asked.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// Bytes of a refused message's body kept; the rest is cut (at a character boundary).
pub const MAX_BODY_KEPT: usize = 4096;

/// One refused message, as the console lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    /// When inboxd refused it, ms since the Unix epoch.
    pub at_ms: i64,
    pub message_id: String,
    /// `rejected` or `dropped`.
    pub outcome: &'static str,
    /// The plugin that decided (empty for a drop, which names none).
    pub plugin: String,
    pub code: String,
    /// The plugin's reason, when the sender was told one.
    pub reason: String,
    pub sender: String,
    pub recipient: String,
    /// The message body (JSON text), only with `console.refusal_bodies`.
    pub body: Option<String>,
}

/// The ring of recent refusals, cheap to clone; a capacity of 0 keeps nothing.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    inner: Arc<Ring>,
}

#[derive(Debug, Default)]
struct Ring {
    capacity: usize,
    keep_bodies: bool,
    entries: Mutex<VecDeque<Refused>>,
}

impl Refusals {
    /// Keeps the last `capacity` refusals, with their bodies if `keep_bodies`.
    pub fn new(capacity: usize, keep_bodies: bool) -> Refusals {
        let entries = Mutex::new(VecDeque::with_capacity(capacity.min(1024)));
        Refusals { inner: Arc::new(Ring { capacity, keep_bodies, entries }) }
    }

    /// Whether bodies are kept (callers skip serialising them otherwise).
    pub fn keeps_bodies(&self) -> bool {
        self.inner.keep_bodies && self.inner.capacity > 0
    }

    /// Whether anything is kept at all.
    pub fn is_on(&self) -> bool {
        self.inner.capacity > 0
    }

    /// Remembers `refused`, forgetting the oldest when full; drops the body unless kept.
    pub fn record(&self, mut refused: Refused) {
        if self.inner.capacity == 0 {
            return;
        }
        if !self.inner.keep_bodies {
            refused.body = None;
        }
        if let Some(body) = refused.body.as_mut()
            && body.len() > MAX_BODY_KEPT
        {
            let cut = (0..=MAX_BODY_KEPT).rev().find(|&i| body.is_char_boundary(i)).unwrap_or(0);
            body.truncate(cut);
            body.push('…');
        }
        let mut entries = self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() == self.inner.capacity {
            entries.pop_front();
        }
        entries.push_back(refused);
    }

    /// The refusals kept, newest first.
    pub fn newest_first(&self) -> Vec<Refused> {
        let entries = self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(id: &str) -> Refused {
        Refused {
            at_ms: 1,
            message_id: id.into(),
            outcome: "rejected",
            plugin: "p".into(),
            code: "c".into(),
            reason: String::new(),
            sender: "a".into(),
            recipient: "b".into(),
            body: Some("{}".into()),
        }
    }

    #[test]
    fn keeps_the_newest_within_capacity_and_bodies_only_when_asked() {
        let ring = Refusals::new(2, false);
        for id in ["1", "2", "3"] {
            ring.record(refused(id));
        }
        let kept = ring.newest_first();
        assert_eq!(kept.iter().map(|r| r.message_id.as_str()).collect::<Vec<_>>(), ["3", "2"]);
        assert!(kept.iter().all(|r| r.body.is_none()));
        let with_bodies = Refusals::new(2, true);
        with_bodies.record(refused("1"));
        assert_eq!(with_bodies.newest_first()[0].body.as_deref(), Some("{}"));
        with_bodies.record(Refused { body: Some("é".repeat(MAX_BODY_KEPT)), ..refused("2") });
        let cut = with_bodies.newest_first()[0].body.clone().unwrap();
        assert!(cut.len() <= MAX_BODY_KEPT + '…'.len_utf8() && cut.ends_with('…'), "{} bytes", cut.len());
        let off = Refusals::default();
        off.record(refused("1"));
        assert!(off.newest_first().is_empty() && !off.is_on());
    }
}
