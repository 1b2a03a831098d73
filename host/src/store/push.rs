//! What the push routes keep for a push provider: the app instances (devices) users register
//! and the push requests the server side makes. inboxd sends no push itself.

use super::Store;

impl Store {
    /// Registers (or replaces) app instance `instance` of `user`, its description `body` (JSON).
    ///
    /// # Errors
    /// The database error.
    pub async fn save_instance(
        &self,
        app: &str,
        user: &str,
        instance: &str,
        body: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO push_instances (app, instance_id, user_id, body, updated_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (app, instance_id) DO UPDATE SET user_id = excluded.user_id, body = excluded.body, \
             updated_at = excluded.updated_at",
        )
        .bind(app)
        .bind(instance)
        .bind(user)
        .bind(body)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// The app instances `user` registered: (instance id, description JSON).
    ///
    /// # Errors
    /// The database error.
    pub async fn instances(&self, app: &str, user: &str) -> anyhow::Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT instance_id, body FROM push_instances WHERE app = $1 AND user_id = $2 ORDER BY instance_id",
        )
        .bind(app)
        .bind(user)
        .fetch_all(self.pool())
        .await?)
    }

    /// Keeps push request `id` (its JSON `body`); the same id again replaces it.
    ///
    /// # Errors
    /// The database error.
    pub async fn save_push_request(&self, app: &str, id: &str, body: &str, now: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO push_requests (app, id, body, received_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (app, id) DO UPDATE SET body = excluded.body, received_at = excluded.received_at",
        )
        .bind(app)
        .bind(id)
        .bind(body)
        .bind(now)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{Store, StoreUrl};

    #[tokio::test]
    async fn an_instance_is_kept_once_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let url = StoreUrl::Sqlite(format!("sqlite://{}", dir.path().join("t.db").display()));
        let store = Store::open(&url).await.unwrap().unwrap();
        store.save_instance("app", "bob", "i1", "{\"platform\":\"ionic\"}", 1).await.unwrap();
        store.save_instance("app", "bob", "i1", "{\"platform\":\"web\"}", 2).await.unwrap();
        store.save_instance("app", "carol", "i2", "{}", 2).await.unwrap();
        assert_eq!(
            store.instances("app", "bob").await.unwrap(),
            [("i1".to_owned(), "{\"platform\":\"web\"}".to_owned())]
        );
        store.save_push_request("app", "m1", "{}", 3).await.unwrap();
        store.save_push_request("app", "m1", "{}", 4).await.unwrap();
    }
}
