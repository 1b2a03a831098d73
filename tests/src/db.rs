//! Databases for store tests: a fresh SQLite file, or a fresh PostgreSQL database on the local
//! server (`INBOXD_TEST_POSTGRES`, default `postgres://postgres@127.0.0.1:5432/test`), dropped after.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor};

/// Where the PostgreSQL admin connection goes unless `INBOXD_TEST_POSTGRES` says otherwise.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A store database that exists for one test.
pub enum TestDb {
    Sqlite { _dir: tempfile::TempDir, url: String },
    Postgres { admin: String, name: String, url: String },
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    ///
    /// # Errors
    /// When the directory cannot be made.
    pub fn sqlite() -> Result<TestDb> {
        let dir = tempfile::Builder::new().prefix("inboxd-store-").tempdir()?;
        let url = format!("sqlite://{}", dir.path().join("inboxd.db").display());
        Ok(TestDb::Sqlite { _dir: dir, url })
    }

    /// A new, empty PostgreSQL database `inboxd_test_<random>`; `None` when no server answers.
    ///
    /// # Errors
    /// When the server answers but refuses to create the database.
    pub async fn postgres() -> Result<Option<TestDb>> {
        let admin = std::env::var("INBOXD_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_POSTGRES.to_owned());
        let options = PgConnectOptions::from_str(&admin)?;
        let connecting = tokio::time::timeout(Duration::from_secs(5), options.connect()).await;
        let Ok(Ok(mut conn)) = connecting else {
            eprintln!("PostgreSQL at {admin} is not reachable: skipping the PostgreSQL variant");
            return Ok(None);
        };
        let name = format!("inboxd_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str()).await.context("creating the test database")?;
        conn.close().await?;
        let url = options.database(&name).to_url_lossy().to_string();
        Ok(Some(TestDb::Postgres { admin, name, url }))
    }

    /// The `store.url` for inboxd.
    pub fn url(&self) -> &str {
        match self {
            TestDb::Sqlite { url, .. } | TestDb::Postgres { url, .. } => url,
        }
    }

    /// Which back end, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            TestDb::Sqlite { .. } => "sqlite",
            TestDb::Postgres { .. } => "postgres",
        }
    }

    /// The database's name on the server (PostgreSQL only), for `pg_terminate_backend`.
    pub fn postgres_name(&self) -> Option<&str> {
        match self {
            TestDb::Postgres { name, .. } => Some(name),
            TestDb::Sqlite { .. } => None,
        }
    }

    /// The admin URL (PostgreSQL only).
    pub fn admin_url(&self) -> Option<&str> {
        match self {
            TestDb::Postgres { admin, .. } => Some(admin),
            TestDb::Sqlite { .. } => None,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let TestDb::Postgres { admin, name, .. } = self else { return };
        let (admin, name) = (admin.clone(), name.clone());
        // Drop runs inside the test's runtime: drop the database from a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = PgConnectOptions::from_str(&admin)?.connect().await?;
                conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop a test database: {dropped:?}");
        }
    }
}
