//! Signed webhooks: committed then applied, refused signatures, redeliveries, malformed and oversized bodies, every signature scheme over HTTP.

use driftd::canonical::RecordHasher;
use driftd::config::{Secret, WebhookConfig};
use driftd::ingest::signature;
use driftd::store::{Channel, InboxOutcome, InboxRow};
use serde_json::{json, Value};

use super::{
    config_text, inbox, orders_doc, start, BODY_LIMIT, MAIL_TOKEN, OTHER_SW_SECRET, SW_SECRET,
};
use crate::support::{config, metric, Daemon, TestDb};

async fn signed_webhook_is_committed_and_applied(db: &TestDb) {
    let d = start(db).await;
    let doc = orders_doc("ord-1", 3);
    let (status, receipt) = d.send("orders", &doc, "msg_1").await;
    assert_eq!(status, 200, "{receipt}");
    assert_eq!(receipt["outcome"], "applied", "{receipt}");

    let e = d.store.entity("orders", "ord-1").await.unwrap().unwrap();
    assert_eq!(e.doc.as_ref(), Some(&doc));
    assert_eq!(e.version, Some(3));
    assert_eq!(e.source, driftd::entity::Source::Webhook);
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
    let d = start(db).await;
    let w = d.webhook_config("orders");
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
    let d = start(db).await;
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
    let d2 = start(db).await;
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
    let d = start(db).await;
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
    let (status, _) = d
        .email("acme", vec![b'x'; BODY_LIMIT + 1], Some(MAIL_TOKEN))
        .await;
    assert_eq!(status, 413);
    assert_eq!(
        inbox(&d.store).await.len(),
        2,
        "an oversized body was stored"
    );
    assert_eq!(d.store.entity("orders", "ord-big").await.unwrap(), None);
    d.stop().await;
}

/// Every signature scheme through HTTP: valid → applied, wrong secret, altered
/// body and stale timestamp → 401, a redelivery → duplicate; the published
/// example vectors of GitHub and Standard Webhooks are accepted as sent.
async fn every_scheme_over_http(db: &TestDb) {
    let d = start(db).await;
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
        let w = d.webhook_config(producer);
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
    let gh = d.webhook_config("gh");
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

crate::limited_test! {
/// What the server itself answers (README's endpoint table): 408 with an
/// empty body for a request whose body stalls past `request_timeout_secs`
/// (nothing committed), 405 for a method a path does not take, and a JSON
/// 401 with `WWW-Authenticate: Bearer` on the email endpoint without its token.
async fn the_server_answers_stalled_bodies_wrong_methods_and_missing_tokens() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&config_text(&db.url, "127.0.0.1:0", &dir.path().join("Maildir")));
    cfg.server.request_timeout_secs = 1;
    let d = Daemon::start_in(dir, cfg).await;

    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    s.write_all(b"POST /hooks/orders HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed without an answer: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 408"), "{answer}");
    assert!(answer.contains("content-length: 0\r\n"), "{answer}");
    assert!(inbox(&d.store).await.is_empty(), "a stalled body was committed");

    let resp = d.http.get(format!("{}/hooks/orders", d.base)).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    let resp = d
        .http
        .post(format!("{}/inbound-email/acme", d.base))
        .body("From: a@b.c\r\n\r\nx")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"error": "missing or wrong bearer token"}));
    d.stop().await;
}
}

crate::on_both_backends!(
    every_scheme_over_http,
    signed_webhook_is_committed_and_applied,
    bad_signatures_are_refused_and_counted,
    redeliveries_are_duplicates,
    malformed_unknown_and_oversized_requests,
);
