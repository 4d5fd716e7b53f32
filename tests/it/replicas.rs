//! Several `driftd run` processes on one PostgreSQL database: each work item is carried out once, one keyframe per producer at a time, one run per schedule tick, and a killed worker's item is finished by the other.

use std::collections::BTreeMap;
use std::time::Duration;

use driftd::state::RunState;
use serde_json::Value;

use crate::keyframe::{producer, seed};
use crate::support::Vendor;
use crate::support::{config, Answers, AppStandIn, Daemon, DaemonProcess, TestDb};

fn spawn_daemon(
    dir: &std::path::Path,
    name: &str,
    db_url: &str,
    snapshot: &str,
    work: &str,
) -> DaemonProcess {
    spawn_daemon_with(dir, name, db_url, snapshot, work, "* * * * * *")
}

fn spawn_daemon_with(
    dir: &std::path::Path,
    name: &str,
    db_url: &str,
    snapshot: &str,
    work: &str,
    schedule: &str,
) -> DaemonProcess {
    let config = |listen: &str| {
        format!(
            "[server]\nlisten = \"{listen}\"\n[database]\nurl = \"{db_url}\"\nmax_connections = 4\n\
             [[producer]]\nname = \"orders\"\nschedule = \"{schedule}\"\n[producer.snapshot]\n{snapshot}\n\
             [producer.work]\n{work}\n"
        )
    };
    DaemonProcess::spawn(dir, name, config, |_| {})
}

crate::limited_test! {
async fn two_daemons_share_the_queue_and_the_keyframe_lease() {
    let db = TestDb::postgres().await;
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(600).await;
    let snapshot = crate::support::snapshot_toml("cursor", addr);
    let p = producer(&snapshot, "");
    seed(&store, &p, &vendor.snapshot()).await;
    {
        let mut r = vendor.records.lock().unwrap();
        for (_, d) in r.iter_mut().step_by(10) {
            d["status"] = Value::String("changed-upstream".into());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let work = "action = \"apply\"\nconcurrency = 4\nbackoff_base_ms = 10\nbackoff_max_ms = 100";
    let _a = spawn_daemon(dir.path(), "a", &db.url, &snapshot, work);
    let _b = spawn_daemon(dir.path(), "b", &db.url, &snapshot, work);

    // Converged: the local rows equal the vendor's and nothing is open.
    let expected = vendor.snapshot();
    crate::support::wait_for("both daemons to correct the drift", 60, || {
        let store = store.clone();
        let expected = expected.clone();
        async move {
            let local: BTreeMap<String, Value> = store
                .entities("orders")
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.key, e.doc.unwrap()))
                .collect();
            let open = store.open_work_by_producer().await.unwrap();
            local == expected && open.get("orders").copied().unwrap_or(0) == 0
        }
    })
    .await;
    // Let several scheduled keyframes contend for the lease.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let items = store.list_work(None, 1_000).await.unwrap();
    assert_eq!(items.len(), 60, "one item per drifted entity");
    for w in &items {
        assert_eq!(
            w.attempts, 1,
            "item {} was claimed more than once: {w:?}",
            w.id
        );
    }
    let corrections: Vec<(String, i64)> =
        driftd::store::sql::query_scalar("SELECT key, COUNT(*) FROM changes WHERE source = 'keyframe' GROUP BY key")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(corrections.len(), 60);
    assert!(
        corrections.iter().all(|(_, n)| *n == 1),
        "each correction happened once: {corrections:?}"
    );

    let mut runs = store.runs("orders", 1_000).await.unwrap();
    runs.sort_by_key(|r| r.started_at);
    assert!(runs.len() >= 3, "keyframes ran: {}", runs.len());
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(a.state != RunState::Running, "{a:?}");
        assert!(
            b.started_at >= a.finished_at.unwrap(),
            "keyframes {} and {} overlapped",
            a.id,
            b.id
        );
    }
}
}

