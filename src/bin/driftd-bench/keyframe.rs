//! The keyframe scenarios: a real keyframe against a fetch-only pull of the same pages and against a naive compare, each measurement in a child `probe` process of this binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use driftd::catchup::catch_up;
use driftd::config::{Config, Producer};
use driftd::keyframe::fetch;
use driftd::keyframe::run::Keyframer;
use driftd::metrics::Metrics;
use driftd::store::Store;
use driftd::work::Workers;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::{BackendArg, ProbeArgs, ProbeMode};
use crate::db::{with_db, PG_POOL};
use crate::feed::{Profiling, StatementTime};
use crate::report::{note, proc_kib, ratio};
use crate::vendor::{record_json, start_vendor, Generator, PAGE};
use driftd::store::sql::query;

/// Producer name used by the keyframe scenarios.
const KF_PRODUCER: &str = "bench";
/// Longest a child `probe` may run before it is killed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Args, Clone)]
pub(super) struct KeyframeKnobs {
    /// Drift levels in percent.
    #[arg(long, value_delimiter = ',', default_values = ["0", "0.1", "1", "10"])]
    drifts: Vec<f64>,
    /// Drift levels (percent) at which the naive compare is measured too.
    #[arg(long, value_delimiter = ',', default_values = ["0.1"])]
    naive_drifts: Vec<f64>,
    /// Drift (percent) whose corrections driftd's `apply` workers carry out,
    /// measured against a multi-row INSERT of the same documents (0: skip).
    #[arg(long, default_value_t = 1.0)]
    corrections_drift: f64,
    /// Measure a catch-up of the records changed since the seeding.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    catchup: bool,
}

/// Percent of the records a catch-up finds changed.
const CATCHUP_PCT: f64 = 0.1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Probe {
    mode: ProbeMode,
    wall_ms: f64,
    peak_rss_mib: f64,
    records: u64,
    rows_read: u64,
    drifted: u64,
    /// Records a first sync wrote into the mirror.
    #[serde(default)]
    loaded: u64,
    /// Corrections only: what the workers and the plain INSERT took.
    #[serde(default)]
    corrections: Option<Corrections>,
}

/// Corrections carried out by driftd's `apply` workers (claim, write the
/// mirror compare-and-set, mark done) against a multi-row INSERT of the same
/// documents into a plain table, in statements of as many rows as a worker
/// claims at once.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Corrections {
    items: u64,
    apply_ms: f64,
    insert_ms: f64,
    /// The workers' statements by total time, longest first.
    statements: Vec<StatementTime>,
}

#[derive(Debug, Clone, Serialize)]
struct DriftLevel {
    drift_pct: f64,
    expected_drift: u64,
    keyframe: Probe,
    naive: Option<Probe>,
}

#[derive(Debug, Clone, Serialize)]
pub(super) struct KeyframeReport {
    backend: BackendArg,
    records: u64,
    /// The seeding: a first sync (a keyframe into the empty mirror).
    first_sync: Probe,
    footprint: Footprint,
    fetch: Probe,
    levels: Vec<DriftLevel>,
    /// The apply workers' run, after the drift levels (it changes the mirror).
    corrections: Option<Probe>,
    /// A catch-up at 0.1% changed, last (it changes the mirror too).
    catchup: Option<Probe>,
}

