//! Keyframe runs, their drift lists, and named leases (one keyframe per producer at a time).

use std::collections::BTreeMap;

use super::sql::{column, query, query_scalar, At, Json, Row};
use super::{db, now_ms, placeholders, sql_list, Backend, Store, StoreError};
use crate::canonical::RecordHash;
use crate::state::RunState;

/// The counts a keyframe run records.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunCounts {
    pub records: u64,
    pub buckets_compared: u64,
    pub buckets_mismatched: u64,
    pub rows_read: u64,
    pub missing: u64,
    pub extra: u64,
    pub changed: u64,
    pub skipped_races: u64,
}

/// One row of `keyframe_runs`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub producer: String,
    pub state: RunState,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    #[serde(flatten)]
    pub counts: RunCounts,
    pub error: Option<String>,
    pub(crate) approved_at: Option<i64>,
    /// The schedule tick the run served; `None` for a keyframe started by hand.
    pub scheduled_for: Option<i64>,
}

/// What [`Store::prune`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub inbox: u64,
    pub work: u64,
    pub drifts: u64,
    pub runs: u64,
}

/// One drifted entity of a run, with the producer's document when it has one.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftRow {
    pub key: String,
    pub kind: String,
    /// Why it happened (`keyframe::cause`); `None` for drift found before
    /// causes were kept.
    pub cause: Option<String>,
    pub(crate) remote_hash: Option<RecordHash>,
    pub local_hash: Option<RecordHash>,
    pub doc: Option<String>,
}

const RUN_COLUMNS: &str =
    "id, producer, state, started_at, finished_at, records, buckets_compared, \
     buckets_mismatched, rows_read, missing, extra, changed, skipped_races, error, approved_at, \
     scheduled_for";

/// A stored run state, or the row is corrupt.
fn run_state(state: &str) -> Result<RunState, StoreError> {
    RunState::parse(state).ok_or_else(|| StoreError::Corrupt {
        table: "keyframe_runs",
        reason: format!("unknown state {state:?}"),
    })
}

fn run_from_row(r: &Row) -> Result<RunRow, StoreError> {
    let e = db("read a keyframe run");
    let n = |i: usize| r.try_get::<i64>(i).map(|v| v as u64).map_err(e);
    let state: String = r.try_get(2).map_err(e)?;
    Ok(RunRow {
        id: r.try_get(0).map_err(e)?,
        producer: r.try_get(1).map_err(e)?,
        state: run_state(&state)?,
        started_at: r.try_get(3).map_err(e)?,
        finished_at: r.try_get(4).map_err(e)?,
        counts: RunCounts {
            records: n(5)?,
            buckets_compared: n(6)?,
            buckets_mismatched: n(7)?,
            rows_read: n(8)?,
            missing: n(9)?,
            extra: n(10)?,
            changed: n(11)?,
            skipped_races: n(12)?,
        },
        error: r.try_get(13).map_err(e)?,
        approved_at: r.try_get(14).map_err(e)?,
        scheduled_for: r.try_get(15).map_err(e)?,
    })
}

