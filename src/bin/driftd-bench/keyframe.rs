//! The keyframe scenarios: a real keyframe against a fetch-only pull of the same pages and against a naive compare, each measurement in a child `probe` process of this binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use driftd::canonical::RecordHasher;
use driftd::config::{Config, Producer};
use driftd::entity::{Change, EntityWrite, Source, WriteRule};
use driftd::keyframe::fetch;
use driftd::keyframe::run::Keyframer;
use driftd::metrics::Metrics;
use driftd::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cli::{BackendArg, ProbeArgs, ProbeMode};
use crate::db::{with_db, PG_POOL};
use crate::report::{note, proc_kib, ratio};
use crate::vendor::{record_json, start_vendor, Generator, PAGE};
use driftd::store::sql::query;

/// Producer name used by the keyframe scenarios.
const KF_PRODUCER: &str = "bench";
/// Entities per `write_entities` call while seeding.
const SEED_BATCH: usize = 5_000;
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
}

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
pub(super) struct KeyframeReport {
    backend: BackendArg,
    records: u64,
    seed_secs: f64,
    seed_rows_per_sec: f64,
    fetch: Probe,
    levels: Vec<DriftLevel>,
}

/// The producer that pulls the vendor at `addr`.
fn kf_producer(addr: SocketAddr) -> Result<Producer> {
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
                    rule: WriteRule::IfNewer,
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

/// Seeds `records` rows, then measures the fetch-only pull once and the
/// keyframe (and, at the chosen levels, the naive compare) at each drift level.
pub(super) async fn scenario(
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
pub(super) async fn probe(a: ProbeArgs) -> Result<()> {
    let stop = CancellationToken::new();
    let g = Generator {
        records: a.records,
        drift_every: a.drift_every,
    };
    let addr = start_vendor(g, stop.clone()).await?;
    let p = kf_producer(addr)?;
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
    }
    let clock = Instant::now();
    let (records, rows_read, drifted) = match (a.mode, &store) {
        (ProbeMode::Fetch, _) => {
            let snap = fetch::pull(&client, p.snapshot_plan()).await?;
            (snap.len(), 0, 0)
        }
        (ProbeMode::Keyframe, Some(store)) => {
            let k = Keyframer::new(store.clone(), client.clone(), Metrics::new());
            let s = k.run(&p, false).await?;
            if let Some(e) = &s.error {
                bail!("keyframe failed: {e}");
            }
            (s.records, s.rows_read, s.drift())
        }
        (ProbeMode::Naive, Some(store)) => naive(store, &client, &p).await?,
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
}
