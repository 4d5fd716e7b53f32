//! Corrective work: the documented spec, emission from keyframe runs, and the workers that carry out `apply` and `http` items.
//!
//! Workers are level-triggered: an item says what the entity should be, not
//! what happened, so running it twice has the effect of running it once.
//! Every failure goes through [`Failure`], which decides between retry (with
//! exponential backoff and full jitter) and `dead`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::canonical::RecordHash;
use crate::config::{Action, Producer};
use crate::entity::{Change, EntityWrite, Source, WriteRule};
use crate::keyframe::compare::DriftKind;
use crate::keyframe::holder::Holder;
use crate::metrics::Metrics;
use crate::redact::{redact_url, request_error};
use crate::state::WorkState;
use crate::store::{now_ms, DriftRow, Emitted, NewWork, Store, StoreError, WorkRow};

/// The JSON spec of a work item (`work.spec`). Applications that take items
/// themselves (`action = "none"`) or receive them over HTTP read this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkSpec {
    /// The producer (from the config).
    pub producer: String,
    /// The entity's key.
    pub key: String,
    /// `missing` (producer has it, local doesn't), `extra` (local only) or `changed`.
    pub kind: String,
    /// Why the drift happened: `lost_delta`, `late_delta`, `rejected_delta`,
    /// `silent_change`, `deleted_upstream` or `created_upstream` (null for
    /// drift found before causes were kept).
    #[serde(default)]
    pub cause: Option<String>,
    /// blake3 of the producer's record (canonical JSON, hex); null for `extra`.
    pub(crate) expected_hash: Option<String>,
    /// blake3 of the local row the keyframe saw (hex); null for `missing`.
    pub local_hash: Option<String>,
    /// The keyframe run that found the drift.
    pub run_id: i64,
    /// `apply`, `http` or `none`.
    pub action: String,
    /// The producer's record; null for `extra` (the entity should not exist).
    pub record: Option<Value>,
    /// The record's version, when the producer has versions.
    pub version: Option<i64>,
}

impl WorkSpec {
    /// The idempotency key: the same drift to the same content always has the same key.
    pub(crate) fn idempotency_key(&self) -> String {
        let mut h = blake3::Hasher::new();
        for part in [
            self.producer.as_str(),
            self.key.as_str(),
            self.expected_hash.as_deref().unwrap_or("absent"),
        ] {
            h.update(part.as_bytes());
            h.update(&[0]);
        }
        h.finalize().to_hex()[..32].to_string()
    }
}

/// Emits one work item per drift of run `run_id`; returns the items written.
pub async fn emit_run(store: &Store, p: &Producer, run_id: i64) -> Result<u64, StoreError> {
    let pull_began = store
        .run(run_id)
        .await?
        .map(|r| r.started_at)
        .ok_or_else(|| StoreError::Invalid(format!("keyframe run {run_id} does not exist")))?;
    let mut after = String::new();
    let mut total = Emitted::default();
    loop {
        // Page by page, so a large drift never sits in memory whole.
        let page = store.drifts_page(run_id, &after, 1_000).await?;
        let Some(last) = page.last() else { break };
        after = last.key.clone();
        let items: Vec<NewWork> = page.into_iter().map(|d| new_work(p, run_id, d)).collect();
        let e = store
            .emit_work(&p.name, &items, p.work.max_attempts, pull_began)
            .await?;
        total.inserted += e.inserted;
        total.updated += e.updated;
        total.skipped_running += e.skipped_running;
        total.skipped_delivered += e.skipped_delivered;
    }
    // Every item now carries its document; the drift list need not too.
    store.release_drift_docs(run_id).await?;
    let closed = store
        .close_vanished_work(
            &p.name,
            run_id,
            &format!("drift gone at keyframe run {run_id}"),
        )
        .await?;
    debug!(producer = %p.name, run_id, inserted = total.inserted, updated = total.updated,
        skipped_running = total.skipped_running, skipped_delivered = total.skipped_delivered,
        closed, "work emitted");
    Ok(total.inserted + total.updated)
}

