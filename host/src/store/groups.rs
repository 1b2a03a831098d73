//! The group directory routing reads: every stored group of the app, loaded at start, kept
//! current by `groups.update` and by re-reading what other inboxd processes stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Store, StoredGroup};

/// What routing needs to know about stored groups (a fake in unit tests).
pub trait GroupLookup: Send + Sync {
    /// The stored group `id`, if the server side ever announced it.
    fn get(&self, id: &str) -> Option<Arc<StoredGroup>>;
    /// Takes note of a group announced on `groups.update` (it is persisted by the writer).
    fn remember(&self, group: StoredGroup);
}

/// How often the directory re-reads groups other processes stored (several inboxd processes
/// share the work, and each consumes only some of the `groups.update` events).
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How far back a refresh looks before the newest write it saw (commit delays, clock skew).
const REFRESH_OVERLAP_MS: i64 = 10_000;

/// The in-memory directory of one app's stored groups.
#[derive(Default)]
pub struct GroupDirectory {
    /// Each group with the time (ms) of the version held: its store write, or when routing saw it.
    groups: RwLock<HashMap<String, (Arc<StoredGroup>, i64)>>,
    /// The newest `updated_at` read from the store.
    newest: AtomicI64,
}

impl GroupDirectory {
    /// Loads every stored group of `app`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load(store: &Store, app: &str) -> anyhow::Result<GroupDirectory> {
        let directory = GroupDirectory::default();
        directory.newest.store(i64::MIN + REFRESH_OVERLAP_MS, Ordering::Relaxed);
        directory.refresh(store, app).await?;
        Ok(directory)
    }

    /// Takes in the groups stored since the last read (by this process or another).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn refresh(&self, store: &Store, app: &str) -> anyhow::Result<()> {
        let since = self.newest.load(Ordering::Relaxed) - REFRESH_OVERLAP_MS;
        let stored = store.groups_since(app, since).await?;
        let mut groups = self.groups.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (group, updated_at) in stored {
            self.newest.fetch_max(updated_at, Ordering::Relaxed);
            // A version routing saw after this write (its own write may not be committed yet) stays.
            if groups.get(&group.id).is_none_or(|(_, held)| *held < updated_at) {
                groups.insert(group.id.clone(), (Arc::new(group), updated_at));
            }
        }
        Ok(())
    }

    /// Refreshes every [`REFRESH_EVERY`] until `stop`; a failed read is retried next time.
    pub async fn keep_fresh(self: Arc<Self>, store: Store, app: String, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(REFRESH_EVERY) => {}
            }
            if let Err(err) = self.refresh(&store, &app).await {
                tracing::warn!(error = format!("{err:#}"), "re-reading the stored groups failed");
            }
        }
    }

    pub fn len(&self) -> usize {
        self.groups.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl GroupLookup for GroupDirectory {
    fn get(&self, id: &str) -> Option<Arc<StoredGroup>> {
        self.groups.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).map(|(g, _)| Arc::clone(g))
    }

    fn remember(&self, group: StoredGroup) {
        let mut groups = self.groups.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.insert(group.id.clone(), (Arc::new(group), super::records::now_ms()));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{StoreUrl, Write};

    fn group(members: &[&str]) -> StoredGroup {
        let map: serde_json::Map<String, serde_json::Value> =
            members.iter().map(|m| ((*m).to_owned(), json!(1))).collect();
        let body = json!({"uid": "g1", "members": map});
        StoredGroup {
            id: "g1".into(),
            name: None,
            owner: None,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            body,
        }
    }

    #[tokio::test]
    async fn refresh_takes_in_other_writers_groups_but_keeps_newer_routed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        let directory = GroupDirectory::load(&store, "app").await.unwrap();
        assert!(directory.get("g1").is_none());
        // Another process stored the group: the next refresh brings it in.
        store.apply("app", vec![Write::Group(group(&["alice"]))].into()).await.unwrap();
        directory.refresh(&store, "app").await.unwrap();
        assert_eq!(directory.get("g1").unwrap().members, ["alice"]);
        // Routing saw a newer version whose write is not committed yet: an older stored one
        // does not replace it.
        directory.remember(group(&["alice", "bob"]));
        directory.refresh(&store, "app").await.unwrap();
        assert_eq!(directory.get("g1").unwrap().members, ["alice", "bob"]);
        assert_eq!(directory.len(), 1);
    }
}
