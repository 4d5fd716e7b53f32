//! One keyframe run end to end: lease, pull, compare, classify, guard, record, emit.
//!
//! A failed pull records a `failed` run and emits nothing (invariant 2); too
//! much drift records a `guarded` run and emits nothing until approved
//! (invariant 3). Only this file sequences the IO; the decisions are in
//! `compare.rs`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::approval::{self, Refusal};
use super::cause::{self, Cause, Evidence};
use super::compare::{self, Drift, DriftKind, Remote};
use super::fetch::{self, Snapshot};
use super::holder::Holder;
use crate::config::{Action, Config, Producer};
use crate::entity::{Change, EntityWrite, LocalRow, Source, WriteOutcome, WriteRule};
use crate::ingest::pipeline::named_keys;
use crate::metrics::Metrics;
use crate::pacing::{self, Observation, Pace};
use crate::state::{Health, RunState};
use crate::store::{now_ms, DriftRow, InboxOutcome, Pacing, RunCounts, Store, StoreError};
use crate::work;

/// Mismatched buckets whose local rows are read and classified together.
const CLASSIFY_BUCKETS: usize = 1_024;
/// Records a first sync writes per transaction.
const LOAD_CHUNK: usize = 2_000;
/// A mirror holding at most 1/FIRST_SYNC_SHARE of the snapshot's records is
/// loaded in bulk (a first sync).
const FIRST_SYNC_SHARE: u64 = 10;

/// How long a keyframe lease lives without renewal, and how often it is renewed.
/// A holder on this machine that stopped without releasing is seen at once
/// (see `holder.rs`); one elsewhere blocks the next keyframe for at most the TTL.
const LEASE_TTL: Duration = Duration::from_secs(30);
const LEASE_RENEW: Duration = Duration::from_secs(10);

/// The error of a run cut short by a shutdown (SIGINT/SIGTERM).
const INTERRUPTED_SHUTDOWN: &str = "interrupted: the process is shutting down";
/// The error of a run whose lease another process took over.
const INTERRUPTED_LEASE_LOST: &str = "interrupted: lost the keyframe lease to another process";
/// The error of a run left `running` by a process that stopped (SIGKILL, a crash).
const INTERRUPTED_ORPHAN: &str = "interrupted: the process holding it stopped";

#[derive(Debug, thiserror::Error)]
pub enum KeyframeError {
    #[error("a keyframe of producer {0:?} is already running")]
    Busy(String),
    #[error("schedule tick {tick} of producer {producer:?} was already served by another replica")]
    TickServed { producer: String, tick: i64 },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the snapshot hasher of producer {producer:?}: {reason}")]
    Config { producer: String, reason: String },
    #[error("keyframe run {0} does not exist")]
    NoSuchRun(i64),
    #[error("keyframe run {run_id} belongs to producer {producer:?}, which is not in the config")]
    UnknownProducer { run_id: i64, producer: String },
    #[error("keyframe run {run_id} {refusal}")]
    Refused { run_id: i64, refusal: Refusal },
}

/// What approving a guarded run did.
#[derive(Debug, Clone, Serialize)]
pub struct Approved {
    pub run_id: i64,
    pub producer: String,
    pub work_emitted: u64,
}

/// What a run did, as printed by `driftd keyframe` (`--json` prints these field names).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub run_id: Option<i64>,
    pub producer: String,
    pub state: RunState,
    pub records: u64,
    pub buckets_compared: u64,
    pub buckets_mismatched: u64,
    pub rows_read: u64,
    pub missing: u64,
    pub extra: u64,
    pub changed: u64,
    pub skipped_races: u64,
    pub work_emitted: u64,
    /// Records a first sync wrote into the empty mirror directly, instead of
    /// one work item each (`apply` producers only).
    pub loaded: u64,
    /// Drifted entities by cause (`keyframe::cause`), every drift counted once.
    pub causes: BTreeMap<&'static str, u64>,
    /// Drifted entities by kind and cause, for `driftd_drift_detected_total`.
    #[serde(skip)]
    pub(crate) detected: BTreeMap<(DriftKind, Cause), u64>,
    /// When the run began (ms), before its pull.
    #[serde(skip)]
    pub(crate) started_at_ms: i64,
    /// The schedule tick (ms) the run served; `None` for a run started by hand.
    #[serde(skip)]
    pub(crate) scheduled_for: Option<i64>,
    /// An adaptive producer's next pace, set by this run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace: Option<Pace>,
    pub duration_ms: u64,
    pub error: Option<String>,
}

