//! The SQLite back end's writes: one connection of its own (rusqlite), each upsert prepared once
//! as a single-row statement and run row by row inside one transaction per batch; the history's
//! writes wait in `history_queue` for the history thread (`history_thread`), applied here in batches
//! that let the workers' commits in midway.
//!
//! Through sqlx, each multi-row statement went to sqlx's SQLite thread and back, was bound by
//! parameter name (quadratic), needed a statement journal, and a pooled connection other than the
//! last writer's found its page cache stale. Here none of that happens; sqlx keeps the reads.

use std::ops::{Deref, Range};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OpenFlags, ToSql, params_from_iter};

use super::apply::{Step, Value, sqlite_refuses, steps};
use super::checkpoint::Checkpoints;
use super::history_left::{Left, LoggedRow};
use super::history_queue::{Queue, is_history};
use super::history_thread::{Indexer, MOST_PER_PASS};
use super::records::Write;
use super::wal_sync::{Synced, WalSync};
use crate::telemetry;

/// The writer connection's settings: WAL (readers never block the writer), NORMAL (a commit does
/// not wait for the disk: [`WalSync`] syncs the log for the acks, with `fdatasync`, see
/// `.cargo/config.toml`), an 8 MiB page cache, no temporary files, and no checkpoint of its own
/// before 128 MiB of log: the history thread checkpoints (`checkpoint`), so this one only if that
/// thread has nothing to apply for long. The cache holds what a commit touches again (the
/// indexes' inner pages, the leaves of the conversations in use); a page it misses is read from
/// the OS's file cache.
/// It fills to its size on any store larger than it, in C's heap, so it is resident memory (all
/// of SQLite's heap is held under [`SOFT_HEAP_LIMIT`]).
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
     PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 32768";

/// How much heap SQLite may hold in all, every connection of the process together, before it
/// recycles cached pages instead of allocating more: the writer's cache, the pool's, and the
/// statements and schemas. The bundled SQLite (SQLITE_ENABLE_MEMORY_MANAGEMENT) caps its shared
/// page cache only at the sum of every open cache's size, temporary B-trees' included, and the
/// writer grows into what the others leave unused: at the preset its cache crept past 8 MiB by
/// ~260 KiB a minute, towards the ~14 MiB the caches then open added up to.
const SOFT_HEAP_LIMIT: i64 = 10 << 20;

/// Rows a pass writes between two looks for commits waiting for the connection (~0.2 ms of
/// work at the benchmark preset; a whole pass there is a few milliseconds).
const ROWS_PER_LOOK: usize = 32;

/// The connection all of a process's store writes go through, the syncs of its log, and the
/// history's writes waiting for the thread that applies them.
pub(super) struct SqliteWriter {
    connection: Arc<Shared>,
    /// `None` when the database is not in WAL mode (then a commit syncs itself).
    sync: Option<Arc<WalSync>>,
    queue: Arc<Queue>,
    indexer: Indexer,
}

