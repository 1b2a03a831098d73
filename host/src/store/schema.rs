//! Versioned schema migrations: each back end has its own SQL per version, applied once, in
//! order, each in a transaction that also records its version in `inboxd_schema`.

use anyhow::Context;
use sqlx::Executor;

use super::{Backend, Store};

/// (version, SQLite text, PostgreSQL text), in order. Never edit one that shipped: add one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, include_str!("schema/sqlite/0001_history.sql"), include_str!("schema/postgres/0001_history.sql")),
    (2, include_str!("schema/sqlite/0002_webhooks.sql"), include_str!("schema/postgres/0002_webhooks.sql")),
    (
        3,
        include_str!("schema/sqlite/0003_timeline_key_order.sql"),
        include_str!("schema/postgres/0003_timeline_key_order.sql"),
    ),
    (4, include_str!("schema/sqlite/0004_server_time.sql"), include_str!("schema/postgres/0004_server_time.sql")),
    (5, include_str!("schema/sqlite/0005_push.sql"), include_str!("schema/postgres/0005_push.sql")),
    (6, include_str!("schema/sqlite/0006_intents.sql"), include_str!("schema/postgres/0006_intents.sql")),
    (7, include_str!("schema/sqlite/0007_lean_intents.sql"), include_str!("schema/postgres/0007_lean_intents.sql")),
    (8, include_str!("schema/sqlite/0008_history_log.sql"), include_str!("schema/postgres/0008_history_log.sql")),
    (9, include_str!("schema/sqlite/0009_history_ring.sql"), include_str!("schema/postgres/0009_history_ring.sql")),
];

/// Brings the schema of `store` to the latest version.
///
/// # Errors
/// When the database refuses a migration; the failed version is rolled back.
pub(super) async fn migrate(store: &Store) -> anyhow::Result<()> {
    let pool = store.pool();
    pool.execute("CREATE TABLE IF NOT EXISTS inboxd_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
        .await
        .context("creating inboxd_schema")?;
    for (version, sqlite, postgres) in MIGRATIONS {
        let applied: Option<(i64,)> = sqlx::query_as("SELECT version FROM inboxd_schema WHERE version = $1")
            .bind(version)
            .fetch_optional(pool)
            .await?;
        if applied.is_some() {
            continue;
        }
        let text = if store.backend() == Backend::Sqlite { sqlite } else { postgres };
        let mut tx = pool.begin().await?;
        tx.execute(sqlx::raw_sql(text)).await.with_context(|| format!("applying schema version {version}"))?;
        sqlx::query("INSERT INTO inboxd_schema (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(crate::clock::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await.with_context(|| format!("committing schema version {version}"))?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::Executor;

    use crate::store::{Store, StoreUrl, Write};

    /// A database of schema version 2 with history in it comes through the rebuild of
    /// version 3 whole, and its rows still take upserts.
    #[tokio::test]
    async fn version_3_keeps_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let old = sqlx::SqlitePool::connect(&url).await.unwrap();
        for (version, sqlite, _) in &super::MIGRATIONS[..2] {
            old.execute(*sqlite).await.unwrap();
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS inboxd_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&old)
            .await
            .unwrap();
            sqlx::query("INSERT INTO inboxd_schema VALUES ($1, 0)").bind(version).execute(&old).await.unwrap();
        }
        old.execute(
            "INSERT INTO inbox_timeline VALUES ('app', 'bob', 'm1', 'alice', 150, 7, '{\"message_id\":\"m1\"}')",
        )
        .await
        .unwrap();
        old.close().await;

        let store = Store::open(&StoreUrl::Sqlite(format!("sqlite://{}", path.display()))).await.unwrap().unwrap();
        let receipt =
            Write::Status { inbox: "bob".into(), conversation: "alice".into(), message_id: "m1".into(), status: 300 };
        store.apply("app", vec![receipt].into()).await.unwrap();
        let history = store.messages("app", "bob", "alice", None, 10).await.unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!((&history[0]["message_id"], &history[0]["status"]), (&"m1".into(), &300.into()));
    }

    /// Rows an older inboxd dated by a client clock in 2100 come back to the migration time, so
    /// the next message replaces the pinned last message.
    #[tokio::test]
    async fn version_4_unpins_conversations_dated_in_the_future() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let old = sqlx::SqlitePool::connect(&url).await.unwrap();
        old.execute("CREATE TABLE inboxd_schema (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)")
            .await
            .unwrap();
        for (version, sqlite, _) in &super::MIGRATIONS[..3] {
            old.execute(*sqlite).await.unwrap();
            sqlx::query("INSERT INTO inboxd_schema VALUES ($1, 0)").bind(version).execute(&old).await.unwrap();
        }
        let future = 4_102_444_800_000_i64;
        sqlx::query("INSERT INTO inbox_conversations VALUES ('app', 'bob', 'alice', '{\"text\":\"2100\"}', 0, 0, $1)")
            .bind(future)
            .execute(&old)
            .await
            .unwrap();
        sqlx::query("INSERT INTO inbox_timeline VALUES ('app', 'm0', 'bob', 'alice', 150, $1, '{\"text\":\"2100\"}')")
            .bind(future)
            .execute(&old)
            .await
            .unwrap();
        old.close().await;

        let store = Store::open(&StoreUrl::Sqlite(format!("sqlite://{}", path.display()))).await.unwrap().unwrap();
        let now = crate::clock::now_ms();
        let (updated_at,): (i64,) =
            sqlx::query_as("SELECT updated_at FROM inbox_conversations").fetch_one(store.pool()).await.unwrap();
        let (sent_at,): (i64,) =
            sqlx::query_as("SELECT sent_at FROM inbox_timeline").fetch_one(store.pool()).await.unwrap();
        assert!(updated_at <= now && sent_at <= now, "{updated_at} {sent_at}");
        let today = Write::Message {
            inbox: "bob".into(),
            conversation: "alice".into(),
            message_id: "m1".into(),
            status: 150,
            sent_at: now + 1000,
            body: "{\"text\":\"today\"}".into(),
            conversation_update: Some(true),
        };
        store.apply("app", vec![today].into()).await.unwrap();
        let list = store.conversations("app", "bob", false, 10).await.unwrap();
        assert_eq!((&list[0]["text"], &list[0]["is_new"]), (&"today".into(), &true.into()));
    }
}