impl Summary {
    pub fn drift(&self) -> u64 {
        self.missing + self.extra + self.changed
    }
}

/// Runs keyframes; shared by the scheduler and the CLI.
#[derive(Clone, Debug)]
pub struct Keyframer {
    store: Store,
    client: reqwest::Client,
    metrics: Metrics,
    /// This process, as written into the leases it holds.
    holder: Holder,
    /// Wakes in-process workers when a run emits work.
    wake: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Cancelled on shutdown: a run under way records itself `failed` and
    /// releases its lease instead of being dropped.
    shutdown: CancellationToken,
}

/// A keyframe lease this process holds, under one token.
struct Lease {
    name: String,
    holder: String,
}

impl Keyframer {
    pub fn new(store: Store, client: reqwest::Client, metrics: Metrics) -> Self {
        Self {
            store,
            client,
            metrics,
            holder: Holder::current(),
            wake: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// Wakes `wake`'s waiters whenever a run emits work (in-process workers).
    pub(crate) fn with_wake(mut self, wake: std::sync::Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// Interrupts runs when `shutdown` is cancelled: the run under way stops
    /// at its next step, is recorded `failed` and releases its lease.
    pub(crate) fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Runs one keyframe of `p` now. `dry_run` pulls and compares but records and emits nothing.
    pub async fn run(&self, p: &Producer, dry_run: bool) -> Result<Summary, KeyframeError> {
        self.run_for(p, dry_run, None).await
    }

    /// Runs the keyframe of schedule tick `tick` (ms), unless another replica
    /// already served it ([`KeyframeError::TickServed`]) or is running one
    /// ([`KeyframeError::Busy`]).
    pub(crate) async fn run_scheduled(
        &self,
        p: &Producer,
        tick: i64,
    ) -> Result<Summary, KeyframeError> {
        self.run_for(p, false, Some(tick)).await
    }

    async fn run_for(
        &self,
        p: &Producer,
        dry_run: bool,
        tick: Option<i64>,
    ) -> Result<Summary, KeyframeError> {
        let clock = Instant::now();
        let lease = self.take_lease(p).await?;
        if let Some(tick) = tick {
            // Claimed under the lease: a replica that fires late for a tick
            // another one served (and finished) skips it.
            match self.store.claim_tick(&p.name, tick).await {
                Ok(true) => {}
                Ok(false) => {
                    self.release(&lease, &p.name).await;
                    return Err(KeyframeError::TickServed {
                        producer: p.name.clone(),
                        tick,
                    });
                }
                Err(e) => {
                    self.release(&lease, &p.name).await;
                    return Err(e.into());
                }
            }
        }
        let span =
            tracing::info_span!("keyframe", producer = %p.name, run_id = tracing::field::Empty);
        // Stopped on shutdown, or when the lease is lost; the run notices at its
        // next step and records itself failed, so it is never dropped half-way.
        let stop = self.shutdown.child_token();
        let result = tokio::select! {
            r = self.run_leased(p, dry_run, tick, clock, &stop).instrument(span) => r,
            never = self.keep_lease(&lease, &stop) => match never {},
        };
        self.release(&lease, &p.name).await;
        result
    }

    /// Takes the keyframe lease of `p`: free or expired, or held by a process
    /// on this machine that stopped without releasing it. Then closes the runs
    /// such a process left `running`.
    async fn take_lease(&self, p: &Producer) -> Result<Lease, KeyframeError> {
        let lease = Lease {
            name: format!("keyframe:{}", p.name),
            holder: self.holder.renewed().to_string(),
        };
        let ttl = LEASE_TTL.as_millis() as i64;
        let mut taken = self
            .store
            .try_lease(&lease.name, &lease.holder, ttl, now_ms())
            .await?;
        if !taken {
            if let Some(current) = self.store.lease_holder(&lease.name).await? {
                if self.holder.sees_stopped_id(&current) {
                    taken = self
                        .store
                        .take_over_lease(&lease.name, &current, &lease.holder, ttl, now_ms())
                        .await?;
                    if taken {
                        info!(producer = %p.name, previous = %current, "took over the keyframe lease of a process that stopped");
                    }
                }
            }
        }
        if !taken {
            return Err(KeyframeError::Busy(p.name.clone()));
        }
        match self
            .store
            .fail_running_runs(&p.name, INTERRUPTED_ORPHAN)
            .await
        {
            Ok(0) => {}
            Ok(n) => {
                warn!(producer = %p.name, runs = n, "closed keyframe runs left running by a process that stopped")
            }
            Err(e) => {
                self.release(&lease, &p.name).await;
                return Err(e.into());
            }
        }
        Ok(lease)
    }

    async fn release(&self, lease: &Lease, producer: &str) {
        if let Err(e) = self.store.release_lease(&lease.name, &lease.holder).await {
            warn!(producer, error = %e, "could not release the keyframe lease; it expires by itself");
        }
    }

    /// Approves guarded run `run_id` and emits its work. Holds the producer's
    /// keyframe lease meanwhile, so no keyframe compares between the check
    /// and the emission; refuses a run whose drift list a later run made
    /// stale, or that expired (see `approval.rs`).
    pub async fn approve(&self, config: &Config, run_id: i64) -> Result<Approved, KeyframeError> {
        let run = self
            .store
            .run(run_id)
            .await?
            .ok_or(KeyframeError::NoSuchRun(run_id))?;
        let Some(p) = config.producer(&run.producer) else {
            return Err(KeyframeError::UnknownProducer {
                run_id,
                producer: run.producer,
            });
        };
        let lease = self.take_lease(p).await?;
        let result = self
            .approve_leased(p, run_id, config.database.retention_days)
            .await;
        self.release(&lease, &p.name).await;
        result
    }

    async fn approve_leased(
        &self,
        p: &Producer,
        run_id: i64,
        retention_days: u32,
    ) -> Result<Approved, KeyframeError> {
        let run = self
            .store
            .run(run_id)
            .await?
            .ok_or(KeyframeError::NoSuchRun(run_id))?;
        let newer = self.store.newer_compared_run(&p.name, run_id).await?;
        approval::check(&run, newer, now_ms(), retention_days)
            .map_err(|refusal| KeyframeError::Refused { run_id, refusal })?;
        self.store.approve_run(run_id).await?;
        let work_emitted = work::emit_run(&self.store, p, run_id).await?;
        if work_emitted > 0 {
            if let Some(w) = &self.wake {
                w.notify_waiters();
            }
        }
        self.metrics
            .keyframe_guarded
            .with_label_values(&[&p.name])
            .set(0);
        info!(producer = %p.name, run_id, work_emitted, "guarded keyframe run approved");
        Ok(Approved {
            run_id,
            producer: p.name.clone(),
            work_emitted,
        })
    }

    /// Renews the lease until the run ends; if another process took it,
    /// stops the run (which then records itself failed). Never returns.
    async fn keep_lease(&self, lease: &Lease, stop: &CancellationToken) -> Infallible {
        loop {
            tokio::time::sleep(LEASE_RENEW).await;
            match self
                .store
                .try_lease(
                    &lease.name,
                    &lease.holder,
                    LEASE_TTL.as_millis() as i64,
                    now_ms(),
                )
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    warn!(lease = %lease.name, "lost the keyframe lease to another process; stopping the run");
                    stop.cancel();
                    return std::future::pending().await;
                }
                Err(e) => warn!(error = %e, "could not renew the keyframe lease; retrying"),
            }
        }
    }

    /// The error of a run `stop` cut short.
    fn interruption(&self) -> &'static str {
        if self.shutdown.is_cancelled() {
            INTERRUPTED_SHUTDOWN
        } else {
            INTERRUPTED_LEASE_LOST
        }
    }

