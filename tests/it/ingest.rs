//! Deltas end to end against the real daemon on both backends: signed webhooks, emails (maildir and HTTP), version order, the sweeper, replay, crash safety, hostile input.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftd::app::App;
use driftd::canonical::{version_value, RecordHasher};
use driftd::config::{Config, Secret, WebhookConfig};
use driftd::ingest::signature;
use driftd::store::{
    now_ms, Channel, Entity, InboxEntry, InboxFilter, InboxOutcome, InboxRow, Store,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::{driftd_bin, repo_root, TestDb};

const BODY_LIMIT: usize = 65_536;
const MAIL_TOKEN: &str = "mail-s3cret";
const SW_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SW_SECRET: &str = "whsec_b3RoZXItc2VjcmV0LW5vYm9keS1jb25maWd1cmVk";
const DEADLINE: Duration = Duration::from_secs(30);

/// Four producers: `orders` (Standard Webhooks, one record per body),
/// `batch` (HMAC, arrays of merge patches, delete events, dedup pointer),
/// `acme` (email: maildir and inbound endpoint, the fixtures' rules), and
/// `plain` (neither webhook nor email).
const CONFIG: &str = r#"
[server]
listen = "@LISTEN@"
body_limit_bytes = @LIMIT@

[database]
url = "@DB@"

[[producer]]
name = "orders"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/orders"
ignore = ["/fetched_at"]
[producer.webhook]
scheme = "standard-webhooks"
secret = "@SW_SECRET@"
key = "/id"
version = "/version"
deleted = "/deleted"

[[producer]]
name = "batch"
schedule = "0 0 0 1 1 *"
bucket_bits = 4
[producer.snapshot]
url = "http://127.0.0.1:9/batch"
[producer.webhook]
scheme = "hmac-sha256"
secret = "batch-s3cret"
header = "X-Signature"
prefix = "sha256="
items = "/data"
key = "/id"
version = "/v"
mode = "merge-patch"
event = "/type"
delete_events = ["deleted"]
dedup_pointer = "/event_id"

[[producer]]
name = "acme"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/acme"
[producer.email]
maildir = "@MAILDIR@"
secret = "@MAIL_TOKEN@"
[[producer.email.rule]]
name = "status"
from = ["@acme.example", "Billing@Shop.Example"]
subject = 'Order (?P<order>[A-Z0-9-]+)'
body = '(?s)Status:\s*(?P<status>\w+)(?:.*?(?:Updated|Version):\s*(?P<version>\S+))?'
key = "order"
version = "version"
set = { "/status" = "status" }
[[producer.email.rule]]
name = "eta"
subject = 'ETA for (?P<order>\S+)'
body = 'arrives (?P<eta>\S+)'
key = "order"
set = { "/shipping/eta" = "eta" }

[[producer]]
name = "gh"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/gh"
[producer.webhook]
scheme = "github"
secret = "It's a Secret to Everybody"
previous_secret = "gh-old-secret"
key = "/id"
version = "/version"
dedup_header = "X-GitHub-Delivery"

[[producer]]
name = "stripe"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/stripe"
[producer.webhook]
scheme = "stripe"
secret = "whsec_stripe_test_secret"
key = "/data/id"
version = "/created"
dedup_pointer = "/event_id"

[[producer]]
name = "swvec"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/swvec"
[producer.webhook]
scheme = "standard-webhooks"
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
tolerance_secs = 3153600000
key = "/test"

[[producer]]
name = "plain"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/plain"
"#;

fn config_text(db_url: &str, listen: &str, maildir: &Path) -> String {
    CONFIG
        .replace("@LISTEN@", listen)
        .replace("@LIMIT@", &BODY_LIMIT.to_string())
        .replace("@DB@", db_url)
        .replace("@SW_SECRET@", SW_SECRET)
        .replace("@MAILDIR@", &maildir.display().to_string())
        .replace("@MAIL_TOKEN@", MAIL_TOKEN)
}

fn parse_config(text: &str) -> Config {
    Config::parse("t.toml", text, &|_| None)
        .expect("the test config is valid")
        .config
}

/// Polls `check` until it returns `Some`, failing after [`DEADLINE`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of one series in a Prometheus text exposition (0 when absent).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            series.split('{').next() == Some(name)
                && labels
                    .iter()
                    .all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse().expect("a number"))
        .unwrap_or(0.0)
}

async fn inbox(store: &Store) -> Vec<InboxRow> {
    store
        .inbox_page(&InboxFilter::default(), 0, 100_000)
        .await
        .expect("list the inbox")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repo_root().join("tests/fixtures/email").join(name)).expect("fixture")
}

const FIXTURES: &[&str] = &[
    "multipart-alternative.eml",
    "quoted-printable.eml",
    "base64.eml",
    "latin1.eml",
    "html-only.eml",
    "unmatched.eml",
];

/// The entity each matching fixture patches: key, status, version.
fn fixture_effects() -> Vec<(&'static str, &'static str, Option<i64>)> {
    let v = |s: &str| Some(version_value(&json!(s)).unwrap());
    vec![
        ("ORD-1001", "shipped", v("2026-03-02T09:14:00Z")),
        ("ORD-2002", "delayed", Some(17)),
        ("ORD-3003", "delivered", v("2026-03-04T16:20:00+01:00")),
        ("ORD-4004", "cancelled", v("2026-03-05T08:00:00Z")),
        ("ORD-5005", "returned", None),
    ]
}

async fn assert_fixture_entities(store: &Store) {
    for (key, status, version) in fixture_effects() {
        let e = store
            .entity("acme", key)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key} not stored"));
        assert_eq!(e.doc, Some(json!({ "status": status })), "{key}");
        assert_eq!(e.version, version, "{key}");
        assert_eq!(e.source, "email", "{key}");
    }
    assert_eq!(store.entity("acme", "ORD-6006").await.unwrap(), None);
}

