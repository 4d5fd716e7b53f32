//! `driftd-bench`: the benchmark harness (keyframe vs fetch-only and naive compare, durable webhook ingest, work queue, change feed) on SQLite and PostgreSQL; see BENCHMARKS.md.
//!
//! Every ratio is against a baseline measured in the same run: the keyframe
//! against a fetch-only pull of the same pages, the naive compare against the
//! keyframe at the same drift, webhook ingest through the real daemon against
//! single-row durable `INSERT`s, the work queue against a raw claim loop.
//! Keyframe-shaped scenarios each run in a child process of this binary
//! (`probe`) so their peak RSS (`VmHWM`) is their own. Traffic goes to
//! 127.0.0.1 only; every load loop stops at a request count or a deadline,
//! whichever comes first.
//!
//! The baselines hold raw SQL on purpose (they are what driftd is compared
//! with); driftd's own side goes through `Store`, `Keyframer` and `App` only.
//! The change-feed scenario lives in `feed.rs`.

mod feed;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use clap::{Args, Parser, Subcommand, ValueEnum};
use driftd::app::App;
use driftd::canonical::RecordHasher;
use driftd::config::{Config, ProducerConfig};
use driftd::ingest::signature;
use driftd::keyframe::fetch;
use driftd::keyframe::run::Keyframer;
use driftd::metrics::Metrics;
use driftd::state::WorkState;
use driftd::store::{now_ms, Change, EntityWrite, NewWork, Ordering, Source, Store};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use tokio_util::sync::CancellationToken;

/// Producer name used by the keyframe scenarios.
const KF_PRODUCER: &str = "bench";
/// Records per vendor page.
const PAGE: u64 = 2_000;
/// Entities per `write_entities` call while seeding.
const SEED_BATCH: usize = 5_000;
/// Longest a child `probe` may run before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections of the PostgreSQL pools (driftd's and the baselines').
const PG_POOL: u32 = 16;
const WEBHOOK_SECRET: &str = "bench-webhook-s3cret";

#[derive(Parser)]
#[command(
    name = "driftd-bench",
    about = "Benchmarks driftd against side-by-side baselines (see BENCHMARKS.md)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every scenario on both backends; prints a table and writes JSON.
    All(AllArgs),
    /// Keyframe vs fetch-only vs naive on one backend (seeds, then one child per measurement).
    Keyframe(KeyframeArgs),
    /// Durable webhook ingest through the daemon vs single-row INSERTs, on one backend.
    Ingest(IngestArgs),
    /// Work queue claim/finish vs a raw SQL claim loop, on one backend.
    Work(WorkArgs),
    /// Change feed: commit-to-delivery latency to waiting consumers and what idle consumers cost, on one backend.
    Feed(FeedArgs),
    /// (internal) One measurement against an already seeded database; prints one JSON line.
    #[command(hide = true)]
    Probe(ProbeArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum BackendArg {
    Sqlite,
    Postgres,
}

impl BackendArg {
    fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

#[derive(Args, Clone)]
struct AllArgs {
    /// Records of the keyframe scenarios on SQLite.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Records of the keyframe scenarios on PostgreSQL (seeding is slower there).
    #[arg(long, default_value_t = 100_000)]
    pg_records: u64,
    /// Where to write the results as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Backends to run.
    #[arg(long, value_delimiter = ',', default_values = ["sqlite", "postgres"])]
    backends: Vec<BackendArg>,
    #[command(flatten)]
    kf: KeyframeKnobs,
    #[command(flatten)]
    ingest: IngestKnobs,
    #[command(flatten)]
    work: WorkKnobs,
    #[command(flatten)]
    feed: feed::FeedKnobs,
}

#[derive(Args, Clone)]
struct KeyframeKnobs {
    /// Drift levels in percent.
    #[arg(long, value_delimiter = ',', default_values = ["0", "0.1", "1", "10"])]
    drifts: Vec<f64>,
    /// Drift levels (percent) at which the naive compare is measured too.
    #[arg(long, value_delimiter = ',', default_values = ["0.1"])]
    naive_drifts: Vec<f64>,
}

#[derive(Args, Clone)]
struct KeyframeArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BackendArg,
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    #[command(flatten)]
    kf: KeyframeKnobs,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct IngestKnobs {
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_values = ["1", "16", "64"])]
    clients: Vec<usize>,
    /// Seconds per level and side.
    #[arg(long, default_value_t = 3.0)]
    ingest_secs: f64,
    /// Requests per level and side, at most.
    #[arg(long, default_value_t = 50_000)]
    ingest_max: u64,
}

#[derive(Args, Clone)]
struct IngestArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BackendArg,
    #[command(flatten)]
    knobs: IngestKnobs,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct WorkKnobs {
    /// Items per side.
    #[arg(long, default_value_t = 10_000)]
    work_items: u64,
    /// Concurrent claimers per side.
    #[arg(long, default_value_t = 4)]
    work_workers: usize,
    /// Items claimed per claim statement (driftd's workers claim `concurrency`, default 4).
    #[arg(long, default_value_t = 4)]
    work_batch: u32,
    /// Seconds per side, at most.
    #[arg(long, default_value_t = 30.0)]
    work_secs: f64,
}

#[derive(Args, Clone)]
struct WorkArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BackendArg,
    #[command(flatten)]
    knobs: WorkKnobs,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct FeedArgs {
    #[arg(long, value_enum, default_value = "sqlite")]
    backend: BackendArg,
    #[command(flatten)]
    knobs: feed::FeedKnobs,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Clone)]
