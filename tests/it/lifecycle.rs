//! Interruptions at the HTTP edge on both backends: clients that hang up mid-request, connections left inside a transaction, readiness of the write path.

use std::time::{Duration, Instant};

use driftd::ingest::signature;
use driftd::store::{now_ms, Channel, InboxEntry, InboxFilter, InboxOutcome, Pool};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{config, wait_for, Daemon, TestDb};

/// Abandoned requests sent, and how many at once.
const ABANDONED: usize = 1_000;
const AT_ONCE: usize = 8;
/// Normal requests sent afterwards.
const NORMAL: usize = 100;

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
@SERVER@
[database]
url = "@DB@"

[[producer]]
name = "orders"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
@SNAPSHOT@
[producer.webhook]
scheme = "hmac-sha256"
secret = "orders-s3cret"
header = "X-Signature"
prefix = "sha256="
key = "/id"
version = "/version"
"#;

/// Starts the daemon; `server` adds lines to its `[server]` table.
async fn start(db: &TestDb, server: &str) -> Daemon {
    start_with(db, server, "url = \"http://127.0.0.1:9/orders\"").await
}

/// Starts the daemon with `snapshot` as the producer's `[producer.snapshot]` table.
async fn start_with(db: &TestDb, server: &str, snapshot: &str) -> Daemon {
    let text = CONFIG
        .replace("@DB@", &db.url)
        .replace("@SERVER@", server)
        .replace("@SNAPSHOT@", snapshot);
    Daemon::start(config(&text)).await
}

/// A complete, signed `POST /hooks/orders` carrying `key` at version 1, as raw bytes.
fn raw_delivery(daemon: &Daemon, key: &str) -> Vec<u8> {
    let body = json!({ "id": key, "version": 1 }).to_string();
    let mut head = format!(
        "POST /hooks/orders HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        daemon.addr,
        body.len()
    );
    for (k, v) in signature::sign(
        &daemon.webhook_config("orders"),
        body.as_bytes(),
        chrono::Utc::now().timestamp(),
        key,
    ) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.as_bytes());
    raw
}

/// Sends `key` at version 1 as a signed webhook; the status.
async fn deliver(daemon: &Daemon, key: &str) -> u16 {
    daemon
        .send("orders", &json!({ "id": key, "version": 1 }), key)
        .await
        .0
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Clients that send a complete signed webhook and hang up without reading
/// the answer cancel no commit: the ingest path keeps working, every delta
/// received is applied, and `/readyz` stays truthful.
async fn hung_up_clients_cancel_no_commit(db: &TestDb) {
    let daemon = start(db, "").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0..ABANDONED / AT_ONCE {
        let mut senders = tokio::task::JoinSet::new();
        for i in 0..AT_ONCE {
            let raw = raw_delivery(&daemon, &format!("gone-{}", round * AT_ONCE + i));
            let addr = daemon.addr;
            senders.spawn(async move {
                let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
                socket.write_all(&raw).await.expect("send the request");
                // Dropped here: closed without reading the answer.
            });
        }
        while let Some(sent) = senders.join_next().await {
            sent.expect("a sender does not panic");
        }
        assert!(
            Instant::now() < deadline,
            "sending the abandoned requests took over 120 s"
        );
    }

    let http = client();
    for i in 0..NORMAL {
        let key = format!("kept-{i}");
        let status = deliver(&daemon, &key).await;
        assert_eq!(
            status, 200,
            "delivery {key} after {ABANDONED} abandoned ones"
        );
    }
    for i in 0..NORMAL {
        let key = format!("kept-{i}");
        let e = daemon.store.entity("orders", &key).await.unwrap();
        assert_eq!(e.map(|e| e.version), Some(Some(1)), "{key} is applied");
    }
    // Every abandoned delivery that reached the inbox is settled, none left half-done.
    wait_for("every inbox row settled", 30, || async {
        let rows = daemon
            .store
            .inbox_page(&InboxFilter::default(), 0, 100_000)
            .await
            .unwrap();
        rows.iter().all(|r| r.outcome == InboxOutcome::Applied)
    })
    .await;
    let rows = daemon
        .store
        .inbox_page(&InboxFilter::default(), 0, 100_000)
        .await
        .unwrap();
    for r in &rows {
        let key = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let e = daemon.store.entity("orders", &key).await.unwrap();
        assert!(
            e.is_some(),
            "inbox row {} ({key}) is applied to its entity",
            r.id
        );
    }
    let (status, body) = daemon.readyz(&http).await;
    assert_eq!(status, 200, "{body}");
    daemon.stop().await;
}

/// An admin keyframe whose client hangs up mid-pull still finishes: its run
/// is recorded and its lease released, so the next keyframe runs at once.
async fn an_admin_keyframe_outlives_its_client(db: &TestDb) {
    let (vendor, addr) = crate::support::Vendor::start(30).await;
    vendor
        .delay_ms
        .store(1_500, std::sync::atomic::Ordering::Relaxed);
    let daemon = start_with(
        db,
        "admin_token = \"adm1n\"",
        &crate::support::snapshot_toml("none", addr),
    )
    .await;
    let url = format!("http://{}/admin/keyframe/orders", daemon.addr);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = impatient.post(&url).bearer_auth("adm1n").send().await;
    assert!(gave_up.is_err(), "the client hangs up before the answer");

    // A run is recorded finished before it emits its work; its lease is
    // released after that.
    wait_for(
        "the abandoned keyframe run to finish and free its lease",
        20,
        || async {
            let runs = daemon.store.runs("orders", 5).await.unwrap();
            let holder = daemon.store.lease_holder("keyframe:orders").await.unwrap();
            runs.len() == 1 && runs[0].finished_at.is_some() && holder.is_none()
        },
    )
    .await;
    let runs = daemon.store.runs("orders", 5).await.unwrap();
    assert_eq!(runs[0].state.as_str(), "ok", "{:?}", runs[0]);
    vendor
        .delay_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let again = client()
        .post(&url)
        .bearer_auth("adm1n")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 200, "the lease was released");
    daemon.stop().await;
}

