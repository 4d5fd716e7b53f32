//! The path every delta takes after it is received: plan, commit to the inbox and apply in one transaction (group commit), count; the pending-inbox sweeper; replay.
//!
//! **Group commit.** Concurrent requests queue their deltas; whoever gets a
//! turn takes the whole queue (up to [`MAX_BATCH`]) and commits it in one
//! transaction that inserts, applies and records every delta, then answers
//! each waiting request through its oneshot. One fsync serves the batch.
//! On PostgreSQL [`TURNS_POSTGRES`] batches are in flight at once: each takes
//! its entity locks after the batch before it took theirs
//! ([`crate::store::LockOrder`]), so writes of one key still apply in arrival
//! order while the batches' writes and commits overlap. SQLite has one turn.
//! If applying fails, the batch is committed again as `pending` rows alone,
//! and the [`Pipeline::sweep`] task applies them in id order, so a delta that
//! was acknowledged is never lost, even by a crash between the two steps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::apply::{email_plan, webhook_plan, Plan};
use crate::config::{Config, Producer, SignatureScheme, WebhookConfig};
use crate::entity::Source;
use crate::metrics::Metrics;
use crate::store::{
    Backend, Channel, InboxEffect, InboxEntry, InboxFilter, InboxOutcome, InboxRow, LockOrder,
    SettleMode, Settled, Store, StoreError,
};

/// Most deltas committed in one transaction.
pub(crate) const MAX_BATCH: usize = 128;
/// Batches in flight at once on PostgreSQL.
pub(crate) const TURNS_POSTGRES: usize = 4;
/// How often the sweeper looks for `pending` rows.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pending rows settled per sweep.
const SWEEP_BATCH: i64 = 100;
/// Failed attempts (other than transient ones) before a pending row is rejected.
const SWEEP_ATTEMPTS: u32 = 5;

/// The effect of a plan: writes with `p`'s hasher and buckets (a tie asks
/// for a fetch when `p` has `[producer.fetch]`), or records to fetch.
pub(crate) fn effect(p: &Producer, plan: Plan) -> InboxEffect {
    let settle = |outcome, error| InboxEffect::Settle { outcome, error };
    match plan {
        Plan::Writes(writes) => InboxEffect::Write {
            bucket_bits: p.bucket_bits,
            hasher: p.hasher().clone(),
            writes,
            ask_ties: p.fetch.is_some(),
        },
        Plan::Fetch(_) if p.fetch.is_none() => settle(
            InboxOutcome::Rejected,
            format!(
                "the delta asks for a fetch, but producer {:?} has no [producer.fetch]",
                p.name
            ),
        ),
        Plan::Fetch(keys) => InboxEffect::Fetch { keys },
        Plan::Rejected(r) => settle(InboxOutcome::Rejected, r),
        Plan::Unmatched(r) => settle(InboxOutcome::Unmatched, r),
    }
}

/// The plan of a webhook body under `p`. With `[producer.fetch]`, a body
/// with a versionless record whose delivery id the signature does not cover
/// is fetched instead of applied: a replay of an old body under a new id
/// would otherwise be applied again, over newer content.
pub(crate) fn webhook_plan_of(
    p: &Producer,
    w: &WebhookConfig,
    body: &[u8],
    source: Source,
) -> Plan {
    match webhook_plan(w, body, source) {
        Plan::Writes(writes)
            if p.fetch.is_some()
                && !delivery_id_signed(w)
                && writes.iter().any(|w| w.version.is_none()) =>
        {
            let mut keys: Vec<String> = writes.into_iter().map(|w| w.key).collect();
            keys.sort_unstable();
            keys.dedup();
            Plan::Fetch(keys)
        }
        plan => plan,
    }
}

/// Whether the delivery id that deduplicates `w`'s webhooks is covered by
/// the signature: read from the (signed) body, or Standard Webhooks'
/// `webhook-id`, which is part of the signed content.
fn delivery_id_signed(w: &WebhookConfig) -> bool {
    match (&w.dedup_header, &w.dedup_pointer) {
        (Some(h), _) => {
            w.scheme == SignatureScheme::StandardWebhooks && h.eq_ignore_ascii_case("webhook-id")
        }
        (None, Some(_)) => true,
        (None, None) => w.scheme == SignatureScheme::StandardWebhooks,
    }
}

