//! `driftd demo`: the real daemon against an in-process vendor whose webhooks get lost, duplicated and reordered, until keyframes bring drift back to zero.
//!
//! Everything runs in this process and talks only over loopback:
//! - a demo **vendor** (an axum server on `127.0.0.1:0`) holds mortgage-platform
//!   orders and serves them with cursor pagination; a **churn** task changes a
//!   few dozen orders a second and sends driftd a signed Standard Webhooks
//!   delta per change, dropping `--loss` of them, duplicating and reordering
//!   some;
//! - the daemon itself (`App::build` + `App::run`) from a config written to
//!   `<dir>/driftd-demo.toml`, with SQLite in the same directory.
//!
//! The story printed on stdout: a bootstrap keyframe fills the empty table
//! (the guard never trips on an empty table) before the daemon starts; then
//! scheduled keyframes find the drift the lost deltas left and `apply` work
//! corrects it; at the end a final keyframe and a record-for-record comparison
//! with the vendor decide the exit status (0 only when equal).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::config::{Config, Producer, WebhookConfig};
use crate::keyframe::run::{KeyframeError, Keyframer, Summary};
use crate::metrics::Metrics;
use crate::state::RunState;
use crate::store::{RunRow, Store};
use crate::work::Workers;

/// The producer's name in the demo config.
/// The demo's `/v1` read token (a loopback demo; real configs take it from the environment).
const DEMO_READ_TOKEN: &str = "demo-read-token";
const PRODUCER: &str = "demo";
/// File names inside the demo directory.
const CONFIG_FILE: &str = "driftd-demo.toml";
const DB_FILE: &str = "driftd-demo.db";
/// Share of delivered webhooks sent twice, and held back to arrive after a later one.
const DUPLICATE: f64 = 0.05;
const REORDER: f64 = 0.05;
/// Snapshot page size the config asks for.
const PAGE: usize = 500;
/// Per-request timeout of a webhook delivery.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds on the waits of the final phase.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
const KEYFRAME_TIMEOUT: Duration = Duration::from_secs(120);
/// How long each shutdown step may take.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);
/// Keyframes the final phase runs at most before comparing.
const FINAL_ROUNDS: usize = 3;

