//! The application's API end to end on both backends: the change feed (long poll and Server-Sent Events) resumed after random disconnects delivers every change once and in order; the read API; the read token.

use std::collections::BTreeMap;
use std::time::Duration;

use driftd::config::Config;
use driftd::state::WorkState;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::support::Vendor;
use crate::support::{get_json, wait_for, Daemon, TestDb};

const READ: &str = "r3ad-t0ken";
const ADMIN: &str = "adm1n-t0ken";
const SECRET: &str = "feed-s3cret";

fn config(db: &TestDb, vendor: std::net::SocketAddr, read_token: bool) -> Config {
    let read = if read_token {
        format!("read_token = \"{READ}\"\n")
    } else {
        String::new()
    };
    let text = format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n{read}[database]\nurl = \"{}\"\n\
         [[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\nmax_drift_ratio = 1.0\n[producer.snapshot]\n{}\n\
         [producer.webhook]\nscheme = \"hmac-sha256\"\nsecret = \"{SECRET}\"\nheader = \"X-Sig\"\nkey = \"/id\"\nversion = \"/rev\"\n\
         [producer.work]\naction = \"apply\"\nbackoff_base_ms = 10\nbackoff_max_ms = 100\n",
        db.url,
        crate::support::snapshot_toml("cursor", vendor),
    );
    crate::support::config(&text)
}

/// `(seq, key, op, hash)` of every row of the producer's `changes` log.
async fn log_of(db: &TestDb) -> Vec<(i64, String, String, Option<String>)> {
    let store = db.store().await;
    let rows = store
        .changes_after("orders", 0, 1_000_000, false)
        .await
        .unwrap();
    store.close().await;
    rows.into_iter()
        .map(|c| (c.seq, c.key, c.op, c.hash))
        .collect()
}

fn seen(c: &Value) -> (i64, String, String, Option<String>) {
    (
        c["seq"].as_i64().unwrap(),
        c["key"].as_str().unwrap().to_string(),
        c["op"].as_str().unwrap().to_string(),
        c["hash"].as_str().map(str::to_string),
    )
}

/// Reads Server-Sent Events from `after` until `stop_after` events or the
/// stream's end, then hangs up. Returns the changes received.
async fn read_events(
    client: &reqwest::Client,
    base: &str,
    last_event_id: i64,
    stop_after: usize,
) -> Vec<Value> {
    use futures::StreamExt;
    let resp = client
        .get(format!("{base}/v1/changes?producer=orders&limit=7"))
        .bearer_auth(READ)
        .header("Accept", "text/event-stream")
        .header("Last-Event-ID", last_event_id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < stop_after {
        let chunk = match tokio::time::timeout(Duration::from_millis(300), body.next()).await {
            Ok(Some(Ok(c))) => c,
            // Caught up (nothing for a while) or the stream ended: hang up.
            _ => break,
        };
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut data = None;
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<i64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                assert_eq!(data["seq"].as_i64(), Some(id), "id: is the position");
                out.push(data);
            }
        }
    }
    out
}

