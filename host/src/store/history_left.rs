//! What earlier versions left of the history's writes on disk, applied when the writer opens:
//! the ring of slots of version 9 and the table of appended rows before it, in each row form.
//!
//! Until version 10 a commit logged its history writes as one row (committed with it, then
//! applied by the history thread); since, they wait in memory (`history_queue`) and acks wait for
//! their pass. A crash of an earlier version may have left rows not applied.

use std::borrow::Cow;
use std::sync::Arc;

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde::{Deserialize, Serialize};

use super::records::Write;

/// The first byte of a log row in [`Logged`]'s form. The previous version's rows were the bare
/// list of writes, led by its length as a varint; a list is never empty, so that byte is never 0.
const SHARED_BODIES: u8 = 0;

/// A logged write. A message's copies share one body (the sender's and the recipient's of a
/// direct message, every member's of a group's), which the row holds once.
#[derive(Serialize, Deserialize)]
enum Logged<'a> {
    Copy {
        inbox: &'a str,
        conversation: &'a str,
        message_id: &'a str,
        status: i64,
        sent_at: i64,
        /// `None` when the body is the row's previous copy's.
        body: Option<&'a str>,
        conversation_update: Option<bool>,
    },
    Other(Cow<'a, Write>),
}

/// The bytes of a log row as version 9 logged it: [`SHARED_BODIES`], then the writes, in order,
/// in postcard's compact form (no field names, and the bodies as they are). For the tests, which
/// leave such rows behind.
#[cfg(test)]
pub(super) fn encode<'a>(writes: impl Iterator<Item = &'a Write>) -> postcard::Result<Vec<u8>> {
    let mut previous: Option<&Arc<str>> = None;
    let logged: Vec<Logged<'_>> = writes
        .map(|write| match write {
            Write::Message { inbox, conversation, message_id, status, sent_at, body, conversation_update } => {
                let shared = previous.is_some_and(|previous| Arc::ptr_eq(previous, body) || previous == body);
                previous = Some(body);
                Logged::Copy {
                    inbox,
                    conversation,
                    message_id,
                    status: *status,
                    sent_at: *sent_at,
                    body: (!shared).then_some(&**body),
                    conversation_update: *conversation_update,
                }
            }
            other => Logged::Other(Cow::Borrowed(other)),
        })
        .collect();
    postcard::to_allocvec(&(SHARED_BODIES, logged))
}