/// The daemon, in process, on a port-0 listener.
struct Daemon {
    base: String,
    http: reqwest::Client,
    store: Store,
    config: Config,
    maildir: PathBuf,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(db: &TestDb) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let config = parse_config(&config_text(&db.url, "127.0.0.1:0", &maildir));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::build(config.clone(), Some(listener))
            .await
            .expect("build the daemon");
        let base = format!("http://{}", app.local_addr().unwrap());
        let store = app.store().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        Self {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            store,
            config,
            maildir,
            shutdown,
            task,
            _dir: dir,
        }
    }

    fn webhook(&self, producer: &str) -> WebhookConfig {
        self.config
            .producer(producer)
            .and_then(|p| p.webhook.clone())
            .expect("producer with a webhook")
    }

    async fn post(&self, path: &str, body: Vec<u8>, headers: &[(String, String)]) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("the daemon answers");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POSTs `body` to `/hooks/{producer}`, signed now with the producer's secret.
    async fn send_raw(&self, producer: &str, body: &[u8], id: &str) -> (u16, Value) {
        let headers = signature::sign(
            &self.webhook(producer),
            body,
            chrono::Utc::now().timestamp(),
            id,
        );
        self.post(&format!("/hooks/{producer}"), body.to_vec(), &headers)
            .await
    }

    async fn send(&self, producer: &str, body: &Value, id: &str) -> (u16, Value) {
        self.send_raw(producer, body.to_string().as_bytes(), id)
            .await
    }

    async fn email(&self, raw: Vec<u8>, token: Option<&str>) -> (u16, Value) {
        let headers: Vec<(String, String)> = token
            .map(|t| vec![("authorization".to_string(), format!("Bearer {t}"))])
            .unwrap_or_default();
        self.post("/inbound-email/acme", raw, &headers).await
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn deltas(&self, producer: &str, channel: &str, outcome: &str) -> f64 {
        metric(
            &self.metrics().await,
            "driftd_deltas_total",
            &[
                ("producer", producer),
                ("channel", channel),
                ("outcome", outcome),
            ],
        )
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("the daemon task does not panic")
            .expect("the daemon stops cleanly");
    }
}

fn orders_doc(key: &str, version: i64) -> Value {
    json!({"id": key, "version": version, "status": format!("s{version}"), "fetched_at": now_ms()})
}

// ---------------------------------------------------------------------------
// Webhooks

async fn signed_webhook_is_committed_and_applied(db: &TestDb) {
    let d = Daemon::start(db).await;
    let doc = orders_doc("ord-1", 3);
    let (status, receipt) = d.send("orders", &doc, "msg_1").await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["outcome"], "applied", "{receipt}");

    let e = d.store.entity("orders", "ord-1").await.unwrap().unwrap();
    assert_eq!(e.doc.as_ref(), Some(&doc));
    assert_eq!(e.version, Some(3));
    assert_eq!(e.source, "webhook");
    // The same canonical hash as keyframes: the producer's ignore pointers apply.
    let hasher = RecordHasher::new(&["/fetched_at"]).unwrap();
    assert_eq!(e.hash, Some(hasher.hash(&doc)));
    assert_ne!(e.hash, Some(RecordHasher::default().hash(&doc)));

    let rows = inbox(&d.store).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(json!(row.id), receipt["inbox_id"]);
    assert_eq!(
        (row.producer.as_str(), row.channel, row.outcome),
        ("orders", Channel::Webhook, InboxOutcome::Applied)
    );
    assert_eq!(row.dedup_key.as_deref(), Some("msg_1"));
    assert_eq!(row.body, doc.to_string().into_bytes());
    let headers: Value = serde_json::from_str(&row.headers).unwrap();
    assert_eq!(headers["webhook-id"], "msg_1");
    assert_eq!(headers["content-type"], "application/json");
    assert!(
        !row.headers.contains("signature") && !row.headers.contains("v1,"),
        "signature kept: {}",
        row.headers
    );
    assert_eq!(d.deltas("orders", "webhook", "applied").await, 1.0);

    // Deletion by the `deleted` pointer keeps a tombstone at the new version.
    let gone = json!({"id": "ord-1", "version": 4, "deleted": true});
    let (status, receipt) = d.send("orders", &gone, "msg_2").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));
    let e = d.store.entity("orders", "ord-1").await.unwrap().unwrap();
    assert!(e.deleted && e.doc.is_none());
    assert_eq!(e.version, Some(4));

    // Arrays of merge patches, integer keys, delete events, dedup by pointer.
    let upsert = json!({"event_id": "e1", "type": "upsert", "data": [
        {"id": "a", "v": 1, "name": "A", "tags": {"x": 1}},
        {"id": 7, "v": 1, "name": "B"},
    ]});
    let (status, receipt) = d.send("batch", &upsert, "").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));
    let patch = json!({"event_id": "e2", "type": "upsert", "data": [
        {"id": "a", "v": 2, "tags": {"x": null, "y": 2}},
    ]});
    let (status, receipt) = d.send("batch", &patch, "").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));
    let deleted = json!({"event_id": "e3", "type": "deleted", "data": [{"id": 7, "v": 2}]});
    let (status, receipt) = d.send("batch", &deleted, "").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));
    let (status, receipt) = d.send("batch", &patch, "").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("duplicate")));

    let a = d.store.entity("batch", "a").await.unwrap().unwrap();
    assert_eq!(
        a.doc,
        Some(json!({"id": "a", "v": 2, "name": "A", "tags": {"y": 2}}))
    );
    assert_eq!(a.version, Some(2));
    let seven = d.store.entity("batch", "7").await.unwrap().unwrap();
    assert!(seven.deleted);
    assert_eq!(d.store.count_entities("batch").await.unwrap(), 1);
    d.stop().await;
}

async fn bad_signatures_are_refused_and_counted(db: &TestDb) {
    let d = Daemon::start(db).await;
    let w = d.webhook("orders");
    let other = WebhookConfig {
        secret: Some(Secret::new(OTHER_SW_SECRET)),
        ..w.clone()
    };
    let body = orders_doc("ord-1", 1).to_string().into_bytes();
    let altered = orders_doc("ord-1", 2).to_string().into_bytes();
    let now = chrono::Utc::now().timestamp();
    type Headers = Vec<(String, String)>;
    let cases: Vec<(&str, Headers, Vec<u8>)> = vec![
        (
            "wrong secret",
            signature::sign(&other, &body, now, "m1"),
            body.clone(),
        ),
        (
            "altered body",
            signature::sign(&w, &body, now, "m2"),
            altered,
        ),
        (
            "stale timestamp",
            signature::sign(&w, &body, now - 3600, "m3"),
            body.clone(),
        ),
        (
            "no signature",
            vec![("webhook-id".into(), "m4".into())],
            body.clone(),
        ),
    ];
    for (name, headers, body) in &cases {
        let (status, answer) = d.post("/hooks/orders", body.clone(), headers).await;
        assert_eq!(status, 401, "{name}: {answer}");
        assert_eq!(
            answer,
            json!({"error": "signature verification failed"}),
            "{name}"
        );
        assert!(!answer.to_string().contains(&SW_SECRET[6..]));
    }
    assert!(
        inbox(&d.store).await.is_empty(),
        "a refused webhook was stored"
    );
    assert_eq!(d.store.entity("orders", "ord-1").await.unwrap(), None);
    let text = d.metrics().await;
    assert_eq!(
        metric(
            &text,
            "driftd_webhook_signature_failures_total",
            &[("producer", "orders")]
        ),
        cases.len() as f64
    );
    for outcome in ["applied", "stale", "duplicate", "rejected"] {
        assert_eq!(d.deltas("orders", "webhook", outcome).await, 0.0);
    }
    // And the right secret still works.
    let (status, _) = d.send_raw("orders", &body, "m5").await;
    assert_eq!(status, 200);
    d.stop().await;
}

