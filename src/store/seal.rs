//! Sealing on PostgreSQL: committed `changes` rows get their feed position (`seq`) and hash-chain link after commit, so writers of a producer never wait for one another's turn.
//!
//! A writer locks only what it reads and changes: the keys of its batch
//! (transaction advisory locks, taken in one sorted order, so two writers
//! cannot deadlock) under a shared lock on the producer, which a re-layout
//! takes exclusively. It appends its `changes` rows with `seq` and `chain`
//! NULL and commits. A sealer then takes the producer's `chain_heads` row
//! (the one lock no writer takes), numbers every committed unsealed row in
//! `id` order, chains each to the one before, advances the head and sends
//! `NOTIFY` in the same transaction. In the daemon one sealer task
//! ([`Store::run_sealer`]) does it in rounds for every producer whose log
//! grew: a writer hands its producer over and waits for the next round, so
//! one seal serves every commit meanwhile and a write is in the feed when
//! it is acknowledged. Without that task (a one-shot command) a writer seals
//! after it commits. The task also seals, on start and every few seconds,
//! what a stopped process left.
//!
//! Why this is exact (ARCHITECTURE.md has the longer form):
//! - Two writes of one key hold its lock in turn, and the first commits
//!   before the second reads the row; so the second sees the first's row,
//!   and its `changes` row gets a larger `id` (inserted later). A sealer
//!   sees the first row whenever it sees the second (committed earlier),
//!   so `seq` follows the order of the writes of every key.
//! - A sealer numbers only rows it sees committed, under the head's lock, in
//!   one transaction: positions are handed out once, without gaps, and a
//!   consumer reading `seq > after` sees a prefix that never grows in the
//!   middle. A row committed later gets a later position.
//! - Bucket digests are sums: each writer adds its deltas in the same
//!   transaction as the rows they describe, so the digests equal the rows
//!   whatever the interleaving.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::sql::{column, query, query_scalar, Tx};
use super::{db, Backend, Store, StoreError};
use crate::canonical::RecordHash;
use crate::entity::{ChainHead, ChangeLink};

/// Rows sealed per transaction.
const SEAL_BATCH: i64 = 10_000;
/// How often the sealer task looks for rows another process left unsealed.
const SEAL_SWEEP: Duration = Duration::from_secs(5);

/// The sealer task's inbox, shared by every clone of a [`Store`].
#[derive(Debug)]
pub(super) struct Sealer {
    /// Whether [`Store::run_sealer`] runs in this process.
    running: AtomicBool,
    /// Producers whose log grew since the task last sealed them, and the
    /// rounds started (each round takes the set as it starts).
    wanted: Mutex<(BTreeSet<String>, u64)>,
    wake: Notify,
    /// Rounds finished; `u64::MAX` once the task stopped.
    done: watch::Sender<u64>,
}

impl Default for Sealer {
    fn default() -> Self {
        Self {
            running: AtomicBool::new(false),
            wanted: Mutex::default(),
            wake: Notify::new(),
            done: watch::Sender::new(0),
        }
    }
}

/// Marks the sealer task stopped when dropped.
struct Stopped<'a>(&'a Sealer);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
        self.0.done.send_replace(u64::MAX);
    }
}

impl Sealer {
    fn lock(&self) -> std::sync::MutexGuard<'_, (BTreeSet<String>, u64)> {
        self.wanted.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a round: its number and the producers it seals.
    fn start_round(&self) -> (u64, BTreeSet<String>) {
        let mut w = self.lock();
        w.1 += 1;
        (w.1, std::mem::take(&mut w.0))
    }

    /// Hands `producer` to the task; returns the round that will include it.
    fn hand_over(&self, producer: &str) -> u64 {
        let mut w = self.lock();
        w.0.insert(producer.to_string());
        w.1 + 1
    }
}

/// The advisory lock id of `producer`'s writers (shared) and re-layouts (exclusive).
pub(super) fn producer_lock(producer: &str) -> i64 {
    lock_id(&[b"driftd producer", producer.as_bytes()])
}

