//! Records fetched by key, end to end on both backends: thin webhooks (one fetch per notification, through a vendor outage and a SIGKILL), version ties and unsigned replays resolved by asking, and catch-ups between keyframes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use driftd::canonical::version_value;
use driftd::ingest::signature;
use driftd::store::{InboxFilter, InboxOutcome, Store};
use serde_json::{json, Value};

use crate::support::{config, differing, eventually, Daemon, DaemonProcess, TestDb};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN: &str = "fetch-admin-t0ken";

/// A vendor that serves its orders as a list (optionally only those updated
/// since a time) and one by one, counting the GETs of each, and that can
/// answer 503 to every single-record GET.
#[derive(Clone, Default)]
struct Shop {
    records: Arc<Mutex<BTreeMap<String, Value>>>,
    gets: Arc<Mutex<BTreeMap<String, u64>>>,
    down: Arc<AtomicBool>,
    /// Holds every single-record GET unanswered (for two minutes at most).
    stall: Arc<AtomicBool>,
    stalled: Arc<std::sync::atomic::AtomicU64>,
    /// The newest `updated_at` handed out (ms), so each change gets a newer one.
    clock: Arc<Mutex<i64>>,
}

impl Shop {
    async fn start() -> (Self, SocketAddr) {
        let shop = Self::default();
        let app = Router::new()
            .route("/orders", get(list))
            .route("/orders/{key}", get(one))
            .with_state(shop.clone());
        let addr = crate::support::serve_loopback(app).await;
        (shop, addr)
    }

    /// Sets `key`'s record to `status` at `version` (an integer) and a new
    /// `updated_at`; returns the record.
    fn put(&self, key: &str, status: &str, version: i64) -> Value {
        let at = {
            let mut clock = self.clock.lock().unwrap();
            *clock = (*clock + 1).max(chrono::Utc::now().timestamp_millis());
            *clock
        };
        let updated_at = chrono::DateTime::from_timestamp_millis(at)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let doc =
            json!({"id": key, "status": status, "version": version, "updated_at": updated_at});
        self.records
            .lock()
            .unwrap()
            .insert(key.to_string(), doc.clone());
        doc
    }

    fn gets(&self, key: &str) -> u64 {
        self.gets.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

async fn list(State(s): State<Shop>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let since = q
        .get("updated_since")
        .map(|t| version_value(&Value::String(t.clone())).expect("an RFC 3339 since"));
    let records = s.records.lock().unwrap();
    let data: Vec<&Value> = records
        .values()
        .filter(|r| since.is_none_or(|since| version_value(&r["updated_at"]).unwrap() >= since))
        .collect();
    Json(json!({ "data": data })).into_response()
}

async fn one(State(s): State<Shop>, Path(key): Path<String>) -> Response {
    *s.gets.lock().unwrap().entry(key.clone()).or_default() += 1;
    if s.stall.load(Ordering::Relaxed) {
        s.stalled.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(120)).await;
    }
    if s.down.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "down for maintenance").into_response();
    }
    match s.records.lock().unwrap().get(&key) {
        Some(r) => Json(json!({ "order": r })).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// `thin`: notifications that name an order (Standard Webhooks, so the
/// delivery id is signed); `ties`: full records versioned by `/version`;
/// `plain`: plain HMAC without versions (a replay looks like a new delta).
fn config_text(db: &str, listen: &str, shop: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
admin_token = "{ADMIN}"

[database]
url = "{db}"

[[producer]]
name = "thin"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://{shop}/orders"
items = "/data"
version = "/version"
[producer.webhook]
scheme = "standard-webhooks"
secret = "{SW_SECRET}"
key = "/id"
mode = "fetch"
[producer.fetch]
url = "http://{shop}/orders/{{key}}"
item = "/order"
backoff_base_ms = 50
backoff_max_ms = 400
# A key's lease outlives the tests' 30 s waits: a restart must not wait it out.
timeout_secs = 20

[[producer]]
name = "ties"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://{shop}/orders"
items = "/data"
version = "/version"
[producer.webhook]
scheme = "standard-webhooks"
secret = "{SW_SECRET}"
key = "/id"
version = "/version"
[producer.fetch]
url = "http://{shop}/orders/{{key}}"
item = "/order"

[[producer]]
name = "plain"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://{shop}/orders"
items = "/data"
[producer.webhook]
scheme = "hmac-sha256"
secret = "plain-s3cret"
header = "X-Signature"
key = "/id"
[producer.fetch]
url = "http://{shop}/orders/{{key}}"
item = "/order"
"#
    )
}

