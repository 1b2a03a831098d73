//! The group directory routing reads: a bounded LRU cache over the app's stored groups, kept
//! current by `groups.update` and by re-reading what other inboxd processes stored.
//!
//! # How a miss is served
//! Routing runs on a worker thread and asks synchronously. A group that is not cached is read
//! from the store right there: the read runs on the runtime (one indexed row) while that worker
//! waits for it, at most [`MISS_READ_TIMEOUT`]; other workers go on. An id with no stored group
//! is remembered as absent (in a second LRU of the same size), so repeated posts to an unknown
//! group cost no read. A read that fails or times out answers [`GroupsUnavailable`] and is not
//! remembered: routing defers that message (it is requeued), never takes it for "no stored
//! group". At start the most recently written groups fill the cache.
//!
//! # Several processes
//! Every [`REFRESH_EVERY`] the directory re-reads the groups written since the newest it saw
//! (minus [`REFRESH_OVERLAP_MS`]) and replaces the cached or absent entries they concern; a group
//! not cached is left to be read when routing needs it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hashlink::LruCache;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use super::Store;
use super::read::group_from_body;
use crate::chat21::Group;
use crate::routing::{GroupLookup, GroupsUnavailable};
use crate::telemetry;

/// Groups cached unless `[store] group_cache` says otherwise; as many ids are remembered absent.
pub const DEFAULT_GROUP_CACHE: usize = 10_000;
/// How often the directory re-reads groups other processes stored (several inboxd processes
/// share the work, and each consumes only some of the `groups.update` events).
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);
/// How far back a refresh looks before the newest write it saw (commit delays, clock skew).
const REFRESH_OVERLAP_MS: i64 = 10_000;
/// How long a worker waits for a group that is not cached to be read from the store.
pub const MISS_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The cached part of the directory.
struct Cache {
    /// Groups, least recently routed first, each with the time (ms) of the version held: its
    /// store write, or when routing saw it announced.
    groups: LruCache<String, (Arc<Group>, i64)>,
    /// Ids the store had no group for when last read.
    absent: LruCache<String, ()>,
}

impl Cache {
    /// Holds `group` of version `at` unless a newer version is held already.
    fn offer(&mut self, group: Arc<Group>, at: i64) {
        self.offer_unless_older(group, at, false);
    }

    /// Like [`Cache::offer`]; with `announced`, a version of the same millisecond as the one
    /// held replaces it (an announcement is at least as new as anything stored when it arrives).
    fn offer_unless_older(&mut self, group: Arc<Group>, at: i64, announced: bool) {
        self.absent.remove(&group.id);
        match self.groups.get_mut(&group.id) {
            Some(held) if held.1 > at || (held.1 == at && !announced) => {}
            Some(held) => *held = (group, at),
            None => {
                self.groups.insert(group.id.clone(), (group, at));
            }
        }
    }
}

/// Where misses are read: the store, from the runtime (routing itself runs off it).
struct Source {
    store: Store,
    app: String,
    runtime: Handle,
}

/// The directory of one app's stored groups: at most `capacity` of them in memory.
pub struct GroupDirectory {
    cache: Mutex<Cache>,
    /// The newest `updated_at` read from the store.
    newest: AtomicI64,
    /// `None` in a directory without store (what it was told is all it knows).
    source: Option<Source>,
}

impl GroupDirectory {
    /// An empty directory of at most `capacity` groups (at least 1) that reads nothing.
    pub fn new(capacity: usize) -> GroupDirectory {
        let capacity = capacity.max(1);
        GroupDirectory {
            cache: Mutex::new(Cache { groups: LruCache::new(capacity), absent: LruCache::new(capacity) }),
            newest: AtomicI64::new(i64::MIN + REFRESH_OVERLAP_MS),
            source: None,
        }
    }

