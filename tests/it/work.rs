//! Corrective work end to end: the `http` action's retries and idempotency keys, dead items, operator retry, and convergence over random loss.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use driftd::state::{RunState, WorkState};
use driftd::store::WorkRow;
use serde_json::Value;

use crate::keyframe::{keyframer, producer, seed, workers};
use crate::producer::Vendor;
use crate::support::TestDb;

const APP_SECRET: &str = "app-shared-secret";

#[derive(Clone, Default)]
struct App {
    calls: Arc<AtomicUsize>,
    keys: Arc<Mutex<Vec<String>>>,
    bodies: Arc<Mutex<Vec<Value>>>,
    /// Whether each call's `X-Driftd-Signature` was the HMAC-SHA256 of its body under `APP_SECRET`.
    signed: Arc<Mutex<Vec<bool>>>,
    /// Status codes to answer in order; 200 once exhausted.
    script: Arc<Mutex<Vec<u16>>>,
}

async fn start_app(script: Vec<u16>) -> (App, String) {
    let app = App {
        script: Arc::new(Mutex::new(script)),
        ..App::default()
    };
    let state = app.clone();
    let router = Router::new().route(
        "/driftd",
        post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let s = state.clone();
            async move {
                s.calls.fetch_add(1, AtomicOrdering::SeqCst);
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                s.keys.lock().unwrap().push(key);
                s.bodies
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                let expected = {
                    use hmac::Mac;
                    let mut mac =
                        hmac::Hmac::<sha2::Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
                    mac.update(&body);
                    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
                };
                let given = headers
                    .get("x-driftd-signature")
                    .and_then(|v| v.to_str().ok());
                s.signed
                    .lock()
                    .unwrap()
                    .push(given == Some(expected.as_str()));
                let mut script = s.script.lock().unwrap();
                let code = if script.is_empty() {
                    200
                } else {
                    script.remove(0)
                };
                (
                    StatusCode::from_u16(code).unwrap(),
                    format!("answer {code}"),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/driftd", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (app, url)
}

/// Runs workers until item `id` reaches a final state (bounded by a deadline).
async fn until_final(
    db_store: &driftd::store::Store,
    p: &driftd::config::ProducerConfig,
    id: i64,
) -> WorkRow {
    let w = workers(db_store);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        w.tick(p).await.unwrap();
        let item = db_store.work_item(id).await.unwrap().unwrap();
        if matches!(item.state, WorkState::Done | WorkState::Dead) {
            return item;
        }
        assert!(Instant::now() < deadline, "item never finished: {item:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn http_action_retries_with_one_idempotency_key(db: &TestDb) {
    let store = db.store().await;
    let (app, url) = start_app(vec![503, 503]).await;
    let (vendor, addr) = Vendor::start(50).await;
    let p = producer(
        &crate::producer::snapshot_toml("none", addr),
        &format!("[producer.work]\naction = \"http\"\nurl = \"{url}\"\nsecret = \"{APP_SECRET}\"\nbackoff_base_ms = 1\nbackoff_max_ms = 5\nmax_attempts = 5"),
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.records.lock().unwrap().get_mut("ord-00007").unwrap()["status"] =
        Value::String("cancelled".into());
    let s = keyframer(&store).run(&p, false).await.unwrap();
    assert_eq!((s.state, s.changed, s.work_emitted), (RunState::Ok, 1, 1));
    let item = store.list_work(None, 10).await.unwrap().remove(0);
    let done = until_final(&store, &p, item.id).await;
    assert_eq!(
        (done.state, done.attempts),
        (WorkState::Done, 3),
        "{done:?}"
    );
    assert_eq!(app.calls.load(AtomicOrdering::SeqCst), 3);
    let keys = app.keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        vec![done.dedup_key.clone(); 3],
        "same Idempotency-Key on every attempt"
    );
    let body = app.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["key"], "ord-00007");
    assert_eq!(body["kind"], "changed");
    assert_eq!(body["record"]["status"], "cancelled");
    assert_eq!(body["run_id"], s.run_id.unwrap());
    assert_eq!(
        *app.signed.lock().unwrap(),
        vec![true; 3],
        "every call carries our HMAC of its body"
    );
}

async fn http_client_errors_are_dead_at_once(db: &TestDb) {
    let store = db.store().await;
    let (app, url) = start_app(vec![400]).await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::producer::snapshot_toml("none", addr),
        &format!("[producer.work]\naction = \"http\"\nurl = \"{url}\"\nbackoff_base_ms = 1\nbackoff_max_ms = 5"),
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.records.lock().unwrap().remove("ord-00003");
    keyframer(&store).run(&p, false).await.unwrap();
    let item = store.list_work(None, 10).await.unwrap().remove(0);
    let dead = until_final(&store, &p, item.id).await;
    assert_eq!(
        (dead.state, dead.attempts),
        (WorkState::Dead, 1),
        "{dead:?}"
    );
    let err = dead.last_error.clone().unwrap_or_default();
    assert!(err.contains("400") && err.contains("answer 400"), "{err}");
    assert_eq!(app.calls.load(AtomicOrdering::SeqCst), 1);
    // An operator retry puts it back; the application now accepts it.
    let retried = store
        .set_work_state(dead.id, WorkState::Pending)
        .await
        .unwrap();
    assert_eq!((retried.state, retried.attempts), (WorkState::Pending, 0));
    let done = until_final(&store, &p, dead.id).await;
    assert_eq!(done.state, WorkState::Done);
    assert!(
        store
            .set_work_state(done.id, WorkState::Pending)
            .await
            .is_err(),
        "done is final"
    );
}

async fn expired_leases_are_retried(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(30).await;
    let p = producer(
        &crate::producer::snapshot_toml("none", addr),
        "[producer.work]\nlease_secs = 1",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.records.lock().unwrap().get_mut("ord-00001").unwrap()["status"] =
        Value::String("x".into());
    keyframer(&store).run(&p, false).await.unwrap();
    // A worker claims the item and dies without finishing it.
    let claimed = store
        .claim_work("orders", "crashed-worker", 10, 50)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store
            .claim_work("orders", "other", 10, 50)
            .await
            .unwrap()
            .is_empty(),
        "leased items are not claimed twice"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert_eq!(store.reclaim_expired_work().await.unwrap(), 1);
    let item = store.work_item(claimed[0].id).await.unwrap().unwrap();
    assert_eq!(item.state, WorkState::Pending);
    assert!(item
        .last_error
        .unwrap_or_default()
        .contains("crashed-worker"));
    // The crashed worker's late completion is refused: the lease is gone.
    assert!(!store
        .finish_work(item.id, "crashed-worker", WorkState::Done, 0, None)
        .await
        .unwrap());
    crate::keyframe::drain_work(&store, &p).await;
    let e = store.entity("orders", "ord-00001").await.unwrap().unwrap();
    assert_eq!(e.doc.unwrap()["status"], "x");
}

/// Random producer changes with random delta loss, duplication and reordering
/// always end, after one keyframe and its work, with zero drift.
async fn convergence_over_random_loss(db: &TestDb) {
    use driftd::canonical::RecordHasher;
    use driftd::store::{Change, EntityWrite, Ordering, Source};
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(200).await;
    let p = producer(
        &format!(
            "{}\nversion = \"/rev\"",
            crate::producer::snapshot_toml("cursor", addr)
        ),
        "bucket_bits = 6",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    let hasher = RecordHasher::default();
    let mut clock = 1u64; // the producer's versions only ever grow, per key and overall
    for case in 0..6u64 {
        let mut x = case.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // The producer changes; each change yields a delta (put or delete with its version).
        let mut deltas: Vec<EntityWrite> = Vec::new();
        for _ in 0..60 {
            let key = format!("ord-{:05}", rnd() % 260);
            let mut r = vendor.records.lock().unwrap();
            clock += 1;
            let rev = clock;
            if rnd() % 4 == 0 {
                if r.remove(&key).is_some() {
                    deltas.push(EntityWrite {
                        key,
                        change: Change::Delete,
                        version: Some(rev as i64),
                        source: Source::Webhook,
                        ordering: Ordering::IfNewer,
                    });
                }
            } else {
                let (_, mut doc) = crate::producer::record(key[4..].parse().unwrap(), rev);
                doc["status"] = Value::String(format!("s{}", rnd() % 7));
                r.insert(key.clone(), doc.clone());
                deltas.push(EntityWrite {
                    key,
                    change: Change::Replace(doc),
                    version: Some(rev as i64),
                    source: Source::Webhook,
                    ordering: Ordering::IfNewer,
                });
            }
        }
        // Lose, duplicate and reorder them.
        let mut delivered = Vec::new();
        for d in deltas {
            match rnd() % 10 {
                0..=2 => {}
                3 => {
                    delivered.push(d.clone());
                    delivered.push(d);
                }
                _ => delivered.push(d),
            }
        }
        for i in (1..delivered.len()).rev() {
            if rnd() % 3 == 0 {
                let j = (rnd() % (i as u64 + 1)) as usize;
                delivered.swap(i, j);
            }
        }
        for d in &delivered {
            store
                .write_entities("orders", p.bucket_bits, &hasher, std::slice::from_ref(d))
                .await
                .unwrap();
        }
        // One keyframe and its work.
        let s = keyframer(&store).run(&p, false).await.unwrap();
        assert_eq!(s.state, RunState::Ok, "case {case}: {s:?}");
        crate::keyframe::drain_work(&store, &p).await;
        let s = keyframer(&store).run(&p, false).await.unwrap();
        assert_eq!(
            s.missing + s.extra + s.changed + s.skipped_races,
            0,
            "case {case}: {s:?}"
        );
        let local: std::collections::BTreeMap<String, Value> = store
            .entities("orders")
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.key, e.doc.unwrap()))
            .collect();
        assert_eq!(local, vendor.snapshot(), "case {case}");
    }
}

/// A batch of apply items commits its corrections and completions together:
/// if the worker lost a lease meanwhile, nothing of the batch is written.
async fn apply_batches_are_all_or_nothing(db: &TestDb) {
    use driftd::canonical::RecordHasher;
    use driftd::store::{Change, EntityWrite, Ordering, Source};
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(30).await;
    let p = producer(&crate::producer::snapshot_toml("none", addr), "");
    seed(&store, &p, &vendor.snapshot()).await;
    for k in ["ord-00001", "ord-00002"] {
        vendor.records.lock().unwrap().get_mut(k).unwrap()["status"] = Value::String("new".into());
    }
    keyframer(&store).run(&p, false).await.unwrap();
    let claimed = store.claim_work("orders", "w1", 10, 30).await.unwrap();
    assert_eq!(claimed.len(), 2);
    let batch: Vec<(i64, EntityWrite)> = claimed
        .iter()
        .map(|w| {
            let spec: driftd::work::WorkSpec = serde_json::from_str(&w.spec).unwrap();
            let seen = spec.local_hash.as_deref().map(|h| {
                driftd::canonical::RecordHash::from_slice(&hex::decode(h).unwrap()).unwrap()
            });
            (
                w.id,
                EntityWrite {
                    key: spec.key.clone(),
                    change: Change::Replace(spec.record.unwrap()),
                    version: None,
                    source: Source::Keyframe,
                    ordering: Ordering::Correct { seen },
                },
            )
        })
        .collect();
    // One lease expires and another worker takes that item.
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(store.reclaim_expired_work().await.unwrap(), 2);
    let other = store.claim_work("orders", "w2", 1, 60_000).await.unwrap();
    assert_eq!(other.len(), 1);
    let hasher = RecordHasher::default();
    let err = store
        .apply_work("orders", p.bucket_bits, &hasher, "w1", &batch)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no longer held by w1"), "{err}");
    for k in ["ord-00001", "ord-00002"] {
        let e = store.entity("orders", k).await.unwrap().unwrap();
        assert_eq!(
            e.doc.unwrap()["status"],
            "open",
            "{k} was written by a batch that lost a lease"
        );
    }
    let (checked, broken) = store.verify_chain().await.unwrap();
    assert_eq!((checked, broken), (30, None), "no change was logged");
}

crate::on_both_backends!(
    apply_batches_are_all_or_nothing,
    http_action_retries_with_one_idempotency_key,
    http_client_errors_are_dead_at_once,
    expired_leases_are_retried,
    convergence_over_random_loss,
);