/// Random webhooks (new versions, redeliveries, stale ones) and keyframe
/// corrections while two consumers follow the feed, each hanging up at
/// random points and resuming from its last position: one over Server-Sent
/// Events with `Last-Event-ID`, one by long polling with `after=`. Each
/// must receive the whole log exactly once, in order.
async fn consumers_resume_exactly_once(db: &TestDb) {
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let (vendor, addr) = Vendor::start(25).await;
    let daemon = Daemon::start(config(db, addr, true)).await;
    let client = reqwest::Client::new();
    // The first keyframe fills the mirror; the feed starts with its corrections.
    daemon.keyframe(&client, ADMIN).await;

    let base = daemon.base.clone();
    let sse = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 1);
        async move {
            let mut got: Vec<Value> = Vec::new();
            for _ in 0..2_000 {
                let last = got.last().map_or(0, |c| c["seq"].as_i64().unwrap());
                let n = rng.random_range(1..12);
                got.extend(read_events(&client, &base, last, n).await);
                if got.last().and_then(|c| c["key"].as_str()) == Some("end") {
                    return got;
                }
            }
            panic!("the event-stream consumer did not reach the end");
        }
    });
    let poll = tokio::spawn({
        let client = client.clone();
        let base = base.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ 2);
        async move {
            let mut got: Vec<Value> = Vec::new();
            let mut after = 0;
            for _ in 0..5_000 {
                let limit = rng.random_range(1..10);
                let req = client
                    .get(format!(
                        "{base}/v1/changes?producer=orders&after={after}&limit={limit}&wait=2"
                    ))
                    .bearer_auth(READ)
                    .send();
                // Sometimes hang up before the answer arrives.
                let hang_up = Duration::from_millis(rng.random_range(1..400));
                let Ok(resp) = tokio::time::timeout(hang_up, req).await else {
                    continue;
                };
                let v: Value = resp.unwrap().json().await.unwrap();
                let changes = v["changes"].as_array().unwrap().clone();
                assert_eq!(
                    v["next"].as_i64().unwrap(),
                    changes.last().map_or(after, |c| c["seq"].as_i64().unwrap())
                );
                after = v["next"].as_i64().unwrap();
                got.extend(changes);
                if got.last().and_then(|c| c["key"].as_str()) == Some("end") {
                    return got;
                }
            }
            panic!("the long-poll consumer did not reach the end");
        }
    });

    // Writers: webhooks with random versions (some stale, some redelivered),
    // and vendor-side edits that keyframes correct.
    let mut versions: BTreeMap<String, i64> = BTreeMap::new();
    for round in 0..4 {
        for _ in 0..rng.random_range(10..30) {
            let key = format!("ord-{:05}", rng.random_range(0..25));
            let v = versions.get(&key).copied().unwrap_or(0) + rng.random_range(-1..3);
            versions.insert(key.clone(), v.max(versions.get(&key).copied().unwrap_or(0)));
            let doc = json!({"id": key, "rev": v, "status": format!("hook-{round}-{v}")});
            daemon.webhook(&client, &doc).await;
            if rng.random_bool(0.2) {
                daemon.webhook(&client, &doc).await;
            }
        }
        {
            let mut r = vendor.records.lock().unwrap();
            for (_, d) in r.iter_mut() {
                if rng.random_bool(0.3) {
                    d["status"] = json!(format!("vendor-{round}"));
                    d["rev"] = json!(1_000 + round);
                }
            }
        }
        daemon.keyframe(&client, ADMIN).await;
        let store = db.store().await;
        wait_for("corrections applied", 30, || async {
            store
                .work_counts()
                .await
                .unwrap()
                .get(&WorkState::Pending)
                .copied()
                .unwrap_or(0)
                == 0
                && store
                    .work_counts()
                    .await
                    .unwrap()
                    .get(&WorkState::Running)
                    .copied()
                    .unwrap_or(0)
                    == 0
        })
        .await;
        store.close().await;
    }
    daemon
        .webhook(&client, &json!({"id": "end", "rev": 1}))
        .await;

    let expected = log_of(db).await;
    assert!(
        expected.len() > 20,
        "a log worth following: {}",
        expected.len()
    );
    assert!(expected.iter().any(|c| c.0 > 0), "the log has entries");
    for (name, task) in [("event stream", sse), ("long poll", poll)] {
        let got = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .unwrap_or_else(|_| panic!("{name} consumer timed out (seed {seed})"))
            .unwrap();
        let got: Vec<_> = got.iter().map(seen).collect();
        assert_eq!(
            got, expected,
            "{name}: every change once, in order (seed {seed})"
        );
    }
    let sources: Vec<String> = db_sources(db).await;
    assert!(sources.contains(&"webhook".to_string()), "{sources:?}");
    assert!(sources.contains(&"keyframe".to_string()), "{sources:?}");
}

async fn db_sources(db: &TestDb) -> Vec<String> {
    let store = db.store().await;
    let mut s: Vec<String> = store
        .changes_after("orders", 0, 1_000_000, false)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.source.to_string())
        .collect();
    store.close().await;
    s.sort();
    s.dedup();
    s
}