/// Arguments of `driftd demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Seconds the vendor keeps changing before the final keyframe.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Share of webhooks the vendor drops, from 0 to 1.
    #[arg(long, default_value_t = 0.1)]
    pub loss: f64,
    /// Orders the vendor holds at the start.
    #[arg(long, default_value_t = 3000)]
    pub records: u64,
    /// Seconds between scheduled keyframes (1-59, or whole minutes).
    #[arg(long, default_value_t = 10)]
    pub keyframe_every: u64,
    /// Vendor changes per second, each one a webhook.
    #[arg(long, default_value_t = 30)]
    pub rate: u32,
    /// Directory for the config and the SQLite database, kept afterwards
    /// (default: a new temporary directory). A previous demo database there is replaced.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Loopback address driftd listens on (webhooks, /metrics).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Seed of the vendor's random choices (default: random; printed at the start).
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Runs the demo; exit 0 only when the local rows equal the vendor's records at the end.
pub fn main(args: DemoArgs) -> ExitCode {
    if let Err(problem) = validate_args(&args) {
        eprintln!("driftd demo: {problem}");
        return ExitCode::from(crate::cli::EXIT_USAGE);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(Outcome::Equal) => ExitCode::SUCCESS,
        Ok(Outcome::Different) => ExitCode::FAILURE,
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("driftd demo failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate_args(a: &DemoArgs) -> Result<(), String> {
    if !(0.0..=1.0).contains(&a.loss) {
        return Err(format!("--loss {} must be between 0 and 1", a.loss));
    }
    if !(1..=100_000).contains(&a.records) {
        return Err(format!(
            "--records {} must be between 1 and 100000",
            a.records
        ));
    }
    if !(1..=86_400).contains(&a.duration) {
        return Err(format!(
            "--duration {} must be between 1 and 86400 seconds",
            a.duration
        ));
    }
    if !(1..=1000).contains(&a.rate) {
        return Err(format!("--rate {} must be between 1 and 1000", a.rate));
    }
    schedule_for(a.keyframe_every)?;
    if !a.listen.ip().is_loopback() {
        return Err(format!(
            "--listen {} must be a loopback address: the demo talks only to itself",
            a.listen
        ));
    }
    Ok(())
}

/// The cron expression (with seconds) of a keyframe every `secs` seconds.
pub fn schedule_for(secs: u64) -> Result<String, String> {
    match secs {
        1..=59 => Ok(format!("*/{secs} * * * * *")),
        s if s % 60 == 0 && (1..=59).contains(&(s / 60)) => Ok(format!("0 */{} * * * *", s / 60)),
        s => Err(format!(
            "--keyframe-every {s} must be 1-59 seconds or 1-59 whole minutes"
        )),
    }
}

enum Outcome {
    Equal,
    Different,
    Interrupted,
}

// ---------------------------------------------------------------------------
// The vendor: orders, their changes, and the snapshot endpoint.

const PRODUCTS: &[&str] = &[
    "appraisal",
    "title-search",
    "flood-certificate",
    "credit-report",
    "employment-verification",
];
const STATUSES: &[&str] = &["ordered", "assigned", "scheduled", "in-review", "delivered"];
const STATES: &[&str] = &["CA", "TX", "FL", "NY", "WA", "IL", "CO", "GA"];

/// The vendor's state: orders by id, and the counters that number new ones and versions.
#[derive(Debug, Clone)]
pub struct Orders {
    records: BTreeMap<String, Value>,
    next_id: u64,
    /// The last version handed out; every change takes the next one.
    version: i64,
}

/// One vendor change, as a webhook carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    /// The full order after a create or an edit.
    Upsert(Value),
    /// The order is gone; `version` orders the deletion among the order's other deltas.
    Delete { key: String, version: i64 },
}

impl Delta {
    pub fn key(&self) -> &str {
        match self {
            Delta::Upsert(doc) => doc["id"].as_str().unwrap_or_default(),
            Delta::Delete { key, .. } => key,
        }
    }

    /// The webhook body: the order itself, or `{"id", "version", "deleted": true}`.
    pub fn body(&self) -> Vec<u8> {
        let v = match self {
            Delta::Upsert(doc) => doc.clone(),
            Delta::Delete { key, version } => {
                json!({ "id": key, "version": version, "deleted": true })
            }
        };
        serde_json::to_vec(&v).expect("JSON values always serialize")
    }
}

fn order_key(n: u64) -> String {
    format!("ord-{n:07}")
}

impl Orders {
    /// `n` orders at version 1.
    pub fn new(n: u64, rng: &mut impl Rng, now: &str) -> Self {
        let mut o = Self {
            records: BTreeMap::new(),
            next_id: 1,
            version: 1,
        };
        for _ in 0..n {
            o.create(rng, now, 1);
        }
        o
    }

    pub fn records(&self) -> &BTreeMap<String, Value> {
        &self.records
    }

    fn create(&mut self, rng: &mut impl Rng, now: &str, version: i64) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let doc = json!({
            "id": order_key(id),
            "loan_number": format!("LN-{:08}", 20_000_000 + id * 7),
            "product": PRODUCTS[rng.random_range(0..PRODUCTS.len())],
            "status": STATUSES[0],
            "property_state": STATES[rng.random_range(0..STATES.len())],
            "fee_cents": rng.random_range(80..=900) * 100 + 50,
            "version": version,
            "updated_at": now,
        });
        self.records.insert(order_key(id), doc.clone());
        doc
    }

    /// One change: mostly edits (of `prefer` when it still exists), some creates and deletes.
    pub fn change(&mut self, rng: &mut impl Rng, prefer: Option<&str>, now: &str) -> Delta {
        self.version += 1;
        let version = self.version;
        let preferred = prefer.filter(|k| self.records.contains_key(*k));
        let roll = rng.random_range(0..100);
        if self.records.is_empty() || (preferred.is_none() && roll < 10) {
            return Delta::Upsert(self.create(rng, now, version));
        }
        let key = match preferred {
            Some(k) => k.to_string(),
            None => {
                let i = rng.random_range(0..self.records.len());
                self.records.keys().nth(i).cloned().unwrap_or_default()
            }
        };
        if preferred.is_none() && roll < 20 {
            self.records.remove(&key);
            return Delta::Delete { key, version };
        }
        let doc = self
            .records
            .get_mut(&key)
            .expect("the key was taken from the map");
        let status = doc["status"].as_str().unwrap_or_default();
        let next = STATUSES.iter().position(|s| *s == status).map(|i| i + 1);
        match next {
            Some(i) if i < STATUSES.len() && rng.random_bool(0.6) => {
                doc["status"] = json!(STATUSES[i]);
            }
            _ => doc["fee_cents"] = json!(rng.random_range(80..=900) * 100 + 50),
        }
        doc["version"] = json!(version);
        doc["updated_at"] = json!(now);
        Delta::Upsert(doc.clone())
    }

    /// Up to `limit` orders after key `cursor` in key order, and the cursor of the next page.
    ///
    /// A key cursor (rather than an offset) never repeats or skips an order
    /// that exists throughout a pull, however many are created or deleted meanwhile.
    pub fn page(&self, cursor: Option<&str>, limit: usize) -> (Vec<Value>, Option<String>) {
        let lower = match cursor {
            Some(c) => Bound::Excluded(c),
            None => Bound::Unbounded,
        };
        let mut range = self.records.range::<str, _>((lower, Bound::Unbounded));
        let items: Vec<(&String, &Value)> = range.by_ref().take(limit.max(1)).collect();
        let next = match (range.next(), items.last()) {
            (Some(_), Some((last, _))) => Some((*last).clone()),
            _ => None,
        };
        (items.into_iter().map(|(_, v)| v.clone()).collect(), next)
    }
}

/// The vendor's orders, shared by the snapshot endpoint and the churn task.
#[derive(Clone, Debug)]
struct Vendor(Arc<Mutex<Orders>>);

impl Vendor {
    fn lock(&self) -> MutexGuard<'_, Orders> {
        // No code panics while holding the lock; recover the data if one ever did.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug, Deserialize)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn list_orders(State(v): State<Vendor>, Query(q): Query<PageQuery>) -> Json<Value> {
    let limit = q.limit.unwrap_or(PAGE).clamp(1, 1000);
    let (data, next) = v.lock().page(q.cursor.as_deref(), limit);
    Json(json!({ "data": data, "next_cursor": next }))
}

// ---------------------------------------------------------------------------
// The churn: vendor changes and their webhooks, with loss, duplicates and reordering.

/// What the vendor did to its webhooks; shared with the reporter.
#[derive(Debug, Default)]
struct Stats {
    changes: AtomicU64,
    lost: AtomicU64,
    /// Deltas delivered at least once (excluding redeliveries).
    sent: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    /// Requests by answer: 2xx, 404, other statuses, no answer.
    accepted: AtomicU64,
    not_found: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    last_refusal: AtomicU64,
}

impl Stats {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// One webhook delivery: its message id (the dedup key) and body.
#[derive(Debug, Clone)]
struct Outgoing {
    id: String,
    key: String,
    body: Vec<u8>,
}

/// Signs and posts deltas to driftd's webhook endpoint.
struct Sender {
    client: reqwest::Client,
    url: String,
    webhook: WebhookConfig,
    stats: Arc<Stats>,
}

impl Sender {
    async fn post(&self, d: &Outgoing) {
        let now = chrono::Utc::now().timestamp();
        let mut req = self
            .client
            .post(&self.url)
            .timeout(SEND_TIMEOUT)
            .header("content-type", "application/json")
            .body(d.body.clone());
        for (name, value) in crate::ingest::signature::sign(&self.webhook, &d.body, now, &d.id) {
            req = req.header(name, value);
        }
        let s = &self.stats;
        match req.send().await {
            Ok(r) if r.status().is_success() => Stats::bump(&s.accepted),
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => Stats::bump(&s.not_found),
            Ok(r) => {
                s.last_refusal
                    .store(u64::from(r.status().as_u16()), Ordering::Relaxed);
                Stats::bump(&s.refused);
            }
            Err(_) => Stats::bump(&s.failed),
        }
    }

