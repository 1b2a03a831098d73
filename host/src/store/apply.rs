//! The writes as SQL: idempotent upserts both back ends share, one transaction per batch (all or
//! nothing), planned as steps; PostgreSQL runs them here as multi-row statements, SQLite in `sqlite`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Transaction};
use thiserror::Error;

use super::Store;
use super::records::Write;
use super::wal_sync::Synced;
use super::writer::WriterGone;

/// Most rows per multi-row statement. A run is cut into power-of-two chunks, so a statement's
/// text repeats and sqlx's per-connection cache of prepared statements serves it (7 shapes per
/// statement).
const CHUNK: usize = 64;

/// Message copies; a replayed copy keeps the status a receipt raised meanwhile.
static TIMELINE_MESSAGES: Statement = Statement {
    head: "INSERT INTO inbox_timeline (app, inbox, message_id, conversation, status, sent_at, body) VALUES ",
    tail: " ON CONFLICT (app, inbox, message_id) DO UPDATE SET conversation = excluded.conversation, \
     sent_at = excluded.sent_at, body = excluded.body, \
     status = CASE WHEN excluded.status > inbox_timeline.status THEN excluded.status ELSE inbox_timeline.status END",
    columns: 7,
    single: None,
    single_row: OnceLock::new(),
};

/// Status changes (read receipts), rows `(status, app, inbox, message_id, conversation)`: they
/// raise the status of an entry that exists in the named inbox *and* conversation, and never
/// insert one (a receipt that names anything else changes nothing). The status never falls.
static TIMELINE_STATUSES: Statement = Statement {
    head: "UPDATE inbox_timeline SET status = v.column1 FROM (VALUES ",
    tail: ") AS v WHERE inbox_timeline.app = v.column2 AND inbox_timeline.message_id = v.column4 \
     AND inbox_timeline.inbox = v.column3 AND inbox_timeline.conversation = v.column5 \
     AND inbox_timeline.status < v.column1",
    columns: 5,
    // SQLite's `$N` are named parameters, numbered by first appearance: the text must name them in order.
    single: Some(
        "UPDATE inbox_timeline SET status = $1 \
         WHERE app = $2 AND inbox = $3 AND message_id = $4 AND conversation = $5 AND status < $1",
    ),
    single_row: OnceLock::new(),
};

/// Conversations' last messages; an older message (replayed or late) never replaces a newer one.
/// `updated_at` is the time inboxd handled the message, never the client's `timestamp`.
static CONVERSATION_MESSAGES: Statement = Statement {
    head: "INSERT INTO inbox_conversations \
     (app, inbox, conversation, last_message, is_new, archived, updated_at) VALUES ",
    tail: " ON CONFLICT (app, inbox, conversation) DO UPDATE SET last_message = excluded.last_message, \
     is_new = excluded.is_new, archived = 0, updated_at = excluded.updated_at \
     WHERE inbox_conversations.updated_at <= excluded.updated_at",
    columns: 7,
    single: None,
    single_row: OnceLock::new(),
};

static WEBHOOKS: Statement = Statement {
    head: "INSERT INTO webhook_outbox \
     (id, app, endpoint, event_type, body, attempts, next_attempt_at, dead, last_error, created_at, message_id) VALUES ",
    tail: " ON CONFLICT (id) DO NOTHING",
    columns: 11,
    single: None,
    single_row: OnceLock::new(),
};

/// Ids given to chat messages, before their copies are published; a redelivery's is kept.
static INTENTS: Statement = Statement {
    head: "INSERT INTO inboxd_intents (app, message_id, fingerprint, created_at) VALUES ",
    tail: " ON CONFLICT (app, message_id) DO NOTHING",
    columns: 4,
    single: None,
    single_row: OnceLock::new(),
};

/// Settled messages' intents, rows `(app, message_id)`.
static SETTLED_INTENTS: Statement = Statement {
    head: "DELETE FROM inboxd_intents WHERE (app, message_id) IN (VALUES ",
    tail: ")",
    columns: 2,
    single: Some("DELETE FROM inboxd_intents WHERE app = $1 AND message_id = $2"),
    single_row: OnceLock::new(),
};

