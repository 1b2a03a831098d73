//! The webhook outbox's queries: due events, their outcome (delivered, retry later, dead),
//! and the operator's view of the dead letters (list, replay).

use sqlx::Row;

use super::Store;

/// One event waiting for one endpoint.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    pub id: String,
    pub endpoint: String,
    pub event_type: String,
    pub body: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    /// When it is due; a claim moves it forward (the lease).
    pub next_attempt_at: i64,
}

/// A dead-lettered event as the operator lists it (`inboxd webhooks dead`).
#[derive(Debug, Clone)]
pub struct DeadWebhook {
    pub id: String,
    /// The full URL: show it only redacted (`webhook::endpoint::redact`).
    pub endpoint: String,
    pub event_type: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
}

fn entry(row: &sqlx::any::AnyRow) -> Result<OutboxEntry, sqlx::Error> {
    Ok(OutboxEntry {
        id: row.try_get(0)?,
        endpoint: row.try_get(1)?,
        event_type: row.try_get(2)?,
        body: row.try_get(3)?,
        attempts: row.try_get(4)?,
        last_error: row.try_get(5)?,
        created_at: row.try_get(6)?,
        next_attempt_at: row.try_get(7)?,
    })
}

const COLUMNS: &str = "id, endpoint, event_type, body, attempts, last_error, created_at, next_attempt_at";

impl Store {
    /// Live events of `app` due at `now`, oldest first.
    ///
    /// # Errors
    /// The database error.
    pub async fn due_webhooks(&self, app: &str, now: i64, limit: i64) -> Result<Vec<OutboxEntry>, sqlx::Error> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_outbox WHERE app = $1 AND dead = 0 AND next_attempt_at <= $2 \
             ORDER BY next_attempt_at, created_at, id LIMIT $3"
        );
        let rows = sqlx::query(&sql).bind(app).bind(now).bind(limit).fetch_all(self.pool()).await?;
        rows.iter().map(entry).collect()
    }

    /// Leases `entry` until `until` (ms) for one attempt: `false` when another process (or an
    /// earlier lease) got it first, so that several inboxd processes never send one event twice.
    ///
    /// # Errors
    /// The database error.
    pub async fn claim_webhook(&self, entry: &OutboxEntry, until: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $3 WHERE id = $1 AND next_attempt_at = $2 AND dead = 0",
        )
        .bind(&entry.id)
        .bind(entry.next_attempt_at)
        .bind(until)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The event was delivered: it leaves the outbox, unless its message's intent is still open
    /// (the message may be redelivered, and its event added again under the same id): then it
    /// stays, delivered (`dead = 2`) and without its body, until the message is settled.
    ///
    /// # Errors
    /// The database error.
    pub async fn webhook_delivered(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE webhook_outbox SET dead = 2, body = '' WHERE id = $1 AND dead = 0 AND EXISTS \
             (SELECT 1 FROM inboxd_intents i WHERE i.app = webhook_outbox.app AND i.message_id = webhook_outbox.message_id)",
        )
        .bind(id)
        .execute(self.pool())
        .await?;
        sqlx::query("DELETE FROM webhook_outbox WHERE id = $1 AND dead = 0")
            .bind(id)
            .execute(self.pool())
            .await
            .map(|_| ())
    }

    /// The attempt failed: try again at `retry_at`, or (`retry_at == None`) give up: dead letter.
    ///
    /// # Errors
    /// The database error.
    pub async fn webhook_failed(&self, id: &str, error: &str, retry_at: Option<i64>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $2, \
             next_attempt_at = COALESCE($3, next_attempt_at), dead = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(retry_at)
        .bind(i64::from(retry_at.is_none()))
        .execute(self.pool())
        .await
        .map(|_| ())
    }

    /// One page of the dead letters of `app`: at most `limit`, oldest first (ids are UUIDv7),
    /// after the id `after` (the last of the previous page; `None` for the first). Bodies are
    /// not read: the listing needs none, and a page stays small however large the events.
    ///
    /// # Errors
    /// The database error.
    pub async fn dead_webhooks(
        &self,
        app: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeadWebhook>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, endpoint, event_type, attempts, last_error, created_at FROM webhook_outbox \
             WHERE app = $1 AND dead = 1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(app)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeadWebhook {
                    id: row.try_get(0)?,
                    endpoint: row.try_get(1)?,
                    event_type: row.try_get(2)?,
                    attempts: row.try_get(3)?,
                    last_error: row.try_get(4)?,
                    created_at: row.try_get(5)?,
                })
            })
            .collect()
    }

    /// Puts dead letters of `app` (all, or the one with `id`) back in line with fresh attempts;
    /// returns how many.
    ///
    /// # Errors
    /// The database error.
    pub async fn replay_webhooks(&self, app: &str, id: Option<&str>, now: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE webhook_outbox SET dead = 0, attempts = 0, next_attempt_at = $2 \
             WHERE app = $1 AND dead = 1 AND ($3 IS NULL OR id = $3)",
        )
        .bind(app)
        .bind(now)
        .bind(id)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreUrl, Write};

    #[tokio::test]
    async fn dead_letters_are_listed_page_by_page_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        let ids: Vec<String> = (0..7).map(|_| uuid::Uuid::now_v7().to_string()).collect();
        let writes: Vec<Write> = ids
            .iter()
            .chain(["live".to_owned()].iter())
            .map(|id| Write::Webhook {
                id: id.clone(),
                endpoint: "http://h/tok".into(),
                event_type: "message-sent".into(),
                body: "{}".into(),
                created_at: 1,
                message_id: None,
            })
            .collect();
        store.apply("app", writes.into()).await.unwrap();
        for id in &ids {
            store.webhook_failed(id, "answered 500", None).await.unwrap();
        }
        let (mut listed, mut pages, mut after) = (Vec::new(), 0, None::<String>);
        loop {
            let page = store.dead_webhooks("app", after.as_deref(), 3).await.unwrap();
            pages += 1;
            listed.extend(page.iter().map(|d| d.id.clone()));
            match page.last() {
                Some(last) if page.len() == 3 => after = Some(last.id.clone()),
                _ => break,
            }
        }
        assert_eq!((listed, pages), (ids, 3), "oldest first, the live event left out");
        assert!(store.dead_webhooks("other", None, 3).await.unwrap().is_empty());
    }
}