    /// Delivers `d`, and with probability [`DUPLICATE`] delivers it again (same message id).
    async fn deliver(&self, d: &Outgoing, rng: &mut StdRng) {
        self.post(d).await;
        if rng.random_bool(DUPLICATE) {
            Stats::bump(&self.stats.duplicated);
            self.post(d).await;
        }
    }
}

/// Changes the vendor `rate` times a second until `stop` (or `deadline`), sending
/// each change as a webhook except the lost ones; flushes a held-back delta on the way out.
async fn churn(
    vendor: Vendor,
    sender: Sender,
    loss: f64,
    rate: u32,
    seed: u64,
    deadline: Instant,
    stop: CancellationToken,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held: Option<Outgoing> = None;
    let mut prefer: Option<String> = None;
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let delta = vendor
            .lock()
            .change(&mut rng, prefer.take().as_deref(), &now);
        seq += 1;
        let stats = &sender.stats;
        Stats::bump(&stats.changes);
        if rng.random_bool(loss) {
            Stats::bump(&stats.lost);
            continue;
        }
        Stats::bump(&stats.sent);
        let out = Outgoing {
            id: format!("msg_demo_{seq:09}"),
            key: delta.key().to_string(),
            body: delta.body(),
        };
        if let Some(earlier) = held.take() {
            // The later change overtakes the earlier one.
            sender.deliver(&out, &mut rng).await;
            sender.deliver(&earlier, &mut rng).await;
        } else if rng.random_bool(REORDER) {
            Stats::bump(&stats.reordered);
            // Half the time the overtaking change is to the same order, so the
            // earlier delta arrives stale.
            if rng.random_bool(0.5) {
                prefer = Some(out.key.clone());
            }
            held = Some(out);
        } else {
            sender.deliver(&out, &mut rng).await;
        }
    }
    if let Some(earlier) = held.take() {
        sender.deliver(&earlier, &mut rng).await;
    }
}

// ---------------------------------------------------------------------------
// Setup: directory, config, servers.

/// The config the demo runs with; `driftd check` accepts it.
pub fn config_toml(
    db_path: &Path,
    listen: SocketAddr,
    vendor: SocketAddr,
    schedule: &str,
    secret: &str,
) -> String {
    let db_url = toml_string(&format!("sqlite://{}", db_path.display()));
    format!(
        r#"# Written by `driftd demo`. Its vendor lived inside the demo process at {vendor}
# and is gone, but `driftd status --config THIS_FILE` still shows what happened.
# Copy from it: every key is documented in config/example.toml.

[server]
listen = "{listen}"
# The application's API (/v1: change feed, entities); a real config reads its token from the environment.
read_token = "{DEMO_READ_TOKEN}"

[database]
url = {db_url}

[[producer]]
name = "{PRODUCER}"
schedule = "{schedule}"
# A keyframe that finds more drift than this share of the records corrects nothing
# until `driftd approve RUN_ID` (never on an empty table: the first keyframe bootstraps).
max_drift_ratio = 0.5

[producer.snapshot]
url = "http://{vendor}/orders"
items = "/data"
key = "/id"
version = "/version"
timeout_secs = 10
retries = 2
retry_backoff_ms = 100

[producer.snapshot.pagination]
style = "cursor"
cursor = "/next_cursor"
param = "cursor"
limit = {PAGE}
limit_param = "limit"

[producer.webhook]
scheme = "standard-webhooks"
secret = "${{DRIFTD_DEMO_WEBHOOK_SECRET:-{secret}}}"
items = ""
key = "/id"
version = "/version"
mode = "replace"
deleted = "/deleted"
dedup_header = "webhook-id"

[producer.work]
action = "apply"
concurrency = 8
backoff_base_ms = 200
backoff_max_ms = 5000
"#
    )
}

/// A TOML basic string holding `s` literally (`${` escaped against substitution).
fn toml_string(s: &str) -> String {
    toml::Value::String(s.replace("${", "$${")).to_string()
}

/// A fresh Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
fn new_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 24] = rand::random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The demo directory (created, or a kept temporary one) with any previous demo database removed.
fn prepare_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => {
            std::fs::create_dir_all(d)
                .with_context(|| format!("cannot create directory {}", d.display()))?;
            d.canonicalize()
                .with_context(|| format!("cannot resolve directory {}", d.display()))?
        }
        None => tempfile::Builder::new()
            .prefix("driftd-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?
            .keep(),
    };
    for suffix in ["", "-wal", "-shm"] {
        let f = dir.join(format!("{DB_FILE}{suffix}"));
        match std::fs::remove_file(&f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", f.display())),
        }
    }
    Ok(dir)
}

// ---------------------------------------------------------------------------
// Output.

/// Prints the story: permanent lines, and a status line that refreshes in place on a terminal.
struct Console {
    start: Instant,
    tty: bool,
    /// A refreshing line is on screen and must be cleared before the next permanent one.
    dirty: bool,
}