/// The work item of one drift: its documented spec and idempotency key.
fn new_work(p: &Producer, run_id: i64, d: DriftRow) -> NewWork {
    let record: Option<Value> = d.doc.as_deref().and_then(|s| serde_json::from_str(s).ok());
    let version = match (&p.snapshot.version, &record) {
        (Some(ptr), Some(doc)) => doc
            .pointer(ptr)
            .and_then(|v| crate::canonical::version_value(v).ok()),
        _ => None,
    };
    let spec = WorkSpec {
        producer: p.name.clone(),
        key: d.key.clone(),
        kind: d.kind.clone(),
        cause: d.cause.clone(),
        expected_hash: d.remote_hash.map(|h| h.to_hex()),
        local_hash: d.local_hash.map(|h| h.to_hex()),
        run_id,
        action: p.work.action.as_str().to_string(),
        record,
        version,
    };
    NewWork {
        key: d.key,
        action: spec.action.clone(),
        dedup_key: spec.idempotency_key(),
        spec: serde_json::to_string(&spec).expect("a spec always serializes"),
    }
}

/// Done items the mirror does not carry yet, read per round.
const MIRROR_BATCH: i64 = 200;

/// Writes into the mirror the record of every done item of `p` that the
/// mirror does not carry yet, whoever finished it (an `http` 2xx, an
/// application's worker through SQL, `driftd work done`), as `apply` does:
/// compare-and-set on the local row the keyframe saw. So every action
/// closes its drift, and the next keyframe finds none for that entity
/// unless the producer changed again. Returns the items handled.
pub(crate) async fn mirror_done(store: &Store, p: &Producer) -> Result<usize, StoreError> {
    let mut handled = 0;
    loop {
        let items = store.done_unmirrored(&p.name, MIRROR_BATCH).await?;
        if items.is_empty() {
            return Ok(handled);
        }
        let hasher = p.hasher();
        let mut writes = Vec::with_capacity(items.len());
        let mut nothing = Vec::new();
        for item in &items {
            let write = serde_json::from_str::<WorkSpec>(&item.spec)
                .map_err(|e| Failure::Intransient(format!("invalid work spec: {e}")))
                .and_then(|spec| correction(&spec));
            match write {
                Ok(w) => writes.push((item.id, w)),
                Err(Failure::Intransient(e) | Failure::Transient(e)) => {
                    warn!(producer = %p.name, work_id = item.id, error = %e,
                        "done work item carries no usable record; the mirror keeps its row");
                    nothing.push(item.id);
                }
            }
        }
        let outcomes = store
            .mirror_work(&p.name, p.bucket_bits, hasher, &writes, &nothing)
            .await?;
        debug!(producer = %p.name, items = items.len(),
            applied = outcomes.iter().filter(|(_, o)| *o == crate::entity::WriteOutcome::Applied).count(),
            "done work written into the mirror");
        handled += items.len();
        if i64::try_from(items.len()).unwrap_or(i64::MAX) < MIRROR_BATCH {
            return Ok(handled);
        }
    }
}

/// Marks item `id` done by operator or application request (`driftd work
/// done`, `POST /v1/work/{id}/done`) and writes its record into the mirror.
pub(crate) async fn finish_by_hand(
    store: &Store,
    config: &crate::config::Config,
    id: i64,
) -> Result<WorkRow, StoreError> {
    let item = store
        .work_item(id)
        .await?
        .ok_or_else(|| StoreError::Invalid(format!("work item {id} does not exist")))?;
    let p = config.producer(&item.producer).ok_or_else(|| {
        StoreError::Invalid(format!(
            "work item {id} belongs to producer {:?}, which is not configured",
            item.producer
        ))
    })?;
    let done = store.set_work_state(id, WorkState::Done).await?;
    mirror_done(store, p).await?;
    Ok(done)
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Timeouts, connection errors, 429, 5xx, a busy database.
    Transient(String),
    /// Other 4xx, an invalid spec: retrying cannot help.
    Intransient(String),
}

/// The single retry policy: what state and `run_at` follow a failed attempt.
pub(crate) fn after_failure(
    failure: &Failure,
    attempts: i64,
    max_attempts: i64,
    base_ms: u64,
    max_ms: u64,
    now: i64,
    jitter: f64,
) -> (WorkState, i64) {
    match failure {
        Failure::Intransient(_) => (WorkState::Dead, now),
        Failure::Transient(_) if attempts >= max_attempts => (WorkState::Dead, now),
        Failure::Transient(_) => {
            let exp = base_ms.saturating_mul(1u64 << (attempts.clamp(1, 30) - 1) as u32);
            let ceiling = exp.min(max_ms);
            // Full jitter: anywhere between 0 and the ceiling, at least 1 ms.
            let delay = ((ceiling as f64) * jitter.clamp(0.0, 1.0)).max(1.0) as i64;
            (WorkState::Pending, now + delay)
        }
    }
}