/// Settled messages' delivered webhook events (kept while a redelivery could add them again).
static SETTLED_WEBHOOKS: Statement = Statement {
    head: "DELETE FROM webhook_outbox WHERE dead = 2 AND (app, message_id) IN (VALUES ",
    tail: ")",
    columns: 2,
    single: Some("DELETE FROM webhook_outbox WHERE dead = 2 AND app = $1 AND message_id = $2"),
    single_row: OnceLock::new(),
};

/// A user's flags on a conversation of theirs that exists; `NULL` leaves a flag as it is.
/// Parameters in order of appearance (see [`TIMELINE_STATUSES`]).
const CONVERSATION_FLAGS: &str = "UPDATE inbox_conversations \
     SET is_new = COALESCE($1, is_new), archived = COALESCE($2, archived) \
     WHERE app = $3 AND inbox = $4 AND conversation = $5";

const GROUP: &str = "INSERT INTO chat_groups (app, id, name, owner, members, body, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (app, id) DO UPDATE SET name = excluded.name, owner = excluded.owner, \
     members = excluded.members, body = excluded.body, updated_at = excluded.updated_at";

/// A multi-row statement: `head` + `($1, …), (…)` + `tail`.
pub(super) struct Statement {
    head: &'static str,
    tail: &'static str,
    columns: usize,
    /// The one-row statement when it is not the multi-row text with one row.
    single: Option<&'static str>,
    single_row: OnceLock<String>,
}

impl Statement {
    fn sql(&self, rows: usize) -> String {
        let mut sql = String::from(self.head);
        for row in 0..rows {
            sql.push_str(if row == 0 { "(" } else { ", (" });
            for column in 0..self.columns {
                if column > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("${}", row * self.columns + column + 1));
            }
            sql.push(')');
        }
        sql.push_str(self.tail);
        sql
    }

    /// The statement for one row.
    pub(super) fn single_row(&self) -> &str {
        match self.single {
            Some(sql) => sql,
            None => self.single_row.get_or_init(|| self.sql(1)),
        }
    }
}

/// One value of a row. Text is stored as [`text`] makes it.
pub(super) enum Value<'a> {
    Text(Cow<'a, str>),
    OptText(Option<Cow<'a, str>>),
    Int(i64),
    OptInt(Option<i64>),
}

/// What stands in for U+0000, which PostgreSQL's `text` cannot hold (and SQLite's string
/// functions stop at): the replacement character.
const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// `value` as a database can store it: with every U+0000 replaced (borrowed when there is none,
/// which is every id, since ids refuse control characters, and every JSON text, which escapes them).
pub(super) fn text(value: &str) -> Cow<'_, str> {
    if value.contains('\0') { Cow::Owned(value.replace('\0', NUL_REPLACEMENT)) } else { Cow::Borrowed(value) }
}

fn txt(value: &str) -> Value<'_> {
    Value::Text(text(value))
}

fn opt_txt(value: Option<&str>) -> Value<'_> {
    Value::OptText(value.map(text))
}

/// A batch as statements, in order: each run of commuting writes as the rows of up to four
/// upserts (one row per key, as applying them one by one would leave it), the rest one by one.
pub(super) enum Step<'a> {
    Rows(&'static Statement, Vec<Vec<Value<'a>>>),
    One(&'static str, Vec<Value<'a>>),
}

/// The steps that apply `writes` of app `app`.
pub(super) fn steps<'a>(app: &'a str, writes: impl IntoIterator<Item = &'a Write>) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut run = Run::default();
    for write in writes {
        if !run.add(write) {
            run.drain_into(app, &mut steps);
            steps.push(one_by_one(app, write));
        }
    }
    run.drain_into(app, &mut steps);
    steps
}

/// Runs `statement` over `rows` (each `statement.columns` values), in power-of-two chunks of at
/// most `CHUNK` rows.
async fn upsert_rows(
    tx: &mut Transaction<'_, Any>,
    statement: &Statement,
    rows: &[Vec<Value<'_>>],
) -> Result<(), sqlx::Error> {
    let mut rest = rows;
    while !rest.is_empty() {
        let size = CHUNK.min(1 << rest.len().ilog2());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let sql = statement.sql(chunk.len());
        bind(sqlx::query(&sql), chunk.iter().flatten()).execute(&mut **tx).await?;
    }
    Ok(())
}

fn bind<'q, 'v: 'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    values: impl Iterator<Item = &'q Value<'v>>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for value in values {
        query = match value {
            Value::Text(v) => query.bind(v.as_ref()),
            Value::OptText(v) => query.bind(v.as_deref()),
            Value::Int(v) => query.bind(*v),
            Value::OptInt(v) => query.bind(*v),
        };
    }
    query
}

