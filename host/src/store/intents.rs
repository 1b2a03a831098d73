//! The durable side of "one message, one id": the intents a redelivery looks up when its
//! process does not know its message, and the expiry of those no redelivery came for.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Store;
use crate::clock::now_ms;
use crate::telemetry;

/// How long an intent waits for a redelivery that does not come (the message was purged, or
/// expired in its queue): its message is unacked, so it comes back whenever a process consumes
/// again, after an outage of days included.
pub const INTENT_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the expired intents (and the delivered webhook events of their messages) are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(600);

impl Store {
    /// The ids of the open intents of `app` with `fingerprint`, oldest first.
    ///
    /// # Errors
    /// The database error.
    pub async fn open_intents(&self, app: &str, fingerprint: i64) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT message_id FROM inboxd_intents WHERE app = $1 AND fingerprint = $2 \
             ORDER BY created_at, message_id",
        )
        .bind(app)
        .bind(fingerprint)
        .fetch_all(self.pool())
        .await
    }

    /// Deletes the intents of `app` made before `before` (ms), and the delivered webhook events
    /// kept for them; returns how many intents.
    ///
    /// # Errors
    /// The database error.
    pub async fn expire_intents(&self, app: &str, before: i64) -> Result<u64, sqlx::Error> {
        let expired = sqlx::query("DELETE FROM inboxd_intents WHERE app = $1 AND created_at < $2")
            .bind(app)
            .bind(before)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM webhook_outbox WHERE app = $1 AND dead = 2 AND created_at < $2")
            .bind(app)
            .bind(before)
            .execute(self.pool())
            .await?;
        Ok(expired.rows_affected())
    }
}

/// Sweeps the expired intents of `app` every [`SWEEP_EVERY`] until `stop`.
pub(super) async fn sweep(store: Store, app: String, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
        let before = now_ms() - i64::try_from(INTENT_EXPIRY.as_millis()).unwrap_or(i64::MAX);
        match store.expire_intents(&app, before).await {
            Ok(0) => {}
            Ok(expired) => telemetry::intents_expired(expired),
            Err(err) => telemetry::intents_sweep_failed(&err),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreUrl, Write};

    fn webhook(message_id: &str) -> Write {
        Write::Webhook {
            id: format!("{message_id}/message-delivered/bob/h"),
            endpoint: "http://h/tok".into(),
            event_type: "message-delivered".into(),
            body: "{}".into(),
            created_at: 1,
            message_id: Some(message_id.into()),
        }
    }

    async fn outbox(store: &Store) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT id, dead FROM webhook_outbox ORDER BY id").fetch_all(store.pool()).await.unwrap()
    }

    /// An intent is found by its fingerprint until settled; a delivered event of its message
    /// stays (so a redelivery adds nothing) until then, and goes with it.
    #[tokio::test]
    async fn intents_live_until_settled_and_keep_delivered_events_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        let intent = |id: &str, at| Write::Intent { fingerprint: -7, message_id: id.into(), created_at: at };
        store.apply("app", vec![intent("m2", 2), intent("m1", 1), webhook("m1")].into()).await.unwrap();
        assert_eq!(store.open_intents("app", -7).await.unwrap(), ["m1", "m2"]);
        assert!(store.open_intents("other", -7).await.unwrap().is_empty());

        store.webhook_delivered("m1/message-delivered/bob/h").await.unwrap();
        assert_eq!(outbox(&store).await, [("m1/message-delivered/bob/h".to_owned(), 2)]);
        // The redelivery's event and intent: nothing new.
        store.apply("app", vec![intent("m1", 5), webhook("m1")].into()).await.unwrap();
        assert_eq!(outbox(&store).await, [("m1/message-delivered/bob/h".to_owned(), 2)]);
        assert!(store.due_webhooks("app", 10, 10).await.unwrap().is_empty());

        store.apply("app", vec![Write::Settled { message_id: "m1".into() }].into()).await.unwrap();
        assert_eq!(store.open_intents("app", -7).await.unwrap(), ["m2"]);
        assert!(outbox(&store).await.is_empty());
        // A settled message's event is deleted once delivered.
        store.apply("app", vec![webhook("m3")].into()).await.unwrap();
        store.webhook_delivered("m3/message-delivered/bob/h").await.unwrap();
        assert!(outbox(&store).await.is_empty());

        assert_eq!(store.expire_intents("app", 3).await.unwrap(), 1);
        assert!(store.open_intents("app", -7).await.unwrap().is_empty());
    }
}
