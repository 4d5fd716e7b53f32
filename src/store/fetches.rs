//! Records driftd was asked to fetch from their producer: the asks, one lease and backoff per key, and a fetch's result committed with the deltas that waited on it.
//!
//! One `fetches` row per `(producer, key)` is the key's queue entry, lease
//! and backoff at once, so repeated asks coalesce into one fetch and a key is
//! fetched by one process at a time. Every ask bumps `asked` under the row's
//! lock. A finished fetch deletes the row only if `asked` is still what it
//! was at the claim: an ask that came while the HTTP request ran (and may
//! name a change the answer predates) leaves the row due again. Asks made by
//! deltas are also rows of `fetch_asks`, so a `fetching` delta becomes
//! `fetched` in the transaction that applies the record it named.

use super::sql::{query, query_scalar, At, Tx};
use super::{db, now_ms, Store, StoreError};
use crate::canonical::RecordHasher;
use crate::entity::{EntityWrite, WriteOutcome};
use crate::store::InboxOutcome;

/// A claimed key: fetch it, then [`Store::finish_fetch`] or [`Store::fail_fetch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchClaim {
    pub producer: String,
    pub key: String,
    /// The ask count at the claim.
    pub asked: i64,
    /// Failed attempts before this one.
    pub attempts: i64,
}

/// One key waiting to be fetched, as `driftd status` lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRow {
    pub producer: String,
    pub key: String,
    pub asked: i64,
    pub first_asked: i64,
    pub run_at: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// What became of the deltas that waited on a fetch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchSettled {
    /// The entity write's outcome, when a record (or a deletion) was written.
    pub write: Option<WriteOutcome>,
    /// Whether the key is done: false when it was asked again meanwhile (or
    /// the lease was lost), so it will be fetched again.
    pub done: bool,
    /// Deltas that became `fetched` (or `rejected`), with their channel.
    pub deltas: Vec<(i64, String)>,
}

/// How a finished fetch settles its key.
#[derive(Debug, Clone)]
pub enum FetchResult<'a> {
    /// The record (or its deletion) to write, the producer's hasher and buckets.
    Write {
        bucket_bits: u8,
        hasher: &'a RecordHasher,
        write: EntityWrite,
    },
    /// Nothing to write (a 404 that is ignored); the note kept on the deltas.
    Nothing { note: String },
    /// The fetch cannot succeed: the deltas waiting on it are rejected with the reason.
    GiveUp { reason: String },
}

