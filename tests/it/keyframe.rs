//! Keyframes end to end against loopback vendors: exact drift per pagination style, ignored fields, failures, the guard, the race rule, and corrective work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftd::canonical::RecordHasher;
use driftd::config::{Config, ProducerConfig};
use driftd::keyframe::run::{Keyframer, Summary};
use driftd::metrics::Metrics;
use driftd::state::{RunState, WorkState};
use driftd::store::{Change, EntityWrite, Ordering, Source, Store};
use driftd::work::Workers;
use serde_json::Value;

use crate::producer::{record, Fault, Vendor};
use crate::support::TestDb;

pub fn producer(snapshot_toml: &str, extra: &str) -> ProducerConfig {
    let text = format!(
        "[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n{extra}\n[producer.snapshot]\n{snapshot_toml}\nretries = 1\nretry_backoff_ms = 1\ntimeout_secs = 5\n"
    );
    let loaded = Config::parse("test.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    loaded.config.producers.into_iter().next().unwrap()
}

pub fn keyframer(store: &Store) -> Keyframer {
    Keyframer::new(store.clone(), reqwest::Client::new(), Metrics::new())
}

/// Makes the local rows equal `records`, as if every delta had arrived.
pub async fn seed(store: &Store, p: &ProducerConfig, records: &BTreeMap<String, Value>) {
    let hasher = RecordHasher::new(&p.snapshot.ignore).unwrap();
    let writes: Vec<EntityWrite> = records
        .iter()
        .map(|(k, d)| EntityWrite {
            key: k.clone(),
            change: Change::Replace(d.clone()),
            version: None,
            source: Source::Webhook,
            ordering: Ordering::IfNewer,
        })
        .collect();
    for chunk in writes.chunks(500) {
        store
            .write_entities(&p.name, p.bucket_bits, &hasher, chunk)
            .await
            .unwrap();
    }
}

pub fn workers(store: &Store) -> Workers {
    Workers {
        store: store.clone(),
        client: reqwest::Client::new(),
        metrics: Metrics::new(),
        wake: Arc::new(tokio::sync::Notify::new()),
        id: "test-worker".into(),
    }
}

/// Runs the in-process workers until no item of `p` is pending or running (bounded by a deadline).
pub async fn drain_work(store: &Store, p: &ProducerConfig) {
    let w = workers(store);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        w.tick(p).await.unwrap();
        let open = store.open_work_by_producer().await.unwrap();
        if open.get(&p.name).copied().unwrap_or(0) == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "work did not drain: {open:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn keyframe(store: &Store, p: &ProducerConfig) -> Summary {
    keyframer(store).run(p, false).await.expect("keyframe runs")
}

/// Applies `n` random inserts, deletes and edits to the vendor; returns the keys of each kind.
fn mutate(
    v: &Vendor,
    n: usize,
    seed: u64,
) -> (BTreeSet<String>, BTreeSet<String>, BTreeSet<String>) {
    let mut r = v.records.lock().unwrap();
    let (mut ins, mut del, mut edit) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    while ins.len() + del.len() + edit.len() < n {
        let keys: Vec<String> = r.keys().cloned().collect();
        match next() % 3 {
            0 => {
                let (k, d) = record(100_000 + (next() % 50_000) as usize, 0);
                if !r.contains_key(&k) {
                    r.insert(k.clone(), d);
                    ins.insert(k);
                }
            }
            1 => {
                let k = &keys[(next() % keys.len() as u64) as usize];
                if !ins.contains(k) && !edit.contains(k) && !del.contains(k) {
                    r.remove(k);
                    del.insert(k.clone());
                }
            }
            _ => {
                let k = keys[(next() % keys.len() as u64) as usize].clone();
                if !ins.contains(&k) && !edit.contains(&k) {
                    r.get_mut(&k).unwrap()["status"] =
                        Value::String(format!("edited-{}", next() % 100));
                    edit.insert(k);
                }
            }
        }
    }
    (ins, del, edit)
}

async fn exact_drift(db: &TestDb, style: &str) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(2_000).await;
    let p = producer(
        &crate::producer::snapshot_toml(style, addr),
        "bucket_bits = 10",
    );
    seed(&store, &p, &vendor.snapshot()).await;

    let s = keyframe(&store, &p).await;
    assert_eq!(s.state, RunState::Ok, "{s:?}");
    assert_eq!(
        (s.records, s.missing, s.extra, s.changed),
        (2_000, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.rows_read, 0, "an unchanged producer reads no rows");

    let (ins, del, edit) = mutate(&vendor, 30, style.len() as u64 * 7919);
    let s = keyframe(&store, &p).await;
    assert_eq!(s.state, RunState::Ok, "{s:?}");
    assert_eq!(
        (s.missing, s.extra, s.changed),
        (ins.len() as u64, del.len() as u64, edit.len() as u64),
        "{s:?}"
    );
    let drifts = store.drifts_of_run(s.run_id.unwrap()).await.unwrap();
    let by_kind = |kind: &str| -> BTreeSet<String> {
        drifts
            .iter()
            .filter(|d| d.kind == kind)
            .map(|d| d.key.clone())
            .collect()
    };
    assert_eq!(by_kind("missing"), ins);
    assert_eq!(by_kind("extra"), del);
    assert_eq!(by_kind("changed"), edit);
    assert!(
        s.rows_read < 2_000 / 4,
        "only rows of mismatched buckets are read: {} of 2000",
        s.rows_read
    );
}

macro_rules! per_style {
    ($($name:ident => $style:literal),* $(,)?) => {
        $(async fn $name(db: &TestDb) { exact_drift(db, $style).await })*
    };
}

per_style!(
    drift_style_none => "none",
    drift_style_cursor => "cursor",
    drift_style_next_url => "next_url",
    drift_style_link_header => "link_header",
    drift_style_page => "page",
    drift_style_offset => "offset",
    drift_style_after_key => "after_key",
);

async fn ignored_fields_and_member_order_are_not_drift(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(300).await;
    let p = producer(
        &format!(
            "{}\nignore = [\"/fetched_at\"]",
            crate::producer::snapshot_toml("cursor", addr)
        ),
        "",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.scramble.store(true, AtomicOrdering::Relaxed);
    let s = keyframe(&store, &p).await;
    assert_eq!(
        (s.state, s.missing + s.extra + s.changed),
        (RunState::Ok, 0),
        "{s:?}"
    );
}

async fn failed_pulls_emit_nothing(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(500).await;
    let p = producer(&crate::producer::snapshot_toml("cursor", addr), "");
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.records.lock().unwrap().clear(); // would be 500 `extra` rows if a pull could succeed
    for (fault, expected) in [
        (Fault::ServerError, "HTTP 500"),
        (Fault::InvalidJson, "page 1"),
        (Fault::DuplicateKey, "duplicate key"),
    ] {
        *vendor.fault.lock().unwrap() = fault;
        if fault == Fault::DuplicateKey {
            let (k, d) = record(1, 0);
            vendor.records.lock().unwrap().insert(k, d);
        }
        let s = keyframe(&store, &p).await;
        assert_eq!(s.state, RunState::Failed, "{fault:?}: {s:?}");
        let error = s.error.clone().unwrap_or_default();
        assert!(error.contains(expected), "{fault:?}: {error}");
        let run = store.run(s.run_id.unwrap()).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(run.error.as_deref(), Some(error.as_str()));
        assert!(store.drifts_of_run(run.id).await.unwrap().is_empty());
        assert!(
            store.list_work(None, 10).await.unwrap().is_empty(),
            "{fault:?} emitted work"
        );
    }
    assert_eq!(
        store.count_entities("orders").await.unwrap(),
        500,
        "nothing was corrected"
    );
}

async fn empty_snapshot_is_guarded_until_approved(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(400).await;
    let p = producer(&crate::producer::snapshot_toml("none", addr), "");
    seed(&store, &p, &vendor.snapshot()).await;
    *vendor.fault.lock().unwrap() = Fault::Empty;
    let s = keyframe(&store, &p).await;
    assert_eq!(s.state, RunState::Guarded, "{s:?}");
    assert_eq!((s.extra, s.work_emitted), (400, 0));
    assert!(
        store.list_work(None, 10).await.unwrap().is_empty(),
        "a guarded run emits nothing"
    );

    let run_id = s.run_id.unwrap();
    let approved = store.approve_run(run_id).await.unwrap();
    assert_eq!(approved.state, RunState::Approved);
    assert!(
        store.approve_run(run_id).await.is_err(),
        "a run is approved once"
    );
    let emitted = driftd::work::emit_run(&store, &p, run_id).await.unwrap();
    assert_eq!(emitted, 400);
    let items = store
        .list_work(Some(WorkState::Pending), 1_000)
        .await
        .unwrap();
    assert_eq!(items.len(), 400);
}

async fn a_newer_delta_during_a_slow_pull_is_not_drift(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(1_000).await;
    let p = producer(
        &format!(
            "{}\nversion = \"/rev\"",
            crate::producer::snapshot_toml("cursor", addr)
        ),
        "",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.delay_ms.store(150, AtomicOrdering::Relaxed);
    let k = keyframer(&store);
    let pull = tokio::spawn({
        let p = p.clone();
        async move { k.run(&p, false).await.unwrap() }
    });
    // Once the first page (holding ord-00000) is served, the vendor changes that
    // record and its webhook lands locally, with a newer version than the snapshot's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while vendor.pages_served.load(AtomicOrdering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "the pull never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (key, mut doc) = record(0, 1);
    doc["status"] = Value::String("shipped".into());
    vendor
        .records
        .lock()
        .unwrap()
        .insert(key.clone(), doc.clone());
    let hasher = RecordHasher::default();
    store
        .write_entities(
            "orders",
            p.bucket_bits,
            &hasher,
            &[EntityWrite {
                key: key.clone(),
                change: Change::Replace(doc),
                version: Some(1),
                source: Source::Webhook,
                ordering: Ordering::IfNewer,
            }],
        )
        .await
        .unwrap();
    let s = pull.await.unwrap();
    assert_eq!(s.state, RunState::Ok, "{s:?}");
    assert_eq!(
        s.missing + s.extra + s.changed,
        0,
        "the raced key is not drift: {s:?}"
    );
    assert_eq!(s.skipped_races, 1, "{s:?}");
    // The next keyframe sees the vendor's new state, equal to the local row.
    vendor.delay_ms.store(0, AtomicOrdering::Relaxed);
    let s = keyframe(&store, &p).await;
    assert_eq!(
        (s.missing + s.extra + s.changed, s.skipped_races),
        (0, 0),
        "{s:?}"
    );
}

async fn lost_deltas_are_corrected_by_apply_work(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(2_000).await;
    let p = producer(&crate::producer::snapshot_toml("offset", addr), "");
    seed(&store, &p, &vendor.snapshot()).await;
    // 1% of the records change at the vendor and every webhook is dropped.
    let changed: BTreeSet<String> = {
        let mut r = vendor.records.lock().unwrap();
        r.iter_mut()
            .step_by(100)
            .map(|(k, d)| {
                d["status"] = Value::String("changed-upstream".into());
                k.clone()
            })
            .collect()
    };
    assert_eq!(changed.len(), 20);
    let s = keyframe(&store, &p).await;
    assert_eq!(
        (s.state, s.changed, s.work_emitted),
        (RunState::Ok, 20, 20),
        "{s:?}"
    );
    let items = store
        .list_work(Some(WorkState::Pending), 100)
        .await
        .unwrap();
    let keys: BTreeSet<String> = items.iter().map(|w| w.key.clone()).collect();
    assert_eq!(keys, changed);
    // A late delta fixes one entity; a second keyframe before the work ran
    // updates the other items instead of adding more, and closes the fixed one.
    let fixed = changed.iter().next().unwrap().clone();
    let vendor_doc = vendor.snapshot()[&fixed].clone();
    store
        .write_entities(
            "orders",
            p.bucket_bits,
            &RecordHasher::default(),
            &[EntityWrite {
                key: fixed.clone(),
                change: Change::Replace(vendor_doc),
                version: None,
                source: Source::Webhook,
                ordering: Ordering::IfNewer,
            }],
        )
        .await
        .unwrap();
    // Times are milliseconds: let the next pull begin in a later one than the delta.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = keyframe(&store, &p).await;
    assert_eq!(again.changed, 19, "{again:?}");
    let all = store.list_work(None, 100).await.unwrap();
    assert_eq!(all.len(), 20, "one item per entity, no duplicates");
    let closed: Vec<_> = all.iter().filter(|w| w.state == WorkState::Done).collect();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].key, fixed);
    assert!(closed[0]
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("drift gone"));
    let done_before = 1;
    drain_work(&store, &p).await;
    let done = store.list_work(Some(WorkState::Done), 100).await.unwrap();
    assert_eq!(done.len(), 19 + done_before);
    let s = keyframe(&store, &p).await;
    assert_eq!(s.missing + s.extra + s.changed, 0, "{s:?}");
    let local: BTreeMap<String, Value> = store
        .entities("orders")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.doc.unwrap()))
        .collect();
    assert_eq!(
        local,
        vendor.snapshot(),
        "local rows equal the producer's, record for record"
    );
}

