//! History queries: a user's conversations (live or archived), the messages of one of them
//! (newest first, paged), and stored groups; shaped as chat21 clients know them.

use serde_json::{Map, Value};
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Store;
use crate::chat21::Group;

/// Most rows one page returns.
pub const MAX_PAGE: i64 = 1000;

impl Store {
    /// The `limit` groups of `app` written last, newest first, each with its write time (ms).
    ///
    /// # Errors
    /// The database error, or a stored row that does not parse.
    pub async fn recent_groups(&self, app: &str, limit: usize) -> anyhow::Result<Vec<(Group, i64)>> {
        let rows = sqlx::query(
            "SELECT body, updated_at FROM chat_groups WHERE app = $1 ORDER BY updated_at DESC, id LIMIT $2",
        )
        .bind(app)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| Ok((group_from_body(&row.try_get::<String, _>(0)?)?, row.try_get(1)?))).collect()
    }

    /// The groups of `app` written at or after `since` (ms): id, write time and the stored JSON
    /// (parsed by [`group_from_body`] only where it is wanted).
    ///
    /// # Errors
    /// The database error.
    pub async fn groups_since(&self, app: &str, since: i64) -> anyhow::Result<Vec<(String, i64, String)>> {
        let rows = sqlx::query("SELECT id, updated_at, body FROM chat_groups WHERE app = $1 AND updated_at >= $2")
            .bind(app)
            .bind(since)
            .fetch_all(self.pool())
            .await?;
        Ok(rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// The stored group `id` of `app`.
    ///
    /// # Errors
    /// The database error, or a stored row that does not parse.
    pub async fn group(&self, app: &str, id: &str) -> anyhow::Result<Option<Group>> {
        Ok(self.group_version(app, id).await?.map(|(group, _)| group))
    }

    /// The stored group `id` of `app` with its write time (ms).
    ///
    /// # Errors
    /// The database error, or a stored row that does not parse.
    pub async fn group_version(&self, app: &str, id: &str) -> anyhow::Result<Option<(Group, i64)>> {
        let row = sqlx::query("SELECT body, updated_at FROM chat_groups WHERE app = $1 AND id = $2")
            .bind(app)
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|row| Ok((group_from_body(&row.try_get::<String, _>(0)?)?, row.try_get(1)?))).transpose()
    }

    /// `user`'s conversations (archived or not), most recent first: the last message with
    /// `timelineOf`, `conversWith`, `key`, `is_new`, `archived` and `last_message_text`.
    ///
    /// # Errors
    /// The database error.
    pub async fn conversations(&self, app: &str, user: &str, archived: bool, limit: i64) -> anyhow::Result<Vec<Value>> {
        self.apply_history().await?;
        let rows = sqlx::query(
            "SELECT conversation, last_message, is_new, archived FROM inbox_conversations \
             WHERE app = $1 AND inbox = $2 AND archived = $3 ORDER BY updated_at DESC, conversation LIMIT $4",
        )
        .bind(app)
        .bind(user)
        .bind(i64::from(archived))
        .bind(limit.clamp(1, MAX_PAGE))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|row| conversation_doc(row, user)).collect()
    }

    /// `user`'s conversation with `conversation`, shaped as in [`Store::conversations`], if it
    /// exists and is `archived` (or not), as chat21's conversation detail reads it.
    ///
    /// # Errors
    /// The database error.
    pub async fn conversation(
        &self,
        app: &str,
        user: &str,
        conversation: &str,
        archived: bool,
    ) -> anyhow::Result<Option<Value>> {
        self.apply_history().await?;
        let row = sqlx::query(
            "SELECT conversation, last_message, is_new, archived FROM inbox_conversations \
             WHERE app = $1 AND inbox = $2 AND conversation = $3 AND archived = $4",
        )
        .bind(app)
        .bind(user)
        .bind(conversation)
        .bind(i64::from(archived))
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| conversation_doc(&row, user)).transpose()
    }

    /// The messages in `user`'s timeline of `conversation`, newest first, sent before
    /// `before` (ms) if given; each as the client received it, with the latest status.
    ///
    /// # Errors
    /// The database error.
    pub async fn messages(
        &self,
        app: &str,
        user: &str,
        conversation: &str,
        before: Option<i64>,
        limit: i64,
    ) -> anyhow::Result<Vec<Value>> {
        self.apply_history().await?;
        let rows = sqlx::query(
            "SELECT body, status FROM inbox_timeline \
             WHERE app = $1 AND inbox = $2 AND conversation = $3 AND body IS NOT NULL AND sent_at < $4 \
             ORDER BY sent_at DESC, message_id DESC LIMIT $5",
        )
        .bind(app)
        .bind(user)
        .bind(conversation)
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit.clamp(1, MAX_PAGE))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                let mut body: Value = serde_json::from_str(&row.try_get::<String, _>(0)?)?;
                if let Some(body) = body.as_object_mut() {
                    body.insert("status".into(), row.try_get::<i64, _>(1)?.into());
                }
                Ok(body)
            })
            .collect()
    }
}

/// One `inbox_conversations` row (conversation, last message, is_new, archived) as chat21
/// stores a conversation: the last message plus the list fields.
fn conversation_doc(row: &AnyRow, user: &str) -> anyhow::Result<Value> {
    let conversation: String = row.try_get(0)?;
    let last: Option<String> = row.try_get(1)?;
    let mut doc = match last.as_deref().map(serde_json::from_str::<Value>).transpose()? {
        Some(Value::Object(message)) => message,
        _ => Map::new(),
    };
    let text = doc.get("text").cloned().unwrap_or(Value::Null);
    doc.insert("timelineOf".into(), user.into());
    doc.insert("conversWith".into(), conversation.clone().into());
    doc.insert("key".into(), conversation.into());
    doc.insert("is_new".into(), (row.try_get::<i64, _>(2)? != 0).into());
    doc.insert("archived".into(), (row.try_get::<i64, _>(3)? != 0).into());
    doc.insert("last_message_text".into(), text);
    Ok(Value::Object(doc))
}

/// A stored group from its stored JSON.
///
/// # Errors
/// When the JSON does not parse or is not a usable group.
pub fn group_from_body(body: &str) -> anyhow::Result<Group> {
    Ok(Group::parse(&serde_json::from_str(body)?)?)
}