/// A pooled connection returned inside a transaction is never handed out
/// again: the next writes begin, commit and are durable.
async fn a_connection_left_in_a_transaction_is_not_reused(db: &TestDb) {
    let store = db.store().await;
    // As if the future holding it had been dropped between BEGIN and the
    // `Transaction`: nothing will roll it back.
    match store.pool() {
        Pool::Sqlite(p) => {
            let mut conn = p.acquire().await.unwrap();
            std::mem::forget(sqlx::Connection::begin(&mut *conn).await.unwrap());
        }
        Pool::Postgres(p) => {
            let mut conn = p.acquire().await.unwrap();
            std::mem::forget(sqlx::Connection::begin(&mut *conn).await.unwrap());
        }
    }
    for i in 0..20 {
        let entry = InboxEntry {
            producer: "orders".into(),
            channel: Channel::Webhook,
            received_at: now_ms(),
            dedup_key: None,
            headers: "{}".into(),
            body: format!("{{\"n\": {i}}}").into_bytes(),
        };
        store
            .insert_deltas(&[entry])
            .await
            .unwrap_or_else(|e| panic!("write {i} after a leaked transaction: {e}"));
    }
    store.close().await;
    let reopened = db.store().await;
    let rows = reopened
        .inbox_page(&InboxFilter::default(), 0, 100)
        .await
        .unwrap();
    assert_eq!(rows.len(), 20, "every write committed");
    reopened.close().await;
}

/// Makes the database refuse the daemon's writes while it still answers
/// reads (SQLite: another connection holds the write lock; PostgreSQL: the
/// database turns read-only and the daemon's sessions are ended), or lets
/// them through again.
struct Unwritable {
    sqlite_lock: Option<sqlx::SqliteConnection>,
}

impl Unwritable {
    async fn start(db: &TestDb) -> Self {
        use sqlx::Connection;
        if db.url.starts_with("sqlite:") {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .unwrap();
            Self {
                sqlite_lock: Some(conn),
            }
        } else {
            pg_read_only(db, true).await;
            Self { sqlite_lock: None }
        }
    }

