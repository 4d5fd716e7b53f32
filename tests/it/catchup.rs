//! Catch-ups between keyframes, end to end on both backends: with a tenth of the webhooks lost, the producer with a catch-up every 5 s has no drift left for its keyframe, the one without has every loss; a failed catch-up changes nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use driftd::canonical::version_value;
use driftd::metrics::Metrics;
use serde_json::{json, Value};

use crate::support::{config, differing, eventually, Daemon, TestDb};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN: &str = "catchup-admin-t0ken";
const RECORDS: usize = 300;
/// How long the vendor keeps changing records, one every [`PACE`].
const CHURN: Duration = Duration::from_secs(12);
const PACE: Duration = Duration::from_millis(30);
const LOSS: f64 = 0.10;

/// A vendor whose list answers `updated_since` (RFC 3339), or 500 when down.
#[derive(Clone, Default)]
struct Vendor {
    records: Arc<Mutex<BTreeMap<String, Value>>>,
    down: Arc<AtomicBool>,
    clock: Arc<Mutex<i64>>,
}

impl Vendor {
    async fn start() -> (Self, SocketAddr) {
        let v = Self::default();
        let app = Router::new()
            .route("/orders", get(list))
            .with_state(v.clone());
        let addr = crate::support::serve_loopback(app).await;
        (v, addr)
    }

    /// Sets `key` to `status` with a new, strictly newer `updated_at`.
    fn put(&self, key: &str, status: &str) -> Value {
        let at = {
            let mut clock = self.clock.lock().unwrap();
            *clock = (*clock + 1).max(chrono::Utc::now().timestamp_millis());
            *clock
        };
        let updated_at = chrono::DateTime::from_timestamp_millis(at)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let doc = json!({"id": key, "status": status, "updated_at": updated_at});
        self.records
            .lock()
            .unwrap()
            .insert(key.to_string(), doc.clone());
        doc
    }
}

async fn list(State(v): State<Vendor>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    if v.down.load(Ordering::Relaxed) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    let since = q
        .get("updated_since")
        .map(|t| version_value(&Value::String(t.clone())).expect("an RFC 3339 since"));
    let records = v.records.lock().unwrap();
    let data: Vec<&Value> = records
        .values()
        .filter(|r| since.is_none_or(|s| version_value(&r["updated_at"]).unwrap() >= s))
        .collect();
    Json(json!({ "data": data })).into_response()
}

/// `caught` and `uncaught`: the same kind of producer, each on its own
/// vendor; only `caught` has a catch-up, every 5 s.
fn config_text(db: &str, caught: SocketAddr, uncaught: SocketAddr) -> String {
    let producer = |name: &str, addr: SocketAddr| {
        format!(
            r#"
[[producer]]
name = "{name}"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://{addr}/orders"
items = "/data"
version = "/updated_at"
[producer.webhook]
scheme = "standard-webhooks"
secret = "{SW_SECRET}"
key = "/id"
version = "/updated_at"
"#
        )
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN}"

[database]
url = "{db}"
{}
[producer.catchup]
url = "http://{caught}/orders?updated_since={{since}}"
every_secs = 5
overlap = 1
{}"#,
        producer("caught", caught),
        producer("uncaught", uncaught)
    )
}

async fn keyframe(d: &Daemon, producer: &str) -> Value {
    let resp = d
        .http
        .post(format!("{}/admin/keyframe/{producer}", d.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "keyframe of {producer}");
    resp.json().await.unwrap()
}

async fn catch_up_leaves_no_drift_for_the_keyframe(db: &TestDb) {
    let (caught, caught_addr) = Vendor::start().await;
    let (uncaught, uncaught_addr) = Vendor::start().await;
    let keys: Vec<String> = (0..RECORDS).map(|i| format!("o-{i:04}")).collect();
    for k in &keys {
        caught.put(k, "open");
        uncaught.put(k, "open");
    }
    let d = Daemon::start(config(&config_text(&db.url, caught_addr, uncaught_addr))).await;
    for name in ["caught", "uncaught"] {
        let first = keyframe(&d, name).await;
        assert_eq!(first["loaded"], RECORDS, "{first}");
    }
    assert!(differing(&d.store, "caught", &caught.records)
        .await
        .is_empty());

    // The same changes on both vendors; the same webhooks lost for both.
    let started = Instant::now();
    let (mut changes, mut lost) = (0, 0);
    while started.elapsed() < CHURN {
        let key = &keys[rand::random_range(0..RECORDS)];
        let status = format!("s{changes}");
        let a = caught.put(key, &status);
        let b = uncaught.put(key, &status);
        changes += 1;
        if rand::random::<f64>() < LOSS {
            lost += 1;
        } else {
            let id = format!("chg-{changes}");
            let (sa, ra) = d.send("caught", &a, &id).await;
            let (sb, rb) = d.send("uncaught", &b, &id).await;
            assert_eq!((sa, sb), (200, 200), "{ra} {rb}");
        }
        tokio::time::sleep(PACE).await;
    }
    // Just before the next keyframe, which comes after the catch-up tick
    // that follows the last change: the first whose pull saw that change.
    let last_change = *caught.clock.lock().unwrap() * 1_000_000;
    eventually("a catch-up that saw the last change", || async {
        let s = d.store.catchup_state("caught").await.unwrap()?;
        (s.since? >= last_change && s.last_ok == Some(true)).then_some(())
    })
    .await;
    let with = differing(&d.store, "caught", &caught.records).await;
    let without = differing(&d.store, "uncaught", &uncaught.records).await;
    assert!(
        without.len() >= 5,
        "{lost} of {changes} webhooks lost should leave drift without catch-up: {without:?}"
    );
    assert!(
        with.len() * 100 <= without.len(),
        "with catch-up {} drifted, without {}: {with:?}",
        with.len(),
        without.len()
    );
    // The keyframes see the same: the loss is the uncaught producer's drift only.
    let k = keyframe(&d, "uncaught").await;
    assert_eq!(k["changed"], without.len(), "{k}");
    let k = keyframe(&d, "caught").await;
    assert_eq!(k["changed"], 0, "{k}");
    assert!(
        d.metric(
            "driftd_catchup_runs_total",
            &[("producer", "caught"), ("outcome", "ok")]
        )
        .await
            >= 1.0
    );
    assert!(
        d.metric(
            "driftd_catchup_records_total",
            &[("producer", "caught"), ("outcome", "applied")]
        )
        .await
            >= 1.0
    );

    // A failed catch-up writes nothing and keeps where the next one starts.
    let before = d.store.catchup_state("caught").await.unwrap().unwrap();
    caught.down.store(true, Ordering::Relaxed);
    let p = d.config.producer("caught").unwrap().clone();
    let client = reqwest::Client::new();
    let never = tokio_util::sync::CancellationToken::new();
    let c = driftd::catchup::catch_up(&d.store, &client, &Metrics::new(), &p, &never)
        .await
        .unwrap();
    assert!(
        c.error.as_deref().is_some_and(|e| e.contains("500")),
        "{c:?}"
    );
    let after = d.store.catchup_state("caught").await.unwrap().unwrap();
    assert_eq!(after.since, before.since);
    assert_eq!(after.last_ok, Some(false));
    d.stop().await;
}

crate::on_both_backends!(catch_up_leaves_no_drift_for_the_keyframe);
