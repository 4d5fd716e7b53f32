//! The `feed` scenario of `driftd-bench`: commit-to-delivery latency of the change feed to 1 and 100 waiting Server-Sent Events consumers, and the database statements that idle consumers cost.
//!
//! One daemon (`App`) with one webhook producer per consumer count, so each
//! run's consumers start at position 0 of a log that holds only that run's
//! changes. Per run: the consumers connect (`GET /v1/changes`, `Accept:
//! text/event-stream`) and get their answer's headers, which means they are
//! subscribed; then one writer sends signed webhooks one after another on a
//! fixed pace. A delivery's latency is the consumer's wall-clock receive
//! time minus the wall time the writer received the webhook's 2xx, which
//! follows the commit: a lower bound by the answer's way back (negative when
//! the feed beats the answer). Beside it, receive time minus the change's
//! `at` (milliseconds since the epoch, taken inside the transaction just
//! before its commit): an upper bound that also holds the commit's fsync and
//! up to 1 ms of truncation; the commit column (2xx minus `at`) shows how
//! much of it is the commit.
//!
//! Idle cost: with the most consumers connected, caught up and waiting, and
//! once with none connected (the daemon's own background queries), count
//! over windows of the same length (a) the statements sqlx executes in this
//! process (its `sqlx::query` events, counted by [`StatementCounter`], on
//! both backends), and among them the reads of the change log, which only
//! feed requests run, and (b) on PostgreSQL, the bench database's
//! transactions in `pg_stat_database`, read from the server over a
//! connection to another database. On PostgreSQL each window starts after
//! 25 s of quiet, so the statistics of the burst before it are flushed and
//! do not count. The background runs on
//! timers (gauges every 2 s, worker polls, the inbox sweeper), so a window's
//! total moves by a few statements with its phase: the change-log reads are
//! the exact measure, the totals the cross-check.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::Args;
use driftd::app::App;
use driftd::config::{Config, WebhookConfig};
use driftd::ingest::signature;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::{ConnectOptions, Row};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

use crate::cli::BackendArg;
use crate::db::{pg_admin_url, with_db, PG_POOL};
use crate::ingest::webhook_producer;
use crate::report::note;

const READ_TOKEN: &str = "bench-read-t0ken";
/// Longest a run waits for every consumer to connect, and then to receive every change.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest the writer may take for its deltas.
const WRITE_TIMEOUT: Duration = Duration::from_secs(120);
/// Quiet before a PostgreSQL window. A backend reports its statistics at
/// most once a second and, once idle, within `PGSTAT_IDLE_INTERVAL` (10 s);
/// yet after 11 s the window still counted about 15 transactions of the
/// burst before it (0.5/s over 30 s, with no extra statement sent), and
/// after 25 s none.
const PG_SETTLE: Duration = Duration::from_secs(25);
const SQLITE_SETTLE: Duration = Duration::from_secs(1);

