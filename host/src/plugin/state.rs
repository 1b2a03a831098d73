//! Host-side state of one plugin, shared by all its instances and kept across reloads:
//! the windowed counters behind `counters.incr` and the bounded set of metric names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// Most distinct counter keys one plugin may hold; a rate limiter keyed by sender needs one
/// per active sender. About 150 bytes each, so the worst case is ~15 MB per plugin. When full,
/// the window that started first gives way (reported once if it was still open).
pub const MAX_COUNTER_KEYS: usize = 100_000;
/// Longest counter key kept; longer keys are truncated (and so share a counter).
pub const MAX_COUNTER_KEY_BYTES: usize = 256;
/// Most distinct metric names one plugin may use; Prometheus labels must stay bounded.
pub const MAX_METRIC_NAMES: usize = 32;
/// Longest metric name accepted.
pub const MAX_METRIC_NAME_BYTES: usize = 64;

/// What the host keeps for one plugin (by name) between messages, instances and reloads.
#[derive(Debug, Default)]
pub struct PluginState {
    counters: Mutex<Windows>,
    metric_names: Mutex<HashSet<String>>,
}

/// Fixed windows: per key, the window's start and the count in it, plus the keys ordered by
/// window start so that a full key space gives up its oldest window in O(log n).
#[derive(Debug, Default)]
struct Windows {
    entries: HashMap<Arc<str>, Window>,
    /// Every key of `entries` once, by (window start, order of arrival).
    by_age: BTreeMap<(u64, u64), Arc<str>>,
    /// Hands out the arrival order that breaks ties between windows of the same start.
    next_seq: u64,
    /// Set once eviction of live windows has been reported, so the log is not flooded.
    overflow_reported: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    length_ms: u64,
    count: u64,
    /// This window's place in `by_age`, with `start_ms`.
    seq: u64,
}

impl Windows {
    /// Removes the window that started first; true if it was still open at `now_ms`.
    fn evict_oldest(&mut self, now_ms: u64) -> bool {
        let Some((_, key)) = self.by_age.pop_first() else { return false };
        self.entries.remove(&key).is_some_and(|w| w.start_ms + w.length_ms > now_ms)
    }

    /// Starts a new window for `key` (new, or its old window is over), filed by its start.
    fn restart(&mut self, key: &str, start_ms: u64, length_ms: u64) -> &mut Window {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key: Arc<str> = match self.entries.get_key_value(key) {
            Some((shared, old)) => {
                let shared = Arc::clone(shared);
                self.by_age.remove(&(old.start_ms, old.seq));
                shared
            }
            None => Arc::from(key),
        };
        self.by_age.insert((start_ms, seq), Arc::clone(&key));
        let fresh = Window { start_ms, length_ms, count: 0, seq };
        let window = self.entries.entry(key).or_insert(fresh);
        *window = fresh;
        window
    }
}

/// The outcome of [`PluginState::incr`]: the count, and whether a live window had to be evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incremented {
    pub count: u64,
    /// True the first time the key space was full of live windows (report it once).
    pub overflowed: bool,
}

impl PluginState {
    /// Counts one event for `key` in the fixed window of `window_ms` that contains `now_ms`.
    pub fn incr(&self, key: &str, window_ms: u64, now_ms: u64) -> Incremented {
        let window_ms = window_ms.max(1);
        let key = truncate(key, MAX_COUNTER_KEY_BYTES);
        let start_ms = now_ms - now_ms % window_ms;
        // A poisoned lock only means another thread panicked mid-update; the counts stay usable.
        let mut guard = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let windows = &mut *guard;
        let mut overflowed = false;
        let full = windows.entries.len() >= MAX_COUNTER_KEYS;
        if full && !windows.entries.contains_key(key) && windows.evict_oldest(now_ms) {
            overflowed = !windows.overflow_reported;
            windows.overflow_reported = true;
        }
        let current = windows.entries.get(key).is_some_and(|w| w.start_ms == start_ms && w.length_ms == window_ms);
        let window = if current {
            windows.entries.get_mut(key).expect("checked just above, under the same lock")
        } else {
            windows.restart(key, start_ms, window_ms)
        };
        window.count += 1;
        Incremented { count: window.count, overflowed }
    }