async fn bootstrap_into_an_empty_table(db: &TestDb) {
    let store = db.store().await;
    let (_vendor, addr) = Vendor::start(600).await;
    let p = producer(&crate::producer::snapshot_toml("link_header", addr), "");
    let s = keyframe(&store, &p).await;
    assert_eq!(
        (s.state, s.missing, s.work_emitted),
        (RunState::Ok, 600, 600),
        "{s:?}"
    );
    drain_work(&store, &p).await;
    assert_eq!(store.count_entities("orders").await.unwrap(), 600);
    let s = keyframe(&store, &p).await;
    assert_eq!(s.missing + s.extra + s.changed, 0, "{s:?}");
}

async fn changing_bucket_bits_rebuilds_digests_without_false_drift(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(800).await;
    let snapshot = crate::producer::snapshot_toml("cursor", addr);
    let p10 = producer(&snapshot, "bucket_bits = 10");
    seed(&store, &p10, &vendor.snapshot()).await;
    let s = keyframe(&store, &p10).await;
    assert_eq!(
        (s.state, s.missing + s.extra + s.changed),
        (RunState::Ok, 0),
        "{s:?}"
    );
    // The operator changes bucket_bits: stored bucket numbers and digests follow.
    let p6 = producer(&snapshot, "bucket_bits = 6");
    let s = keyframe(&store, &p6).await;
    assert_eq!(
        (s.state, s.missing + s.extra + s.changed, s.rows_read),
        (RunState::Ok, 0, 0),
        "{s:?}"
    );
    assert_eq!(store.bucket_digests("orders").await.unwrap().len(), 64);
    assert!(store.list_work(None, 10).await.unwrap().is_empty());
    assert!(
        !store.ensure_bucket_bits("orders", 6).await.unwrap(),
        "no second rebuild"
    );
    // And drift is still found exactly under the new layout.
    vendor.records.lock().unwrap().remove("ord-00010");
    let s = keyframe(&store, &p6).await;
    assert_eq!((s.missing, s.extra, s.changed), (0, 1, 0), "{s:?}");
}