/// Consecutive writes that commute, collapsed to one row per key.
#[derive(Default)]
struct Run<'a> {
    /// Timeline copies, one per (inbox, message id): the last one, with the highest status.
    messages: Vec<(&'a Write, i64)>,
    message_keys: HashMap<(&'a str, &'a str), usize>,
    /// Status changes, one per (inbox, message id, conversation): the highest. They run after
    /// the run's copies, so a receipt for a copy of the same run finds it.
    statuses: HashMap<(&'a str, &'a str, &'a str), i64>,
    /// Conversation upserts, one per (inbox, conversation): the newest message (later on ties),
    /// which is what applying them one by one leaves.
    conversations: HashMap<(&'a str, &'a str), &'a Write>,
    webhooks: Vec<&'a Write>,
    /// Intents, then settled messages: a message is settled only after its intent committed,
    /// so within a run an intent never follows the settling of its message.
    intents: Vec<&'a Write>,
    settled: Vec<&'a str>,
}

impl<'a> Run<'a> {
    /// Takes `write` if it commutes with the run; `false` for the kinds applied one by one.
    fn add(&mut self, write: &'a Write) -> bool {
        match write {
            Write::Message { inbox, conversation, message_id, status, sent_at, conversation_update, .. } => {
                match self.message_keys.get(&(inbox.as_str(), message_id.as_str())) {
                    Some(&at) => {
                        let highest = self.messages[at].1.max(*status);
                        self.messages[at] = (write, highest);
                    }
                    None => {
                        self.message_keys.insert((inbox, message_id), self.messages.len());
                        self.messages.push((write, *status));
                    }
                }
                if conversation_update.is_some() {
                    let newer = |kept: &&Write| matches!(kept, Write::Message { sent_at: s, .. } if s <= sent_at);
                    let key = (inbox.as_str(), conversation.as_str());
                    if self.conversations.get(&key).is_none_or(newer) {
                        self.conversations.insert(key, write);
                    }
                }
                true
            }
            Write::Status { inbox, conversation, message_id, status } => {
                let highest = self.statuses.entry((inbox, message_id, conversation)).or_insert(*status);
                *highest = (*highest).max(*status);
                true
            }
            Write::Webhook { .. } => {
                self.webhooks.push(write);
                true
            }
            Write::Intent { .. } => {
                self.intents.push(write);
                true
            }
            Write::Settled { message_id } => {
                self.settled.push(message_id);
                true
            }
            Write::Conversation { .. } | Write::Group(_) => false,
        }
    }

    /// Appends the run's upserts to `steps` and starts a new run.
    fn drain_into(&mut self, app: &'a str, steps: &mut Vec<Step<'a>>) {
        let messages: Vec<Vec<Value<'a>>> = self
            .messages
            .iter()
            .filter_map(|(write, status)| match write {
                Write::Message { inbox, conversation, message_id, sent_at, body, .. } => Some(vec![
                    txt(app),
                    txt(inbox),
                    txt(message_id),
                    txt(conversation),
                    Value::Int(*status),
                    Value::Int(*sent_at),
                    opt_txt(Some(body)),
                ]),
                _ => None,
            })
            .collect();
        if !messages.is_empty() {
            steps.push(Step::Rows(&TIMELINE_MESSAGES, messages));
        }
        let statuses: Vec<Vec<Value<'a>>> = self
            .statuses
            .iter()
            .map(|((inbox, message_id, conversation), status)| {
                vec![Value::Int(*status), txt(app), txt(inbox), txt(message_id), txt(conversation)]
            })
            .collect();
        if !statuses.is_empty() {
            steps.push(Step::Rows(&TIMELINE_STATUSES, statuses));
        }
        let conversations: Vec<Vec<Value<'a>>> = self
            .conversations
            .values()
            .filter_map(|write| match write {
                Write::Message { inbox, conversation, sent_at, body, conversation_update: Some(is_new), .. } => {
                    Some(vec![
                        txt(app),
                        txt(inbox),
                        txt(conversation),
                        opt_txt(Some(body)),
                        Value::Int(i64::from(*is_new)),
                        Value::Int(0),
                        Value::Int(*sent_at),
                    ])
                }
                _ => None,
            })
            .collect();
        if !conversations.is_empty() {
            steps.push(Step::Rows(&CONVERSATION_MESSAGES, conversations));
        }
        let webhooks: Vec<Vec<Value<'a>>> = self
            .webhooks
            .iter()
            .filter_map(|write| match write {
                Write::Webhook { id, endpoint, event_type, body, created_at, message_id } => Some(vec![
                    txt(id),
                    txt(app),
                    txt(endpoint),
                    txt(event_type),
                    txt(body),
                    Value::Int(0),
                    Value::Int(*created_at),
                    Value::Int(0),
                    Value::OptText(None),
                    Value::Int(*created_at),
                    opt_txt(message_id.as_deref()),
                ]),
                _ => None,
            })
            .collect();
        if !webhooks.is_empty() {
            steps.push(Step::Rows(&WEBHOOKS, webhooks));
        }
        let intents: Vec<Vec<Value<'a>>> = self
            .intents
            .iter()
            .filter_map(|write| match write {
                Write::Intent { fingerprint, message_id, created_at } => {
                    Some(vec![txt(app), txt(message_id), Value::Int(*fingerprint), Value::Int(*created_at)])
                }
                _ => None,
            })
            .collect();
        if !intents.is_empty() {
            steps.push(Step::Rows(&INTENTS, intents));
        }
        if !self.settled.is_empty() {
            let settled = || self.settled.iter().map(|id| vec![txt(app), txt(id)]).collect::<Vec<_>>();
            steps.push(Step::Rows(&SETTLED_INTENTS, settled()));
            steps.push(Step::Rows(&SETTLED_WEBHOOKS, settled()));
        }
        *self = Run::default();
    }
}

/// Why a batch was not committed. [`ApplyError::is_refusal`] tells the writer whether to retry it
/// or to look for the writes the database refuses.
#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the SQLite writer panicked")]
    Panicked,
    /// The store stopped before the commit was synced.
    #[error(transparent)]
    Gone(#[from] WriterGone),
}

/// PostgreSQL's SQLSTATE classes that refuse the data itself: data exception (22: a NUL in
/// text, a value out of range), integrity constraint violation (23), program limit exceeded (54:
/// a row or value too large). Everything else (connection, resources, locks, permissions, the
/// schema) is about the database, not the rows, and is retried.
const POSTGRES_REFUSALS: [&str; 3] = ["22", "23", "54"];

/// PostgreSQL's SQLSTATE for a backend an administrator (or a pooler, or a failover) terminated.
const ADMIN_SHUTDOWN: &str = "57P01";

/// SQLite's primary result codes that refuse the data: too big (18), constraint (19), type
/// mismatch (20), parameter out of range (25).
const SQLITE_REFUSALS: [i64; 4] = [18, 19, 20, 25];

/// Whether a database error code refuses the data: a PostgreSQL SQLSTATE (always 5 characters)
/// of [`POSTGRES_REFUSALS`], or a SQLite (extended) result code of [`SQLITE_REFUSALS`].
fn refusing_code(code: &str) -> bool {
    if code.len() == 5 {
        return POSTGRES_REFUSALS.iter().any(|class| code.starts_with(class));
    }
    code.parse::<i64>().is_ok_and(|extended| SQLITE_REFUSALS.contains(&(extended & 0xff)))
}

impl ApplyError {
    /// Whether the database ended the transaction's connection while it was up and answering (an
    /// administrator, a pooler or a failover terminated it): a new connection may well work at
    /// once, so the writer retries at its first step rather than after a growing delay. When the
    /// server itself is going down, the next attempt cannot connect and the delays grow again.
    pub fn is_terminated_connection(&self) -> bool {
        matches!(self, ApplyError::Sql(sqlx::Error::Database(err)) if err.code().as_deref() == Some(ADMIN_SHUTDOWN))
    }

    /// Whether the database refused the writes themselves, so that retrying them as they are
    /// cannot succeed (the same data fails the same way); `false` for what a retry may fix:
    /// a lost connection, a pool timeout, a busy or locked database, I/O, a full disk.
    pub fn is_refusal(&self) -> bool {
        match self {
            ApplyError::Sql(sqlx::Error::Database(err)) => {
                err.code().is_some_and(|code| refusing_code(&code))
                    || matches!(
                        err.kind(),
                        sqlx::error::ErrorKind::UniqueViolation
                            | sqlx::error::ErrorKind::ForeignKeyViolation
                            | sqlx::error::ErrorKind::NotNullViolation
                            | sqlx::error::ErrorKind::CheckViolation
                    )
            }
            ApplyError::Sql(sqlx::Error::Encode(_)) => true,
            ApplyError::Sql(_) => false,
            ApplyError::Sqlite(err) => sqlite_refuses(err),
            // Planning or binding this data panicked: it would again.
            ApplyError::Panicked => true,
            ApplyError::Gone(_) => false,
        }
    }
}

/// Whether SQLite refuses the data itself: a constraint, too big, a type or parameter mismatch,
/// or a value that cannot be bound.
pub(super) fn sqlite_refuses(err: &rusqlite::Error) -> bool {
    match err {
        rusqlite::Error::SqliteFailure(err, _) => matches!(
            err.code,
            rusqlite::ErrorCode::ConstraintViolation
                | rusqlite::ErrorCode::TooBig
                | rusqlite::ErrorCode::TypeMismatch
                | rusqlite::ErrorCode::ParameterOutOfRange
        ),
        rusqlite::Error::ToSqlConversionFailure(_) | rusqlite::Error::NulError(_) => true,
        _ => false,
    }
}

impl Store {
    /// Applies `writes` of app `app` in one transaction, in order, and returns once it is on disk.
    ///
    /// # Errors
    /// The database error; nothing of the batch is then committed. [`ApplyError::Gone`] when the
    /// store stopped before syncing the commit.
    pub async fn apply(&self, app: &str, writes: Arc<[Write]>) -> Result<(), ApplyError> {
        let all = 0..writes.len();
        let synced = self.apply_part(app, writes, all).await?;
        // Applying the queued history first: the sync then waits for no pass of the thread.
        self.apply_history().await?;
        Ok(synced.wait().await?)
    }

    /// With SQLite, applies the queued history writes to the tables, so that what is read next
    /// sees every write committed before; with PostgreSQL there is none.
    ///
    /// # Errors
    /// The SQLite error; the queue keeps what was not applied.
    pub async fn apply_history(&self) -> Result<(), ApplyError> {
        let Some(sqlite) = self.sqlite.clone().filter(|sqlite| sqlite.history_behind()) else { return Ok(()) };
        Ok(tokio::task::spawn_blocking(move || sqlite.apply_history()).await.map_err(|_| ApplyError::Panicked)??)
    }

    /// Commits `writes[part]` like [`Store::apply`] (the writer's batch, or a part of it while it
    /// looks for refused writes), and returns what an ack of them waits for (SQLite's sync, and
    /// the pass that applied their history).
    ///
    /// # Errors
    /// The database error; nothing of the part is then committed.
    pub async fn apply_part(&self, app: &str, writes: Arc<[Write]>, part: Range<usize>) -> Result<Synced, ApplyError> {
        match self.sqlite.clone() {
            Some(sqlite) => {
                let app = app.to_owned();
                let applied = tokio::task::spawn_blocking(move || sqlite.apply(&app, &writes, part)).await;
                Ok(applied.map_err(|_| ApplyError::Panicked)??)
            }
            None => {
                self.apply_pooled(app, &writes[part]).await?;
                Ok(Synced::ALREADY)
            }
        }
    }

    /// [`Store::apply`] through the pool, each run's rows as multi-row statements.
    async fn apply_pooled(&self, app: &str, writes: &[Write]) -> Result<(), sqlx::Error> {
        let steps = steps(app, writes);
        let mut tx = self.pool().begin().await?;
        for step in &steps {
            match step {
                Step::Rows(statement, rows) => upsert_rows(&mut tx, statement, rows).await?,
                Step::One(sql, values) => {
                    bind(sqlx::query(sql), values.iter()).execute(&mut *tx).await?;
                }
            }
        }
        tx.commit().await
    }
}

/// A write that does not commute with its neighbours: a user's flags, a group.
fn one_by_one<'a>(app: &'a str, write: &'a Write) -> Step<'a> {
    match write {
        Write::Conversation { inbox, conversation, is_new, archived } => Step::One(
            CONVERSATION_FLAGS,
            vec![
                Value::OptInt(is_new.map(i64::from)),
                Value::OptInt(archived.map(i64::from)),
                txt(app),
                txt(inbox),
                txt(conversation),
            ],
        ),
        Write::Group(group) => Step::One(
            GROUP,
            vec![
                txt(app),
                txt(&group.id),
                opt_txt(group.name.as_deref()),
                opt_txt(group.owner.as_deref()),
                Value::Text(Cow::Owned(serde_json::to_string(&group.members).expect("a list of strings serialises"))),
                Value::Text(Cow::Owned(group.body.to_string())),
                Value::Int(crate::clock::now_ms()),
            ],
        ),
        Write::Message { .. }
        | Write::Status { .. }
        | Write::Webhook { .. }
        | Write::Intent { .. }
        | Write::Settled { .. } => {
            unreachable!("runs take every message, status and webhook write")
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::chat21::Group;
    use crate::store::StoreUrl;

    pub(in crate::store) fn message(
        inbox: &str,
        conversation: &str,
        id: &str,
        status: i64,
        sent_at: i64,
        is_new: Option<bool>,
    ) -> Write {
        let body = json!({"message_id": id, "text": id, "status": status, "timestamp": sent_at});
        Write::Message {
            inbox: inbox.into(),
            conversation: conversation.into(),
            message_id: id.into(),
            status,
            sent_at,
            body: body.to_string().into(),
            conversation_update: is_new,
        }
    }

    /// A fresh SQLite store, written through rusqlite (`pooled = false`, the daemon's way) or
    /// through sqlx's multi-row statements (`pooled = true`, PostgreSQL's way).
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        pooled: bool,
    }

    impl Fixture {
        async fn new(pooled: bool) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
            let store = Store::open(&url).await.unwrap().unwrap();
            Fixture { _dir: dir, store, pooled }
        }

        async fn apply(&self, writes: &[Write]) {
            self.try_apply(writes).await.unwrap();
        }

        async fn try_apply(&self, writes: &[Write]) -> Result<(), ApplyError> {
            if self.pooled {
                Ok(self.store.apply_pooled("app", writes).await?)
            } else {
                self.store.apply("app", writes.into()).await
            }
        }

        /// Every timeline row: (inbox, conversation, message id, status, has a body).
        async fn timeline(&self) -> Vec<(String, String, String, i64, i64)> {
            sqlx::query_as(
                "SELECT inbox, conversation, message_id, status, CASE WHEN body IS NULL THEN 0 ELSE 1 END \
                 FROM inbox_timeline \
                 ORDER BY inbox, message_id",
            )
            .fetch_all(self.store.pool())
            .await
            .unwrap()
        }
    }

    #[tokio::test]
    async fn replays_are_idempotent_and_statuses_only_rise() {
        for pooled in [false, true] {
            replays_are_idempotent_and_statuses_only_rise_on(Fixture::new(pooled).await).await;
        }
    }

    async fn replays_are_idempotent_and_statuses_only_rise_on(fixture: Fixture) {
        let store = &fixture.store;
        let receipt =
            Write::Status { inbox: "alice".into(), conversation: "bob".into(), message_id: "m1".into(), status: 250 };
        let flags = Write::Conversation {
            inbox: "bob".into(),
            conversation: "alice".into(),
            is_new: Some(false),
            archived: None,
        };
        // The receipt overtakes its message; the whole batch is applied twice.
        let batch = [
            receipt.clone(),
            message("alice", "bob", "m1", 100, 10, Some(false)),
            message("bob", "alice", "m1", 150, 10, Some(true)),
            message("bob", "alice", "m2", 150, 20, Some(true)),
            flags,
            message("bob", "alice", "m0", 150, 5, Some(true)),
        ];
        fixture.apply(&batch).await;
        fixture.apply(&batch).await;
        let alice = store.messages("app", "alice", "bob", None, 10).await.unwrap();
        assert_eq!(alice.len(), 1);
        assert_eq!(alice[0]["status"], 250);
        let bob = store.messages("app", "bob", "alice", None, 10).await.unwrap();
        let ids: Vec<&Value> = bob.iter().map(|m| &m["message_id"]).collect();
        assert_eq!(ids, ["m2", "m1", "m0"]);
        assert_eq!(store.messages("app", "bob", "alice", Some(20), 1).await.unwrap()[0]["message_id"], "m1");
        let list = store.conversations("app", "bob", false, 10).await.unwrap();
        assert_eq!(list.len(), 1);
        // The older m0 did not replace m2; the flag write after m2 cleared is_new.
        assert_eq!((list[0]["text"].as_str(), list[0]["is_new"].as_bool()), (Some("m2"), Some(false)));
        let archive = Write::Conversation {
            inbox: "bob".into(),
            conversation: "alice".into(),
            is_new: None,
            archived: Some(true),
        };
        fixture.apply(&[archive]).await;
        assert!(store.conversations("app", "bob", false, 10).await.unwrap().is_empty());
        assert_eq!(store.conversations("app", "bob", true, 10).await.unwrap().len(), 1);
        assert!(store.conversations("other", "bob", true, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn one_run_collapses_like_one_by_one() {
        for pooled in [false, true] {
            let fixture = Fixture::new(pooled).await;
            let status = |status| Write::Status {
                inbox: "bob".into(),
                conversation: "alice".into(),
                message_id: "m5".into(),
                status,
            };
            let batch = [
                message("bob", "alice", "m5", 150, 50, Some(true)),
                status(250),
                message("bob", "alice", "m3", 150, 30, Some(true)),
                status(200),
                message("bob", "alice", "m5", 150, 50, Some(true)),
            ];
            fixture.apply(&batch).await;
            let history = fixture.store.messages("app", "bob", "alice", None, 10).await.unwrap();
            let seen: Vec<(&Value, &Value)> = history.iter().map(|m| (&m["message_id"], &m["status"])).collect();
            assert_eq!(seen, [(&json!("m5"), &json!(250)), (&json!("m3"), &json!(150))], "pooled: {pooled}");
            let list = fixture.store.conversations("app", "bob", false, 10).await.unwrap();
            assert_eq!(list[0]["message_id"], "m5", "pooled: {pooled}");
        }
    }

    #[tokio::test]
    async fn receipts_touch_only_the_named_inbox_and_conversation_and_insert_nothing() {
        for pooled in [false, true] {
            let fixture = Fixture::new(pooled).await;
            fixture
                .apply(&[
                    message("bob", "alice", "m1", 150, 10, Some(true)),
                    message("alice", "bob", "m1", 100, 10, Some(false)),
                    message("bob", "g1", "m2", 150, 20, Some(true)),
                ])
                .await;
            let before = fixture.timeline().await;
            let status = |inbox: &str, conversation: &str, id: &str, status| Write::Status {
                inbox: inbox.into(),
                conversation: conversation.into(),
                message_id: id.into(),
                status,
            };
            // Bob names m1 (and the group's m2) under carol's conversation; carol never had
            // them; random ids; each alone and all in one batch.
            let stray = [
                status("bob", "carol", "m1", 200),
                status("carol", "bob", "m1", 250),
                status("bob", "carol", "m2", 200),
                status("carol", "bob", "m2", 250),
                status("bob", "alice", "random-1", 200),
                status("alice", "bob", "random-1", 250),
            ];
            for write in &stray {
                fixture.apply(std::slice::from_ref(write)).await;
            }
            fixture.apply(&stray).await;
            assert_eq!(fixture.timeline().await, before, "pooled: {pooled}");
            // Named right, in the same batch as a stray one for the same entry: only that entry rises.
            fixture.apply(&[status("bob", "carol", "m1", 250), status("bob", "alice", "m1", 200)]).await;
            let after = fixture.timeline().await;
            let bob_m1 = after.iter().find(|r| r.0 == "bob" && r.2 == "m1").unwrap();
            assert_eq!((bob_m1.1.as_str(), bob_m1.3), ("alice", 200), "pooled: {pooled}");
            assert_eq!(after.len(), before.len());
            // Flags on a conversation the user does not have insert nothing either.
            let flags = Write::Conversation {
                inbox: "bob".into(),
                conversation: "nobody".into(),
                is_new: Some(true),
                archived: Some(true),
            };
            fixture.apply(&[flags]).await;
            assert!(fixture.store.conversations("app", "bob", true, 10).await.unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn nul_characters_are_stored_replaced() {
        assert_eq!(text("a\0b"), "a\u{FFFD}b");
        assert!(matches!(text("plain"), Cow::Borrowed("plain")));
        for pooled in [false, true] {
            let fixture = Fixture::new(pooled).await;
            let group = Group {
                id: "g1".into(),
                name: Some("nul\0name".into()),
                owner: Some("alice".into()),
                members: vec!["alice".into()],
                body: json!({"uid": "g1", "name": "nul\0name", "members": {"alice": 1}}),
            };
            fixture.apply(&[Write::Group(group)]).await;
            let (name,): (String,) = sqlx::query_as("SELECT name FROM chat_groups WHERE id = 'g1'")
                .fetch_one(fixture.store.pool())
                .await
                .unwrap();
            assert_eq!(name, "nul\u{FFFD}name", "pooled: {pooled}");
            // The JSON keeps the character, escaped, and gives it back.
            let stored = fixture.store.group("app", "g1").await.unwrap().unwrap();
            assert_eq!(stored.name.as_deref(), Some("nul\0name"));
        }
    }

    #[test]
    fn codes_that_refuse_the_data() {
        for code in ["22021", "23505", "23514", "54000", "1811", "19", "2067", "18"] {
            assert!(refusing_code(code), "{code}");
        }
        // Connection, resources, locks, permissions, schema; SQLite busy, locked, I/O (2314 is
        // an I/O error whose digits start like class 23).
        for code in ["08006", "53100", "40P01", "57P01", "42501", "42P01", "5", "6", "10", "2314", "13"] {
            assert!(!refusing_code(code), "{code}");
        }
    }

    /// What the database refuses is told apart from what a retry may fix.
    #[tokio::test]
    async fn refusals_are_told_from_transient_failures() {
        let intent = |id: &str| Write::Intent { fingerprint: 1, message_id: id.into(), created_at: 1 };
        for pooled in [false, true] {
            let fixture = Fixture::new(pooled).await;
            sqlx::query(REFUSE_MARKED_INTENT).execute(fixture.store.pool()).await.unwrap();
            let err = fixture.try_apply(&[intent("refuse-me")]).await.unwrap_err();
            assert!(err.is_refusal(), "pooled: {pooled}: {err}");
            fixture.apply(&[intent("m1"), message("bob", "alice", "m1", 150, 1, None)]).await;
        }
        let fixture = Fixture::new(true).await;
        fixture.store.close().await;
        let err = fixture.try_apply(&[message("bob", "alice", "m1", 150, 1, None)]).await.unwrap_err();
        assert!(!err.is_refusal(), "{err}");
    }

    /// A trigger that refuses any intent whose message id starts with `refuse-me`: intents are
    /// committed in place (history writes go through SQLite's log, applied later).
    pub(in crate::store) const REFUSE_MARKED_INTENT: &str = "CREATE TRIGGER refuse_marked_intent \
         BEFORE INSERT ON inboxd_intents \
         WHEN NEW.message_id LIKE 'refuse-me%' BEGIN SELECT RAISE(ABORT, 'marked refused'); END";

    /// A trigger that refuses any timeline entry whose body mentions `refuse-me`.
    pub(in crate::store) const REFUSE_MARKED: &str = "CREATE TRIGGER refuse_marked BEFORE INSERT ON inbox_timeline \
         WHEN NEW.body LIKE '%refuse-me%' BEGIN SELECT RAISE(ABORT, 'marked refused'); END";
}