#[derive(Args, Clone)]
pub(super) struct FeedKnobs {
    /// Waiting consumers per run, one run each; the idle cost is measured with the largest.
    #[arg(long, value_delimiter = ',', default_values = ["1", "100"])]
    feed_consumers: Vec<usize>,
    /// Deltas per run (signed webhooks sent one after another).
    #[arg(long, default_value_t = 300)]
    feed_deltas: u64,
    /// Milliseconds between the writer's webhooks.
    #[arg(long, default_value_t = 15)]
    feed_pace_ms: u64,
    /// Seconds of each idle window (with the consumers waiting, and with none).
    #[arg(long, default_value_t = 30.0)]
    feed_idle_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct FeedReport {
    pub(super) backend: BackendArg,
    deltas: u64,
    pace_ms: u64,
    runs: Vec<FeedRun>,
    idle: Option<IdleCost>,
}

#[derive(Debug, Clone, Serialize)]
struct FeedRun {
    consumers: usize,
    /// Deltas the daemon acknowledged (2xx).
    committed: u64,
    write_errors: u64,
    write_secs: f64,
    /// `consumers × committed`.
    expected: u64,
    delivered: u64,
    /// Deliveries missing, extra or out of order, plus streams that failed.
    errors: u64,
    /// Commit-to-delivery: receive time minus the writer's receipt of the
    /// 2xx, which follows the commit (a lower bound by the answer's way back;
    /// negative when the feed beat the answer).
    latency: Dist,
    /// Receive time minus the change's `at`, taken before the commit (an
    /// upper bound: includes the commit's fsync).
    after_at: Dist,
    /// Per delta: the 2xx minus `at` (the commit and the answer).
    commit: Dist,
    /// Statements sqlx ran in this process during the run, per committed
    /// delta (the writer's commits, the consumers' reads, the background).
    statements_per_delta: f64,
    /// Of those, reads of the change log, per committed delta and consumer.
    feed_reads_per_delivery: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
struct Dist {
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    min_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
struct IdleCost {
    consumers: usize,
    secs: f64,
    /// Statements per second sqlx ran in this process, consumers waiting.
    statements_per_sec: f64,
    /// The same with no consumer connected.
    baseline_statements_per_sec: f64,
    /// Reads of the change log in the window, consumers waiting (no commits happen).
    feed_reads: u64,
    /// PostgreSQL, from the server: consumers waiting, and none connected.
    pg: Option<PgWindow>,
    pg_baseline: Option<PgWindow>,
}

impl IdleCost {
    fn extra_statements_per_sec(&self) -> f64 {
        self.statements_per_sec - self.baseline_statements_per_sec
    }

    fn extra_pg_xacts_per_sec(&self) -> Option<f64> {
        Some(self.pg?.xacts_per_sec - self.pg_baseline?.xacts_per_sec)
    }

    /// Scans of `changes` per second beyond the baseline, from the server.
    fn extra_pg_log_scans_per_sec(&self) -> Option<f64> {
        Some((self.pg?.log_scans - self.pg_baseline?.log_scans) as f64 / self.secs)
    }

    /// The server's view, for the table and the log; empty on SQLite.
    fn pg_summary(&self) -> String {
        let (Some(w), Some(b), Some(x)) =
            (self.pg, self.pg_baseline, self.extra_pg_xacts_per_sec())
        else {
            return String::new();
        };
        format!(
            "; PostgreSQL server: {:.2} transactions/s, none connected {:.2}/s, difference {x:.2}/s; \
             scans of changes {} vs {}; autovacuum/analyze runs {} vs {}",
            w.xacts_per_sec, b.xacts_per_sec, w.log_scans, b.log_scans, w.autovacuum_runs, b.autovacuum_runs
        )
    }
}

// Counting statements

static COUNTING: AtomicBool = AtomicBool::new(false);
static STATEMENTS: AtomicU64 = AtomicU64::new(0);
static FEED_READS: AtomicU64 = AtomicU64::new(0);

/// Counts sqlx's `sqlx::query` events (one per statement executed), and
/// among them the reads of the change log (`FROM changes`, what a feed
/// consumer's request runs), while switched on; sees nothing else. Off, sqlx
/// skips its statement logging as it does without a subscriber, so other
/// scenarios are not slowed.
pub(super) struct StatementCounter;

/// Finds `FROM changes` in an event's fields (sqlx puts the statement in
/// `summary`, or in `db.statement` when the summary is shortened).
#[derive(Default)]
struct ReadsChanges(bool);

impl tracing::field::Visit for ReadsChanges {
    fn record_str(&mut self, _: &tracing::field::Field, value: &str) {
        self.0 |= value.contains("FROM changes");
    }

