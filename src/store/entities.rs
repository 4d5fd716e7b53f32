//! Entity writes and reads: every write updates its bucket digest and appends to the hash-chained `changes` log in one transaction.
//!
//! On SQLite every write transaction of a producer first locks that
//! producer's row in `chain_heads` (its write turn) and chains its `changes`
//! rows as it appends them. On PostgreSQL a writer locks only the keys it
//! writes and leaves the chaining to a sealer after commit (`seal.rs`, and
//! ARCHITECTURE.md for why that stays exact). Which write wins, what a batch
//! does and how the chain links is `entity::plan_batch`'s to decide: this
//! file reads the rows it needs and flushes the plan.

use std::collections::{BTreeMap, HashMap};

use futures::TryStreamExt;
use serde_json::Value;

use super::sql::{column, query, Arr, At, Json, Row, Tx};
use super::{anonymous_rows, db, now_ms, placeholders, Backend, Store, StoreError};
use crate::canonical::{bucket_of, Digest, RecordHash, RecordHasher};
use crate::entity::{
    plan_batch, ChainHead, ChangeLink, EntityWrite, LocalRow, RowWrite, Source, StoredRow,
    WriteOutcome,
};

/// A stored entity. A deleted entity is kept as a tombstone (no doc, no hash)
/// so its version still orders later deltas; tombstones are not in any digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub key: String,
    pub doc: Option<Value>,
    pub hash: Option<RecordHash>,
    pub bucket: u32,
    pub version: Option<i64>,
    pub deleted: bool,
    pub source: Source,
    pub updated_at: i64,
}

/// What [`Store::ensure_layout`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayout {
    /// `bucket_bits` differed from the recorded layout: rows renumbered.
    pub buckets: bool,
    /// The hashing rules differed: every stored hash recomputed from its document.
    pub hashes: bool,
    /// Rows of the producer seen (tombstones included).
    pub rows: u64,
}

impl Relayout {
    /// Whether stored rows changed layout (a first record of an empty producer does not count).
    pub fn rebuilt(&self) -> bool {
        (self.buckets || self.hashes) && self.rows > 0
    }
}

/// The first broken link `verify_chain` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The row where the chain breaks; the last intact row for a cut-off tail
    /// (`None` when no row of the producer is left).
    pub id: Option<i64>,
    pub producer: String,
    pub seq: i64,
    pub reason: String,
}

impl Store {
    /// Applies `writes` to one producer's entities in one transaction.
    pub async fn write_entities(
        &self,
        producer: &str,
        bucket_bits: u8,
        hasher: &RecordHasher,
        writes: &[EntityWrite],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let mut tx = self.begin_write().await?;
        let outcomes = self
            .write_entities_in(&mut tx, producer, bucket_bits, hasher, writes)
            .await?;
        tx.commit().await.map_err(db("commit entity writes"))?;
        if outcomes.contains(&WriteOutcome::Applied) {
            self.changes_committed(producer).await;
        }
        Ok(outcomes)
    }

