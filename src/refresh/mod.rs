//! Records fetched by key: the loop that carries out asks (thin deltas, version ties), `driftd refresh`, and the retry policy.
//!
//! - `record.rs`: `[producer.fetch]` compiled, one GET, and what its answer means.
//!
//! A fetch is asked for inside the transaction that commits the delta (see
//! `store/fetches.rs`), so an acknowledged thin delta is never lost: until
//! its record is fetched and applied, its `fetches` row is there for any
//! process to pick up. A fetched record is written with
//! [`WriteRule::Fetched`]: never older over newer, and it wins a version
//! tie, because it is what the producer holds now.

mod record;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use record::{FetchError, Got, RecordFetch};

use crate::config::{NotFound, Producer};
use crate::entity::{Change, EntityWrite, Source, WriteOutcome, WriteRule};
use crate::keyframe::holder::Holder;
use crate::metrics::Metrics;
use crate::store::{now_ms, FetchClaim, FetchResult, FetchSettled, Store, StoreError};

/// How often the loop looks for due keys when nothing woke it.
const POLL: Duration = Duration::from_secs(1);

/// What one fetch did, as `driftd refresh` prints it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refreshed {
    pub key: String,
    /// `applied`, `unchanged`, `stale`, `not_found`, `failed` or `gave_up`.
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Carries out fetch asks; cheap to clone.
#[derive(Clone, Debug)]
pub struct Refresher {
    pub store: Store,
    pub client: reqwest::Client,
    pub metrics: Metrics,
    /// Notified when a delta asks for a fetch.
    pub wake: Arc<Notify>,
    /// This process's lease holder name: [`Refresher::holder_id`] lets the
    /// next process take over its keys at once if it stops without releasing them.
    pub id: String,
}

/// The lease of a claimed key: long enough for the request and its body.
fn lease_ms(f: &RecordFetch) -> i64 {
    i64::try_from(f.cfg.timeout_secs.saturating_mul(2).saturating_add(10) * 1000)
        .unwrap_or(i64::MAX)
}

/// Full jitter over an exponential ceiling: `base·2^attempts`, capped.
fn backoff_ms(f: &RecordFetch, attempts: i64) -> u64 {
    let exp = attempts.clamp(0, 30) as u32;
    let ceiling = f
        .cfg
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(f.cfg.backoff_max_ms)
        .max(1);
    rand::random_range(ceiling / 2..=ceiling)
}

impl Refresher {
    /// A lease holder name for this process: its identity (host, boot,
    /// process and start time) and a fresh token.
    pub fn holder_id() -> String {
        Holder::current().to_string()
    }

