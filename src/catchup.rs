//! Catch-ups: incremental pulls between keyframes of what changed since the newest version seen, applied as versioned writes.
//!
//! Each catch-up fills `{since}` in `[producer.catchup].url` with the newest
//! version the previous one saw (on the first, the newest version of the
//! last keyframe's snapshot, else of the rows no delta wrote) minus
//! `overlap`, pulls it with the snapshot's pagination, pointers and rate
//! limit, and writes each record with [`WriteRule::Fetched`]: never older
//! over newer. Deletions are not inferred (a catch-up lists changes, not the
//! whole state); full keyframes still own those. A failed catch-up writes
//! nothing it has not already committed, keeps its `since`, and is tried
//! again at the next tick.

use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Producer, SinceFormat};
use crate::entity::{Change, EntityWrite, Source, WriteOutcome, WriteRule};
use crate::keyframe::fetch;
use crate::metrics::Metrics;
use crate::redact::error_chain;
use crate::store::{Store, StoreError};

/// Records written per transaction.
const WRITE_BATCH: usize = 500;

/// What one catch-up did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Caught {
    pub producer: String,
    /// The version the pull started from (before the overlap), if any.
    pub since: Option<i64>,
    pub records: u64,
    pub applied: u64,
    pub unchanged: u64,
    pub stale: u64,
    /// Where the next catch-up starts.
    pub next_since: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why nothing was pulled (no version seen yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// `since - overlap` as the catch-up URL carries it.
pub(crate) fn since_text(format: SinceFormat, since: i64, overlap: u64) -> String {
    match format {
        SinceFormat::Integer => since
            .saturating_sub(i64::try_from(overlap).unwrap_or(i64::MAX))
            .to_string(),
        SinceFormat::Rfc3339 => {
            let nanos = since.saturating_sub(
                i64::try_from(overlap)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1_000_000_000),
            );
            Utc.timestamp_nanos(nanos)
                .to_rfc3339_opts(SecondsFormat::AutoSi, true)
        }
    }
}

/// `text` percent-encoded for a query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Runs one catch-up of `p` and records it. Cancelled, it stops pulling,
/// keeps what it committed (each batch is versioned writes, right on its
/// own) and records the run as interrupted with its `since` unchanged.
pub async fn catch_up(
    store: &Store,
    client: &reqwest::Client,
    metrics: &Metrics,
    p: &Producer,
    cancel: &CancellationToken,
) -> Result<Caught, StoreError> {
    let Some(cfg) = &p.catchup else {
        return Err(StoreError::Invalid(format!(
            "producer {:?} has no [producer.catchup]",
            p.name
        )));
    };
    let mut caught = Caught {
        producer: p.name.clone(),
        ..Caught::default()
    };
    let since = match store.catchup_state(&p.name).await?.and_then(|s| s.since) {
        Some(s) => Some(s),
        None => store.newest_version(&p.name).await?,
    };
    let Some(since) = since else {
        caught.skipped = Some(
            "nowhere to start yet: a keyframe sets where catch-ups start (the newest version of its snapshot)"
                .into(),
        );
        return Ok(caught);
    };
    caught.since = Some(since);
    caught.next_since = Some(since);
    let url = cfg.url.replace(
        "{since}",
        &encode(&since_text(cfg.since_format, since, cfg.overlap)),
    );
    let running = metrics.catchup_running.with_label_values(&[&p.name]);
    running.set(1);
    let pulled = tokio::select! {
        pulled = pull_and_write(store, client, p, &url, &mut caught) => pulled,
        _ = cancel.cancelled() => Err("interrupted by shutdown; the next catch-up starts from the same version".into()),
    };
    running.set(0);
    let ok = match pulled {
        Ok(()) => true,
        Err(e) => {
            caught.error = Some(e);
            false
        }
    };
    store
        .record_catchup(
            &p.name,
            caught.next_since,
            ok,
            caught.error.as_deref(),
            caught.records,
            caught.applied,
        )
        .await?;
    let outcome = if ok { "ok" } else { "failed" };
    metrics
        .catchup_runs
        .with_label_values(&[&p.name, outcome])
        .inc();
    for (outcome, n) in [
        ("applied", caught.applied),
        ("unchanged", caught.unchanged),
        ("stale", caught.stale),
    ] {
        metrics
            .catchup_records
            .with_label_values(&[&p.name, outcome])
            .inc_by(n);
    }
    if ok {
        metrics
            .catchup_last_success
            .with_label_values(&[&p.name])
            .set(Utc::now().timestamp_millis() as f64 / 1000.0);
    }
    Ok(caught)
}

