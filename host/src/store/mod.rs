//! Persistence: each user's history (the inbox copies they were sent), conversation lists and
//! stored groups, in SQLite (embedded default) or PostgreSQL, written off the hot path.
//!
//! # Layout
//! - [`StoreUrl`]: the `store.url` setting. [`Store`]: a pool on either back end, migrated.
//! - `schema`: the versioned migrations, one SQL dialect folder per back end.
//! - [`records`]: what a routed delivery writes, by its event (pure). `apply`: those writes as SQL upserts,
//!   `sqlite`: SQLite's own writer connection; `history_queue`: the history's writes waiting for
//!   `history_thread`, which applies them in batches (and checkpoints the log, `checkpoint`);
//!   `history_left`: what earlier versions logged.
//! - [`writer`]: the batching writer the pipeline awaits before acking.
//! - [`Persistence`]: a running store: pool, writer, group directory (the daemon adds the
//!   webhook delivery on top).
//! - [`groups`]: the group directory routing reads (an LRU over the store);
//!   [`StoredConversations`]: the conversation an archive publishes. [`read`]: history queries;
//!   `purge`: deleting a conversation everywhere; `push`: what the push routes keep.
//! - [`outbox`]: the webhook outbox (due events, outcomes, dead letters).
//! - `import`: conversation lists imported from another system (`inboxd import chat21`).
//! - [`intents`]: the ids given to chat messages in flight, for their redeliveries (and their expiry).

mod apply;
mod checkpoint;
mod config;
mod conversations;
pub mod groups;
mod history_left;
mod history_queue;
mod history_thread;
mod import;
pub mod intents;
pub mod outbox;
mod purge;
mod push;
pub mod read;
pub mod records;
mod schema;
mod sqlite;
mod wal_sync;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use apply::ApplyError;
pub use config::{DEFAULT_STORE_URL, RawStore, StoreConfig, validate};
pub use conversations::StoredConversations;
pub use groups::GroupDirectory;
pub use import::ImportedConversation;
pub use records::Write;
use sqlite::SqliteWriter;
pub use wal_sync::Synced;
pub use writer::{Durable, NotDurable, STORE_REFUSED, StoreWriter};

/// The `store.url` setting: `none`, `sqlite://<file>` or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// Nothing is persisted; deliveries are acked once published.
    None,
    Sqlite(String),
    Postgres(String),
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let url = url.trim();
        if url.is_empty() || url == "none" {
            Ok(StoreUrl::None)
        } else if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err("sqlite:// needs a file path".into());
            }
            Ok(StoreUrl::Sqlite(url.to_owned()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(url.to_owned()))
        } else {
            Err("must be `none`, `sqlite://<file>` or `postgres://…`".into())
        }
    }
}

/// Which SQL dialect the migrations are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection pool on one back end, schema migrated, and on SQLite the one connection that
/// writes. Queries use the subset of SQL both dialects share (`$n` parameters, `ON CONFLICT`
/// upserts); only the schema differs.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    sqlite: Option<Arc<SqliteWriter>>,
}

/// Connections per pool: the writer task (PostgreSQL), the outbox and the history API's readers.
const POOL_SIZE: u32 = 4;
/// How long a query waits for a pooled connection before it counts as failed (and is retried).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A pooled SQLite connection's settings: WAL (readers never block the writer), FULL (a commit
/// survives power loss), and a 512 KiB page cache: the pool only serves history reads and sweeps,
/// and every connection's cache counts against the one budget of the process (see the writer's
/// `SOFT_HEAP_LIMIT`).
const POOLED_SQLITE_PRAGMAS: &str =
    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -512";

impl Store {
    /// Connects to `url` and runs the migrations it has not seen yet. `None` for `store = none`.
    ///
    /// # Errors
    /// When the database cannot be reached or a migration fails.
    pub async fn open(url: &StoreUrl) -> anyhow::Result<Option<Store>> {
        Store::connect(url, "rwc").await
    }

    /// Like [`Store::open`], but a SQLite file must exist already: for the operator's commands,
    /// which must not start an empty store next to the daemon's.
    ///
    /// # Errors
    /// When the database cannot be reached (a SQLite file that does not exist) or migrated.
    pub async fn open_existing(url: &StoreUrl) -> anyhow::Result<Option<Store>> {
        if let StoreUrl::Sqlite(sqlite) = url {
            let path = sqlite_path(sqlite);
            anyhow::ensure!(
                std::path::Path::new(path).exists(),
                "no store at {path:?} (store.url): give the daemon's store, an absolute path or one relative to here"
            );
        }
        Store::connect(url, "rw").await
    }