impl Store {
    /// Records a new run in state `running` (serving schedule tick
    /// `scheduled_for`, if any) and returns its id.
    pub async fn start_run(
        &self,
        producer: &str,
        started_at: i64,
        scheduled_for: Option<i64>,
    ) -> Result<i64, StoreError> {
        query_scalar(
            "INSERT INTO keyframe_runs (producer, started_at, state, scheduled_for)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(producer)
        .bind(At(started_at))
        .bind(RunState::Running.as_str())
        .bind(scheduled_for.map(At))
        .fetch_one(&self.pool)
        .await
        .map_err(db("record a keyframe run"))
    }

    /// Fails every `running` run of `producer` with `error`. Called by the
    /// holder of the producer's keyframe lease: no other run can be under way,
    /// so these were left by a process that stopped. Returns the runs closed.
    pub(crate) async fn fail_running_runs(
        &self,
        producer: &str,
        error: &str,
    ) -> Result<u64, StoreError> {
        RunState::Running
            .check(RunState::Failed)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let done = query(
            "UPDATE keyframe_runs SET state = $2, finished_at = $3, error = $4
             WHERE producer = $1 AND state = $5",
        )
        .bind(producer)
        .bind(RunState::Failed.as_str())
        .bind(At(now_ms()))
        .bind(error)
        .bind(RunState::Running.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("close orphaned keyframe runs"))?;
        Ok(done.rows_affected())
    }

    /// Claims schedule tick `tick` (ms) of `producer`: true if no run served
    /// it or a later tick yet. One conditional statement, so exactly one
    /// replica claims each tick.
    pub(crate) async fn claim_tick(&self, producer: &str, tick: i64) -> Result<bool, StoreError> {
        let done = query(
            "INSERT INTO schedule_ticks (producer, tick) VALUES ($1, $2)
             ON CONFLICT (producer) DO UPDATE SET tick = excluded.tick
             WHERE schedule_ticks.tick < excluded.tick",
        )
        .bind(producer)
        .bind(At(tick))
        .execute(&self.pool)
        .await
        .map_err(db("claim a schedule tick"))?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves a run to its final state with its counts; refuses an invalid transition.
    pub(crate) async fn finish_run(
        &self,
        id: i64,
        state: RunState,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        let current = self.run(id).await?.ok_or_else(|| StoreError::Corrupt {
            table: "keyframe_runs",
            reason: format!("run {id} does not exist"),
        })?;
        current
            .state
            .check(state)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        query(
            "UPDATE keyframe_runs SET state = $2, finished_at = $3, records = $4, buckets_compared = $5,
               buckets_mismatched = $6, rows_read = $7, missing = $8, extra = $9, changed = $10,
               skipped_races = $11, error = $12
             WHERE id = $1 AND state = $13",
        )
        .bind(id)
        .bind(state.as_str())
        .bind(At(now_ms()))
        .bind(i(counts.records))
        .bind(i(counts.buckets_compared))
        .bind(i(counts.buckets_mismatched))
        .bind(i(counts.rows_read))
        .bind(i(counts.missing))
        .bind(i(counts.extra))
        .bind(i(counts.changed))
        .bind(i(counts.skipped_races))
        .bind(error)
        .bind(current.state.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("finish a keyframe run"))?;
        Ok(())
    }

    pub async fn run(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        query(&format!(
            "SELECT {RUN_COLUMNS} FROM keyframe_runs WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a keyframe run"))?
        .map(|r| run_from_row(&r))
        .transpose()
    }

    /// The latest `limit` runs of a producer, newest first.
    pub async fn runs(&self, producer: &str, limit: i64) -> Result<Vec<RunRow>, StoreError> {
        query(&format!(
            "SELECT {RUN_COLUMNS} FROM keyframe_runs WHERE producer = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(producer)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read keyframe runs"))?
        .iter()
        .map(run_from_row)
        .collect()
    }

    /// When the producer's latest completed (not failed) keyframe before `before_ms` began.
    pub(crate) async fn previous_pull_started(
        &self,
        producer: &str,
        before_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        query_scalar(&format!(
            "SELECT MAX(started_at) FROM keyframe_runs
             WHERE producer = $1 AND started_at < $2 AND state IN {}",
            compared()
        ))
        .bind(producer)
        .bind(At(before_ms))
        .fetch_one(&self.pool)
        .await
        .map_err(db("find the previous keyframe run"))
    }

    /// When the producer's keyframes last succeeded: the newest `ok` run's
    /// finish; for a producer none of whose kept runs succeeded, when its
    /// oldest kept run started (it has been trying since); `None` without any
    /// run. Both read the `(producer, id)` index from one end.
    pub(crate) async fn keyframe_succeeded_at(
        &self,
        producer: &str,
    ) -> Result<Option<i64>, StoreError> {
        let e = db("find the last successful keyframe");
        let ok: Option<Option<i64>> = query_scalar(
            "SELECT finished_at FROM keyframe_runs WHERE producer = $1 AND state = 'ok'
             ORDER BY id DESC LIMIT 1",
        )
        .bind(producer)
        .fetch_optional(&self.pool)
        .await
        .map_err(e)?;
        if let Some(finished) = ok.flatten() {
            return Ok(Some(finished));
        }
        query_scalar("SELECT started_at FROM keyframe_runs WHERE producer = $1 ORDER BY id LIMIT 1")
            .bind(producer)
            .fetch_optional(&self.pool)
            .await
            .map_err(e)
    }

    /// Per producer, the run awaiting approval: the producer's latest run that
    /// compared (`ok`, `guarded` or `approved`), when that run is `guarded`.
    pub async fn guarded_runs(&self) -> Result<BTreeMap<String, i64>, StoreError> {
        let rows = query(&format!(
            "SELECT r.producer, r.id FROM keyframe_runs r WHERE r.state = '{}'
             AND r.id = (SELECT MAX(n.id) FROM keyframe_runs n
                         WHERE n.producer = r.producer AND n.state IN {})",
            RunState::Guarded.as_str(),
            compared()
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(db("find guarded keyframe runs"))?;
        rows.iter()
            .map(|r| {
                let e = db("find guarded keyframe runs");
                Ok((r.try_get(0).map_err(e)?, r.try_get(1).map_err(e)?))
            })
            .collect()
    }

    /// The producer's latest run after `id` that compared (`ok`, `guarded` or `approved`), if any.
    pub(crate) async fn newer_compared_run(
        &self,
        producer: &str,
        id: i64,
    ) -> Result<Option<(i64, RunState)>, StoreError> {
        let row = query(&format!(
            "SELECT id, state FROM keyframe_runs WHERE producer = $1 AND id > $2
               AND state IN {}
             ORDER BY id DESC LIMIT 1",
            compared()
        ))
        .bind(producer)
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("find a newer keyframe run"))?;
        row.map(|r| {
            let e = db("find a newer keyframe run");
            let state: String = r.try_get(1).map_err(e)?;
            Ok((r.try_get(0).map_err(e)?, run_state(&state)?))
        })
        .transpose()
    }

    /// Marks a guarded run approved; refuses any other state.
    pub async fn approve_run(&self, id: i64) -> Result<RunRow, StoreError> {
        let run = self
            .run(id)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("keyframe run {id} does not exist")))?;
        if !run.state.can_become(RunState::Approved) {
            return Err(StoreError::Invalid(format!(
                "keyframe run {id} is {}, not guarded: nothing to approve",
                run.state
            )));
        }
        let updated = query(
            "UPDATE keyframe_runs SET state = $2, approved_at = $3 WHERE id = $1 AND state = $4",
        )
        .bind(id)
        .bind(RunState::Approved.as_str())
        .bind(At(now_ms()))
        .bind(RunState::Guarded.as_str())
        .execute(&self.pool)
        .await
        .map_err(db("approve a keyframe run"))?;
        if updated.rows_affected() != 1 {
            return Err(StoreError::Invalid(format!(
                "keyframe run {id} was approved by someone else"
            )));
        }
        self.run(id).await?.ok_or_else(|| StoreError::Corrupt {
            table: "keyframe_runs",
            reason: format!("run {id} vanished"),
        })
    }

    /// Stores a run's drift list, in multi-row batches.
    pub(crate) async fn insert_drifts(
        &self,
        run_id: i64,
        producer: &str,
        drifts: &[DriftRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let hash = |h: Option<RecordHash>| h.map(|h| h.0.to_vec());
        for chunk in drifts.chunks(self.backend.batch()) {
            let q = match self.backend {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO drifts (run_id, producer, key, kind, cause, remote_hash, local_hash, doc) VALUES {}",
                        placeholders(chunk.len(), 3, "($1, $2, ?, ?, ?, ?, ?, ?)")
                    );
                    let mut q = query(&sql).bind(run_id).bind(producer);
                    for d in chunk {
                        q = q
                            .bind(d.key.as_str())
                            .bind(d.kind.as_str())
                            .bind(d.cause.as_deref())
                            .bind(hash(d.remote_hash))
                            .bind(hash(d.local_hash))
                            .bind(d.doc.as_deref().map(Json::text));
                    }
                    q.execute(&mut tx).await
                }
                Backend::Postgres => query(
                    "INSERT INTO drifts (run_id, producer, key, kind, cause, remote_hash, local_hash, doc)
                     SELECT $1, $2, u.* FROM UNNEST($3::text[], $4::text[], $5::text[], $6::bytea[],
                       $7::bytea[], $8::jsonb[]) AS u",
                )
                .bind(run_id)
                .bind(producer)
                .bind(column(chunk, |d| d.key.clone()))
                .bind(column(chunk, |d| d.kind.clone()))
                .bind(column(chunk, |d| d.cause.clone()))
                .bind(column(chunk, |d| hash(d.remote_hash)))
                .bind(column(chunk, |d| hash(d.local_hash)))
                .bind(column(chunk, |d| {
                    d.doc.as_deref().map(|t| Json(t.to_string().into()))
                }))
                .execute(&mut tx)
                .await,
            };
            q.map_err(db("store drifts"))?;
        }
        tx.commit().await.map_err(db("commit drifts"))
    }