crate::limited_test! {
/// Two replicas on a `* * * * * *` schedule, started at different phases of
/// the second: every tick is served by one run, fired on the whole second.
async fn one_scheduled_tick_is_one_run_across_replicas() {
    use std::collections::BTreeSet;

    let db = TestDb::postgres().await;
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(50).await;
    let snapshot = crate::support::snapshot_toml("none", addr);
    seed(&store, &producer(&snapshot, ""), &vendor.snapshot()).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{}\"\nmax_connections = 4\n\
         [[producer]]\nname = \"orders\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\n{snapshot}\n",
        db.url
    );
    let window = std::time::Instant::now();
    let mut replicas = Vec::new();
    for i in 0..2 {
        if i > 0 {
            // Not waiting for anything: the second replica starts 0.4 s into a second.
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        replicas.push(Daemon::start(config(&text)).await);
    }
    crate::support::wait_for("six scheduled keyframes", 30, || {
        let store = store.clone();
        async move { store.runs("orders", 100).await.unwrap().len() >= 6 }
    })
    .await;
    for replica in replicas {
        replica.stop().await;
    }
    let seconds = window.elapsed().as_secs() as usize;

    let runs = store.runs("orders", 1_000).await.unwrap();
    let ticks: BTreeSet<i64> = runs
        .iter()
        .map(|r| r.scheduled_for.expect("a scheduled run records its tick"))
        .collect();
    assert_eq!(ticks.len(), runs.len(), "no tick served twice: {runs:?}");
    for r in &runs {
        let tick = r.scheduled_for.unwrap();
        assert_eq!(tick % 1_000, 0, "ticks are whole seconds: {r:?}");
        assert!(r.started_at >= tick, "{r:?}");
    }
    assert!(
        runs.len() <= seconds + 1,
        "{} runs in {seconds} s of a once-a-second schedule",
        runs.len()
    );
}
}

crate::limited_test! {
async fn a_worker_killed_mid_item_is_finished_by_another_once() {


    use std::sync::atomic::Ordering;


    // The application: the first call hangs (its worker will be killed mid-call);
    // later calls succeed. Effects are keyed by Idempotency-Key, as the README asks.
    // The first call hangs past its lease; every later one answers at once.
    let (app, app_url) = AppStandIn::start(Answers::after(|n, _| {
        Duration::from_secs(if n == 0 { 60 } else { 0 })
    }))
    .await;

    // One drifted entity and its work item, emitted before any daemon starts.
    let db = TestDb::postgres().await;
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(50).await;
    let snapshot = crate::support::snapshot_toml("none", addr);
    // The lease outlasts a call (as `driftd check` requires) and is renewed
    // while A's call hangs; A is killed long before its call times out, and
    // its lease would hold the item for five minutes.
    let work = format!(
        "action = \"http\"\nurl = \"{app_url}\"\ntimeout_secs = 100\nlease_secs = 300\nbackoff_base_ms = 10\nbackoff_max_ms = 100"
    );
    let p = producer(&snapshot, &format!("[producer.work]\n{work}"));
    seed(&store, &p, &vendor.snapshot()).await;
    vendor.records.lock().unwrap().get_mut("ord-00004").unwrap()["status"] =
        Value::String("changed-upstream".into());
    let s = crate::keyframe::keyframer(&store)
        .run(&p, false)
        .await
        .unwrap();
    assert_eq!(s.work_emitted, 1, "{s:?}");
    let item = store.list_work(None, 10).await.unwrap().remove(0);

    // Daemon A claims the item and hangs in the application call; then it is SIGKILLed.
    let dir = tempfile::tempdir().unwrap();
    let yearly = "0 0 0 1 1 *";
    let mut a = spawn_daemon_with(dir.path(), "a", &db.url, &snapshot, &work, yearly);
    crate::support::wait_for("daemon A to call the application", 30, || {
        let app = app.clone();
        async move { app.calls.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    let running = store.work_item(item.id).await.unwrap().unwrap();
    assert_eq!(running.state, driftd::state::WorkState::Running);
    a.kill();

    // Daemon B, on the same machine, sees that A's process is gone and takes
    // the item over at once (not when A's lease expires), and finishes it.
    let _b = spawn_daemon_with(dir.path(), "b", &db.url, &snapshot, &work, yearly);
    crate::support::wait_for("daemon B to take the item over and finish it", 60, || {
        let store = store.clone();
        async move {
            store.work_item(item.id).await.unwrap().unwrap().state == driftd::state::WorkState::Done
        }
    })
    .await;
    let done = store.work_item(item.id).await.unwrap().unwrap();
    assert_eq!(done.attempts, 2, "{done:?}");
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
    let keys = app.keys.lock().unwrap().clone();
    assert_eq!(
        keys,
        vec![done.dedup_key.clone(); 2],
        "both attempts carry one Idempotency-Key"
    );
    assert_eq!(
        app.effects.lock().unwrap().len(),
        1,
        "the effect happened once"
    );
}
}