/// The plan of a raw email under `p`'s rules, and its `Message-ID`.
pub(crate) fn email_plan_of(p: &Producer, raw: &[u8], source: Source) -> (Plan, Option<String>) {
    match p.email_rules() {
        Some(rules) => email_plan(rules, raw, source),
        None => (
            Plan::Rejected(format!("producer {:?} has no email config", p.name)),
            None,
        ),
    }
}

/// The plan of a stored delta's body, read again (sweeper, replay).
fn plan_of(p: &Producer, channel: Channel, body: &[u8], source: Source) -> Plan {
    match channel {
        Channel::Webhook => match &p.webhook {
            Some(w) => webhook_plan_of(p, w, body, source),
            None => Plan::Rejected(format!("producer {:?} has no webhook config", p.name)),
        },
        Channel::Email => email_plan_of(p, body, source).0,
    }
}

/// The keys a stored delta names: those its plan writes or fetches, else
/// (a refused body) those whose key can still be read.
pub(crate) fn named_keys(p: &Producer, channel: Channel, body: &[u8]) -> Vec<String> {
    match plan_of(p, channel, body, Source::Replay) {
        Plan::Writes(writes) => writes.into_iter().map(|w| w.key).collect(),
        Plan::Fetch(keys) => keys,
        Plan::Rejected(_) | Plan::Unmatched(_) => match (channel, &p.webhook) {
            (Channel::Webhook, Some(w)) => super::apply::keys_named(w, body),
            _ => Vec::new(),
        },
    }
}

/// Every configured producer, compiled.
#[derive(Debug)]
pub struct Producers {
    by_name: HashMap<String, Producer>,
}

