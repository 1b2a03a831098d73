//! Where SQLite keeps the history log: a ring of slots, each logged commit written in place into
//! the slot of its number, and one row saying through which number the log was applied.
//!
//! A log of appended rows, deleted once applied, moved its pages through the free list: every
//! commit allocated one, so it wrote the database header and the free list's trunk as well as the
//! row (5.3 WAL frames for a commit of 5 messages and their intents, against 2.8 with the ring, in
//! a model of the preset's commits). Several processes may share the file: a slot holding a
//! number not below the one a process meant to write tells it that another process wrote ahead.

use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::{Connection, OptionalExtension};

use super::history_log;
use super::records::Write;

/// Slots in the ring: logged commits not applied yet, at most. A commit that finds its slot
/// still unapplied applies the oldest first (see [`Ring::next`]).
pub(super) const SLOTS: i64 = 256;

const SLOT: &str = "SELECT seq FROM inboxd_history_ring WHERE slot = $1";
const WRITE: &str = "INSERT INTO inboxd_history_ring (slot, seq, app, writes) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (slot) DO UPDATE SET seq = excluded.seq, app = excluded.app, writes = excluded.writes";
const READ: &str = "SELECT seq, app, writes FROM inboxd_history_ring WHERE slot BETWEEN $1 AND $2 ORDER BY slot";
const APPLIED: &str = "SELECT seq FROM inboxd_history_applied";
const MARK: &str = "UPDATE inboxd_history_applied SET seq = $1";

/// A logged commit as read back: its number, its app, and its writes (or why they cannot be
/// decoded).
pub(super) type LoggedRow = (i64, String, Result<Vec<Write>, String>);

/// One process's view of the ring. Used under the writer connection's lock only.
#[derive(Debug)]
pub(super) struct Ring {
    slots: i64,
    /// The newest number this process knows was committed (another process may be ahead).
    head: AtomicI64,
}

impl Ring {
    /// The ring of the database `connection` is open on, `slots` long.
    ///
    /// # Errors
    /// The SQLite error.
    pub(super) fn open(connection: &Connection, slots: i64) -> rusqlite::Result<Ring> {
        let applied = applied(connection)?;
        Ok(Ring { slots, head: AtomicI64::new(applied) })
    }

    /// The number the next commit logs under, inside its transaction; `None` when its slot
    /// still holds a commit not applied (the ring is full: apply a pass, then ask again).
    ///
    /// # Errors
    /// The SQLite error.
    pub(super) fn next(&self, connection: &Connection) -> rusqlite::Result<Option<i64>> {
        let mut slot_of = connection.prepare_cached(SLOT)?;
        loop {
            let seq = self.head.load(Ordering::Relaxed) + 1;
            let there: Option<i64> = slot_of.query_row([seq % self.slots], |row| row.get(0)).optional()?;
            match there {
                // Another process logged this number (and maybe more): the head is there at least.
                Some(there) if there >= seq => self.head.store(there, Ordering::Relaxed),
                Some(there) => return Ok((there <= applied(connection)?).then_some(seq)),
                None => return Ok(Some(seq)),
            }
        }
    }

    /// Writes commit `seq` (from [`Ring::next`]) into its slot, inside its transaction.
    ///
    /// # Errors
    /// The SQLite error.
    pub(super) fn write(&self, connection: &Connection, seq: i64, app: &str, writes: &[u8]) -> rusqlite::Result<()> {
        connection.prepare_cached(WRITE)?.execute((seq % self.slots, seq, app, writes)).map(drop)
    }

    /// Commit `seq` was committed.
    pub(super) fn committed(&self, seq: i64) {
        self.head.fetch_max(seq, Ordering::Relaxed);
    }