impl SqliteWriter {
    /// Opens the database file at `path` (migrated already) for writing, and applies what an
    /// earlier version left of its history log.
    ///
    /// # Errors
    /// When the file cannot be opened or refuses the settings, or a thread cannot start.
    pub(super) fn open(path: &str) -> anyhow::Result<SqliteWriter> {
        // SAFETY: sets one process-wide integer of SQLite's allocator; no pointers.
        unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(SOFT_HEAP_LIMIT) };
        // Without SQLite's own lock on every call (step, bind, reset): `connection` is only used
        // under its Mutex. The lock and unlock took 6 % of the store's CPU (perf, store bench).
        let connection =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        connection.execute_batch(PRAGMAS)?;
        let mode: String = connection.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
        let sync = if mode.eq_ignore_ascii_case("wal") {
            Some(Arc::new(WalSync::start(format!("{path}-wal").into()).context("starting the log's sync thread")?))
        } else {
            // A file system without the shared memory WAL needs: each commit syncs itself.
            tracing::warn!(journal_mode = %mode, "the store is not in WAL mode: every commit waits for the disk");
            connection.execute_batch("PRAGMA synchronous = FULL")?;
            None
        };
        for left in [Left::Log, Left::Ring] {
            apply_left(&connection, left).context("applying the history log of an earlier version")?;
        }
        let connection =
            Arc::new(Shared { connection: Mutex::new(connection), waiting: AtomicUsize::new(0), pass: Mutex::new(()) });
        let queue = Arc::new(Queue::new());
        let (applying, waiting, syncing) = (Arc::clone(&connection), Arc::clone(&queue), sync.clone());
        let mut checkpoints = match &sync {
            Some(_) => Some(Checkpoints::open(path).context("opening the checkpoints' connection")?),
            None => None,
        };
        let indexer = Indexer::start(Arc::clone(&queue), move || {
            let applied = apply_queued(&applying, &waiting, syncing.as_deref())?;
            if let Some(checkpoints) = &mut checkpoints {
                checkpoints.after_pass(&applying.connection);
            }
            Ok(applied)
        })
        .context("starting the history thread")?;
        Ok(SqliteWriter { connection, sync, queue, indexer })
    }

    /// Commits `writes[rows]` of app `app`: the history's kinds are queued for the history
    /// thread, the others committed in one transaction. Blocks: call it off the async threads.
    /// Returns what acks of these writes wait for: the sync of the commit and, for history
    /// writes, the pass that applied them.
    ///
    /// # Errors
    /// The SQLite error; nothing of the batch is then committed or queued.
    pub(super) fn apply(&self, app: &str, writes: &Arc<[Write]>, rows: Range<usize>) -> rusqlite::Result<Synced> {
        let part = &writes[rows.clone()];
        let history = part.iter().filter(|write| is_history(write)).count();
        let mut synced = Synced::ALREADY;
        if history < part.len() {
            let steps = steps(app, part.iter().filter(|write| !is_history(write)));
            in_transaction(&self.connection.for_commit(), |connection| apply_steps(connection, &steps))?;
            synced = self.sync.as_ref().map_or(Synced::ALREADY, |sync| sync.committed());
        }
        if history > 0 {
            let waiting;
            (synced, waiting) = self.queue.push(app, writes, rows, history, synced);
            self.indexer.queued(waiting);
        }
        Ok(synced)
    }

    /// Applies every queued history write to the tables, for a read that must see every write
    /// this process committed before it. Blocks: call it off the async threads.
    ///
    /// # Errors
    /// The SQLite error of a pass; the queue keeps what it did not apply.
    pub(super) fn apply_history(&self) -> rusqlite::Result<()> {
        while apply_queued(&self.connection, &self.queue, self.sync.as_deref())? > 0 {}
        Ok(())
    }

    /// Whether [`SqliteWriter::apply_history`] has anything to do.
    pub(super) fn history_behind(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Has the history thread's pause end once `writes` history writes wait.
    pub(super) fn hurry_at(&self, writes: usize) {
        self.indexer.hurry_at(writes);
    }
}

/// The writer's connection, shared by the commits (the workers') and the history's passes (the
/// history thread's and the readers'). A pass holds it for milliseconds: it hands it to the
/// commits that wait, between slices of its rows, so a worker's commit (and the copies waiting
/// for it) never waits for a whole pass.
struct Shared {
    connection: Mutex<Connection>,
    /// Commits waiting for the connection.
    waiting: AtomicUsize,
    /// One pass at a time: a pass lets commits in midway, never another pass.
    pass: Mutex<()>,
}

impl Shared {
    /// The connection for a commit; a pass under way hands it over at its next look.
    fn for_commit(&self) -> MutexGuard<'_, Connection> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let connection = self.connection.lock();
        self.waiting.fetch_sub(1, Ordering::Relaxed);
        connection
    }

    /// Between two slices of a pass: when commits wait, commits what the pass wrote so far,
    /// hands the connection to the first of them (a fair unlock, so the pass cannot take it back
    /// first) and takes it back once free, then opens the pass's transaction again.
    fn let_commits_in(&self, connection: &mut MutexGuard<'_, Connection>) -> rusqlite::Result<()> {
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        run(connection, "RELEASE pass")?;
        run(connection, "COMMIT")?;
        MutexGuard::bump(connection);
        begin(connection)?;
        run(connection, "SAVEPOINT pass")
    }
}