    /// Takes the producer's `chain_heads` row inside `tx` and returns the
    /// chain head: on SQLite every entity write of a producer does (the
    /// producer's write turn), on PostgreSQL only a sealer.
    pub(super) async fn lock_head(
        &self,
        tx: &mut Tx,
        producer: &str,
    ) -> Result<ChainHead, StoreError> {
        // One statement creates the head if missing and locks it either way
        // (an upsert's update locks the row as `FOR UPDATE` would).
        let head = query(
            "INSERT INTO chain_heads (producer, seq, chain) VALUES ($1, 0, $2)
             ON CONFLICT (producer) DO UPDATE SET seq = chain_heads.seq
             RETURNING seq, chain",
        )
        .bind(producer)
        .bind(ChainHead::GENESIS.chain.to_vec())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("lock the chain head"))?;
        let seq: i64 = head.try_get(0).map_err(db("read the chain head"))?;
        let chain: Vec<u8> = head.try_get(1).map_err(db("read the chain head"))?;
        let chain = <[u8; 32]>::try_from(chain.as_slice()).map_err(|_| StoreError::Corrupt {
            table: "chain_heads",
            reason: format!("chain of producer {producer:?} is not 32 bytes"),
        })?;
        Ok(ChainHead { seq, chain })
    }

    /// Makes the stored rows of `producer` follow its layout: bucket numbers
    /// of `bucket_bits`, and hashes under `hasher`'s rules (its ignored
    /// pointers). When either differs from what is recorded in `layouts`,
    /// every row is renumbered and rehashed from its stored document and the
    /// bucket digests are rebuilt, under the producer's write lock, so no
    /// entity write interleaves and a changed layout is never mistaken for
    /// drift. A rehash appends nothing to `changes`: no document changed.
    pub async fn ensure_layout(
        &self,
        producer: &str,
        bucket_bits: u8,
        hasher: &RecordHasher,
    ) -> Result<Relayout, StoreError> {
        let rules = hasher.fingerprint();
        let mut tx = self.begin_write().await?;
        match self.backend {
            Backend::Sqlite => {
                self.lock_head(&mut tx, producer).await?;
            }
            // Exclusive: every writer of the producer holds it shared.
            Backend::Postgres => {
                query("SELECT pg_advisory_xact_lock($1)")
                    .bind(super::seal::producer_lock(producer))
                    .execute(&mut tx)
                    .await
                    .map_err(db("lock the producer for a re-layout"))?;
            }
        }
        let stored = query("SELECT bucket_bits, hash_rules FROM layouts WHERE producer = $1")
            .bind(producer)
            .fetch_optional(&mut tx)
            .await
            .map_err(db("read the layout"))?;
        let (bits, stored_rules): (Option<i64>, Option<String>) = match &stored {
            Some(r) => (
                r.try_get(0).map_err(db("read the layout"))?,
                r.try_get(1).map_err(db("read the layout"))?,
            ),
            None => (None, None),
        };
        let mut relayout = Relayout {
            buckets: bits != Some(i64::from(bucket_bits)),
            hashes: stored_rules.as_deref() != Some(rules.as_str()),
            rows: 0,
        };
        if relayout.buckets || relayout.hashes {
            relayout.rows = self
                .relayout_rows(
                    &mut tx,
                    producer,
                    bucket_bits,
                    relayout.hashes.then_some(hasher),
                )
                .await?;
            query(
                "INSERT INTO layouts (producer, bucket_bits, hash_rules) VALUES ($1, $2, $3)
                 ON CONFLICT (producer) DO UPDATE SET bucket_bits = excluded.bucket_bits,
                   hash_rules = excluded.hash_rules",
            )
            .bind(producer)
            .bind(i64::from(bucket_bits))
            .bind(&rules)
            .execute(&mut tx)
            .await
            .map_err(db("record the layout"))?;
        }
        tx.commit().await.map_err(db("commit the layout"))?;
        Ok(relayout)
    }

    /// Renumbers (and, given a hasher, rehashes) every row of `producer` a
    /// page at a time, then rebuilds its bucket digests. Returns the rows seen.
    async fn relayout_rows(
        &self,
        tx: &mut Tx,
        producer: &str,
        bucket_bits: u8,
        rehash: Option<&RecordHasher>,
    ) -> Result<u64, StoreError> {
        const PAGE: i64 = 1_000;
        let mut digests: BTreeMap<u32, Digest> = BTreeMap::new();
        let mut after = String::new();
        let mut seen = 0u64;
        loop {
            let page = query(
                "SELECT key, doc, hash, bucket FROM entities WHERE producer = $1 AND key > $2
                 ORDER BY key LIMIT $3",
            )
            .bind(producer)
            .bind(&after)
            .bind(PAGE)
            .fetch_all(&mut *tx)
            .await
            .map_err(db("read rows to re-lay out"))?;
            let Some(last) = page.last() else { break };
            after = last.try_get(0).map_err(db("read rows to re-lay out"))?;
            seen += page.len() as u64;
            let mut updates: Vec<(String, Option<RecordHash>, u32)> = Vec::new();
            for r in &page {
                let e = db("read rows to re-lay out");
                let key: String = r.try_get(0).map_err(e)?;
                let old_hash = hash_col(r, 2)?;
                let old_bucket = r.try_get::<i64>(3).map_err(e)? as u32;
                let hash = match rehash {
                    None => old_hash,
                    Some(hasher) => {
                        let doc: Option<String> = r.try_get(1).map_err(e)?;
                        doc.map(|d| {
                            serde_json::from_str::<Value>(&d)
                                .map(|v| hasher.hash(&v))
                                .map_err(|err| StoreError::Corrupt {
                                    table: "entities",
                                    reason: format!("doc of key {key:?} is not JSON: {err}"),
                                })
                        })
                        .transpose()?
                    }
                };
                let bucket = bucket_of(&key, bucket_bits);
                if let Some(h) = &hash {
                    digests.entry(bucket).or_default().add(&key, h);
                }
                if hash != old_hash || bucket != old_bucket {
                    updates.push((key, hash, bucket));
                }
            }
            for chunk in updates.chunks(self.backend.batch()) {
                let q = match self.backend {
                    Backend::Sqlite => {
                        // Every row exists (the producer's lock is held): the
                        // insert part never applies, only the update.
                        let sql = format!(
                            "INSERT INTO entities (producer, key, hash, bucket, source, updated_at) VALUES {}
                             ON CONFLICT (producer, key) DO UPDATE SET hash = excluded.hash, bucket = excluded.bucket",
                            placeholders(chunk.len(), 2, "($1, ?, ?, ?, '', 0)")
                        );
                        let mut q = query(&sql).bind(producer);
                        for (key, hash, bucket) in chunk {
                            q = q
                                .bind(key.as_str())
                                .bind(hash.map(|h| h.0.to_vec()))
                                .bind(i64::from(*bucket));
                        }
                        q.execute(&mut *tx).await
                    }
                    Backend::Postgres => {
                        query(
                            "UPDATE entities SET hash = u.hash, bucket = u.bucket
                         FROM UNNEST($2::text[], $3::bytea[], $4::bigint[]) AS u (key, hash, bucket)
                         WHERE entities.producer = $1 AND entities.key = u.key",
                        )
                        .bind(producer)
                        .bind(Arr(chunk.iter().map(|u| u.0.clone()).collect()))
                        .bind(Arr(chunk
                            .iter()
                            .map(|u| u.1.map(|h| h.0.to_vec()))
                            .collect()))
                        .bind(Arr(chunk.iter().map(|u| i64::from(u.2)).collect()))
                        .execute(&mut *tx)
                        .await
                    }
                };
                q.map_err(db("re-lay out entities"))?;
            }
        }
        query("DELETE FROM buckets WHERE producer = $1")
            .bind(producer)
            .execute(&mut *tx)
            .await
            .map_err(db("clear bucket digests"))?;
        self.add_to_buckets(tx, producer, &digests).await?;
        Ok(seen)
    }

    /// The body of [`Store::write_entities`], inside a caller's transaction.
    pub(crate) async fn write_entities_in(
        &self,
        tx: &mut Tx,
        producer: &str,
        bucket_bits: u8,
        hasher: &RecordHasher,
        writes: &[EntityWrite],
    ) -> Result<Vec<WriteOutcome>, StoreError> {
        let now = now_ms();
        let keys: Vec<&str> = {
            let mut k: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
            k.sort_unstable();
            k.dedup();
            k
        };
        // SQLite: the producer's write turn, and the chain links are made
        // here. PostgreSQL: the batch's keys only; a sealer links the rows
        // after commit (see `seal.rs`).
        let head = match self.backend {
            Backend::Sqlite => self.lock_head(tx, producer).await?,
            Backend::Postgres => {
                self.lock_keys(tx, producer, &keys).await?;
                ChainHead::GENESIS
            }
        };
        // The first write of a producer records the layout its bucket numbers
        // and hashes use. A row found there is committed (an insert waits for
        // a concurrent one to end), so this process need not look again.
        let known = |layouts: &std::sync::Mutex<std::collections::HashSet<String>>| {
            layouts
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(producer)
        };
        if !known(&self.layouts) {
            let inserted = query(
                "INSERT INTO layouts (producer, bucket_bits, hash_rules) VALUES ($1, $2, $3)
                 ON CONFLICT (producer) DO NOTHING",
            )
            .bind(producer)
            .bind(i64::from(bucket_bits))
            .bind(hasher.fingerprint())
            .execute(&mut *tx)
            .await
            .map_err(db("record the bucket layout"))?;
            if inserted.rows_affected() == 0 {
                self.layouts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(producer.to_string());
            }
        }

        // Read every touched row once, let the plan decide each write in
        // order, then flush it with multi-row statements: a batch costs a
        // handful of round trips, not a few per row.
        let current = self.current_many(tx, producer, &keys).await?;
        let plan = plan_batch(current, writes, hasher, bucket_bits, producer, head, now);
        const UPSERT: &str = "ON CONFLICT (producer, key) DO UPDATE SET doc = excluded.doc,
               hash = excluded.hash, bucket = excluded.bucket, version = excluded.version,
               deleted = excluded.deleted, source = excluded.source, updated_at = excluded.updated_at";
        for chunk in plan.rows.chunks(self.backend.batch()) {
            let q = match self.backend {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO entities (producer, key, doc, hash, bucket, version, deleted, source, updated_at)
                         VALUES {} {UPSERT}",
                        anonymous_rows(chunk.len(), "(?, ?, ?, ?, ?, ?, ?, ?, ?)")
                    );
                    let mut q = query(&sql);
                    for RowWrite { key, row, source } in chunk {
                        q = q
                            .bind(producer)
                            .bind(*key)
                            .bind(row.doc.as_ref().map(Json::of))
                            .bind(row.hash.map(|h| h.0.to_vec()))
                            .bind(i64::from(row.bucket))
                            .bind(row.version)
                            .bind(row.deleted)
                            .bind(source.as_str())
                            .bind(At(now));
                    }
                    q.execute(&mut *tx).await
                }
                Backend::Postgres => {
                    let sql = format!(
                        "INSERT INTO entities (producer, key, doc, hash, bucket, version, deleted, source, updated_at)
                         SELECT $1, u.*, $2 FROM UNNEST($3::text[], $4::jsonb[], $5::bytea[], $6::bigint[],
                           $7::bigint[], $8::boolean[], $9::text[]) AS u {UPSERT}"
                    );
                    query(&sql)
                        .bind(producer)
                        .bind(At(now))
                        .bind(column(chunk, |w| w.key.to_string()))
                        .bind(column(chunk, |w| w.row.doc.as_ref().map(Json::of)))
                        .bind(column(chunk, |w| w.row.hash.map(|h| h.0.to_vec())))
                        .bind(column(chunk, |w| i64::from(w.row.bucket)))
                        .bind(column(chunk, |w| w.row.version))
                        .bind(column(chunk, |w| w.row.deleted))
                        .bind(column(chunk, |w| w.source.as_str().to_string()))
                        .execute(&mut *tx)
                        .await
                }
            };
            q.map_err(db("write entities"))?;
        }
        self.add_to_buckets(tx, producer, &plan.buckets).await?;
        for chunk in plan.links.chunks(self.backend.batch()) {
            let q = match self.backend {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO changes (producer, seq, key, op, hash, version, source, at, chain) VALUES {}",
                        anonymous_rows(chunk.len(), "(?, ?, ?, ?, ?, ?, ?, ?, ?)")
                    );
                    let mut q = query(&sql);
                    for l in chunk {
                        q = q
                            .bind(producer)
                            .bind(l.seq)
                            .bind(l.key)
                            .bind(l.op)
                            .bind(l.hash.map(|h| h.0.to_vec()))
                            .bind(l.version)
                            .bind(l.source.as_str())
                            .bind(At(now))
                            .bind(l.chain.to_vec());
                    }
                    q.execute(&mut *tx).await
                }
                // Unsealed: `seq` and `chain` are the sealer's to set.
                Backend::Postgres => {
                    query(
                        "INSERT INTO changes (producer, key, op, hash, version, source, at)
                         SELECT $1, u.*, $2 FROM UNNEST($3::text[], $4::text[], $5::bytea[],
                           $6::bigint[], $7::text[]) AS u",
                    )
                    .bind(producer)
                    .bind(At(now))
                    .bind(column(chunk, |l| l.key.to_string()))
                    .bind(column(chunk, |l| l.op.to_string()))
                    .bind(column(chunk, |l| l.hash.map(|h| h.0.to_vec())))
                    .bind(column(chunk, |l| l.version))
                    .bind(column(chunk, |l| l.source.as_str().to_string()))
                    .execute(&mut *tx)
                    .await
                }
            };
            q.map_err(db("append to the changes log"))?;
        }
        if self.backend == Backend::Sqlite {
            query("UPDATE chain_heads SET seq = $2, chain = $3 WHERE producer = $1")
                .bind(producer)
                .bind(plan.head.seq)
                .bind(plan.head.chain.to_vec())
                .execute(&mut *tx)
                .await
                .map_err(db("advance the chain head"))?;
        }
        Ok(plan.outcomes)
    }

    /// The stored rows of `keys` (sorted, unique); absent keys are left out.
    async fn current_many<'k>(
        &self,
        tx: &mut Tx,
        producer: &str,
        keys: &[&'k str],
    ) -> Result<HashMap<&'k str, StoredRow>, StoreError> {
        let mut out: HashMap<&'k str, StoredRow> = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(self.backend.batch()) {
            let sql = format!(
                "SELECT key, doc, hash, bucket, version, deleted FROM entities
                 WHERE producer = $1 AND key {}",
                self.backend.any(2, chunk.len())
            );
            let q = query(&sql).bind(producer);
            let q = self
                .backend
                .bind_any(q, chunk.iter().map(|k| k.to_string()).collect());
            for row in q.fetch_all(&mut *tx).await.map_err(db("read entities"))? {
                let e = db("read an entity");
                let key: String = row.try_get(0).map_err(e)?;
                let doc: Option<String> = row.try_get(1).map_err(e)?;
                let doc = doc
                    .map(|d| serde_json::from_str(&d))
                    .transpose()
                    .map_err(|err| StoreError::Corrupt {
                        table: "entities",
                        reason: format!("doc of key {key:?} is not JSON: {err}"),
                    })?;
                let current = StoredRow {
                    doc,
                    hash: hash_col(&row, 2)?,
                    bucket: row.try_get::<i64>(3).map_err(e)? as u32,
                    version: row.try_get(4).map_err(e)?,
                    deleted: row.try_get(5).map_err(e)?,
                };
                if let Some(slot) = chunk.iter().find(|k| **k == key) {
                    out.insert(slot, current);
                }
            }
        }
        Ok(out)
    }

    /// Adds digest deltas to their buckets (multi-row upserts; empty deltas skipped).
    async fn add_to_buckets(
        &self,
        tx: &mut Tx,
        producer: &str,
        deltas: &BTreeMap<u32, Digest>,
    ) -> Result<(), StoreError> {
        let changed: Vec<(&u32, &Digest)> = deltas.iter().filter(|(_, d)| !d.is_empty()).collect();
        const ADD: &str =
            "ON CONFLICT (producer, bucket) DO UPDATE SET rows = buckets.rows + excluded.rows,
               l0 = buckets.l0 + excluded.l0, l1 = buckets.l1 + excluded.l1,
               l2 = buckets.l2 + excluded.l2, l3 = buckets.l3 + excluded.l3";
        for chunk in changed.chunks(self.backend.batch()) {
            let q = match self.backend {
                Backend::Sqlite => {
                    let sql = format!(
                        "INSERT INTO buckets (producer, bucket, rows, l0, l1, l2, l3) VALUES {} {ADD}",
                        anonymous_rows(chunk.len(), "(?, ?, ?, ?, ?, ?, ?)")
                    );
                    let mut q = query(&sql);
                    for (bucket, d) in chunk {
                        q = q
                            .bind(producer)
                            .bind(i64::from(**bucket))
                            .bind(d.rows)
                            .bind(d.lanes[0])
                            .bind(d.lanes[1])
                            .bind(d.lanes[2])
                            .bind(d.lanes[3]);
                    }
                    q.execute(&mut *tx).await
                }
                Backend::Postgres => {
                    let sql = format!(
                        "INSERT INTO buckets (producer, bucket, rows, l0, l1, l2, l3)
                         SELECT $1, u.* FROM UNNEST($2::bigint[], $3::bigint[], $4::bigint[],
                           $5::bigint[], $6::bigint[], $7::bigint[]) AS u {ADD}"
                    );
                    query(&sql)
                        .bind(producer)
                        .bind(column(chunk, |(b, _)| i64::from(**b)))
                        .bind(column(chunk, |(_, d)| d.rows))
                        .bind(column(chunk, |(_, d)| d.lanes[0]))
                        .bind(column(chunk, |(_, d)| d.lanes[1]))
                        .bind(column(chunk, |(_, d)| d.lanes[2]))
                        .bind(column(chunk, |(_, d)| d.lanes[3]))
                        .execute(&mut *tx)
                        .await
                }
            };
            q.map_err(db("update bucket digests"))?;
        }
        Ok(())
    }

    /// Reads one entity, tombstones included.
    pub async fn entity(&self, producer: &str, key: &str) -> Result<Option<Entity>, StoreError> {
        let row = query(
            "SELECT key, doc, hash, bucket, version, deleted, source, updated_at
             FROM entities WHERE producer = $1 AND key = $2",
        )
        .bind(producer)
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(db("read an entity"))?;
        row.map(|r| entity_from_row(&r)).transpose()
    }

    /// Every live entity of a producer, in key order (for tests, exports and the naive compare).
    pub async fn entities(&self, producer: &str) -> Result<Vec<Entity>, StoreError> {
        query(
            "SELECT key, doc, hash, bucket, version, deleted, source, updated_at
             FROM entities WHERE producer = $1 AND deleted = FALSE ORDER BY key",
        )
        .bind(producer)
        .fetch(&self.pool)
        .map_err(db("read entities"))
        .and_then(|r| async move { entity_from_row(&r) })
        .try_collect()
        .await
    }

    /// A page of live entities in key order, after `after` (keyset paging).
    pub(crate) async fn entity_page(
        &self,
        producer: &str,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<Entity>, StoreError> {
        query(
            "SELECT key, doc, hash, bucket, version, deleted, source, updated_at
             FROM entities WHERE producer = $1 AND deleted = FALSE AND key > $2
             ORDER BY key LIMIT $3",
        )
        .bind(producer)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch(&self.pool)
        .map_err(db("read a page of entities"))
        .and_then(|r| async move { entity_from_row(&r) })
        .try_collect()
        .await
    }

    /// Live entities of a producer: the sum of its bucket digests' row counts,
    /// which every write keeps exact, so no scan of `entities` is needed (the
    /// gauge refresher asks every two seconds).
    pub async fn count_entities(&self, producer: &str) -> Result<i64, StoreError> {
        query("SELECT CAST(COALESCE(SUM(rows), 0) AS BIGINT) FROM buckets WHERE producer = $1")
            .bind(producer)
            .fetch_one(&self.pool)
            .await
            .and_then(|r| r.try_get(0))
            .map_err(db("count entities"))
    }

    /// `(key, hash, version)` of every row, tombstones included, in the given buckets.
    pub async fn rows_in_buckets(
        &self,
        producer: &str,
        buckets: &[u32],
    ) -> Result<Vec<LocalRow>, StoreError> {
        let mut out = Vec::new();
        for chunk in buckets.chunks(self.backend.batch()) {
            let sql = format!(
                "SELECT key, hash, version, deleted, updated_at FROM entities
                 WHERE producer = $1 AND bucket {}",
                self.backend.any(2, chunk.len())
            );
            let q = query(&sql).bind(producer);
            let q = self
                .backend
                .bind_any(q, chunk.iter().map(|b| i64::from(*b)).collect());
            let rows = q
                .fetch_all(&self.pool)
                .await
                .map_err(db("read rows of buckets"))?;
            for r in rows {
                out.push(LocalRow {
                    key: r.try_get(0).map_err(db("read rows of buckets"))?,
                    hash: hash_col(&r, 1)?,
                    version: r.try_get(2).map_err(db("read rows of buckets"))?,
                    deleted: r.try_get(3).map_err(db("read rows of buckets"))?,
                    updated_at: r.try_get(4).map_err(db("read rows of buckets"))?,
                });
            }
        }
        Ok(out)
    }

    /// Every non-empty bucket digest of a producer.
    pub async fn bucket_digests(&self, producer: &str) -> Result<Vec<(u32, Digest)>, StoreError> {
        query(
            "SELECT bucket, rows, l0, l1, l2, l3 FROM buckets WHERE producer = $1 AND
             (rows <> 0 OR l0 <> 0 OR l1 <> 0 OR l2 <> 0 OR l3 <> 0) ORDER BY bucket",
        )
        .bind(producer)
        .fetch(&self.pool)
        .map_err(db("read bucket digests"))
        .and_then(|r| async move {
            let get = |i| r.try_get::<i64>(i).map_err(db("read bucket digests"));
            Ok((
                get(0)? as u32,
                Digest {
                    rows: get(1)?,
                    lanes: [get(2)?, get(3)?, get(4)?, get(5)?],
                },
            ))
        })
        .try_collect()
        .await
    }

    /// Walks every producer's `changes` chain and returns the first broken link.
    ///
    /// The walk ends at each producer's recorded chain head (read first, so
    /// rows appended while it runs are left for the next walk): a log that
    /// stops short of its head was cut off, and a head that points past the
    /// log, or a log with no head, is broken too.
    pub async fn verify_chain(&self) -> Result<(u64, Option<ChainBreak>), StoreError> {
        // Rows still unsealed are not part of the chain yet: seal them first.
        self.seal_all().await?;
        let heads: BTreeMap<String, (i64, Vec<u8>)> =
            query("SELECT producer, seq, chain FROM chain_heads")
                .fetch_all(&self.pool)
                .await
                .map_err(db("read the chain heads"))?
                .iter()
                .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(db("read the chain heads"))?;
        let mut rows = query(
            "SELECT id, producer, seq, key, op, hash, version, source, at, chain
             FROM changes WHERE seq IS NOT NULL ORDER BY producer, seq",
        )
        .fetch(&self.pool);
        let mut checked = 0u64;
        // The producer being walked: its name, last row id, last seq, last chain.
        let mut walk: Option<(String, Option<i64>, i64, [u8; 32])> = None;
        let mut walked: Vec<String> = Vec::new();
        while let Some(r) = rows.try_next().await.map_err(db("read the changes log"))? {
            let read = db("read the changes log");
            let id: i64 = r.try_get(0).map_err(read)?;
            let p: String = r.try_get(1).map_err(read)?;
            let seq: i64 = r.try_get(2).map_err(read)?;
            if walk.as_ref().is_none_or(|(name, ..)| *name != p) {
                if let Some((name, last_id, last_seq, last_chain)) = walk.take() {
                    if let Some(b) = end_at_head(&heads, &name, last_id, last_seq, &last_chain) {
                        return Ok((checked, Some(b)));
                    }
                    walked.push(name);
                }
                walk = Some((p.clone(), None, 0, ChainHead::GENESIS.chain));
            }
            let (_, last_id, last_seq, prev) = walk.as_mut().expect("set above");
            if heads.get(&p).is_some_and(|(head, _)| seq > *head) {
                // Appended after the heads were read: the next walk checks it.
                continue;
            }
            let broken = |reason: String| ChainBreak {
                id: Some(id),
                producer: p.clone(),
                seq,
                reason,
            };
            let expected_seq = *last_seq + 1;
            if seq != expected_seq {
                return Ok((
                    checked,
                    Some(broken(format!("expected seq {expected_seq}, found {seq}"))),
                ));
            }
            let key: String = r.try_get(3).map_err(read)?;
            let op: String = r.try_get(4).map_err(read)?;
            let hash = hash_col(&r, 5)?;
            let version: Option<i64> = r.try_get(6).map_err(read)?;
            let source: String = r.try_get(7).map_err(read)?;
            let at: i64 = r.try_get(8).map_err(read)?;
            let stored: Vec<u8> = r.try_get(9).map_err(read)?;
            let link = ChangeLink {
                producer: &p,
                seq,
                key: &key,
                op: &op,
                hash: hash.as_ref(),
                version,
                source: &source,
                at,
            };
            let computed = link.chain(prev);
            if stored != computed {
                return Ok((
                    checked,
                    Some(broken("chain does not match the row's content".into())),
                ));
            }
            *prev = computed;
            *last_id = Some(id);
            *last_seq = seq;
            checked += 1;
        }
        if let Some((name, last_id, last_seq, last_chain)) = walk.take() {
            if let Some(b) = end_at_head(&heads, &name, last_id, last_seq, &last_chain) {
                return Ok((checked, Some(b)));
            }
            walked.push(name);
        }
        // A head whose producer has no rows at all: its log was cut off whole.
        for (name, (seq, _)) in &heads {
            if *seq > 0 && !walked.contains(name) {
                return Ok((
                    checked,
                    Some(ChainBreak {
                        id: None,
                        producer: name.clone(),
                        seq: *seq,
                        reason: format!(
                            "the chain head records seq {seq} but the log has no rows: rows 1 to {seq} are missing"
                        ),
                    }),
                ));
            }
        }
        Ok((checked, None))
    }
}

