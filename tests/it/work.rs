//! Corrective work end to end: the `http` action's retries and idempotency keys, dead items, operator retry, and convergence over random loss.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use driftd::state::{RunState, WorkState};
use driftd::store::{now_ms, WorkRow};
use serde_json::Value;

use crate::keyframe::{keyframer, producer, seed, workers};
use crate::support::Vendor;
use crate::support::{Answers, AppStandIn, TestDb, APP_SECRET};

/// Runs workers until item `id` reaches a final state (bounded by a deadline).
async fn until_final(
    db_store: &driftd::store::Store,
    p: &driftd::config::Producer,
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
    let (app, url) = AppStandIn::start(Answers::script(vec![503, 503])).await;
    let (vendor, addr) = Vendor::start(50).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
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
    assert_eq!(app.calls.load(Ordering::SeqCst), 3);
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
    let (app, url) = AppStandIn::start(Answers::script(vec![400])).await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
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
    assert_eq!(app.calls.load(Ordering::SeqCst), 1);
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
        &crate::support::snapshot_toml("none", addr),
        "[producer.work]\nlease_secs = 1",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.records.lock().unwrap().get_mut("ord-00001").unwrap()["status"] =
        Value::String("x".into());
    keyframer(&store).run(&p, false).await.unwrap();
    // A worker claims the item and dies without finishing it.
    let now = now_ms();
    let claimed = store
        .claim_work("orders", "crashed-worker", 10, 50, now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(
        store
            .claim_work("orders", "other", 10, 50, now)
            .await
            .unwrap()
            .is_empty(),
        "leased items are not claimed twice"
    );
    assert_eq!(
        store.reclaim_expired_work(now + 50).await.unwrap(),
        0,
        "a lease is held until it ends"
    );
    assert_eq!(store.reclaim_expired_work(now + 51).await.unwrap(), 1);
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
    use driftd::entity::{Change, EntityWrite, Source, WriteRule};
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(200).await;
    let p = producer(
        &format!(
            "{}\nversion = \"/rev\"",
            crate::support::snapshot_toml("cursor", addr)
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
                        rule: WriteRule::IfNewer,
                    });
                }
            } else {
                let (_, mut doc) = crate::support::record(key[4..].parse().unwrap(), rev);
                doc["status"] = Value::String(format!("s{}", rnd() % 7));
                r.insert(key.clone(), doc.clone());
                deltas.push(EntityWrite {
                    key,
                    change: Change::Replace(doc),
                    version: Some(rev as i64),
                    source: Source::Webhook,
                    rule: WriteRule::IfNewer,
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
    use driftd::entity::{Change, EntityWrite, Source, WriteRule};
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(30).await;
    let p = producer(&crate::support::snapshot_toml("none", addr), "");
    seed(&store, &p, &vendor.snapshot()).await;
    for k in ["ord-00001", "ord-00002"] {
        vendor.records.lock().unwrap().get_mut(k).unwrap()["status"] = Value::String("new".into());
    }
    keyframer(&store).run(&p, false).await.unwrap();
    let now = now_ms();
    let claimed = store.claim_work("orders", "w1", 10, 30, now).await.unwrap();
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
                    rule: WriteRule::Correct { seen },
                },
            )
        })
        .collect();
    // One lease expires and another worker takes that item.
    let later = now + 60;
    assert_eq!(store.reclaim_expired_work(later).await.unwrap(), 2);
    let other = store
        .claim_work("orders", "w2", 1, 60_000, later)
        .await
        .unwrap();
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

/// Marks `keys` of the vendor as changed, so the next keyframe finds them drifted.
fn change(vendor: &Vendor, keys: &[String], status: &str) {
    let mut r = vendor.records.lock().unwrap();
    for k in keys {
        r.get_mut(k).unwrap()["status"] = Value::String(status.into());
    }
}

fn keys(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("ord-{i:05}")).collect()
}

/// The open item of one entity.
async fn open_item(store: &driftd::store::Store, key: &str) -> WorkRow {
    store
        .list_work(None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.key == key && matches!(w.state, WorkState::Pending | WorkState::Running))
        .unwrap_or_else(|| panic!("no open item for {key}"))
}

