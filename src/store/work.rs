//! The `work` queue (emit, claim, complete, retry, reclaim expired leases) and producer health rows.
//!
//! At most one open (`pending` or `running`) item exists per entity: a partial
//! unique index enforces it on both backends. Claims use
//! `FOR UPDATE SKIP LOCKED` on PostgreSQL; on SQLite the claiming `UPDATE`
//! runs alone in its write transaction.

use std::collections::BTreeMap;

use super::sql::{column, query, query_scalar, At, Json, Row};
use super::{db, now_ms, placeholders, Backend, Store, StoreError};
use crate::state::{Health, Steer, WorkState};

/// A work item to emit.
#[derive(Debug, Clone)]
pub struct NewWork {
    pub key: String,
    pub action: String,
    pub spec: String,
    pub dedup_key: String,
}

/// What an emission did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Emitted {
    pub inserted: u64,
    pub updated: u64,
    /// Drifts whose entity already has a running item (re-checked next keyframe).
    pub(crate) skipped_running: u64,
    /// Drifts whose content an item already delivered (see [`Store::emit_work`]).
    pub(crate) skipped_delivered: u64,
}

/// One row of `work`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct WorkRow {
    pub id: i64,
    pub time: i64,
    pub producer: String,
    pub key: String,
    pub action: String,
    pub state: WorkState,
    pub run_at: i64,
    pub attempts: i64,
    pub max_attempts: i64,
    pub last_error: Option<String>,
    pub locked_by: Option<String>,
    pub dedup_key: String,
    pub spec: String,
}

/// Returns a running item to the queue (`dead` once out of attempts), due
/// at `$1`; completed by the `last_error` expression and a `WHERE`. Those
/// `WHERE`s name `state IN ('pending', 'running')` as well as `running`:
/// SQLite uses the partial index of open items only when a query repeats
/// its condition, and otherwise reads the whole table, done items included.
const RETURN_RUNNING: &str = "UPDATE work SET
       state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,
       locked_by = NULL, locked_until = NULL, run_at = $1, updated_at = $1,
       last_error =";

const WORK_COLUMNS: &str =
    "id, time, producer, key, action, state, run_at, attempts, max_attempts, \
     last_error, locked_by, dedup_key, spec";

/// A work item's state as stored; anything else is a corrupt row.
pub(super) fn work_state(state: &str) -> Result<WorkState, StoreError> {
    WorkState::parse(state).ok_or_else(|| StoreError::Corrupt {
        table: "work",
        reason: format!("unknown state {state:?}"),
    })
}

fn work_from_row(r: &Row) -> Result<WorkRow, StoreError> {
    let e = db("read a work item");
    let state: String = r.try_get(5).map_err(e)?;
    Ok(WorkRow {
        id: r.try_get(0).map_err(e)?,
        time: r.try_get(1).map_err(e)?,
        producer: r.try_get(2).map_err(e)?,
        key: r.try_get(3).map_err(e)?,
        action: r.try_get(4).map_err(e)?,
        state: work_state(&state)?,
        run_at: r.try_get(6).map_err(e)?,
        attempts: r.try_get(7).map_err(e)?,
        max_attempts: r.try_get(8).map_err(e)?,
        last_error: r.try_get(9).map_err(e)?,
        locked_by: r.try_get(10).map_err(e)?,
        dedup_key: r.try_get(11).map_err(e)?,
        spec: r.try_get(12).map_err(e)?,
    })
}