    /// Whether `name` may be used as a metric name by this plugin (valid, and within the budget).
    pub fn admit_metric(&self, name: &str) -> bool {
        let valid = !name.is_empty()
            && name.len() <= MAX_METRIC_NAME_BYTES
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !valid {
            return false;
        }
        let mut names = self.metric_names.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.contains(name) {
            return true;
        }
        if names.len() >= MAX_METRIC_NAMES {
            return false;
        }
        names.insert(name.to_owned());
        true
    }
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_restarts_in_the_next() {
        let s = PluginState::default();
        assert_eq!(s.incr("alice", 1000, 5_000).count, 1);
        assert_eq!(s.incr("alice", 1000, 5_999).count, 2);
        assert_eq!(s.incr("bob", 1000, 5_999).count, 1);
        assert_eq!(s.incr("alice", 1000, 6_000).count, 1);
    }

    #[test]
    fn key_space_is_bounded() {
        let s = PluginState::default();
        for i in 0..MAX_COUNTER_KEYS {
            s.incr(&i.to_string(), 1000, 0);
        }
        // Expired windows go first, silently.
        assert!(!s.incr("late", 1000, 5_000).overflowed);
        for i in 0..MAX_COUNTER_KEYS - 1 {
            s.incr(&format!("x{i}"), 1000, 5_000);
        }
        let first = s.incr("one-more", 1000, 5_000);
        assert!(first.overflowed);
        assert!(!s.incr("two-more", 1000, 5_000).overflowed);
        let windows = s.counters.lock().unwrap();
        assert!(windows.entries.len() <= MAX_COUNTER_KEYS);
        assert_eq!(windows.entries.len(), windows.by_age.len());
    }

    fn holds(s: &PluginState, key: &str) -> bool {
        s.counters.lock().unwrap().entries.contains_key(key)
    }

    #[test]
    fn a_full_key_space_evicts_the_oldest_window() {
        let s = PluginState::default();
        // Counted at 15 s in a 10 s window: its window started at 10 s.
        s.incr("early-start", 10_000, 15_000);
        // Started at 12 s (open until 14 s); the rest start at 13 s, in this order.
        s.incr("late-start", 2_000, 12_000);
        for i in 0..MAX_COUNTER_KEYS - 2 {
            assert_eq!(s.incr(&format!("k{i}"), 1_000, 13_000).count, 1);
        }
        // All still open at 13.5 s: the oldest goes each time, not an arbitrary one.
        assert!(s.incr("newcomer", 1_000, 13_500).overflowed);
        assert!(!holds(&s, "early-start") && holds(&s, "late-start") && holds(&s, "k0"));
        assert!(!s.incr("another", 1_000, 13_500).overflowed, "reported once only");
        assert!(!holds(&s, "late-start") && holds(&s, "k0"));
        s.incr("third", 1_000, 13_500);
        assert!(!holds(&s, "k0") && holds(&s, "k1") && holds(&s, "newcomer"));
        assert_eq!(s.incr("k1", 1_000, 13_999).count, 2, "a kept window keeps its count");
        let windows = s.counters.lock().unwrap();
        assert_eq!((windows.entries.len(), windows.by_age.len()), (MAX_COUNTER_KEYS, MAX_COUNTER_KEYS));
    }

    #[test]
    fn a_restarted_window_moves_to_the_young_end() {
        let s = PluginState::default();
        s.incr("a", 1_000, 0);
        for i in 0..MAX_COUNTER_KEYS - 1 {
            s.incr(&format!("k{i}"), 1_000, 500);
        }
        // a's next window starts at 1 s, after every other: k0 is now the oldest.
        assert_eq!(s.incr("a", 1_000, 1_000).count, 1);
        s.incr("newcomer", 1_000, 1_000);
        assert!(holds(&s, "a") && !holds(&s, "k0") && holds(&s, "k1"));
    }

    #[test]
    fn metric_names_are_validated_and_bounded() {
        let s = PluginState::default();
        assert!(s.admit_metric("blocked_total"));
        assert!(!s.admit_metric("Bad Name"));
        assert!(!s.admit_metric(""));
        for i in 0..MAX_METRIC_NAMES - 1 {
            assert!(s.admit_metric(&format!("m{i}")));
        }
        assert!(!s.admit_metric("one-too-many"));
        assert!(s.admit_metric("blocked_total"));
    }

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