    fn record_debug(&mut self, _: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0 |= format!("{value:?}").contains("FROM changes");
    }
}

impl<S: Subscriber> Layer<S> for StatementCounter {
    fn register_callsite(&self, m: &'static Metadata<'static>) -> Interest {
        if m.target() == "sqlx::query" {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn enabled(&self, m: &Metadata<'_>, _: Context<'_, S>) -> bool {
        m.target() == "sqlx::query" && COUNTING.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        STATEMENTS.fetch_add(1, Ordering::Relaxed);
        let mut reads = ReadsChanges::default();
        event.record(&mut reads);
        if reads.0 {
            FEED_READS.fetch_add(1, Ordering::Relaxed);
        }
        let mut profile = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(by_statement) = profile.as_mut() {
            let mut timed = Timed::default();
            event.record(&mut timed);
            let entry = by_statement.entry(timed.summary).or_default();
            entry.count += 1;
            entry.secs += timed.secs;
        }
    }
}

/// While on, the statements sqlx ran, by their summary (sqlx's first words
/// of the SQL): how many and their total time. A tracing-span profile of a
/// phase: which statements its time goes to.
static PROFILE: std::sync::Mutex<Option<HashMap<String, StatementTime>>> =
    std::sync::Mutex::new(None);

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct StatementTime {
    pub(super) summary: String,
    pub(super) count: u64,
    pub(super) secs: f64,
}

#[derive(Default)]
struct Timed {
    summary: String,
    secs: f64,
}

impl tracing::field::Visit for Timed {
    fn record_str(&mut self, f: &tracing::field::Field, value: &str) {
        if f.name() == "summary" {
            self.summary = value.to_string();
        }
    }

    fn record_f64(&mut self, f: &tracing::field::Field, value: f64) {
        if f.name() == "elapsed_secs" {
            self.secs = value;
        }
    }

    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

/// Profiles the statements run until [`Profiling::take`]: counting is on
/// for as long.
pub(super) struct Profiling(#[allow(dead_code)] Counting);

impl Profiling {
    pub(super) fn on() -> Self {
        *PROFILE.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
        Profiling(Counting::on())
    }

    /// The statements by total time, longest first.
    pub(super) fn take(self) -> Vec<StatementTime> {
        let found = PROFILE.lock().unwrap_or_else(|e| e.into_inner()).take();
        let mut all: Vec<StatementTime> = found
            .unwrap_or_default()
            .into_iter()
            .map(|(summary, t)| StatementTime { summary, ..t })
            .collect();
        all.sort_by(|a, b| b.secs.total_cmp(&a.secs));
        all
    }
}

fn statements() -> u64 {
    STATEMENTS.load(Ordering::Relaxed)
}

fn feed_reads() -> u64 {
    FEED_READS.load(Ordering::Relaxed)
}

/// Switches counting on until dropped.
struct Counting;

impl Counting {
    fn on() -> Self {
        COUNTING.store(true, Ordering::Relaxed);
        Counting
    }
}

impl Drop for Counting {
    fn drop(&mut self) {
        COUNTING.store(false, Ordering::Relaxed);
    }
}

/// The bench database's counters, read from the server with statement
/// logging off (so [`StatementCounter`] does not see the reads): its
/// transactions over a connection to the admin database (so reading them
/// adds nothing to them), and the scans of its `changes` table and the
/// autovacuum runs over a connection to it (`pg_stat_user_tables` is per
/// database; those reads touch no table).
struct PgStats {
    admin: sqlx::PgConnection,
    bench: sqlx::PgConnection,
    datname: String,
}

/// [`PgStats`] at one moment, as last flushed by the server.
#[derive(Clone, Copy)]
struct PgCounters {
    xacts: i64,
    log_scans: i64,
    autovacuums: i64,
}

impl PgStats {
    async fn connect(bench_url: &str) -> Result<Self> {
        let datname = bench_url
            .rsplit('/')
            .next()
            .ok_or_else(|| anyhow!("no database name in the bench URL"))?
            .to_string();
        let connect = |url: String| async move {
            let opts: sqlx::postgres::PgConnectOptions = url.parse()?;
            let conn = opts
                .disable_statement_logging()
                .connect()
                .await
                .context("connect to read the statistics")?;
            anyhow::Ok(conn)
        };
        Ok(Self {
            admin: connect(pg_admin_url()).await?,
            bench: connect(bench_url.to_string()).await?,
            datname,
        })
    }

    async fn read(&mut self) -> Result<PgCounters> {
        // Autocommit: each read is its own transaction, so no cached snapshot.
        let xacts = sqlx::query(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1",
        )
        .bind(&self.datname)
        .fetch_one(&mut self.admin)
        .await
        .context("read pg_stat_database")?
        .try_get(0)?;
        let row = sqlx::query(
            "SELECT coalesce(sum(seq_scan + coalesce(idx_scan, 0)) FILTER (WHERE relname = 'changes'), 0)::bigint,
                    coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint
             FROM pg_stat_user_tables",
        )
        .fetch_one(&mut self.bench)
        .await
        .context("read pg_stat_user_tables")?;
        Ok(PgCounters {
            xacts,
            log_scans: row.try_get(0)?,
            autovacuums: row.try_get(1)?,
        })
    }
}

// The scenario

fn config(url: &str, consumers: &[usize]) -> Result<Config> {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nread_token = \"{READ_TOKEN}\"\n\
         [database]\nurl = \"{url}\"\nmax_connections = {PG_POOL}\n"
    );
    for n in consumers {
        text.push_str(&webhook_producer(&producer_name(*n)));
    }
    Ok(Config::parse("bench.toml", &text, &|_| None)
        .map_err(|e| anyhow!("{e}"))?
        .config)
}

fn producer_name(consumers: usize) -> String {
    format!("feed-{consumers}")
}

/// Milliseconds since the Unix epoch, with microseconds.
fn wall_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

pub(super) async fn scenario(backend: BackendArg, k: &FeedKnobs) -> Result<FeedReport> {
    let k = k.clone();
    let mut levels = k.feed_consumers.clone();
    levels.sort_unstable();
    levels.dedup();
    if levels.is_empty() || levels[0] == 0 || k.feed_deltas == 0 {
        bail!("feed: give at least one consumer count above 0 and at least one delta");
    }
    with_db(backend, "feed", |url| async move {
        note(format!("feed/{}: starting the daemon", backend.name()));
        let config = config(&url, &levels)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app = App::build(config.clone(), Some(listener)).await?;
        let base = format!("http://{}", app.local_addr()?);
        let shutdown = CancellationToken::new();
        let daemon = tokio::spawn(app.run(shutdown.clone()));
        let mut pg = match backend {
            BackendArg::Postgres => Some(PgStats::connect(&url).await?),
            BackendArg::Sqlite => None,
        };
        let settle = match backend {
            BackendArg::Postgres => PG_SETTLE,
            BackendArg::Sqlite => SQLITE_SETTLE,
        };
        let ctx = RunContext {
            client: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            base,
            config,
            deltas: k.feed_deltas,
            pace: Duration::from_millis(k.feed_pace_ms),
        };
        let idle_secs = Duration::from_secs_f64(k.feed_idle_secs);
        let most = *levels.last().expect("levels is not empty");
        let _counting = Counting::on();
        let mut runs = Vec::new();
        let mut idle = None;
        let measured = async {
        for &n in &levels {
            if n == most {
                tokio::time::sleep(settle).await;
                let baseline = window(idle_secs, pg.as_mut()).await?;
                let (run, waiting) = ctx.run(n, Some((settle, idle_secs, pg.as_mut()))).await?;
                // No idle window when a consumer never caught up: the run's errors say why.
                idle = waiting.map(|waiting| IdleCost {
                    consumers: n,
                    secs: idle_secs.as_secs_f64(),
                    statements_per_sec: waiting.statements_per_sec,
                    baseline_statements_per_sec: baseline.statements_per_sec,
                    feed_reads: waiting.feed_reads,
                    pg: waiting.pg,
                    pg_baseline: baseline.pg,
                });
                runs.push(run);
            } else {
                runs.push(ctx.run(n, None).await?.0);
            }
        }
        anyhow::Ok(())
        }
        .await;
        shutdown.cancel();
        let stopped = daemon.await;
        measured?;
        stopped.map_err(|e| anyhow!("the daemon task panicked: {e}"))??;
        if let Some(i) = &idle {
            note(format!(
                "  idle, {} consumers waiting: {} change-log reads in {} s, {:.2} statements/s beyond the {:.2}/s baseline{}",
                i.consumers,
                i.feed_reads,
                i.secs,
                i.extra_statements_per_sec(),
                i.baseline_statements_per_sec,
                i.pg_summary()
            ));
        }
        drop(pg);
        Ok(FeedReport {
            backend,
            deltas: k.feed_deltas,
            pace_ms: k.feed_pace_ms,
            runs,
            idle,
        })
    })
    .await
}

struct Window {
    statements_per_sec: f64,
    feed_reads: u64,
    pg: Option<PgWindow>,
}

#[derive(Debug, Clone, Copy, Serialize)]
struct PgWindow {
    /// The bench database's transactions per second (the server's count).
    xacts_per_sec: f64,
    /// Scans of the `changes` table (sequential and index).
    log_scans: i64,
    /// Autovacuum and autoanalyze runs on the bench database's tables.
    autovacuum_runs: i64,
}

/// Counts statements (and PostgreSQL's counters) over a fixed window.
async fn window(len: Duration, mut pg: Option<&mut PgStats>) -> Result<Window> {
    let p0 = match pg.as_mut() {
        Some(pg) => Some(pg.read().await?),
        None => None,
    };
    let s0 = statements();
    let r0 = feed_reads();
    let clock = Instant::now();
    // A measurement window of fixed length, not a wait for a condition.
    tokio::time::sleep(len).await;
    let s1 = statements();
    let r1 = feed_reads();
    let secs = clock.elapsed().as_secs_f64();
    let p1 = match pg.as_mut() {
        Some(pg) => Some(pg.read().await?),
        None => None,
    };
    Ok(Window {
        statements_per_sec: (s1 - s0) as f64 / secs,
        feed_reads: r1 - r0,
        pg: p0.zip(p1).map(|(a, b)| PgWindow {
            xacts_per_sec: (b.xacts - a.xacts) as f64 / secs,
            log_scans: b.log_scans - a.log_scans,
            autovacuum_runs: b.autovacuums - a.autovacuums,
        }),
    })
}

struct RunContext {
    client: reqwest::Client,
    base: String,
    config: Config,
    deltas: u64,
    pace: Duration,
}

/// One change as a consumer received it.
struct Received {
    key: String,
    at_ms: i64,
    recv_ms: f64,
}

#[derive(Deserialize)]
struct ChangeEvent {
    key: String,
    at: i64,
}

/// What one consumer received before it was stopped, and why it ended early if it did.
struct Consumed {
    got: Vec<Received>,
    error: Option<String>,
}

impl RunContext {
    /// `consumers` follow a fresh producer's feed while the writer commits;
    /// with `idle`, the consumers stay connected for an idle window after
    /// they have received everything.
    async fn run(
        &self,
        consumers: usize,
        idle: Option<(Duration, Duration, Option<&mut PgStats>)>,
    ) -> Result<(FeedRun, Option<Window>)> {
        let producer = producer_name(consumers);
        let wcfg = self
            .config
            .producer(&producer)
            .and_then(|p| p.webhook.clone())
            .ok_or_else(|| anyhow!("producer {producer} has no webhook"))?;
        let stop = CancellationToken::new();
        let (ready_tx, mut ready_rx) = mpsc::channel::<()>(consumers);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(consumers);
        let mut tasks = tokio::task::JoinSet::new();
        let feed_url = format!("{}/v1/changes?producer={producer}", self.base);
        let deadline = Instant::now() + DELIVERY_TIMEOUT + WRITE_TIMEOUT + DELIVERY_TIMEOUT;
        for _ in 0..consumers {
            tasks.spawn(consume(
                self.client.clone(),
                feed_url.clone(),
                self.deltas as usize,
                ready_tx.clone(),
                done_tx.clone(),
                stop.clone(),
                deadline,
            ));
        }
        drop((ready_tx, done_tx));
        let connected = count_signals(&mut ready_rx, consumers).await;
        if connected < consumers {
            stop.cancel();
            bail!("feed: only {connected} of {consumers} consumers connected within {DELIVERY_TIMEOUT:?}");
        }

        let s0 = statements();
        let r0 = feed_reads();
        let clock = Instant::now();
        let (acks, write_errors) = self.write(&producer, &wcfg).await;
        let write_secs = clock.elapsed().as_secs_f64();
        // Every consumer reports once it holds every change.
        let finished = count_signals(&mut done_rx, consumers).await;
        let run_statements = statements() - s0;
        let run_feed_reads = feed_reads() - r0;
        let waiting = match idle {
            Some((settle, len, pg)) if finished == consumers => {
                tokio::time::sleep(settle).await;
                Some(window(len, pg).await?)
            }
            _ => None,
        };
        stop.cancel();
        let mut consumed = Vec::with_capacity(consumers);
        while let Some(c) = tasks.join_next().await {
            consumed.push(c.map_err(|e| anyhow!("a consumer task panicked: {e}"))?);
        }

        let (run, first_error) = tally(consumers, &acks, &consumed);
        let run = FeedRun {
            write_errors,
            write_secs,
            statements_per_delta: run_statements as f64 / run.committed.max(1) as f64,
            feed_reads_per_delivery: run_feed_reads as f64 / run.expected.max(1) as f64,
            ..run
        };
        note(format!(
            "  {consumers} consumers: {}/{} deliveries, {} errors{}; after the 2xx p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; after `at` p99 {:.1} ms; commit p99 {:.1} ms; {:.1} statements per delta, {:.2} change-log reads per delivery",
            run.delivered,
            run.expected,
            run.errors,
            first_error.map(|e| format!(" (first: {e})")).unwrap_or_default(),
            run.latency.p50_ms,
            run.latency.p99_ms,
            run.latency.max_ms,
            run.after_at.p99_ms,
            run.commit.p99_ms,
            run.statements_per_delta,
            run.feed_reads_per_delivery
        ));
        Ok((run, waiting))
    }
}

/// Receives up to `n` signals within [`DELIVERY_TIMEOUT`]; returns how many came.
async fn count_signals(rx: &mut mpsc::Receiver<()>, n: usize) -> usize {
    let mut got = 0;
    let _ = tokio::time::timeout(DELIVERY_TIMEOUT, async {
        while got < n && rx.recv().await.is_some() {
            got += 1;
        }
    })
    .await;
    got
}

/// Compares what each consumer received with the acknowledged deltas, in
/// order, and computes the latencies; the writer's and the statement
/// figures are left for the caller. Returns the first consumer error too.
fn tally(
    consumers: usize,
    acks: &[(String, f64)],
    consumed: &[Consumed],
) -> (FeedRun, Option<String>) {
    let ack_of: HashMap<&str, f64> = acks.iter().map(|(k, t)| (k.as_str(), *t)).collect();
    let mut at_of: HashMap<&str, i64> = HashMap::new();
    let (mut latency, mut after_at) = (Vec::new(), Vec::new());
    let (mut errors, mut delivered) = (0u64, 0u64);
    let mut first_error = None;
    for c in consumed {
        delivered += c.got.len() as u64;
        let in_place = c
            .got
            .iter()
            .zip(acks)
            .filter(|(r, (k, _))| r.key == *k)
            .count();
        errors += (c.got.len().max(acks.len()) - in_place) as u64;
        if let Some(e) = &c.error {
            errors += 1;
            first_error.get_or_insert_with(|| e.clone());
        }
        for r in &c.got {
            after_at.push(r.recv_ms - r.at_ms as f64);
            at_of.insert(r.key.as_str(), r.at_ms);
            if let Some(ack) = ack_of.get(r.key.as_str()) {
                latency.push(r.recv_ms - ack);
            }
        }
    }
    let commit = acks
        .iter()
        .filter_map(|(k, ack)| Some(ack - *at_of.get(k.as_str())? as f64))
        .collect();
    let committed = acks.len() as u64;
    let run = FeedRun {
        consumers,
        committed,
        write_errors: 0,
        write_secs: 0.0,
        expected: committed * consumers as u64,
        delivered,
        errors,
        latency: dist(latency),
        after_at: dist(after_at),
        commit: dist(commit),
        statements_per_delta: 0.0,
        feed_reads_per_delivery: 0.0,
    };
    (run, first_error)
}

impl RunContext {
    /// Sends the run's deltas one after another on a fixed schedule; returns
    /// each acknowledged key with the wall time its 2xx arrived, and the failures.
    async fn write(&self, producer: &str, wcfg: &WebhookConfig) -> (Vec<(String, f64)>, u64) {
        let url = format!("{}/hooks/{producer}", self.base);
        let start = Instant::now();
        let deadline = start + WRITE_TIMEOUT;
        let mut acks = Vec::with_capacity(self.deltas as usize);
        let mut errors = 0;
        for i in 0..self.deltas {
            let at = start + self.pace * i as u32;
            if at >= deadline {
                break;
            }
            tokio::time::sleep_until(at).await;
            let key = format!("{producer}-{i:06}");
            let body = format!(
                r#"{{"id":"{key}","version":1,"status":"paid","amount_cents":{},"note":"a delta followed by the feed"}}"#,
                i * 7 % 100_000
            )
            .into_bytes();
            let mut req = self
                .client
                .post(&url)
                .timeout(Duration::from_secs(30))
                .header("content-type", "application/json");
            for (h, v) in signature::sign(wcfg, &body, chrono::Utc::now().timestamp(), &key) {
                req = req.header(h, v);
            }
            match req.body(body).send().await {
                Ok(r) if r.status().is_success() => acks.push((key, wall_ms())),
                _ => errors += 1,
            }
        }
        (acks, errors)
    }
}

/// One Server-Sent Events consumer: connects, says it is ready, records
/// every change with its receive time, says when it holds `expect`, and
/// keeps reading (idle) until `stop` or `deadline`.
async fn consume(
    client: reqwest::Client,
    url: String,
    expect: usize,
    ready: mpsc::Sender<()>,
    done: mpsc::Sender<()>,
    stop: CancellationToken,
    deadline: Instant,
) -> Consumed {
    let mut got = Vec::with_capacity(expect);
    let error = follow(
        &client, &url, expect, &ready, &done, &stop, deadline, &mut got,
    )
    .await
    .err()
    .map(|e| format!("{e:#}"));
    Consumed { got, error }
}

#[allow(clippy::too_many_arguments)]
async fn follow(
    client: &reqwest::Client,
    url: &str,
    expect: usize,
    ready: &mpsc::Sender<()>,
    done: &mpsc::Sender<()>,
    stop: &CancellationToken,
    deadline: Instant,
    got: &mut Vec<Received>,
) -> Result<()> {
    let resp = client
        .get(url)
        .bearer_auth(READ_TOKEN)
        .header("accept", "text/event-stream")
        .send()
        .await
        .context("connect to the feed")?;
    if !resp.status().is_success() {
        bail!("the feed answered {}", resp.status());
    }
    // The handler subscribed before answering: no later commit is missed.
    let _ = ready.send(()).await;
    let mut body = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut told = false;
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline) => bail!("deadline reached with {} changes", got.len()),
            c = body.next() => c,
        };
        let recv_ms = wall_ms();
        match chunk {
            None => bail!("the stream ended after {} changes", got.len()),
            Some(Err(e)) => return Err(e).context("read the stream"),
            Some(Ok(c)) => buf.extend_from_slice(&c),
        }
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let frame: Vec<u8> = buf.drain(..end + 2).collect();
            let frame = String::from_utf8_lossy(&frame);
            let (mut event, mut data) = ("message", None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = if v.trim() == "change" {
                        "change"
                    } else {
                        "other"
                    };
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(v.trim().to_string());
                }
            }
            match (event, data) {
                ("change", Some(d)) => {
                    let c: ChangeEvent = serde_json::from_str(&d).context("parse a change")?;
                    got.push(Received {
                        key: c.key,
                        at_ms: c.at,
                        recv_ms,
                    });
                }
                (_, Some(d)) => bail!("the feed sent {d:?}"),
                // A keep-alive comment.
                (_, None) => {}
            }
        }
        if !told && got.len() >= expect {
            told = true;
            let _ = done.send(()).await;
        }
    }
}

fn dist(mut v: Vec<f64>) -> Dist {
    if v.is_empty() {
        return Dist::default();
    }
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() as f64 * f).ceil() as usize).clamp(1, v.len()) - 1];
    Dist {
        p50_ms: q(0.50),
        p99_ms: q(0.99),
        max_ms: q(1.0),
        min_ms: v[0],
    }
}

