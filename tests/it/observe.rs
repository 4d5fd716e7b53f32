//! Observability end to end: every dashboard query against a real Prometheus scraping the daemon, `promtool check metrics`, and bounded metric cardinality.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::keyframe::seed;
use crate::support::{config, repo_root, Daemon, TestDb};
use crate::support::{snapshot_toml, Vendor};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Starts `driftd` on `db` with producer `orders` (action apply, mirroring
/// `orders_vendor`, whose records are seeded first) and producer `billing`
/// (action http to an endpoint that refuses, so its work goes dead).
async fn start(
    db: &TestDb,
    orders_vendor: &Vendor,
    orders: SocketAddr,
    billing: SocketAddr,
) -> Daemon {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{db}\"\n\
         [[producer]]\nname = \"orders\"\nschedule = \"adaptive\"\nbucket_bits = 8\n\
         [producer.adaptive]\nmin_interval_secs = 1.0\nmax_interval_secs = 1.0\ntarget_drift_seconds = 1.0\n\
         [producer.snapshot]\n{orders_snap}\nretries = 1\nretry_backoff_ms = 1\n\
         [producer.work]\naction = \"apply\"\nbackoff_base_ms = 10\nbackoff_max_ms = 100\n\
         [[producer]]\nname = \"billing\"\nschedule = \"* * * * * *\"\nmax_drift_ratio = 1.0\n\
         [producer.snapshot]\n{billing_snap}\nretries = 1\nretry_backoff_ms = 1\n\
         [producer.work]\naction = \"http\"\nurl = \"http://{billing}/cursor\"\n",
        db = db.url,
        orders_snap = snapshot_toml("cursor", orders),
        billing_snap = snapshot_toml("cursor", billing),
    );
    let config = config(&text);
    let orders_p = config
        .producers
        .iter()
        .find(|p| p.name == "orders")
        .unwrap();
    seed(&db.store().await, orders_p, &orders_vendor.snapshot()).await;
    Daemon::start(config).await
}