async fn redeliveries_are_duplicates(db: &TestDb) {
    let d = Daemon::start(db).await;
    let first = orders_doc("ord-1", 1);
    let (status, receipt) = d.send("orders", &first, "msg_1").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));
    let first_id = receipt["inbox_id"].clone();

    // The same delivery id with other content changes nothing.
    let (status, receipt) = d.send("orders", &orders_doc("ord-1", 2), "msg_1").await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["outcome"], "duplicate");
    assert_eq!(receipt["duplicate_of"], first_id);
    let (status, receipt) = d.send("orders", &first, "msg_1").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("duplicate")));
    let e = d.store.entity("orders", "ord-1").await.unwrap().unwrap();
    assert_eq!((e.doc.as_ref(), e.version), (Some(&first), Some(1)));
    let found = d
        .store
        .find_duplicate("orders", Channel::Webhook, "msg_1")
        .await
        .unwrap();
    assert_eq!(json!(found), first_id);
    let elsewhere = d.store.find_duplicate("orders", Channel::Email, "msg_1");
    assert_eq!(elsewhere.await.unwrap(), None);

    // Concurrent redeliveries, through two daemons sharing the database:
    // exactly one of them is applied.
    let d2 = Daemon::start(db).await;
    let doc = orders_doc("ord-2", 5);
    let sends = (0..10).map(|i| {
        let daemon = if i % 2 == 0 { &d } else { &d2 };
        daemon.send("orders", &doc, "msg_race")
    });
    let answers = futures::future::join_all(sends).await;
    let outcomes: Vec<&str> = answers
        .iter()
        .map(|(status, r)| {
            assert_eq!(*status, 200, "{r}");
            r["outcome"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "applied").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "duplicate").count(),
        9,
        "{outcomes:?}"
    );
    let rows = inbox(&d.store).await;
    let firsts: Vec<&InboxRow> = rows
        .iter()
        .filter(|r| r.dedup_key.as_deref() == Some("msg_race") && r.duplicate_of.is_none())
        .collect();
    assert_eq!(firsts.len(), 1);
    assert!(rows
        .iter()
        .filter(|r| r.outcome == InboxOutcome::Duplicate)
        .all(|r| r.duplicate_of.is_some()));
    let dupes = d.deltas("orders", "webhook", "duplicate").await
        + d2.deltas("orders", "webhook", "duplicate").await;
    assert_eq!(dupes, 11.0);
    d2.stop().await;
    d.stop().await;
}

async fn malformed_unknown_and_oversized_requests(db: &TestDb) {
    let d = Daemon::start(db).await;
    let broken = br#"{"id": "ord-1", "version": "#;
    let (status, receipt) = d.send_raw("orders", broken, "bad_1").await;
    assert_eq!(status, 400, "{receipt}");
    assert_eq!(receipt["outcome"], "rejected");
    assert!(
        receipt["error"]
            .as_str()
            .unwrap()
            .starts_with("body is not JSON: "),
        "{receipt}"
    );
    let (status, receipt) = d.send("orders", &json!({"version": 1}), "bad_2").await;
    assert_eq!(status, 400);
    assert_eq!(
        receipt,
        json!({"inbox_id": receipt["inbox_id"], "outcome": "rejected", "error": "no key at \"/id\""})
    );
    let rows = inbox(&d.store).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.outcome == InboxOutcome::Rejected));
    assert_eq!(rows[0].body, broken.to_vec(), "the raw body is kept");
    assert!(rows[0]
        .error
        .as_deref()
        .unwrap()
        .starts_with("body is not JSON"));
    assert_eq!(d.deltas("orders", "webhook", "rejected").await, 2.0);

    for path in [
        "/hooks/nope",
        "/hooks/plain",
        "/hooks/acme",
        "/inbound-email/nope",
        "/inbound-email/plain",
        "/inbound-email/orders",
    ] {
        let (status, answer) = d.post(path, b"{}".to_vec(), &[]).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }

    let mut big = br#"{"id": "ord-big", "version": 1, "pad": ""#.to_vec();
    big.resize(BODY_LIMIT + 100, b'x');
    big.extend_from_slice(br#""}"#);
    let (status, _) = d.send_raw("orders", &big, "big_1").await;
    assert_eq!(status, 413);
    let (status, _) = d.email(vec![b'x'; BODY_LIMIT + 1], Some(MAIL_TOKEN)).await;
    assert_eq!(status, 413);
    assert_eq!(
        inbox(&d.store).await.len(),
        2,
        "an oversized body was stored"
    );
    assert_eq!(d.store.entity("orders", "ord-big").await.unwrap(), None);
    d.stop().await;
}

/// The outcome each delivery of `versions` must get, in order: a repeated
/// version is a redelivery (same id), an older one is stale.
fn expected_outcomes(versions: &[i64]) -> Vec<&'static str> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stored: Option<i64> = None;
    versions
        .iter()
        .map(|v| {
            if !seen.insert(*v) {
                "duplicate"
            } else if stored.is_none_or(|s| *v > s) {
                stored = Some(*v);
                "applied"
            } else {
                "stale"
            }
        })
        .collect()
}

