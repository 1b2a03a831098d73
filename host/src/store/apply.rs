//! The writes as SQL: idempotent upserts both back ends share, one transaction per batch (all or
//! nothing), planned as steps; PostgreSQL runs them here as multi-row statements, SQLite in `sqlite`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Transaction};
use thiserror::Error;

use super::Store;
use super::records::Write;

/// Most rows per multi-row statement. A run is cut into power-of-two chunks, so a statement's
/// text repeats and sqlx's per-connection cache of prepared statements serves it (7 shapes per
/// statement).
const CHUNK: usize = 64;

/// Message copies; a row a status created first gets its body, and the status never falls.
static TIMELINE_MESSAGES: Statement = Statement {
    insert: "INSERT INTO inbox_timeline (app, inbox, message_id, conversation, status, sent_at, body) VALUES ",
    upsert: " ON CONFLICT (app, inbox, message_id) DO UPDATE SET conversation = excluded.conversation, \
     sent_at = excluded.sent_at, body = excluded.body, \
     status = CASE WHEN excluded.status > inbox_timeline.status THEN excluded.status ELSE inbox_timeline.status END",
    columns: 7,
    single_row: OnceLock::new(),
};

/// Status changes; a status that overtakes its message creates a body-less row.
static TIMELINE_STATUSES: Statement = Statement {
    insert: "INSERT INTO inbox_timeline (app, inbox, message_id, conversation, status, sent_at, body) VALUES ",
    upsert: " ON CONFLICT (app, inbox, message_id) DO UPDATE SET \
     status = CASE WHEN excluded.status > inbox_timeline.status THEN excluded.status ELSE inbox_timeline.status END",
    columns: 7,
    single_row: OnceLock::new(),
};

/// Conversations' last messages; an older message (replayed or late) never replaces a newer one.
static CONVERSATION_MESSAGES: Statement = Statement {
    insert: "INSERT INTO inbox_conversations \
     (app, inbox, conversation, last_message, is_new, archived, updated_at) VALUES ",
    upsert: " ON CONFLICT (app, inbox, conversation) DO UPDATE SET last_message = excluded.last_message, \
     is_new = excluded.is_new, archived = 0, updated_at = excluded.updated_at \
     WHERE inbox_conversations.updated_at <= excluded.updated_at",
    columns: 7,
    single_row: OnceLock::new(),
};

static WEBHOOKS: Statement = Statement {
    insert: "INSERT INTO webhook_outbox \
     (id, app, endpoint, event_type, body, attempts, next_attempt_at, dead, last_error, created_at) VALUES ",
    upsert: " ON CONFLICT (id) DO NOTHING",
    columns: 10,
    single_row: OnceLock::new(),
};

/// A user's flags; `NULL` leaves a flag as it is.
const CONVERSATION_FLAGS: &str = "INSERT INTO inbox_conversations \
     (app, inbox, conversation, last_message, is_new, archived, updated_at) \
     VALUES ($1, $2, $3, NULL, COALESCE($4, 0), COALESCE($5, 0), 0) \
     ON CONFLICT (app, inbox, conversation) DO UPDATE SET \
     is_new = COALESCE($4, inbox_conversations.is_new), archived = COALESCE($5, inbox_conversations.archived)";

const GROUP: &str = "INSERT INTO chat_groups (app, id, name, owner, members, body, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (app, id) DO UPDATE SET name = excluded.name, owner = excluded.owner, \
     members = excluded.members, body = excluded.body, updated_at = excluded.updated_at";

/// A multi-row upsert: `insert` + `($1, …), (…)` + `upsert`.
pub(super) struct Statement {
    insert: &'static str,
    upsert: &'static str,
    columns: usize,
    single_row: OnceLock<String>,
}

impl Statement {
    fn sql(&self, rows: usize) -> String {
        let mut sql = String::from(self.insert);
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
        sql.push_str(self.upsert);
        sql
    }

    /// The statement for one row.
    pub(super) fn single_row(&self) -> &str {
        self.single_row.get_or_init(|| self.sql(1))
    }
}

/// One value of a row.
pub(super) enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    Owned(String),
}

/// A batch as statements, in order: each run of commuting writes as the rows of up to four
/// upserts (one row per key, as applying them one by one would leave it), the rest one by one.
pub(super) enum Step<'a> {
    Rows(&'static Statement, Vec<Vec<Value<'a>>>),
    One(&'static str, Vec<Value<'a>>),
}