/// Pulls `url` and writes its records in batches; the error, as shown.
async fn pull_and_write(
    store: &Store,
    client: &reqwest::Client,
    p: &Producer,
    url: &str,
    caught: &mut Caught,
) -> Result<(), String> {
    let plan = p.snapshot_plan().with_url(url).map_err(|e| e.to_string())?;
    let snap = fetch::pull(client, &plan)
        .await
        .map_err(|e| error_chain(&e))?;
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut newest = caught.next_since;
    for chunk in snap.chunks() {
        for r in chunk.map_err(|e| error_chain(&e))? {
            let doc = snap.doc(&r).map_err(|e| error_chain(&e))?;
            newest = newest.max(r.version);
            batch.push(EntityWrite {
                key: r.key.into(),
                change: Change::Hashed(doc, r.hash),
                version: r.version,
                source: Source::Catchup,
                rule: WriteRule::Fetched,
            });
            if batch.len() == WRITE_BATCH {
                write(store, p, &mut batch, caught).await?;
            }
        }
    }
    write(store, p, &mut batch, caught).await?;
    caught.next_since = newest;
    Ok(())
}

async fn write(
    store: &Store,
    p: &Producer,
    batch: &mut Vec<EntityWrite>,
    caught: &mut Caught,
) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let outcomes = store
        .write_entities(&p.name, p.bucket_bits, p.hasher(), batch)
        .await
        .map_err(|e| error_chain(&e))?;
    for o in outcomes {
        caught.records += 1;
        match o {
            WriteOutcome::Applied => caught.applied += 1,
            WriteOutcome::Unchanged => caught.unchanged += 1,
            WriteOutcome::Stale | WriteOutcome::Tie => caught.stale += 1,
        }
    }
    batch.clear();
    Ok(())
}

/// Runs `p`'s catch-ups every `every_secs` until `cancel`. Across replicas
/// each tick runs once: the tick is claimed in the store first.
pub async fn run_catchups(
    store: Store,
    client: reqwest::Client,
    metrics: Metrics,
    p: Producer,
    cancel: CancellationToken,
) {
    let Some(cfg) = &p.catchup else { return };
    let every = Duration::from_secs(cfg.every_secs);
    loop {
        let now_ms = Utc::now().timestamp_millis();
        let period = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1);
        let next_tick = (now_ms / period + 1) * period;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(u64::try_from(next_tick - now_ms).unwrap_or(0))) => {}
        }
        match store.claim_catchup_tick(&p.name, next_tick).await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                warn!(producer = %p.name, error = %e, "catch-up: database error; next tick");
                continue;
            }
        }
        match catch_up(&store, &client, &metrics, &p, &cancel).await {
            Ok(c) if c.error.is_some() => warn!(producer = %p.name,
                error = c.error.as_deref().unwrap_or_default(), "catch-up failed; next tick"),
            Ok(c) if c.applied > 0 => info!(producer = %p.name, records = c.records,
                applied = c.applied, "catch-up applied changes"),
            Ok(_) => {}
            Err(e) => warn!(producer = %p.name, error = %e, "catch-up: database error; next tick"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_written_in_the_configured_form_minus_the_overlap() {
        let t = 1_767_225_600_000_000_000; // 2026-01-01T00:00:00Z in nanoseconds
        assert_eq!(
            since_text(SinceFormat::Rfc3339, t, 60),
            "2025-12-31T23:59:00Z"
        );
        assert_eq!(since_text(SinceFormat::Integer, 1_000, 60), "940");
        assert_eq!(encode("2025-12-31T23:59:00Z"), "2025-12-31T23%3A59%3A00Z");
    }
}