// Table and targets

pub(super) fn table(reports: &[FeedReport], s: &mut String) {
    use std::fmt::Write as _;
    for r in reports {
        let _ = writeln!(
            s,
            "\n### Change feed, {} (Server-Sent Events; {} deltas, one every {} ms)\n",
            r.backend.name(),
            r.deltas,
            r.pace_ms
        );
        let _ = writeln!(
            s,
            "| consumers | delivered | errors | after 2xx p50 ms | p99 ms | max ms | after `at` p50 ms | p99 ms | max ms | commit p99 ms | max ms | statements / delta | log reads / delivery |"
        );
        let _ = writeln!(
            s,
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for run in &r.runs {
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |",
                run.consumers,
                run.delivered,
                run.expected,
                run.errors,
                run.latency.p50_ms,
                run.latency.p99_ms,
                run.latency.max_ms,
                run.after_at.p50_ms,
                run.after_at.p99_ms,
                run.after_at.max_ms,
                run.commit.p99_ms,
                run.commit.max_ms,
                run.statements_per_delta,
                run.feed_reads_per_delivery
            );
        }
        if let Some(i) = &r.idle {
            let _ = writeln!(
                s,
                "\nidle, {} s windows: {} consumers waiting: {} change-log reads; {:.2} statements/s, none connected {:.2}/s, difference {:.2}/s (sqlx statements in process){}",
                i.secs,
                i.consumers,
                i.feed_reads,
                i.statements_per_sec,
                i.baseline_statements_per_sec,
                i.extra_statements_per_sec(),
                i.pg_summary()
            );
        }
    }
}