    /// Fetches what producers with `[producer.fetch]` were asked for, until `cancel`.
    pub async fn run(&self, producers: Vec<Producer>, cancel: CancellationToken) {
        let producers: Vec<Producer> = producers
            .into_iter()
            .filter(|p| p.record_fetch().is_some())
            .collect();
        if producers.is_empty() {
            return;
        }
        while !cancel.is_cancelled() {
            let mut busy = false;
            for p in &producers {
                match self.round(p, None, &cancel).await {
                    Ok(done) => busy |= !done.is_empty(),
                    Err(e) => {
                        warn!(producer = %p.name, error = %e, "fetch loop: database error; retrying")
                    }
                }
            }
            if !busy {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
        }
    }

    /// Asks for `keys` of `p` and fetches them now (unless another process
    /// holds one; it then fetches it): `driftd refresh` and the admin endpoint.
    pub async fn refresh(
        &self,
        p: &Producer,
        keys: &[&str],
        cancel: &CancellationToken,
    ) -> Result<Vec<Refreshed>, StoreError> {
        if p.record_fetch().is_none() {
            return Err(StoreError::Invalid(format!(
                "producer {:?} has no [producer.fetch]: there is no URL to fetch one record from",
                p.name
            )));
        }
        self.store.ask_fetches(&p.name, keys).await?;
        self.round(p, Some(keys), cancel).await
    }

    /// Claims due keys of `p` (only `keys`, when given), fetches them
    /// concurrently and commits each result.
    async fn round(
        &self,
        p: &Producer,
        keys: Option<&[&str]>,
        cancel: &CancellationToken,
    ) -> Result<Vec<Refreshed>, StoreError> {
        let Some(f) = p.record_fetch() else {
            return Ok(Vec::new());
        };
        self.take_over_stopped(p).await?;
        let limit = keys.map_or(f.cfg.concurrency, |k| k.len() as u32);
        let claims = self
            .store
            .claim_fetches(&p.name, &self.id, limit, lease_ms(f), now_ms(), keys)
            .await?;
        let mut set = tokio::task::JoinSet::new();
        for claim in claims {
            let me = self.clone();
            let p = p.clone();
            let cancel = cancel.clone();
            set.spawn(async move { me.carry_out(&p, claim, &cancel).await });
        }
        let mut out = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => return Err(e),
                Err(e) => warn!(producer = %p.name, error = %e, "a fetch task failed"),
            }
        }
        Ok(out)
    }

    /// Releases the keys of `p` leased by a process that stopped without
    /// releasing them (SIGKILL, a crash), so they are fetched now rather
    /// than when the lease expires. Only a holder on this process table can
    /// be judged (see `keyframe/holder.rs`); others wait for their expiry.
    async fn take_over_stopped(&self, p: &Producer) -> Result<(), StoreError> {
        let me = Holder::parse(&self.id);
        for holder in self.store.fetch_holders(&p.name, now_ms()).await? {
            if me.as_ref().is_some_and(|me| me.sees_stopped_id(&holder)) {
                let n = self.store.release_fetches_of(&p.name, &holder).await?;
                info!(producer = %p.name, keys = n, holder = %holder,
                    "released the fetches of a process that stopped without releasing them");
            }
        }
        Ok(())
    }

    /// One claimed key: GET, then commit the record, or record the failure.
    /// A stop signal mid-request releases the key, due at once, for the
    /// next process.
    async fn carry_out(
        &self,
        p: &Producer,
        claim: FetchClaim,
        cancel: &CancellationToken,
    ) -> Result<Refreshed, StoreError> {
        let f = p
            .record_fetch()
            .expect("claimed only for producers with a fetch");
        let got = tokio::select! {
            got = f.get(&self.client, &claim.key) => got,
            _ = cancel.cancelled() => {
                self.store
                    .fail_fetch(&claim, &self.id, "interrupted by shutdown", now_ms(), false)
                    .await?;
                return Ok(self.count(p, &claim.key, "failed", Some("interrupted by shutdown".into())));
            }
        };
        let write = |change: Change, version: Option<i64>| FetchResult::Write {
            bucket_bits: p.bucket_bits,
            hasher: p.hasher(),
            write: EntityWrite {
                key: claim.key.clone(),
                change,
                version,
                source: Source::Fetch,
                rule: WriteRule::Fetched,
            },
        };
        let result = match got {
            Ok(Got::Record { doc, version }) => write(Change::Replace(doc), version),
            Ok(Got::NotFound) => match f.not_found() {
                NotFound::Delete => write(Change::Delete, None),
                NotFound::Ignore => FetchResult::Nothing {
                    note: format!(
                        "the producer has no record {:?} (HTTP 404); not_found = \"ignore\"",
                        claim.key
                    ),
                },
            },
            Err(e) => {
                let attempts = claim.attempts + 1;
                if !e.transient && attempts >= i64::from(f.cfg.max_attempts) {
                    let reason = format!("fetch failed {attempts} times: {}", e.message);
                    warn!(producer = %p.name, key = %claim.key, error = %e.message, "fetch: giving up");
                    let settled = self
                        .store
                        .finish_fetch(
                            &claim,
                            &self.id,
                            FetchResult::GiveUp {
                                reason: reason.clone(),
                            },
                        )
                        .await?;
                    self.count_deltas(p, &settled, "rejected");
                    return Ok(self.count(p, &claim.key, "gave_up", Some(reason)));
                }
                let delay = e
                    .retry_after
                    .map_or_else(|| backoff_ms(f, claim.attempts), |d| d.as_millis() as u64);
                debug!(producer = %p.name, key = %claim.key, attempts, delay_ms = delay,
                    error = %e.message, "fetch failed; will retry");
                self.store
                    .fail_fetch(
                        &claim,
                        &self.id,
                        &e.message,
                        now_ms().saturating_add(i64::try_from(delay).unwrap_or(i64::MAX)),
                        true,
                    )
                    .await?;
                return Ok(self.count(p, &claim.key, "failed", Some(e.message)));
            }
        };
        let not_found = matches!(result, FetchResult::Nothing { .. })
            || matches!(&result, FetchResult::Write { write, .. } if write.change == Change::Delete);
        let settled = self.store.finish_fetch(&claim, &self.id, result).await?;
        self.count_deltas(p, &settled, "fetched");
        if !settled.done {
            info!(producer = %p.name, key = %claim.key, "fetched; asked again meanwhile, fetching again");
        }
        let outcome = match settled.write {
            _ if not_found => "not_found",
            Some(WriteOutcome::Applied) => "applied",
            Some(WriteOutcome::Unchanged) => "unchanged",
            Some(WriteOutcome::Stale | WriteOutcome::Tie) | None => "stale",
        };
        Ok(self.count(p, &claim.key, outcome, None))
    }

    fn count(
        &self,
        p: &Producer,
        key: &str,
        outcome: &'static str,
        error: Option<String>,
    ) -> Refreshed {
        self.metrics
            .fetches
            .with_label_values(&[&p.name, outcome])
            .inc();
        Refreshed {
            key: key.to_string(),
            outcome,
            error,
        }
    }

    /// Counts the deltas a fetch settled in `driftd_deltas_total`.
    fn count_deltas(&self, p: &Producer, settled: &FetchSettled, outcome: &str) {
        for (_, channel) in &settled.deltas {
            self.metrics
                .deltas
                .with_label_values(&[&p.name, channel, outcome])
                .inc();
        }
    }
}