    /// The oldest commits not applied yet, up to `most`, in order.
    ///
    /// # Errors
    /// The SQLite error.
    pub(super) fn oldest(&self, connection: &Connection, most: usize) -> rusqlite::Result<Vec<LoggedRow>> {
        let mut rows = Vec::new();
        let mut next = applied(connection)? + 1;
        let mut read = connection.prepare_cached(READ)?;
        // One range of slots, and a second from the start when the first ends the ring.
        while rows.len() < most {
            let first = next % self.slots;
            let last = (first + (most - rows.len()) as i64 - 1).min(self.slots - 1);
            let before = next;
            let mut found = read.query((first, last))?;
            while let Some(row) = found.next()? {
                // A slot holding an older number (or missing, so the next slot's row comes) ends the log.
                if row.get::<_, i64>(0)? != next {
                    return Ok(rows);
                }
                rows.push((next, row.get(1)?, history_log::decode(row.get_ref(2)?)));
                next += 1;
            }
            if next == before || next % self.slots != 0 {
                break;
            }
        }
        Ok(rows)
    }
}

/// Marks the log applied through commit `seq`, inside the pass's transaction.
///
/// # Errors
/// The SQLite error.
pub(super) fn applied_through(connection: &Connection, seq: i64) -> rusqlite::Result<()> {
    connection.prepare_cached(MARK)?.execute([seq]).map(drop)
}

fn applied(connection: &Connection) -> rusqlite::Result<i64> {
    connection.prepare_cached(APPLIED)?.query_row([], |row| row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::apply::tests::message;

    const TABLES: &str = include_str!("schema/sqlite/0009_history_ring.sql");

    fn database() -> Connection {
        let connection = Connection::open_in_memory().unwrap();
        connection.execute_batch(TABLES).unwrap();
        connection
    }

    /// Logs message `id` as the next commit of `ring`; `false` when the ring is full.
    fn log(connection: &Connection, ring: &Ring, id: &str) -> bool {
        let Some(seq) = ring.next(connection).unwrap() else { return false };
        let row = history_log::encode([message("bob", "alice", id, 150, 1, Some(true))].iter()).unwrap();
        ring.write(connection, seq, "app", &row).unwrap();
        ring.committed(seq);
        true
    }

    /// The message ids of `rows`, whose writes must have decoded.
    fn ids(rows: &[LoggedRow]) -> Vec<String> {
        rows.iter()
            .map(|(_, _, writes)| match &writes.as_ref().unwrap()[..] {
                [Write::Message { message_id, .. }] => message_id.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// Commits go round the ring: read back in order across its end, a pass at a time, and a
    /// commit whose slot is not applied yet waits for a pass.
    #[test]
    fn commits_wrap_around_the_ring_in_order() {
        let connection = database();
        let ring = Ring::open(&connection, 4).unwrap();
        for id in ["m1", "m2", "m3"] {
            assert!(log(&connection, &ring, id));
        }
        assert_eq!(ids(&ring.oldest(&connection, 2).unwrap()), ["m1", "m2"]);
        applied_through(&connection, 2).unwrap();
        for id in ["m4", "m5", "m6"] {
            assert!(log(&connection, &ring, id));
        }
        assert!(!log(&connection, &ring, "m7"), "slot 3 holds m3, not applied");
        assert_eq!(ids(&ring.oldest(&connection, 10).unwrap()), ["m3", "m4", "m5", "m6"]);
        applied_through(&connection, 6).unwrap();
        assert!(log(&connection, &ring, "m7"));
        assert_eq!(ids(&ring.oldest(&connection, 10).unwrap()), ["m7"]);
    }

    /// Two processes logging into one file take turns without overwriting each other: each
    /// finds the other's commits in the slot it meant to use and writes after them.
    #[test]
    fn a_process_logs_after_the_commits_of_another() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (a, b) = (Connection::open(&path).unwrap(), Connection::open(&path).unwrap());
        a.execute_batch(TABLES).unwrap();
        let (ring_a, ring_b) = (Ring::open(&a, 8).unwrap(), Ring::open(&b, 8).unwrap());
        for (connection, ring, id) in [(&a, &ring_a, "a1"), (&a, &ring_a, "a2"), (&b, &ring_b, "b3")] {
            assert!(log(connection, ring, id));
        }
        assert!(log(&a, &ring_a, "a4"));
        assert_eq!(ids(&ring_b.oldest(&b, 10).unwrap()), ["a1", "a2", "b3", "a4"]);
    }
}
