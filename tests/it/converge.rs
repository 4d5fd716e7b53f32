//! Every action closes its drift: corrections carried out over `http`, by the application's own workers through the README's SQL, by `driftd work done` and by `POST /v1/work/{id}/done` leave the mirror holding the producer's record, so later keyframes find no drift and nothing is sent twice.

use std::sync::atomic::Ordering;

use driftd::config::Config;
use driftd::state::WorkState;
use serde_json::{json, Value};

use crate::keyframe::seed;
use crate::support::Vendor;
use crate::support::{wait_for, Answers, AppStandIn, Daemon, TestDb};

const ADMIN: &str = "adm1n-t0ken";
const SECRET: &str = "conv-s3cret";

fn config(db: &TestDb, vendor: std::net::SocketAddr, work: &str) -> Config {
    let text = format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n[database]\nurl = \"{}\"\n\
         [[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\n{}\n\
         [producer.webhook]\nscheme = \"hmac-sha256\"\nsecret = \"{SECRET}\"\nheader = \"X-Sig\"\nkey = \"/id\"\n\
         [producer.work]\n{work}\n",
        db.url,
        crate::support::snapshot_toml("cursor", vendor),
    );
    crate::support::config(&text)
}

/// A sample of `name{producer="orders"}` from the daemon's /metrics.
async fn metric(client: &reqwest::Client, d: &Daemon, name: &str) -> f64 {
    let text = client
        .get(format!("{}/metrics", d.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("{name}{{producer=\"orders\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Three keyframes that find no drift and emit nothing.
async fn quiet_keyframes(client: &reqwest::Client, d: &Daemon) {
    for n in 0..3 {
        let run = d.keyframe(client, ADMIN).await;
        assert_eq!(run["state"], json!("ok"), "keyframe {n}: {run}");
        assert_eq!(
            (
                run["missing"].as_u64(),
                run["extra"].as_u64(),
                run["changed"].as_u64(),
                run["work_emitted"].as_u64()
            ),
            (Some(0), Some(0), Some(0), Some(0)),
            "keyframe {n} after the corrections: {run}"
        );
    }
}

/// Seeds the mirror equal to the vendor, runs a first keyframe (no drift),
/// then edits `lost + delivered` records at the vendor and sends webhooks
/// for the `delivered` ones only.
async fn drift_with_some_deltas(
    db: &TestDb,
    vendor: &Vendor,
    d: &Daemon,
    client: &reqwest::Client,
    lost: usize,
    delivered: usize,
) {
    let store = db.store().await;
    seed(&store, &d.config.producers[0], &vendor.snapshot()).await;
    store.close().await;
    let first = d.keyframe(client, ADMIN).await;
    assert_eq!(first["state"], json!("ok"), "{first}");
    assert_eq!(first["work_emitted"], json!(0), "{first}");
    let edited: Vec<Value> = {
        let mut r = vendor.records.lock().unwrap();
        r.values_mut()
            .take(lost + delivered)
            .map(|doc| {
                doc["status"] = json!("edited-upstream");
                doc.clone()
            })
            .collect()
    };
    for doc in &edited[lost..] {
        d.webhook(client, doc).await;
    }
}

/// `http`: k lost edits are posted once each; three later keyframes find
/// nothing and post nothing; drift_open is 0 and the loss ratio is k / (k + delivered).
async fn http_corrections_close_their_drift(db: &TestDb) {
    let (vendor, addr) = Vendor::start(40).await;
    let (app, url) = AppStandIn::start(Answers::default()).await;
    let d = Daemon::start(config(
        db,
        addr,
        &format!("action = \"http\"\nurl = \"{url}\"\nbackoff_base_ms = 10\nbackoff_max_ms = 100"),
    ))
    .await;
    let client = reqwest::Client::new();
    let (k, delivered) = (6, 4);
    drift_with_some_deltas(db, &vendor, &d, &client, k, delivered).await;

    let run = d.keyframe(&client, ADMIN).await;
    assert_eq!(
        (run["changed"].as_u64(), run["work_emitted"].as_u64()),
        (Some(k as u64), Some(k as u64)),
        "{run}"
    );
    let ratio = metric(&client, &d, "driftd_delta_loss_ratio").await;
    assert!(
        (ratio - k as f64 / (k + delivered) as f64).abs() < 1e-9,
        "loss ratio counts only the edits no delta delivered: {ratio}"
    );
    let store = db.store().await;
    wait_for(
        "the application acknowledged every correction",
        30,
        || async {
            store
                .work_counts()
                .await
                .unwrap()
                .get(&WorkState::Done)
                .copied()
                .unwrap_or(0)
                == k as i64
        },
    )
    .await;
    quiet_keyframes(&client, &d).await;
    assert_eq!(
        app.calls.load(Ordering::SeqCst),
        k,
        "exactly one POST per edit"
    );
    let mirror = store.entities("orders").await.unwrap();
    for e in &mirror {
        assert_eq!(
            Some(e.doc.as_ref().unwrap()),
            vendor.snapshot().get(&e.key),
            "{}",
            e.key
        );
    }
    assert_eq!(metric(&client, &d, "driftd_delta_loss_ratio").await, 0.0);
    wait_for("drift_open back at 0", 10, || async {
        metric(&client, &d, "driftd_drift_open").await == 0.0
    })
    .await;
    // The corrections are in the change feed, as corrections.
    let feed = store
        .changes_after("orders", 0, 10_000, false)
        .await
        .unwrap();
    let corrections = feed
        .iter()
        .filter(|c| c.source == driftd::entity::Source::Keyframe)
        .count();
    assert_eq!(corrections, k);
    store.close().await;
}

/// `none`: items finished by `driftd work done` and by `POST /v1/work/{id}/done`
/// close their drift; later keyframes emit nothing for them.
async fn none_items_finished_by_hand_close_their_drift(db: &TestDb) {
    let (vendor, addr) = Vendor::start(40).await;
    let d = Daemon::start(config(db, addr, "action = \"none\"")).await;
    let client = reqwest::Client::new();
    let k = 4;
    drift_with_some_deltas(db, &vendor, &d, &client, k, 2).await;
    let run = d.keyframe(&client, ADMIN).await;
    assert_eq!(run["work_emitted"].as_u64(), Some(k as u64), "{run}");
    let store = db.store().await;
    let items = store.list_work(None, 100).await.unwrap();
    assert_eq!(items.len(), k);

    // Two through the command line, two over HTTP.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("driftd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/x\"\n[producer.work]\naction = \"none\"\n",
            db.url
        ),
    )
    .unwrap();
    for item in &items[..2] {
        let out = tokio::process::Command::new(crate::support::driftd_bin())
            .args([
                "work",
                "done",
                "--config",
                cfg.to_str().unwrap(),
                &item.id.to_string(),
            ])
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for item in &items[2..] {
        let resp = client
            .post(format!("{}/v1/work/{}/done", d.base, item.id))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    }
    // Finishing one twice says so in words.
    let resp = client
        .post(format!("{}/v1/work/{}/done", d.base, items[2].id))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        format!("work item {} is already done", items[2].id),
        "{body}"
    );
    // An unknown item is a 404.
    let resp = client
        .post(format!("{}/v1/work/999999/done", d.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    quiet_keyframes(&client, &d).await;
    assert_eq!(
        store.list_work(None, 100).await.unwrap().len(),
        k,
        "nothing emitted twice"
    );
    store.close().await;
}

crate::on_both_backends!(
    http_corrections_close_their_drift,
    none_items_finished_by_hand_close_their_drift,
);

crate::limited_test! {
/// The README's SQL for an application's own worker (PostgreSQL): items
/// claimed and finished with it close their drift, carried out by the
/// daemon within a second, and later keyframes emit nothing.
async fn none_items_finished_with_the_readme_sql_close_their_drift() {
    let db = TestDb::postgres().await;
    let readme = std::fs::read_to_string(crate::support::repo_root().join("README.md")).unwrap();
    let block = readme
        .split("```sql")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("README has the worker SQL");
    let statements: Vec<&str> = block
        .split(';')
        .map(str::trim)
        .filter(|s| {
            !s.lines()
                .all(|l| l.trim().is_empty() || l.trim().starts_with("--"))
        })
        .collect();
    let find = |what: &str| {
        *statements
            .iter()
            .find(|s| s.contains(what))
            .unwrap_or_else(|| panic!("README SQL has a statement with {what:?}"))
    };
    let claim = find("FOR UPDATE SKIP LOCKED");
    let done = find("state = 'done'");
    let retry = find("SET state = 'pending'");
    let dead = find("SET state = 'dead'");

    let (vendor, addr) = Vendor::start(30).await;
    let d = Daemon::start(config(&db, addr, "action = \"none\"")).await;
    let client = reqwest::Client::new();
    let k = 3;
    drift_with_some_deltas(&db, &vendor, &d, &client, k, 1).await;
    let run = d.keyframe(&client, ADMIN).await;
    assert_eq!(run["work_emitted"].as_u64(), Some(k as u64), "{run}");

    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // The failure statements run, and touch only an item the worker holds.
    for statement in [retry, dead] {
        let none = sqlx::query(statement)
            .bind(-1_i64)
            .bind("not held")
            .execute(&pool)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        assert_eq!(none.rows_affected(), 0, "{statement}");
    }
    for _ in 0..k {
        let row: (i64, sqlx::types::Json<serde_json::Value>, String) =
            sqlx::query_as(claim).fetch_one(&pool).await.unwrap();
        // `spec` is jsonb: the application reads the record as JSON.
        assert_eq!(row.1["action"], "none", "{:?}", row.1);
        assert!(row.1["record"].is_object(), "{:?}", row.1);
        let finished = sqlx::query(done).bind(row.0).execute(&pool).await.unwrap();
        assert_eq!(finished.rows_affected(), 1);
    }
    let store = db.store().await;
    wait_for(
        "the daemon wrote the finished items into the mirror",
        10,
        || async {
            store
                .entities("orders")
                .await
                .unwrap()
                .iter()
                .all(|e| Some(e.doc.as_ref().unwrap()) == vendor.snapshot().get(&e.key))
        },
    )
    .await;
    quiet_keyframes(&client, &d).await;
    pool.close().await;
    store.close().await;
}
}