    async fn connect(url: &StoreUrl, sqlite_mode: &str) -> anyhow::Result<Option<Store>> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match url {
            StoreUrl::None => return Ok(None),
            StoreUrl::Sqlite(url) => (sqlite_url(url, sqlite_mode), Backend::Sqlite),
            StoreUrl::Postgres(url) => (url.clone(), Backend::Postgres),
        };
        let options = AnyConnectOptions::from_str(&url).context("parsing store.url")?;
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(POOLED_SQLITE_PRAGMAS).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to the store ({})", redact(&url)))?;
        let mut store = Store { pool, backend, sqlite: None };
        schema::migrate(&store).await.context("migrating the store schema")?;
        if backend == Backend::Sqlite {
            let path = sqlite_path(&url).to_owned();
            let writer = tokio::task::spawn_blocking(move || SqliteWriter::open(&path))
                .await
                .context("opening the SQLite writer panicked")?
                .context("opening the SQLite writer connection")?;
            store.sqlite = Some(Arc::new(writer));
        }
        Ok(Some(store))
    }

    /// Tells the store how many deliveries the broker leaves unacked at most (the prefetch).
    /// With SQLite, acks wait for the history thread's pass; it starts early once as many history
    /// writes wait (two or more a delivery), so those acks never fill the prefetch.
    pub fn unacked_at_most(&self, prefetch: u16) {
        if let Some(sqlite) = &self.sqlite {
            sqlite.hurry_at(prefetch.into());
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// SQLite's writer connection, which applies writes on the calling thread (`None` for
    /// PostgreSQL, whose writes go through the async pool).
    fn sqlite_writer(&self) -> Option<&Arc<SqliteWriter>> {
        self.sqlite.as_ref()
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes every connection (tests drop their database afterwards).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A running store: the pool (for reads), its writer task, the group directory kept fresh,
/// and whatever else runs on it until it stops (the webhook delivery, see [`Persistence::keep`]).
pub struct Persistence {
    pub store: Store,
    pub writer: StoreWriter,
    pub groups: Arc<GroupDirectory>,
    /// Notified after a commit that wrote webhook outbox rows.
    pub outbox_written: Arc<Notify>,
    /// Cancelled by [`Persistence::stop`]; every task on the store runs until then.
    pub stopping: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Persistence {
    /// Opens the store at `url` for app `app`, loads its groups (at most `group_cache` cached),
    /// starts the writer. `None` when `url` is `none`.
    ///
    /// # Errors
    /// When the store cannot be opened, migrated or read.
    pub async fn start(url: &StoreUrl, app: &str, group_cache: usize) -> anyhow::Result<Option<Persistence>> {
        let Some(store) = Store::open(url).await? else { return Ok(None) };
        let groups = GroupDirectory::load_bounded(&store, app, group_cache).await;
        let groups = Arc::new(groups.context("loading the stored groups")?);
        let stopping = CancellationToken::new();
        let outbox_written = Arc::new(Notify::new());
        let (writer, task) =
            StoreWriter::spawn(store.clone(), app.to_owned(), outbox_written.clone(), stopping.clone());
        let mut tasks = vec![task];
        tasks.push(tokio::spawn(Arc::clone(&groups).keep_fresh(store.clone(), app.to_owned(), stopping.clone())));
        tasks.push(tokio::spawn(intents::sweep(store.clone(), app.to_owned(), stopping.clone())));
        Ok(Some(Persistence { store, writer, groups, outbox_written, stopping, tasks }))
    }

    /// Awaits `task` on [`Persistence::stop`] (it must end once [`Persistence::stopping`] is
    /// cancelled).
    pub fn keep(&mut self, task: JoinHandle<()>) {
        self.tasks.push(task);
    }

    /// Stops the writer and every kept task (call after the pipeline drained) and closes the
    /// pool.
    pub async fn stop(self) {
        self.stopping.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.store.close().await;
    }
}

/// `sqlite://file` with `mode=rwc` (created on first start) or `rw`, unless the URL sets options.
fn sqlite_url(url: &str, mode: &str) -> String {
    if url.contains('?') { url.to_owned() } else { format!("{url}?mode={mode}") }
}

/// The file of a `sqlite://<file>[?options]` URL.
fn sqlite_path(url: &str) -> &str {
    url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default()
}

/// The URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_choose_the_back_end() {
        assert_eq!("none".parse::<StoreUrl>(), Ok(StoreUrl::None));
        assert_eq!("sqlite://a.db".parse::<StoreUrl>(), Ok(StoreUrl::Sqlite("sqlite://a.db".into())));
        assert!(matches!("postgres://u@h/db".parse::<StoreUrl>(), Ok(StoreUrl::Postgres(_))));
        assert!("mysql://h/db".parse::<StoreUrl>().is_err());
        assert!("sqlite://".parse::<StoreUrl>().is_err());
    }

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
