//! `driftd sync` through the real binary on both backends: the mirror equals the loopback vendor after it exits 0 (`apply` and `http`), `none` items are left open, a guarded keyframe exits 3, a dead item exits 1, SIGTERM leaves runs and items recorded, and after a SIGKILL the next sync takes the items back at once.

use std::time::Duration;

use serde_json::Value;

use crate::cli::run_async;
use crate::support::{
    differing, record, snapshot_toml, Answers, AppStandIn, Fault, TestDb, Vendor, APP_SECRET,
};

/// A config with one producer `orders` against `vendor` and `[producer.work]` as given.
fn write_config(
    dir: &std::path::Path,
    db: &TestDb,
    vendor: std::net::SocketAddr,
    work: &str,
) -> String {
    let path = dir.join("driftd.toml");
    std::fs::write(
        &path,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n\
             [producer.snapshot]\n{}\n[producer.work]\n{work}\n",
            db.url,
            snapshot_toml("none", vendor)
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// `driftd sync --json`: (exit code, the report, stderr).
async fn sync_json(cfg: &str) -> (i32, Value, String) {
    let (code, stdout, stderr) = run_async(&["sync", "--config", cfg, "orders", "--json"]).await;
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not a JSON report ({e}): {stdout}\n{stderr}"));
    (code, report, stderr)
}

/// Panics unless the mirror holds exactly the vendor's records.
async fn assert_mirror_equals_vendor(db: &TestDb, vendor: &Vendor) {
    let store = db.store().await;
    let differ = differing(&store, "orders", &vendor.records).await;
    let live = store
        .entities("orders")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.doc.is_some())
        .count();
    store.close().await;
    assert!(differ.is_empty(), "differing from the vendor: {differ:?}");
    assert_eq!(live, vendor.records.lock().unwrap().len(), "no extra rows");
}

/// Changes three records, deletes two and adds two at the vendor: 7 drifts.
fn churn(vendor: &Vendor, n: usize) {
    let mut records = vendor.records.lock().unwrap();
    for i in 0..3 {
        let (k, d) = record(i, 1);
        records.insert(k, d);
    }
    for i in 3..5 {
        records.remove(&record(i, 0).0);
    }
    for i in n..n + 2 {
        let (k, d) = record(i, 0);
        records.insert(k, d);
    }
}

async fn apply_sync_brings_the_mirror_to_the_vendor(db: &TestDb) {
    let (vendor, addr) = Vendor::start(40).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), db, addr, "action = \"apply\"");
    if db.url.starts_with("sqlite:") {
        // A scheduler's mistyped path creates nothing.
        let (code, stdout, stderr) = run_async(&["sync", "--config", &cfg, "orders"]).await;
        assert_eq!(code, 1, "{stdout}{stderr}");
        assert!(
            stderr.contains("does not exist; run `driftd migrate`"),
            "{stderr}"
        );
        assert!(!dir.path().join("driftd.db").exists());
        let (code, _, stderr) = run_async(&["migrate", "--config", &cfg]).await;
        assert_eq!(code, 0, "{stderr}");
    }
    // PostgreSQL: an existing database without tables is migrated, as `run` does.

    let (code, stdout, stderr) = run_async(&["sync", "--config", &cfg, "orders"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("first sync: 40 records loaded"), "{stdout}");
    assert!(
        stdout.contains("work (apply): 0 items  corrected 0  failed 0  cancelled 0  left open 0"),
        "{stdout}"
    );
    assert_mirror_equals_vendor(db, &vendor).await;

    churn(&vendor, 40);
    let (code, report, stderr) = sync_json(&cfg).await;
    assert_eq!(code, 0, "{report}\n{stderr}");
    let k = &report["keyframe"];
    assert_eq!(
        (
            k["state"].as_str(),
            k["changed"].as_u64(),
            k["extra"].as_u64(),
            k["missing"].as_u64()
        ),
        (Some("ok"), Some(3), Some(2), Some(2)),
        "{report}"
    );
    assert_eq!(
        k["causes"]
            .as_object()
            .map(|c| c.values().filter_map(Value::as_u64).sum::<u64>()),
        Some(7),
        "{report}"
    );
    assert_eq!(
        report["work"],
        serde_json::json!({"items": 7, "corrected": 7, "failed": 0, "cancelled": 0, "left_open": 0, "ended": "closed"}),
        "{report}"
    );
    assert_mirror_equals_vendor(db, &vendor).await;

    // The vendor returns nothing: guarded, exit 3, nothing carried out.
    *vendor.fault.lock().unwrap() = Fault::Empty;
    let (code, stdout, _) = run_async(&["sync", "--config", &cfg, "orders"]).await;
    assert_eq!(code, 3, "{stdout}");
    assert!(
        stdout.contains("guarded") && stdout.contains("driftd approve"),
        "{stdout}"
    );
    *vendor.fault.lock().unwrap() = Fault::None;
    assert_mirror_equals_vendor(db, &vendor).await;
}