async fn deliveries_converge_on_the_newest_version(db: &TestDb) {
    let d = Daemon::start(db).await;
    let orders: &[&[i64]] = &[
        &[1, 2, 3, 4],
        &[4, 3, 2, 1],
        &[2, 4, 1, 3],
        &[3, 3, 1, 4, 4, 2],
        &[1, 4, 4, 4, 2, 1, 3],
        &[5],
    ];
    for (case, versions) in orders.iter().enumerate() {
        let key = format!("k{case}");
        let mut outcomes = Vec::new();
        for v in *versions {
            let (status, receipt) = d
                .send("orders", &orders_doc(&key, *v), &format!("{key}-v{v}"))
                .await;
            assert_eq!(status, 200, "{receipt}");
            outcomes.push(receipt["outcome"].as_str().unwrap().to_string());
        }
        assert_eq!(outcomes, expected_outcomes(versions), "{versions:?}");
        let newest = *versions.iter().max().unwrap();
        let e = d.store.entity("orders", &key).await.unwrap().unwrap();
        assert_eq!(e.version, Some(newest), "{versions:?}");
        assert_eq!(e.doc.unwrap()["status"], format!("s{newest}"));
    }
    // A deletion at v3 wins over an older update that arrives after it.
    for (v, deleted) in [(1, false), (3, true), (2, false)] {
        let doc = json!({"id": "gone", "version": v, "deleted": deleted});
        let (status, _) = d.send("orders", &doc, &format!("gone-{v}")).await;
        assert_eq!(status, 200);
    }
    let e = d.store.entity("orders", "gone").await.unwrap().unwrap();
    assert!(e.deleted);
    assert_eq!(e.version, Some(3));
    d.stop().await;
}

crate::limited_test! {
/// Random orders with redeliveries, sent concurrently, converge on the newest version.
async fn concurrent_deliveries_in_any_order_converge_sqlite() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};

    let db = TestDb::sqlite();
    let d = Daemon::start(&db).await;
    let handle = tokio::runtime::Handle::current();
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(PropConfig {
        cases: 12,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let strategy = prop::collection::vec(1i64..=6, 1..12);
    let result = runner.run(&strategy, |versions| {
        let key = format!("p{}", case.fetch_add(1, AtomicOrdering::Relaxed));
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let d = &d;
                let sends = versions.iter().map(|v| {
                    let (doc, id) = (orders_doc(&key, *v), format!("{key}-v{v}"));
                    async move { d.send("orders", &doc, &id).await }
                });
                let answers = futures::future::join_all(sends).await;
                let mut duplicates = 0;
                for (status, receipt) in &answers {
                    prop_assert_eq!(*status, 200, "{}", receipt);
                    duplicates += usize::from(receipt["outcome"] == "duplicate");
                }
                let distinct: std::collections::BTreeSet<_> = versions.iter().collect();
                prop_assert_eq!(duplicates, versions.len() - distinct.len());
                let newest = *versions.iter().max().unwrap();
                let e = d
                    .store
                    .entity("orders", &key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .ok_or_else(|| TestCaseError::fail("entity missing"))?;
                prop_assert_eq!(e.version, Some(newest));
                prop_assert_eq!(&e.doc.unwrap()["status"], &json!(format!("s{newest}")));
                Ok(())
            })
        })
    });
    d.stop().await;
    if let Err(e) = result {
        panic!("{e}");
    }
}
}

// ---------------------------------------------------------------------------
// Email

/// Delivers `raw` the way an MTA does: written in `tmp/`, renamed into `new/`.
fn deliver(maildir: &Path, name: &str, raw: &[u8]) {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let tmp = maildir.join("tmp").join(name);
    std::fs::write(&tmp, raw).unwrap();
    std::fs::rename(&tmp, maildir.join("new").join(name)).unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn maildir_messages_are_committed_then_moved(db: &TestDb) {
    let d = Daemon::start(db).await;
    for (i, name) in FIXTURES.iter().enumerate() {
        deliver(
            &d.maildir,
            &format!("17000000{i:02}.M{i}P1.test"),
            &fixture(name),
        );
    }
    let cur = eventually("every message moved to cur/", || async {
        let cur = names_in(&d.maildir.join("cur"));
        (names_in(&d.maildir.join("new")).is_empty() && cur.len() == FIXTURES.len()).then_some(cur)
    })
    .await;
    assert!(cur.iter().all(|n| n.ends_with(":2,S")), "{cur:?}");
    assert_fixture_entities(&d.store).await;

    let rows = inbox(&d.store).await;
    assert_eq!(rows.len(), FIXTURES.len());
    for (row, name) in rows.iter().zip(FIXTURES) {
        assert_eq!(row.channel, Channel::Email);
        assert_eq!(row.body, fixture(name), "{name}: raw message kept");
        assert!(row.headers.contains("maildir_file"), "{}", row.headers);
    }
    let unmatched: Vec<&InboxRow> = rows
        .iter()
        .filter(|r| r.outcome == InboxOutcome::Unmatched)
        .collect();
    assert_eq!(unmatched.len(), 1);
    assert_eq!(
        unmatched[0].dedup_key.as_deref(),
        Some("6006.lookalike@acme.example.net")
    );
    let reason = unmatched[0].error.as_deref().unwrap();
    assert!(
        reason.contains("sender \"alerts@acme.example.net\" not allowed"),
        "{reason}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.outcome == InboxOutcome::Applied)
            .count(),
        5
    );
    assert_eq!(d.deltas("acme", "email", "applied").await, 5.0);
    assert_eq!(d.deltas("acme", "email", "unmatched").await, 1.0);

    // The same message delivered again (same Message-ID) is a duplicate.
    deliver(&d.maildir, "1800000000.again.test", &fixture(FIXTURES[0]));
    eventually("the redelivery moved", || async {
        (names_in(&d.maildir.join("cur")).len() == FIXTURES.len() + 1).then_some(())
    })
    .await;
    let rows = inbox(&d.store).await;
    assert_eq!(rows.last().unwrap().outcome, InboxOutcome::Duplicate);
    assert_eq!(d.deltas("acme", "email", "duplicate").await, 1.0);
    d.stop().await;
}

async fn inbound_email_endpoint(db: &TestDb) {
    let d = Daemon::start(db).await;
    for (token, why) in [(None, "no token"), (Some("wrong"), "wrong token")] {
        let (status, answer) = d.email(fixture(FIXTURES[0]), token).await;
        assert_eq!(status, 401, "{why}: {answer}");
    }
    assert!(inbox(&d.store).await.is_empty());

    for name in FIXTURES {
        let (status, receipt) = d.email(fixture(name), Some(MAIL_TOKEN)).await;
        assert_eq!(status, 200, "{name}: {receipt}");
        let expected = if *name == "unmatched.eml" {
            "unmatched"
        } else {
            "applied"
        };
        assert_eq!(receipt["outcome"], expected, "{name}: {receipt}");
        if expected == "unmatched" {
            assert!(receipt["error"].as_str().unwrap().contains("not allowed"));
        }
    }
    assert_fixture_entities(&d.store).await;
    let (status, receipt) = d.email(fixture(FIXTURES[1]), Some(MAIL_TOKEN)).await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("duplicate")));
    let (status, receipt) = d.email(Vec::new(), Some(MAIL_TOKEN)).await;
    assert_eq!((status, &receipt["outcome"]), (400, &json!("rejected")));
    let rows = inbox(&d.store).await;
    assert_eq!(rows.len(), FIXTURES.len() + 2);
    assert!(rows.iter().all(|r| !r.headers.contains(MAIL_TOKEN)));
    assert_eq!(d.deltas("acme", "email", "applied").await, 5.0);
    assert_eq!(d.deltas("acme", "email", "unmatched").await, 1.0);
    assert_eq!(d.deltas("acme", "email", "rejected").await, 1.0);
    d.stop().await;
}

