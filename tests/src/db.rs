//! Databases for store tests: a fresh SQLite file, or a fresh PostgreSQL database on the test
//! binary's private server (or the one `INBOXD_TEST_POSTGRES` names, see [`crate::postgres`]),
//! dropped after.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, Executor};

use crate::postgres::shared_postgres;

/// Budget for connecting to the PostgreSQL server that is up (or was just started).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

    /// A new, empty PostgreSQL database `inboxd_test_<random>` on the shared server.
    ///
    /// # Errors
    /// "setup failed" when the private server does not start, the server does not answer, or it
    /// refuses to create the database.
    pub async fn postgres() -> Result<TestDb> {
        let admin = shared_postgres().await.context("setup failed")?;
        let options = PgConnectOptions::from_str(&admin).with_context(|| format!("setup failed: {admin}"))?;
        let mut conn = tokio::time::timeout(CONNECT_TIMEOUT, options.connect())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|connected| Ok(connected?))
            .with_context(|| format!("setup failed: PostgreSQL at {admin} does not answer"))?;
        let name = format!("inboxd_test_{}", uuid::Uuid::new_v4().simple());
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .context("setup failed: creating the test database")?;
        conn.close().await?;
        let url = options.database(&name).to_url_lossy().to_string();
        Ok(TestDb::Postgres { admin, name, url })
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