pub(super) fn targets(
    reports: &[FeedReport],
    push: &mut impl FnMut(BackendArg, &str, f64, &str, f64, bool),
) {
    for r in reports {
        let errors: u64 = r.runs.iter().map(|run| run.errors + run.write_errors).sum();
        push(
            r.backend,
            "feed: deliveries missing, extra or out of order",
            errors as f64,
            "",
            0.0,
            true,
        );
        if let Some(run) = r.runs.iter().max_by_key(|run| run.consumers) {
            push(
                r.backend,
                &format!(
                    "feed p99 commit (2xx) to delivery, {} consumers",
                    run.consumers
                ),
                run.latency.p99_ms,
                " ms",
                50.0,
                true,
            );
        }
        let Some(i) = &r.idle else {
            // Not measured (a consumer never caught up): shown as missed.
            push(
                r.backend,
                "feed: change-log reads/s of idle consumers",
                f64::NAN,
                "/s",
                0.0,
                true,
            );
            continue;
        };
        push(
            r.backend,
            &format!("feed: change-log reads/s of {} idle consumers", i.consumers),
            i.feed_reads as f64 / i.secs,
            "/s",
            0.0,
            true,
        );
        if let Some(x) = i.extra_pg_log_scans_per_sec() {
            push(
                r.backend,
                &format!(
                    "feed: PostgreSQL scans/s of changes by {} idle consumers",
                    i.consumers
                ),
                x,
                "/s",
                0.0,
                true,
            );
        }
        if let Some(x) = i.extra_pg_xacts_per_sec() {
            push(
                r.backend,
                &format!(
                    "feed: PostgreSQL transactions/s of {} idle consumers",
                    i.consumers
                ),
                x,
                "/s",
                0.5,
                true,
            );
        }
    }
}