impl Producers {
    pub fn new(config: &Config) -> Self {
        Self {
            by_name: config
                .producers
                .iter()
                .map(|p| (p.name.clone(), p.clone()))
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Producer> {
        self.by_name.get(name)
    }

    /// The effect of a stored row, planned again from its body.
    pub(crate) fn effect_of(&self, row: &InboxRow, source: Source) -> InboxEffect {
        match self.get(&row.producer) {
            Some(p) => effect(p, plan_of(p, row.channel, &row.body, source)),
            None => InboxEffect::Settle {
                outcome: InboxOutcome::Rejected,
                error: format!("producer {:?} is not configured", row.producer),
            },
        }
    }
}

/// The inbox could not take a delta; nothing was acknowledged.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the inbox is unavailable")]
pub(crate) struct Unavailable;

type Reply = oneshot::Sender<Result<Settled, Unavailable>>;

/// The queue of deltas waiting for the next group commit.
struct GroupCommit {
    queue: Mutex<Queue>,
    /// A permit is held by each task committing a batch; tokio's semaphore is fair (FIFO).
    turns: Arc<tokio::sync::Semaphore>,
}

#[derive(Default)]
struct Queue {
    deltas: VecDeque<((InboxEntry, InboxEffect), Reply)>,
    /// Fires when the newest batch taken has its entity locks.
    locked: Option<oneshot::Receiver<()>>,
}

/// Commits deltas and counts their outcomes; cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    pub store: Store,
    pub metrics: Metrics,
    pub producers: Arc<Producers>,
    group: Arc<GroupCommit>,
    /// Where batches are committed: `App::run`'s tracker, so shutdown waits for them.
    tasks: TaskTracker,
    /// Notified after a commit that asked for a record to be fetched (a
    /// thin delta, a version tie): the fetch loop waits on it.
    pub fetch_asked: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl Pipeline {
    pub fn new(store: Store, metrics: Metrics, config: &Config, tasks: TaskTracker) -> Self {
        Self {
            metrics,
            producers: Arc::new(Producers::new(config)),
            group: Arc::new(GroupCommit {
                queue: Mutex::default(),
                turns: Arc::new(tokio::sync::Semaphore::new(match store.backend() {
                    Backend::Sqlite => 1,
                    Backend::Postgres => TURNS_POSTGRES,
                })),
            }),
            tasks,
            store,
            fetch_asked: Arc::default(),
        }
    }

    /// Commits one delta together with the other requests waiting at the same
    /// time. Returns only after the delta is committed (or failed).
    ///
    /// The batch is committed and answered by a task of its own, which the
    /// request holding the turn only awaits: a client that hangs up (its
    /// request future dropped) cancels no commit, and the batch's other
    /// requests still get their answers. Its own delta is committed too,
    /// since its body was received in full.
    pub(crate) async fn submit(
        &self,
        entry: InboxEntry,
        effect: InboxEffect,
    ) -> Result<Settled, Unavailable> {
        let (reply, mut answer) = oneshot::channel();
        self.lock_queue().deltas.push_back(((entry, effect), reply));
        let answered = |answer: &mut oneshot::Receiver<_>| match answer.try_recv() {
            Ok(result) => Some(result),
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(Unavailable)),
            Err(oneshot::error::TryRecvError::Empty) => None,
        };
        loop {
            if let Some(result) = answered(&mut answer) {
                return result;
            }
            let Ok(turn) = self.group.turns.clone().acquire_owned().await else {
                return Err(Unavailable);
            };
            // The previous turn may have committed this delta.
            if let Some(result) = answered(&mut answer) {
                return result;
            }
            let (batch, order) = {
                let mut q = self.lock_queue();
                let n = q.deltas.len().min(MAX_BATCH);
                let batch: Vec<_> = q.deltas.drain(..n).collect();
                let (then, locked) = oneshot::channel();
                let after = if batch.is_empty() {
                    None
                } else {
                    q.locked.replace(locked)
                };
                (batch, LockOrder { after, then })
            };
            if batch.is_empty() {
                // Unreachable while this delta is unanswered; never spin.
                drop(turn);
                return answer.await.unwrap_or(Err(Unavailable));
            }
            let this = self.clone();
            let committed = self.tasks.spawn(async move {
                // The turn passes on only when the batch is answered.
                let _turn = turn;
                this.commit_and_answer(batch, order).await;
            });
            // A panic drops the replies: their requests get `Unavailable`.
            let _ = committed.await;
        }
    }

    /// Commits a batch taken from the queue and answers each of its requests.
    async fn commit_and_answer(
        &self,
        batch: Vec<((InboxEntry, InboxEffect), Reply)>,
        order: LockOrder,
    ) {
        let (items, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match self.commit_in_order(items, Some(order)).await {
            Ok(settled) => {
                for (reply, s) in replies.into_iter().zip(settled) {
                    let _ = reply.send(Ok(s));
                }
            }
            Err(_) => {
                for reply in replies {
                    let _ = reply.send(Err(Unavailable));
                }
            }
        }
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding this lock cannot leave the queue half-changed.
        self.group.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Commits a batch in one transaction, applying it; if applying fails,
    /// commits it as `pending` for the sweeper. Counts every settled outcome.
    /// Results are in the order of `items`.
    pub async fn commit(
        &self,
        items: Vec<(InboxEntry, InboxEffect)>,
    ) -> Result<Vec<Settled>, StoreError> {
        self.commit_in_order(items, None).await
    }

    /// [`Pipeline::commit`] for a batch of the group commit, placed by `order`.
    async fn commit_in_order(
        &self,
        items: Vec<(InboxEntry, InboxEffect)>,
        lock_order: Option<LockOrder>,
    ) -> Result<Vec<Settled>, StoreError> {
        // Producers in one order, so batches of replicas lock them alike.
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|a, b| items[*a].0.producer.cmp(&items[*b].0.producer));
        let mut slots: Vec<Option<(InboxEntry, InboxEffect)>> =
            items.into_iter().map(Some).collect();
        let sorted: Vec<(InboxEntry, InboxEffect)> = order
            .iter()
            .map(|i| slots[*i].take().expect("each index once"))
            .collect();
        let settled = match self.store.ingest_in_order(&sorted, lock_order).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, deltas = sorted.len(),
                    "applying deltas failed; committing them as pending for the sweeper");
                let entries: Vec<InboxEntry> = sorted.iter().map(|(e, _)| e.clone()).collect();
                self.store.insert_deltas(&entries).await.map_err(|e| {
                    warn!(error = %e, deltas = entries.len(), "cannot commit deltas to the inbox");
                    e
                })?
            }
        };
        for ((entry, _), s) in sorted.iter().zip(&settled) {
            self.count(&entry.producer, entry.channel, s.outcome);
        }
        if settled
            .iter()
            .any(|s| matches!(s.outcome, InboxOutcome::Fetching | InboxOutcome::Tie))
        {
            self.fetch_asked.notify_one();
        }
        let mut out: Vec<Option<Settled>> = vec![None; settled.len()];
        for (i, s) in order.into_iter().zip(settled) {
            out[i] = Some(s);
        }
        Ok(out
            .into_iter()
            .map(|s| s.expect("each slot once"))
            .collect())
    }

    /// Counts a settled delta in `driftd_deltas_total` (pending ones when
    /// they settle, fetching ones when their record is fetched).
    fn count(&self, producer: &str, channel: Channel, outcome: InboxOutcome) {
        if !matches!(outcome, InboxOutcome::Pending | InboxOutcome::Fetching) {
            self.metrics
                .deltas
                .with_label_values(&[producer, channel.as_str(), outcome.as_str()])
                .inc();
        }
    }

    /// Applies `pending` rows in id order, every second, until `cancel`.
    pub(crate) async fn sweep(self, cancel: CancellationToken) {
        let mut failures: HashMap<i64, u32> = HashMap::new();
        loop {
            if let Err(e) = self.sweep_once(&mut failures, &cancel).await {
                warn!(error = %e, "cannot apply pending deltas; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    /// One round of the sweeper; returns the rows settled.
    pub(crate) async fn sweep_once(
        &self,
        failures: &mut HashMap<i64, u32>,
        cancel: &CancellationToken,
    ) -> Result<usize, StoreError> {
        let rows = self.store.pending_deltas(SWEEP_BATCH).await?;
        let mut settled = 0;
        for row in rows {
            if cancel.is_cancelled() {
                break;
            }
            let source = match row.channel {
                Channel::Webhook => Source::Webhook,
                Channel::Email => Source::Email,
            };
            let effect = self.producers.effect_of(&row, source);
            let result = match self
                .store
                .settle_delta(row.id, &effect, SettleMode::Pending)
                .await
            {
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    let n = failures.entry(row.id).or_default();
                    *n += 1;
                    warn!(inbox_id = row.id, producer = %row.producer, attempt = *n, error = %e,
                        "cannot apply a pending delta");
                    if *n < SWEEP_ATTEMPTS {
                        continue;
                    }
                    failures.remove(&row.id);
                    let give_up = InboxEffect::Settle {
                        outcome: InboxOutcome::Rejected,
                        error: format!("could not be applied in {SWEEP_ATTEMPTS} attempts: {e}"),
                    };
                    self.store
                        .settle_delta(row.id, &give_up, SettleMode::Pending)
                        .await?
                }
                Ok(s) => s,
            };
            if let Some(s) = result {
                failures.remove(&row.id);
                self.count(&row.producer, row.channel, s.outcome);
                settled += 1;
            }
        }
        if settled > 0 {
            info!(settled, "applied pending deltas");
        }
        Ok(settled)
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayReport {
    /// Rows replayed.
    pub rows: u64,
    /// Rows by the outcome of this replay (duplicates are not applied again).
    pub outcomes: BTreeMap<String, u64>,
    /// Rows whose replay changed an entity.
    pub changed: u64,
}

/// Re-applies the stored deltas matching `filter` in id order through the
/// same apply path (with source `replay`). Idempotent: replaying applied
/// deltas again finds them `stale` or unchanged.
pub async fn replay(
    store: &Store,
    config: &Config,
    filter: &InboxFilter,
) -> Result<ReplayReport, StoreError> {
    let producers = Producers::new(config);
    let mut report = ReplayReport::default();
    let mut after = 0;
    loop {
        let rows = store.inbox_page(filter, after, 200).await?;
        let Some(last) = rows.last() else { break };
        after = last.id;
        for row in rows {
            let effect = producers.effect_of(&row, Source::Replay);
            let Some(s) = store
                .settle_delta(row.id, &effect, SettleMode::Replay)
                .await?
            else {
                continue;
            };
            report.rows += 1;
            report.changed += u64::from(s.changed);
            *report
                .outcomes
                .entry(s.outcome.as_str().to_string())
                .or_default() += 1;
        }
    }
    Ok(report)
}