    /// Drops the documents of run `run_id`'s drift list once its work items
    /// carry them: the list keeps each drift's key, kind and hashes, and the
    /// document is stored once, in the item (then in the mirror).
    pub(crate) async fn release_drift_docs(&self, run_id: i64) -> Result<u64, StoreError> {
        let done = query("UPDATE drifts SET doc = NULL WHERE run_id = $1 AND doc IS NOT NULL")
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(db("release drift documents"))?;
        Ok(done.rows_affected())
    }

    /// The drift list of a run, in key order.
    pub async fn drifts_of_run(&self, run_id: i64) -> Result<Vec<DriftRow>, StoreError> {
        self.drifts_page(run_id, "", i64::MAX).await
    }

    /// Up to `limit` drifts of a run with keys after `after` (`""` from the start), in key order.
    pub(crate) async fn drifts_page(
        &self,
        run_id: i64,
        after: &str,
        limit: i64,
    ) -> Result<Vec<DriftRow>, StoreError> {
        let rows = query(
            "SELECT key, kind, remote_hash, local_hash, doc, cause FROM drifts
             WHERE run_id = $1 AND key > $2 ORDER BY key LIMIT $3",
        )
        .bind(run_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read drifts"))?;
        rows.iter()
            .map(|r| {
                let e = db("read drifts");
                let hash = |i: usize| -> Result<Option<RecordHash>, StoreError> {
                    let b: Option<Vec<u8>> = r.try_get(i).map_err(e)?;
                    Ok(b.and_then(|b| RecordHash::from_slice(&b)))
                };
                Ok(DriftRow {
                    key: r.try_get(0).map_err(e)?,
                    kind: r.try_get(1).map_err(e)?,
                    remote_hash: hash(2)?,
                    local_hash: hash(3)?,
                    doc: r.try_get(4).map_err(e)?,
                    cause: r.try_get(5).map_err(e)?,
                })
            })
            .collect()
    }

    /// How many drifts of run `run_id` each cause explains, by cause name
    /// (`unknown` for drift found before causes were kept).
    pub async fn drift_causes(&self, run_id: i64) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows = query("SELECT cause, COUNT(*) FROM drifts WHERE run_id = $1 GROUP BY cause")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(db("count drift causes"))?;
        rows.iter()
            .map(|r| {
                let e = db("count drift causes");
                let cause: Option<String> = r.try_get(0).map_err(e)?;
                let n: i64 = r.try_get(1).map_err(e)?;
                Ok((cause.unwrap_or_else(|| "unknown".into()), n.max(0) as u64))
            })
            .collect()
    }