    /// The directory of `app` over `store` with [`DEFAULT_GROUP_CACHE`] entries.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load(store: &Store, app: &str) -> anyhow::Result<GroupDirectory> {
        GroupDirectory::load_bounded(store, app, DEFAULT_GROUP_CACHE).await
    }

    /// The directory of `app` over `store`, at most `capacity` groups in memory, filled with the
    /// ones written last. Call it on the runtime that will serve its misses.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn load_bounded(store: &Store, app: &str, capacity: usize) -> anyhow::Result<GroupDirectory> {
        let mut directory = GroupDirectory::new(capacity);
        let recent = store.recent_groups(app, capacity.max(1)).await?;
        {
            let cache = directory.cache.get_mut().unwrap_or_else(PoisonError::into_inner);
            // Oldest first, so the newest end up most recently used.
            for (group, updated_at) in recent.into_iter().rev() {
                directory.newest.fetch_max(updated_at, Ordering::Relaxed);
                cache.offer(Arc::new(group), updated_at);
            }
        }
        directory.source = Some(Source { store: store.clone(), app: app.to_owned(), runtime: Handle::current() });
        Ok(directory)
    }

    /// Takes in the groups stored since the last read (by this process or another) that the
    /// directory holds or knows as absent.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn refresh(&self, store: &Store, app: &str) -> anyhow::Result<()> {
        let since = self.newest.load(Ordering::Relaxed) - REFRESH_OVERLAP_MS;
        let stored = store.groups_since(app, since).await?;
        let mut cache = self.lock();
        for (id, updated_at, body) in stored {
            self.newest.fetch_max(updated_at, Ordering::Relaxed);
            // A refresh is not a use: `peek` leaves the order alone.
            let wanted = match cache.groups.peek(&id) {
                Some((_, held)) => *held < updated_at,
                None => cache.absent.contains_key(&id),
            };
            if !wanted {
                continue;
            }
            match group_from_body(&body) {
                Ok(group) => cache.offer(Arc::new(group), updated_at),
                Err(err) => tracing::warn!(error = format!("{err:#}"), "a stored group does not parse"),
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

    /// Groups held in memory.
    pub fn len(&self) -> usize {
        self.lock().groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        // Nothing panics while holding the lock but an allocation failure; the cache stays sound.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads group `id` from the store, waiting at most [`MISS_READ_TIMEOUT`], and caches the
    /// answer. Blocks the calling thread: routing's worker thread, not an async task.
    fn read_miss(&self, source: &Source, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        let (store, app, wanted) = (source.store.clone(), source.app.clone(), id.to_owned());
        source.runtime.spawn(async move {
            let read = tokio::time::timeout(MISS_READ_TIMEOUT, store.group_version(&app, &wanted)).await;
            let _ = answer.send(read);
        });
        // The task gives up at the same timeout; this bound only matters if it never ran.
        match answered.recv_timeout(MISS_READ_TIMEOUT * 2) {
            Ok(Ok(Ok(Some((group, updated_at))))) => {
                telemetry::group_read("found");
                let group = Arc::new(group);
                let mut cache = self.lock();
                cache.offer(Arc::clone(&group), updated_at);
                // A newer version may have come in meanwhile (announced, or refreshed).
                Ok(cache.groups.get(id).map(|(held, _)| Arc::clone(held)).or(Some(group)))
            }
            Ok(Ok(Ok(None))) => {
                telemetry::group_read("absent");
                let mut cache = self.lock();
                Ok(match cache.groups.get(id) {
                    Some((held, _)) => Some(Arc::clone(held)),
                    None => {
                        cache.absent.insert(id.to_owned(), ());
                        None
                    }
                })
            }
            Ok(Ok(Err(err))) => {
                telemetry::group_read_failed(&format!("{err:#}"));
                Err(GroupsUnavailable)
            }
            Ok(Err(_)) | Err(_) => {
                telemetry::group_read_failed("no answer within the timeout");
                Err(GroupsUnavailable)
            }
        }
    }
}

impl GroupLookup for GroupDirectory {
    fn get(&self, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
        {
            let mut cache = self.lock();
            if let Some((group, _)) = cache.groups.get(id) {
                return Ok(Some(Arc::clone(group)));
            }
            if cache.absent.get(id).is_some() {
                return Ok(None);
            }
        }
        let Some(source) = self.source.as_ref() else { return Ok(None) };
        self.read_miss(source, id)
    }

    fn remember(&self, group: Group) {
        self.lock().offer_unless_older(Arc::new(group), crate::clock::now_ms(), true);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::store::{StoreUrl, Write};

    fn group(id: &str, members: &[&str]) -> Group {
        let map: serde_json::Map<String, serde_json::Value> =
            members.iter().map(|m| ((*m).to_owned(), json!(1))).collect();
        let body = json!({"uid": id, "members": map});
        Group {
            id: id.into(),
            name: None,
            owner: None,
            members: members.iter().map(|m| (*m).to_owned()).collect(),
            body,
        }
    }

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        (dir, store)
    }

    /// Routing calls the directory from a worker thread; so do these tests.
    async fn get(directory: &Arc<GroupDirectory>, id: &str) -> Option<Arc<Group>> {
        lookup(directory, id).await.unwrap()
    }

    async fn lookup(directory: &Arc<GroupDirectory>, id: &str) -> Result<Option<Arc<Group>>, GroupsUnavailable> {
        let (directory, id) = (Arc::clone(directory), id.to_owned());
        tokio::task::spawn_blocking(move || directory.get(&id)).await.unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refresh_takes_in_other_writers_groups_but_keeps_newer_routed_ones() {
        let (_dir, store) = store().await;
        let directory = Arc::new(GroupDirectory::load(&store, "app").await.unwrap());
        assert!(get(&directory, "g1").await.is_none());
        // Another process stored the group: the next refresh replaces "absent" with it.
        store.apply("app", vec![Write::Group(group("g1", &["alice"]))].into()).await.unwrap();
        directory.refresh(&store, "app").await.unwrap();
        assert_eq!(get(&directory, "g1").await.unwrap().members, ["alice"]);
        // Routing saw a newer version whose write is not committed yet: an older stored one
        // does not replace it.
        directory.remember(group("g1", &["alice", "bob"]));
        directory.refresh(&store, "app").await.unwrap();
        assert_eq!(get(&directory, "g1").await.unwrap().members, ["alice", "bob"]);
        assert_eq!(directory.len(), 1);
    }

    /// More groups than the cache holds: memory stays at the bound, and every group still
    /// routes (a miss reads it from the store).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_groups_than_the_cache_all_route() {
        const CACHE: usize = 8;
        const GROUPS: usize = 50;
        let (_dir, store) = store().await;
        let writes: Vec<Write> =
            (0..GROUPS).map(|i| Write::Group(group(&format!("g{i}"), &["alice", &format!("u{i}")]))).collect();
        store.apply("app", writes.into()).await.unwrap();
        let directory = Arc::new(GroupDirectory::load_bounded(&store, "app", CACHE).await.unwrap());
        assert_eq!(directory.len(), CACHE, "the start fills the cache, no more");
        for round in 0..2 {
            for i in 0..GROUPS {
                let found = get(&directory, &format!("g{i}")).await;
                let found = found.unwrap_or_else(|| panic!("round {round}: g{i} not found"));
                assert_eq!(found.members, ["alice".to_owned(), format!("u{i}")]);
                assert!(directory.len() <= CACHE);
            }
        }
        // Unknown ids are remembered within the same bound, and a group stored later replaces them.
        for i in 0..GROUPS {
            assert!(get(&directory, &format!("nope{i}")).await.is_none());
        }
        assert!(directory.lock().absent.len() <= CACHE);
        let last = format!("nope{}", GROUPS - 1);
        store.apply("app", vec![Write::Group(group(&last, &["bob"]))].into()).await.unwrap();
        directory.refresh(&store, "app").await.unwrap();
        assert_eq!(get(&directory, &last).await.unwrap().members, ["bob"]);
        // A group announced here is held at once (and evicts the least recently used).
        directory.remember(group("fresh", &["carol"]));
        assert_eq!(get(&directory, "fresh").await.unwrap().members, ["carol"]);
        assert!(directory.len() <= CACHE);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_cannot_answer_is_not_remembered_as_absent() {
        let (_dir, store) = store().await;
        let directory = Arc::new(GroupDirectory::load(&store, "app").await.unwrap());
        store.close().await;
        assert_eq!(lookup(&directory, "g1").await, Err(GroupsUnavailable));
        assert_eq!(directory.lock().absent.len(), 0);
    }
}
