//! Test support, shared by every integration test: how the pieces meet.
//!
//! - `db.rs`: [`TestDb`], a throwaway SQLite file or PostgreSQL database.
//! - `daemon.rs`: [`Daemon`], the real `App` in process on a port-0 listener,
//!   and [`DaemonProcess`], a child `driftd run` with its log, killed or
//!   signalled on demand.
//! - `vendor.rs`: [`Vendor`], a loopback vendor serving every pagination style.
//! - `app.rs`: [`AppStandIn`], a loopback application receiving `http` work
//!   calls, answering as scripted and recording each.
//! - here: the binary and repository paths, per-test time limits
//!   (`limited_test!`, `on_both_backends!`) and polling with a deadline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

mod app;
mod daemon;
mod db;
mod vendor;

pub use app::{Answers, AppStandIn, APP_SECRET};
pub use daemon::{config, metric, signal, Daemon, DaemonProcess};
pub use db::{admin_pool, TestDb};
pub use vendor::{record, snapshot_toml, Fault, Vendor};

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
    let within = Duration::from_secs(secs);
    poll(what, within, Duration::from_millis(100), || {
        let holds = f();
        async move { holds.await.then_some(()) }
    })
    .await
}

/// How long [`eventually`] waits.
pub const EVENTUALLY: Duration = Duration::from_secs(30);

/// Polls `check` every 25 ms until it returns `Some`, failing after [`EVENTUALLY`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll(what, EVENTUALLY, Duration::from_millis(25), check).await
}

/// Calls `check` every `every` until it returns `Some`, failing after `within`.
async fn poll<T, F, Fut>(what: &str, within: Duration, every: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
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

/// Keys whose local row of `producer` differs from the vendor's record.
pub async fn differing(
    store: &driftd::store::Store,
    producer: &str,
    vendor: &std::sync::Mutex<std::collections::BTreeMap<String, Value>>,
) -> Vec<String> {
    let local: std::collections::BTreeMap<String, Value> = store
        .entities(producer)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.key, e.doc?)))
        .collect();
    let vendor = vendor.lock().unwrap().clone();
    vendor
        .iter()
        .filter(|(k, doc)| local.get(*k) != Some(*doc))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Serves `app` on a loopback port of its own, for the life of the test.
pub async fn serve_loopback(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}
