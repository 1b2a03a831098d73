//! What the moderation console sees of hot reload: the chain configuration in force, when it
//! loaded, the last reloads with their outcome, and a way to ask for a reload.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use tokio::sync::Notify;

use super::PluginsConfig;
use crate::clock::now_ms;

/// Reloads remembered; older ones are forgotten.
pub const RELOADS_KEPT: usize = 20;

/// One reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadRecord {
    /// When it finished, ms since the Unix epoch.
    pub at_ms: i64,
    /// `sighup`, `file-change` or `console`.
    pub trigger: &'static str,
    /// Plugins in the new chain; `None` when the reload failed (the old chain runs on).
    pub plugins: Option<usize>,
    /// Why it failed, with its whole chain of causes.
    pub error: Option<String>,
    pub elapsed_ms: u64,
}

/// The reload history and the console's reload requests, shared with the reloader.
#[derive(Debug, Clone)]
pub struct Reloads {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    requested: Notify,
}

#[derive(Debug)]
struct State {
    current: PluginsConfig,
    loaded_at_ms: i64,
    recent: VecDeque<ReloadRecord>,
}

impl Reloads {
    /// The history of a chain just loaded from `current`.
    pub fn new(current: PluginsConfig) -> Reloads {
        let state = State { current, loaded_at_ms: now_ms(), recent: VecDeque::with_capacity(RELOADS_KEPT) };
        Reloads { inner: Arc::new(Shared { state: Mutex::new(state), requested: Notify::new() }) }
    }

    /// The running chain's configuration and when it was loaded.
    pub fn current(&self) -> (PluginsConfig, i64) {
        let state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.current.clone(), state.loaded_at_ms)
    }

    /// The last reloads, newest first.
    pub fn recent(&self) -> Vec<ReloadRecord> {
        let state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.recent.iter().rev().cloned().collect()
    }

    /// Asks the reloader for a reload (several requests before it starts make one).
    pub fn request(&self) {
        self.inner.requested.notify_one();
    }

    /// Resolves when a reload was requested.
    pub(super) async fn requested(&self) {
        self.inner.requested.notified().await;
    }

    /// Records a reload; `loaded` is the configuration of the new chain when it succeeded.
    pub(super) fn record(&self, mut record: ReloadRecord, loaded: Option<PluginsConfig>) {
        let mut state = self.inner.state.lock().unwrap_or_else(PoisonError::into_inner);
        record.at_ms = now_ms();
        if let Some(loaded) = loaded {
            state.current = loaded;
            state.loaded_at_ms = record.at_ms;
        }
        if state.recent.len() == RELOADS_KEPT {
            state.recent.pop_front();
        }
        state.recent.push_back(record);
    }
}