/// A keyframe that finds the drift of a pending item again refreshes its
/// spec to the newest record, and keeps what its worker wrote: attempts,
/// last error and schedule.
async fn keyframes_keep_the_history_of_open_work(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        "[producer.work]\naction = \"none\"",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    change(&vendor, &keys(3..4), "first");
    keyframer(&store).run(&p, false).await.unwrap();
    // The application's own worker takes the item and fails it, retrying in an hour.
    let claimed = store
        .claim_work("orders", "app-worker", 1, 60_000, now_ms())
        .await
        .unwrap()
        .remove(0);
    let later = driftd::store::now_ms() + 3_600_000;
    assert!(store
        .finish_work(
            claimed.id,
            "app-worker",
            WorkState::Pending,
            later,
            Some("ledger locked")
        )
        .await
        .unwrap());
    let before = store.work_item(claimed.id).await.unwrap().unwrap();

    change(&vendor, &keys(3..4), "second");
    let s = keyframer(&store).run(&p, false).await.unwrap();
    assert_eq!((s.state, s.changed), (RunState::Ok, 1));
    let after = store.work_item(claimed.id).await.unwrap().unwrap();
    assert_eq!(
        (
            after.state,
            after.attempts,
            after.last_error.as_deref(),
            after.run_at
        ),
        (WorkState::Pending, 1, Some("ledger locked"), later),
        "{after:?}"
    );
    let spec: Value = serde_json::from_str(&after.spec).unwrap();
    assert_eq!(spec["record"]["status"], "second", "the spec is the newest");
    assert_eq!(spec["run_id"], s.run_id.unwrap());
    assert_ne!(after.dedup_key, before.dedup_key, "new content, new key");
}

/// An application that always fails gets `max_attempts` calls and the item
/// dies, however many keyframes find the drift meanwhile.
async fn a_failing_application_reaches_dead_despite_keyframes(db: &TestDb) {
    let store = db.store().await;
    let (app, url) = AppStandIn::start(Answers::script(vec![503; 50])).await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        &format!("[producer.work]\naction = \"http\"\nurl = \"{url}\"\nbackoff_base_ms = 1\nbackoff_max_ms = 2\nmax_attempts = 3"),
    );
    seed(&store, &p, &vendor.snapshot()).await;
    change(&vendor, &keys(7..8), "cancelled");
    let w = workers(&store);
    let mut dead = None;
    for _ in 0..10 {
        keyframer(&store).run(&p, false).await.unwrap();
        let item = open_item(&store, "ord-00007").await;
        // Due within 2 ms of the last failure; the keyframe took longer.
        w.tick(&p).await.unwrap();
        let item = store.work_item(item.id).await.unwrap().unwrap();
        if item.state == WorkState::Dead {
            dead = Some(item);
            break;
        }
    }
    let dead = dead.expect("the item never died: every keyframe reset its attempts");
    assert_eq!(dead.attempts, 3, "{dead:?}");
    assert!(dead.last_error.unwrap_or_default().contains("503"));
    assert_eq!(app.calls.load(Ordering::SeqCst), 3);
}