    async fn run_leased(
        &self,
        p: &Producer,
        dry_run: bool,
        tick: Option<i64>,
        clock: Instant,
        stop: &CancellationToken,
    ) -> Result<Summary, KeyframeError> {
        let hasher = p.hasher();
        log_relayout(
            &p.name,
            self.store
                .ensure_layout(&p.name, p.bucket_bits, hasher)
                .await?,
        );
        if !dry_run {
            // Items finished since the last round (an application's own
            // worker, a late 2xx) are in the mirror before it is compared.
            work::mirror_done(&self.store, p).await?;
        }
        let started_at = now_ms();
        let run_id = if dry_run {
            None
        } else {
            Some(self.store.start_run(&p.name, started_at, tick).await?)
        };
        if let Some(id) = run_id {
            tracing::Span::current().record("run_id", id);
        }
        let mut summary = Summary {
            run_id,
            producer: p.name.clone(),
            state: RunState::Running,
            records: 0,
            buckets_compared: 0,
            buckets_mismatched: 0,
            rows_read: 0,
            missing: 0,
            extra: 0,
            changed: 0,
            skipped_races: 0,
            work_emitted: 0,
            loaded: 0,
            causes: BTreeMap::new(),
            detected: BTreeMap::new(),
            started_at_ms: started_at,
            scheduled_for: tick,
            pace: None,
            duration_ms: 0,
            error: None,
        };

        // The pull and the compare only read: they stop at once when asked.
        // Storing the drift list and emitting work run to their end.
        let pulled = tokio::select! {
            r = fetch::pull(&self.client, p.snapshot_plan()) => Some(r),
            _ = stop.cancelled() => None,
        };
        let snapshot = match pulled {
            None => return self.interrupted(p, summary, clock).await,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                let message = e.to_string();
                warn!(producer = %p.name, error = %message, "keyframe failed: no drift emitted");
                summary.state = RunState::Failed;
                summary.error = Some(message);
                return self.finish(p, summary, clock, None).await;
            }
        };
        // A first sync: into an empty or nearly empty mirror most drift is
        // missing records. An `apply` producer writes those in bulk rather
        // than as one work item each; a delta that lands meanwhile wins
        // (compare-and-set on an absent row), and an interrupted load is
        // finished by the next run. The compare then counts them without
        // keeping them.
        let may_load = !dry_run && p.work.action == Action::Apply;
        let compared = tokio::select! {
            r = self.compare(p, &snapshot, may_load, !dry_run) => Some(r?),
            _ = stop.cancelled() => None,
        };
        let Some(compared) = compared else {
            return self.interrupted(p, summary, clock).await;
        };
        let Compared {
            counts,
            drifts,
            local_rows,
            mismatched,
            first_sync,
            detected,
        } = compared;
        for (&(_, cause), n) in &detected {
            *summary.causes.entry(cause.as_str()).or_default() += n;
        }
        summary.detected = detected;
        summary.records = counts.records;
        summary.buckets_compared = counts.buckets_compared;
        summary.buckets_mismatched = counts.buckets_mismatched;
        summary.rows_read = counts.rows_read;
        summary.missing = counts.missing;
        summary.extra = counts.extra;
        summary.changed = counts.changed;
        summary.skipped_races = counts.skipped_races;