async fn http_sync_sends_the_work_and_reports_what_failed(db: &TestDb) {
    let (vendor, addr) = Vendor::start(20).await;
    // The 21st call is refused (400: dead at once); every other call succeeds.
    let mut script = vec![200; 20];
    script.push(400);
    let (app, url) = AppStandIn::start(Answers::script(script)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        db,
        addr,
        &format!("action = \"http\"\nurl = \"{url}\"\nsecret = \"{APP_SECRET}\""),
    );
    assert_eq!(run_async(&["migrate", "--config", &cfg]).await.0, 0);

    // An `http` producer's application sees every record: 20 items, all sent.
    let (code, report, stderr) = sync_json(&cfg).await;
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert_eq!(report["work"]["items"], 20, "{report}");
    assert_eq!(report["work"]["corrected"], 20, "{report}");
    assert_eq!(app.calls.load(std::sync::atomic::Ordering::SeqCst), 20);
    assert!(app.signed.lock().unwrap().iter().all(|s| *s));
    assert_mirror_equals_vendor(db, &vendor).await;

    // Two changes; the application refuses one of them.
    {
        let mut records = vendor.records.lock().unwrap();
        for i in 0..2 {
            let (k, d) = record(i, 1);
            records.insert(k, d);
        }
    }
    let (code, stdout, stderr) = run_async(&["sync", "--config", &cfg, "orders"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("work (http): 2 items  corrected 1  failed 1  cancelled 0  left open 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("`driftd work list --state dead`"),
        "{stdout}"
    );
    let store = db.store().await;
    assert_eq!(differing(&store, "orders", &vendor.records).await.len(), 1);
    store.close().await;
}

async fn none_sync_leaves_the_items_to_the_application(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(5).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), db, addr, "action = \"none\"");
    assert_eq!(run_async(&["migrate", "--config", &cfg]).await.0, 0);
    let (code, stdout, stderr) = run_async(&["sync", "--config", &cfg, "orders"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("work (none): 5 items  corrected 0  failed 0  cancelled 0  left open 5"),
        "{stdout}"
    );
    assert!(
        stdout.contains("left for your application's workers"),
        "{stdout}"
    );
    let store = db.store().await;
    let pending = store
        .list_work(Some(driftd::state::WorkState::Pending), 100)
        .await
        .unwrap();
    store.close().await;
    assert_eq!(pending.len(), 5);
}

/// Writes an `http` config for `app` (six items, four calls at a time,
/// ten-minute leases), migrates, and starts `driftd sync --json`; returns
/// the config's path and the process once four calls are in flight.
async fn sync_with_four_calls_in_flight(
    db: &TestDb,
    dir: &std::path::Path,
    vendor: std::net::SocketAddr,
    app: &AppStandIn,
    url: &str,
) -> (String, tokio::process::Child) {
    let cfg = write_config(
        dir,
        db,
        vendor,
        &format!("action = \"http\"\nurl = \"{url}\"\ntimeout_secs = 120\nlease_secs = 600\nconcurrency = 4"),
    );
    assert_eq!(run_async(&["migrate", "--config", &cfg]).await.0, 0);
    let child = tokio::process::Command::new(crate::support::driftd_bin())
        .args(["sync", "--config", &cfg, "orders", "--json"])
        .env_remove("DRIFTD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::support::eventually("four calls in flight", || {
        let in_flight = app.in_flight.clone();
        async move { (in_flight.load(std::sync::atomic::Ordering::SeqCst) == 4).then_some(()) }
    })
    .await;
    (cfg, child)
}