struct ProbeArgs {
    #[arg(long)]
    url: String,
    #[arg(long)]
    records: u64,
    /// Records whose index is a multiple of this are at revision 1 (0: none).
    #[arg(long, default_value_t = 0)]
    drift_every: u64,
    #[arg(long, value_enum)]
    mode: ProbeMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProbeMode {
    /// `fetch::pull` only: the same pages pulled, parsed and hashed, nothing compared.
    Fetch,
    /// A real keyframe run (`Keyframer::run`, not dry: records the run and emits work).
    Keyframe,
    /// Pull, then load every local row with `Store::entities` and compare documents.
    Naive,
}

// ---------------------------------------------------------------------------
// Results

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    mode: ProbeMode,
    wall_ms: f64,
    peak_rss_mib: f64,
    records: u64,
    rows_read: u64,
    drifted: u64,
}

#[derive(Debug, Clone, Serialize)]
struct DriftLevel {
    drift_pct: f64,
    expected_drift: u64,
    keyframe: Probe,
    naive: Option<Probe>,
}

#[derive(Debug, Clone, Serialize)]
struct KeyframeReport {
    backend: BackendArg,
    records: u64,
    seed_secs: f64,
    seed_rows_per_sec: f64,
    fetch: Probe,
    levels: Vec<DriftLevel>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Load {
    clients: usize,
    ok: u64,
    errors: u64,
    secs: f64,
    per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct IngestLevel {
    clients: usize,
    driftd: Load,
    insert_baseline: Load,
}

#[derive(Debug, Clone, Serialize)]
struct IngestReport {
    backend: BackendArg,
    levels: Vec<IngestLevel>,
    /// Open-loop run at 80% of the best driftd rate, with the clients of that level.
    paced: Option<PacedRun>,
}

#[derive(Debug, Clone, Serialize)]
struct PacedRun {
    target_per_sec: f64,
    load: Load,
}

#[derive(Debug, Clone, Serialize)]
struct QueueRun {
    items: u64,
    secs: f64,
    per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
struct WorkReport {
    backend: BackendArg,
    workers: usize,
    batch: u32,
    driftd: QueueRun,
    raw_sql: QueueRun,
}

#[derive(Debug, Default, Serialize)]
struct Results {
    machine: Machine,
    command: String,
    total_secs: f64,
    keyframe: Vec<KeyframeReport>,
    ingest: Vec<IngestReport>,
    work: Vec<WorkReport>,
    feed: Vec<feed::FeedReport>,
    targets: Vec<Target>,
}

#[derive(Debug, Default, Serialize)]
struct Machine {
    nproc: usize,
    mem_total_mib: u64,
    cpu_model: String,
}

#[derive(Debug, Serialize)]
struct Target {
    backend: &'static str,
    name: String,
    measured: String,
    target: String,
    met: bool,
}

// ---------------------------------------------------------------------------
// Entry

fn main() -> Result<()> {
    process_secs();
    {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_global_default(
            tracing_subscriber::registry().with(feed::StatementCounter),
        )
        .context("install the statement counter")?;
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Probe(a) => probe(a).await,
            Cmd::All(a) => all(a).await,
            Cmd::Keyframe(a) => {
                let mut r = Results::new();
                r.keyframe
                    .push(keyframe_scenarios(a.backend, a.records, &a.kf).await?);
                r.finish(a.json.as_deref())
            }
            Cmd::Ingest(a) => {
                let mut r = Results::new();
                r.ingest.push(ingest_scenarios(a.backend, &a.knobs).await?);
                r.finish(a.json.as_deref())
            }
            Cmd::Work(a) => {
                let mut r = Results::new();
                r.work.push(work_scenarios(a.backend, &a.knobs).await?);
                r.finish(a.json.as_deref())
            }
            Cmd::Feed(a) => {
                let mut r = Results::new();
                r.feed.push(feed::scenario(a.backend, &a.knobs).await?);
                r.finish(a.json.as_deref())
            }
        }
    })
}

async fn all(a: AllArgs) -> Result<()> {
    let mut r = Results::new();
    for &backend in &a.backends {
        let n = match backend {
            BackendArg::Sqlite => a.records,
            BackendArg::Postgres => a.pg_records.min(a.records),
        };
        r.keyframe
            .push(keyframe_scenarios(backend, n, &a.kf).await?);
        r.ingest.push(ingest_scenarios(backend, &a.ingest).await?);
        r.work.push(work_scenarios(backend, &a.work).await?);
        r.feed.push(feed::scenario(backend, &a.feed).await?);
    }
    r.finish(a.json.as_deref())
}

impl Results {
    fn new() -> Self {
        Self {
            machine: machine(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            ..Default::default()
        }
    }

    fn finish(mut self, json: Option<&std::path::Path>) -> Result<()> {
        self.total_secs = process_secs();
        self.targets = targets(&self);
        print!("{}", self.table());
        if let Some(path) = json {
            std::fs::write(path, serde_json::to_string_pretty(&self)?)
                .with_context(|| format!("write {}", path.display()))?;
            println!("\nJSON written to {}", path.display());
        }
        Ok(())
    }
}

/// Seconds since `main` began.
fn process_secs() -> f64 {
    static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_total_mib = proc_kib(&meminfo, "MemTotal:").unwrap_or(0) / 1024;
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_mib,
        cpu_model,
    }
}

/// A `Name:   123 kB` value from a /proc file, in KiB.
fn proc_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    proc_kib(&status, "VmHWM:").unwrap_or(0) as f64 / 1024.0
}

fn note(msg: impl AsRef<str>) {
    eprintln!("[{:7.1}s] {}", process_secs(), msg.as_ref());
}

// ---------------------------------------------------------------------------
// Throwaway databases