// ---------------------------------------------------------------------------
// Pending rows and replay

async fn sweeper_applies_pending_rows(db: &TestDb) {
    let d = Daemon::start(db).await;
    let doc = orders_doc("late", 2);
    let entry = |producer: &str, channel, body: Vec<u8>| InboxEntry {
        producer: producer.into(),
        channel,
        received_at: now_ms(),
        dedup_key: None,
        headers: "{}".into(),
        body,
    };
    // Rows committed but not applied, as after a crash or a failed apply.
    let settled = d
        .store
        .insert_deltas(&[
            entry("orders", Channel::Webhook, doc.to_string().into_bytes()),
            entry("acme", Channel::Email, fixture("latin1.eml")),
            entry("gone", Channel::Webhook, b"{}".to_vec()),
        ])
        .await
        .unwrap();
    assert!(settled.iter().all(|s| s.outcome == InboxOutcome::Pending));
    let rows = eventually("the sweeper settled every row", || async {
        let rows = inbox(&d.store).await;
        rows.iter()
            .all(|r| r.outcome != InboxOutcome::Pending)
            .then_some(rows)
    })
    .await;
    let outcomes: Vec<InboxOutcome> = rows.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            InboxOutcome::Applied,
            InboxOutcome::Applied,
            InboxOutcome::Rejected
        ]
    );
    assert_eq!(
        rows[2].error.as_deref(),
        Some("producer \"gone\" is not configured")
    );
    let e = d.store.entity("orders", "late").await.unwrap().unwrap();
    assert_eq!((e.doc, e.version), (Some(doc), Some(2)));
    let e = d.store.entity("acme", "ORD-4004").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(json!({"status": "cancelled"})));
    assert_eq!(d.deltas("orders", "webhook", "applied").await, 1.0);
    assert_eq!(d.deltas("acme", "email", "applied").await, 1.0);
    d.stop().await;
}

/// Makes every write of entity `boom` fail inside the database.
async fn refuse_key_boom(store: &Store, refuse: bool) {
    let statements: &[&str] = match (store.backend(), refuse) {
        (driftd::store::Backend::Sqlite, true) => &[
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON entities WHEN NEW.key = 'boom'
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        ],
        (driftd::store::Backend::Postgres, true) => &[
            "CREATE FUNCTION refuse_boom() RETURNS trigger AS $$ BEGIN
               IF NEW.key = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF;
               RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON entities
             FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
        ],
        (driftd::store::Backend::Sqlite, false) => &["DROP TRIGGER refuse_boom"],
        (driftd::store::Backend::Postgres, false) => &["DROP TRIGGER refuse_boom ON entities"],
    };
    for sql in statements {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
}

async fn failed_apply_leaves_the_delta_pending_for_the_sweeper(db: &TestDb) {
    let d = Daemon::start(db).await;
    refuse_key_boom(&d.store, true).await;
    let boom = orders_doc("boom", 1);
    let (status, receipt) = d.send("orders", &boom, "boom-1").await;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(receipt["outcome"], "pending");
    // Committed, so a redelivery is a duplicate, not a second delta.
    let (status, receipt) = d.send("orders", &boom, "boom-1").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("duplicate")));
    // Other deltas are not held up.
    let (status, receipt) = d.send("orders", &orders_doc("fine", 1), "fine-1").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));

    // The sweeper retries, then gives up with the reason; nothing is lost.
    let row = eventually("the sweeper gave up on the refused delta", || async {
        let rows = inbox(&d.store).await;
        rows.into_iter()
            .find(|r| r.dedup_key.as_deref() == Some("boom-1") && r.duplicate_of.is_none())
            .filter(|r| r.outcome == InboxOutcome::Rejected)
    })
    .await;
    let reason = row.error.as_deref().unwrap();
    assert!(
        reason.starts_with("could not be applied in 5 attempts: "),
        "{reason}"
    );
    assert_eq!(row.body, boom.to_string().into_bytes());
    assert_eq!(d.store.entity("orders", "boom").await.unwrap(), None);

    // Once the cause is gone, replay applies it.
    refuse_key_boom(&d.store, false).await;
    let filter = InboxFilter {
        outcome: Some(InboxOutcome::Rejected),
        ..InboxFilter::default()
    };
    let report = driftd::ingest::pipeline::replay(&d.store, &d.config, &filter)
        .await
        .unwrap();
    assert_eq!((report.rows, report.changed), (1, 1), "{report:?}");
    let e = d.store.entity("orders", "boom").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(boom));
    let row = d
        .store
        .inbox_page(&InboxFilter::default(), row.id - 1, 1)
        .await
        .unwrap();
    assert_eq!(row[0].outcome, InboxOutcome::Applied);
    d.stop().await;
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(driftd_bin())
        .args(args)
        .env_remove("DRIFTD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run driftd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count_of(stdout: &str, outcome: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(outcome)).then(|| parts.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no count for {outcome} in {stdout}"))
}

async fn entities_of(store: &Store) -> Vec<Entity> {
    let mut all = Vec::new();
    for p in ["orders", "acme"] {
        all.extend(store.entities(p).await.unwrap());
    }
    all
}