/// The writes of a log row: in [`Logged`]'s form, or as an earlier version logged them (the
/// bare list in postcard, or JSON text), so a log a crash left behind is applied by the next
/// version.
fn decode(row: ValueRef<'_>) -> Result<Vec<Write>, String> {
    match row {
        ValueRef::Blob(bytes @ [SHARED_BODIES, ..]) => {
            let (_, logged): (u8, Vec<Logged<'_>>) = postcard::from_bytes(bytes).map_err(|err| err.to_string())?;
            let mut previous: Option<Arc<str>> = None;
            logged.into_iter().map(|logged| written(logged, &mut previous)).collect()
        }
        ValueRef::Blob(bytes) => postcard::from_bytes(bytes).map_err(|err| err.to_string()),
        ValueRef::Text(text) => serde_json::from_slice(text).map_err(|err| err.to_string()),
        other => Err(format!("a log row of type {}", other.data_type())),
    }
}

/// The write `logged` stands for; `previous` is the body of the row's copy before it.
fn written(logged: Logged<'_>, previous: &mut Option<Arc<str>>) -> Result<Write, String> {
    match logged {
        Logged::Copy { inbox, conversation, message_id, status, sent_at, body, conversation_update } => {
            let body = match body {
                Some(body) => Arc::from(body),
                None => previous.clone().ok_or("a copy whose body is its predecessor's comes first")?,
            };
            *previous = Some(Arc::clone(&body));
            Ok(Write::Message {
                inbox: inbox.to_owned(),
                conversation: conversation.to_owned(),
                message_id: message_id.to_owned(),
                status,
                sent_at,
                body,
                conversation_update,
            })
        }
        Logged::Other(write) => Ok(write.into_owned()),
    }
}

/// Slots in the ring of version 9: commits logged and not applied, at most.
#[cfg(test)]
pub(super) const SLOTS: i64 = 256;

/// The ring's commits not applied yet, oldest first (a slot holds its commit's number).
const RING: &str = "SELECT seq, app, writes FROM inboxd_history_ring \
     WHERE seq > (SELECT seq FROM inboxd_history_applied) ORDER BY seq LIMIT $1";
const RING_APPLIED: &str = "UPDATE inboxd_history_applied SET seq = $1";
/// The log before version 9: rows appended, deleted once applied.
const LOG: &str = "SELECT seq, app, writes FROM inboxd_history_log ORDER BY seq LIMIT $1";
const LOG_APPLIED: &str = "DELETE FROM inboxd_history_log WHERE seq <= $1";

/// A logged commit as read back: its number, its app, and its writes (or why they cannot be
/// decoded).
pub(super) type LoggedRow = (i64, String, Result<Vec<Write>, String>);

/// Where an earlier version left commits.
#[derive(Clone, Copy, Debug)]
pub(super) enum Left {
    /// The table of appended rows (before version 9).
    Log,
    /// The ring (version 9).
    Ring,
}

impl Left {
    /// The oldest commits left here, up to `most`, in order.
    ///
    /// # Errors
    /// The SQLite error.
    pub(super) fn oldest(self, connection: &Connection, most: usize) -> rusqlite::Result<Vec<LoggedRow>> {
        let sql = match self {
            Left::Log => LOG,
            Left::Ring => RING,
        };
        connection
            .prepare_cached(sql)?
            .query_map([most as i64], |row| Ok((row.get(0)?, row.get(1)?, decode(row.get_ref(2)?))))?
            .collect()
    }

    /// Marks the commits left here through number `seq` applied, inside the pass's transaction.
    ///
    /// # Errors
    /// The SQLite error.
    pub(super) fn applied_through(self, connection: &Connection, seq: i64) -> rusqlite::Result<()> {
        let sql = match self {
            Left::Log => LOG_APPLIED,
            Left::Ring => RING_APPLIED,
        };
        connection.prepare_cached(sql)?.execute([seq]).map(drop)
    }
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

    /// Leaves message `id` as commit `seq` in ring slot `slot`.
    fn leave(connection: &Connection, slot: i64, seq: i64, id: &str) {
        let row = encode([message("bob", "alice", id, 150, seq, Some(true))].iter()).unwrap();
        let sql = "INSERT OR REPLACE INTO inboxd_history_ring (slot, seq, app, writes) VALUES (?1, ?2, 'app', ?3)";
        connection.execute(sql, (slot, seq, row)).unwrap();
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

    /// A ring left across its end comes back in the order it was logged, without the commits
    /// applied already, a pass at a time.
    #[test]
    fn a_ring_left_behind_is_read_in_order_across_its_end() {
        let connection = database();
        for (slot, seq) in [(2, 2), (3, 3), (0, 4), (1, 5)] {
            leave(&connection, slot, seq, &format!("m{seq}"));
        }
        Left::Ring.applied_through(&connection, 2).unwrap();
        assert_eq!(ids(&Left::Ring.oldest(&connection, 2).unwrap()), ["m3", "m4"]);
        Left::Ring.applied_through(&connection, 4).unwrap();
        assert_eq!(ids(&Left::Ring.oldest(&connection, 10).unwrap()), ["m5"]);
        Left::Ring.applied_through(&connection, 5).unwrap();
        assert!(Left::Ring.oldest(&connection, 10).unwrap().is_empty());
    }

    /// Every logged kind comes back from its row as it went in, from this version's rows and
    /// from the two forms earlier versions logged.
    #[test]
    fn a_row_decodes_to_the_writes_it_was_encoded_from() {
        let writes = [
            message("bob", "alice", "m1", 150, 1, Some(true)),
            message("alice", "bob", "m1", 200, 1, None),
            Write::Status { inbox: "alice".into(), conversation: "bob".into(), message_id: "m1".into(), status: 250 },
            Write::Conversation {
                inbox: "bob".into(),
                conversation: "alice".into(),
                is_new: Some(false),
                archived: None,
            },
            message("carol", "dave", "m2", 150, 2, Some(true)),
        ];
        let row = encode(writes.iter()).unwrap();
        assert_eq!(decode(ValueRef::Blob(&row)).unwrap(), writes);
        let bare = postcard::to_allocvec(&writes[..]).unwrap();
        assert_eq!(decode(ValueRef::Blob(&bare)).unwrap(), writes);
        let text = serde_json::to_string(&writes).unwrap();
        assert_eq!(decode(ValueRef::Text(text.as_bytes())).unwrap(), writes);
        assert!(decode(ValueRef::Integer(1)).unwrap_err().contains("Integer"));
    }

    /// The copies of one message share a body: the row holds it once, and the decoded copies
    /// share it again.
    #[test]
    fn a_body_shared_by_copies_is_logged_once() {
        let sender = message("bob", "alice", "m1", 100, 1, Some(true));
        let Write::Message { body, .. } = &sender else { unreachable!() };
        let recipient = Write::Message {
            inbox: "alice".into(),
            conversation: "bob".into(),
            message_id: "m1".into(),
            status: 150,
            sent_at: 1,
            body: Arc::clone(body),
            conversation_update: Some(true),
        };
        let row = encode([&sender, &recipient].into_iter()).unwrap();
        assert!(row.len() < 2 * body.len(), "{} bytes for a body of {}", row.len(), body.len());
        let decoded = decode(ValueRef::Blob(&row)).unwrap();
        assert_eq!(decoded, [sender, recipient]);
        let [Write::Message { body: first, .. }, Write::Message { body: second, .. }] = &decoded[..] else {
            panic!("{decoded:?}")
        };
        assert!(Arc::ptr_eq(first, second));
    }
}