    async fn stop(self, db: &TestDb) {
        use sqlx::Connection;
        match self.sqlite_lock {
            Some(mut conn) => {
                sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            None => pg_read_only(db, false).await,
        }
    }
}

async fn pg_read_only(db: &TestDb, on: bool) {
    let name = db.url.rsplit('/').next().unwrap();
    let admin = crate::support::admin_pool().await.unwrap();
    let set = if on {
        "SET default_transaction_read_only = on"
    } else {
        "RESET default_transaction_read_only"
    };
    sqlx::query(&format!("ALTER DATABASE {name} {set}"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
}

/// `/readyz` fails while the database answers reads but refuses writes, and
/// recovers when writes go through again.
async fn readyz_fails_while_the_write_path_cannot_commit(db: &TestDb) {
    let daemon = start(db, "").await;
    let http = client();
    let (status, body) = daemon.readyz(&http).await;
    assert_eq!(status, 200, "{body}");

    let unwritable = Unwritable::start(db).await;
    let (status, body) = daemon.readyz(&http).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: "), "{body}");

    unwritable.stop(db).await;
    wait_for("/readyz to recover", 30, || async {
        daemon.readyz(&http).await.0 == 200
    })
    .await;
    assert_eq!(deliver(&daemon, "after").await, 200);
    daemon.stop().await;
}

/// An open store runs no task of its own between queries: nothing (such as
/// a pool maintenance task) is left to spin while a runtime shuts down.
async fn an_idle_store_runs_no_task(db: &TestDb) {
    let store = db.store().await;
    store.count_entities("orders").await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    wait_for("every task of the store to finish", 10, || async {
        metrics.num_alive_tasks() == 0
    })
    .await;
    store.close().await;
}

/// The per-test limit: a hung test fails fast, naming itself; a failing one
/// fails with its own message; a passing one passes.
#[test]
fn a_hung_test_fails_fast_naming_itself() {
    use crate::support::run_limited_for;
    let hung = std::panic::catch_unwind(|| {
        run_limited_for("hangs", Duration::from_secs(1), std::future::pending())
    })
    .expect_err("a hung test fails");
    assert_eq!(
        hung.downcast_ref::<String>().map(String::as_str),
        Some("test hangs exceeded 1 s")
    );
    let failing = std::panic::catch_unwind(|| {
        run_limited_for("fails", Duration::from_secs(30), async {
            panic!("the test's own failure")
        })
    })
    .expect_err("a failing test fails");
    assert_eq!(
        failing.downcast_ref::<&str>().copied(),
        Some("the test's own failure")
    );
    run_limited_for("passes", Duration::from_secs(30), async {
        tokio::task::yield_now().await
    });
}

/// Connections that send nothing (`None`) or these bytes of a request and then stall.
async fn stall(
    addr: std::net::SocketAddr,
    n: usize,
    partial: Option<&[u8]>,
) -> Vec<tokio::net::TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        if let Some(bytes) = partial {
            s.write_all(bytes).await.expect("send part of a request");
        }
        sockets.push(s);
    }
    sockets
}

/// Watches (for at most `within`) for the server to close each socket;
/// [`close_times`] says when each closed, measured from `since`.
fn watch_closing(
    sockets: Vec<tokio::net::TcpStream>,
    since: Instant,
    within: Duration,
) -> tokio::task::JoinSet<Option<Duration>> {
    let mut readers = tokio::task::JoinSet::new();
    for mut s in sockets {
        readers.spawn(async move {
            let mut buf = [0u8; 1024];
            let deadline = tokio::time::Instant::from_std(since + within);
            loop {
                match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                    Err(_) => return None,
                    Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
                    // Whatever the server says before closing.
                    Ok(Ok(_)) => continue,
                }
            }
        });
    }
    readers
}

/// When each watched socket was closed, in order; fails if one stayed open.
async fn close_times(mut readers: tokio::task::JoinSet<Option<Duration>>) -> Vec<Duration> {
    let mut times = Vec::new();
    while let Some(closed) = readers.join_next().await {
        let closed = closed.expect("a reader does not panic");
        times.push(closed.expect("every stalled connection is closed by the server"));
    }
    times.sort();
    times
}

/// Connections that send nothing or part of their headers are closed after
/// the header read timeout; a normal sender is served while they are open.
async fn stalled_connections_are_closed_while_senders_are_served(db: &TestDb) {
    let daemon = start(db, "header_read_timeout_secs = 2").await;
    let opened = Instant::now();
    let mut stalled = stall(daemon.addr, 75, None).await;
    let partial = b"POST /hooks/orders HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-le";
    stalled.extend(stall(daemon.addr, 75, Some(partial)).await);

    let closing = watch_closing(stalled, opened, Duration::from_secs(15));
    for i in 0..20 {
        let key = format!("during-{i}");
        assert_eq!(deliver(&daemon, &key).await, 200, "{key}");
    }
    let times = close_times(closing).await;
    assert!(
        times[0] >= Duration::from_millis(1500),
        "closed by the header read timeout, not before: {:?}",
        times[0]
    );
    assert_eq!(deliver(&daemon, "after").await, 200);
    daemon.stop().await;
}

/// At `max_connections` open, further connections wait to be accepted: of
/// 40 silent ones with a cap of 20, the second 20 are closed a whole header
/// timeout after the first; a normal sender behind them is served.
async fn the_connection_cap_holds_back_new_connections(db: &TestDb) {
    let daemon = start(db, "header_read_timeout_secs = 2\nmax_connections = 20").await;
    let opened = Instant::now();
    let stalled = stall(daemon.addr, 40, None).await;
    let closing = watch_closing(stalled, opened, Duration::from_secs(30));
    assert_eq!(deliver(&daemon, "behind").await, 200);
    let times = close_times(closing).await;
    let gap = times[20] - times[19];
    assert!(
        gap >= Duration::from_secs(1),
        "the second 20 were accepted only as the first closed: {times:?}"
    );
    daemon.stop().await;
}

crate::on_both_backends!(
    stalled_connections_are_closed_while_senders_are_served,
    the_connection_cap_holds_back_new_connections,
    an_idle_store_runs_no_task,
    hung_up_clients_cancel_no_commit,
    an_admin_keyframe_outlives_its_client,
    a_connection_left_in_a_transaction_is_not_reused,
    readyz_fails_while_the_write_path_cannot_commit,
);