impl Backend {
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Self::Sqlite => "",
            Self::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

impl Store {
    /// Writes one item per drifted entity of `producer`: new items in
    /// multi-row batches; an existing pending item gets the newest spec (and
    /// its idempotency key) but keeps its attempts, last error and `run_at`,
    /// so backoff still grows and `dead` is still reached; a running item is
    /// left alone, so what its worker delivers is what it was given. Call it
    /// page by page; [`Store::close_vanished_work`] then closes the items
    /// whose drift is gone.
    ///
    /// A drift whose content an item already delivered is not emitted again:
    /// an item with the same idempotency key that is done but not yet in the
    /// mirror, or was finished after `done_since` (the pull began; the
    /// application answered while the keyframe compared).
    pub async fn emit_work(
        &self,
        producer: &str,
        items: &[NewWork],
        max_attempts: u32,
        done_since: i64,
    ) -> Result<Emitted, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let mut open: Vec<(i64, String, String)> = Vec::new();
        let keys = |chunk: &[NewWork]| chunk.iter().map(|w| w.key.clone()).collect();
        // The lookups are planned at each page: the table grows page by page
        // while a run emits, and a plan cached while it was nearly empty
        // scanned all of it for every key. On PostgreSQL the keys are
        // joined from an array.
        for chunk in items.chunks(self.backend.batch()) {
            let sql = match self.backend {
                Backend::Sqlite => format!(
                    "SELECT id, key, state FROM work WHERE producer = $1
                     AND state IN ('pending', 'running') AND key {}",
                    self.backend.any(2, chunk.len())
                ),
                Backend::Postgres => "SELECT w.id, w.key, w.state
                     FROM UNNEST($2::text[]) AS k (key) JOIN work w ON w.key = k.key
                     WHERE w.producer = $1 AND w.state IN ('pending', 'running')"
                    .to_string(),
            };
            let q = self
                .backend
                .bind_any(query(&sql).planned_each_time().bind(producer), keys(chunk));
            for r in q.fetch_all(&mut tx).await.map_err(db("read open work"))? {
                let e = db("read open work");
                open.push((
                    r.try_get(0).map_err(e)?,
                    r.try_get(1).map_err(e)?,
                    r.try_get(2).map_err(e)?,
                ));
            }
        }
        let open: BTreeMap<&str, (i64, &str)> = open
            .iter()
            .map(|(id, k, s)| (k.as_str(), (*id, s.as_str())))
            .collect();
        let mut delivered: std::collections::BTreeSet<(String, String)> = Default::default();
        for chunk in items.chunks(self.backend.batch()) {
            let sql = match self.backend {
                Backend::Sqlite => format!(
                    "SELECT key, dedup_key FROM work WHERE producer = $1 AND state = 'done'
                     AND (mirrored = FALSE OR updated_at >= $2) AND key {}",
                    self.backend.any(3, chunk.len())
                ),
                Backend::Postgres => "SELECT w.key, w.dedup_key
                     FROM UNNEST($3::text[]) AS k (key) JOIN work w ON w.key = k.key
                     WHERE w.producer = $1 AND w.state = 'done'
                       AND (w.mirrored = FALSE OR w.updated_at >= $2)"
                    .to_string(),
            };
            let q = query(&sql)
                .planned_each_time()
                .bind(producer)
                .bind(At(done_since));
            let q = self.backend.bind_any(q, keys(chunk));
            for r in q.fetch_all(&mut tx).await.map_err(db("read done work"))? {
                let e = db("read done work");
                delivered.insert((r.try_get(0).map_err(e)?, r.try_get(1).map_err(e)?));
            }
        }
        let mut out = Emitted::default();
        let mut fresh = Vec::new();
        for w in items {
            if delivered.contains(&(w.key.clone(), w.dedup_key.clone())) {
                out.skipped_delivered += 1;
                continue;
            }
            match open.get(w.key.as_str()) {
                Some((_, "running")) => out.skipped_running += 1,
                Some((id, _)) => {
                    query(
                        "UPDATE work SET spec = $2, dedup_key = $3, action = $4, max_attempts = $6,
                           updated_at = $5
                         WHERE id = $1 AND state = 'pending'",
                    )
                    .bind(id)
                    .bind(Json::text(&w.spec))
                    .bind(&w.dedup_key)
                    .bind(&w.action)
                    .bind(At(now))
                    .bind(i64::from(max_attempts))
                    .execute(&mut tx)
                    .await
                    .map_err(db("update a pending work item"))?;
                    out.updated += 1;
                }
                None => fresh.push(w),
            }
        }
        for chunk in fresh.chunks(self.backend.batch()) {
            let q = match self.backend {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO work (time, producer, key, action, spec, dedup_key, run_at, max_attempts, updated_at)
                         VALUES {} ON CONFLICT DO NOTHING",
                        placeholders(chunk.len(), 4, "($1, $2, ?, ?, ?, ?, $1, $3, $1)")
                    );
                    let mut q = query(&sql)
                        .bind(At(now))
                        .bind(producer)
                        .bind(i64::from(max_attempts));
                    for w in chunk {
                        q = q
                            .bind(&w.key)
                            .bind(&w.action)
                            .bind(Json::text(&w.spec))
                            .bind(&w.dedup_key);
                    }
                    q.execute(&mut tx).await
                }
                Backend::Postgres => query(
                    "INSERT INTO work (time, producer, key, action, spec, dedup_key, run_at, max_attempts, updated_at)
                     SELECT $1, $2, u.key, u.action, u.spec, u.dedup_key, $1, $3, $1
                     FROM UNNEST($4::text[], $5::text[], $6::jsonb[], $7::text[]) AS u (key, action, spec, dedup_key)
                     ON CONFLICT DO NOTHING",
                )
                .bind(At(now))
                .bind(producer)
                .bind(i64::from(max_attempts))
                .bind(column(chunk, |w| w.key.clone()))
                .bind(column(chunk, |w| w.action.clone()))
                .bind(column(chunk, |w| Some(Json(w.spec.clone().into()))))
                .bind(column(chunk, |w| w.dedup_key.clone()))
                .execute(&mut tx)
                .await,
            };
            out.inserted += q.map_err(db("insert work items"))?.rows_affected();
        }
        if self.backend == Backend::Postgres && (out.inserted + out.updated) > 0 {
            query("SELECT 1 FROM (SELECT pg_notify('driftd_work', $1)) AS n")
                .bind(producer)
                .execute(&mut tx)
                .await
                .map_err(db("notify workers"))?;
        }
        tx.commit().await.map_err(db("commit emitted work"))?;
        Ok(out)
    }

    /// Closes (as done, with `note`) the pending items of `producer` whose
    /// entity is not in the drift list of `run_id`: a late delta fixed them.
    pub(crate) async fn close_vanished_work(
        &self,
        producer: &str,
        run_id: i64,
        note: &str,
    ) -> Result<u64, StoreError> {
        let done = query(
            "UPDATE work SET state = 'done', last_error = $3, mirrored = TRUE, updated_at = $4
             WHERE producer = $1 AND state = 'pending'
               AND key NOT IN (SELECT key FROM drifts WHERE run_id = $2)",
        )
        .bind(producer)
        .bind(run_id)
        .bind(note)
        .bind(At(now_ms()))
        .execute(&self.pool)
        .await
        .map_err(db("close work whose drift is gone"))?;
        Ok(done.rows_affected())
    }

    /// Claims up to `limit` items of `producer` pending and due at `now`
    /// (epoch milliseconds) for `worker`, leased for `lease_ms` from `now`.
    pub async fn claim_work(
        &self,
        producer: &str,
        worker: &str,
        limit: u32,
        lease_ms: i64,
        now: i64,
    ) -> Result<Vec<WorkRow>, StoreError> {
        let mut tx = self.begin_write().await?;
        let sql = format!(
            "UPDATE work SET state = 'running', locked_by = $2, locked_until = $3,
               attempts = attempts + 1, updated_at = $4
             WHERE id IN (SELECT id FROM work WHERE producer = $1 AND state = 'pending' AND run_at <= $4
                          ORDER BY run_at, id LIMIT $5{})
             RETURNING {WORK_COLUMNS}",
            self.backend.skip_locked()
        );
        let rows = query(&sql)
            .bind(producer)
            .bind(worker)
            .bind(At(now + lease_ms))
            .bind(At(now))
            .bind(i64::from(limit))
            .fetch_all(&mut tx)
            .await
            .map_err(db("claim work"))?;
        tx.commit().await.map_err(db("commit a work claim"))?;
        rows.iter().map(work_from_row).collect()
    }

    /// Moves a running item held by `worker` to `next`; returns false when the
    /// lease was lost (the item was reclaimed) and nothing was written.
    pub async fn finish_work(
        &self,
        id: i64,
        worker: &str,
        next: WorkState,
        run_at: i64,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        WorkState::Running
            .check(next)
            .map_err(|e| StoreError::Invalid(format!("work item {id}: {e}")))?;
        let done = query(
            "UPDATE work SET state = $3, run_at = $4, last_error = $5, locked_by = NULL,
               locked_until = NULL, updated_at = $6
             WHERE id = $1 AND state = 'running' AND locked_by = $2",
        )
        .bind(id)
        .bind(worker)
        .bind(next.as_str())
        .bind(At(run_at))
        .bind(error)
        .bind(At(now_ms()))
        .execute(&self.pool)
        .await
        .map_err(db("finish a work item"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends the lease of a claimed item to `lease_ms` after `now` while its
    /// worker still holds that claim (`claim.attempts` tells one claim from
    /// the next); returns false when the claim is gone (reclaimed, cancelled,
    /// or claimed again).
    pub(crate) async fn renew_work_lease(
        &self,
        claim: &WorkRow,
        worker: &str,
        lease_ms: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let renewed = query(
            "UPDATE work SET locked_until = $4, updated_at = $5
             WHERE id = $1 AND state = 'running' AND locked_by = $2 AND attempts = $3",
        )
        .bind(claim.id)
        .bind(worker)
        .bind(claim.attempts)
        .bind(At(now + lease_ms))
        .bind(At(now))
        .execute(&self.pool)
        .await
        .map_err(db("renew a work lease"))?;
        Ok(renewed.rows_affected() == 1)
    }

    /// Records that `worker` carried out its claim of an item: done while it
    /// still holds the claim, and also when the lease ran out before the
    /// outcome arrived but nobody took the item since (it is `pending` or,
    /// out of attempts, `dead`, with the same attempt count) and its content
    /// is still the one delivered (same `dedup_key`). An item claimed again
    /// by another worker, refreshed to newer content, cancelled or retried by
    /// an operator is left alone. Returns whether the item became done.
    pub async fn complete_work(&self, claim: &WorkRow, worker: &str) -> Result<bool, StoreError> {
        let done = query(
            "UPDATE work SET state = 'done', last_error = NULL, locked_by = NULL,
               locked_until = NULL, updated_at = $5
             WHERE id = $1 AND attempts = $3 AND dedup_key = $4
               AND ((state = 'running' AND locked_by = $2) OR state IN ('pending', 'dead'))",
        )
        .bind(claim.id)
        .bind(worker)
        .bind(claim.attempts)
        .bind(&claim.dedup_key)
        .bind(At(now_ms()))
        .execute(&self.pool)
        .await
        .map_err(db("complete a work item"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Returns a claim `worker` gives up without an outcome (shutdown) to
    /// `pending`, due at once, so the next worker need not wait for its lease.
    pub(crate) async fn release_work(
        &self,
        claim: &WorkRow,
        worker: &str,
        note: &str,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let released = query(
            "UPDATE work SET state = 'pending', run_at = $4, last_error = $5, locked_by = NULL,
               locked_until = NULL, updated_at = $4
             WHERE id = $1 AND state = 'running' AND locked_by = $2 AND attempts = $3",
        )
        .bind(claim.id)
        .bind(worker)
        .bind(claim.attempts)
        .bind(At(now))
        .bind(note)
        .execute(&self.pool)
        .await
        .map_err(db("release a work item"))?;
        Ok(released.rows_affected() == 1)
    }

    /// Writes the corrections of running `apply` items held by `worker` and
    /// marks those items done, in one transaction. If any item's lease was
    /// lost meanwhile, nothing is written and an error is returned.
    pub async fn apply_work(
        &self,
        producer: &str,
        bucket_bits: u8,
        hasher: &crate::canonical::RecordHasher,
        worker: &str,
        items: &[(i64, crate::entity::EntityWrite)],
    ) -> Result<Vec<(i64, crate::entity::WriteOutcome)>, StoreError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let writes: Vec<crate::entity::EntityWrite> =
            items.iter().map(|(_, w)| w.clone()).collect();
        let outcomes = self
            .write_entities_in(&mut tx, producer, bucket_bits, hasher, &writes)
            .await?;
        let now = now_ms();
        let mut done = 0;
        for chunk in items.chunks(self.backend.batch()) {
            let sql = format!(
                "UPDATE work SET state = 'done', last_error = NULL, locked_by = NULL, locked_until = NULL,
                   mirrored = TRUE, updated_at = $1
                 WHERE state = 'running' AND locked_by = $2 AND id {}",
                self.backend.any(3, chunk.len())
            );
            let q = query(&sql).bind(At(now)).bind(worker);
            let q = self
                .backend
                .bind_any(q, chunk.iter().map(|(id, _)| *id).collect());
            done += q
                .execute(&mut tx)
                .await
                .map_err(db("complete apply items"))?
                .rows_affected();
        }
        if done != items.len() as u64 {
            tx.rollback().await.map_err(db("roll back apply items"))?;
            return Err(StoreError::Invalid(format!(
                "{} of {} apply items are no longer held by {worker}; they will be retried",
                items.len() as u64 - done,
                items.len()
            )));
        }
        tx.commit().await.map_err(db("commit apply items"))?;
        if outcomes.contains(&crate::entity::WriteOutcome::Applied) {
            self.changes_committed(producer).await;
        }
        Ok(items.iter().map(|(id, _)| *id).zip(outcomes).collect())
    }

    /// Done items of `producer` whose correction the mirror does not carry
    /// yet (finished over HTTP, by an application's worker, or by hand), oldest first.
    pub(crate) async fn done_unmirrored(
        &self,
        producer: &str,
        limit: i64,
    ) -> Result<Vec<WorkRow>, StoreError> {
        query(&format!(
            "SELECT {WORK_COLUMNS} FROM work WHERE producer = $1 AND state = 'done' AND mirrored = FALSE
             ORDER BY id LIMIT $2"
        ))
        .bind(producer)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read done work to mirror"))?
        .iter()
        .map(work_from_row)
        .collect()
    }

    /// Writes the corrections of done items into the mirror (each a
    /// compare-and-set on the row the keyframe saw, so a delta that landed
    /// since wins and a second run writes nothing) and marks them, and the
    /// items in `nothing_to_write`, mirrored, in one transaction.
    pub(crate) async fn mirror_work(
        &self,
        producer: &str,
        bucket_bits: u8,
        hasher: &crate::canonical::RecordHasher,
        items: &[(i64, crate::entity::EntityWrite)],
        nothing_to_write: &[i64],
    ) -> Result<Vec<(i64, crate::entity::WriteOutcome)>, StoreError> {
        if items.is_empty() && nothing_to_write.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let writes: Vec<crate::entity::EntityWrite> =
            items.iter().map(|(_, w)| w.clone()).collect();
        let outcomes = self
            .write_entities_in(&mut tx, producer, bucket_bits, hasher, &writes)
            .await?;
        let ids: Vec<i64> = items
            .iter()
            .map(|(id, _)| *id)
            .chain(nothing_to_write.iter().copied())
            .collect();
        for chunk in ids.chunks(self.backend.batch()) {
            let sql = format!(
                "UPDATE work SET mirrored = TRUE WHERE state = 'done' AND id {}",
                self.backend.any(1, chunk.len())
            );
            let q = self.backend.bind_any(query(&sql), chunk.to_vec());
            q.execute(&mut tx).await.map_err(db("mark work mirrored"))?;
        }
        tx.commit().await.map_err(db("commit mirrored work"))?;
        if outcomes.contains(&crate::entity::WriteOutcome::Applied) {
            self.changes_committed(producer).await;
        }
        Ok(items.iter().map(|(id, _)| *id).zip(outcomes).collect())
    }

    /// Returns running items whose lease expired before `now` (epoch
    /// milliseconds) to `pending` (or `dead` once out of attempts), due at
    /// `now`. Returns how many were reclaimed.
    pub async fn reclaim_expired_work(&self, now: i64) -> Result<u64, StoreError> {
        let done = query(&format!(
            "{RETURN_RUNNING} 'lease expired: the worker holding it stopped (' || COALESCE(locked_by, '?') || ')'
             WHERE state IN ('pending', 'running') AND state = 'running' AND locked_until < $1"
        ))
        .bind(At(now))
        .execute(&self.pool)
        .await
        .map_err(db("reclaim expired work"))?;
        Ok(done.rows_affected())
    }

    /// The workers holding running items (their ids), for a worker to tell
    /// which of them stopped without releasing their items.
    pub(crate) async fn work_holders(&self) -> Result<Vec<String>, StoreError> {
        query_scalar(
            "SELECT DISTINCT locked_by FROM work
             WHERE state IN ('pending', 'running') AND state = 'running' AND locked_by IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read work lease holders"))
    }

    /// Returns the running items of `holder`, a worker whose process stopped
    /// without releasing them (SIGKILL, a crash), to the queue as an expired
    /// lease would, due at `now`, without waiting for the lease to expire.
    /// Returns how many.
    pub(crate) async fn release_work_of(&self, holder: &str, now: i64) -> Result<u64, StoreError> {
        let done = query(&format!(
            "{RETURN_RUNNING} 'the worker holding it stopped without releasing it (' || locked_by || ')'
             WHERE state IN ('pending', 'running') AND state = 'running' AND locked_by = $2"
        ))
        .bind(At(now))
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(db("release the work of a stopped worker"))?;
        Ok(done.rows_affected())
    }

    pub async fn work_item(&self, id: i64) -> Result<Option<WorkRow>, StoreError> {
        query(&format!("SELECT {WORK_COLUMNS} FROM work WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read a work item"))?
            .map(|r| work_from_row(&r))
            .transpose()
    }

    /// Work items, newest first, optionally of one state.
    pub async fn list_work(
        &self,
        state: Option<WorkState>,
        limit: i64,
    ) -> Result<Vec<WorkRow>, StoreError> {
        let sql = match state {
            Some(_) => format!(
                "SELECT {WORK_COLUMNS} FROM work WHERE state = $2 ORDER BY id DESC LIMIT $1"
            ),
            None => format!("SELECT {WORK_COLUMNS} FROM work ORDER BY id DESC LIMIT $1"),
        };
        let mut q = query(&sql).bind(limit);
        if let Some(s) = state {
            q = q.bind(s.as_str());
        }
        let rows = q.fetch_all(&self.pool).await.map_err(db("list work"))?;
        rows.iter().map(work_from_row).collect()
    }

    /// Item counts by state (all states present, zero when none).
    pub async fn work_counts(&self) -> Result<BTreeMap<WorkState, i64>, StoreError> {
        let mut out: BTreeMap<WorkState, i64> = WorkState::ALL.iter().map(|s| (*s, 0)).collect();
        for ((_, state), n) in self.work_counts_by_producer().await? {
            *out.entry(state).or_default() += n;
        }
        Ok(out)
    }

    /// Items per producer and state (a producer with none has no entry).
    pub async fn work_counts_by_producer(
        &self,
    ) -> Result<BTreeMap<(String, WorkState), i64>, StoreError> {
        let mut out = BTreeMap::new();
        for r in query("SELECT producer, state, COUNT(*) FROM work GROUP BY producer, state")
            .fetch_all(&self.pool)
            .await
            .map_err(db("count work per producer"))?
        {
            let producer: String = r.try_get(0).map_err(db("count work per producer"))?;
            let state: String = r.try_get(1).map_err(db("count work per producer"))?;
            let state = work_state(&state)?;
            out.insert(
                (producer, state),
                r.try_get(2).map_err(db("count work per producer"))?,
            );
        }
        Ok(out)
    }

    /// The ids of `producer`'s open items (pending or running), oldest first.
    pub(crate) async fn open_work_ids(&self, producer: &str) -> Result<Vec<i64>, StoreError> {
        query_scalar(
            "SELECT id FROM work WHERE producer = $1 AND state IN ('pending', 'running') ORDER BY id",
        )
        .bind(producer)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list open work"))
    }

    /// How many of items `ids` are in each state now (every state present,
    /// zero when none); an id that no longer exists is not counted.
    pub(crate) async fn work_states(
        &self,
        ids: &[i64],
    ) -> Result<BTreeMap<WorkState, u64>, StoreError> {
        let mut out: BTreeMap<WorkState, u64> = WorkState::ALL.iter().map(|s| (*s, 0)).collect();
        for chunk in ids.chunks(self.backend.batch()) {
            let sql = format!(
                "SELECT state, COUNT(*) FROM work WHERE id {} GROUP BY state",
                self.backend.any(1, chunk.len())
            );
            let q = self.backend.bind_any(query(&sql), chunk.to_vec());
            for r in q
                .fetch_all(&self.pool)
                .await
                .map_err(db("count work items by state"))?
            {
                let state: String = r.try_get(0).map_err(db("count work items by state"))?;
                let state = work_state(&state)?;
                let n: i64 = r.try_get(1).map_err(db("count work items by state"))?;
                *out.entry(state).or_default() += n.unsigned_abs();
            }
        }
        Ok(out)
    }

    /// When each of the producer's items opened and, unless it is still open
    /// (pending or running), when it closed: the items open at `since_ms` or
    /// touched after it. The demo reads its open drift from these.
    pub async fn work_spans(
        &self,
        producer: &str,
        since_ms: i64,
    ) -> Result<Vec<(i64, Option<i64>)>, StoreError> {
        let e = db("read work item spans");
        query(
            "SELECT time, CASE WHEN state IN ('pending', 'running') THEN NULL ELSE updated_at END
             FROM work WHERE producer = $1
               AND (state IN ('pending', 'running') OR updated_at >= $2)",
        )
        .bind(producer)
        .bind(At(since_ms))
        .fetch_all(&self.pool)
        .await
        .map_err(e)?
        .iter()
        .map(|r| Ok((r.try_get(0).map_err(e)?, r.try_get(1).map_err(e)?)))
        .collect()
    }

    /// Open items (pending or running) per producer: the open drift.
    pub async fn open_work_by_producer(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut out = BTreeMap::new();
        for r in query(
            "SELECT producer, COUNT(*) FROM work WHERE state IN ('pending', 'running') GROUP BY producer",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("count open work"))?
        {
            out.insert(
                r.try_get(0).map_err(db("count open work"))?,
                r.try_get(1).map_err(db("count open work"))?,
            );
        }
        Ok(out)
    }

    /// Moves an item by operator request (`retry`: dead → pending; `cancel`).
    pub async fn set_work_state(&self, id: i64, next: WorkState) -> Result<WorkRow, StoreError> {
        let item = self
            .work_item(id)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("work item {id} does not exist")))?;
        let steer = Steer::to(next).ok_or_else(|| {
            StoreError::Invalid(format!("work item {id} cannot be set {next} by hand"))
        })?;
        if let Some(why) = steer.refusal(id, item.state) {
            return Err(StoreError::Invalid(why));
        }
        let now = now_ms();
        let changed = query(
            "UPDATE work SET state = $2, run_at = $3, attempts = CASE WHEN $2 = 'pending' THEN 0 ELSE attempts END,
               locked_by = NULL, locked_until = NULL, updated_at = $3 WHERE id = $1 AND state = $4",
        )
        .bind(id)
        .bind(next.as_str())
        .bind(At(now))
        .bind(item.state.as_str())
        .execute(&self.pool)
        .await;
        match changed {
            Ok(r) if r.rows_affected() == 1 => {}
            // It moved since it was read: say why it cannot move now.
            Ok(_) => {
                let now = self.work_item(id).await?.map_or(item.state, |w| w.state);
                return Err(StoreError::Invalid(steer.refusal(id, now).unwrap_or_else(
                    || format!("work item {id} changed meanwhile; try again"),
                )));
            }
            // Reopening an item conflicts with the entity's one open item
            // (the partial unique index): name that item instead.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let open: Option<i64> = query_scalar(
                    "SELECT id FROM work WHERE producer = $1 AND key = $2
                       AND state IN ('pending', 'running') AND id <> $3",
                )
                .bind(&item.producer)
                .bind(&item.key)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("find the open work item of an entity"))?;
                return Err(StoreError::EntityHasOpenWork {
                    id,
                    producer: item.producer,
                    key: item.key,
                    open: open.map_or_else(|| "?".to_string(), |o| o.to_string()),
                });
            }
            Err(e) => return Err(db("change a work item")(e)),
        }
        self.work_item(id)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("work item {id} vanished")))
    }

    /// Records a keyframe outcome in the producer's health row and returns the new health.
    pub(crate) async fn record_keyframe_health(
        &self,
        producer: &str,
        succeeded: bool,
        unhealthy_after: u32,
    ) -> Result<Health, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        query(
            "INSERT INTO producers (name, health, health_since, failures) VALUES ($1, 'healthy', $2, 0)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(producer)
        .bind(At(now))
        .execute(&mut tx)
        .await
        .map_err(db("create a producer health row"))?;
        let row = query(&format!(
            "SELECT health, failures FROM producers WHERE name = $1{}",
            self.backend.for_update()
        ))
        .bind(producer)
        .fetch_one(&mut tx)
        .await
        .map_err(db("read producer health"))?;
        let current: String = row.try_get(0).map_err(db("read producer health"))?;
        let current = Health::parse(&current).ok_or_else(|| StoreError::Corrupt {
            table: "producers",
            reason: format!("unknown health {current:?}"),
        })?;
        let failures: i64 = row.try_get(1).map_err(db("read producer health"))?;
        let failures = if succeeded { 0 } else { failures + 1 };
        let next = Health::after_keyframe(succeeded, failures as u32, unhealthy_after);
        if next != current {
            current
                .check(next)
                .map_err(|e| StoreError::Invalid(format!("producer {producer:?}: {e}")))?;
        }
        query(
            "UPDATE producers SET health = $2, failures = $3,
               health_since = CASE WHEN health = $2 THEN health_since ELSE $4 END WHERE name = $1",
        )
        .bind(producer)
        .bind(next.as_str())
        .bind(failures)
        .bind(At(now))
        .execute(&mut tx)
        .await
        .map_err(db("update producer health"))?;
        tx.commit().await.map_err(db("commit producer health"))?;
        Ok(next)
    }

    /// Health and the time it was entered, per producer.
    pub(crate) async fn producer_health(
        &self,
    ) -> Result<BTreeMap<String, (Health, i64)>, StoreError> {
        let mut out = BTreeMap::new();
        for r in query("SELECT name, health, health_since FROM producers")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read producer health"))?
        {
            let e = db("read producer health");
            let h: String = r.try_get(1).map_err(e)?;
            if let Some(h) = Health::parse(&h) {
                out.insert(r.try_get(0).map_err(e)?, (h, r.try_get(2).map_err(e)?));
            }
        }
        Ok(out)
    }

    /// Entity changes delivered by deltas since the producer's previous keyframe run began.
    pub(crate) async fn delta_changes_since_previous_run(
        &self,
        producer: &str,
        run_id: i64,
    ) -> Result<u64, StoreError> {
        let since: Option<i64> = query_scalar(
            "SELECT MAX(started_at) FROM keyframe_runs WHERE producer = $1 AND id < $2",
        )
        .bind(producer)
        .bind(run_id)
        .fetch_one(&self.pool)
        .await
        .map_err(db("find the previous keyframe run"))?;
        let Some(since) = since else { return Ok(0) };
        let n: i64 = query_scalar(
            "SELECT COUNT(*) FROM changes WHERE producer = $1 AND at >= $2 AND source IN ('webhook', 'email')",
        )
        .bind(producer)
        .bind(At(since))
        .fetch_one(&self.pool)
        .await
        .map_err(db("count delta changes"))?;
        Ok(n as u64)
    }
}