/// The advisory lock id of one entity.
fn key_lock(producer: &str, key: &str) -> i64 {
    lock_id(&[b"driftd key", producer.as_bytes(), key.as_bytes()])
}

fn lock_id(parts: &[&[u8]]) -> i64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let bytes: [u8; 8] = h.finalize().as_bytes()[..8]
        .try_into()
        .expect("8 of 32 bytes");
    i64::from_le_bytes(bytes)
}

impl Store {
    /// PostgreSQL: takes the shared lock of `producer` and the lock of each
    /// of `keys`, in ascending lock-id order, until `tx` ends.
    /// Locks this transaction holds already are not asked for again.
    pub(super) async fn lock_keys(
        &self,
        tx: &mut Tx,
        producer: &str,
        keys: &[&str],
    ) -> Result<(), StoreError> {
        let shared = producer_lock(producer);
        let mut ids: Vec<i64> = keys
            .iter()
            .map(|k| key_lock(producer, k))
            .filter(|id| !tx.locks.contains(id))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() && tx.locks.contains(&shared) {
            return Ok(());
        }
        // An array is scanned in order, so the locks are taken in that order.
        query(
            "SELECT pg_advisory_xact_lock_shared($1),
                    (SELECT COUNT(pg_advisory_xact_lock(id)) FROM UNNEST($2::bigint[]) AS id)",
        )
        .bind(shared)
        .bind(super::sql::Arr(ids.clone()))
        .execute(&mut *tx)
        .await
        .map_err(db("lock the entities of a batch"))?;
        tx.locks.extend(ids);
        tx.locks.insert(shared);
        Ok(())
    }

    /// Called after a commit that appended to `producer`'s log. On
    /// PostgreSQL, hands the log to the sealer task, or without one seals it
    /// here; then (once sealed) this process's feed consumers are woken. A
    /// failed seal is logged and left to the next one; the write is
    /// committed either way.
    pub(crate) async fn changes_committed(&self, producer: &str) {
        if self.backend == Backend::Postgres {
            if self.sealer.running.load(Ordering::Acquire) {
                let round = self.sealer.hand_over(producer);
                let mut done = self.sealer.done.subscribe();
                self.sealer.wake.notify_one();
                // The task wakes this process's consumers itself.
                let _ = done.wait_for(|d| *d >= round).await;
                return;
            }
            if let Err(e) = self.seal(producer).await {
                tracing::warn!(producer, error = %e, "sealing the changes log failed; the next write or sweep seals it");
                return;
            }
        }
        self.signals.bump(producer);
    }