        let guarded = compare::guard_trips(
            summary.extra,
            summary.changed,
            local_rows,
            p.max_drift_ratio,
            p.max_drift_rows,
        );
        summary.state = if guarded {
            RunState::Guarded
        } else {
            RunState::Ok
        };
        if guarded {
            let until = run_id.map_or_else(
                || "a dry run records nothing to approve".to_string(),
                |id| format!("nothing emitted until `driftd approve {id}`"),
            );
            warn!(
                producer = %p.name,
                run_id,
                extra = summary.extra,
                changed = summary.changed,
                local_rows,
                "keyframe guarded: deletions and overwrites exceed max_drift_ratio of the local rows or max_drift_rows; {until}"
            );
        }
        if first_sync && summary.state == RunState::Ok && summary.missing > 0 {
            match self.load(p, &snapshot, &mismatched, stop).await? {
                Some(loaded) => summary.loaded = loaded,
                None => return self.interrupted(p, summary, clock).await,
            }
            info!(producer = %p.name, run_id, loaded = summary.loaded, "first sync: records loaded into the mirror");
        }
        if p.catchup.is_some() && summary.state == RunState::Ok {
            // Catch-ups start from the newest version this full view held,
            // unless they already track their own.
            if let Some(v) = snapshot.newest_version {
                self.store.start_catchups_at(&p.name, v).await?;
            }
        }
        self.finish(p, summary, clock, Some((&snapshot, &drifts)))
            .await
    }

    /// Writes the producer's records that are missing locally into the
    /// mirror, a chunk per transaction, classifying `mismatched` again a slice
    /// at a time; returns the rows written, or `None` when `stop` cut it short
    /// (what was written stays: each row is the producer's record).
    async fn load(
        &self,
        p: &Producer,
        snapshot: &Snapshot,
        mismatched: &[u32],
        stop: &CancellationToken,
    ) -> Result<Option<u64>, KeyframeError> {
        let mut loaded = 0;
        let mut writes = Vec::with_capacity(LOAD_CHUNK);
        for slice in mismatched.chunks(CLASSIFY_BUCKETS) {
            let local = self.store.rows_in_buckets(&p.name, slice).await?;
            let records = snapshot.in_buckets(slice).map_err(unreadable(p))?;
            let c = compare::classify(&remotes(&records), &local, snapshot.started_at_ms, None);
            for d in c.drifts {
                let (DriftKind::Missing, Some((at, version)), Some(hash)) =
                    (d.kind, d.remote, d.remote_hash)
                else {
                    continue;
                };
                writes.push(EntityWrite {
                    // The snapshot hashed it under the producer's hasher.
                    change: Change::Hashed(
                        snapshot.doc_at(&d.key, at).map_err(unreadable(p))?,
                        hash,
                    ),
                    key: d.key,
                    version,
                    source: Source::Keyframe,
                    rule: WriteRule::Correct { seen: None },
                });
                if writes.len() == LOAD_CHUNK {
                    if stop.is_cancelled() {
                        return Ok(None);
                    }
                    loaded += self.write_loaded(p, &mut writes).await?;
                }
            }
        }
        loaded += self.write_loaded(p, &mut writes).await?;
        Ok(Some(loaded))
    }

    /// Writes one chunk of a first sync and empties it; returns the rows written.
    async fn write_loaded(
        &self,
        p: &Producer,
        writes: &mut Vec<EntityWrite>,
    ) -> Result<u64, KeyframeError> {
        if writes.is_empty() {
            return Ok(0);
        }
        let outcomes = self
            .store
            .write_entities(&p.name, p.bucket_bits, p.hasher(), writes)
            .await?;
        writes.clear();
        Ok(outcomes
            .iter()
            .filter(|o| **o == WriteOutcome::Applied)
            .count() as u64)
    }

    /// Records a run cut short as `failed`, with no drift. The producer's
    /// health is left alone: the producer did nothing wrong.
    async fn interrupted(
        &self,
        p: &Producer,
        mut summary: Summary,
        clock: Instant,
    ) -> Result<Summary, KeyframeError> {
        let reason = self.interruption();
        warn!(producer = %p.name, run_id = summary.run_id, "keyframe {reason}: recorded as failed, nothing emitted");
        summary.state = RunState::Failed;
        summary.error = Some(reason.to_string());
        summary.duration_ms = clock.elapsed().as_millis() as u64;
        if let Some(run_id) = summary.run_id {
            let counts = RunCounts::default();
            self.store
                .finish_run(run_id, RunState::Failed, &counts, Some(reason))
                .await?;
            self.metrics
                .keyframe_runs
                .with_label_values(&[&p.name, RunState::Failed.as_str()])
                .inc();
        }
        Ok(summary)
    }

    /// Compares the snapshot with the store: the counts, the drift list, the
    /// live local rows and the mismatched buckets. With `may_load`, a mirror
    /// holding at most a tenth of the snapshot's records is a first sync: its
    /// `missing` drift is counted but not kept, for [`Self::load`] to write.
    /// Without `keep` (a dry run, which stores nothing) neither is it.
    async fn compare(
        &self,
        p: &Producer,
        snapshot: &Snapshot,
        may_load: bool,
        keep: bool,
    ) -> Result<Compared, KeyframeError> {
        let remote_digests = &snapshot.digests;
        let local_digests: BTreeMap<_, _> = self
            .store
            .bucket_digests(&p.name)
            .await?
            .into_iter()
            .collect();
        // Live local rows, from the digests already read (no COUNT over the table).
        let local_rows: u64 = local_digests.values().map(|d| d.rows.max(0) as u64).sum();
        let first_sync = may_load && local_rows.saturating_mul(FIRST_SYNC_SHARE) <= snapshot.len();
        let mismatched = compare::mismatched_buckets(remote_digests, &local_digests);
        let previous = self
            .store
            .previous_pull_started(&p.name, snapshot.started_at_ms)
            .await?;
        // Classify a slice of mismatched buckets at a time, so the records
        // and local rows in memory are those of one slice.
        let mut drifts = Vec::new();
        let (mut skipped_races, mut rows_read, mut missing) = (0u64, 0u64, 0u64);
        let mut detected = BTreeMap::new();
        let evidence = if mismatched.is_empty() {
            InboxEvidence::default()
        } else {
            InboxEvidence::read(&self.store, p).await?
        };
        for slice in mismatched.chunks(CLASSIFY_BUCKETS) {
            let local = self.store.rows_in_buckets(&p.name, slice).await?;
            rows_read += local.len() as u64;
            let records = snapshot.in_buckets(slice).map_err(unreadable(p))?;
            let c = compare::classify(&remotes(&records), &local, snapshot.started_at_ms, previous);
            skipped_races += c.skipped_races.len() as u64;
            let local_by_key: HashMap<&str, &LocalRow> =
                local.iter().map(|l| (l.key.as_str(), l)).collect();
            for mut d in c.drifts {
                let cause = cause::attribute(
                    &d,
                    local_by_key.get(d.key.as_str()).copied(),
                    evidence.of(&d.key),
                );
                d.cause = Some(cause);
                *detected.entry((d.kind, cause)).or_default() += 1;
                if d.kind == DriftKind::Missing {
                    missing += 1;
                    if first_sync || !keep {
                        continue;
                    }
                }
                drifts.push(d);
            }
        }
        let count = |kind| drifts.iter().filter(|d: &&Drift| d.kind == kind).count() as u64;
        let counts = RunCounts {
            records: snapshot.len(),
            buckets_compared: compare::compared_buckets(remote_digests, &local_digests),
            buckets_mismatched: mismatched.len() as u64,
            rows_read,
            missing,
            extra: count(DriftKind::Extra),
            changed: count(DriftKind::Changed),
            skipped_races,
        };
        Ok(Compared {
            counts,
            drifts,
            local_rows,
            mismatched,
            first_sync,
            detected,
        })
    }

    /// Records the run, emits work for an `ok` run, updates health and metrics.
    async fn finish(
        &self,
        p: &Producer,
        mut summary: Summary,
        clock: Instant,
        drifts: Option<(&Snapshot, &[Drift])>,
    ) -> Result<Summary, KeyframeError> {
        let Some(run_id) = summary.run_id else {
            summary.duration_ms = clock.elapsed().as_millis() as u64;
            return Ok(summary);
        };
        let counts = RunCounts {
            records: summary.records,
            buckets_compared: summary.buckets_compared,
            buckets_mismatched: summary.buckets_mismatched,
            rows_read: summary.rows_read,
            missing: summary.missing,
            extra: summary.extra,
            changed: summary.changed,
            skipped_races: summary.skipped_races,
        };
        if let Some((snapshot, drifts)) = drifts {
            // In chunks, so at most one chunk of documents is in memory.
            for chunk in drifts.chunks(1_000) {
                let rows = chunk
                    .iter()
                    .map(|d| drift_row(p, snapshot, d))
                    .collect::<Result<Vec<_>, _>>()?;
                self.store.insert_drifts(run_id, &p.name, &rows).await?;
            }
        }
        self.store
            .finish_run(run_id, summary.state, &counts, summary.error.as_deref())
            .await?;
        if summary.state == RunState::Ok {
            summary.work_emitted = work::emit_run(&self.store, p, run_id).await?;
            if summary.work_emitted > 0 {
                if let Some(w) = &self.wake {
                    w.notify_waiters();
                }
            }
        }

        let succeeded = summary.state != RunState::Failed;
        // The whole run: pull, compare, storing the drift list and emitting work.
        summary.duration_ms = clock.elapsed().as_millis() as u64;
        let health = self
            .store
            .record_keyframe_health(&p.name, succeeded, p.unhealthy_after)
            .await?;
        let m = &self.metrics;
        m.keyframe_runs
            .with_label_values(&[&p.name, summary.state.as_str()])
            .inc();
        m.keyframe_duration
            .with_label_values(&[&p.name])
            .observe(summary.duration_ms as f64 / 1000.0);
        for h in Health::ALL {
            m.producer_state
                .with_label_values(&[&p.name, h.as_str()])
                .set(i64::from(*h == health));
        }
        if succeeded {
            m.keyframe_records
                .with_label_values(&[&p.name])
                .set(i64::try_from(summary.records).unwrap_or(i64::MAX));
            m.first_sync_records
                .with_label_values(&[&p.name])
                .inc_by(summary.loaded);
            for (&(kind, cause), &n) in &summary.detected {
                m.drift_detected
                    .with_label_values(&[&p.name, kind.as_str(), cause.as_str()])
                    .inc_by(n);
            }
            let delivered = self
                .store
                .delta_changes_since_previous_run(&p.name, run_id)
                .await?;
            let drift = summary.drift();
            let ratio = if drift + delivered == 0 {
                0.0
            } else {
                drift as f64 / (drift + delivered) as f64
            };
            m.delta_loss_ratio.with_label_values(&[&p.name]).set(ratio);
        }
        if succeeded {
            m.keyframe_guarded
                .with_label_values(&[&p.name])
                .set(i64::from(summary.state == RunState::Guarded));
        }
        if p.schedule().is_adaptive() {
            summary.pace = self.pace(p, &summary).await?;
        }
        if summary.state == RunState::Ok {
            m.keyframe_last_success
                .with_label_values(&[&p.name])
                .set(now_ms() as f64 / 1000.0);
        }
        info!(
            producer = %p.name,
            run_id,
            state = %summary.state,
            records = summary.records,
            missing = summary.missing,
            extra = summary.extra,
            changed = summary.changed,
            skipped_races = summary.skipped_races,
            rows_read = summary.rows_read,
            work_emitted = summary.work_emitted,
            duration_ms = summary.duration_ms,
            "keyframe finished"
        );
        Ok(summary)
    }
}