crate::on_both_backends!(
    changing_bucket_bits_rebuilds_digests_without_false_drift,
    drift_style_none,
    drift_style_cursor,
    drift_style_next_url,
    drift_style_link_header,
    drift_style_page,
    drift_style_offset,
    drift_style_after_key,
    ignored_fields_and_member_order_are_not_drift,
    failed_pulls_emit_nothing,
    empty_snapshot_is_guarded_until_approved,
    a_newer_delta_during_a_slow_pull_is_not_drift,
    lost_deltas_are_corrected_by_apply_work,
    bootstrap_into_an_empty_table,
);

crate::limited_test! {
/// Snapshot requests carry secret headers: a redirect to another origin is not
/// followed (the pull fails on the 3xx), one within the origin is.
async fn redirects_stay_on_the_producers_origin() {
    use axum::response::Redirect;
    use std::sync::atomic::{AtomicUsize, Ordering as AO};
    let seen = Arc::new(AtomicUsize::new(0));
    let other = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/steal",
            axum::routing::get(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, AO::SeqCst);
                    axum::Json(serde_json::json!({"data": []}))
                }
            }),
        )
    };
    let other_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/steal", other_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(other_listener, other).await.unwrap() });
    let vendor = axum::Router::new()
        .route(
            "/away",
            axum::routing::get(move || async move { Redirect::temporary(&other_url) }),
        )
        .route(
            "/moved",
            axum::routing::get(|| async { Redirect::permanent("/orders") }),
        )
        .route(
            "/orders",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"data": [{"id": "a"}]})) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, vendor).await.unwrap() });

    let db = TestDb::sqlite();
    let store = db.store().await;
    let k = Keyframer::new(
        store.clone(),
        driftd::cli::http_client().unwrap(),
        Metrics::new(),
    );
    let headers = "headers = { Authorization = \"Bearer s3cret\" }";
    let away = producer(
        &format!("url = \"{base}/away\"\nitems = \"/data\"\n{headers}"),
        "",
    );
    let s = k.run(&away, true).await.unwrap();
    assert_eq!(s.state, RunState::Failed, "{s:?}");
    assert!(s.error.unwrap_or_default().contains("307"));
    assert_eq!(seen.load(AO::SeqCst), 0, "the other origin was never asked");
    let moved = producer(
        &format!("url = \"{base}/moved\"\nitems = \"/data\"\n{headers}"),
        "",
    );
    let s = k.run(&moved, true).await.unwrap();
    assert_eq!((s.state, s.records), (RunState::Ok, 1), "{s:?}");
}
}