    /// The daemon's sealer (PostgreSQL; returns at once on SQLite): seals
    /// what a stopped process left, then every producer whose log grew, as
    /// soon as it grew, until `cancel`; then once more what is left.
    pub async fn run_sealer(&self, cancel: CancellationToken) {
        if self.backend != Backend::Postgres {
            return;
        }
        self.sealer.running.store(true, Ordering::Release);
        // However the task ends (a panic included), no writer waits for a
        // round that will not come; a later commit seals itself.
        let _stopped = Stopped(&self.sealer);
        let mut sweep = tokio::time::interval(SEAL_SWEEP);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.sealer.wake.notified() => self.seal_wanted().await,
                _ = sweep.tick() => {
                    if let Err(e) = self.seal_all().await {
                        tracing::warn!(error = %e, "cannot seal the changes log; retrying");
                    }
                }
            }
        }
        self.sealer.running.store(false, Ordering::Release);
        self.seal_wanted().await;
    }

    /// One round: seals every producer handed over, then says the round is done.
    async fn seal_wanted(&self) {
        let (round, producers) = self.sealer.start_round();
        for producer in producers {
            match self.seal(&producer).await {
                Ok(_) => self.signals.bump(&producer),
                Err(e) => {
                    tracing::warn!(producer, error = %e, "sealing the changes log failed; retrying");
                    self.sealer.hand_over(&producer);
                }
            }
        }
        self.sealer.done.send_modify(|d| *d = (*d).max(round));
    }

    /// Seals every committed, unsealed `changes` row of every producer;
    /// returns how many. Nothing to do on SQLite, whose writers seal inline.
    pub async fn seal_all(&self) -> Result<u64, StoreError> {
        if self.backend != Backend::Postgres {
            return Ok(0);
        }
        let producers: Vec<String> =
            query_scalar("SELECT DISTINCT producer FROM changes WHERE seq IS NULL")
                .fetch_all(&self.pool)
                .await
                .map_err(db("find unsealed changes"))?;
        let mut sealed = 0;
        for p in producers {
            sealed += self.seal(&p).await?;
            self.signals.bump(&p);
        }
        Ok(sealed)
    }

    /// Seals `producer`'s committed, unsealed `changes` rows in `id` order.
    async fn seal(&self, producer: &str) -> Result<u64, StoreError> {
        let mut sealed = 0;
        loop {
            let n = self.seal_batch(producer).await?;
            sealed += n;
            if n < SEAL_BATCH as u64 {
                return Ok(sealed);
            }
        }
    }

    async fn seal_batch(&self, producer: &str) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let head = self.lock_head(&mut tx, producer).await?;
        let rows = query(
            "SELECT id, key, op, hash, version, source, at FROM changes
             WHERE producer = $1 AND seq IS NULL ORDER BY id LIMIT $2",
        )
        .bind(producer)
        .bind(SEAL_BATCH)
        .fetch_all(&mut tx)
        .await
        .map_err(db("read unsealed changes"))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ChainHead { mut seq, mut chain } = head;
        let mut sealed: Vec<(i64, i64, Vec<u8>)> = Vec::with_capacity(rows.len());
        for r in &rows {
            let read = db("read unsealed changes");
            let hash: Option<Vec<u8>> = r.try_get(3).map_err(read)?;
            let hash = hash
                .map(|b| {
                    RecordHash::from_slice(&b).ok_or_else(|| StoreError::Corrupt {
                        table: "changes",
                        reason: format!("hash of {} bytes", b.len()),
                    })
                })
                .transpose()?;
            let key: String = r.try_get(1).map_err(read)?;
            let op: String = r.try_get(2).map_err(read)?;
            let source: String = r.try_get(5).map_err(read)?;
            seq += 1;
            chain = ChangeLink {
                producer,
                seq,
                key: &key,
                op: &op,
                hash: hash.as_ref(),
                version: r.try_get(4).map_err(read)?,
                source: &source,
                at: r.try_get(6).map_err(read)?,
            }
            .chain(&chain);
            sealed.push((r.try_get(0).map_err(read)?, seq, chain.to_vec()));
        }
        query(
            "UPDATE changes SET seq = u.seq, chain = u.chain
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bytea[]) AS u (id, seq, chain)
             WHERE changes.id = u.id",
        )
        .bind(column(&sealed, |s| s.0))
        .bind(column(&sealed, |s| s.1))
        .bind(column(&sealed, |s| s.2.clone()))
        .execute(&mut tx)
        .await
        .map_err(db("seal changes"))?;
        query("UPDATE chain_heads SET seq = $2, chain = $3 WHERE producer = $1")
            .bind(producer)
            .bind(seq)
            .bind(chain.to_vec())
            .execute(&mut tx)
            .await
            .map_err(db("advance the chain head"))?;
        // Delivered at commit, to every replica's change-feed listener.
        query("SELECT pg_notify($1, $2)")
            .bind(super::feed::CHANNEL)
            .bind(self.signals.payload(producer))
            .execute(&mut tx)
            .await
            .map_err(db("notify change-feed consumers"))?;
        tx.commit().await.map_err(db("commit sealed changes"))?;
        Ok(sealed.len() as u64)
    }
}