async fn replay_is_idempotent(db: &TestDb) {
    let d = Daemon::start(db).await;
    for (v, id) in [(1, "a1"), (3, "a3"), (2, "a2"), (3, "a3")] {
        let (status, _) = d.send("orders", &orders_doc("r", v), id).await;
        assert_eq!(status, 200);
    }
    let (status, _) = d.send_raw("orders", b"not json", "bad").await;
    assert_eq!(status, 400);
    for name in ["html-only.eml", "unmatched.eml"] {
        let (status, _) = d.email(fixture(name), Some(MAIL_TOKEN)).await;
        assert_eq!(status, 200);
    }
    d.stop().await;

    let store = db.store().await;
    // A row committed but never applied (the daemon died before applying it).
    let late = orders_doc("r", 4);
    store
        .insert_deltas(&[InboxEntry {
            producer: "orders".into(),
            channel: Channel::Webhook,
            received_at: now_ms(),
            dedup_key: Some("a4".into()),
            headers: "{}".into(),
            body: late.to_string().into_bytes(),
        }])
        .await
        .unwrap();
    let before = entities_of(&store).await;
    let outcomes_before: Vec<InboxOutcome> =
        inbox(&store).await.iter().map(|r| r.outcome).collect();
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("driftd.toml");
    std::fs::write(
        &cfg,
        config_text(&db.url, "127.0.0.1:0", &dir.path().join("Maildir")),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    let (code, stdout, stderr) = run_cli(&["replay", "--config", cfg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed 8 deltas; 1 changed an entity"),
        "{stdout}"
    );
    // v1, v3, v2 and the versionless email are stale: each was already applied.
    for (outcome, n) in [
        ("applied", 1),
        ("stale", 4),
        ("duplicate", 1),
        ("rejected", 1),
        ("unmatched", 1),
    ] {
        assert_eq!(count_of(&stdout, outcome), n, "{outcome}: {stdout}");
    }
    let store = db.store().await;
    let after = entities_of(&store).await;
    let r = after.iter().find(|e| e.key == "r").unwrap();
    assert_eq!((r.doc.as_ref(), r.version), (Some(&late), Some(4)));
    assert_eq!(r.source, "replay");
    let unchanged: Vec<&Entity> = after.iter().filter(|e| e.key != "r").collect();
    let was: Vec<&Entity> = before.iter().filter(|e| e.key != "r").collect();
    assert_eq!(unchanged, was, "replay changed an applied delta's entity");
    let outcomes_after: Vec<InboxOutcome> = inbox(&store).await.iter().map(|r| r.outcome).collect();
    let mut expected = outcomes_before.clone();
    *expected.last_mut().unwrap() = InboxOutcome::Applied;
    assert_eq!(outcomes_after, expected, "only the pending row is recorded");
    store.close().await;

    let (code, stdout, stderr) = run_cli(&["replay", "--config", cfg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed 8 deltas; 0 changed an entity"),
        "{stdout}"
    );
    assert_eq!(count_of(&stdout, "applied"), 0, "{stdout}");
    let store = db.store().await;
    assert_eq!(entities_of(&store).await, after);
    store.close().await;

    let (code, stdout, _) = run_cli(&[
        "replay",
        "--config",
        cfg,
        "--producer",
        "orders",
        "--outcome",
        "rejected",
        "--since",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 1 deltas"), "{stdout}");
    let (code, stdout, _) =
        run_cli(&["replay", "--config", cfg, "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 0 deltas"), "{stdout}");
    for (args, complaint) in [
        (&["--outcome", "lost"][..], "unknown outcome \"lost\""),
        (
            &["--since", "yesterday"][..],
            "invalid --since \"yesterday\"",
        ),
        (&["--producer", "nope"][..], "unknown producer \"nope\""),
    ] {
        let mut all = vec!["replay", "--config", cfg];
        all.extend_from_slice(args);
        let (code, _, stderr) = run_cli(&all);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(stderr.contains(complaint), "{stderr}");
    }
}

// ---------------------------------------------------------------------------
// Crash safety

/// A `driftd run` child process, killed when dropped.
struct Child {
    process: tokio::process::Child,
    base: String,
    log: PathBuf,
}

impl Child {
    async fn spawn(db_url: &str, dir: &Path, run: &str) -> Child {
        let port = crate::support::free_port();
        let cfg = dir.join(format!("{run}.toml"));
        std::fs::write(
            &cfg,
            config_text(db_url, &format!("127.0.0.1:{port}"), &dir.join("Maildir")),
        )
        .unwrap();
        let log = dir.join(format!("{run}.log"));
        let process = tokio::process::Command::new(driftd_bin())
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env_remove("DRIFTD_CONFIG")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn driftd run");
        let mut child = Child {
            process,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let url = format!("{}/readyz", child.base);
        eventually("the child daemon is ready", || {
            let exited = child.process.try_wait().unwrap();
            assert!(exited.is_none(), "driftd exited: {}", child.log_text());
            let req = http.get(&url).timeout(Duration::from_secs(2)).send();
            async move { req.await.ok().filter(|r| r.status() == 200).map(|_| ()) }
        })
        .await;
        child
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

async fn acknowledged_deltas_survive_a_crash(db: &TestDb) {
    const TOTAL: usize = 300;
    const CLIENTS: usize = 4;
    const KILL_AFTER: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let w = parse_config(&config_text(&db.url, "127.0.0.1:1", dir.path()))
        .producer("orders")
        .and_then(|p| p.webhook.clone())
        .unwrap();
    let mut child = Child::spawn(&db.url, dir.path(), "run1").await;

    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<usize>>> = Arc::default();
    let (kill_tx, kill_rx) = tokio::sync::oneshot::channel::<()>();
    let kill_tx = Arc::new(Mutex::new(Some(kill_tx)));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let send = |i: usize, base: String, http: reqwest::Client, w: WebhookConfig| async move {
        let body = orders_doc(&format!("c{i}"), i as i64 + 1).to_string();
        let mut req = http.post(format!("{base}/hooks/orders")).body(body.clone());
        for (k, v) in signature::sign(
            &w,
            body.as_bytes(),
            chrono::Utc::now().timestamp(),
            &format!("crash-{i}"),
        ) {
            req = req.header(k, v);
        }
        matches!(req.send().await, Ok(r) if r.status().is_success())
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (next, acked, kill_tx) = (next.clone(), acked.clone(), kill_tx.clone());
            let (base, http, w) = (child.base.clone(), http.clone(), w.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, AtomicOrdering::Relaxed);
                    if i >= TOTAL {
                        return;
                    }
                    if send(i, base.clone(), http.clone(), w.clone()).await {
                        let n = {
                            let mut a = acked.lock().unwrap();
                            a.push(i);
                            a.len()
                        };
                        if n == KILL_AFTER {
                            if let Some(tx) = kill_tx.lock().unwrap().take() {
                                let _ = tx.send(());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    tokio::time::timeout(DEADLINE, kill_rx)
        .await
        .expect("enough deltas acknowledged before the deadline")
        .unwrap();
    child.process.start_kill().expect("SIGKILL the daemon");
    child.process.wait().await.unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked: Vec<usize> = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER && acked.len() < TOTAL,
        "the kill was not mid-stream: {} of {TOTAL} acknowledged",
        acked.len()
    );

    let restarted = Child::spawn(&db.url, dir.path(), "run2").await;
    let store = db.store().await;
    eventually("every acknowledged delta applied after the restart", || {
        let store = &store;
        let acked = &acked;
        async move {
            for i in acked {
                let e = store.entity("orders", &format!("c{i}")).await.ok()??;
                if e.version != Some(*i as i64 + 1) {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    let rows = inbox(&store).await;
    for i in &acked {
        let key = format!("crash-{i}");
        let row = rows
            .iter()
            .find(|r| r.dedup_key.as_deref() == Some(key.as_str()))
            .unwrap_or_else(|| panic!("acknowledged delta {key} not in the inbox"));
        assert_eq!(row.outcome, InboxOutcome::Applied, "{key}");
    }

    // The vendor retries what was not acknowledged: everything converges,
    // and the acknowledged ones come back as duplicates.
    for i in 0..TOTAL {
        assert!(
            send(i, restarted.base.clone(), http.clone(), w.clone()).await,
            "retry {i} refused: {}",
            restarted.log_text()
        );
    }
    assert_eq!(store.count_entities("orders").await.unwrap(), TOTAL as i64);
    let rows = inbox(&store).await;
    let applied = rows
        .iter()
        .filter(|r| r.outcome == InboxOutcome::Applied)
        .count();
    assert_eq!(applied, TOTAL, "each delivery applied exactly once");
    let (_, broken) = store.verify_chain().await.unwrap();
    assert_eq!(broken, None);
    store.close().await;
    drop(restarted);
}

// ---------------------------------------------------------------------------
// Hostile input

async fn hostile_input_never_crashes_the_daemon(db: &TestDb) {
    use rand::{Rng, SeedableRng};
    let d = Daemon::start(db).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xd21f7d);
    let bytes = |rng: &mut rand::rngs::StdRng, max: usize| {
        let mut b = vec![0u8; rng.random_range(0..=max)];
        rng.fill(&mut b[..]);
        b
    };
    let header_names = [
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-signature",
        "content-type",
        "authorization",
        "x-random",
    ];
    let valid: Vec<u8> = orders_doc("h", 1).to_string().into_bytes();

    // Unsigned random bodies and headers, to every kind of path.
    for i in 0..120 {
        let path = match i % 5 {
            0 => "/hooks/orders".to_string(),
            1 => "/hooks/batch".to_string(),
            2 => "/inbound-email/acme".to_string(),
            3 => "/hooks/plain".to_string(),
            _ => format!("/hooks/{}", rng.random_range(0..u32::MAX)),
        };
        let mut headers = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            let name = header_names[rng.random_range(0..header_names.len())];
            let value: Vec<u8> = bytes(&mut rng, 80)
                .into_iter()
                .filter(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
                .collect();
            if let Ok(v) = reqwest::header::HeaderValue::from_bytes(&value) {
                headers.push((name, v));
            }
        }
        let mut req = d
            .http
            .post(format!("{}{path}", d.base))
            .body(bytes(&mut rng, 4096));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let status = req.send().await.expect("the daemon answers").status();
        assert!(
            [200, 400, 401, 404, 413].contains(&status.as_u16()),
            "{path}: {status}"
        );
    }

    // Correctly signed garbage: random bytes, mangled JSON, and bodies that
    // are valid JSON but poison for a database (NUL, huge or deep values).
    let mut bodies: Vec<Vec<u8>> = (0..60).map(|_| bytes(&mut rng, 2048)).collect();
    for _ in 0..60 {
        let mut b = valid.clone();
        for _ in 0..rng.random_range(1..6) {
            let at = rng.random_range(0..b.len());
            b[at] = rng.random();
        }
        b.truncate(rng.random_range(0..=b.len()));
        bodies.push(b);
    }
    let crafted = [
        r#"{"id": "a\u0000b", "version": 1}"#.to_string(),
        r#"{"id": "nul-doc", "version": 1, "note": "x\u0000y"}"#.to_string(),
        format!(r#"{{"id": "{}", "version": 1}}"#, "k".repeat(600)),
        format!("{}{}", "[".repeat(5000), "]".repeat(5000)),
        r#"{"id": 1e400, "version": 1}"#.to_string(),
        r#"{"id": 18446744073709551615, "version": 1}"#.to_string(),
        r#"{"id": "big-version", "version": 1e300}"#.to_string(),
        r#"{"id": "nul-version", "version": "\u0000"}"#.to_string(),
        r#"{"id": "neg", "version": -9223372036854775808}"#.to_string(),
        r#"{"id": ["array"], "version": 1}"#.to_string(),
        "null".to_string(),
        "\"just a string\"".to_string(),
    ];
    bodies.extend(crafted.iter().map(|c| c.clone().into_bytes()));
    for (i, body) in bodies.iter().enumerate() {
        let (status, receipt) = d.send_raw("orders", body, &format!("hostile-{i}")).await;
        assert!([200, 400].contains(&status), "{i}: {status} {receipt}");
    }
    let batch_crafted = [
        r#"{"event_id": "\u0000\u0001", "data": [{"id": "b1", "v": 1}]}"#,
        r#"{"event_id": {"nested": 1}, "data": [{"id": "b2", "v": 1}]}"#,
        r#"{"data": [{"id": "b3", "v": 1, "x": {"y": null}}, 5, null]}"#,
        r#"{"data": "not an array"}"#,
    ];
    for body in batch_crafted {
        let (status, receipt) = d.send_raw("batch", body.as_bytes(), "").await;
        assert!([200, 400].contains(&status), "{body}: {status} {receipt}");
    }

    // Random and mangled emails, over HTTP and through the maildir.
    for i in 0..80 {
        let raw = if i % 2 == 0 {
            bytes(&mut rng, 3000)
        } else {
            let mut raw = fixture(FIXTURES[i % FIXTURES.len()]);
            for _ in 0..rng.random_range(1..20) {
                let at = rng.random_range(0..raw.len());
                raw[at] = rng.random();
            }
            raw
        };
        let (status, receipt) = d.email(raw, Some(MAIL_TOKEN)).await;
        assert!([200, 400].contains(&status), "{i}: {status} {receipt}");
    }
    for i in 0..20 {
        deliver(
            &d.maildir,
            &format!("hostile-{i:02}"),
            &bytes(&mut rng, 3000),
        );
    }
    deliver(
        &d.maildir,
        "hostile-nul",
        b"Subject: Order A\0B\r\n\r\nStatus: x\0y\r\n",
    );
    eventually("every hostile message committed and moved", || async {
        (names_in(&d.maildir.join("new")).is_empty()
            && names_in(&d.maildir.join("cur")).len() == 21)
            .then_some(())
    })
    .await;

    // Still serving, and nothing left unsettled.
    let health = d
        .http
        .get(format!("{}/healthz", d.base))
        .send()
        .await
        .expect("the daemon answers")
        .status();
    assert_eq!(health, 200);
    assert!(!d.task.is_finished(), "the daemon stopped");
    eventually("no pending inbox rows", || async {
        d.store
            .pending_deltas(1)
            .await
            .ok()
            .filter(|p| p.is_empty())
    })
    .await;
    let nul = d.store.entity("orders", "nul-doc").await.unwrap().unwrap();
    assert_eq!(nul.doc.unwrap()["note"], "x\u{0}y");
    // Every signed body and every email was counted under exactly one outcome.
    let mut counted = [0.0; 2];
    for outcome in ["applied", "stale", "duplicate", "rejected", "unmatched"] {
        counted[0] += d.deltas("orders", "webhook", outcome).await;
        counted[1] += d.deltas("acme", "email", outcome).await;
    }
    assert_eq!(counted, [bodies.len() as f64, 80.0 + 21.0]);
    assert!(d.deltas("orders", "webhook", "rejected").await >= crafted.len() as f64 / 2.0);
    d.stop().await;
}

/// Every signature scheme through HTTP: valid → applied, wrong secret, altered
/// body and stale timestamp → 401, a redelivery → duplicate; the published
/// example vectors of GitHub and Standard Webhooks are accepted as sent.
async fn every_scheme_over_http(db: &TestDb) {
    let d = Daemon::start(db).await;
    let now = chrono::Utc::now().timestamp();
    let bodies = [
        (
            "orders",
            json!({"id": "s-1", "version": 1, "status": "open"}),
            true,
        ),
        (
            "batch",
            json!({"event_id": "b-1", "type": "upsert", "data": [{"id": "s-1", "v": 1}]}),
            false,
        ),
        ("gh", json!({"id": "s-1", "version": 1}), false),
        (
            "stripe",
            json!({"event_id": "evt_1", "created": 1, "data": {"id": "s-1"}}),
            true,
        ),
    ];
    for (producer, doc, timestamped) in &bodies {
        let w = d.webhook(producer);
        let body = doc.to_string().into_bytes();
        let mut altered = body.clone();
        altered.push(b' ');
        let wrong = WebhookConfig {
            secret: Some(Secret::new("not-the-secret")),
            ..w.clone()
        };
        let mut headers = signature::sign(&w, &body, now, "id-1");
        // Delivery ids for the schemes whose ids travel in a header of their own.
        if *producer == "gh" {
            headers.push(("X-GitHub-Delivery".into(), "gh-delivery-1".into()));
        }
        let path = format!("/hooks/{producer}");
        let (status, _) = d
            .post(
                &path,
                body.clone(),
                &signature::sign(&wrong, &body, now, "id-1"),
            )
            .await;
        assert_eq!(status, 401, "{producer}: wrong secret");
        let (status, _) = d.post(&path, altered, &headers).await;
        assert_eq!(status, 401, "{producer}: altered body");
        if *timestamped {
            let stale = signature::sign(&w, &body, now - 3_600, "id-1");
            let (status, _) = d.post(&path, body.clone(), &stale).await;
            assert_eq!(status, 401, "{producer}: stale timestamp");
        }
        let (status, receipt) = d.post(&path, body.clone(), &headers).await;
        assert_eq!(
            (status, &receipt["outcome"]),
            (200, &json!("applied")),
            "{producer}: {receipt}"
        );
        let (status, receipt) = d.post(&path, body.clone(), &headers).await;
        assert_eq!(
            (status, &receipt["outcome"]),
            (200, &json!("duplicate")),
            "{producer}: replayed id"
        );
        assert!(
            d.store.entity(producer, "s-1").await.unwrap().is_some(),
            "{producer}"
        );
    }
    // Rotation: GitHub's previous secret is still accepted.
    let gh = d.webhook("gh");
    let old = WebhookConfig {
        secret: Some(Secret::new("gh-old-secret")),
        ..gh.clone()
    };
    let body = json!({"id": "s-2", "version": 1}).to_string().into_bytes();
    let (status, _) = d
        .post(
            "/hooks/gh",
            body.clone(),
            &signature::sign(&old, &body, now, "x"),
        )
        .await;
    assert_eq!(status, 200, "previous secret during rotation");

    // GitHub's published example: its signature verifies; the body is not JSON, so the
    // delta is kept as rejected (400) rather than refused (401).
    let headers = vec![(
        "X-Hub-Signature-256".to_string(),
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_string(),
    )];
    let (status, receipt) = d
        .post("/hooks/gh", b"Hello, World!".to_vec(), &headers)
        .await;
    assert_eq!(
        (status, &receipt["outcome"]),
        (400, &json!("rejected")),
        "{receipt}"
    );

    // Standard Webhooks' published example, as sent (old timestamp, wide tolerance).
    let headers = vec![
        (
            "webhook-id".to_string(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek".to_string(),
        ),
        ("webhook-timestamp".to_string(), "1614265330".to_string()),
        (
            "webhook-signature".to_string(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".to_string(),
        ),
    ];
    let (status, receipt) = d
        .post(
            "/hooks/swvec",
            br#"{"test": 2432232314}"#.to_vec(),
            &headers,
        )
        .await;
    assert_eq!(
        (status, &receipt["outcome"]),
        (200, &json!("applied")),
        "{receipt}"
    );
    assert!(d
        .store
        .entity("swvec", "2432232314")
        .await
        .unwrap()
        .is_some());
    d.stop().await;
}

crate::on_both_backends!(
    every_scheme_over_http,
    signed_webhook_is_committed_and_applied,
    bad_signatures_are_refused_and_counted,
    redeliveries_are_duplicates,
    malformed_unknown_and_oversized_requests,
    deliveries_converge_on_the_newest_version,
    maildir_messages_are_committed_then_moved,
    inbound_email_endpoint,
    sweeper_applies_pending_rows,
    failed_apply_leaves_the_delta_pending_for_the_sweeper,
    replay_is_idempotent,
    acknowledged_deltas_survive_a_crash,
    hostile_input_never_crashes_the_daemon,
);
