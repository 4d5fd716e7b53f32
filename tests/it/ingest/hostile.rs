//! Hostile input: random and crafted bodies, headers and emails never crash the daemon, and each is counted under one outcome.

use super::{deliver, fixture, maildir, names_in, orders_doc, start, FIXTURES, MAIL_TOKEN};
use crate::support::{eventually, TestDb};

async fn hostile_input_never_crashes_the_daemon(db: &TestDb) {
    use rand::{Rng, SeedableRng};
    let d = start(db).await;
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
        let (status, receipt) = d.email("acme", raw, Some(MAIL_TOKEN)).await;
        assert!([200, 400].contains(&status), "{i}: {status} {receipt}");
    }
    for i in 0..20 {
        deliver(
            &maildir(&d),
            &format!("hostile-{i:02}"),
            &bytes(&mut rng, 3000),
        );
    }
    deliver(
        &maildir(&d),
        "hostile-nul",
        b"Subject: Order A\0B\r\n\r\nStatus: x\0y\r\n",
    );
    eventually("every hostile message committed and moved", || async {
        (names_in(&maildir(&d).join("new")).is_empty()
            && names_in(&maildir(&d).join("cur")).len() == 21)
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
    assert!(d.is_running(), "the daemon stopped");
    eventually("no pending inbox rows", || async {
        d.store
            .pending_deltas(1)
            .await
            .ok()
            .filter(|p| p.is_empty())
    })
    .await;
    // SQLite keeps U+0000 as sent; PostgreSQL's jsonb cannot hold it and
    // stores U+FFFD instead. Either way the stored hash is the record's as
    // sent, so a keyframe serving "x\0y" finds no drift.
    let nul = d.store.entity("orders", "nul-doc").await.unwrap().unwrap();
    let kept = match d.store.backend() {
        driftd::store::Backend::Sqlite => "x\u{0}y",
        driftd::store::Backend::Postgres => "x\u{fffd}y",
    };
    assert_eq!(nul.doc.unwrap()["note"], kept);
    let sent = serde_json::json!({"id": "nul-doc", "version": 1, "note": "x\u{0}y"});
    assert_eq!(
        nul.hash,
        Some(driftd::canonical::RecordHasher::default().hash(&sent))
    );
    // Every signed body and every email was counted under exactly one outcome.
    let mut counted = [0.0; 2];
    for outcome in [
        "applied",
        "stale",
        "tie",
        "duplicate",
        "rejected",
        "unmatched",
    ] {
        counted[0] += d.deltas("orders", "webhook", outcome).await;
        counted[1] += d.deltas("acme", "email", outcome).await;
    }
    assert_eq!(counted, [bodies.len() as f64, 80.0 + 21.0]);
    assert!(d.deltas("orders", "webhook", "rejected").await >= crafted.len() as f64 / 2.0);
    d.stop().await;
}

crate::on_both_backends!(hostile_input_never_crashes_the_daemon,);