impl Console {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            tty: std::io::stdout().is_terminal(),
            dirty: false,
        }
    }

    fn stamp(&self) -> String {
        format!("[{:>5.1}s]", self.start.elapsed().as_secs_f64())
    }

    fn say(&mut self, line: impl AsRef<str>) {
        let mut out = std::io::stdout().lock();
        let clear = if self.dirty { "\r\x1b[K" } else { "" };
        let _ = writeln!(out, "{clear}{} {}", self.stamp(), line.as_ref());
        let _ = out.flush();
        self.dirty = false;
    }

    /// A progress or status line: refreshed in place on a terminal, printed when `always` otherwise.
    fn status(&mut self, line: impl AsRef<str>, always: bool) {
        if self.tty {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\r\x1b[K{} {}", self.stamp(), line.as_ref());
            let _ = out.flush();
            self.dirty = true;
        } else if always {
            self.say(line);
        }
    }

    fn done(&mut self) {
        if self.dirty {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            self.dirty = false;
        }
    }
}

/// Which keyframe a run was, for the printout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bootstrap,
    Scheduled,
    Final,
    Check,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Bootstrap => "bootstrap",
            Kind::Scheduled => "scheduled",
            Kind::Final => "final",
            Kind::Check => "check",
        }
    }
}

/// Drift found by the keyframes after the bootstrap.
#[derive(Debug, Default)]
struct Totals {
    keyframes: u64,
    bootstrap_missing: u64,
    missing: u64,
    extra: u64,
    changed: u64,
    guarded: u64,
    failed: u64,
}

/// A keyframe run whose corrections the reporter waits to see applied.
#[derive(Debug, Clone, Copy)]
struct Correcting {
    run: i64,
    drift: u64,
    since: Instant,
    /// Open drift was seen above zero: the run's work has been emitted.
    seen_open: bool,
}

/// A run is recorded finished just before its work is emitted; after this long
/// an open drift of zero means the work was emitted and carried out.
const EMIT_GRACE: Duration = Duration::from_secs(1);

/// Watches the store and the metrics and prints what happened.
struct Reporter {
    console: Console,
    store: Store,
    metrics: Metrics,
    stats: Arc<Stats>,
    config_path: PathBuf,
    last_run: i64,
    kinds: BTreeMap<i64, Kind>,
    totals: Totals,
    warned_not_found: bool,
    /// A keyframe whose corrections may still be open.
    correcting: Option<Correcting>,
}