fn pg_admin_url() -> String {
    std::env::var("DRIFTD_BENCH_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh database: a SQLite file in a temp dir, or a PostgreSQL database dropped by [`BenchDb::remove`].
struct BenchDb {
    url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    async fn create(backend: BackendArg, tag: &str) -> Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        match backend {
            BackendArg::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("driftd-bench-")
                    .tempdir()
                    .context("create a temp dir")?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self {
                    url,
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
            BackendArg::Postgres => {
                let name = format!(
                    "driftd_bench_{tag}_{}_{}",
                    std::process::id(),
                    N.fetch_add(1, AtomicOrdering::Relaxed)
                );
                let admin = sqlx::PgPool::connect(&pg_admin_url())
                    .await
                    .with_context(|| {
                        format!(
                            "connect to PostgreSQL (set DRIFTD_BENCH_PG; now {})",
                            pg_admin_url()
                        )
                    })?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&admin)
                    .await
                    .context("create the bench database")?;
                admin.close().await;
                let base = pg_admin_url();
                let i = base
                    .rfind('/')
                    .ok_or_else(|| anyhow!("DRIFTD_BENCH_PG must end in /DATABASE"))?;
                Ok(Self {
                    url: format!("{}/{name}", &base[..i]),
                    pg_name: Some(name),
                    _dir: None,
                })
            }
        }
    }

    async fn remove(mut self) -> Result<()> {
        if let Some(name) = self.pg_name.take() {
            let admin = sqlx::PgPool::connect(&pg_admin_url()).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await
                .context("drop the bench database")?;
            admin.close().await;
        }
        Ok(())
    }
}

/// Runs `body` with a fresh database and removes the database whatever the outcome.
async fn with_db<T, F, Fut>(backend: BackendArg, tag: &str, body: F) -> Result<T>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let db = BenchDb::create(backend, tag).await?;
    let out = body(db.url.clone()).await;
    let removed = db.remove().await;
    let out = out?;
    removed?;
    Ok(out)
}

// ---------------------------------------------------------------------------
// The loopback vendor: records generated from (index, revision), nothing stored

/// One record's JSON (about 500 bytes), deterministic in `(i, rev)`.
fn record_json(i: u64, rev: u64) -> String {
    let status = if rev == 0 { "open" } else { "updated" };
    let mut s = format!(
        concat!(
            r#"{{"id":"rec-{i:08}","rev":{rev},"status":"{status}","amount_cents":{amount},"currency":"EUR","#,
            r#""customer":{{"id":"cus-{cus:06}","name":"Customer {cus}","email":"customer{cus}@example.test","#,
            r#""address":{{"line1":"{street} Benchmark Street","city":"City {city}","postcode":"{post:05}","country":"DE"}}}},"#,
            r#""lines":[{{"sku":"sku-{sku1}","qty":{q1},"price_cents":{p1}}},{{"sku":"sku-{sku2}","qty":{q2},"price_cents":{p2}}}],"#,
            r#""tags":["bench","tier-{tier}"],"note":""#
        ),
        i = i,
        rev = rev,
        status = status,
        amount = (i * 7919) % 100_000 + rev,
        cus = i % 50_000,
        street = i % 997 + 1,
        city = i % 101,
        post = (i * 31) % 100_000,
        sku1 = i % 13,
        q1 = i % 5 + 1,
        p1 = (i * 17) % 10_000,
        sku2 = i % 29,
        q2 = i % 3 + 1,
        p2 = (i * 23) % 10_000,
        tier = i % 4,
    );
    const TARGET: usize = 498;
    const FILL: &[u8] =
        b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";
    let mut k = (i as usize) % FILL.len();
    while s.len() < TARGET {
        s.push(FILL[k % FILL.len()] as char);
        k += 1;
    }
    s.push_str("\"}");
    s
}

#[derive(Clone, Copy)]
struct Generator {
    records: u64,
    drift_every: u64,
}

impl Generator {
    fn rev(&self, i: u64) -> u64 {
        u64::from(self.drift_every > 0 && i.is_multiple_of(self.drift_every))
    }
}

async fn vendor_page(
    State(g): State<Generator>,
    Query(q): Query<HashMap<String, String>>,
) -> impl IntoResponse {
    let start: u64 = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let limit: u64 = q
        .get("limit")
        .and_then(|c| c.parse().ok())
        .unwrap_or(PAGE)
        .clamp(1, 10_000);
    let end = (start + limit).min(g.records);
    let mut body = String::with_capacity(((end.saturating_sub(start)) as usize + 1) * 520);
    body.push_str("{\"data\":[");
    for i in start..end {
        if i > start {
            body.push(',');
        }
        body.push_str(&record_json(i, g.rev(i)));
    }
    body.push_str("],\"next_cursor\":");
    if end < g.records {
        body.push_str(&format!("\"{end}\"}}"));
    } else {
        body.push_str("null}");
    }
    ([("content-type", "application/json")], body)
}

/// Starts the vendor on a loopback port; it stops when `stop` is cancelled.
async fn start_vendor(g: Generator, stop: CancellationToken) -> Result<SocketAddr> {
    let app = Router::new()
        .route("/records", get(vendor_page))
        .with_state(g);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(addr)
}

fn kf_producer(addr: SocketAddr) -> Result<ProducerConfig> {
    let text = format!(
        r#"
[[producer]]
name = "{KF_PRODUCER}"
schedule = "0 0 0 1 1 *"
bucket_bits = 16
max_drift_ratio = 0.5
[producer.snapshot]
url = "http://{addr}/records"
items = "/data"
key = "/id"
timeout_secs = 60
retries = 0
pagination = {{ style = "cursor", cursor = "/next_cursor", param = "cursor", limit = {PAGE}, limit_param = "limit" }}
[producer.work]
action = "none"
"#
    );
    let loaded = Config::parse("bench.toml", &text, &|_| None).map_err(|e| anyhow!("{e}"))?;
    loaded
        .config
        .producers
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no producer in the bench config"))
}

fn drift_every(pct: f64) -> u64 {
    if pct <= 0.0 {
        0
    } else {
        (100.0 / pct).round().max(1.0) as u64
    }
}

fn expected_drift(records: u64, every: u64) -> u64 {
    if every == 0 || records == 0 {
        0
    } else {
        (records - 1) / every + 1
    }
}

// ---------------------------------------------------------------------------
// Scenario 1 and 2: keyframe, fetch-only, naive

