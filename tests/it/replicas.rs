//! Several `driftd run` processes on one PostgreSQL database: each work item is carried out once, one keyframe per producer at a time, and a killed worker's item is finished by the other.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use driftd::state::RunState;
use serde_json::Value;

use crate::keyframe::{producer, seed};
use crate::producer::Vendor;
use crate::support::{driftd_bin, TestDb};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_daemon(
    dir: &std::path::Path,
    name: &str,
    db_url: &str,
    snapshot: &str,
    work: &str,
) -> Daemon {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[database]\nurl = \"{db_url}\"\nmax_connections = 4\n\
             [[producer]]\nname = \"orders\"\nschedule = \"* * * * * *\"\n[producer.snapshot]\n{snapshot}\n\
             [producer.work]\n{work}\n",
            free_port()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new(driftd_bin())
        .args(["run", "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start driftd run");
    Daemon(child)
}

async fn wait_for<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_queue_and_the_keyframe_lease() {
    let db = TestDb::postgres().await;
    let store = db.store().await;
    let (vendor, addr) = Vendor::start(600).await;
    let snapshot = crate::producer::snapshot_toml("cursor", addr);
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
    wait_for("both daemons to correct the drift", 60, || {
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
        sqlx::query_as("SELECT key, COUNT(*) FROM changes WHERE source = 'keyframe' GROUP BY key")
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