async fn open(store: &Store, producer: &str, outcome: InboxOutcome) -> usize {
    let filter = InboxFilter {
        producer: Some(producer.into()),
        since_ms: None,
        outcome: Some(outcome),
    };
    store.inbox_page(&filter, 0, 10_000).await.unwrap().len()
}

async fn thin_webhooks_fetch_each_record_once(db: &TestDb) {
    let (shop, addr) = Shop::start().await;
    let keys: Vec<String> = (0..100).map(|i| format!("ord-{i:03}")).collect();
    for k in &keys {
        shop.put(k, "open", 1);
    }
    let d = Daemon::start(config(&config_text(&db.url, "127.0.0.1:0", addr))).await;
    for k in &keys {
        shop.put(k, "shipped", 2);
    }
    // Each notification twice with the same delivery id: the second is a duplicate.
    for (i, k) in keys.iter().enumerate() {
        let note = json!({"type": "order.updated", "id": k});
        let (status, body) = d.send("thin", &note, &format!("evt-{i}")).await;
        assert!(status == 202 || status == 200, "{status} {body}");
        assert!(
            matches!(body["outcome"].as_str(), Some("fetching" | "fetched")),
            "{body}"
        );
        let (status, body) = d.send("thin", &note, &format!("evt-{i}")).await;
        assert_eq!((status, body["outcome"].as_str()), (200, Some("duplicate")));
    }
    eventually("every notification fetched", || async {
        (open(&d.store, "thin", InboxOutcome::Fetching).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        differing(&d.store, "thin", &shop.records).await,
        Vec::<String>::new()
    );
    for k in &keys {
        assert_eq!(shop.gets(k), 1, "GETs of {k}");
    }
    assert_eq!(open(&d.store, "thin", InboxOutcome::Fetched).await, 100);
    assert_eq!(d.deltas("thin", "webhook", "fetched").await, 100.0);
    assert_eq!(d.deltas("thin", "webhook", "fetching").await, 0.0);
    assert_eq!(
        d.metric(
            "driftd_fetches_total",
            &[("producer", "thin"), ("outcome", "applied")]
        )
        .await,
        100.0
    );
    let e = d.store.entity("thin", "ord-007").await.unwrap().unwrap();
    assert_eq!(e.source.as_str(), "fetch");
    assert_eq!(e.version, Some(2));
    d.stop().await;
}

async fn thin_webhooks_survive_an_outage_and_a_sigkill(db: &TestDb) {
    let (shop, addr) = Shop::start().await;
    let keys: Vec<String> = (0..100).map(|i| format!("ord-{i:03}")).collect();
    for k in &keys {
        shop.put(k, "shipped", 3);
    }
    shop.down.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let text = |listen: &str| config_text(&db.url, listen, addr);
    let w = config(&text("127.0.0.1:1"))
        .producer("thin")
        .and_then(|p| p.webhook.clone())
        .unwrap();
    let mut first = DaemonProcess::spawn(dir.path(), "run1", text, |c| {
        c.env("RUST_LOG", "warn");
    });
    first.ready().await;
    let http = reqwest::Client::new();
    for (i, k) in keys.iter().enumerate() {
        let body = json!({"id": k}).to_string();
        let mut req = http
            .post(format!("{}/hooks/thin", first.base))
            .body(body.clone());
        for (h, v) in signature::sign(
            &w,
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
            &format!("out-{i}"),
        ) {
            req = req.header(h, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 202, "notification {i}");
    }
    // The vendor is down: every key is tried and refused at least once.
    eventually("a 503 for every key", || async {
        keys.iter().all(|k| shop.gets(k) >= 1).then_some(())
    })
    .await;
    // Then it hangs, so the daemon dies holding leases on keys in flight.
    shop.stall.store(true, Ordering::Relaxed);
    let store = db.store().await;
    eventually("fetches in flight", || async {
        let held = store.fetch_holders("thin", driftd::store::now_ms()).await;
        (shop.stalled.load(Ordering::Relaxed) > 0 && !held.unwrap().is_empty()).then_some(())
    })
    .await;
    first.kill();
    shop.stall.store(false, Ordering::Relaxed);
    assert_eq!(open(&store, "thin", InboxOutcome::Fetching).await, 100);
    assert_eq!(store.fetch_backlog().await.unwrap().get("thin"), Some(&100));
    let failed = store.pending_fetches(Some("thin"), 1).await.unwrap();
    assert!(
        failed[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("503")),
        "{failed:?}"
    );

    shop.down.store(false, Ordering::Relaxed);
    let mut second = DaemonProcess::spawn(dir.path(), "run2", text, |c| {
        c.env("RUST_LOG", "warn");
    });
    second.ready().await;
    eventually("every notification applied after the restart", || async {
        (open(&store, "thin", InboxOutcome::Fetching).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        differing(&store, "thin", &shop.records).await,
        Vec::<String>::new()
    );
    assert_eq!(open(&store, "thin", InboxOutcome::Fetched).await, 100);
    assert!(store.fetch_backlog().await.unwrap().is_empty());
    second.stop();
}

async fn ties_and_unsigned_replays_are_resolved_by_asking(db: &TestDb) {
    let (shop, addr) = Shop::start().await;
    let d = Daemon::start(config(&config_text(&db.url, "127.0.0.1:0", addr))).await;

    // Two updates within the vendor's version resolution: same version, other bodies.
    let a = shop.put("t-1", "packed", 5);
    let (_, r) = d.send("ties", &a, "tie-a").await;
    assert_eq!(r["outcome"], "applied");
    let b = shop.put("t-1", "shipped", 5);
    let (status, r) = d.send("ties", &b, "tie-b").await;
    assert_eq!((status, r["outcome"].as_str()), (200, Some("tie")), "{r}");
    eventually("the tie resolved to the vendor's record", || async {
        let e = d.store.entity("ties", "t-1").await.unwrap()?;
        (e.doc.as_ref() == Some(&b)).then_some(())
    })
    .await;
    // The other order: the newer body first, the older one tied after it.
    let a = json!({"id": "t-2", "status": "packed", "version": 7, "updated_at": "x"});
    let b = shop.put("t-2", "shipped", 7);
    d.send("ties", &b, "tie-c").await;
    let (_, r) = d.send("ties", &a, "tie-d").await;
    assert_eq!(r["outcome"], "tie");
    eventually("the late tie fetched", || async {
        (shop.gets("t-2") == 1).then_some(())
    })
    .await;
    eventually("the fetch committed", || async {
        d.store
            .fetch_backlog()
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    let e = d.store.entity("ties", "t-2").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(b));
    assert_eq!(d.deltas("ties", "webhook", "tie").await, 2.0);
    // The same content at the same version is an ordinary stale delta: no fetch.
    let gets = shop.gets("t-1");
    let same = shop.records.lock().unwrap()["t-1"].clone();
    let (_, r) = d.send("ties", &same, "tie-e").await;
    assert_eq!(r["outcome"], "stale");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(shop.gets("t-1"), gets);

    // Plain HMAC signs no delivery id and the payload carries no version:
    // driftd applies what the vendor holds, not the (possibly replayed) body.
    let now = shop.put("p-1", "delivered", 9);
    let old = json!({"id": "p-1", "status": "packed"});
    for _ in 0..2 {
        let (status, r) = d.send("plain", &old, "ignored").await;
        assert_eq!(status, 202, "{r}");
        assert_eq!(r["outcome"], "fetching");
        eventually("the replay fetched", || async {
            (open(&d.store, "plain", InboxOutcome::Fetching).await == 0).then_some(())
        })
        .await;
        let e = d.store.entity("plain", "p-1").await.unwrap().unwrap();
        assert_eq!(e.doc.as_ref(), Some(&now));
    }

    // `POST /admin/refresh/{producer}/{key}` fetches one record now.
    let later = shop.put("p-1", "returned", 10);
    let resp = d
        .http
        .post(format!("{}/admin/refresh/plain/p-1", d.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["fetched"][0]["outcome"], "applied", "{body}");
    let e = d.store.entity("plain", "p-1").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(later));
    // A key the vendor does not hold: 404 is ignored by default.
    let resp = d
        .http
        .post(format!("{}/admin/refresh/plain/nope", d.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["fetched"][0]["outcome"], "not_found", "{body}");
    assert!(d.store.entity("plain", "nope").await.unwrap().is_none());
    d.stop().await;
}

crate::on_both_backends!(
    thin_webhooks_fetch_each_record_once,
    thin_webhooks_survive_an_outage_and_a_sigkill,
    ties_and_unsigned_replays_are_resolved_by_asking,
);
