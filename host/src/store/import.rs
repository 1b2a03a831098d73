//! Rows imported from another system's store (`inboxd import chat21`): conversation lists with
//! their own flags and times, upserted so that importing twice leaves what importing once did.

use super::Store;

/// A conversation list entry as another store kept it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedConversation {
    pub inbox: String,
    pub conversation: String,
    /// The last message with the list fields (JSON), as the history API serves it.
    pub last_message: String,
    pub is_new: bool,
    pub archived: bool,
    /// The list's order (ms).
    pub updated_at: i64,
}

/// An imported entry replaces one that is not newer (a re-run, or an older import); a
/// conversation inboxd itself has moved on since keeps its newer state.
const IMPORTED_CONVERSATION: &str = "INSERT INTO inbox_conversations \
     (app, inbox, conversation, last_message, is_new, archived, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (app, inbox, conversation) DO UPDATE SET last_message = excluded.last_message, \
     is_new = excluded.is_new, archived = excluded.archived, updated_at = excluded.updated_at \
     WHERE inbox_conversations.updated_at <= excluded.updated_at";

impl Store {
    /// Upserts `rows` of app `app` in one transaction.
    ///
    /// # Errors
    /// The database error; nothing of `rows` is then committed.
    pub async fn import_conversations(&self, app: &str, rows: &[ImportedConversation]) -> anyhow::Result<()> {
        self.apply_history().await?;
        let mut tx = self.pool().begin().await?;
        for row in rows {
            sqlx::query(IMPORTED_CONVERSATION)
                .bind(app)
                .bind(row.inbox.as_str())
                .bind(row.conversation.as_str())
                .bind(row.last_message.as_str())
                .bind(i64::from(row.is_new))
                .bind(i64::from(row.archived))
                .bind(row.updated_at)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