/// A long poll waits for the first change and is woken by the commit.
async fn long_poll_wakes_on_commit(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(1).await;
    let daemon = Daemon::start(config(db, addr, true)).await;
    let client = reqwest::Client::new();
    let started = std::time::Instant::now();
    let waiting = tokio::spawn({
        let client = client.clone();
        let base = daemon.base.clone();
        async move {
            get_json(
                &client,
                &format!("{base}/v1/changes?producer=orders&after=0&wait=20&docs=1"),
                Some(READ),
            )
            .await
            .1
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "nothing to return yet: the poll waits"
    );
    let doc = json!({"id": "A-1", "rev": 3, "status": "shipped"});
    daemon.webhook(&client, &doc).await;
    let v = answered_before_its_deadline(waiting, started, 20).await;
    let c = &v["changes"][0];
    assert_eq!(
        (
            c["seq"].as_i64(),
            c["key"].as_str(),
            c["op"].as_str(),
            c["source"].as_str()
        ),
        (Some(1), Some("A-1"), Some("put"), Some("webhook"))
    );
    assert_eq!(c["version"], json!(3));
    assert_eq!(c["doc"], doc);
    assert_eq!(v["next"], json!(1));
    // Superseded documents are not served; the later change carries its own.
    daemon
        .webhook(
            &client,
            &json!({"id": "A-1", "rev": 4, "status": "delivered"}),
        )
        .await;
    let v: Value = get_json(
        &client,
        &format!("{}/v1/changes?producer=orders&after=0&docs=1", daemon.base),
        Some(READ),
    )
    .await
    .1;
    assert_eq!(v["changes"][0]["superseded"], json!(true));
    assert_eq!(v["changes"][0].get("doc"), None);
    assert_eq!(v["changes"][1]["doc"]["status"], json!("delivered"));
    // An empty poll answers at its deadline with the same position.
    let v: Value = get_json(
        &client,
        &format!("{}/v1/changes?producer=orders&after=2&wait=1", daemon.base),
        Some(READ),
    )
    .await
    .1;
    assert_eq!(
        (v["changes"].as_array().map(Vec::len), v["next"].as_i64()),
        (Some(0), Some(2))
    );
}

/// The read API: one entity with its sync state, keyset pages, 404s; the token.
async fn read_api_and_token(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(1).await;
    let daemon = Daemon::start(config(db, addr, true)).await;
    let client = reqwest::Client::new();
    for i in 0..5 {
        daemon
            .webhook(&client, &json!({"id": format!("k{i}"), "rev": 1, "n": i}))
            .await;
    }
    let get = |path: &str, token: Option<&'static str>| {
        let (client, url) = (client.clone(), format!("{}{path}", daemon.base));
        async move { get_json(&client, &url, token).await }
    };
    let (status, v) = get("/v1/entities/orders/k3", Some(READ)).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["doc"], json!({"id": "k3", "rev": 1, "n": 3}));
    assert_eq!(
        (
            v["version"].as_i64(),
            v["source"].as_str(),
            v["sync_state"].as_str()
        ),
        (Some(1), Some("webhook"), Some("in_sync"))
    );
    assert_eq!(v["hash"].as_str().map(str::len), Some(64));
    let (status, v) = get("/v1/entities/orders?limit=2", Some(READ)).await;
    assert_eq!(status, 200);
    let keys = |v: &Value| -> Vec<String> {
        v["entities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        (keys(&v), v["next"].as_str()),
        (vec!["k0".to_string(), "k1".into()], Some("k1"))
    );
    let (_, v) = get("/v1/entities/orders?after=k3&limit=2", Some(READ)).await;
    assert_eq!(
        (keys(&v), v["next"].clone()),
        (vec!["k4".to_string()], Value::Null)
    );
    assert_eq!(get("/v1/entities/orders/nope", Some(READ)).await.0, 404);
    assert_eq!(get("/v1/entities/nobody/k1", Some(READ)).await.0, 404);
    assert_eq!(get("/v1/changes?producer=nobody", Some(READ)).await.0, 404);
    let (status, v) = get("/v1/changes?producer=orders&limit=0", Some(READ)).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("limit"), "{v}");
    // The token: 401 without it, with the admin token, or a wrong one.
    assert_eq!(get("/v1/entities/orders/k3", None).await.0, 401);
    assert_eq!(get("/v1/entities/orders/k3", Some(ADMIN)).await.0, 401);
    assert_eq!(
        get("/v1/changes?producer=orders", Some("wrong")).await.0,
        401
    );
    // A correction pending for an entity shows as drifted.
    let store = db.store().await;
    driftd::store::sql::query(
        "INSERT INTO work (time, spec, producer, key, action, state, run_at, attempts, max_attempts, dedup_key, updated_at)
         VALUES ($1, '{}', 'orders', 'k2', 'none', 'pending', $1, 0, 5, 'd', $1)",
    )
    .bind(driftd::store::sql::At(0))
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    let (_, v) = get("/v1/entities/orders/k2", Some(READ)).await;
    assert_eq!(v["sync_state"], json!("drifted"));
}

/// A long poll longer than the server's idle timeout answers, empty, before
/// the server would close its connection.
async fn long_poll_answers_before_the_idle_timeout(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(1).await;
    let mut config = config(db, addr, true);
    config.server.request_timeout_secs = 1;
    config.server.idle_timeout_secs = 3;
    let daemon = Daemon::start(config).await;
    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/v1/changes?producer=orders&wait=60",
            daemon.base
        ))
        .bearer_auth(READ)
        .send()
        .await
        .expect("answered, not cut off");
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        (v["changes"].as_array().map(Vec::len), v["next"].as_i64()),
        (Some(0), Some(0))
    );
    // It waited (a second short of the idle timeout) rather than answering at once.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1_500), "{took:?}");
}

/// The answer of a long poll asked with `wait=wait_secs` at `asked`, which a
/// commit should wake. A poll nothing woke answers at its own deadline, with
/// the change read then, so its answer alone cannot tell: the test fails if
/// that deadline comes first.
async fn answered_before_its_deadline(
    waiting: tokio::task::JoinHandle<Value>,
    asked: std::time::Instant,
    wait_secs: u64,
) -> Value {
    let deadline = tokio::time::Instant::from_std(asked + Duration::from_secs(wait_secs));
    tokio::time::timeout_at(deadline, waiting)
        .await
        .unwrap_or_else(|_| {
            panic!("the long poll ran to its {wait_secs} s deadline: no commit woke it")
        })
        .unwrap()
}