impl Store {
    /// Asks for `keys` of `producer` to be fetched, inside `tx`; `inbox_id`
    /// is the delta that waits on them (`None` for a tie or a refresh).
    pub(crate) async fn ask_fetches_in(
        &self,
        tx: &mut Tx,
        producer: &str,
        keys: &[&str],
        inbox_id: Option<i64>,
        now: i64,
    ) -> Result<(), StoreError> {
        for key in keys {
            query(
                "INSERT INTO fetches (producer, key, first_asked, run_at) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (producer, key) DO UPDATE SET asked = fetches.asked + 1",
            )
            .bind(producer)
            .bind(*key)
            .bind(At(now))
            .execute(&mut *tx)
            .await
            .map_err(db("ask for a fetch"))?;
            if let Some(id) = inbox_id {
                query("INSERT INTO fetch_asks (producer, key, inbox_id) VALUES ($1, $2, $3)")
                    .bind(producer)
                    .bind(*key)
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("record which delta waits on a fetch"))?;
            }
        }
        Ok(())
    }

    /// Asks for `keys` of `producer` to be fetched (a refresh), due at once.
    pub async fn ask_fetches(&self, producer: &str, keys: &[&str]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        self.ask_fetches_in(&mut tx, producer, keys, None, now)
            .await?;
        for key in keys {
            query(
                "UPDATE fetches SET run_at = $3 WHERE producer = $1 AND key = $2 AND run_at > $3",
            )
            .bind(producer)
            .bind(*key)
            .bind(At(now))
            .execute(&mut tx)
            .await
            .map_err(db("make a fetch due"))?;
        }
        tx.commit().await.map_err(db("commit fetch asks"))?;
        Ok(())
    }

    /// Claims up to `limit` keys of `producer` due at `now` and not leased,
    /// for `worker`, leased for `lease_ms`; only `keys` when given.
    pub async fn claim_fetches(
        &self,
        producer: &str,
        worker: &str,
        limit: u32,
        lease_ms: i64,
        now: i64,
        keys: Option<&[&str]>,
    ) -> Result<Vec<FetchClaim>, StoreError> {
        let mut tx = self.begin_write().await?;
        let only = match keys {
            None => String::new(),
            Some(keys) => format!(" AND key {}", self.backend.any(6, keys.len())),
        };
        let sql = format!(
            "UPDATE fetches SET locked_by = $2, locked_until = $3
             WHERE (producer, key) IN (
               SELECT producer, key FROM fetches
               WHERE producer = $1 AND run_at <= $4 AND (locked_until IS NULL OR locked_until <= $4){only}
               ORDER BY run_at, key LIMIT $5{})
             RETURNING producer, key, asked, attempts",
            self.backend.skip_locked()
        );
        let q = query(&sql)
            .bind(producer)
            .bind(worker)
            .bind(At(now + lease_ms))
            .bind(At(now))
            .bind(i64::from(limit));
        let q = match keys {
            None => q,
            Some(keys) => self
                .backend
                .bind_any(q, keys.iter().map(|k| k.to_string()).collect()),
        };
        let rows = q.fetch_all(&mut tx).await.map_err(db("claim fetches"))?;
        tx.commit().await.map_err(db("commit a fetch claim"))?;
        rows.iter()
            .map(|r| {
                Ok(FetchClaim {
                    producer: r.try_get(0).map_err(db("read a fetch claim"))?,
                    key: r.try_get(1).map_err(db("read a fetch claim"))?,
                    asked: r.try_get(2).map_err(db("read a fetch claim"))?,
                    attempts: r.try_get(3).map_err(db("read a fetch claim"))?,
                })
            })
            .collect()
    }

    /// Commits a fetch of `claim` held by `worker`: the record written (as
    /// `result` says), and, unless the key was asked again meanwhile, the
    /// key done and every delta waiting only on it `fetched` (`rejected` on
    /// `GiveUp`), all in one transaction.
    pub async fn finish_fetch(
        &self,
        claim: &FetchClaim,
        worker: &str,
        result: FetchResult<'_>,
    ) -> Result<FetchSettled, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_ms();
        let (write, note, outcome) = match result {
            FetchResult::Write {
                bucket_bits,
                hasher,
                write,
            } => {
                let done = self
                    .write_entities_in(
                        &mut tx,
                        &claim.producer,
                        bucket_bits,
                        hasher,
                        std::slice::from_ref(&write),
                    )
                    .await?;
                (done.first().copied(), None, InboxOutcome::Fetched)
            }
            FetchResult::Nothing { note } => (None, Some(note), InboxOutcome::Fetched),
            FetchResult::GiveUp { reason } => (None, Some(reason), InboxOutcome::Rejected),
        };
        let gone = query(
            "DELETE FROM fetches WHERE producer = $1 AND key = $2 AND asked = $3 AND locked_by = $4",
        )
        .bind(&claim.producer)
        .bind(&claim.key)
        .bind(claim.asked)
        .bind(worker)
        .execute(&mut tx)
        .await
        .map_err(db("finish a fetch"))?
        .rows_affected();
        let mut deltas = Vec::new();
        if gone == 1 {
            let waiting: Vec<i64> = query_scalar(
                "DELETE FROM fetch_asks WHERE producer = $1 AND key = $2 RETURNING inbox_id",
            )
            .bind(&claim.producer)
            .bind(&claim.key)
            .fetch_all(&mut tx)
            .await
            .map_err(db("settle a fetch's asks"))?;
            for id in waiting {
                // A delta that named several keys waits for all of them.
                let settled = query(
                    "UPDATE inbox SET outcome = $2, error = $3, applied_at = $4
                     WHERE id = $1 AND outcome = 'fetching'
                       AND NOT EXISTS (SELECT 1 FROM fetch_asks a WHERE a.inbox_id = inbox.id)
                     RETURNING channel",
                )
                .bind(id)
                .bind(outcome.as_str())
                .bind(note.as_deref())
                .bind(At(now))
                .fetch_optional(&mut tx)
                .await
                .map_err(db("settle a fetched delta"))?;
                if let Some(r) = settled {
                    deltas.push((id, r.try_get(0).map_err(db("read a delta's channel"))?));
                }
            }
        } else {
            query(
                "UPDATE fetches SET locked_by = NULL, locked_until = NULL, attempts = 0,
                   last_error = NULL, run_at = $4
                 WHERE producer = $1 AND key = $2 AND locked_by = $3",
            )
            .bind(&claim.producer)
            .bind(&claim.key)
            .bind(worker)
            .bind(At(now))
            .execute(&mut tx)
            .await
            .map_err(db("make a fetch due again"))?;
        }
        tx.commit().await.map_err(db("commit a fetch"))?;
        if write == Some(WriteOutcome::Applied) {
            self.changes_committed(&claim.producer).await;
        }
        Ok(FetchSettled {
            write,
            done: gone == 1,
            deltas,
        })
    }

    /// Holders of `producer`'s keys still leased at `now`.
    pub async fn fetch_holders(&self, producer: &str, now: i64) -> Result<Vec<String>, StoreError> {
        query_scalar(
            "SELECT DISTINCT locked_by FROM fetches
             WHERE producer = $1 AND locked_by IS NOT NULL AND locked_until > $2",
        )
        .bind(producer)
        .bind(At(now))
        .fetch_all(&self.pool)
        .await
        .map_err(db("read fetch lease holders"))
    }

    /// Releases every key of `producer` leased by `holder` (a process that
    /// stopped without releasing them), due at once; how many.
    pub(crate) async fn release_fetches_of(
        &self,
        producer: &str,
        holder: &str,
    ) -> Result<u64, StoreError> {
        let done = query(
            "UPDATE fetches SET locked_by = NULL, locked_until = NULL
             WHERE producer = $1 AND locked_by = $2",
        )
        .bind(producer)
        .bind(holder)
        .execute(&self.pool)
        .await
        .map_err(db("release the fetches of a stopped process"))?;
        Ok(done.rows_affected())
    }

    /// Records a failed fetch of `claim`: the key stays asked, due again at
    /// `retry_at`, with the error shown in `status`; `attempt` counts it
    /// (a fetch stopped by a shutdown does not).
    pub async fn fail_fetch(
        &self,
        claim: &FetchClaim,
        worker: &str,
        error: &str,
        retry_at: i64,
        attempt: bool,
    ) -> Result<(), StoreError> {
        query(
            "UPDATE fetches SET locked_by = NULL, locked_until = NULL, attempts = attempts + $6,
               last_error = $4, run_at = $5
             WHERE producer = $1 AND key = $2 AND locked_by = $3",
        )
        .bind(&claim.producer)
        .bind(&claim.key)
        .bind(worker)
        .bind(error)
        .bind(At(retry_at))
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await
        .map_err(db("record a failed fetch"))?;
        Ok(())
    }

    /// Keys waiting to be fetched, oldest ask first (`producer` only, when given).
    pub async fn pending_fetches(
        &self,
        producer: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FetchRow>, StoreError> {
        let rows = query(
            "SELECT producer, key, asked, first_asked, run_at, attempts, last_error FROM fetches
             WHERE $1 IS NULL OR producer = $1 ORDER BY first_asked, producer, key LIMIT $2",
        )
        .bind(producer)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list pending fetches"))?;
        rows.iter()
            .map(|r| {
                let get = db("read a pending fetch");
                Ok(FetchRow {
                    producer: r.try_get(0).map_err(get)?,
                    key: r.try_get(1).map_err(get)?,
                    asked: r.try_get(2).map_err(get)?,
                    first_asked: r.try_get(3).map_err(get)?,
                    run_at: r.try_get(4).map_err(get)?,
                    attempts: r.try_get(5).map_err(get)?,
                    last_error: r.try_get(6).map_err(get)?,
                })
            })
            .collect()
    }

    /// Keys waiting to be fetched, per producer.
    pub async fn fetch_backlog(
        &self,
    ) -> Result<std::collections::BTreeMap<String, i64>, StoreError> {
        let rows = query("SELECT producer, COUNT(*) FROM fetches GROUP BY producer")
            .fetch_all(&self.pool)
            .await
            .map_err(db("count pending fetches"))?;
        rows.iter()
            .map(|r| {
                let get = db("read a fetch count");
                Ok((r.try_get(0).map_err(get)?, r.try_get(1).map_err(get)?))
            })
            .collect()
    }
}
