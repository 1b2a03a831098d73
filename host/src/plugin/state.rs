//! Host-side state of one plugin, shared by all its instances and kept across reloads:
//! the windowed counters behind `counters.incr` and the bounded set of metric names.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Most distinct counter keys one plugin may hold; a rate limiter keyed by sender needs one
/// per active sender. About 100 bytes each, so the worst case is ~10 MB per plugin.
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

/// Fixed windows: per key, the window's start and the count in it.
#[derive(Debug, Default)]
struct Windows {
    entries: HashMap<String, Window>,
    /// Set once eviction of live windows has been reported, so the log is not flooded.
    overflow_reported: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: u64,
    length_ms: u64,
    count: u64,
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
        let mut windows = self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut overflowed = false;
        if !windows.entries.contains_key(key) && windows.entries.len() >= MAX_COUNTER_KEYS {
            windows.entries.retain(|_, w| w.start_ms + w.length_ms > now_ms);
            if windows.entries.len() >= MAX_COUNTER_KEYS {
                let victim = windows.entries.keys().next().cloned();
                if let Some(victim) = victim {
                    windows.entries.remove(&victim);
                }
                overflowed = !windows.overflow_reported;
                windows.overflow_reported = true;
            }
        }
        let window =
            windows.entries.entry(key.to_owned()).or_insert(Window { start_ms, length_ms: window_ms, count: 0 });
        if window.start_ms != start_ms || window.length_ms != window_ms {
            *window = Window { start_ms, length_ms: window_ms, count: 0 };
        }
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
        assert!(s.counters.lock().unwrap().entries.len() <= MAX_COUNTER_KEYS);
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