/// The steps that apply `writes` of app `app`.
pub(super) fn steps<'a>(app: &'a str, writes: &'a [Write]) -> Vec<Step<'a>> {
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
            Value::Text(v) => query.bind(*v),
            Value::OptText(v) => query.bind(*v),
            Value::Int(v) => query.bind(*v),
            Value::OptInt(v) => query.bind(*v),
            Value::Owned(v) => query.bind(v.as_str()),
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
    /// Status changes, one per (inbox, message id): the highest.
    statuses: HashMap<(&'a str, &'a str), (&'a str, i64)>,
    /// Conversation upserts, one per (inbox, conversation): the newest message (later on ties),
    /// which is what applying them one by one leaves.
    conversations: HashMap<(&'a str, &'a str), &'a Write>,
    webhooks: Vec<&'a Write>,
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
                let entry = self.statuses.entry((inbox, message_id)).or_insert((conversation, *status));
                entry.1 = entry.1.max(*status);
                true
            }
            Write::Webhook { .. } => {
                self.webhooks.push(write);
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
                    Value::Text(app),
                    Value::Text(inbox),
                    Value::Text(message_id),
                    Value::Text(conversation),
                    Value::Int(*status),
                    Value::Int(*sent_at),
                    Value::OptText(Some(body)),
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
            .map(|((inbox, message_id), (conversation, status))| {
                vec![
                    Value::Text(app),
                    Value::Text(inbox),
                    Value::Text(message_id),
                    Value::Text(conversation),
                    Value::Int(*status),
                    Value::Int(0),
                    Value::OptText(None),
                ]
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
                        Value::Text(app),
                        Value::Text(inbox),
                        Value::Text(conversation),
                        Value::OptText(Some(body)),
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
                Write::Webhook { id, endpoint, event_type, body, created_at } => Some(vec![
                    Value::Text(id),
                    Value::Text(app),
                    Value::Text(endpoint),
                    Value::Text(event_type),
                    Value::Text(body),
                    Value::Int(0),
                    Value::Int(*created_at),
                    Value::Int(0),
                    Value::OptText(None),
                    Value::Int(*created_at),
                ]),
                _ => None,
            })
            .collect();
        if !webhooks.is_empty() {
            steps.push(Step::Rows(&WEBHOOKS, webhooks));
        }
        *self = Run::default();
    }
}

/// Why a batch was not committed; the writer retries it.
#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the SQLite writer panicked")]
    Panicked,
}

impl Store {
    /// Applies `writes` of app `app` in one transaction, in order.
    ///
    /// # Errors
    /// The database error; nothing of the batch is then committed.
    pub async fn apply(&self, app: &str, writes: Arc<[Write]>) -> Result<(), ApplyError> {
        match self.sqlite.clone() {
            Some(sqlite) => {
                let app = app.to_owned();
                let applied = tokio::task::spawn_blocking(move || sqlite.apply(&app, &writes)).await;
                Ok(applied.map_err(|_| ApplyError::Panicked)??)
            }
            None => Ok(self.apply_pooled(app, &writes).await?),
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
                Value::Text(app),
                Value::Text(inbox),
                Value::Text(conversation),
                Value::OptInt(is_new.map(i64::from)),
                Value::OptInt(archived.map(i64::from)),
            ],
        ),
        Write::Group(group) => Step::One(
            GROUP,
            vec![
                Value::Text(app),
                Value::Text(&group.id),
                Value::OptText(group.name.as_deref()),
                Value::OptText(group.owner.as_deref()),
                Value::Owned(serde_json::to_string(&group.members).expect("a list of strings serialises")),
                Value::Owned(group.body.to_string()),
                Value::Int(super::records::now_ms()),
            ],
        ),
        Write::Message { .. } | Write::Status { .. } | Write::Webhook { .. } => {
            unreachable!("runs take every message, status and webhook write")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::store::StoreUrl;

    fn message(inbox: &str, conversation: &str, id: &str, status: i64, sent_at: i64, is_new: Option<bool>) -> Write {
        let body = json!({"message_id": id, "text": id, "status": status, "timestamp": sent_at});
        Write::Message {
            inbox: inbox.into(),
            conversation: conversation.into(),
            message_id: id.into(),
            status,
            sent_at,
            body: body.to_string(),
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
            if self.pooled {
                self.store.apply_pooled("app", writes).await.unwrap();
            } else {
                self.store.apply("app", writes.into()).await.unwrap();
            }
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
}
