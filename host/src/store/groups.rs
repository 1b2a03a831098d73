//! The group directory routing reads: every stored group of the app, loaded at start and kept
//! current by `groups.update`, so a group message never waits for a database read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{Store, StoredGroup};

/// What routing needs to know about stored groups (a fake in unit tests).
pub trait GroupLookup: Send + Sync {
    /// The stored group `id`, if the server side ever announced it.
    fn get(&self, id: &str) -> Option<Arc<StoredGroup>>;
    /// Takes note of a group announced on `groups.update` (it is persisted by the writer).
    fn remember(&self, group: StoredGroup);
}

/// The in-memory directory of one app's stored groups.
#[derive(Default)]
pub struct GroupDirectory {
    groups: RwLock<HashMap<String, Arc<StoredGroup>>>,
}

impl GroupDirectory {
    /// Loads every stored group of `app`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load(store: &Store, app: &str) -> anyhow::Result<GroupDirectory> {
        let groups = store.groups(app).await?;
        let groups = groups.into_iter().map(|g| (g.id.clone(), Arc::new(g))).collect();
        Ok(GroupDirectory { groups: RwLock::new(groups) })
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
        self.groups.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(id).cloned()
    }

    fn remember(&self, group: StoredGroup) {
        let mut groups = self.groups.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        groups.insert(group.id.clone(), Arc::new(group));
    }
}