/// Runs a worker loop as `App::run` does, until the returned token is cancelled.
fn run_workers(
    store: &driftd::store::Store,
    p: &driftd::config::Producer,
    id: &str,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let w = driftd::work::Workers {
        id: id.into(),
        ..workers(store)
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn({
        let (p, cancel) = (p.clone(), cancel.clone());
        async move { w.run_producer(p, cancel).await }
    });
    (cancel, task)
}

async fn stop(cancel: tokio_util::sync::CancellationToken, task: tokio::task::JoinHandle<()>) {
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the worker loop stops promptly")
        .unwrap();
}

/// A call that outlasts the lease keeps its item: the lease is renewed while
/// it runs, so no worker (here a second replica) delivers it again.
async fn a_call_longer_than_the_lease_is_delivered_once(db: &TestDb) {
    let store = db.store().await;
    let (app, url) = AppStandIn::start(Answers::after(|_, _| Duration::from_millis(3_500))).await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        &format!(
            "[producer.work]\naction = \"http\"\nurl = \"{url}\"\nlease_secs = 2\ntimeout_secs = 1"
        ),
    );
    // Longer than the lease, as the lease could be outlasted by a slow
    // database too; `driftd check` refuses this in a config file.
    let p = p.with_unchecked(|c| c.work.timeout_secs = 10);
    seed(&store, &p, &vendor.snapshot()).await;
    change(&vendor, &keys(5..6), "paid");
    keyframer(&store).run(&p, false).await.unwrap();
    let item = open_item(&store, "ord-00005").await;
    let (c1, t1) = run_workers(&store, &p, "replica-1");
    let (c2, t2) = run_workers(&store, &p, "replica-2");
    crate::support::wait_for("the item done", 20, || async {
        store.work_item(item.id).await.unwrap().unwrap().state == WorkState::Done
    })
    .await;
    stop(c1, t1).await;
    stop(c2, t2).await;
    let done = store.work_item(item.id).await.unwrap().unwrap();
    assert_eq!(
        (done.state, done.attempts),
        (WorkState::Done, 1),
        "{done:?}"
    );
    assert_eq!(
        app.answered.lock().unwrap().len(),
        1,
        "delivered exactly once"
    );
}

/// A call's outcome counts when its lease ran out but nobody took the item
/// since; not when another worker holds it, or its content changed.
async fn late_outcomes_count_unless_the_item_moved_on(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        "[producer.work]\naction = \"none\"\nmax_attempts = 2",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    change(&vendor, &keys(1..5), "new");
    keyframer(&store).run(&p, false).await.unwrap();
    // Every item claimed with a short lease that runs out before the outcome.
    let claimed_at = now_ms();
    let claims = store
        .claim_work("orders", "w1", 10, 50, claimed_at)
        .await
        .unwrap();
    assert_eq!(claims.len(), 4);
    // The leases run out: a reclaim after them returns every item.
    let expired = claimed_at + 51;
    assert_eq!(store.reclaim_expired_work(expired).await.unwrap(), 4);
    let by_key = |k: &str| claims.iter().find(|c| c.key == k).unwrap().clone();
    // ord-00001: reclaimed, nobody took it since: the late outcome counts.
    let c = by_key("ord-00001");
    assert!(store.complete_work(&c, "w1").await.unwrap());
    assert_eq!(
        store.work_item(c.id).await.unwrap().unwrap().state,
        WorkState::Done
    );
    // ord-00002: another worker holds it now: its outcome is that worker's to record.
    let c = by_key("ord-00002");
    let taken = store
        .claim_work("orders", "w2", 1, 60_000, expired)
        .await
        .unwrap();
    assert_eq!(taken[0].id, c.id);
    assert!(!store.complete_work(&c, "w1").await.unwrap());
    let item = store.work_item(c.id).await.unwrap().unwrap();
    assert_eq!(
        (item.state, item.locked_by.as_deref()),
        (WorkState::Running, Some("w2"))
    );
    assert!(store.complete_work(&taken[0], "w2").await.unwrap());
    // ord-00003: a keyframe refreshed it to newer content: still to deliver.
    let c = by_key("ord-00003");
    change(&vendor, &keys(3..4), "newer");
    keyframer(&store).run(&p, false).await.unwrap();
    assert!(!store.complete_work(&c, "w1").await.unwrap());
    let item = store.work_item(c.id).await.unwrap().unwrap();
    assert_eq!(item.state, WorkState::Pending);
    assert!(item.spec.contains("newer"));
    // ord-00004: the reclaim ran it out of attempts, but the call succeeded: done.
    let c = by_key("ord-00004");
    let again = store
        .claim_work("orders", "w1", 10, 50, expired)
        .await
        .unwrap();
    let c2 = again.into_iter().find(|w| w.id == c.id).unwrap();
    assert_eq!(c2.attempts, 2);
    assert!(store.reclaim_expired_work(expired + 51).await.unwrap() >= 1);
    assert_eq!(
        store.work_item(c.id).await.unwrap().unwrap().state,
        WorkState::Dead
    );
    assert!(
        !store.complete_work(&c, "w1").await.unwrap(),
        "an older claim of it is not its outcome"
    );
    assert!(store.complete_work(&c2, "w1").await.unwrap());
    assert_eq!(
        store.work_item(c.id).await.unwrap().unwrap().state,
        WorkState::Done
    );
}