/// Runs `work` in one transaction, committed when it succeeds and rolled back otherwise.
fn in_transaction(
    connection: &Connection,
    work: impl FnOnce(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    begin(connection)?;
    finish(connection, work(connection))
}

/// Opens a transaction for writing.
fn begin(connection: &Connection) -> rusqlite::Result<()> {
    // A panic mid-batch left its transaction open: nothing of it was committed.
    if !connection.is_autocommit() {
        run(connection, "ROLLBACK")?;
    }
    // BEGIN and COMMIT as cached statements: rusqlite's `Transaction` parses them again for
    // every batch (3 % of the worker's time at one message in flight per pair).
    run(connection, "BEGIN IMMEDIATE")
}

/// Commits the open transaction when `worked`, else rolls it back.
fn finish(connection: &Connection, worked: rusqlite::Result<()>) -> rusqlite::Result<()> {
    match worked.and_then(|()| run(connection, "COMMIT")) {
        Ok(()) => Ok(()),
        Err(err) => {
            if !connection.is_autocommit() {
                run(connection, "ROLLBACK")?;
            }
            Err(err)
        }
    }
}

/// Applies the oldest queued commits (up to [`MOST_PER_PASS`]) to the tables in one transaction
/// (or several, when commits wait for the connection meanwhile), and releases the acks waiting
/// for them to the sync of the last; returns how many.
fn apply_queued(shared: &Shared, queue: &Queue, sync: Option<&WalSync>) -> rusqlite::Result<usize> {
    // A read's pass and the thread's do not take the same commits.
    let _pass = shared.pass.lock();
    let commits = queue.oldest(MOST_PER_PASS);
    if commits.is_empty() {
        return Ok(0);
    }
    let logged: Vec<Commit> = commits.iter().map(|commit| (&*commit.app, commit.writes().collect())).collect();
    let mut connection = shared.connection.lock();
    begin(&connection)?;
    let applied = apply_rows(&mut connection, &logged, &mut |connection| shared.let_commits_in(connection));
    finish(&connection, applied)?;
    queue.applied(&commits, sync.map(WalSync::count));
    Ok(commits.len())
}

/// Applies what an earlier version left in `left` (a crash before it applied it), and marks it
/// applied.
fn apply_left(connection: &Connection, left: Left) -> rusqlite::Result<()> {
    loop {
        let mut applied = 0;
        in_transaction(connection, |connection| {
            let rows = left.oldest(connection, MOST_PER_PASS)?;
            let Some(&(last, ..)) = rows.last() else { return Ok(()) };
            let logged: Vec<Commit> = rows.iter().map(|row| (row.1.as_str(), decoded(row).collect())).collect();
            apply_rows(&mut &*connection, &logged, &mut |_| Ok(()))?;
            left.applied_through(connection, last)?;
            applied = rows.len();
            Ok(())
        })?;
        if applied < MOST_PER_PASS {
            return Ok(());
        }
    }
}

/// The writes of a row left behind; none when they cannot be decoded (reported).
fn decoded(row: &LoggedRow) -> impl Iterator<Item = &Write> {
    let (seq, app, writes) = row;
    if let Err(err) = writes {
        telemetry::history_refused(err, app, &format!("log row {seq}"));
    }
    writes.iter().flatten()
}

/// One commit's history writes, of its app, as a pass applies them.
type Commit<'a> = (&'a str, Vec<&'a Write>);

/// Applies logged commits to the tables, inside the caller's transaction; `look` is called
/// between slices of rows (it may commit what was written so far, and begin anew). When the
/// tables refuse a write (an operator's trigger or constraint), they are applied again write by
/// write, and each refused write is reported and left out: its message was delivered already.
fn apply_rows<C: Deref<Target = Connection>>(
    connection: &mut C,
    logged: &[Commit],
    look: &mut impl FnMut(&mut C) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    run(connection, "SAVEPOINT pass")?;
    // The commits of one app as one run of writes: a conversation upserted by many commits of
    // the pass is written once, with its newest message.
    let pass = || {
        logged.chunk_by(|a, b| a.0 == b.0).try_for_each(|commits| {
            let steps = steps(commits[0].0, commits.iter().flat_map(|(_, writes)| writes.iter().copied()));
            apply_sliced(connection, &steps, look)
        })
    };
    match refused(catch_unwind(AssertUnwindSafe(pass)))? {
        None => run(connection, "RELEASE pass"),
        Some(_) => {
            run(connection, "ROLLBACK TO pass")?;
            run(connection, "RELEASE pass")?;
            for (app, writes) in logged {
                writes.iter().try_for_each(|write| apply_one(connection, app, write))?;
            }
            Ok(())
        }
    }
}

/// Whether applying was refused (or panicked: it would again), and why; `Err` for what a retry
/// may fix (the log keeps the pass).
fn refused(applied: std::thread::Result<rusqlite::Result<()>>) -> rusqlite::Result<Option<String>> {
    match applied {
        Ok(Ok(())) => Ok(None),
        Ok(Err(err)) if sqlite_refuses(&err) => Ok(Some(err.to_string())),
        Ok(Err(err)) => Err(err),
        Err(_) => Ok(Some("applying it panicked".to_owned())),
    }
}

/// Applies one logged write in a savepoint of its own; a refused one is reported and left out.
fn apply_one(connection: &Connection, app: &str, write: &Write) -> rusqlite::Result<()> {
    run(connection, "SAVEPOINT one")?;
    let one = || apply_steps(connection, &steps(app, [write]));
    if let Some(reason) = refused(catch_unwind(AssertUnwindSafe(one)))? {
        run(connection, "ROLLBACK TO one")?;
        let (inbox, key) = match write {
            Write::Message { inbox, message_id, .. } | Write::Status { inbox, message_id, .. } => {
                (inbox.as_str(), message_id.as_str())
            }
            Write::Conversation { inbox, conversation, .. } => (inbox.as_str(), conversation.as_str()),
            _ => ("", ""),
        };
        telemetry::history_refused(&reason, inbox, key);
    }
    run(connection, "RELEASE one")
}

fn apply_steps(connection: &Connection, steps: &[Step]) -> rusqlite::Result<()> {
    apply_sliced(&mut &*connection, steps, &mut |_| Ok(()))
}

/// Runs `steps`, calling `look` after every [`ROWS_PER_LOOK`] rows of a statement.
fn apply_sliced<C: Deref<Target = Connection>>(
    connection: &mut C,
    steps: &[Step],
    look: &mut impl FnMut(&mut C) -> rusqlite::Result<()>,
) -> rusqlite::Result<()> {
    for step in steps {
        match step {
            Step::Rows(statement, rows) => {
                for slice in rows.chunks(ROWS_PER_LOOK) {
                    let mut prepared = connection.prepare_cached(statement.single_row())?;
                    for row in slice {
                        prepared.execute(params_from_iter(row))?;
                    }
                    drop(prepared);
                    look(connection)?;
                }
            }
            Step::One(sql, values) => {
                connection.prepare_cached(sql)?.execute(params_from_iter(values))?;
            }
        }
    }
    Ok(())
}

/// Runs a statement without parameters, prepared once per connection.
fn run(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.prepare_cached(sql)?.execute([]).map(drop)
}

impl ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Text(v) => ToSqlOutput::from(v.as_ref()),
            Value::OptText(Some(v)) => ToSqlOutput::from(v.as_ref()),
            Value::OptText(None) => ToSqlOutput::from(rusqlite::types::Null),
            Value::Int(v) => ToSqlOutput::from(*v),
            Value::OptInt(v) => v.to_sql()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::store::{Store, StoreUrl};

    /// A commit that waits for the connection while a pass applies the history gets it midway
    /// through the pass (the pass's commits are not applied yet when it does), not once the pass
    /// has ended; the pass then applies all the same.
    #[tokio::test]
    async fn a_commit_waiting_for_the_connection_gets_it_midway_through_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db").display().to_string();
        drop(Store::open(&StoreUrl::Sqlite(format!("sqlite://{path}"))).await.unwrap().expect("a SQLite store"));
        let shared = Shared {
            connection: Mutex::new(Connection::open(&path).unwrap()),
            waiting: AtomicUsize::new(0),
            pass: Mutex::new(()),
        };
        // Enough history for a pass of many slices: 64 commits of 100 copies.
        let queue = Queue::new();
        for commit in 0..MOST_PER_PASS {
            let writes: Arc<[Write]> = (0..100)
                .map(|n| Write::Message {
                    inbox: format!("user-{}", n % 20),
                    conversation: format!("peer-{}", n % 7),
                    message_id: format!("m-{commit:03}-{n:03}"),
                    status: 0,
                    sent_at: 1_700_000_000_000 + n,
                    body: Arc::from(r#"{"text":"hello"}"#),
                    conversation_update: Some(true),
                })
                .collect();
            queue.push("app", &writes, 0..writes.len(), writes.len(), Synced::ALREADY);
        }
        std::thread::scope(|scope| {
            let pass = scope.spawn(|| apply_queued(&shared, &queue, None));
            let deadline = Instant::now() + Duration::from_secs(10);
            // The pass has begun and holds the connection.
            while !(shared.pass.is_locked() && shared.connection.is_locked()) {
                assert!(Instant::now() < deadline && !pass.is_finished(), "the pass did not start");
                std::thread::yield_now();
            }
            let connection = shared.for_commit();
            assert!(!queue.is_empty(), "the commit waited for the whole pass");
            assert!(connection.is_autocommit(), "the pass handed over its connection inside a transaction");
            drop(connection);
            assert_eq!(pass.join().unwrap().unwrap(), MOST_PER_PASS);
        });
        assert!(queue.is_empty());
        let rows: i64 =
            shared.connection.lock().query_row("SELECT count(*) FROM inbox_timeline", [], |row| row.get(0)).unwrap();
        assert_eq!(rows, 6400, "a pass handing over its connection midway applies all the same");
    }

    #[tokio::test]
    async fn opening_the_writer_caps_the_heap_of_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("store.db").display()));
        Store::open(&url).await.unwrap().expect("a SQLite store");
        // SAFETY: a negative limit only reads the current one.
        assert_eq!(unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(-1) }, SOFT_HEAP_LIMIT);
    }
}