async fn seed(url: &str, records: u64) -> Result<f64> {
    let store = Store::open(url, PG_POOL).await?;
    let hasher = RecordHasher::new::<&str>(&[]).map_err(|e| anyhow!("{e}"))?;
    let clock = Instant::now();
    let mut next_note = Instant::now() + Duration::from_secs(10);
    let mut i = 0u64;
    while i < records {
        let end = (i + SEED_BATCH as u64).min(records);
        let writes = (i..end)
            .map(|j| {
                Ok(EntityWrite {
                    key: format!("rec-{j:08}"),
                    change: Change::Replace(serde_json::from_str(&record_json(j, 0))?),
                    version: None,
                    source: Source::Webhook,
                    ordering: Ordering::IfNewer,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        store
            .write_entities(KF_PRODUCER, 16, &hasher, &writes)
            .await?;
        i = end;
        if Instant::now() >= next_note {
            let secs = clock.elapsed().as_secs_f64();
            note(format!(
                "  seeded {i}/{records} ({:.0} rows/s)",
                i as f64 / secs
            ));
            next_note += Duration::from_secs(10);
        }
    }
    let secs = clock.elapsed().as_secs_f64();
    let counted = store.count_entities(KF_PRODUCER).await?;
    if counted as u64 != records {
        bail!("seeded {records} rows but the store counts {counted}");
    }
    store.pool().close().await;
    Ok(secs)
}

async fn keyframe_scenarios(
    backend: BackendArg,
    records: u64,
    knobs: &KeyframeKnobs,
) -> Result<KeyframeReport> {
    with_db(backend, "kf", |url| async move {
        note(format!(
            "keyframe/{}: seeding {records} rows with write_entities batches of {SEED_BATCH}",
            backend.name()
        ));
        let seed_secs = seed(&url, records).await?;
        note(format!(
            "keyframe/{}: seeded in {seed_secs:.1}s ({:.0} rows/s)",
            backend.name(),
            records as f64 / seed_secs
        ));
        let fetch = run_probe(&url, records, drift_every(0.1), ProbeMode::Fetch).await?;
        let mut levels = Vec::new();
        for &pct in &knobs.drifts {
            let every = drift_every(pct);
            let keyframe = run_probe(&url, records, every, ProbeMode::Keyframe).await?;
            let naive = if knobs.naive_drifts.iter().any(|&n| (n - pct).abs() < 1e-9) {
                Some(run_probe(&url, records, every, ProbeMode::Naive).await?)
            } else {
                None
            };
            levels.push(DriftLevel {
                drift_pct: pct,
                expected_drift: expected_drift(records, every),
                keyframe,
                naive,
            });
        }
        Ok(KeyframeReport {
            backend,
            records,
            seed_secs,
            seed_rows_per_sec: records as f64 / seed_secs,
            fetch,
            levels,
        })
    })
    .await
}

/// Runs one measurement in a child process and reads its JSON line.
async fn run_probe(url: &str, records: u64, every: u64, mode: ProbeMode) -> Result<Probe> {
    let exe = std::env::current_exe().context("find the bench binary")?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "probe",
        "--url",
        url,
        "--records",
        &records.to_string(),
        "--drift-every",
        &every.to_string(),
        "--mode",
        match mode {
            ProbeMode::Fetch => "fetch",
            ProbeMode::Keyframe => "keyframe",
            ProbeMode::Naive => "naive",
        },
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::inherit())
    .kill_on_drop(true);
    let out = tokio::time::timeout(PROBE_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow!("probe {mode:?} did not finish within {PROBE_TIMEOUT:?}"))?
        .context("run a probe")?;
    if !out.status.success() {
        bail!("probe {mode:?} failed: {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("probe {mode:?} printed no result"))?;
    let p: Probe = serde_json::from_str(line)?;
    note(format!(
        "  {:?} every={every}: {:.2}s, peak RSS {:.0} MiB, rows read {}, drifted {}",
        mode,
        p.wall_ms / 1000.0,
        p.peak_rss_mib,
        p.rows_read,
        p.drifted
    ));
    Ok(p)
}

/// The child side: start the vendor, measure one thing, print one JSON line.
async fn probe(a: ProbeArgs) -> Result<()> {
    let stop = CancellationToken::new();
    let g = Generator {
        records: a.records,
        drift_every: a.drift_every,
    };
    let addr = start_vendor(g, stop.clone()).await?;
    let p = kf_producer(addr)?;
    let client = reqwest::Client::new();
    let hasher = RecordHasher::new(&p.snapshot.ignore).map_err(|e| anyhow!("{e}"))?;
    let store = match a.mode {
        ProbeMode::Fetch => None,
        _ => Some(Store::open(&a.url, PG_POOL).await?),
    };
    if let Some(store) = &store {
        // Each keyframe starts from an empty queue so earlier runs' items don't change its work.
        sqlx::query("DELETE FROM work WHERE producer = $1")
            .bind(KF_PRODUCER)
            .execute(store.pool())
            .await?;
    }
    let clock = Instant::now();
    let (records, rows_read, drifted) = match (a.mode, &store) {
        (ProbeMode::Fetch, _) => {
            let snap = fetch::pull(&client, &p.snapshot, &hasher, p.bucket_bits).await?;
            (snap.records.len() as u64, 0, 0)
        }
        (ProbeMode::Keyframe, Some(store)) => {
            let k = Keyframer::new(store.clone(), client.clone(), Metrics::new());
            let s = k.run(&p, false).await?;
            if let Some(e) = &s.error {
                bail!("keyframe failed: {e}");
            }
            (s.records, s.rows_read, s.drift())
        }
        (ProbeMode::Naive, Some(store)) => naive(store, &client, &p, &hasher).await?,
        _ => unreachable!("a store is opened for every mode but fetch"),
    };
    let wall_ms = clock.elapsed().as_secs_f64() * 1000.0;
    stop.cancel();
    let out = Probe {
        mode: a.mode,
        wall_ms,
        peak_rss_mib: peak_rss_mib(),
        records,
        rows_read,
        drifted,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The naive alternative: pull, load every local row, compare every document.
async fn naive(
    store: &Store,
    client: &reqwest::Client,
    p: &ProducerConfig,
    hasher: &RecordHasher,
) -> Result<(u64, u64, u64)> {
    let snap = fetch::pull(client, &p.snapshot, hasher, p.bucket_bits).await?;
    let local = store.entities(&p.name).await?;
    let by_key: HashMap<&str, &Value> = local
        .iter()
        .filter_map(|e| e.doc.as_ref().map(|d| (e.key.as_str(), d)))
        .collect();
    let (mut missing, mut changed, mut matched) = (0u64, 0u64, 0u64);
    for r in &snap.records {
        let doc = snap.doc(r)?;
        match by_key.get(&*r.key) {
            None => missing += 1,
            Some(d) => {
                matched += 1;
                if **d != doc {
                    changed += 1;
                }
            }
        }
    }
    let extra = by_key.len() as u64 - matched;
    Ok((
        snap.records.len() as u64,
        local.len() as u64,
        missing + changed + extra,
    ))
}

// ---------------------------------------------------------------------------
// Load driver

/// Runs `clients` loops calling `call(seq)` until `max_total` calls or `dur`
/// elapsed. With `rate`, calls are scheduled open-loop at that total rate and
/// latency counts from the scheduled time (queueing included).
async fn load<F, Fut>(
    clients: usize,
    dur: Duration,
    max_total: u64,
    rate: Option<f64>,
    call: F,
) -> Load
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let seq = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let deadline = start + dur;
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let call = call.clone();
        let seq = seq.clone();
        set.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let interval = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
            let mut k = 0u64;
            loop {
                let scheduled = match interval {
                    Some(iv) => {
                        let at = start + iv.mul_f64(k as f64 + c as f64 / clients as f64);
                        k += 1;
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                        at
                    }
                    None => tokio::time::Instant::now(),
                };
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                let n = seq.fetch_add(1, AtomicOrdering::Relaxed);
                if n >= max_total {
                    break;
                }
                match call(n).await {
                    Ok(()) => lat.push(scheduled.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = set.join_next().await {
        if let Ok((l, e)) = r {
            lat.extend(l);
            errors += e;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let q = |f: f64| -> f64 {
        if lat.is_empty() {
            0.0
        } else {
            let i = ((lat.len() as f64 * f).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i].as_secs_f64() * 1000.0
        }
    };
    Load {
        clients,
        ok: lat.len() as u64,
        errors,
        secs,
        per_sec: lat.len() as f64 / secs,
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: q(1.0),
    }
}

// ---------------------------------------------------------------------------
// Scenario 3: durable webhook ingest

fn ingest_config(url: &str, backend: BackendArg) -> Result<Config> {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[database]
url = "{url}"
max_connections = {PG_POOL}
[[producer]]
name = "hooks"
schedule = "0 0 0 1 1 *"
[producer.snapshot]
url = "http://127.0.0.1:9/unused"
[producer.webhook]
scheme = "hmac-sha256"
secret = "{WEBHOOK_SECRET}"
header = "X-Signature"
prefix = "sha256="
key = "/id"
version = "/version"
[producer.work]
action = "none"
"#
    );
    let _ = backend;
    Ok(Config::parse("bench.toml", &text, &|_| None)
        .map_err(|e| anyhow!("{e}"))?
        .config)
}

fn delta_body(seq: u64, side: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{side}-{seq:09}","version":1,"status":"paid","amount_cents":{},"customer":"customer{}@example.test","note":"a delta of about two hundred bytes, padded for realism"}}"#,
        seq * 7 % 100_000,
        seq % 5_000
    )
    .into_bytes()
}

async fn baseline_pool(url: &str, backend: BackendArg) -> Result<AnyPool> {
    sqlx::any::install_default_drivers();
    let size = match backend {
        BackendArg::Sqlite => 1,
        BackendArg::Postgres => PG_POOL,
    };
    Ok(AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?)
}

async fn ingest_scenarios(backend: BackendArg, k: &IngestKnobs) -> Result<IngestReport> {
    let k = k.clone();
    with_db(backend, "ingest", |url| async move {
        note(format!("ingest/{}: starting the daemon", backend.name()));
        let config = ingest_config(&url, backend)?;
        let wcfg = config.producers[0]
            .webhook
            .clone()
            .ok_or_else(|| anyhow!("the bench producer has a webhook"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = App::build(config, Some(listener)).await?;
        let addr = app.local_addr()?;
        let shutdown = CancellationToken::new();
        let daemon = tokio::spawn(app.run(shutdown.clone()));

        let pool = baseline_pool(&url, backend).await?;
        let create = match backend {
            BackendArg::Sqlite => {
                "CREATE TABLE bench_inbox (id INTEGER PRIMARY KEY AUTOINCREMENT, producer TEXT NOT NULL,
                 channel TEXT NOT NULL, received_at INTEGER NOT NULL, dedup_key TEXT, duplicate_of INTEGER,
                 headers TEXT NOT NULL, body BLOB NOT NULL, outcome TEXT NOT NULL DEFAULT 'pending',
                 error TEXT, applied_at INTEGER)"
            }
            BackendArg::Postgres => {
                "CREATE TABLE bench_inbox (id BIGSERIAL PRIMARY KEY, producer TEXT NOT NULL,
                 channel TEXT NOT NULL, received_at BIGINT NOT NULL, dedup_key TEXT, duplicate_of BIGINT,
                 headers TEXT NOT NULL, body BYTEA NOT NULL, outcome TEXT NOT NULL DEFAULT 'pending',
                 error TEXT, applied_at BIGINT)"
            }
        };
        sqlx::query(create).execute(&pool).await?;
        sqlx::query(
            "CREATE UNIQUE INDEX bench_inbox_dedup ON bench_inbox (producer, channel, dedup_key)
             WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL",
        )
        .execute(&pool)
        .await?;
        sqlx::query("CREATE INDEX bench_inbox_by_producer ON bench_inbox (producer, id)")
            .execute(&pool)
            .await?;

        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        let hook_url = Arc::new(format!("http://{addr}/hooks/hooks"));
        let wcfg = Arc::new(wcfg);
        let dur = Duration::from_secs_f64(k.ingest_secs);
        let run_id = Arc::new(AtomicU64::new(0));

        let webhook_call = {
            let client = client.clone();
            let hook_url = hook_url.clone();
            let wcfg = wcfg.clone();
            let run_id = run_id.clone();
            move |seq: u64| {
                let client = client.clone();
                let hook_url = hook_url.clone();
                let wcfg = wcfg.clone();
                let side = format!("d{}", run_id.load(AtomicOrdering::Relaxed));
                async move {
                    let body = delta_body(seq, &side);
                    let id = format!("msg-{side}-{seq}");
                    let headers =
                        signature::sign(&wcfg, &body, chrono::Utc::now().timestamp(), &id);
                    let mut req = client
                        .post(hook_url.as_str())
                        .header("content-type", "application/json");
                    for (h, v) in headers {
                        req = req.header(h, v);
                    }
                    let resp = req.body(body).send().await?;
                    if !resp.status().is_success() {
                        bail!("webhook answered {}", resp.status());
                    }
                    Ok(())
                }
            }
        };
        let insert_call = {
            let pool = pool.clone();
            let run_id = run_id.clone();
            move |seq: u64| {
                let pool = pool.clone();
                let side = format!("b{}", run_id.load(AtomicOrdering::Relaxed));
                async move {
                    let body = delta_body(seq, &side);
                    sqlx::query(
                        "INSERT INTO bench_inbox (producer, channel, received_at, dedup_key, headers, body)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind("hooks")
                    .bind("webhook")
                    .bind(now_ms())
                    .bind(format!("msg-{side}-{seq}"))
                    .bind("{}")
                    .bind(body)
                    .execute(&pool)
                    .await?;
                    Ok(())
                }
            }
        };

        let mut levels = Vec::new();
        for &clients in &k.clients {
            run_id.fetch_add(1, AtomicOrdering::Relaxed);
            let insert_baseline =
                load(clients, dur, k.ingest_max, None, insert_call.clone()).await;
            let driftd = load(clients, dur, k.ingest_max, None, webhook_call.clone()).await;
            note(format!(
                "  {clients} clients: driftd {:.0}/s p99 {:.1} ms ({} errors); INSERT {:.0}/s p99 {:.1} ms",
                driftd.per_sec, driftd.p99_ms, driftd.errors, insert_baseline.per_sec, insert_baseline.p99_ms
            ));
            levels.push(IngestLevel {
                clients,
                driftd,
                insert_baseline,
            });
        }
        let paced = match levels
            .iter()
            .max_by(|a, b| a.driftd.per_sec.total_cmp(&b.driftd.per_sec))
        {
            Some(best) if best.driftd.per_sec > 0.0 => {
                run_id.fetch_add(1, AtomicOrdering::Relaxed);
                let target = best.driftd.per_sec * 0.8;
                // Open loop: as many client slots as the largest level, so the
                // clients never cap the offered rate.
                let slots = k.clients.iter().copied().max().unwrap_or(best.clients);
                let load = load(
                    slots,
                    dur,
                    k.ingest_max,
                    Some(target),
                    webhook_call.clone(),
                )
                .await;
                note(format!(
                    "  paced at {target:.0}/s with {slots} client slots: {:.0}/s p99 {:.1} ms",
                    load.per_sec, load.p99_ms
                ));
                Some(PacedRun {
                    target_per_sec: target,
                    load,
                })
            }
            _ => None,
        };
        pool.close().await;
        shutdown.cancel();
        daemon
            .await
            .map_err(|e| anyhow!("the daemon task panicked: {e}"))??;
        Ok(IngestReport {
            backend,
            levels,
            paced,
        })
    })
    .await
}

// ---------------------------------------------------------------------------
// Scenario 4: work queue

async fn work_scenarios(backend: BackendArg, k: &WorkKnobs) -> Result<WorkReport> {
    let k = k.clone();
    with_db(backend, "work", |url| async move {
        let store = Store::open(&url, PG_POOL).await?;
        let dur = Duration::from_secs_f64(k.work_secs);
        let producer = "queue";
        note(format!(
            "work/{}: emitting {} no-op items",
            backend.name(),
            k.work_items
        ));
        let items: Vec<NewWork> = (0..k.work_items)
            .map(|i| NewWork {
                key: format!("key-{i:08}"),
                action: "none".into(),
                spec: format!(r#"{{"producer":"queue","key":"key-{i:08}"}}"#),
                dedup_key: format!("dedup-{i}"),
            })
            .collect();
        // One call: `emit_work` closes pending items of keys it is not given.
        let emitted = store.emit_work(producer, &items, 5, i64::MAX).await?;
        if emitted.inserted != k.work_items {
            bail!("emitted {} of {} work items", emitted.inserted, k.work_items);
        }
        drop(items);

        // driftd: Store::claim_work + finish_work, as `Workers::tick` does.
        let done = Arc::new(AtomicU64::new(0));
        let clock = Instant::now();
        let deadline = clock + dur;
        let mut set = tokio::task::JoinSet::new();
        for w in 0..k.work_workers {
            let store = store.clone();
            let done = done.clone();
            let max = k.work_items;
            let batch = k.work_batch;
            set.spawn(async move {
                let worker = format!("bench-{w}");
                while Instant::now() < deadline && done.load(AtomicOrdering::Relaxed) < max {
                    let claimed = store
                        .claim_work(producer, &worker, batch, 60_000, now_ms())
                        .await?;
                    if claimed.is_empty() {
                        break;
                    }
                    for item in claimed {
                        if store
                            .finish_work(item.id, &worker, WorkState::Done, now_ms(), None)
                            .await?
                        {
                            done.fetch_add(1, AtomicOrdering::Relaxed);
                        }
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let secs = clock.elapsed().as_secs_f64();
        let n = done.load(AtomicOrdering::Relaxed);
        let driftd = QueueRun {
            items: n,
            secs,
            per_sec: n as f64 / secs,
        };
        store.pool().close().await;

        // Raw SQL: an equivalent table and the textbook claim-and-complete loop.
        let pool = baseline_pool(&url, backend).await?;
        let create = match backend {
            BackendArg::Sqlite => {
                "CREATE TABLE bench_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, spec TEXT NOT NULL,
                 state TEXT NOT NULL DEFAULT 'pending', run_at INTEGER NOT NULL, locked_by TEXT)"
            }
            BackendArg::Postgres => {
                "CREATE TABLE bench_queue (id BIGSERIAL PRIMARY KEY, spec TEXT NOT NULL,
                 state TEXT NOT NULL DEFAULT 'pending', run_at BIGINT NOT NULL, locked_by TEXT)"
            }
        };
        sqlx::query(create).execute(&pool).await?;
        sqlx::query("CREATE INDEX bench_queue_claimable ON bench_queue (run_at) WHERE state = 'pending'")
            .execute(&pool)
            .await?;
        let mut i = 0;
        while i < k.work_items {
            let end = (i + 500).min(k.work_items);
            let values: Vec<String> = (i..end)
                .map(|j| format!("('{{\"key\":\"key-{j:08}\"}}', {j})"))
                .collect();
            sqlx::query(&format!(
                "INSERT INTO bench_queue (spec, run_at) VALUES {}",
                values.join(",")
            ))
            .execute(&pool)
            .await?;
            i = end;
        }
        let claim = match backend {
            BackendArg::Sqlite => {
                "UPDATE bench_queue SET state = 'running', locked_by = $1
                 WHERE id IN (SELECT id FROM bench_queue WHERE state = 'pending' ORDER BY run_at, id LIMIT $2)
                 RETURNING id"
            }
            BackendArg::Postgres => {
                "UPDATE bench_queue SET state = 'running', locked_by = $1
                 WHERE id IN (SELECT id FROM bench_queue WHERE state = 'pending' ORDER BY run_at, id LIMIT $2
                              FOR UPDATE SKIP LOCKED)
                 RETURNING id"
            }
        };
        let done = Arc::new(AtomicU64::new(0));
        let clock = Instant::now();
        let deadline = clock + dur;
        let mut set = tokio::task::JoinSet::new();
        for w in 0..k.work_workers {
            let pool = pool.clone();
            let done = done.clone();
            let max = k.work_items;
            let batch = k.work_batch;
            set.spawn(async move {
                let worker = format!("raw-{w}");
                while Instant::now() < deadline && done.load(AtomicOrdering::Relaxed) < max {
                    let ids: Vec<i64> = sqlx::query(claim)
                        .bind(&worker)
                        .bind(i64::from(batch))
                        .fetch_all(&pool)
                        .await?
                        .iter()
                        .map(|r| r.try_get(0))
                        .collect::<Result<_, _>>()?;
                    if ids.is_empty() {
                        break;
                    }
                    for id in ids {
                        sqlx::query(
                            "UPDATE bench_queue SET state = 'done', locked_by = NULL WHERE id = $1 AND locked_by = $2",
                        )
                        .bind(id)
                        .bind(&worker)
                        .execute(&pool)
                        .await?;
                        done.fetch_add(1, AtomicOrdering::Relaxed);
                    }
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        let secs = clock.elapsed().as_secs_f64();
        let n = done.load(AtomicOrdering::Relaxed);
        let raw_sql = QueueRun {
            items: n,
            secs,
            per_sec: n as f64 / secs,
        };
        pool.close().await;
        note(format!(
            "work/{}: driftd {:.0} items/s, raw SQL {:.0} items/s",
            backend.name(),
            driftd.per_sec,
            raw_sql.per_sec
        ));
        Ok(WorkReport {
            backend,
            workers: k.work_workers,
            batch: k.work_batch,
            driftd,
            raw_sql,
        })
    })
    .await
}

// ---------------------------------------------------------------------------
// Table and targets

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        f64::NAN
    }
}

fn fmt_pct(p: f64) -> String {
    format!("{p}%")
}

impl Results {
    fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "\nmachine: {} cores, {} MiB, {}",
            m.nproc, m.mem_total_mib, m.cpu_model
        );
        for r in &self.keyframe {
            let _ = writeln!(
                s,
                "\n### Keyframe, {} ({} records of ~500 bytes; seeded in {:.1} s, {:.0} rows/s)\n",
                r.backend.name(),
                r.records,
                r.seed_secs,
                r.seed_rows_per_sec
            );
            let _ = writeln!(
                s,
                "| drift | mode | wall s | × fetch-only | × 0% keyframe | × keyframe | peak RSS MiB | rows read | drifted |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
            let fetch_s = r.fetch.wall_ms / 1000.0;
            let _ = writeln!(
                s,
                "| 0.1% | fetch-only | {fetch_s:.2} | 1.00 | | | {:.0} | 0 | |",
                r.fetch.peak_rss_mib
            );
            let zero = r
                .levels
                .iter()
                .find(|l| l.drift_pct == 0.0)
                .map(|l| l.keyframe.wall_ms);
            for l in &r.levels {
                let k = &l.keyframe;
                let _ = writeln!(
                    s,
                    "| {} | keyframe | {:.2} | {:.2} | {} | | {:.0} | {} | {} |",
                    fmt_pct(l.drift_pct),
                    k.wall_ms / 1000.0,
                    ratio(k.wall_ms, r.fetch.wall_ms),
                    zero.map(|z| format!("{:.2}", ratio(k.wall_ms, z)))
                        .unwrap_or_default(),
                    k.peak_rss_mib,
                    k.rows_read,
                    k.drifted
                );
                if let Some(n) = &l.naive {
                    let _ = writeln!(
                        s,
                        "| {} | naive | {:.2} | {:.2} | | {:.2} | {:.0} | {} | {} |",
                        fmt_pct(l.drift_pct),
                        n.wall_ms / 1000.0,
                        ratio(n.wall_ms, r.fetch.wall_ms),
                        ratio(n.wall_ms, k.wall_ms),
                        n.peak_rss_mib,
                        n.rows_read,
                        n.drifted
                    );
                }
            }
        }
        for r in &self.ingest {
            let _ = writeln!(
                s,
                "\n### Webhook ingest, {} (HMAC-SHA256, through App; baseline: single-row INSERT via sqlx)\n",
                r.backend.name()
            );
            let _ = writeln!(
                s,
                "| clients | driftd deltas/s | p50 ms | p99 ms | errors | INSERT/s | INSERT p99 ms | × INSERT |"
            );
            let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
            for l in &r.levels {
                let _ = writeln!(
                    s,
                    "| {} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {:.2} | {:.2} |",
                    l.clients,
                    l.driftd.per_sec,
                    l.driftd.p50_ms,
                    l.driftd.p99_ms,
                    l.driftd.errors,
                    l.insert_baseline.per_sec,
                    l.insert_baseline.p99_ms,
                    ratio(l.driftd.per_sec, l.insert_baseline.per_sec)
                );
            }
            if let Some(p) = &r.paced {
                let _ = writeln!(
                    s,
                    "\npaced at 80% of peak ({:.0}/s, {} client slots, open loop): achieved {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}",
                    p.target_per_sec,
                    p.load.clients,
                    p.load.per_sec,
                    p.load.p50_ms,
                    p.load.p99_ms,
                    p.load.max_ms,
                    p.load.errors
                );
            }
        }
        if !self.work.is_empty() {
            let _ = writeln!(s, "\n### Work queue (no-op items)\n");
            let _ = writeln!(
                s,
                "| backend | workers × batch | driftd items/s | raw SQL items/s | × raw |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
            for r in &self.work {
                let _ = writeln!(
                    s,
                    "| {} | {} × {} | {:.0} ({} in {:.1} s) | {:.0} ({} in {:.1} s) | {:.2} |",
                    r.backend.name(),
                    r.workers,
                    r.batch,
                    r.driftd.per_sec,
                    r.driftd.items,
                    r.driftd.secs,
                    r.raw_sql.per_sec,
                    r.raw_sql.items,
                    r.raw_sql.secs,
                    ratio(r.driftd.per_sec, r.raw_sql.per_sec)
                );
            }
        }
        feed::table(&self.feed, &mut s);
        if !self.targets.is_empty() {
            let _ = writeln!(s, "\n### Targets\n");
            let _ = writeln!(s, "| backend | target | measured | limit | |");
            let _ = writeln!(s, "|---|---|---:|---:|---|");
            for t in &self.targets {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    t.backend,
                    t.name,
                    t.measured,
                    t.target,
                    if t.met { "met" } else { "MISSED" }
                );
            }
        }
        let _ = writeln!(s, "\ntotal: {:.0} s", self.total_secs);
        s
    }
}

fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let mut push =
        |backend: BackendArg, name: &str, value: f64, unit: &str, limit: f64, le: bool| {
            out.push(Target {
                backend: backend.name(),
                name: name.to_string(),
                measured: format!("{value:.2}{unit}"),
                target: format!("{}{limit}{unit}", if le { "≤ " } else { "≥ " }),
                met: if le { value <= limit } else { value >= limit },
            });
        };
    for k in &r.keyframe {
        let level = |pct: f64| k.levels.iter().find(|l| (l.drift_pct - pct).abs() < 1e-9);
        if let Some(l) = level(0.1) {
            push(
                k.backend,
                "keyframe at 0.1% / fetch-only",
                ratio(l.keyframe.wall_ms, k.fetch.wall_ms),
                "×",
                1.25,
                true,
            );
            push(
                k.backend,
                "rows read / drifted rows at 0.1%",
                ratio(l.keyframe.rows_read as f64, l.keyframe.drifted as f64),
                "×",
                20.0,
                true,
            );
        }
        if let (Some(z), Some(t)) = (level(0.0), level(10.0)) {
            push(
                k.backend,
                "keyframe at 10% / keyframe at 0%",
                ratio(t.keyframe.wall_ms, z.keyframe.wall_ms),
                "×",
                2.0,
                true,
            );
        }
        let peak = k
            .levels
            .iter()
            .map(|l| l.keyframe.peak_rss_mib)
            .fold(0.0, f64::max);
        push(
            k.backend,
            &format!("keyframe peak RSS at {} records", k.records),
            peak,
            " MiB",
            128.0,
            true,
        );
    }
    for i in &r.ingest {
        if let Some(l) = i.levels.iter().find(|l| l.clients == 16) {
            push(
                i.backend,
                "ingest / INSERT baseline at 16 clients",
                ratio(l.driftd.per_sec, l.insert_baseline.per_sec),
                "×",
                1.0,
                false,
            );
        }
        if let Some(p) = &i.paced {
            push(
                i.backend,
                "ingest p99 at 80% of peak",
                p.load.p99_ms,
                " ms",
                20.0,
                true,
            );
        }
    }
    for w in &r.work {
        push(
            w.backend,
            "work queue / raw SQL",
            ratio(w.driftd.per_sec, w.raw_sql.per_sec),
            "×",
            0.5,
            false,
        );
    }
    feed::targets(&r.feed, &mut push);
    out
}
