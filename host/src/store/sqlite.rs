//! The SQLite back end's writes: one connection of its own (rusqlite), the upserts prepared once
//! as single-row statements and run in order inside one transaction per batch.
//!
//! Through sqlx, each multi-row statement went to sqlx's SQLite thread and back, was bound by
//! parameter name (quadratic), needed a statement journal, and a pooled connection other than the
//! last writer's found its page cache stale. Here none of that happens; sqlx keeps the reads.

use std::sync::{Mutex, PoisonError};

use rusqlite::{Connection, OpenFlags, Transaction, params};

use super::apply::{CONVERSATION_FLAGS, CONVERSATION_MESSAGES, GROUP, TIMELINE_MESSAGES, TIMELINE_STATUSES, WEBHOOKS};
use super::records::{Write, now_ms};

/// The writer connection's settings: WAL (readers never block the writer), FULL (a commit
/// survives power loss), a 32 MiB page cache (the indexes take random keys), no temp files.
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000; \
     PRAGMA cache_size = -32768; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 8192";

/// The single-row forms of the shared multi-row upserts.
struct Sql {
    timeline_message: String,
    timeline_status: String,
    conversation_message: String,
    webhook: String,
}

/// The connection all of a process's store writes go through.
pub(super) struct SqliteWriter {
    connection: Mutex<Connection>,
    sql: Sql,
}

impl SqliteWriter {
    /// Opens the database file at `path` (migrated already) for writing.
    ///
    /// # Errors
    /// When the file cannot be opened or refuses the settings.
    pub(super) fn open(path: &str) -> rusqlite::Result<SqliteWriter> {
        let connection = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        connection.execute_batch(PRAGMAS)?;
        let sql = Sql {
            timeline_message: TIMELINE_MESSAGES.sql(1),
            timeline_status: TIMELINE_STATUSES.sql(1),
            conversation_message: CONVERSATION_MESSAGES.sql(1),
            webhook: WEBHOOKS.sql(1),
        };
        Ok(SqliteWriter { connection: Mutex::new(connection), sql })
    }

    /// Applies `writes` of app `app` in order, in one transaction. Blocks: call it off the
    /// async threads.
    ///
    /// # Errors
    /// The SQLite error; nothing of the batch is then committed.
    pub(super) fn apply(&self, app: &str, writes: &[Write]) -> rusqlite::Result<()> {
        // A panic mid-batch rolled its transaction back (dropped); the connection is sound.
        let mut connection = self.connection.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = connection.transaction()?;
        for write in writes {
            self.apply_one(&tx, app, write)?;
        }
        tx.commit()
    }

    fn apply_one(&self, tx: &Transaction<'_>, app: &str, write: &Write) -> rusqlite::Result<()> {
        match write {
            Write::Message { inbox, conversation, message_id, status, sent_at, body, conversation_update } => {
                tx.prepare_cached(&self.sql.timeline_message)?.execute(params![
                    app,
                    inbox,
                    message_id,
                    conversation,
                    status,
                    sent_at,
                    body
                ])?;
                if let Some(is_new) = conversation_update {
                    tx.prepare_cached(&self.sql.conversation_message)?.execute(params![
                        app,
                        inbox,
                        conversation,
                        body,
                        i64::from(*is_new),
                        0,
                        sent_at
                    ])?;
                }
            }
            Write::Status { inbox, conversation, message_id, status } => {
                tx.prepare_cached(&self.sql.timeline_status)?.execute(params![
                    app,
                    inbox,
                    message_id,
                    conversation,
                    status,
                    0,
                    None::<&str>
                ])?;
            }
            Write::Webhook { id, endpoint, event_type, body, created_at } => {
                tx.prepare_cached(&self.sql.webhook)?.execute(params![
                    id,
                    app,
                    endpoint,
                    event_type,
                    body,
                    0,
                    created_at,
                    0,
                    None::<&str>,
                    created_at
                ])?;
            }
            Write::Conversation { inbox, conversation, is_new, archived } => {
                tx.prepare_cached(CONVERSATION_FLAGS)?.execute(params![
                    app,
                    inbox,
                    conversation,
                    is_new.map(i64::from),
                    archived.map(i64::from)
                ])?;
            }
            Write::Group(group) => {
                let members = serde_json::to_string(&group.members).expect("a list of strings serialises");
                tx.prepare_cached(GROUP)?.execute(params![
                    app,
                    group.id,
                    group.name,
                    group.owner,
                    members,
                    group.body.to_string(),
                    now_ms()
                ])?;
            }
        }
        Ok(())
    }
}
