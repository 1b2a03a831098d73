//! Deleting a conversation everywhere, as chat21-http-server's timelines routes do when a group
//! is removed: every user's conversation with it, or every copy of its messages.

use super::Store;

impl Store {
    /// Deletes every user's conversation with `conversation` (live or archived); returns how many.
    ///
    /// # Errors
    /// The database error.
    pub async fn delete_conversations_with(&self, app: &str, conversation: &str) -> anyhow::Result<u64> {
        self.apply_history().await?;
        let done = sqlx::query("DELETE FROM inbox_conversations WHERE app = $1 AND conversation = $2")
            .bind(app)
            .bind(conversation)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes every timeline entry of `conversation`, in every user's history; returns how many.
    ///
    /// # Errors
    /// The database error.
    pub async fn delete_messages_with(&self, app: &str, conversation: &str) -> anyhow::Result<u64> {
        self.apply_history().await?;
        let done = sqlx::query("DELETE FROM inbox_timeline WHERE app = $1 AND conversation = $2")
            .bind(app)
            .bind(conversation)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreUrl, Write};

    fn message(inbox: &str, conversation: &str, id: &str) -> Write {
        Write::Message {
            inbox: inbox.into(),
            conversation: conversation.into(),
            message_id: id.into(),
            status: 150,
            sent_at: 1,
            body: format!("{{\"message_id\":\"{id}\"}}").into(),
            conversation_update: Some(true),
        }
    }

    #[tokio::test]
    async fn a_conversation_goes_from_every_timeline_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        let writes = vec![message("alice", "g1", "m1"), message("bob", "g1", "m1"), message("alice", "g2", "m2")];
        store.apply("app", writes.into()).await.unwrap();
        assert_eq!(store.delete_messages_with("app", "g1").await.unwrap(), 2);
        assert_eq!(store.delete_conversations_with("app", "g1").await.unwrap(), 2);
        assert!(store.messages("app", "alice", "g1", None, 10).await.unwrap().is_empty());
        assert!(store.conversations("app", "bob", false, 10).await.unwrap().is_empty());
        assert_eq!(store.messages("app", "alice", "g2", None, 10).await.unwrap().len(), 1);
        assert_eq!(store.conversations("app", "alice", false, 10).await.unwrap().len(), 1);
        assert_eq!(store.delete_messages_with("other", "g2").await.unwrap(), 0);
    }
}