impl Keyframer {
    /// Schedules an adaptive producer's next keyframe from what `summary`
    /// found (`pacing::next`), records it for every replica and shows it.
    async fn pace(&self, p: &Producer, summary: &Summary) -> Result<Option<Pace>, KeyframeError> {
        let Some(cfg) = &p.adaptive else {
            return Ok(None);
        };
        let observed = match summary.state {
            RunState::Ok => {
                let previous = self
                    .store
                    .previous_pull_started(&p.name, summary.started_at_ms)
                    .await?;
                Observation::Compared {
                    drift: summary.drift(),
                    elapsed_secs: previous.map(|at| (summary.started_at_ms - at) as f64 / 1000.0),
                }
            }
            RunState::Guarded => Observation::Guarded,
            RunState::Failed => Observation::Failed,
            _ => return Ok(None),
        };
        let previous = self.store.pacing(&p.name).await?.map(|s| s.pace);
        let quota = p
            .snapshot_plan()
            .pace()
            .quota_wait()
            .map(|d| d.as_secs_f64());
        let pace = pacing::next(cfg, previous.as_ref(), observed, quota);
        let next_at = pacing::next_at(summary.scheduled_for, summary.started_at_ms, &pace);
        self.store.record_pacing(&p.name, &pace, next_at).await?;
        self.metrics.set_pacing(&p.name, &pace);
        info!(
            producer = %p.name,
            interval_secs = pace.interval_secs,
            drift_rate = pace.rate,
            reason = pace.reason.as_str(),
            "next keyframe paced"
        );
        Ok(Some(pace))
    }