    /// Deletes history older than `before_ms`: settled inbox rows, done or
    /// cancelled work, and keyframe runs with their drift lists (guarded runs
    /// included: by then they have expired and cannot be approved). Kept
    /// whatever their age: pending deltas, open and dead work, running runs,
    /// each producer's latest run, and the `changes` log.
    pub async fn prune(&self, before_ms: i64) -> Result<Pruned, StoreError> {
        let mut tx = self.begin_write().await?;
        let run = |sql: &'static str| query(sql).bind(At(before_ms));
        let inbox = run(
            "DELETE FROM inbox WHERE received_at < $1 AND outcome NOT IN ('pending', 'fetching')",
        )
        .execute(&mut tx)
        .await
        .map_err(db("prune the inbox"))?
        .rows_affected();
        let work = run("DELETE FROM work WHERE updated_at < $1 AND state IN ('done', 'cancelled')")
            .execute(&mut tx)
            .await
            .map_err(db("prune work"))?
            .rows_affected();
        const OLD_RUNS: &str = "SELECT id FROM keyframe_runs WHERE started_at < $1
             AND state <> 'running'
             AND id NOT IN (SELECT MAX(id) FROM keyframe_runs GROUP BY producer)";
        let drifts = query(&format!("DELETE FROM drifts WHERE run_id IN ({OLD_RUNS})"))
            .bind(At(before_ms))
            .execute(&mut tx)
            .await
            .map_err(db("prune drift lists"))?
            .rows_affected();
        let runs = query(&format!(
            "DELETE FROM keyframe_runs WHERE id IN ({OLD_RUNS})"
        ))
        .bind(At(before_ms))
        .execute(&mut tx)
        .await
        .map_err(db("prune keyframe runs"))?
        .rows_affected();
        tx.commit().await.map_err(db("commit pruning"))?;
        Ok(Pruned {
            inbox,
            work,
            drifts,
            runs,
        })
    }

    /// Takes (or renews) the lease `name` for `holder` until `ttl_ms` after
    /// `now` (epoch milliseconds). Returns false while another holder's lease
    /// is unexpired at `now`.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = query(
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until
             WHERE leases.until < $4 OR leases.holder = excluded.holder",
        )
        .bind(name)
        .bind(holder)
        .bind(At(now + ttl_ms))
        .bind(At(now))
        .execute(&self.pool)
        .await
        .map_err(db("take a lease"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The holder of lease `name`, expired or not.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        query_scalar("SELECT holder FROM leases WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read a lease"))
    }

    /// Gives lease `name` to `holder` until `ttl_ms` after `now` if `from`
    /// still holds it, expired or not (the caller established that `from`
    /// stopped). Returns whether it did.
    pub async fn take_over_lease(
        &self,
        name: &str,
        from: &str,
        holder: &str,
        ttl_ms: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done =
            query("UPDATE leases SET holder = $3, until = $4 WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(from)
                .bind(holder)
                .bind(At(now + ttl_ms))
                .execute(&self.pool)
                .await
                .map_err(db("take over a lease"))?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(db("release a lease"))?;
        Ok(())
    }
}

/// [`RunState::COMPARED`] as an SQL list.
fn compared() -> String {
    sql_list(RunState::COMPARED.map(RunState::as_str))
}
