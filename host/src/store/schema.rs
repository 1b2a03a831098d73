//! Versioned schema migrations: each back end has its own SQL per version, applied once, in
//! order, each in a transaction that also records its version in `inboxd_schema`.

use anyhow::Context;
use sqlx::Executor;

use super::{Backend, Store};

/// (version, SQLite text, PostgreSQL text), in order. Never edit one that shipped: add one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, include_str!("schema/sqlite/0001_history.sql"), include_str!("schema/postgres/0001_history.sql")),
    (2, include_str!("schema/sqlite/0002_webhooks.sql"), include_str!("schema/postgres/0002_webhooks.sql")),
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
            .bind(crate::store::records::now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await.with_context(|| format!("committing schema version {version}"))?;
        tracing::info!(version, "store schema migrated");
    }
    Ok(())
}