/// Carries out one `http` item. Returns a note for the log on success.
async fn perform(
    item: &WorkRow,
    p: &Producer,
    client: &reqwest::Client,
) -> Result<&'static str, Failure> {
    let spec: WorkSpec = serde_json::from_str(&item.spec)
        .map_err(|e| Failure::Intransient(format!("invalid work spec: {e}")))?;
    match p.work.action {
        Action::Http => post(&spec, item, p, client).await,
        Action::Apply | Action::None => Err(Failure::Intransient(format!(
            "action {:?} is not carried out one item at a time",
            p.work.action.as_str()
        ))),
    }
}

/// The entity write that carries out an `apply` item: the producer's record
/// (or a deletion for `extra`), conditional on the row the keyframe saw.
fn correction(spec: &WorkSpec) -> Result<EntityWrite, Failure> {
    let kind = DriftKind::parse(&spec.kind)
        .ok_or_else(|| Failure::Intransient(format!("unknown drift kind {:?}", spec.kind)))?;
    let seen = match &spec.local_hash {
        None => None,
        Some(hex) => Some(
            hex::decode(hex)
                .ok()
                .and_then(|b| RecordHash::from_slice(&b))
                .ok_or_else(|| Failure::Intransient(format!("invalid local_hash {hex:?}")))?,
        ),
    };
    let change = match (kind, &spec.record) {
        (DriftKind::Extra, _) => Change::Delete,
        (_, Some(record)) => Change::Replace(record.clone()),
        (_, None) => {
            return Err(Failure::Intransient(format!(
                "{} drift without a record",
                spec.kind
            )))
        }
    };
    Ok(EntityWrite {
        key: spec.key.clone(),
        change,
        version: spec.version,
        source: Source::Keyframe,
        rule: WriteRule::Correct { seen },
    })
}

async fn post(
    spec: &WorkSpec,
    item: &WorkRow,
    p: &Producer,
    client: &reqwest::Client,
) -> Result<&'static str, Failure> {
    let url = p
        .work
        .url
        .as_deref()
        .ok_or_else(|| Failure::Intransient("action \"http\" without work.url".into()))?;
    let body = serde_json::to_vec(spec).expect("a spec always serializes");
    let mut req = client
        .post(url)
        .timeout(Duration::from_secs(p.work.timeout_secs))
        .header("content-type", "application/json")
        .header("idempotency-key", &item.dedup_key)
        .header("x-driftd-work-id", item.id.to_string());
    if let Some(secret) = &p.work.secret {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes())
            .expect("HMAC takes any key length");
        mac.update(&body);
        req = req.header(
            "x-driftd-signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        );
    }
    let shown = redact_url(url);
    let resp = req.body(body).send().await.map_err(|e| {
        let what = if e.is_timeout() {
            "timed out"
        } else {
            "failed"
        };
        let message = format!("POST {shown} {what}: {}", request_error(e, url));
        Failure::Transient(message)
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok("delivered");
    }
    let text = resp.text().await.unwrap_or_default();
    let excerpt: String = text.chars().take(300).collect();
    let message = format!("POST {shown} answered {status}: {excerpt}");
    if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
        Err(Failure::Transient(message))
    } else {
        Err(Failure::Intransient(message))
    }
}

/// `apply` items claimed and committed together per round.
const APPLY_BATCH: u32 = 200;

/// How often an idle worker looks for due items (and reclaims expired
/// leases) when no wake-up came.
const POLL: Duration = Duration::from_millis(500);

