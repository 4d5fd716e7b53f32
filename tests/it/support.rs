//! Test support: throwaway SQLite files and PostgreSQL databases, the driftd binary, an in-process daemon, per-test time limits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use driftd::app::App;
use driftd::config::Config;
use driftd::store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The server that PostgreSQL tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("DRIFTD_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// One connection to the PostgreSQL server's admin database, without the
/// pool maintenance task (which can spin when a runtime is dropped); close it.
pub async fn admin_pool() -> Result<sqlx::PgPool, sqlx::Error> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect(&pg_admin_url())
        .await
}

/// A fresh, empty database of one backend, dropped (PostgreSQL) or deleted (SQLite) afterwards.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("driftd.db").display());
        Self {
            url,
            pg_name: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> Self {
        let name = format!(
            "driftd_t_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let admin = admin_pool().await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {} is required for these tests: {e}",
                pg_admin_url()
            )
        });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("create test database");
        admin.close().await;
        let base = pg_admin_url();
        let url = match base.rfind('/') {
            Some(i) => format!("{}/{name}", &base[..i]),
            None => panic!("DRIFTD_TEST_PG must end in /DATABASE"),
        };
        Self {
            url,
            pg_name: Some(name),
            _dir: None,
        }
    }

    pub async fn store(&self) -> Store {
        Store::open(&self.url, 8).await.expect("open store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.pg_name.take() {
            // Drop from a separate thread with its own runtime: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async move {
                        if let Ok(pool) = admin_pool().await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&pool)
                            .await;
                            pool.close().await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Path of the built `driftd` binary.
pub fn driftd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_driftd"))
}

/// The repository root (for `config/example.toml` and fixtures).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How long one test may run, runtime shutdown included, before it fails
/// (`DRIFTD_TEST_LIMIT_SECS` overrides).
pub fn test_limit() -> std::time::Duration {
    let secs = std::env::var("DRIFTD_TEST_LIMIT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    std::time::Duration::from_secs(secs)
}

/// Runs `body` on a runtime of its own (multi-threaded, two workers) on a
/// thread of its own, and fails with "test NAME exceeded N s" if it has not
/// finished, runtime shutdown included, within [`test_limit`]. A hung thread
/// is left behind; the test binary exits when every test is done.
pub fn run_limited<F>(name: &str, body: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    run_limited_for(name, test_limit(), body)
}

/// [`run_limited`] with an explicit limit.
pub fn run_limited_for<F>(name: &str, limit: std::time::Duration, body: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a test runtime");
            runtime.block_on(body);
            drop(runtime);
            let _ = done.send(());
        })
        .expect("a test thread");
    match finished.recv_timeout(limit) {
        Ok(()) => thread.join().expect("the test thread finished"),
        // The body panicked: the sender was dropped while unwinding.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the test thread ended without reporting"),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test {name} exceeded {} s", limit.as_secs())
        }
    }
}

/// An async test under [`run_limited`]: wrap `async fn name() { ... }`.
#[macro_export]
macro_rules! limited_test {
    ($(#[$meta:meta])* async fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::support::run_limited(
                concat!(module_path!(), "::", stringify!($name)),
                async move $body,
            );
        }
    };
}

/// Runs the same async test body against SQLite and PostgreSQL, as two named
/// tests, each under [`run_limited`].
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                $crate::limited_test! {
                    async fn $name() {
                        let db = $crate::support::TestDb::sqlite();
                        super::$name(&db).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                $crate::limited_test! {
                    async fn $name() {
                        let db = $crate::support::TestDb::postgres().await;
                        super::$name(&db).await;
                    }
                }
            )*
        }
    };
}

/// A loopback port that was free a moment ago (for child processes that bind it themselves).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 100 ms until it holds, failing after `secs` seconds.
pub async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A running daemon on port 0; stops when dropped.
pub struct Daemon {
    pub base: String,
    pub cancel: CancellationToken,
    pub config: Config,
}

impl Daemon {
    pub async fn start(config: Config) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::build(config.clone(), Some(listener)).await.unwrap();
        let base = format!("http://{}", app.local_addr().unwrap());
        let cancel = CancellationToken::new();
        tokio::spawn(app.run(cancel.clone()));
        Self {
            base,
            cancel,
            config,
        }
    }

    /// Sends `doc` as a signed webhook of the first producer; panics unless it is acknowledged.
    pub async fn webhook(&self, client: &reqwest::Client, doc: &Value) {
        let w = self.config.producers[0].webhook.as_ref().unwrap();
        let body = serde_json::to_vec(doc).unwrap();
        let mut req = client.post(format!(
            "{}/hooks/{}",
            self.base, self.config.producers[0].name
        ));
        for (k, v) in driftd::ingest::signature::sign(w, &body, chrono::Utc::now().timestamp(), "m")
        {
            req = req.header(k, v);
        }
        let resp = req.body(body).send().await.unwrap();
        assert!(resp.status().is_success(), "webhook: {}", resp.status());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Daemon {
    /// Runs a keyframe of the first producer through the admin endpoint; its summary.
    pub async fn keyframe(&self, client: &reqwest::Client, admin_token: &str) -> Value {
        let resp = client
            .post(format!(
                "{}/admin/keyframe/{}",
                self.base, self.config.producers[0].name
            ))
            .bearer_auth(admin_token)
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "keyframe: {}", resp.status());
        resp.json().await.unwrap()
    }
}

/// `GET url` with a bearer token: the status and the JSON body (null if none).
pub async fn get_json(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}