    /// Shows an adaptive producer's stored pacing (at start, before its first run here).
    pub(crate) async fn show_pacing(&self, p: &Producer) -> Result<Option<Pacing>, StoreError> {
        let pacing = self.store.pacing(&p.name).await?;
        if let Some(s) = &pacing {
            self.metrics.set_pacing(&p.name, &s.pace);
        }
        Ok(pacing)
    }
}

/// Says what [`Store::ensure_layout`] rebuilt, if anything.
pub(crate) fn log_relayout(producer: &str, r: crate::store::Relayout) {
    if r.rebuilt() {
        info!(
            producer,
            rows = r.rows,
            buckets_renumbered = r.buckets,
            hashes_recomputed = r.hashes,
            "layout changed (bucket_bits or ignore): rows re-laid out and bucket digests rebuilt before comparing"
        );
    }
}

/// What [`Keyframer::compare`] found.
struct Compared {
    counts: RunCounts,
    /// Every drift, but a first sync's `missing` ones.
    drifts: Vec<Drift>,
    local_rows: u64,
    mismatched: Vec<u32>,
    first_sync: bool,
    /// Every drift (kept or not) by kind and cause.
    detected: BTreeMap<(DriftKind, Cause), u64>,
}

/// Newest deltas read per outcome to attribute drift: refused and pending
/// deltas are few; past this many, older ones are not consulted.
const EVIDENCE_DELTAS: i64 = 10_000;
/// Deltas read per page of evidence: each body may be up to the body limit.
const EVIDENCE_PAGE: i64 = 64;
/// Keys waiting for a fetch consulted to attribute drift.
const EVIDENCE_FETCHES: i64 = 100_000;