/// The lease of one claim, in milliseconds.
fn lease_ms(p: &Producer) -> i64 {
    i64::try_from(p.work.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// How often a held item's lease is renewed: three times per lease, so one
/// slow or failed renewal still leaves time for the next.
fn renew_every(p: &Producer) -> Duration {
    Duration::from_millis((lease_ms(p) / 3).max(1) as u64)
}

/// The in-process workers for every producer whose action is `apply` or `http`.
#[derive(Clone, Debug)]
pub struct Workers {
    pub store: Store,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    pub wake: std::sync::Arc<Notify>,
    /// Written into the leases of the items this worker holds: the
    /// process's identity (`keyframe::holder::Holder`) lets another process
    /// on the same machine take them back at once if this one is killed.
    pub id: String,
}

/// The `http` calls in flight for one producer, each with the claim it carries out.
#[derive(Default)]
struct Calls {
    set: tokio::task::JoinSet<()>,
    claims: HashMap<tokio::task::Id, WorkRow>,
}

impl Calls {
    fn len(&self) -> usize {
        self.set.len()
    }

    fn start(&mut self, workers: &Workers, p: &Producer, item: WorkRow) {
        let span =
            tracing::info_span!("work", producer = %p.name, work_id = item.id, key = %item.key);
        let (this, p, claim) = (workers.clone(), p.clone(), item.clone());
        let call = self
            .set
            .spawn(async move { this.carry_out(&p, claim).await }.instrument(span));
        self.claims.insert(call.id(), item);
    }

    /// Waits for one call to end; returns its claim and whether it was
    /// aborted before recording an outcome, or `None` when none is in flight.
    async fn next(&mut self) -> Option<(WorkRow, bool)> {
        loop {
            let (id, aborted) = match self.set.join_next_with_id().await? {
                Ok((id, ())) => (id, false),
                Err(e) => {
                    if e.is_panic() {
                        warn!(error = %e, "work item: the call panicked; its lease will expire and it will be retried");
                    }
                    (e.id(), e.is_cancelled())
                }
            };
            if let Some(claim) = self.claims.remove(&id) {
                return Some((claim, aborted));
            }
        }
    }

    /// Stops every call in flight and returns each claim without an outcome
    /// to the queue at once, so no item waits for its lease to expire.
    async fn abandon(mut self, workers: &Workers) {
        self.set.abort_all();
        while let Some((claim, aborted)) = self.next().await {
            if !aborted {
                continue;
            }
            let note = format!(
                "interrupted by shutdown during its call ({}); it is sent again with the same idempotency key",
                workers.id
            );
            match workers.store.release_work(&claim, &workers.id, &note).await {
                Ok(_) => debug!(work_id = claim.id, "work item released at shutdown"),
                Err(e) => warn!(work_id = claim.id, error = %e,
                    "work item: could not release it at shutdown; its lease will expire and it will be retried"),
            }
        }
    }
}

impl Workers {
    /// Runs one producer's worker loop until `cancel`.
    pub async fn run_producer(&self, p: Producer, cancel: CancellationToken) {
        match p.work.action {
            Action::None => self.run_none(&p, &cancel).await,
            Action::Apply => self.run_apply(&p, &cancel).await,
            Action::Http => self.run_http(&p, &cancel).await,
        }
    }

    /// `none`: the application's own workers carry items out; driftd writes
    /// the record of every item they finish into the mirror.
    async fn run_none(&self, p: &Producer, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            if let Err(e) = mirror_done(&self.store, p).await {
                warn!(producer = %p.name, error = %e, "work loop: database error; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// `apply`: reclaim expired leases, claim a batch of due items, commit
    /// it, and wait for a wake-up or the poll interval when nothing was due.
    async fn run_apply(&self, p: &Producer, cancel: &CancellationToken) {
        while !cancel.is_cancelled() {
            let claimed = match self.tick(p).await {
                Ok(n) => n,
                Err(e) => {
                    warn!(producer = %p.name, error = %e, "work loop: database error; retrying");
                    0
                }
            };
            if claimed == 0 {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// `http`: a pool that keeps `concurrency` calls in flight. Whenever a
    /// call ends its slot is refilled at once, so one slow call never holds
    /// back the others. On `cancel`, calls in flight are stopped and their
    /// items returned to the queue.
    async fn run_http(&self, p: &Producer, cancel: &CancellationToken) {
        let mut calls = Calls::default();
        let mut next_reclaim = Instant::now();
        while !cancel.is_cancelled() {
            if Instant::now() >= next_reclaim {
                next_reclaim = Instant::now() + POLL;
                if let Err(e) = self.reclaim().await {
                    warn!(producer = %p.name, error = %e, "work loop: database error; retrying");
                }
                if let Err(e) = mirror_done(&self.store, p).await {
                    warn!(producer = %p.name, error = %e, "work loop: database error; retrying");
                }
            }
            if let Err(e) = self.refill(p, &mut calls).await {
                warn!(producer = %p.name, error = %e, "work loop: database error; retrying");
            }
            let busy = calls.len() > 0;
            let room = calls.len() < p.work.concurrency as usize;
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = calls.next(), if busy => {}
                _ = self.wake.notified(), if room => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        calls.abandon(self).await;
    }

    /// Returns to the queue the items whose lease expired, and at once those
    /// of a worker whose process stopped without releasing them (SIGKILL, a
    /// crash), when this process can tell (the same process table, see
    /// `keyframe/holder.rs`); elsewhere their leases' expiry decides.
    async fn reclaim(&self) -> Result<(), StoreError> {
        let reclaimed = self.store.reclaim_expired_work(now_ms()).await?;
        if reclaimed > 0 {
            info!(
                reclaimed,
                "work items with expired leases returned to the queue"
            );
        }
        let Some(me) = Holder::parse(&self.id) else {
            return Ok(());
        };
        for holder in self.store.work_holders().await? {
            if me.sees_stopped_id(&holder) {
                let released = self.store.release_work_of(&holder, now_ms()).await?;
                info!(
                    released,
                    holder = %holder,
                    "work items of a worker that stopped without releasing them returned to the queue"
                );
            }
        }
        Ok(())
    }

    /// Claims due `http` items into the free slots of `calls` and starts them.
    async fn refill(&self, p: &Producer, calls: &mut Calls) -> Result<usize, StoreError> {
        let room = (p.work.concurrency as usize).saturating_sub(calls.len());
        if room == 0 {
            return Ok(0);
        }
        let items = self
            .store
            .claim_work(&p.name, &self.id, room as u32, lease_ms(p), now_ms())
            .await?;
        let n = items.len();
        for item in items {
            calls.start(self, p, item);
        }
        Ok(n)
    }

    /// One round, for callers that drive the queue step by step: reclaim
    /// expired leases, claim what is due (an `apply` batch, or up to
    /// `concurrency` `http` items), carry it out and wait for every outcome.
    /// Returns how many items were claimed.
    pub async fn tick(&self, p: &Producer) -> Result<usize, StoreError> {
        self.reclaim().await?;
        mirror_done(&self.store, p).await?;
        if p.work.action == Action::Apply {
            let items = self
                .store
                .claim_work(&p.name, &self.id, APPLY_BATCH, lease_ms(p), now_ms())
                .await?;
            let n = items.len();
            if n > 0 {
                self.apply_batch(p, items).await?;
            }
            return Ok(n);
        }
        let mut calls = Calls::default();
        let n = self.refill(p, &mut calls).await?;
        while calls.next().await.is_some() {}
        Ok(n)
    }

    /// Carries out claimed `apply` items together: every correction and every
    /// item's completion commit in one transaction, so an item is done exactly
    /// when its effect is in place. An invalid spec is dead on its own; a
    /// database error returns the batch to the queue with backoff.
    async fn apply_batch(&self, p: &Producer, items: Vec<WorkRow>) -> Result<(), StoreError> {
        let started = Instant::now();
        let now = now_ms();
        let mut batch = Vec::with_capacity(items.len());
        for item in &items {
            let write = serde_json::from_str::<WorkSpec>(&item.spec)
                .map_err(|e| Failure::Intransient(format!("invalid work spec: {e}")))
                .and_then(|spec| correction(&spec));
            match write {
                Ok(w) => batch.push((item.id, w)),
                Err(f) => self.record_failure(p, item, &f, now).await?,
            }
        }
        let hasher = p.hasher();
        match self
            .store
            .apply_work(&p.name, p.bucket_bits, hasher, &self.id, &batch)
            .await
        {
            Ok(outcomes) => {
                let per_item = started.elapsed().as_secs_f64() / outcomes.len().max(1) as f64;
                for (id, outcome) in &outcomes {
                    debug!(work_id = id, ?outcome, "apply item done");
                    self.metrics
                        .work_duration
                        .with_label_values(&[&p.name, "apply"])
                        .observe(per_item);
                }
                self.metrics
                    .work_completed
                    .with_label_values(&[&p.name, "apply", "done"])
                    .inc_by(outcomes.len() as u64);
                Ok(())
            }
            Err(e) => {
                let f = Failure::Transient(e.to_string());
                for item in items
                    .iter()
                    .filter(|i| batch.iter().any(|(id, _)| *id == i.id))
                {
                    self.record_failure(p, item, &f, now).await?;
                }
                Ok(())
            }
        }
    }

    async fn record_failure(
        &self,
        p: &Producer,
        item: &WorkRow,
        f: &Failure,
        now: i64,
    ) -> Result<(), StoreError> {
        let action = p.work.action.as_str();
        let (next, run_at) = after_failure(
            f,
            item.attempts,
            item.max_attempts,
            p.work.backoff_base_ms,
            p.work.backoff_max_ms,
            now,
            rand::random::<f64>(),
        );
        let msg = match f {
            Failure::Transient(m) | Failure::Intransient(m) => m.as_str(),
        };
        if next == WorkState::Dead {
            warn!(work_id = item.id, key = %item.key, error = %msg, attempts = item.attempts, "work item dead");
        }
        let outcome = if next == WorkState::Dead {
            "dead"
        } else {
            "retry"
        };
        if self
            .store
            .finish_work(item.id, &self.id, next, run_at, Some(msg))
            .await?
        {
            self.metrics
                .work_completed
                .with_label_values(&[&p.name, action, outcome])
                .inc();
        }
        Ok(())
    }

    /// Carries out one `http` item, renewing its lease while the call runs,
    /// and records the outcome. Errors are logged here, where they end.
    async fn carry_out(&self, p: &Producer, item: WorkRow) {
        let action = p.work.action.as_str();
        let started = Instant::now();
        let result = tokio::select! {
            r = perform(&item, p, &self.client) => r,
            () = self.keep_leased(p, &item) => unreachable!("lease renewal runs until the call ends"),
        };
        self.metrics
            .work_duration
            .with_label_values(&[&p.name, action])
            .observe(started.elapsed().as_secs_f64());
        let recorded = match result {
            Ok(note) => match self.store.complete_work(&item, &self.id).await {
                Ok(true) => {
                    debug!(note, "work item done");
                    self.metrics
                        .work_completed
                        .with_label_values(&[&p.name, action, "done"])
                        .inc();
                    // The application holds the record now: so does the mirror.
                    mirror_done(&self.store, p).await.map(|_| ())
                }
                Ok(false) => {
                    warn!("work item delivered, but meanwhile it was claimed again, changed or closed; left as it is");
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Err(f) => self.record_failure(p, &item, &f, now_ms()).await,
        };
        if let Err(e) = recorded {
            warn!(error = %e, "work item: could not record the outcome; its lease will expire and it will be retried");
        }
    }

    /// Renews the lease of `item` every third of a lease until dropped (the
    /// call it guards has ended). A refused renewal means the claim is gone;
    /// the call still ends and [`Store::complete_work`] decides what counts.
    async fn keep_leased(&self, p: &Producer, item: &WorkRow) {
        let every = renew_every(p);
        let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            renew.tick().await;
            match self
                .store
                .renew_work_lease(item, &self.id, lease_ms(p), now_ms())
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    warn!("work item lease lost while its call runs (renewed too late?); the call's outcome is recorded only if nobody took the item since");
                    return std::future::pending().await;
                }
                Err(e) => warn!(error = %e, "work item: could not renew its lease; trying again"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_table() {
        let t = |s: &str| Failure::Transient(s.into());
        let cases = [
            // (failure, attempts, max, jitter, state, delay_ms)
            (t("503"), 1, 5, 1.0, WorkState::Pending, 1000),
            (t("503"), 2, 5, 1.0, WorkState::Pending, 2000),
            (t("503"), 4, 5, 0.5, WorkState::Pending, 4000),
            (t("503"), 5, 5, 1.0, WorkState::Dead, 0),
            (t("503"), 20, 50, 1.0, WorkState::Pending, 60_000),
            (t("503"), 1, 5, 0.0, WorkState::Pending, 1),
            (
                Failure::Intransient("400".into()),
                1,
                5,
                1.0,
                WorkState::Dead,
                0,
            ),
        ];
        for (f, attempts, max, jitter, state, delay) in cases {
            let (s, at) = after_failure(&f, attempts, max, 1000, 60_000, 10_000, jitter);
            assert_eq!(
                (s, at - 10_000),
                (state, delay),
                "{f:?} attempt {attempts}/{max}"
            );
        }
    }

    #[test]
    fn idempotency_key_depends_on_producer_key_and_expected_content() {
        let spec = WorkSpec {
            producer: "p".into(),
            key: "k".into(),
            kind: "changed".into(),
            cause: Some("lost_delta".into()),
            expected_hash: Some("aa".into()),
            local_hash: Some("bb".into()),
            run_id: 1,
            action: "http".into(),
            record: None,
            version: None,
        };
        let same_drift_later = WorkSpec {
            run_id: 9,
            local_hash: Some("cc".into()),
            ..spec.clone()
        };
        assert_eq!(spec.idempotency_key(), same_drift_later.idempotency_key());
        let other_content = WorkSpec {
            expected_hash: Some("ab".into()),
            ..spec.clone()
        };
        assert_ne!(spec.idempotency_key(), other_content.idempotency_key());
        assert_eq!(spec.idempotency_key().len(), 32);
    }
}