crate::on_both_backends!(
    long_poll_answers_before_the_idle_timeout,
    consumers_resume_exactly_once,
    long_poll_wakes_on_commit,
    read_api_and_token,
    tail_follows_and_resumes,
);

crate::limited_test! {
async fn the_api_is_off_without_a_read_token() {
    let db = TestDb::sqlite();
    let (_vendor, addr) = Vendor::start(1).await;
    let daemon = Daemon::start(config(&db, addr, false)).await;
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/changes?producer=orders", daemon.base))
        .bearer_auth(READ)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}
}

crate::limited_test! {
/// Two replicas on one PostgreSQL database: a consumer waiting on one is
/// woken by a commit on the other (LISTEN/NOTIFY), and both serve the same feed.
async fn replicas_serve_the_same_feed() {
    let db = TestDb::postgres().await;
    let (_vendor, addr) = Vendor::start(1).await;
    let a = Daemon::start(config(&db, addr, true)).await;
    let b = Daemon::start(config(&db, addr, true)).await;
    let client = reqwest::Client::new();
    // Let b's listener connect before waiting on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let waiting = tokio::spawn({
        let client = client.clone();
        let base = b.base.clone();
        async move {
            get_json(&client, &format!("{base}/v1/changes?producer=orders&after=0&wait=30"), Some(READ)).await.1
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.webhook(&client, &json!({"id": "x", "rev": 1})).await;
    let v = answered_before_its_deadline(waiting, started, 30).await;
    assert_eq!(v["changes"][0]["key"], json!("x"));
    for i in 0..10 {
        a.webhook(&client, &json!({"id": format!("y{i}"), "rev": 1}))
            .await;
    }
    let feed = |base: String| {
        let client = client.clone();
        async move {
            get_json(&client, &format!("{base}/v1/changes?producer=orders&limit=100"), Some(READ)).await.1["changes"]
                .clone()
        }
    };
    let from_a = feed(a.base.clone()).await;
    assert_eq!(from_a.as_array().unwrap().len(), 11);
    assert_eq!(from_a, feed(b.base.clone()).await);
}
}

/// `driftd tail` prints the feed as it grows and resumes from a position.
async fn tail_follows_and_resumes(db: &TestDb) {
    use tokio::io::AsyncBufReadExt;
    let store = db.store().await;
    let hasher = driftd::canonical::RecordHasher::default();
    let put = |k: String| driftd::entity::EntityWrite {
        key: k.clone(),
        change: driftd::entity::Change::Replace(json!({"id": k})),
        version: None,
        source: driftd::entity::Source::Webhook,
        rule: driftd::entity::WriteRule::IfNewer,
    };
    let batch =
        |from: usize, to: usize| (from..to).map(|i| put(format!("k{i}"))).collect::<Vec<_>>();
    store
        .write_entities("orders", 8, &hasher, &batch(0, 3))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("driftd.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\nschedule = \"0 0 0 1 1 *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/x\"\n",
            db.url
        ),
    )
    .unwrap();
    let tail = |from: &str| {
        tokio::process::Command::new(crate::support::driftd_bin())
            .args([
                "tail",
                "--config",
                cfg.to_str().unwrap(),
                "--producer",
                "orders",
                "--json",
                "--from",
                from,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let read = |child: &mut tokio::process::Child, n: usize| {
        let stdout = child.stdout.take().unwrap();
        async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            let mut seqs = Vec::new();
            while seqs.len() < n {
                let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
                    .await
                    .expect("tail prints within 20 s")
                    .unwrap()
                    .expect("tail still running");
                let v: Value = serde_json::from_str(&line).unwrap();
                seqs.push(v["seq"].as_i64().unwrap());
            }
            seqs
        }
    };
    let mut first = tail("0");
    let reading = tokio::spawn(read(&mut first, 6));
    // Written while tail is following.
    tokio::time::sleep(Duration::from_millis(300)).await;
    store
        .write_entities("orders", 8, &hasher, &batch(3, 6))
        .await
        .unwrap();
    assert_eq!(reading.await.unwrap(), vec![1, 2, 3, 4, 5, 6]);
    first.kill().await.unwrap();
    // Missed while no tail ran; resumed from the last position printed.
    store
        .write_entities("orders", 8, &hasher, &batch(6, 8))
        .await
        .unwrap();
    let mut second = tail("6");
    assert_eq!(read(&mut second, 2).await, vec![7, 8]);
    second.kill().await.unwrap();
    store.close().await;
}
