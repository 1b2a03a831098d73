//! Checkpoints of SQLite's write-ahead log away from the commits: the history thread copies the
//! log's pages into the database through a connection of its own, so no commit waits for that.
//!
//! The writer's connection only copies what was logged during the last copy, once the log is long
//! enough to be started over (a log starts over at a commit that finds every frame copied).
//! Before, a commit that found the log past 8,192 frames copied all of it itself, and syncs of
//! both files, inside the commit: a worker's (the copies of its deliveries waiting) or a history
//! pass's (the writer's connection held), for up to 66 ms at the benchmark preset.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use crate::telemetry;

/// The least time between two copies: each syncs both files.
const EVERY: Duration = Duration::from_millis(250);
/// Frames in the log from which the writer's connection copies the rest, so that its next commit
/// starts the log over (32 MiB of 4 KiB pages).
const START_OVER_AT: i64 = 8192;

/// The history thread's checkpoints of one database file.
pub(super) struct Checkpoints {
    /// Copies the log's pages without holding the writer's connection.
    copier: Connection,
    last: Instant,
}

impl Checkpoints {
    /// Opens a connection of its own to the database at `path` (in WAL mode).
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub(super) fn open(path: &str) -> rusqlite::Result<Checkpoints> {
        let copier =
            Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        Ok(Checkpoints { copier, last: Instant::now() })
    }

    /// After a history pass, with the writer's connection not held: at most every [`EVERY`],
    /// copies what the log holds into the database; once the log holds [`START_OVER_AT`] frames,
    /// copies through `writer` what was logged meanwhile too. A failure is reported: the next
    /// copy does the same work.
    pub(super) fn after_pass(&mut self, writer: &Mutex<Connection>) {
        if self.last.elapsed() < EVERY {
            return;
        }
        self.last = Instant::now();
        let copied = passive(&self.copier)
            .and_then(|logged| if logged >= START_OVER_AT { passive(&writer.lock()) } else { Ok(logged) });
        if let Err(err) = copied {
            telemetry::checkpoint_failed(&err);
        }
    }
}

/// A passive checkpoint (it waits for no reader or writer) through `connection`; the frames in
/// the log.
fn passive(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many times the log of the database at `path` was started over (its header's checkpoint
    /// sequence number; read from the file, so that nothing is copied by looking).
    fn started_over(path: &str) -> u32 {
        let header = std::fs::read(format!("{path}-wal")).unwrap();
        u32::from_be_bytes(header[12..16].try_into().unwrap())
    }

    /// A log grown past the mark is copied by the checkpoints, and the writer's next commit
    /// starts it over; before that, the writer's commits only append to it.
    #[test]
    fn the_checkpoints_copy_the_log_and_the_next_commit_starts_it_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db").display().to_string();
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0; \
                 CREATE TABLE t (n INTEGER PRIMARY KEY, v TEXT)",
            )
            .unwrap();
        let frames = START_OVER_AT + 100;
        for n in 0..frames {
            writer.execute("INSERT INTO t (n, v) VALUES (?1, 'x')", [n]).unwrap();
        }
        let writer = Mutex::new(writer);
        let insert = |n: i64| writer.lock().execute("INSERT INTO t (n, v) VALUES (?1, 'x')", [n]).unwrap();
        let before = started_over(&path);
        let mut checkpoints = Checkpoints::open(&path).unwrap();
        checkpoints.after_pass(&writer);
        insert(frames);
        assert_eq!(started_over(&path), before, "copied before the checkpoints were due");

        checkpoints.last = Instant::now().checked_sub(EVERY).unwrap();
        checkpoints.after_pass(&writer);
        insert(frames + 1);
        assert_eq!(started_over(&path), before + 1, "the log did not start over");
        let rows: i64 = writer.lock().query_row("SELECT count(*) FROM t", [], |row| row.get(0)).unwrap();
        assert_eq!(rows, frames + 2);
    }
}
