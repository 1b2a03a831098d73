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