/// Sum of the samples of `family` whose labels include every `k="v"` in `labels`.
fn sample_sum(text: &str, family: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Edits every `step`-th record of the vendor, so the next keyframe finds `changed` drift.
fn edit_vendor(v: &Vendor, step: usize) -> usize {
    let mut r = v.records.lock().unwrap();
    let mut n = 0;
    for (_, d) in r.iter_mut().step_by(step) {
        d["status"] = Value::String("changed-upstream".into());
        n += 1;
    }
    n
}

/// Runs the daemon until keyframes found drift on `orders`, corrected it, and `billing`'s work went dead.
async fn daemon_with_history(db: &TestDb, orders_records: usize) -> (Daemon, Vendor) {
    let (orders, orders_addr) = Vendor::start(orders_records).await;
    let (_billing, billing_addr) = Vendor::start(5).await;
    let d = start(db, &orders, orders_addr, billing_addr).await;
    crate::support::wait_for("a successful keyframe of orders", 60, || async {
        sample_sum(
            &d.metrics().await,
            "driftd_keyframe_runs_total",
            &[r#"producer="orders""#, r#"outcome="ok""#],
        ) >= 1.0
    })
    .await;
    edit_vendor(&orders, 10);
    crate::support::wait_for(
        "drift found, corrected, and billing's work dead",
        60,
        || async {
            let m = d.metrics().await;
            sample_sum(
                &m,
                "driftd_drift_detected_total",
                &[r#"producer="orders""#, r#"kind="changed""#],
            ) >= 1.0
                && sample_sum(
                    &m,
                    "driftd_work_completed_total",
                    &[r#"action="apply""#, r#"outcome="done""#],
                ) >= 1.0
                && sample_sum(&m, "driftd_work_completed_total", &[r#"outcome="dead""#]) >= 1.0
        },
    )
    .await;
    (d, orders)
}

/// A real Prometheus in a temporary directory, killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        assert!(
            Path::new(PROMETHEUS).exists(),
            "{PROMETHEUS} is missing: install it (apt-get install -y prometheus; .ci/run does) to test the dashboard's queries"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: driftd\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PROMETHEUS}: {e}"));
        Self { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result vector of an instant query; `Err` names what went wrong.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let url = reqwest::Url::parse_with_params(
            &format!("http://127.0.0.1:{}/api/v1/query", self.port),
            &[("query", expr)],
        )
        .unwrap();
        let body: Value = reqwest::get(url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(format!("query failed: {body}"));
        }
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `(panel title, expr)` of the dashboard, with Grafana's variables replaced by fixed values.
fn dashboard_queries(producer: &str) -> Vec<(String, String)> {
    let path = repo_root().join("dashboards/driftd.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title} has a target without expr"));
            // README: the `producer` variable filters every panel.
            assert!(
                expr.contains(r#"producer=~"$producer""#),
                "panel {title}: {expr} ignores the producer variable"
            );
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "5m")
                .replace("$producer", producer);
            assert!(
                !expr.contains('$'),
                "panel {title}: unreplaced variable in {expr}"
            );
            out.push((title.clone(), expr));
        }
    }
    assert!(
        out.len() >= 12,
        "the dashboard has its panels: {}",
        out.len()
    );
    out
}

crate::limited_test! {
async fn every_dashboard_panel_returns_series_from_a_real_prometheus() {
    let db = TestDb::sqlite();
    let (daemon, _vendor) = daemon_with_history(&db, 500).await;
    let prom = Prometheus::start(daemon.addr);

    // Scraped at least three times, so rate() and increase() have samples to work on.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let scrapes = prom
            .query(r#"count_over_time(up{job="driftd"}[5m])"#)
            .await
            .ok()
            .and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok())
            .unwrap_or(0.0);
        let up = prom
            .query(r#"up{job="driftd"} == 1"#)
            .await
            .map(|r| r.len())
            .unwrap_or(0);
        if scrapes >= 4.0 && up == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape driftd at {} ({scrapes} scrapes); its log:\n{}",
            daemon.addr,
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let queries = dashboard_queries("orders");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            match prom.query(expr).await {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => empty.push(format!("panel \"{title}\": no series for {expr}")),
                Err(e) => empty.push(format!("panel \"{title}\": {e} ({expr})")),
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dashboard panels without data:\n{}",
            empty.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(prom);
    daemon.stop().await;
}
}

crate::limited_test! {
async fn promtool_finds_no_problem_in_the_metrics() {
    assert!(
        Path::new(PROMTOOL).exists(),
        "{PROMTOOL} is missing: install it (apt-get install -y prometheus; .ci/run does)"
    );
    let db = TestDb::sqlite();
    let (daemon, _vendor) = daemon_with_history(&db, 200).await;
    let text = daemon.metrics().await;
    daemon.stop().await;
    // The process collector's families are there, with values (CPU time
    // is counted in whole seconds, so it may still be 0).
    for family in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(sample_sum(&text, family, &[]) > 0.0, "{family} missing or zero");
    }
    assert!(text.contains("\nprocess_cpu_seconds_total "), "no process_cpu_seconds_total");

    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics ({}):\n{report}",
        out.status
    );
}
}

crate::limited_test! {
async fn metric_series_stay_bounded_with_thousands_of_keys() {
    let db = TestDb::sqlite();
    let (daemon, vendor) = daemon_with_history(&db, 3_000).await;
    let text = daemon.metrics().await;
    daemon.stop().await;
    assert!(
        sample_sum(&text, "driftd_entities", &[r#"producer="orders""#]) >= 3_000.0,
        "the keys flowed through: {text}"
    );

    let keys: Vec<String> = vendor.snapshot().into_keys().collect();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for line in &series {
        // driftd's own families, and the process collector's (no labels).
        assert!(
            line.starts_with("driftd_")
                || (line.starts_with("process_") && !line.contains('{')),
            "a foreign series: {line}"
        );
        assert!(
            !line.contains("ord-"),
            "an entity key became a label: {line}"
        );
    }
    for k in &keys {
        assert!(
            !text.contains(k.as_str()),
            "entity key {k} appears in /metrics"
        );
    }
    let mut per_family = std::collections::BTreeMap::<&str, usize>::new();
    for line in &series {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        *per_family.entry(family).or_default() += 1;
    }
    for (family, n) in &per_family {
        assert!(*n <= 40, "{family} has {n} series: {per_family:?}");
    }
    assert!(
        series.len() < 200,
        "{} series in /metrics for 2 producers: {per_family:?}",
        series.len()
    );
}
}

/// A daemon restarted over a database that holds keyframe runs exports, at
/// its first scrape, the last success the database records (an ok run's
/// finish; for a producer that only failed, when its first run began; for
/// one that never ran, the process start), and each producer's expected
/// interval from its schedule: what `DriftdKeyframeStale` compares.
async fn a_restarted_daemon_exports_the_last_success_at_once(db: &TestDb) {
    let (_vendor, addr) = Vendor::start(20).await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"adm\"\n[database]\nurl = \"{db}\"\n\
         [[producer]]\nname = \"orders\"\nschedule = \"0 0 3 * * *\"\n\
         [producer.snapshot]\n{snap}\nretries = 0\n\
         [[producer]]\nname = \"broken\"\nschedule = \"0 0 4 * * Sun\"\n\
         [producer.snapshot]\nurl = \"http://{addr}/missing\"\nitems = \"/data\"\nretries = 0\n\
         [[producer]]\nname = \"idle\"\nschedule = \"0 0 5 1 1 *\"\n\
         [producer.snapshot]\n{snap}\n\
         [[producer]]\nname = \"paced\"\nschedule = \"adaptive\"\n\
         [producer.adaptive]\nmin_interval_secs = 3600.0\nmax_interval_secs = 7200.0\n\
         target_drift_seconds = 60.0\n\
         [producer.snapshot]\n{snap}\n",
        db = db.url,
        snap = snapshot_toml("cursor", addr),
    );
    let d = Daemon::start(config(&text)).await;
    for producer in ["orders", "broken"] {
        d.http
            .post(format!("{}/admin/keyframe/{producer}", d.base))
            .bearer_auth("adm")
            .send()
            .await
            .unwrap();
    }
    d.stop().await;
    // Read once the daemon is stopped: the newest runs it left.
    let store = db.store().await;
    let ok = store.runs("orders", 1).await.unwrap().remove(0);
    assert_eq!(ok.state.as_str(), "ok", "{ok:?}");
    let failed = store.runs("broken", 1).await.unwrap().remove(0);
    assert_eq!(failed.state.as_str(), "failed", "{failed:?}");
    store.close().await;

    let before_restart = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let d = Daemon::start(config(&text)).await;
    let m = d.metrics().await;
    let last = |p: &str| {
        sample_sum(
            &m,
            "driftd_keyframe_last_success_timestamp_seconds",
            &[&format!("producer=\"{p}\"")],
        )
    };
    let expected = |p: &str| {
        sample_sum(
            &m,
            "driftd_keyframe_expected_interval_seconds",
            &[&format!("producer=\"{p}\"")],
        )
    };
    let finished = ok.finished_at.expect("an ok run has finished") as f64 / 1000.0;
    assert!(
        (last("orders") - finished).abs() < 0.001,
        "orders: {} is not the ok run's finish {finished}",
        last("orders")
    );
    let began = failed.started_at as f64 / 1000.0;
    assert!(
        (last("broken") - began).abs() < 0.001,
        "broken: {} is not its failed run's start {began}",
        last("broken")
    );
    let after_start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        // The start is kept in whole milliseconds.
        (before_restart - 0.001..=after_start).contains(&last("idle")),
        "idle: {} is not the restarted process's start ({before_restart}..{after_start})",
        last("idle")
    );
    assert_eq!(expected("orders"), 86_400.0);
    assert_eq!(expected("broken"), 7.0 * 86_400.0);
    // A year from one January 1st to the next.
    let year = expected("idle") / 86_400.0;
    assert!(year == 365.0 || year == 366.0, "idle: {year} days");
    assert_eq!(expected("paced"), 7_200.0);
    d.stop().await;
}

crate::on_both_backends!(a_restarted_daemon_exports_the_last_success_at_once);

crate::limited_test! {
async fn the_readme_metrics_table_names_every_family_with_its_type_and_labels() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    // `| `name` | type | labels |` rows of the metrics table.
    let rows: std::collections::BTreeMap<String, (String, String)> = readme
        .lines()
        .filter(|l| l.starts_with("| `driftd_"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let name = cells[0].trim_start_matches("| ").trim_matches('`').to_string();
            (name, (cells[1].to_string(), cells[2..].join(" | ")))
        })
        .collect();
    let source = std::fs::read_to_string(repo_root().join("src/metrics.rs")).unwrap();
    for name in rows.keys() {
        assert!(
            source.contains(&format!("\"{name}\"")),
            "README lists {name}, which src/metrics.rs does not define"
        );
    }

    let db = TestDb::sqlite();
    let (daemon, _vendor) = daemon_with_history(&db, 200).await;
    let text = daemon.metrics().await;
    daemon.stop().await;
    let mut checked = 0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE driftd_") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let name = format!("driftd_{name}");
        let (ty, labels) = rows
            .get(&name)
            .unwrap_or_else(|| panic!("README's metrics table has no row for {name}"));
        assert!(ty.contains(kind), "README: {name} is a {kind}, not {ty:?}");
        for sample in text.lines().filter(|l| {
            l.strip_prefix(&name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with("_bucket{"))
        }) {
            let inner = &sample[sample.find('{').unwrap() + 1..sample.find('}').unwrap()];
            for label in inner.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, _)| k) {
                if label == "le" {
                    continue;
                }
                assert!(
                    labels.contains(label),
                    "README: {name} has label {label}, not in {labels:?}"
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} driftd_ families were served");
}
}

/// The provisioned data source is not Grafana's default, and the dashboard's
/// `DS_PROMETHEUS` variable is saved selecting it by its uid (README).
#[test]
fn the_dashboard_selects_the_provisioned_data_source_by_uid() {
    let root = repo_root();
    let provisioning =
        std::fs::read_to_string(root.join("dashboards/provisioning/datasources/driftd.yml"))
            .unwrap();
    let setting = |key: &str| {
        provisioning
            .lines()
            .find_map(|l| l.trim().strip_prefix(key)?.trim().strip_prefix(':'))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {key} in the provisioned data source"))
    };
    assert_eq!(setting("isDefault"), "false");
    let uid = setting("uid");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("dashboards/driftd.json")).unwrap(),
    )
    .unwrap();
    let var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "DS_PROMETHEUS")
        .expect("the DS_PROMETHEUS variable");
    assert_eq!(var["type"], "datasource");
    assert_eq!(var["current"]["value"], uid, "{var}");
    // Every panel and the producer variable read through it.
    for panel in dash["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{}",
            panel["title"]
        );
    }
}
