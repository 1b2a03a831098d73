//! The SQLite back end's writes: one connection of its own (rusqlite), each upsert prepared once
//! as a single-row statement and run row by row inside one transaction per batch.
//!
//! Through sqlx, each multi-row statement went to sqlx's SQLite thread and back, was bound by
//! parameter name (quadratic), needed a statement journal, and a pooled connection other than the
//! last writer's found its page cache stale. Here none of that happens; sqlx keeps the reads.

use std::sync::{Mutex, PoisonError};

use anyhow::Context;
use rusqlite::types::ToSqlOutput;
use rusqlite::{Connection, OpenFlags, ToSql, params_from_iter};

use super::apply::{Step, Value, steps};
use super::records::Write;
use super::wal_sync::{Synced, WalSync};

/// The writer connection's settings: WAL (readers never block the writer), NORMAL (a commit does
/// not wait for the disk: [`WalSync`] syncs the log for the acks, with `fdatasync`, see
/// `.cargo/config.toml`), an 8 MiB page cache, no temporary files, and a checkpoint every 32 MiB
/// of log rather than every 4 MiB (a page changed by many commits is copied into the database
/// once per checkpoint). The cache holds what a commit touches again (the indexes' inner pages,
/// the leaves of the conversations in use); a page it misses is read from the OS's file cache.
/// It fills to its size on any store larger than it, in C's heap, so it is resident memory (all
/// of SQLite's heap is held under [`SOFT_HEAP_LIMIT`]).
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; \
     PRAGMA cache_size = -8192; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 8192";

/// How much heap SQLite may hold in all, every connection of the process together, before it
/// recycles cached pages instead of allocating more: the writer's cache, the pool's, and the
/// statements and schemas. The bundled SQLite (SQLITE_ENABLE_MEMORY_MANAGEMENT) caps its shared
/// page cache only at the sum of every open cache's size, temporary B-trees' included, and the
/// writer grows into what the others leave unused: at the preset its cache crept past 8 MiB by
/// ~260 KiB a minute, towards the ~14 MiB the caches then open added up to.
const SOFT_HEAP_LIMIT: i64 = 10 << 20;

/// The connection all of a process's store writes go through, and the syncs of its log.
pub(super) struct SqliteWriter {
    connection: Mutex<Connection>,
    /// `None` when the database is not in WAL mode (then a commit syncs itself).
    sync: Option<WalSync>,
}

impl SqliteWriter {
    /// Opens the database file at `path` (migrated already) for writing.
    ///
    /// # Errors
    /// When the file cannot be opened or refuses the settings, or the sync thread cannot start.
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
            Some(WalSync::start(format!("{path}-wal").into()).context("starting the log's sync thread")?)
        } else {
            // A file system without the shared memory WAL needs: each commit syncs itself.
            tracing::warn!(journal_mode = %mode, "the store is not in WAL mode: every commit waits for the disk");
            connection.execute_batch("PRAGMA synchronous = FULL")?;
            None
        };
        Ok(SqliteWriter { connection: Mutex::new(connection), sync })
    }

    /// Applies `writes` of app `app` in one transaction. Blocks: call it off the async threads.
    /// Returns what acks of these writes wait for: the sync of the log.
    ///
    /// # Errors
    /// The SQLite error; nothing of the batch is then committed.
    pub(super) fn apply(&self, app: &str, writes: &[Write]) -> rusqlite::Result<Synced> {
        self.commit(app, writes)?;
        Ok(self.sync.as_ref().map_or(Synced::ALREADY, WalSync::committed))
    }

    fn commit(&self, app: &str, writes: &[Write]) -> rusqlite::Result<()> {
        let steps = steps(app, writes);
        let connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        // A panic mid-batch left its transaction open: nothing of it was committed.
        if !connection.is_autocommit() {
            run(&connection, "ROLLBACK")?;
        }
        // BEGIN and COMMIT as cached statements: rusqlite's `Transaction` parses them again for
        // every batch (3 % of the worker's time at one message in flight per pair).
        run(&connection, "BEGIN IMMEDIATE")?;
        match apply_steps(&connection, &steps).and_then(|()| run(&connection, "COMMIT")) {
            Ok(()) => Ok(()),
            Err(err) => {
                if !connection.is_autocommit() {
                    run(&connection, "ROLLBACK")?;
                }
                Err(err)
            }
        }
    }
}

fn apply_steps(connection: &Connection, steps: &[Step]) -> rusqlite::Result<()> {
    for step in steps {
        match step {
            Step::Rows(statement, rows) => {
                let mut prepared = connection.prepare_cached(statement.single_row())?;
                for row in rows {
                    prepared.execute(params_from_iter(row))?;
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
    use super::*;

    #[test]
    fn opening_the_writer_caps_the_heap_of_every_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        Connection::open(&path).unwrap();
        SqliteWriter::open(path.to_str().unwrap()).unwrap();
        // SAFETY: a negative limit only reads the current one.
        assert_eq!(unsafe { rusqlite::ffi::sqlite3_soft_heap_limit64(-1) }, SOFT_HEAP_LIMIT);
    }
}
