//! Why drift happened: each cause scripted against a loopback vendor with real signed webhooks, and found exactly, on both backends.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::support::{config, get_json, Daemon, TestDb};

const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const ADMIN: &str = "cause-admin-t0ken";

/// A vendor listing its orders; every single-order GET answers 503, so a
/// fetch asked for stays asked.
#[derive(Clone, Default)]
struct Orders {
    records: Arc<Mutex<BTreeMap<String, Value>>>,
}

impl Orders {
    async fn start() -> (Self, SocketAddr) {
        let o = Self::default();
        let app = Router::new()
            .route("/orders", get(list))
            .route(
                "/orders/{key}",
                get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
            )
            .with_state(o.clone());
        let addr = crate::support::serve_loopback(app).await;
        (o, addr)
    }

    fn put(&self, key: &str, status: &str, version: i64) -> Value {
        let doc = json!({"id": key, "status": status, "version": version});
        self.records
            .lock()
            .unwrap()
            .insert(key.to_string(), doc.clone());
        doc
    }

    fn remove(&self, key: &str) {
        self.records.lock().unwrap().remove(key);
    }
}

async fn list(State(o): State<Orders>) -> Response {
    let data: Vec<Value> = o.records.lock().unwrap().values().cloned().collect();
    Json(json!({ "data": data })).into_response()
}

fn config_text(db: &str, orders: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_token = "{ADMIN}"

[database]
url = "{db}"

[[producer]]
name = "orders"
schedule = "0 0 0 1 1 *"
max_drift_ratio = 1.0
[producer.snapshot]
url = "http://{orders}/orders"
items = "/data"
key = "/id"
version = "/version"
[producer.webhook]
scheme = "standard-webhooks"
secret = "{SW_SECRET}"
key = "/id"
version = "/version"
[producer.fetch]
url = "http://{orders}/orders/{{key}}"
backoff_base_ms = 60000
backoff_max_ms = 60000
[producer.work]
action = "none"
"#
    )
}

async fn each_cause_is_found_exactly(db: &TestDb) {
    let (orders, addr) = Orders::start().await;
    for key in [
        "delivered",
        "lost",
        "late",
        "rejected",
        "silent",
        "deleted",
        "untouched",
    ] {
        orders.put(key, "open", 1);
    }
    let d = Daemon::start(config(&config_text(&db.url, addr))).await;
    // Seed the mirror by webhooks (the first keyframe of a `none` producer
    // queues what it finds rather than loading it).
    let seed = orders.records.lock().unwrap().clone();
    for (i, r) in seed.values().enumerate() {
        let (status, body) = d.send("orders", r, &format!("seed-{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let first = d.keyframe(&d.http, ADMIN).await;
    assert_eq!(
        first["missing"].as_u64().unwrap() + first["changed"].as_u64().unwrap(),
        0,
        "{first}"
    );

    // delivered: changed, and its webhook arrived.
    let doc = orders.put("delivered", "shipped", 2);
    assert_eq!(d.send("orders", &doc, "chg-delivered").await.0, 200);
    // lost: changed, its webhook never arrived.
    orders.put("lost", "shipped", 2);
    // late: changed; the webhook that came repeats the stored version with
    // other content (a tie), so driftd asked for the record, and the fetch
    // has not succeeded yet (the vendor answers 503).
    orders.put("late", "shipped", 2);
    let tie = json!({"id": "late", "status": "packed", "version": 1});
    let (status, body) = d.send("orders", &tie, "chg-late").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (200, Some("tie")),
        "{body}"
    );
    let asked = d.store.pending_fetches(Some("orders"), 10).await.unwrap();
    assert_eq!(
        asked.iter().map(|f| f.key.as_str()).collect::<Vec<_>>(),
        ["late"]
    );
    // rejected: changed; its webhook arrived with a version driftd refuses.
    orders.put("rejected", "shipped", 2);
    let bad = json!({"id": "rejected", "status": "shipped", "version": "two"});
    let (status, body) = d.send("orders", &bad, "chg-rejected").await;
    assert_eq!(
        (status, body["outcome"].as_str()),
        (400, Some("rejected")),
        "{body}"
    );
    // silent: content changed, version did not.
    orders.put("silent", "shipped", 1);
    // deleted upstream, created upstream: no delta for either.
    orders.remove("deleted");
    orders.put("created", "open", 1);

    let second = d.keyframe(&d.http, ADMIN).await;
    let run_id = second["run_id"].as_i64().unwrap();
    let drifts = d.store.drifts_of_run(run_id).await.unwrap();
    let found: BTreeMap<&str, (&str, Option<&str>)> = drifts
        .iter()
        .map(|r| (r.key.as_str(), (r.kind.as_str(), r.cause.as_deref())))
        .collect();
    let want: BTreeMap<&str, (&str, Option<&str>)> = [
        ("lost", ("changed", Some("lost_delta"))),
        ("late", ("changed", Some("late_delta"))),
        ("rejected", ("changed", Some("rejected_delta"))),
        ("silent", ("changed", Some("silent_change"))),
        ("deleted", ("extra", Some("deleted_upstream"))),
        ("created", ("missing", Some("created_upstream"))),
    ]
    .into_iter()
    .collect();
    assert_eq!(found, want, "{second}");
    let causes: BTreeMap<String, u64> = serde_json::from_value(second["causes"].clone()).unwrap();
    assert_eq!(causes.values().sum::<u64>(), 6, "{second}");
    assert!(causes.values().all(|&n| n == 1), "{second}");

    // The cause travels with the work item the application reads.
    let items = d.store.list_work(None, 100).await.unwrap();
    let spec_cause = |key: &str| {
        let item = items.iter().find(|w| w.key == key).unwrap();
        let spec: Value = serde_json::from_str(&item.spec).unwrap();
        spec["cause"].as_str().map(str::to_string)
    };
    for (key, (_, cause)) in &want {
        assert_eq!(spec_cause(key).as_deref(), *cause, "work item of {key}");
    }
    // And is counted, by kind and cause.
    for (kind, cause) in want.values() {
        let labels = [
            ("producer", "orders"),
            ("kind", *kind),
            ("cause", cause.unwrap()),
        ];
        assert_eq!(
            d.metric("driftd_drift_detected_total", &labels).await,
            1.0,
            "{labels:?}"
        );
    }
    // And shown by status, for the run.
    let (code, status) = get_json(&d.http, &format!("{}/admin/status", d.base), Some(ADMIN)).await;
    assert_eq!(code, 200);
    let run = status["producers"][0]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run_id)
        .unwrap()
        .clone();
    assert_eq!(run["causes"]["lost_delta"], 1, "{run}");
    assert_eq!(run["causes"]["created_upstream"], 1, "{run}");
    d.stop().await;
}

crate::on_both_backends!(each_cause_is_found_exactly);