/// `http` workers are a pool: one slow call does not hold back the others,
/// `concurrency` calls stay in flight, and stopping returns the call still
/// in flight to the queue at once.
async fn http_concurrency_is_a_pool(db: &TestDb) {
    let store = db.store().await;
    let (app, url) = AppStandIn::start(Answers::after(|_, key| {
        Duration::from_millis(if key == "ord-00000" { 4_000 } else { 150 })
    }))
    .await;
    let (vendor, addr) = Vendor::start(40).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        &format!("[producer.work]\naction = \"http\"\nurl = \"{url}\"\nconcurrency = 4"),
    );
    seed(&store, &p, &vendor.snapshot()).await;
    let drifted = keys(0..13);
    change(&vendor, &drifted, "paid");
    keyframer(&store).run(&p, false).await.unwrap();
    let slow = open_item(&store, "ord-00000").await;
    let (cancel, task) = run_workers(&store, &p, "pool");
    crate::support::wait_for("the 12 fast calls", 20, || async {
        app.answered.lock().unwrap().len() >= 12
    })
    .await;
    let calls = app.answered.lock().unwrap().clone();
    assert!(
        calls.iter().all(|(k, _, _)| k != "ord-00000"),
        "the fast calls waited for the slow one: {:?}",
        calls.iter().map(|c| &c.0).collect::<Vec<_>>()
    );
    assert_eq!(
        app.max_in_flight.load(Ordering::SeqCst),
        4,
        "concurrency calls in flight, never more"
    );
    for k in &drifted[1..] {
        crate::support::wait_for("fast items recorded done", 10, || async {
            latest_state(&store, k).await == Some(WorkState::Done)
        })
        .await;
    }
    // Stopping while the slow call runs puts its item back, due at once.
    assert_eq!(
        store.work_item(slow.id).await.unwrap().unwrap().state,
        WorkState::Running
    );
    stop(cancel, task).await;
    let released = store.work_item(slow.id).await.unwrap().unwrap();
    assert_eq!(released.state, WorkState::Pending, "{released:?}");
    assert!(released.run_at <= driftd::store::now_ms());
}

/// The state of an entity's newest item.
async fn latest_state(store: &driftd::store::Store, key: &str) -> Option<WorkState> {
    store
        .list_work(None, 1_000)
        .await
        .unwrap()
        .into_iter()
        .find(|w| w.key == key)
        .map(|w| w.state)
}

async fn driftd(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(crate::support::driftd_bin())
        .args(args)
        .env_remove("DRIFTD_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run driftd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file for the binary: this database, producer `orders` with `snapshot_url`.
fn config_file(dir: &std::path::Path, db: &TestDb, snapshot_url: &str) -> String {
    let path = dir.join("driftd.toml");
    std::fs::write(
        &path,
        format!("[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\nurl = \"{snapshot_url}\"\nitems = \"/data\"\ntimeout_secs = 5\n[producer.work]\naction = \"none\"\n", db.url),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// Retrying a dead item whose entity has a newer open item says which item
/// is in the way and what to do, once, instead of a constraint error.
async fn retrying_a_dead_item_names_the_open_one(db: &TestDb) {
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        "[producer.work]\naction = \"none\"",
    );
    seed(&store, &p, &vendor.snapshot()).await;
    change(&vendor, &keys(2..3), "paid");
    keyframer(&store).run(&p, false).await.unwrap();
    let first = store
        .claim_work("orders", "app-worker", 1, 60_000, now_ms())
        .await
        .unwrap()
        .remove(0);
    assert!(store
        .finish_work(first.id, "app-worker", WorkState::Dead, 0, Some("rejected"))
        .await
        .unwrap());
    keyframer(&store).run(&p, false).await.unwrap();
    let open = open_item(&store, "ord-00002").await;
    assert_ne!(open.id, first.id);
    let expected = format!(
        "work item {} not retried: entity orders/ord-00002 already has open item {}; cancel it first or let it finish",
        first.id, open.id
    );
    let err = store
        .set_work_state(first.id, WorkState::Pending)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), expected);

    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), db, &format!("http://{addr}/none"));
    let id = first.id.to_string();
    let (code, stdout, stderr) = driftd(&["work", "retry", "--config", &config, &id]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(stderr.matches(&expected).count(), 1, "said once: {stderr}");
    assert!(
        stderr.ends_with(&format!("error: {expected}\n")),
        "{stderr}"
    );
    assert!(!stderr.to_lowercase().contains("unique"), "{stderr}");
    let open_id = open.id.to_string();
    let (code, _, stderr) = driftd(&["work", "cancel", "--config", &config, &open_id]).await;
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, stderr) = driftd(&["work", "retry", "--config", &config, &id]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, format!("work item {id} is pending again\n"));
}