impl Reporter {
    /// Prints every keyframe run that finished since the last call, oldest first.
    async fn runs(&mut self) -> anyhow::Result<()> {
        let mut runs: Vec<RunRow> = self
            .store
            .runs(PRODUCER, 20)
            .await?
            .into_iter()
            .filter(|r| r.id > self.last_run && r.finished_at.is_some())
            .collect();
        runs.sort_by_key(|r| r.id);
        for r in runs {
            self.last_run = r.id;
            let kind = self.kinds.get(&r.id).copied().unwrap_or(Kind::Scheduled);
            self.print_run(&r, kind);
        }
        if let Some(mut c) = self.correcting {
            let open = self.open_drift().await?;
            c.seen_open |= open > 0;
            self.correcting = Some(c);
            if open == 0 && (c.seen_open || c.since.elapsed() >= EMIT_GRACE) {
                self.correcting = None;
                self.console.say(format!(
                    "  run {}: the workers applied its {} corrections within {:.1}s; open drift 0",
                    c.run,
                    c.drift,
                    c.since.elapsed().as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    fn print_run(&mut self, r: &RunRow, kind: Kind) {
        let c = &r.counts;
        let t = &mut self.totals;
        t.keyframes += 1;
        let head = format!(
            "keyframe run {} ({}): {} records",
            r.id,
            kind.name(),
            c.records
        );
        let drift = c.missing + c.extra + c.changed;
        let races = if c.skipped_races > 0 {
            format!(
                "; {} changed during the pull, left for the next keyframe",
                c.skipped_races
            )
        } else {
            String::new()
        };
        let line = match r.state {
            RunState::Failed => {
                t.failed += 1;
                format!(
                    "{head}: FAILED, nothing corrected: {}",
                    r.error.as_deref().unwrap_or("unknown error")
                )
            }
            RunState::Guarded => {
                t.guarded += 1;
                format!(
                    "{head}, drift found {drift} (missing {}, extra {}, changed {}): GUARDED, more than \
                     max_drift_ratio allows; nothing corrected until `driftd approve {} --config {}`",
                    c.missing,
                    c.extra,
                    c.changed,
                    r.id,
                    self.config_path.display()
                )
            }
            _ if drift == 0 => format!("{head}, no drift{races}"),
            _ => format!(
                "{head}, drift found {drift} (missing {}, extra {}, changed {}) -> queued as apply work{races}",
                c.missing, c.extra, c.changed
            ),
        };
        if r.state == RunState::Ok && drift > 0 && kind != Kind::Bootstrap {
            self.correcting = Some(Correcting {
                run: r.id,
                drift,
                since: Instant::now(),
                seen_open: false,
            });
        }
        if r.state != RunState::Failed {
            if kind == Kind::Bootstrap {
                t.bootstrap_missing += c.missing;
            } else {
                t.missing += c.missing;
                t.extra += c.extra;
                t.changed += c.changed;
            }
        }
        self.console.say(line);
    }

    fn delta_outcome(&self, outcome: &str) -> u64 {
        self.metrics
            .deltas
            .with_label_values(&[PRODUCER, "webhook", outcome])
            .get()
    }

    fn webhook_line(&self) -> String {
        let s = &self.stats;
        format!(
            "webhooks sent {}, lost {}, duplicated {}, reordered {}",
            Stats::get(&s.sent),
            Stats::get(&s.lost),
            Stats::get(&s.duplicated),
            Stats::get(&s.reordered)
        )
    }

    fn driftd_deltas(&self) -> String {
        let s = &self.stats;
        if Stats::get(&s.accepted) == 0 && Stats::get(&s.not_found) > 0 {
            return "webhooks refused: 404".into();
        }
        let mut parts = vec![format!(
            "deltas applied {}, stale {}, duplicate {}",
            self.delta_outcome("applied"),
            self.delta_outcome("stale"),
            self.delta_outcome("duplicate")
        )];
        let refused = Stats::get(&s.refused) + Stats::get(&s.not_found);
        if refused > 0 {
            let status = match Stats::get(&s.refused) {
                0 => 404,
                _ => Stats::get(&s.last_refusal),
            };
            parts.push(format!("refused {refused} (last HTTP {status})"));
        }
        if Stats::get(&s.failed) > 0 {
            parts.push(format!("unanswered {}", Stats::get(&s.failed)));
        }
        parts.join(", ")
    }

    async fn open_drift(&self) -> anyhow::Result<i64> {
        Ok(self
            .store
            .open_work_by_producer()
            .await?
            .get(PRODUCER)
            .copied()
            .unwrap_or(0))
    }

    /// The status line: what the vendor sent, what driftd holds, the open drift.
    ///
    /// A permanent line, not one refreshed in place: it is wider than many
    /// terminals, and a wrapped line cannot be redrawn with `\r`.
    async fn status(&mut self) -> anyhow::Result<()> {
        let entities = self.store.count_entities(PRODUCER).await?;
        let open = self.open_drift().await?;
        let line = format!(
            "{} | driftd: {entities} orders, open drift {open}, {}",
            self.webhook_line(),
            self.driftd_deltas()
        );
        self.console.say(line);
        if !self.warned_not_found && Stats::get(&self.stats.not_found) > 0 {
            self.warned_not_found = true;
            self.console.say(
                "note: driftd answered 404 to POST /hooks/demo: this build has no webhook endpoint yet, \
                 so no delta is applied and keyframes alone correct the drift",
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The run.

async fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let schedule = schedule_for(args.keyframe_every).map_err(anyhow::Error::msg)?;
    let dir = prepare_dir(args.dir.as_deref())?;
    let config_path = dir.join(CONFIG_FILE);

    // The vendor and its orders.
    let mut rng = StdRng::seed_from_u64(seed);
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let vendor = Vendor(Arc::new(Mutex::new(Orders::new(
        args.records,
        &mut rng,
        &now,
    ))));
    let vendor_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo vendor on 127.0.0.1")?;
    let vendor_addr = vendor_listener.local_addr()?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let listen = listener.local_addr()?;

    // The config, written and loaded exactly as `driftd check` and `driftd run` would.
    let text = config_toml(
        &dir.join(DB_FILE),
        listen,
        vendor_addr,
        &schedule,
        &new_secret(),
    );
    std::fs::write(&config_path, &text)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let loaded = Config::load(&config_path)?;
    let producer = loaded
        .config
        .producer(PRODUCER)
        .cloned()
        .context("the demo config has no demo producer")?;
    let webhook = producer
        .webhook
        .clone()
        .context("the demo config has no webhook")?;

    let console = Console::new();
    println!(
        "driftd demo: {} mortgage orders at a simulated vendor, ~{} changes/s for {}s, \
         {:.0}% of webhooks lost, a keyframe every {}s (seed {seed})",
        args.records,
        args.rate,
        args.duration,
        args.loss * 100.0,
        args.keyframe_every
    );
    println!(
        "  config:  {}  (passes `driftd check`; copy from it)",
        config_path.display()
    );
    println!("  vendor:  http://{vendor_addr}/orders  (cursor pagination)");
    println!("  metrics: http://{listen}/metrics");
    println!("  webhook: POST http://{listen}/hooks/{PRODUCER}  (standard-webhooks, signed)");
    println!(
        "  feed:    curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer {DEMO_READ_TOKEN}' \\\n             'http://{listen}/v1/changes?producer={PRODUCER}'"
    );

    let tasks = TaskTracker::new();
    let root = CancellationToken::new();
    let vendor_stop = root.child_token();
    let app_stop = root.child_token();
    let churn_stop = root.child_token();
    tasks.spawn({
        let router = Router::new()
            .route("/orders", get(list_orders))
            .with_state(vendor.clone());
        let stop = vendor_stop.clone();
        async move {
            if let Err(e) = axum::serve(vendor_listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::warn!(error = %e, "demo vendor server failed");
            }
        }
    });

    let app = App::build(loaded.config.clone(), Some(listener)).await?;
    let store = app.store().clone();
    let metrics = app.metrics().clone();
    let client = crate::client::http_client()?;
    let mut reporter = Reporter {
        console,
        store: store.clone(),
        metrics: metrics.clone(),
        stats: Arc::new(Stats::default()),
        config_path: config_path.clone(),
        last_run: 0,
        kinds: BTreeMap::new(),
        totals: Totals::default(),
        warned_not_found: false,
        correcting: None,
    };
    let keyframer = Keyframer::new(store.clone(), client.clone(), metrics.clone());
    let mut app_task = None;

    let story = async {
        bootstrap(&mut reporter, &keyframer, &producer, &client).await?;
        app_task = Some(tasks.spawn(app.run(app_stop.clone())));
        reporter.console.say(format!(
            "driftd is running: keyframes on schedule {schedule:?}, apply workers, metrics at http://{listen}/metrics"
        ));
        let sender = Sender {
            client: client.clone(),
            url: format!("http://{listen}/hooks/{PRODUCER}"),
            webhook,
            stats: reporter.stats.clone(),
        };
        let churn_task = tasks.spawn(churn(
            vendor.clone(),
            sender,
            args.loss,
            args.rate,
            seed ^ 0x5eed,
            Instant::now() + Duration::from_secs(args.duration) + FLUSH_TIMEOUT,
            churn_stop.clone(),
        ));
        reporter.console.say(format!(
            "the vendor starts changing orders; each change is a signed webhook, {:.0}% of them dropped, \
             some duplicated or reordered",
            args.loss * 100.0
        ));
        watch(&mut reporter, Duration::from_secs(args.duration)).await?;
        finish(
            &mut reporter,
            &keyframer,
            &producer,
            &vendor,
            churn_task,
            &churn_stop,
            &args,
        )
        .await
    };
    let outcome = tokio::select! {
        r = story => r,
        _ = tokio::signal::ctrl_c() => {
            println!();
            println!("interrupted: shutting down");
            Ok(Outcome::Interrupted)
        }
    };

    // Shut down in order: the churn, the daemon (it drains its own tasks), then
    // the vendor, so no scheduled keyframe sees the vendor vanish mid-pull.
    churn_stop.cancel();
    app_stop.cancel();
    if let Some(task) = app_task {
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("warning: the daemon stopped with an error: {e:#}"),
            Ok(Err(e)) => eprintln!("warning: the daemon task failed: {e}"),
            Err(_) => eprintln!("warning: the daemon did not stop within {SHUTDOWN_TIMEOUT:?}"),
        }
    }
    root.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        eprintln!("warning: some demo tasks did not stop within {SHUTDOWN_TIMEOUT:?}");
    }
    // The daemon closes it when it ran; not when the story ended before.
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, store.close())
        .await
        .is_err()
    {
        eprintln!("warning: database connections still in use after {SHUTDOWN_TIMEOUT:?}");
    }
    println!(
        "files kept in {}; try `driftd status --config {}`",
        dir.display(),
        config_path.display()
    );
    outcome
}

/// The first keyframe into the empty table, and the workers that carry out its
/// work, before the daemon (and its schedule) starts.
async fn bootstrap(
    r: &mut Reporter,
    keyframer: &Keyframer,
    p: &Producer,
    client: &reqwest::Client,
) -> anyhow::Result<()> {
    r.console.say(
        "bootstrap: the local table is empty, so the first keyframe pulls the vendor's full state \
         (the drift guard never trips on an empty table)",
    );
    let s = keyframe_now(r, keyframer, p, Kind::Bootstrap).await?;
    if s.state != RunState::Ok {
        anyhow::bail!(
            "the bootstrap keyframe ended {}; see the line above",
            s.state
        );
    }
    let workers = Workers {
        store: r.store.clone(),
        client: client.clone(),
        metrics: r.metrics.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
        id: format!("demo-bootstrap-{}", std::process::id()),
    };
    let total = s.work_emitted;
    // Generous: a debug build on a busy machine applies a few hundred items a second.
    let deadline = Instant::now() + Duration::from_secs(60 + total / 20);
    let mut shown = Instant::now();
    loop {
        let claimed = workers.tick(p).await?;
        let open = r.open_drift().await?;
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            anyhow::bail!("bootstrap work did not drain in time: {open} items still open");
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            r.console.status(
                format!(
                    "bootstrap: applying corrections, {} of {total} done",
                    total.saturating_sub(open as u64)
                ),
                true,
            );
        }
        if claimed == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let n = r.store.count_entities(PRODUCER).await?;
    r.console
        .say(format!("bootstrap done: {n} orders stored, open drift 0"));
    Ok(())
}

/// Runs a keyframe now, waiting while a scheduled one holds the lease; prints it.
async fn keyframe_now(
    r: &mut Reporter,
    keyframer: &Keyframer,
    p: &Producer,
    kind: Kind,
) -> anyhow::Result<Summary> {
    let deadline = Instant::now() + KEYFRAME_TIMEOUT;
    r.console.status(
        format!("{} keyframe: pulling the vendor's orders", kind.name()),
        false,
    );
    loop {
        match keyframer.run(p, false).await {
            Ok(s) => {
                if let Some(id) = s.run_id {
                    r.kinds.insert(id, kind);
                }
                r.runs().await?;
                return Ok(s);
            }
            Err(KeyframeError::Busy(_)) if Instant::now() < deadline => {
                // A scheduled keyframe is running; print it when it ends, then go.
                r.runs().await?;
                r.console.status(
                    format!(
                        "{} keyframe: waiting for a scheduled keyframe to end",
                        kind.name()
                    ),
                    false,
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Prints keyframes as they finish and the status once a second, for `duration`.
async fn watch(r: &mut Reporter, duration: Duration) -> anyhow::Result<()> {
    let end = Instant::now() + duration;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_status = Instant::now();
    while Instant::now() < end {
        tick.tick().await;
        r.runs().await?;
        if last_status.elapsed() >= Duration::from_secs(1) {
            last_status = Instant::now();
            r.status().await?;
        }
    }
    r.runs().await?;
    r.console.done();
    Ok(())
}

/// Waits (bounded) until no corrective work is open, showing progress.
async fn drain(r: &mut Reporter, what: &str, limit: Duration) -> anyhow::Result<i64> {
    let deadline = Instant::now() + limit;
    let mut shown = Instant::now();
    loop {
        r.runs().await?;
        let open = r.open_drift().await?;
        if open == 0 || Instant::now() > deadline {
            return Ok(open);
        }
        if shown.elapsed() >= Duration::from_secs(1) {
            shown = Instant::now();
            r.console.status(
                format!("{what}: open drift {open}, waiting for the workers"),
                true,
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Record-for-record comparison of local rows with the vendor's orders.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub local: usize,
    pub vendor: usize,
    pub missing: Vec<String>,
    pub extra: Vec<String>,
    pub different: Vec<String>,
}

impl Comparison {
    pub fn equal(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

/// Compares `local` (key, document) rows with the vendor's `records`.
pub fn compare(local: &[(String, Option<Value>)], records: &BTreeMap<String, Value>) -> Comparison {
    let mut c = Comparison {
        local: local.len(),
        vendor: records.len(),
        ..Comparison::default()
    };
    let local_keys: BTreeMap<&str, Option<&Value>> = local
        .iter()
        .map(|(k, d)| (k.as_str(), d.as_ref()))
        .collect();
    for (k, doc) in records {
        match local_keys.get(k.as_str()) {
            None => c.missing.push(k.clone()),
            Some(d) if *d != Some(doc) => c.different.push(k.clone()),
            Some(_) => {}
        }
    }
    for k in local_keys.keys() {
        if !records.contains_key(*k) {
            c.extra.push(k.to_string());
        }
    }
    c
}

/// Stops the churn, waits for in-flight webhooks, runs the final keyframe(s),
/// drains the work, compares, and prints the summary.
async fn finish(
    r: &mut Reporter,
    keyframer: &Keyframer,
    p: &Producer,
    vendor: &Vendor,
    churn_task: JoinHandle<()>,
    churn_stop: &CancellationToken,
    args: &DemoArgs,
) -> anyhow::Result<Outcome> {
    r.console.say(format!(
        "{}s are up: the vendor stops changing; waiting for in-flight webhooks",
        args.duration
    ));
    churn_stop.cancel();
    if tokio::time::timeout(FLUSH_TIMEOUT, churn_task)
        .await
        .is_err()
    {
        anyhow::bail!("the webhook sender did not stop within {FLUSH_TIMEOUT:?}");
    }
    let work_limit = Duration::from_secs(60 + args.records / 20);
    drain(r, "before the final keyframe", work_limit).await?;
    r.console.done();

    let mut final_drift = None;
    for round in 0..FINAL_ROUNDS {
        let kind = if round == 0 { Kind::Final } else { Kind::Check };
        let s = keyframe_now(r, keyframer, p, kind).await?;
        let open = drain(r, "applying the final corrections", work_limit).await?;
        r.console.done();
        if open > 0 {
            r.console.say(format!(
                "{open} corrections still open after {work_limit:?}"
            ));
        }
        if s.state == RunState::Ok && s.drift() == 0 {
            final_drift = Some((0, s.run_id.unwrap_or_default()));
            break;
        }
        final_drift = Some((s.drift(), s.run_id.unwrap_or_default()));
    }
    r.runs().await?;

    let local: Vec<(String, Option<Value>)> = r
        .store
        .entities(PRODUCER)
        .await?
        .into_iter()
        .map(|e| (e.key, e.doc))
        .collect();
    let records = vendor.lock().records().clone();
    let cmp = compare(&local, &records);
    let work = r.store.work_counts().await?;
    let done = r
        .metrics
        .work_completed
        .with_label_values(&["apply", "done"])
        .get();

    let s = &r.stats;
    let t = &r.totals;
    let changes = Stats::get(&s.changes);
    let lost = Stats::get(&s.lost);
    let pct = |n: u64| {
        if changes == 0 {
            0.0
        } else {
            n as f64 * 100.0 / changes as f64
        }
    };
    let mut out = vec![String::new(), "summary".to_string()];
    out.push(format!(
        "  vendor      {} orders at the start, {} at the end; {changes} changes",
        args.records,
        records.len()
    ));
    out.push(format!(
        "  webhooks    {} sent, {lost} lost ({:.1}%), {} duplicated, {} reordered",
        Stats::get(&s.sent),
        pct(lost),
        Stats::get(&s.duplicated),
        Stats::get(&s.reordered)
    ));
    if Stats::get(&s.accepted) == 0 && Stats::get(&s.not_found) > 0 {
        out.push(
            "  driftd      answered 404 to every webhook (no /hooks endpoint in this build): \
             keyframes alone corrected the drift"
                .into(),
        );
    } else {
        out.push(format!("  driftd      {}", r.driftd_deltas()));
    }
    out.push(format!(
        "  keyframes   {} run ({} failed, {} guarded); after the bootstrap ({} missing) they found \
         drift {} (missing {}, extra {}, changed {})",
        t.keyframes,
        t.failed,
        t.guarded,
        t.bootstrap_missing,
        t.missing + t.extra + t.changed,
        t.missing,
        t.extra,
        t.changed
    ));
    if Stats::get(&s.accepted) > 0 && lost > 0 {
        out.push(format!(
            "              ({lost} webhooks were lost; a lost change that a later delivered one \
             overtook leaves no drift)"
        ));
    }
    out.push(format!(
        "  corrected   {done} apply work items done; {} open, {} dead",
        work.get("pending").copied().unwrap_or(0) + work.get("running").copied().unwrap_or(0),
        work.get("dead").copied().unwrap_or(0)
    ));
    match final_drift {
        Some((d, id)) => out.push(format!("  final drift {d} (keyframe run {id})")),
        None => out.push("  final drift unknown (no final keyframe ran)".into()),
    }
    let equal = cmp.equal();
    if equal {
        out.push(format!(
            "  equal: yes ({} local orders match the vendor's {} records, document for document)",
            cmp.local, cmp.vendor
        ));
    } else {
        let sample = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
        out.push(format!(
            "  equal: no ({} local rows, {} vendor records; missing {} [{}], extra {} [{}], different {} [{}])",
            cmp.local,
            cmp.vendor,
            cmp.missing.len(),
            sample(&cmp.missing),
            cmp.extra.len(),
            sample(&cmp.extra),
            cmp.different.len(),
            sample(&cmp.different)
        ));
    }
    r.console.done();
    for line in out {
        println!("{line}");
    }
    Ok(if equal {
        Outcome::Equal
    } else {
        Outcome::Different
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orders(n: u64) -> Orders {
        Orders::new(n, &mut StdRng::seed_from_u64(7), "2026-01-01T00:00:00.000Z")
    }

    #[test]
    fn the_demo_config_passes_check() {
        let text = config_toml(
            Path::new("/tmp/a dir/$HOME/driftd-demo.db"),
            "127.0.0.1:7070".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            &schedule_for(10).unwrap(),
            &new_secret(),
        );
        let loaded =
            Config::parse("demo.toml", &text, &|_| None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let c = loaded.config;
        assert_eq!(
            c.database.url.expose(),
            "sqlite:///tmp/a dir/$HOME/driftd-demo.db"
        );
        let p = c.producer(PRODUCER).unwrap();
        assert_eq!(p.schedule, "*/10 * * * * *");
        assert_eq!(p.work.action, crate::config::Action::Apply);
        let w = p.webhook.as_ref().unwrap();
        assert_eq!(w.scheme, crate::config::SignatureScheme::StandardWebhooks);
        assert!(w.secret.as_ref().unwrap().expose().starts_with("whsec_"));
        assert_eq!(w.version.as_deref(), Some("/version"));
    }

    #[test]
    fn demo_webhooks_verify_under_the_demo_config() {
        let text = config_toml(
            Path::new("/tmp/d.db"),
            "127.0.0.1:7070".parse().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            "*/10 * * * * *",
            &new_secret(),
        );
        let c = Config::parse("demo.toml", &text, &|_| None).unwrap().config;
        let w = c.producer(PRODUCER).unwrap().webhook.clone().unwrap();
        let mut o = orders(10);
        let body = o.change(&mut StdRng::seed_from_u64(1), None, "t").body();
        let mut headers = axum::http::HeaderMap::new();
        for (name, value) in crate::ingest::signature::sign(&w, &body, 1_000, "msg_demo_1") {
            headers.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        assert_eq!(headers["webhook-id"], "msg_demo_1", "the dedup header");
        crate::ingest::signature::verify(&w, &headers, &body, 1_010).unwrap();
        assert!(crate::ingest::signature::verify(&w, &headers, b"{}", 1_010).is_err());
    }

    #[test]
    fn schedules() {
        assert_eq!(schedule_for(1).unwrap(), "*/1 * * * * *");
        assert_eq!(schedule_for(59).unwrap(), "*/59 * * * * *");
        assert_eq!(schedule_for(120).unwrap(), "0 */2 * * * *");
        assert!(schedule_for(0).is_err());
        assert!(schedule_for(90).is_err());
        for s in [1, 2, 10, 59, 60, 600] {
            crate::config::parse_cron(&schedule_for(s).unwrap()).unwrap();
        }
    }

    #[test]
    fn changes_bump_versions_and_create_and_delete() {
        let mut o = orders(50);
        let mut rng = StdRng::seed_from_u64(1);
        let (mut creates, mut deletes, mut edits) = (0, 0, 0);
        let mut last_version = 1;
        for _ in 0..500 {
            let before = o.records.len();
            let d = o.change(&mut rng, None, "t");
            let body: Value = serde_json::from_slice(&d.body()).unwrap();
            let version = body["version"].as_i64().unwrap();
            assert!(version > last_version, "versions increase: {body}");
            last_version = version;
            assert_eq!(body["id"].as_str(), Some(d.key()));
            match &d {
                Delta::Delete { key, .. } => {
                    deletes += 1;
                    assert_eq!(body["deleted"], json!(true));
                    assert!(!o.records.contains_key(key));
                }
                Delta::Upsert(doc) => {
                    assert_eq!(o.records.get(d.key()), Some(doc), "the body is the order");
                    if o.records.len() > before {
                        creates += 1;
                    } else {
                        edits += 1;
                    }
                }
            }
        }
        assert!(
            creates > 10 && deletes > 10 && edits > 300,
            "{creates} {deletes} {edits}"
        );
    }

    #[test]
    fn a_preferred_key_is_edited() {
        let mut o = orders(20);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..50 {
            let d = o.change(&mut rng, Some("ord-0000005"), "t");
            assert_eq!(d.key(), "ord-0000005");
            assert!(matches!(d, Delta::Upsert(_)));
        }
    }

    #[test]
    fn key_cursor_pages_cover_every_order_once() {
        let mut o = orders(1234);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for page in 0.. {
            assert!(page < 100, "pagination does not end");
            let (items, next) = o.page(cursor.as_deref(), 100);
            seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_string()));
            // Deleting an order already served shifts nothing.
            if page == 3 {
                o.records.remove("ord-0000001");
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen.len(), 1234);
        let mut dedup = seen.clone();
        dedup.dedup();
        assert_eq!(dedup, seen, "no order twice, in key order");
        assert_eq!(o.page(None, 5000).1, None);
        assert_eq!(orders(0).page(None, 10), (vec![], None));
    }

    #[test]
    fn comparison_table() {
        let rec = |k: &str, v: i64| (k.to_string(), json!({ "id": k, "v": v }));
        let vendor: BTreeMap<String, Value> = [rec("a", 1), rec("b", 1), rec("c", 1)].into();
        let local = |rows: &[(&str, i64)]| -> Vec<(String, Option<Value>)> {
            rows.iter()
                .map(|(k, v)| {
                    let (k, d) = rec(k, *v);
                    (k, Some(d))
                })
                .collect()
        };
        let c = compare(&local(&[("a", 1), ("b", 1), ("c", 1)]), &vendor);
        assert!(c.equal(), "{c:?}");
        let c = compare(&local(&[("a", 1), ("b", 2), ("d", 1)]), &vendor);
        assert_eq!(
            (c.missing, c.extra, c.different),
            (vec!["c".into()], vec!["d".into()], vec!["b".into()])
        );
    }

    #[test]
    fn arguments_are_checked() {
        let ok = DemoArgs {
            duration: 60,
            loss: 0.1,
            records: 3000,
            keyframe_every: 10,
            rate: 30,
            dir: None,
            listen: "127.0.0.1:0".parse().unwrap(),
            seed: None,
        };
        assert_eq!(validate_args(&ok), Ok(()));
        for (bad, expected) in [
            (
                DemoArgs {
                    loss: 1.5,
                    ..ok.clone()
                },
                "--loss 1.5",
            ),
            (
                DemoArgs {
                    records: 0,
                    ..ok.clone()
                },
                "--records 0",
            ),
            (
                DemoArgs {
                    keyframe_every: 0,
                    ..ok.clone()
                },
                "--keyframe-every 0",
            ),
            (
                DemoArgs {
                    listen: "0.0.0.0:7070".parse().unwrap(),
                    ..ok.clone()
                },
                "loopback",
            ),
        ] {
            let e = validate_args(&bad).unwrap_err();
            assert!(e.contains(expected), "{e}");
        }
    }
}
