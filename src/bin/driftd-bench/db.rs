//! Throwaway databases (a SQLite file in a temp dir, or a PostgreSQL database dropped afterwards) and the baselines' raw `sqlx` pools.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use driftd::store::sql::Pool;
use sqlx::pool::PoolOptions;

use crate::cli::BackendArg;

/// Connections of the PostgreSQL pools (driftd's and the baselines').
pub(super) const PG_POOL: u32 = 16;

/// The PostgreSQL server's admin database (`DRIFTD_BENCH_PG`).
pub(super) fn pg_admin_url() -> String {
    std::env::var("DRIFTD_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database: a SQLite file in a temp dir, or a PostgreSQL database dropped by [`BenchDb::remove`].
struct BenchDb {
    url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    async fn create(backend: BackendArg, tag: &str) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        match backend {
            BackendArg::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("driftd-bench-")
                    .tempdir()
                    .context("create a temp dir")?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
            BackendArg::Postgres => {
                let name = format!(
                    "driftd_bench_{tag}_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                );
                let admin = sqlx::PgPool::connect(&pg_admin_url())
                    .await
                    .with_context(|| {
                        format!(
                            "connect to PostgreSQL (set DRIFTD_BENCH_PG; now {})",
                            pg_admin_url()
                        )
                    })?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .context("create the bench database")?;
                admin.close().await;
                let base = pg_admin_url();
                let i = base
                    .rfind('/')
                    .ok_or_else(|| anyhow!("DRIFTD_BENCH_PG must end in /DATABASE"))?;
                Ok(Self {
                    url: format!("{}/{name}", &base[..i]),
                    pg_name: Some(name),
                    _dir: None,
                })
            }
        }
    }

    async fn remove(mut self) -> Result<()> {
        if let Some(name) = self.pg_name.take() {
            let admin = sqlx::PgPool::connect(&pg_admin_url()).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
                .context("drop the bench database")?;
            admin.close().await;
        }
        Ok(())
    }
}

/// Runs `body` with a fresh database and removes the database whatever the outcome.
pub(super) async fn with_db<T, F, Fut>(backend: BackendArg, tag: &str, body: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let db = BenchDb::create(backend, tag).await?;
    let out = body(db.url.clone()).await;
    let removed = db.remove().await;
    let out = out?;
    removed?;
    Ok(out)
}

/// A plain pool on the backend's own driver for a baseline's raw SQL, sized like driftd's.
pub(super) async fn baseline_pool(url: &str, backend: BackendArg) -> Result<Pool> {
    Ok(match backend {
        BackendArg::Sqlite => Pool::Sqlite(
            PoolOptions::new()
                .max_connections(1)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?,
        ),
        BackendArg::Postgres => Pool::Postgres(
            PoolOptions::new()
                .max_connections(PG_POOL)
                .acquire_timeout(Duration::from_secs(30))
                .connect(url)
                .await?,
        ),
    })
}
