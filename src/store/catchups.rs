//! Catch-up bookkeeping: where the next incremental pull starts, how the last one went, and one run per tick across replicas.

use super::sql::{query, query_scalar, At};
use super::{db, now_ms, Store, StoreError};

/// A producer's catch-up state, as `driftd status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CatchupState {
    /// The newest version the last successful catch-up saw.
    pub since: Option<i64>,
    pub last_at: Option<i64>,
    pub last_ok: Option<bool>,
    pub last_error: Option<String>,
    /// Records the last catch-up pulled, and how many it applied.
    pub records: i64,
    pub applied: i64,
}

impl Store {
    /// The catch-up state of `producer`, if it ever ran.
    pub async fn catchup_state(&self, producer: &str) -> Result<Option<CatchupState>, StoreError> {
        let row = query(
            "SELECT since, last_at, last_ok, last_error, records, applied FROM catchups
             WHERE producer = $1",
        )
        .bind(producer)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read a catch-up state"))?;
        let Some(r) = row else { return Ok(None) };
        let get = db("read a catch-up state");
        Ok(Some(CatchupState {
            since: r.try_get(0).map_err(get)?,
            last_at: r.try_get(1).map_err(get)?,
            last_ok: r.try_get(2).map_err(get)?,
            last_error: r.try_get(3).map_err(get)?,
            records: r.try_get(4).map_err(get)?,
            applied: r.try_get(5).map_err(get)?,
        }))
    }

    /// Where a first catch-up starts without a keyframe to seed it: the
    /// newest version among `producer`'s rows that no delta wrote (a delta's
    /// version says nothing of the deltas lost before it).
    pub async fn newest_version(&self, producer: &str) -> Result<Option<i64>, StoreError> {
        query_scalar(
            "SELECT MAX(version) FROM entities
             WHERE producer = $1 AND source NOT IN ('webhook', 'email', 'replay')",
        )
        .bind(producer)
        .fetch_one(&self.pool)
        .await
        .map_err(db("read the newest version"))
    }

    /// Sets where `producer`'s catch-ups start to `since` (the newest
    /// version of a keyframe's snapshot), unless they already have a start.
    pub(crate) async fn start_catchups_at(
        &self,
        producer: &str,
        since: i64,
    ) -> Result<(), StoreError> {
        query(
            "INSERT INTO catchups (producer, since) VALUES ($1, $2)
             ON CONFLICT (producer) DO UPDATE SET since = excluded.since
             WHERE catchups.since IS NULL",
        )
        .bind(producer)
        .bind(since)
        .execute(&self.pool)
        .await
        .map_err(db("set where catch-ups start"))?;
        Ok(())
    }

    /// Records a catch-up's end: `since` for the next one (kept as it was
    /// when the run failed), its outcome and counts.
    pub async fn record_catchup(
        &self,
        producer: &str,
        since: Option<i64>,
        ok: bool,
        error: Option<&str>,
        records: u64,
        applied: u64,
    ) -> Result<(), StoreError> {
        query(
            "INSERT INTO catchups (producer, since, last_at, last_ok, last_error, records, applied)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (producer) DO UPDATE SET
               since = CASE WHEN excluded.last_ok THEN excluded.since ELSE catchups.since END,
               last_at = excluded.last_at, last_ok = excluded.last_ok,
               last_error = excluded.last_error, records = excluded.records,
               applied = excluded.applied",
        )
        .bind(producer)
        .bind(if ok { since } else { None })
        .bind(At(now_ms()))
        .bind(ok)
        .bind(error)
        .bind(i64::try_from(records).unwrap_or(i64::MAX))
        .bind(i64::try_from(applied).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(db("record a catch-up"))?;
        Ok(())
    }

    /// Claims catch-up tick `tick` (ms) of `producer`: true for exactly one
    /// replica per tick.
    pub(crate) async fn claim_catchup_tick(
        &self,
        producer: &str,
        tick: i64,
    ) -> Result<bool, StoreError> {
        let done = query(
            "INSERT INTO catchups (producer, tick) VALUES ($1, $2)
             ON CONFLICT (producer) DO UPDATE SET tick = excluded.tick
             WHERE catchups.tick < excluded.tick",
        )
        .bind(producer)
        .bind(At(tick))
        .execute(&self.pool)
        .await
        .map_err(db("claim a catch-up tick"))?;
        Ok(done.rows_affected() == 1)
    }
}