/// SIGTERM while the application holds the calls: the process exits 1,
/// the keyframe run stays recorded, and every item is back in the queue
/// (pending, no lease) instead of waiting for its lease to expire.
async fn sigterm_during_the_work_returns_the_items(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(6).await;
    let (app, url) = AppStandIn::start(Answers::after(|_, _| Duration::from_secs(60))).await;
    let dir = tempfile::tempdir().unwrap();
    let (_cfg, child) = sync_with_four_calls_in_flight(db, dir.path(), addr, &app, &url).await;
    crate::support::signal(child.id().unwrap(), "TERM");
    let out = child.wait_with_output().await.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["keyframe"]["state"], "ok", "{report}");
    assert_eq!(report["work"]["ended"], "interrupted", "{report}");
    assert_eq!(report["work"]["left_open"], 6, "{report}");
    let store = db.store().await;
    let items = store.list_work(None, 100).await.unwrap();
    store.close().await;
    assert_eq!(items.len(), 6);
    for w in &items {
        assert_eq!(w.state, driftd::state::WorkState::Pending, "{w:?}");
        assert_eq!(w.locked_by, None, "{w:?}");
    }
}

/// SIGKILL while the application holds the calls: the process records
/// nothing on its way out, yet the next sync on this machine sees it gone,
/// takes its four items back at once (not when their ten-minute leases
/// expire) and closes all six.
async fn sigkill_during_the_work_leaves_the_items_to_the_next_sync(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(6).await;
    // The killed process's four calls hang; every later one answers at once.
    let (app, url) = AppStandIn::start(Answers::after(|n, _| {
        Duration::from_secs(if n < 4 { 60 } else { 0 })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, child) = sync_with_four_calls_in_flight(db, dir.path(), addr, &app, &url).await;
    crate::support::signal(child.id().unwrap(), "KILL");
    child.wait_with_output().await.unwrap();
    let store = db.store().await;
    let running = store
        .list_work(Some(driftd::state::WorkState::Running), 100)
        .await
        .unwrap();
    assert_eq!(running.len(), 4, "{running:?}");

    let (code, report, stderr) = sync_json(&cfg).await;
    assert_eq!(code, 0, "{report}\n{stderr}");
    assert_eq!(report["work"]["ended"], "closed", "{report}");
    let items = store.list_work(None, 100).await.unwrap();
    store.close().await;
    assert_eq!(items.len(), 6);
    for w in &items {
        assert_eq!(w.state, driftd::state::WorkState::Done, "{w:?}");
    }
    // The four taken over were called again (same Idempotency-Key), the
    // other two once.
    assert_eq!(app.calls.load(std::sync::atomic::Ordering::SeqCst), 10);
}

/// SIGTERM during the keyframe's pull: the run is recorded `failed`, its
/// lease released (the next sync runs at once), and nothing is carried out.
async fn sigterm_during_the_keyframe_records_it_failed(db: &TestDb) {
    let (vendor, addr) = Vendor::start(6).await;
    vendor
        .delay_ms
        .store(60_000, std::sync::atomic::Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), db, addr, "action = \"apply\"");
    assert_eq!(run_async(&["migrate", "--config", &cfg]).await.0, 0);
    let child = tokio::process::Command::new(crate::support::driftd_bin())
        .args(["sync", "--config", &cfg, "orders"])
        .env_remove("DRIFTD_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let store = db.store().await;
    crate::support::eventually("the run under way", || {
        let store = store.clone();
        async move {
            let runs = store.runs("orders", 1).await.unwrap();
            runs.first()
                .filter(|r| r.state == driftd::state::RunState::Running)
                .map(|_| ())
        }
    })
    .await;
    // A second sync meanwhile finds the keyframe running and does nothing.
    let (code, stdout, stderr) = run_async(&["sync", "--config", &cfg, "orders"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert_eq!(
        stderr.lines().last(),
        Some("error: a keyframe of producer \"orders\" is already running"),
        "{stderr}"
    );
    assert_eq!(stdout, "");
    crate::support::signal(pid, "TERM");
    let out = child.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("failed") && stdout.contains("nothing was emitted"),
        "{stdout}"
    );
    let run = store.runs("orders", 1).await.unwrap().remove(0);
    store.close().await;
    assert_eq!(run.state, driftd::state::RunState::Failed, "{run:?}");
    // The lease is free: the next sync runs now and brings the mirror over.
    vendor
        .delay_ms
        .store(0, std::sync::atomic::Ordering::Relaxed);
    let (code, stdout, stderr) = run_async(&["sync", "--config", &cfg, "orders"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_mirror_equals_vendor(db, &vendor).await;
}

crate::on_both_backends!(
    apply_sync_brings_the_mirror_to_the_vendor,
    http_sync_sends_the_work_and_reports_what_failed,
    none_sync_leaves_the_items_to_the_application,
    sigterm_during_the_work_returns_the_items,
    sigkill_during_the_work_leaves_the_items_to_the_next_sync,
    sigterm_during_the_keyframe_records_it_failed,
);