/// Credentials and query strings in configured URLs appear nowhere: not in
/// a work item's error (what `work list` shows and the log says), not in a
/// keyframe's error, not in the probe; and the cause is kept.
async fn url_credentials_stay_out_of_errors(db: &TestDb) {
    let store = db.store().await;
    let closed = crate::support::free_port();
    let secret_url = |path: &str| format!("http://bob:hunter2@127.0.0.1:{closed}/{path}?token=abc");
    let shown = |path: &str| format!("http://127.0.0.1:{closed}/{path}");
    let no_secret = |text: &str| {
        for secret in ["bob", "hunter2", "token", "abc"] {
            assert!(!text.contains(secret), "{secret:?} in {text}");
        }
    };
    let (vendor, addr) = Vendor::start(20).await;
    let p = producer(
        &crate::support::snapshot_toml("none", addr),
        &format!(
            "[producer.work]\naction = \"http\"\nurl = \"{}\"\nmax_attempts = 1",
            secret_url("work")
        ),
    );
    seed(&store, &p, &vendor.snapshot()).await;
    change(&vendor, &keys(4..5), "paid");
    keyframer(&store).run(&p, false).await.unwrap();
    let item = open_item(&store, "ord-00004").await;
    let dead = until_final(&store, &p, item.id).await;
    assert_eq!(dead.state, WorkState::Dead);
    let err = dead.last_error.unwrap_or_default();
    assert!(
        err.starts_with(&format!("POST {} failed: ", shown("work"))),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    no_secret(&err);

    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), db, &secret_url("orders"));
    let (code, stdout, stderr) = driftd(&["work", "list", "--config", &config]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("id  state"), "{stdout}");
    assert!(
        stdout.lines().next().unwrap().ends_with("last error")
            && stdout.contains(&format!("  POST {} failed", shown("work"))),
        "{stdout}"
    );
    no_secret(&stdout);

    // A keyframe against the same kind of URL.
    let (code, stdout, stderr) = driftd(&["keyframe", "orders", "--config", &config]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    let out = format!("{stdout}{stderr}");
    assert!(out.contains(&shown("orders")), "{out}");
    assert!(out.to_lowercase().contains("connection refused"), "{out}");
    no_secret(&out);
    // The probe.
    let (code, stdout, stderr) = driftd(&["check", "--probe", "--config", &config]).await;
    assert_eq!(code, 64, "{stdout}{stderr}");
    let out = format!("{stdout}{stderr}");
    assert!(
        out.contains(&format!("GET {} failed", shown("orders"))),
        "{out}"
    );
    assert!(out.to_lowercase().contains("connection refused"), "{out}");
    no_secret(&out);
}

crate::on_both_backends!(
    retrying_a_dead_item_names_the_open_one,
    url_credentials_stay_out_of_errors,
    keyframes_keep_the_history_of_open_work,
    a_failing_application_reaches_dead_despite_keyframes,
    a_call_longer_than_the_lease_is_delivered_once,
    late_outcomes_count_unless_the_item_moved_on,
    http_concurrency_is_a_pool,
    apply_batches_are_all_or_nothing,
    http_action_retries_with_one_idempotency_key,
    http_client_errors_are_dead_at_once,
    expired_leases_are_retried,
    convergence_over_random_loss,
);