/// Whether a producer's walk, which ended at `last_seq` with `last_chain`,
/// reached the chain head recorded for it.
fn end_at_head(
    heads: &BTreeMap<String, (i64, Vec<u8>)>,
    producer: &str,
    last_id: Option<i64>,
    last_seq: i64,
    last_chain: &[u8; 32],
) -> Option<ChainBreak> {
    let broken = |seq, reason| {
        Some(ChainBreak {
            id: last_id,
            producer: producer.to_string(),
            seq,
            reason,
        })
    };
    match heads.get(producer) {
        None => broken(
            last_seq,
            "the log has rows but no chain head records them".to_string(),
        ),
        Some((head, _)) if last_seq < *head => broken(
            last_seq + 1,
            format!(
                "the log ends at seq {last_seq} but the chain head records seq {head}: rows {} to {head} are missing",
                last_seq + 1
            ),
        ),
        Some((head, chain)) if chain.as_slice() != last_chain.as_slice() => broken(
            *head,
            "the chain head does not match the last row of the log".to_string(),
        ),
        Some(_) => None,
    }
}

fn hash_col(row: &Row, i: usize) -> Result<Option<RecordHash>, StoreError> {
    let bytes: Option<Vec<u8>> = row.try_get(i).map_err(db("read a hash"))?;
    bytes
        .map(|b| {
            RecordHash::from_slice(&b).ok_or_else(|| StoreError::Corrupt {
                table: "entities",
                reason: format!("hash of {} bytes", b.len()),
            })
        })
        .transpose()
}

fn entity_from_row(r: &Row) -> Result<Entity, StoreError> {
    let key: String = r.try_get(0).map_err(db("read an entity"))?;
    let doc: Option<String> = r.try_get(1).map_err(db("read an entity"))?;
    let doc = doc
        .map(|d| serde_json::from_str(&d))
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            table: "entities",
            reason: format!("doc of key {key:?} is not JSON: {e}"),
        })?;
    Ok(Entity {
        doc,
        hash: hash_col(r, 2)?,
        bucket: r.try_get::<i64>(3).map_err(db("read an entity"))? as u32,
        version: r.try_get(4).map_err(db("read an entity"))?,
        deleted: r.try_get(5).map_err(db("read an entity"))?,
        source: source_col(r, 6, "entities")?,
        updated_at: r.try_get(7).map_err(db("read an entity"))?,
        key,
    })
}

/// A `source` column as the [`Source`] it spells.
pub(super) fn source_col(r: &Row, i: usize, table: &'static str) -> Result<Source, StoreError> {
    let s: String = r.try_get(i).map_err(db("read a source"))?;
    Source::parse(&s).ok_or_else(|| StoreError::Corrupt {
        table,
        reason: format!("unknown source {s:?}"),
    })
}