/// What the inbox says about a producer's keys, read once per keyframe.
#[derive(Debug, Default)]
struct InboxEvidence {
    /// Keys named by a delta committed and not applied yet (pending, or
    /// waiting for its fetch).
    waiting: HashSet<String>,
    /// Keys named by a refused delta, with when the newest arrived.
    refused: HashMap<String, i64>,
}

impl InboxEvidence {
    async fn read(store: &Store, p: &Producer) -> Result<Self, StoreError> {
        let mut out = Self::default();
        for f in store
            .pending_fetches(Some(&p.name), EVIDENCE_FETCHES)
            .await?
        {
            out.waiting.insert(f.key);
        }
        for outcome in [InboxOutcome::Pending, InboxOutcome::Rejected] {
            // A page of bodies in memory at a time (each up to the body limit).
            let (mut before, mut read) = (i64::MAX, 0);
            while read < EVIDENCE_DELTAS {
                let page = EVIDENCE_PAGE.min(EVIDENCE_DELTAS - read);
                let rows = store.newest_deltas(&p.name, outcome, before, page).await?;
                for row in &rows {
                    let keys = named_keys(p, row.channel, &row.body);
                    if outcome == InboxOutcome::Pending {
                        out.waiting.extend(keys);
                    } else {
                        for key in keys {
                            let at = out.refused.entry(key).or_insert(row.received_at);
                            *at = (*at).max(row.received_at);
                        }
                    }
                }
                let got = i64::try_from(rows.len()).unwrap_or(i64::MAX);
                read = read.saturating_add(got);
                match rows.last() {
                    Some(last) if got == page => before = last.id,
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    fn of(&self, key: &str) -> Evidence {
        Evidence {
            waiting: self.waiting.contains(key),
            refused_at: self.refused.get(key).copied(),
        }
    }
}

/// The records as the compare sees them.
fn remotes(records: &[fetch::RemoteRecord]) -> Vec<Remote<'_>> {
    records
        .iter()
        .map(|r| Remote {
            key: &r.key,
            bucket: r.bucket,
            hash: r.hash,
            version: r.version,
            doc: r.doc,
        })
        .collect()
}

/// The error of a snapshot's records or documents that cannot be read back
/// from their temp files (the error names which, and where).
fn unreadable(p: &Producer) -> impl Fn(fetch::PullError) -> KeyframeError + '_ {
    move |e| KeyframeError::Config {
        producer: p.name.clone(),
        reason: format!("cannot read back the pulled snapshot: {e}"),
    }
}

/// A drift as stored, with the producer's document read back from the spill file.
fn drift_row(p: &Producer, snapshot: &Snapshot, d: &Drift) -> Result<DriftRow, KeyframeError> {
    let doc = match d.remote {
        Some((at, _)) => Some(
            snapshot
                .doc_at(&d.key, at)
                .map_err(unreadable(p))?
                .to_string(),
        ),
        None => None,
    };
    Ok(DriftRow {
        key: d.key.clone(),
        kind: d.kind.as_str().to_string(),
        cause: d.cause.map(|c| c.as_str().to_string()),
        remote_hash: d.remote_hash,
        local_hash: d.local_hash,
        doc,
    })
}
