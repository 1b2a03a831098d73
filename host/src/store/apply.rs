//! The writes as SQL: idempotent upserts in the dialect both back ends share, applied one
//! batch per transaction so that a batch is either wholly durable or not at all.

use sqlx::{Any, Transaction};

use super::Store;
use super::records::Write;

/// A message copy; a row a status created first gets its body, and the status never falls.
const TIMELINE_MESSAGE: &str = "INSERT INTO inbox_timeline (app, inbox, message_id, conversation, status, sent_at, body) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (app, inbox, message_id) DO UPDATE SET conversation = excluded.conversation, \
     sent_at = excluded.sent_at, body = excluded.body, \
     status = CASE WHEN excluded.status > inbox_timeline.status THEN excluded.status ELSE inbox_timeline.status END";

/// A status change; creates a body-less row when the status overtakes its message.
const TIMELINE_STATUS: &str = "INSERT INTO inbox_timeline (app, inbox, message_id, conversation, status, sent_at, body) \
     VALUES ($1, $2, $3, $4, $5, 0, NULL) \
     ON CONFLICT (app, inbox, message_id) DO UPDATE SET \
     status = CASE WHEN excluded.status > inbox_timeline.status THEN excluded.status ELSE inbox_timeline.status END";

/// The conversation's last message; an older message (replayed or late) never replaces a newer one.
const CONVERSATION_MESSAGE: &str = "INSERT INTO inbox_conversations \
     (app, inbox, conversation, last_message, is_new, archived, updated_at) VALUES ($1, $2, $3, $4, $5, 0, $6) \
     ON CONFLICT (app, inbox, conversation) DO UPDATE SET last_message = excluded.last_message, \
     is_new = excluded.is_new, archived = 0, updated_at = excluded.updated_at \
     WHERE inbox_conversations.updated_at <= excluded.updated_at";

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

const WEBHOOK: &str = "INSERT INTO webhook_outbox \
     (id, app, endpoint, event_type, body, attempts, next_attempt_at, dead, last_error, created_at) \
     VALUES ($1, $2, $3, $4, $5, 0, $6, 0, NULL, $6) ON CONFLICT (id) DO NOTHING";

impl Store {
    /// Applies `writes` of app `app` in one transaction.
    ///
    /// # Errors
    /// The database error; nothing of the batch is then committed.
    pub async fn apply(&self, app: &str, writes: &[&Write]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        for write in writes {
            apply_one(&mut tx, app, write).await?;
        }
        tx.commit().await
    }
}

async fn apply_one(tx: &mut Transaction<'_, Any>, app: &str, write: &Write) -> Result<(), sqlx::Error> {
    let flag = |b: Option<bool>| b.map(i64::from);
    match write {
        Write::Message { inbox, conversation, message_id, status, sent_at, body, conversation_update } => {
            sqlx::query(TIMELINE_MESSAGE)
                .bind(app)
                .bind(inbox)
                .bind(message_id)
                .bind(conversation)
                .bind(status)
                .bind(sent_at)
                .bind(body)
                .execute(&mut **tx)
                .await?;
            if let Some(is_new) = conversation_update {
                sqlx::query(CONVERSATION_MESSAGE)
                    .bind(app)
                    .bind(inbox)
                    .bind(conversation)
                    .bind(body)
                    .bind(i64::from(*is_new))
                    .bind(sent_at)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Write::Status { inbox, conversation, message_id, status } => {
            sqlx::query(TIMELINE_STATUS)
                .bind(app)
                .bind(inbox)
                .bind(message_id)
                .bind(conversation)
                .bind(status)
                .execute(&mut **tx)
                .await?;
        }
        Write::Conversation { inbox, conversation, is_new, archived } => {
            sqlx::query(CONVERSATION_FLAGS)
                .bind(app)
                .bind(inbox)
                .bind(conversation)
                .bind(flag(*is_new))
                .bind(flag(*archived))
                .execute(&mut **tx)
                .await?;
        }
        Write::Group(group) => {
            let members = serde_json::to_string(&group.members).expect("a list of strings serialises");
            sqlx::query(GROUP)
                .bind(app)
                .bind(&group.id)
                .bind(group.name.as_deref())
                .bind(group.owner.as_deref())
                .bind(members)
                .bind(group.body.to_string())
                .bind(super::records::now_ms())
                .execute(&mut **tx)
                .await?;
        }
        Write::Webhook { id, endpoint, event_type, body, created_at } => {
            sqlx::query(WEBHOOK)
                .bind(id)
                .bind(app)
                .bind(endpoint)
                .bind(event_type)
                .bind(body)
                .bind(created_at)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
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

    #[tokio::test]
    async fn replays_are_idempotent_and_statuses_only_rise() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
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
        let refs: Vec<&Write> = batch.iter().collect();
        store.apply("app", &refs).await.unwrap();
        store.apply("app", &refs).await.unwrap();
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
        store.apply("app", &[&archive]).await.unwrap();
        assert!(store.conversations("app", "bob", false, 10).await.unwrap().is_empty());
        assert_eq!(store.conversations("app", "bob", true, 10).await.unwrap().len(), 1);
        assert!(store.conversations("other", "bob", true, 10).await.unwrap().is_empty());
    }
}