/// The producer that pulls the vendor at `addr`, with work `action`.
fn kf_producer(addr: SocketAddr, action: &str) -> Result<Producer> {
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
version = "/rev"
timeout_secs = 60
retries = 0
pagination = {{ style = "cursor", cursor = "/next_cursor", param = "cursor", limit = {PAGE}, limit_param = "limit" }}
[producer.catchup]
url = "http://{addr}/records?updated_since={{since}}"
since_format = "integer"
overlap = 0
[producer.work]
action = "{action}"
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

/// Bytes the database holds after the first sync: its tables (TOAST and
/// all), its indexes, and the records' own JSON for comparison.
#[derive(Debug, Clone, Copy, Serialize)]
struct Footprint {
    json_bytes: u64,
    table_bytes: u64,
    index_bytes: u64,
}

impl Footprint {
    fn per_record(bytes: u64, records: u64) -> f64 {
        bytes as f64 / records.max(1) as f64
    }
}

/// The database's table and index bytes (SQLite: `dbstat`; PostgreSQL:
/// `pg_table_size` and `pg_indexes_size` of the public tables).
async fn footprint(url: &str, records: u64) -> Result<Footprint> {
    let store = Store::open(url, PG_POOL).await?;
    let sql = if url.starts_with("sqlite:") {
        "SELECT CAST(COALESCE(SUM(CASE WHEN m.type = 'table' THEN d.pgsize END), 0) AS INTEGER),
                CAST(COALESCE(SUM(CASE WHEN m.type = 'index' THEN d.pgsize END), 0) AS INTEGER)
         FROM dbstat d JOIN sqlite_master m ON m.name = d.name"
    } else {
        "SELECT CAST(SUM(pg_table_size(c.oid)) AS BIGINT), CAST(SUM(pg_indexes_size(c.oid)) AS BIGINT)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind = 'r'"
    };
    let row = query(sql).fetch_one(store.pool()).await?;
    let (table, index): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
    store.pool().close().await;
    let json_bytes = (0..records).map(|i| record_json(i, 0).len() as u64).sum();
    Ok(Footprint {
        json_bytes,
        table_bytes: table as u64,
        index_bytes: index as u64,
    })
}

/// Measures the fetch-only pull, seeds `records` rows by a first sync (a
/// keyframe into the empty mirror, which loads in bulk), measures what the
/// database then holds, and measures the keyframe (and, at the chosen
/// levels, the naive compare) at each drift level.
pub(super) async fn scenario(
    backend: BackendArg,
    records: u64,
    knobs: &KeyframeKnobs,
) -> Result<KeyframeReport> {
    with_db(backend, "kf", |url| async move {
        let name = backend.name();
        let fetch = run_probe(&url, records, drift_every(0.1), ProbeMode::Fetch).await?;
        note(format!(
            "keyframe/{name}: seeding {records} rows by a first sync"
        ));
        let first_sync = run_probe(&url, records, 0, ProbeMode::FirstSync).await?;
        if first_sync.loaded != records {
            bail!(
                "the first sync loaded {} of {records} records",
                first_sync.loaded
            );
        }
        note(format!(
            "keyframe/{name}: seeded in {:.1}s ({:.0} rows/s)",
            first_sync.wall_ms / 1000.0,
            records as f64 * 1000.0 / first_sync.wall_ms
        ));
        let footprint = footprint(&url, records).await?;
        note(format!(
            "keyframe/{name}: {:.0} bytes/record in tables, {:.0} in indexes, JSON {:.0}",
            Footprint::per_record(footprint.table_bytes, records),
            Footprint::per_record(footprint.index_bytes, records),
            Footprint::per_record(footprint.json_bytes, records),
        ));
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
        let corrections = if knobs.corrections_drift > 0.0 {
            let every = drift_every(knobs.corrections_drift);
            Some(run_probe(&url, records, every, ProbeMode::Corrections).await?)
        } else {
            None
        };
        let catchup = if knobs.catchup {
            Some(run_probe(&url, records, drift_every(CATCHUP_PCT), ProbeMode::Catchup).await?)
        } else {
            None
        };
        Ok(KeyframeReport {
            backend,
            records,
            first_sync,
            footprint,
            fetch,
            levels,
            corrections,
            catchup,
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
            ProbeMode::FirstSync => "first-sync",
            ProbeMode::Naive => "naive",
            ProbeMode::Corrections => "corrections",
            ProbeMode::Catchup => "catchup",
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
pub(super) async fn probe(a: ProbeArgs) -> Result<()> {
    let stop = CancellationToken::new();
    let g = Generator {
        records: a.records,
        drift_every: a.drift_every,
        drift_rev: if a.mode == ProbeMode::Catchup { 2 } else { 1 },
    };
    let addr = start_vendor(g, stop.clone()).await?;
    // The first sync loads the mirror (an `apply` producer); the drift
    // levels emit `none` items, which nothing carries out, so every level
    // compares against the same seeded rows. The corrections run comes last
    // and carries its items out.
    let action = match a.mode {
        ProbeMode::FirstSync | ProbeMode::Corrections => "apply",
        _ => "none",
    };
    let p = kf_producer(addr, action)?;
    let client = reqwest::Client::new();
    let store = match a.mode {
        ProbeMode::Fetch => None,
        _ => Some(Store::open(&a.url, PG_POOL).await?),
    };
    if let Some(store) = &store {
        // Each keyframe starts from an empty queue so earlier runs' items don't change its work.
        query("DELETE FROM work WHERE producer = $1")
            .bind(KF_PRODUCER)
            .execute(store.pool())
            .await?;
        if a.mode == ProbeMode::Catchup {
            // The previous catch-up saw every change up to revision 1.
            store
                .record_catchup(KF_PRODUCER, Some(2), true, None, 0, 0)
                .await?;
        }
    }
    let clock = Instant::now();
    let mut loaded = 0;
    let mut corrections = None;
    let (records, rows_read, drifted) = match (a.mode, &store) {
        (ProbeMode::Fetch, _) => {
            let snap = fetch::pull(&client, p.snapshot_plan()).await?;
            (snap.len(), 0, 0)
        }
        (ProbeMode::Keyframe | ProbeMode::FirstSync, Some(store)) => {
            let k = Keyframer::new(store.clone(), client.clone(), Metrics::new());
            let s = k.run(&p, false).await?;
            if let Some(e) = &s.error {
                bail!("keyframe failed: {e}");
            }
            loaded = s.loaded;
            (s.records, s.rows_read, s.drift())
        }
        (ProbeMode::Naive, Some(store)) => naive(store, &client, &p).await?,
        (ProbeMode::Corrections, Some(store)) => {
            let k = Keyframer::new(store.clone(), client.clone(), Metrics::new());
            let s = k.run(&p, false).await?;
            if let Some(e) = &s.error {
                bail!("keyframe failed: {e}");
            }
            corrections = Some(carry_out(store, &client, &p, s.work_emitted, &g).await?);
            (s.records, s.rows_read, s.drift())
        }
        (ProbeMode::Catchup, Some(store)) => {
            let cancel = CancellationToken::new();
            let c = catch_up(store, &client, &Metrics::new(), &p, &cancel).await?;
            let expected = expected_drift(g.records, g.drift_every);
            if let Some(e) = &c.error {
                bail!("catch-up failed: {e}");
            }
            if c.records != expected || c.applied != expected {
                bail!(
                    "the catch-up pulled {} and applied {} of {expected} changed records",
                    c.records,
                    c.applied
                );
            }
            (c.records, 0, c.applied)
        }
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
        loaded,
        corrections,
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

impl Corrections {
    fn apply_rate(&self) -> f64 {
        ratio(self.items as f64 * 1000.0, self.apply_ms)
    }

    fn insert_rate(&self) -> f64 {
        ratio(self.items as f64 * 1000.0, self.insert_ms)
    }
}

/// Drains the `items` corrections a keyframe emitted through driftd's
/// workers, then inserts the same documents into a plain table.
async fn carry_out(
    store: &Store,
    client: &reqwest::Client,
    p: &Producer,
    items: u64,
    g: &Generator,
) -> Result<Corrections> {
    let workers = Workers {
        store: store.clone(),
        client: client.clone(),
        metrics: Metrics::new(),
        wake: Default::default(),
        id: "bench-apply".into(),
    };
    let profiling = Profiling::on();
    let clock = Instant::now();
    let mut done = 0u64;
    // Bounded: a batch claims at least one item, so `items` rounds suffice.
    for _ in 0..=items {
        let n = workers.tick(p).await? as u64;
        if n == 0 {
            break;
        }
        done += n;
    }
    let apply_ms = clock.elapsed().as_secs_f64() * 1000.0;
    let statements = profiling.take();
    let open = store.open_work_by_producer().await?;
    if done != items || open.get(&p.name).copied().unwrap_or(0) != 0 {
        bail!("the workers carried out {done} of {items} corrections ({open:?} still open)");
    }

    let pool = store.pool();
    let postgres = !matches!(pool, driftd::store::sql::Pool::Sqlite(_));
    let doc_type = if postgres { "JSONB" } else { "TEXT" };
    query(&format!(
        "CREATE TABLE bench_docs (key TEXT PRIMARY KEY, doc {doc_type} NOT NULL)"
    ))
    .execute(pool)
    .await?;
    let drifted: Vec<u64> = (0..g.records).filter(|&i| g.rev(i) == 1).collect();
    let rows = APPLY_ROWS.min(drifted.len().max(1));
    let statement = |n: usize| {
        let values: Vec<String> = (0..n)
            .map(|r| {
                if postgres {
                    format!("(${}, ${})", 2 * r + 1, 2 * r + 2)
                } else {
                    "(?, ?)".to_string()
                }
            })
            .collect();
        format!(
            "INSERT INTO bench_docs (key, doc) VALUES {}",
            values.join(", ")
        )
    };
    let full = statement(rows);
    let clock = Instant::now();
    for chunk in drifted.chunks(rows) {
        let last;
        let sql = if chunk.len() == rows {
            &full
        } else {
            last = statement(chunk.len());
            &last
        };
        let mut q = query(sql);
        for &i in chunk {
            q = q
                .bind(format!("rec-{i:08}"))
                .bind(driftd::store::sql::Json(record_json(i, 1).into()));
        }
        q.execute(pool).await?;
    }
    let insert_ms = clock.elapsed().as_secs_f64() * 1000.0;
    Ok(Corrections {
        items: done,
        apply_ms,
        insert_ms,
        statements,
    })
}

/// Rows per baseline INSERT: as many as an `apply` worker claims at once.
const APPLY_ROWS: usize = 200;

/// The naive alternative: pull, load every local row, compare every document.
async fn naive(store: &Store, client: &reqwest::Client, p: &Producer) -> Result<(u64, u64, u64)> {
    let snap = fetch::pull(client, p.snapshot_plan()).await?;
    let local = store.entities(&p.name).await?;
    let by_key: HashMap<&str, &Value> = local
        .iter()
        .filter_map(|e| e.doc.as_ref().map(|d| (e.key.as_str(), d)))
        .collect();
    let (mut missing, mut changed, mut matched) = (0u64, 0u64, 0u64);
    for chunk in snap.chunks() {
        for r in chunk? {
            let doc = snap.doc(&r)?;
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
    }
    let extra = by_key.len() as u64 - matched;
    Ok((snap.len(), local.len() as u64, missing + changed + extra))
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    proc_kib(&status, "VmHWM:").unwrap_or(0) as f64 / 1024.0
}

fn fmt_pct(p: f64) -> String {
    format!("{p}%")
}

/// The keyframe sections of the table.
pub(super) fn table(reports: &[KeyframeReport], s: &mut String) {
    use std::fmt::Write as _;
    for r in reports {
        let _ = writeln!(
            s,
            "\n### Keyframe, {} ({} records of ~500 bytes)\n",
            r.backend.name(),
            r.records,
        );
        let f = &r.footprint;
        let per = |b| Footprint::per_record(b, r.records);
        let _ = writeln!(
            s,
            "Seeded by a first sync (a keyframe into the empty mirror) in {:.1} s, {:.0} rows/s, \
             {:.2}× the fetch-only pull, peak RSS {:.0} MiB. The database then holds \
             {:.0} bytes/record in tables and {:.0} in indexes, for {:.0} bytes/record of JSON \
             (tables {:.2}× the JSON).\n",
            r.first_sync.wall_ms / 1000.0,
            r.records as f64 * 1000.0 / r.first_sync.wall_ms,
            ratio(r.first_sync.wall_ms, r.fetch.wall_ms),
            r.first_sync.peak_rss_mib,
            per(f.table_bytes),
            per(f.index_bytes),
            per(f.json_bytes),
            ratio(f.table_bytes as f64, f.json_bytes as f64),
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
        if let Some(c) = &r.catchup {
            let _ = writeln!(
                s,
                "\nCatch-up: {} records changed since the previous one ({CATCHUP_PCT}%) pulled \
                 and applied in {:.2} s, peak RSS {:.0} MiB: {:.3}× the keyframe at 0.1%.",
                c.drifted,
                c.wall_ms / 1000.0,
                c.peak_rss_mib,
                catchup_ratio(r).unwrap_or(f64::NAN),
            );
        }
        if let Some(c) = r.corrections.as_ref().and_then(|p| p.corrections.as_ref()) {
            let _ = writeln!(
                s,
                "\nCorrections: {} `apply` items carried out by driftd's workers in {:.2} s \
                 ({:.0}/s); the same documents by multi-row INSERT ({APPLY_ROWS} rows a \
                 statement) into a plain table in {:.2} s ({:.0}/s): {:.2}×.",
                c.items,
                c.apply_ms / 1000.0,
                c.apply_rate(),
                c.insert_ms / 1000.0,
                c.insert_rate(),
                ratio(c.apply_rate(), c.insert_rate()),
            );
            let _ = writeln!(
                s,
                "\nThe workers' statements, by total time (sqlx's timing of each):\n\n\
                 | statement | count | total s | per item µs |\n|---|---:|---:|---:|"
            );
            for t in c.statements.iter().take(8) {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {:.3} | {:.0} |",
                    t.summary.replace('|', "\\|"),
                    t.count,
                    t.secs,
                    t.secs * 1e6 / c.items.max(1) as f64
                );
            }
        }
    }
}

/// A catch-up's time over the time of the full keyframe at 0.1% drift.
fn catchup_ratio(r: &KeyframeReport) -> Option<f64> {
    let c = r.catchup.as_ref()?;
    let k = r.levels.iter().find(|l| (l.drift_pct - 0.1).abs() < 1e-9)?;
    Some(ratio(c.wall_ms, k.keyframe.wall_ms))
}

/// The keyframe targets.
pub(super) fn targets(
    reports: &[KeyframeReport],
    push: &mut impl FnMut(BackendArg, &str, f64, &str, f64, bool),
) {
    for k in reports {
        let level = |pct: f64| k.levels.iter().find(|l| (l.drift_pct - pct).abs() < 1e-9);
        if let Some(l) = level(0.1) {
            push(
                k.backend,
                "keyframe at 0.1% / fetch-only",
                ratio(l.keyframe.wall_ms, k.fetch.wall_ms),
                "×",
                1.1,
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
            peak.max(k.first_sync.peak_rss_mib),
            " MiB",
            96.0,
            true,
        );
        push(
            k.backend,
            &format!("first sync of {} records / fetch-only", k.records),
            ratio(k.first_sync.wall_ms, k.fetch.wall_ms),
            "×",
            2.0,
            true,
        );
        if let Some(c) = k.corrections.as_ref().and_then(|p| p.corrections.as_ref()) {
            push(
                k.backend,
                "corrections applied / multi-row INSERT",
                ratio(c.apply_rate(), c.insert_rate()),
                "×",
                0.25,
                false,
            );
        }
        if let Some(r) = catchup_ratio(k) {
            push(
                k.backend,
                "catch-up of 0.1% changed / keyframe at 0.1%",
                r,
                "×",
                0.05,
                true,
            );
        }
        push(
            k.backend,
            "tables after the first sync / the records' JSON",
            ratio(
                k.footprint.table_bytes as f64,
                k.footprint.json_bytes as f64,
            ),
            "×",
            2.0,
            true,
        );
    }
}
