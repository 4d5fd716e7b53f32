//! Keyframes end to end against loopback vendors: exact drift per pagination style, ignored fields, failures, the guard, the race rule, and corrective work.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftd::canonical::RecordHasher;
use driftd::config::{Config, Producer};
use driftd::entity::{Change, EntityWrite, Source, WriteRule};
use driftd::keyframe::run::{Keyframer, Summary};
use driftd::metrics::Metrics;
use driftd::state::{RunState, WorkState};
use driftd::store::Store;
use driftd::work::Workers;
use serde_json::Value;

use crate::support::TestDb;
use crate::support::{record, Fault, Vendor};

pub fn producer(snapshot_toml: &str, extra: &str) -> Producer {
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
pub async fn seed(store: &Store, p: &Producer, records: &BTreeMap<String, Value>) {
    let hasher = p.hasher();
    let writes: Vec<EntityWrite> = records
        .iter()
        .map(|(k, d)| EntityWrite {
            key: k.clone(),
            change: Change::Replace(d.clone()),
            version: None,
            source: Source::Webhook,
            rule: WriteRule::IfNewer,
        })
        .collect();
    for chunk in writes.chunks(500) {
        store
            .write_entities(&p.name, p.bucket_bits, hasher, chunk)
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
pub async fn drain_work(store: &Store, p: &Producer) {
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

async fn keyframe(store: &Store, p: &Producer) -> Summary {
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
        &crate::support::snapshot_toml(style, addr),
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
    // Each document is stored once: the work item carries it, the drift
    // list only its hash.
    assert!(
        drifts.iter().all(|d| d.doc.is_none()),
        "drift docs released"
    );
    let snapshot = vendor.snapshot();
    let items = store.list_work(None, 10_000).await.unwrap();
    assert_eq!(items.len(), drifts.len());
    for w in &items {
        let spec: serde_json::Value = serde_json::from_str(&w.spec).unwrap();
        assert_eq!(
            spec["record"].as_object(),
            snapshot.get(&w.key).and_then(|d| d.as_object()),
            "{}",
            w.key
        );
    }
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
            crate::support::snapshot_toml("cursor", addr)
        ),
        "",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.scramble.store(true, Ordering::Relaxed);
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
    let p = producer(&crate::support::snapshot_toml("cursor", addr), "");
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
    let p = producer(&crate::support::snapshot_toml("none", addr), "");
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
            crate::support::snapshot_toml("cursor", addr)
        ),
        "",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.delay_ms.store(150, Ordering::Relaxed);
    let k = keyframer(&store);
    let pull = tokio::spawn({
        let p = p.clone();
        async move { k.run(&p, false).await.unwrap() }
    });
    // Once the first page (holding ord-00000) is served, the vendor changes that
    // record and its webhook lands locally, with a newer version than the snapshot's.
    let deadline = Instant::now() + Duration::from_secs(10);
    while vendor.pages_served.load(Ordering::Relaxed) < 2 {
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
                rule: WriteRule::IfNewer,
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
    vendor.delay_ms.store(0, Ordering::Relaxed);
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
    let p = producer(&crate::support::snapshot_toml("offset", addr), "");
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
                rule: WriteRule::IfNewer,
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
    let p = producer(&crate::support::snapshot_toml("link_header", addr), "");
    let metrics = Metrics::new();
    let s = Keyframer::new(store.clone(), reqwest::Client::new(), metrics.clone())
        .run(&p, false)
        .await
        .unwrap();
    assert!(
        metrics
            .render()
            .contains("driftd_first_sync_records_total{producer=\"orders\"} 600"),
        "the load is counted"
    );
    assert_eq!(
        (s.state, s.missing, s.work_emitted, s.loaded),
        (RunState::Ok, 600, 0, 600),
        "a first sync loads the records in bulk: {s:?}"
    );
    assert!(store.list_work(None, 10).await.unwrap().is_empty());
    assert_eq!(store.count_entities("orders").await.unwrap(), 600);
    let (checked, broken) = store.verify_chain().await.unwrap();
    assert_eq!(
        (checked, broken),
        (600, None),
        "every loaded record is in the log"
    );
    let s = keyframe(&store, &p).await;
    assert_eq!(s.missing + s.extra + s.changed, 0, "{s:?}");
}

async fn changing_bucket_bits_rebuilds_digests_without_false_drift(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(800).await;
    let snapshot = crate::support::snapshot_toml("cursor", addr);
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
        !store
            .ensure_layout("orders", 6, &RecordHasher::default())
            .await
            .unwrap()
            .rebuilt(),
        "no second rebuild"
    );
    // And drift is still found exactly under the new layout.
    vendor.records.lock().unwrap().remove("ord-00010");
    let s = keyframe(&store, &p6).await;
    assert_eq!((s.missing, s.extra, s.changed), (0, 1, 0), "{s:?}");
}

/// The printed duration is the whole run: pull, compare, storing the drift list and emitting work.
async fn duration_covers_storing_drift_and_emitting_work(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(6_000).await;
    let p = producer(&crate::support::snapshot_toml("none", addr), "");
    // A sixth of the rows already: not a first sync, so the run emits work.
    let first: BTreeMap<String, Value> = vendor.snapshot().into_iter().take(1_000).collect();
    seed(&store, &p, &first).await;
    let s = keyframe(&store, &p).await;
    assert_eq!((s.state, s.work_emitted), (RunState::Ok, 5_000), "{s:?}");
    // The duration reaches past the moment the last item was emitted (the
    // run's clock starts before its recorded start; both in whole ms).
    let run = store.run(s.run_id.unwrap()).await.unwrap().unwrap();
    let last_emitted = store
        .list_work(None, 1)
        .await
        .unwrap()
        .first()
        .map(|w| w.time)
        .expect("work was emitted");
    assert!(
        run.started_at + s.duration_ms as i64 + 1 >= last_emitted,
        "duration {} ms, but the last item was emitted {} ms after the run began",
        s.duration_ms,
        last_emitted - run.started_at
    );
}

/// Buckets compared are every bucket either side holds, never fewer than the mismatched ones.
async fn buckets_compared_is_the_union_of_both_sides(db: &TestDb) {
    let store = db.store().await;
    let (_vendor, addr) = Vendor::start(3).await;
    let p = producer(&crate::support::snapshot_toml("none", addr), "");
    // Three local rows the vendor does not have, in other buckets than its three.
    let local: BTreeMap<String, Value> = (10..13).map(|i| record(i, 0)).collect();
    seed(&store, &p, &local).await;
    let s = keyframe(&store, &p).await;
    assert_eq!((s.missing, s.extra), (3, 3), "{s:?}");
    assert_eq!((s.buckets_compared, s.buckets_mismatched), (6, 6), "{s:?}");
    let run = store.run(s.run_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(run.counts.buckets_compared, 6);
}

/// Ten deltas before the first keyframe of a 300-record producer: the
/// keyframe adds the other 290 without an approval (additions lose nothing),
/// in bulk, since the mirror is nearly empty.
async fn a_few_deltas_before_the_first_keyframe_do_not_guard_seeding(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(300).await;
    let p = producer(&crate::support::snapshot_toml("cursor", addr), "");
    let early: BTreeMap<String, Value> = vendor.snapshot().into_iter().take(10).collect();
    seed(&store, &p, &early).await;
    let s = keyframe(&store, &p).await;
    assert_eq!(
        (
            s.state,
            s.missing,
            s.extra,
            s.changed,
            s.loaded,
            s.work_emitted
        ),
        (RunState::Ok, 290, 0, 0, 290, 0),
        "{s:?}"
    );
    drain_work(&store, &p).await;
    let s = keyframe(&store, &p).await;
    assert_eq!((s.state, s.drift()), (RunState::Ok, 0), "{s:?}");
    assert_eq!(store.count_entities("orders").await.unwrap(), 300);
}

/// A nearly empty mirror (20 rows of a 400-record producer: 15 equal, 3
/// stale, 2 the producer no longer has): the 385 missing records are loaded
/// in bulk, the changed and extra rows become work as in any keyframe, and
/// after that work the mirror equals the producer.
async fn a_nearly_empty_mirror_loads_missing_records_and_corrects_the_rest(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(400).await;
    let p = producer(&crate::support::snapshot_toml("cursor", addr), "");
    let mut early: BTreeMap<String, Value> = vendor.snapshot().into_iter().take(18).collect();
    for (_, doc) in early.iter_mut().take(3) {
        doc["status"] = Value::from("stale");
    }
    early.extend((1_000..1_002).map(|i| record(i, 0)));
    seed(&store, &p, &early).await;
    let s = keyframe(&store, &p).await;
    assert_eq!(
        (
            s.state,
            s.missing,
            s.changed,
            s.extra,
            s.loaded,
            s.work_emitted
        ),
        (RunState::Ok, 382, 3, 2, 382, 5),
        "{s:?}"
    );
    assert_eq!(store.count_entities("orders").await.unwrap(), 402);
    drain_work(&store, &p).await;
    let s = keyframe(&store, &p).await;
    assert_eq!((s.state, s.drift()), (RunState::Ok, 0), "{s:?}");
    let local: BTreeMap<String, Value> = store
        .entities("orders")
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| Some((e.key, e.doc?)))
        .collect();
    assert_eq!(local, vendor.snapshot(), "record for record");
}

/// A guarded producer shows in the store's guarded runs and the
/// `driftd_keyframe_guarded` gauge until a later keyframe lets it through.
async fn a_guarded_producer_is_visible_until_a_run_lets_it_through(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(400).await;
    let p = producer(&crate::support::snapshot_toml("none", addr), "");
    seed(&store, &p, &vendor.snapshot()).await;
    let metrics = Metrics::new();
    metrics.init_producer("orders");
    let k = Keyframer::new(store.clone(), reqwest::Client::new(), metrics.clone());
    let gauge = || {
        metrics
            .keyframe_guarded
            .with_label_values(&["orders"])
            .get()
    };
    assert_eq!(gauge(), 0);
    *vendor.fault.lock().unwrap() = Fault::Empty;
    let s = k.run(&p, false).await.unwrap();
    assert_eq!((s.state, s.extra), (RunState::Guarded, 400), "{s:?}");
    assert_eq!(gauge(), 1);
    assert!(metrics
        .render()
        .contains("driftd_keyframe_guarded{producer=\"orders\"} 1"));
    let guarded = store.guarded_runs().await.unwrap();
    assert_eq!(guarded.get("orders"), s.run_id.as_ref(), "{guarded:?}");
    // A failed run changes nothing: the producer is still guarded.
    *vendor.fault.lock().unwrap() = Fault::ServerError;
    let f = k.run(&p, false).await.unwrap();
    assert_eq!(f.state, RunState::Failed);
    assert_eq!(gauge(), 1);
    assert_eq!(
        store.guarded_runs().await.unwrap().get("orders"),
        s.run_id.as_ref()
    );
    // The vendor recovers: the next keyframe is ok and the producer is no longer guarded.
    *vendor.fault.lock().unwrap() = Fault::None;
    let ok = k.run(&p, false).await.unwrap();
    assert_eq!((ok.state, ok.drift()), (RunState::Ok, 0), "{ok:?}");
    assert_eq!(gauge(), 0);
    assert!(store.guarded_runs().await.unwrap().is_empty());
}

/// Writes a config file for the binary: database `db`, producer `orders` with `snapshot`.
fn config_file(dir: &std::path::Path, db: &TestDb, snapshot: &str) -> String {
    let path = dir.join("driftd.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{snapshot}\n",
            db.url
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// A partial snapshot is guarded; the vendor recovers and the next run is ok;
/// approving the old run then would delete 2,000 live rows, so it is refused.
async fn approving_a_guarded_run_a_later_run_superseded_is_refused(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(3_000).await;
    let snapshot = crate::support::snapshot_toml("cursor", addr);
    let p = producer(&snapshot, "");
    seed(&store, &p, &vendor.snapshot()).await;
    let full = vendor.snapshot();
    vendor
        .records
        .lock()
        .unwrap()
        .retain(|k, _| k.as_str() < "ord-01000");
    let guarded = keyframe(&store, &p).await;
    assert_eq!(
        (guarded.state, guarded.extra),
        (RunState::Guarded, 2_000),
        "{guarded:?}"
    );
    *vendor.records.lock().unwrap() = full;
    let ok = keyframe(&store, &p).await;
    assert_eq!((ok.state, ok.drift()), (RunState::Ok, 0), "{ok:?}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), db, &snapshot);
    let id = guarded.run_id.unwrap().to_string();
    let (code, stdout, stderr) = crate::cli::run_async(&["approve", "--config", &cfg, &id]).await;
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains(&format!("run {} (ok)", ok.run_id.unwrap())) && stderr.contains("stale"),
        "the refusal names the newer run: {stderr}"
    );
    assert!(
        store.list_work(None, 10).await.unwrap().is_empty(),
        "nothing emitted"
    );
    let run = store.run(guarded.run_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Guarded);
    assert_eq!(store.count_entities("orders").await.unwrap(), 3_000);
}

/// A guarded run older than `retention_days` cannot be approved, and is pruned
/// with the other runs; a failed run since does not make it stale.
async fn guarded_runs_expire_and_are_pruned(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(200).await;
    let snapshot = crate::support::snapshot_toml("none", addr);
    let p = producer(&snapshot, "");
    seed(&store, &p, &vendor.snapshot()).await;
    *vendor.fault.lock().unwrap() = Fault::Empty;
    let guarded = keyframe(&store, &p).await;
    assert_eq!(guarded.state, RunState::Guarded, "{guarded:?}");
    let id = guarded.run_id.unwrap();
    *vendor.fault.lock().unwrap() = Fault::ServerError;
    let failed = keyframe(&store, &p).await;
    assert_eq!(failed.state, RunState::Failed);

    let text = format!(
        "[database]\nurl = \"{}\"\nretention_days = 30\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{snapshot}\n",
        db.url
    );
    let config = Config::parse("test.toml", &text, &|_| None).unwrap().config;
    let day = 86_400_000i64;
    let started = store.run(id).await.unwrap().unwrap().started_at;
    driftd::store::sql::query("UPDATE keyframe_runs SET started_at = $1 WHERE id = $2")
        .bind(driftd::store::sql::At(started - 31 * day))
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    let err = keyframer(&store).approve(&config, id).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert!(store.list_work(None, 10).await.unwrap().is_empty());

    let pruned = store
        .prune(driftd::store::now_ms() - 30 * day)
        .await
        .unwrap();
    assert_eq!((pruned.runs, pruned.drifts), (1, 200), "{pruned:?}");
    assert!(store.run(id).await.unwrap().is_none());
    assert!(store.drifts_of_run(id).await.unwrap().is_empty());
    assert!(
        store.run(failed.run_id.unwrap()).await.unwrap().is_some(),
        "the latest run is kept"
    );
}

/// Adding `/fetched_at` to `ignore` recomputes the stored hashes before
/// anything compares: no false drift, and drift is still found exactly after.
async fn changing_ignore_rehashes_stored_rows_without_false_drift(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(3_000).await;
    let snapshot = crate::support::snapshot_toml("cursor", addr);
    let before = producer(&snapshot, "");
    // The rows as deltas delivered them, each with the volatile field.
    let local: BTreeMap<String, Value> = vendor
        .snapshot()
        .into_iter()
        .map(|(k, mut d)| {
            d["fetched_at"] = Value::String("2026-01-01T00:00:00Z".into());
            (k, d)
        })
        .collect();
    seed(&store, &before, &local).await;
    // The vendor serves a different fetched_at on every pull; the operator ignores it.
    vendor.scramble.store(true, Ordering::Relaxed);
    let after = producer(&format!("{snapshot}\nignore = [\"/fetched_at\"]"), "");
    let s = keyframe(&store, &after).await;
    assert_eq!(
        (s.state, s.drift(), s.rows_read),
        (RunState::Ok, 0, 0),
        "{s:?}"
    );
    let hasher = RecordHasher::new(&after.snapshot.ignore).unwrap();
    let entities = store.entities("orders").await.unwrap();
    assert_eq!(entities.len(), 3_000);
    for e in &entities {
        assert_eq!(
            e.hash,
            Some(hasher.hash(e.doc.as_ref().unwrap())),
            "{}",
            e.key
        );
    }
    assert!(
        !store
            .ensure_layout("orders", after.bucket_bits, &hasher)
            .await
            .unwrap()
            .rebuilt(),
        "no second rehash"
    );
    assert!(store.list_work(None, 10).await.unwrap().is_empty());
    vendor.records.lock().unwrap().get_mut("ord-00007").unwrap()["status"] =
        Value::String("edited".into());
    let s = keyframe(&store, &after).await;
    assert_eq!((s.missing, s.extra, s.changed), (0, 0, 1), "{s:?}");
}

/// Waits until the newest run of `orders` is `running` and the vendor served a page; returns its id.
async fn wait_for_running_run(store: &Store, vendor: &Vendor) -> i64 {
    let served = vendor.pages_served.load(Ordering::Relaxed);
    crate::support::wait_for("a keyframe run under way", 30, || {
        let store = store.clone();
        let vendor = vendor.clone();
        async move {
            let runs = store.runs("orders", 1).await.unwrap();
            runs.first().is_some_and(|r| r.state == RunState::Running)
                && vendor.pages_served.load(Ordering::Relaxed) > served
        }
    })
    .await;
    store.runs("orders", 1).await.unwrap()[0].id
}

async fn lease_count(store: &Store) -> i64 {
    driftd::store::sql::query_scalar("SELECT COUNT(*) FROM leases")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A vendor of 2,000 records serving each of its 8 pages in 0.5 s, seeded locally.
async fn slow_vendor(store: &Store) -> (Vendor, String, Producer) {
    let (vendor, addr) = Vendor::start(2_000).await;
    let snapshot = crate::support::snapshot_toml("cursor", addr);
    let p = producer(&snapshot, "");
    seed(store, &p, &vendor.snapshot()).await;
    vendor.delay_ms.store(500, Ordering::Relaxed);
    (vendor, snapshot, p)
}

/// SIGINT or SIGTERM to `driftd keyframe` mid-pull: the run is recorded
/// `failed` (interrupted), the lease released, and the next keyframe runs at once.
async fn an_interrupted_keyframe_command_is_recorded_failed_and_frees_its_lease(db: &TestDb) {
    let store = db.store().await;
    let (vendor, snapshot, p) = slow_vendor(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), db, &snapshot);
    for signal in ["INT", "TERM"] {
        let child = tokio::process::Command::new(crate::support::driftd_bin())
            .args(["keyframe", "--config", &cfg, "orders"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start driftd keyframe");
        let id = wait_for_running_run(&store, &vendor).await;
        crate::support::signal(child.id().unwrap(), signal);
        let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
            .await
            .expect("driftd keyframe exits after the signal")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "SIG{signal}: {stdout}");
        assert!(
            stdout.contains("failed") && stdout.contains("interrupted"),
            "{stdout}"
        );
        let run = store.run(id).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Failed, "SIG{signal}: {run:?}");
        assert!(
            run.error
                .as_deref()
                .unwrap_or_default()
                .contains("interrupted"),
            "{run:?}"
        );
        assert!(run.finished_at.is_some());
        assert_eq!(
            lease_count(&store).await,
            0,
            "SIG{signal}: the lease is released"
        );
        assert!(store.drifts_of_run(id).await.unwrap().is_empty());
    }
    vendor.delay_ms.store(0, Ordering::Relaxed);
    let s = keyframe(&store, &p).await;
    assert_eq!((s.state, s.drift()), (RunState::Ok, 0), "{s:?}");
}

/// SIGTERM to `driftd run` mid-pull: the scheduled run is recorded `failed`
/// (interrupted) and its lease released before the daemon exits.
async fn sigterm_to_the_daemon_mid_pull_records_the_run_failed(db: &TestDb) {
    let store = db.store().await;
    let (vendor, snapshot, p) = slow_vendor(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("daemon.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\n{snapshot}\n",
            crate::support::free_port(),
            db.url
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(crate::support::driftd_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start driftd run");
    let id = wait_for_running_run(&store, &vendor).await;
    crate::support::signal(child.id().unwrap(), "TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the daemon exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let run = store.run(id).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    assert!(
        run.error
            .as_deref()
            .unwrap_or_default()
            .contains("interrupted"),
        "{run:?}"
    );
    let runs = store.runs("orders", 100).await.unwrap();
    assert!(
        runs.iter().all(|r| r.state != RunState::Running),
        "{runs:?}"
    );
    assert_eq!(lease_count(&store).await, 0, "the lease is released");
    vendor.delay_ms.store(0, Ordering::Relaxed);
    let s = keyframe(&store, &p).await;
    assert_eq!((s.state, s.drift()), (RunState::Ok, 0), "{s:?}");
}

/// SIGKILL to `driftd keyframe` mid-pull leaves a `running` run and a held
/// lease; the next keyframe takes the lease over at once (its holder's
/// process is gone) and closes the orphaned run.
async fn a_killed_keyframe_is_closed_by_the_next_lease_holder(db: &TestDb) {
    let store = db.store().await;
    let (vendor, snapshot, p) = slow_vendor(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_file(dir.path(), db, &snapshot);
    let mut child = tokio::process::Command::new(crate::support::driftd_bin())
        .args(["keyframe", "--config", &cfg, "orders"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start driftd keyframe");
    let orphan = wait_for_running_run(&store, &vendor).await;
    crate::support::signal(child.id().unwrap(), "KILL");
    child.wait().await.unwrap();
    assert_eq!(
        store.run(orphan).await.unwrap().unwrap().state,
        RunState::Running
    );
    assert_eq!(
        lease_count(&store).await,
        1,
        "the killed process still holds the lease"
    );

    vendor.delay_ms.store(0, Ordering::Relaxed);
    let s = keyframer(&store)
        .run(&p, false)
        .await
        .expect("the next keyframe takes the lease over without waiting for it to expire");
    assert_eq!((s.state, s.drift()), (RunState::Ok, 0), "{s:?}");
    let run = store.run(orphan).await.unwrap().unwrap();
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    assert_eq!(
        run.error.as_deref(),
        Some("interrupted: the process holding it stopped")
    );
    assert_eq!(lease_count(&store).await, 0);
}

crate::on_both_backends!(
    an_interrupted_keyframe_command_is_recorded_failed_and_frees_its_lease,
    sigterm_to_the_daemon_mid_pull_records_the_run_failed,
    a_killed_keyframe_is_closed_by_the_next_lease_holder,
    changing_ignore_rehashes_stored_rows_without_false_drift,
    approving_a_guarded_run_a_later_run_superseded_is_refused,
    guarded_runs_expire_and_are_pruned,
    a_few_deltas_before_the_first_keyframe_do_not_guard_seeding,
    a_nearly_empty_mirror_loads_missing_records_and_corrects_the_rest,
    a_guarded_producer_is_visible_until_a_run_lets_it_through,
    duration_covers_storing_drift_and_emitting_work,
    buckets_compared_is_the_union_of_both_sides,
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
    use std::sync::atomic::AtomicUsize;
    let seen = Arc::new(AtomicUsize::new(0));
    let other = {
        let seen = seen.clone();
        axum::Router::new().route(
            "/steal",
            axum::routing::get(move || {
                let seen = seen.clone();
                async move {
                    seen.fetch_add(1, Ordering::SeqCst);
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
        driftd::client::http_client().unwrap(),
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
    assert_eq!(seen.load(Ordering::SeqCst), 0, "the other origin was never asked");
    let moved = producer(
        &format!("url = \"{base}/moved\"\nitems = \"/data\"\n{headers}"),
        "",
    );
    let s = k.run(&moved, true).await.unwrap();
    assert_eq!((s.state, s.records), (RunState::Ok, 1), "{s:?}");
}
}
