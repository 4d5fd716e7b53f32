//! The `inbox`: every delta as it arrived, committed before it is acknowledged, then applied and given an outcome.
//!
//! A delta is inserted and applied in one transaction ([`Store::ingest`]), so
//! an acknowledged delta is either applied or still `pending`, never lost.
//! When applying fails, the caller commits the deltas alone
//! ([`Store::insert_deltas`]) and a sweeper settles the `pending` rows later
//! ([`Store::settle_delta`]), as `driftd replay` does for any row.
//!
//! Deduplication is exact under concurrency on both backends: a partial
//! unique index allows one non-duplicate row per `(producer, channel,
//! dedup_key)`; a redelivery's insert conflicts, and the redelivery is stored
//! as `duplicate` pointing at the first delivery (`duplicate_of`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::sql::{column, query, query_scalar, At, Json, On, Row, Tx};
use super::{db, now_ms, placeholders, Backend, Store, StoreError};
use crate::canonical::RecordHasher;
use crate::entity::{EntityWrite, WriteOutcome};

/// How a delta arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Webhook,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "webhook" => Some(Self::Webhook),
            "email" => Some(Self::Email),
            _ => None,
        }
    }
}

/// What became of a delta; the `outcome` label of `driftd_deltas_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InboxOutcome {
    /// Committed, not applied yet (the sweeper applies it).
    Pending,
    /// Applied: at least one record was newer than the stored one (or the same).
    Applied,
    /// Every record was older than (or as old as) the stored one: nothing changed.
    Stale,
    /// A redelivery of a delta already in the inbox: nothing changed.
    Duplicate,
    /// Not a delta (malformed body, no key, bad version): the reason is in `error`.
    Rejected,
    /// An email no rule matched: quarantined with the reason in `error`.
    Unmatched,
    /// Committed; names records driftd fetches from the producer (a thin
    /// delta, or one whose payload cannot be ordered): `fetched` once done.
    Fetching,
    /// Every record it named was fetched from the producer and applied.
    Fetched,
    /// A record had the stored version but other content, and the producer
    /// has no `[producer.fetch]` to ask: nothing changed; the keyframe decides.
    Tie,
}

impl InboxOutcome {
    pub(crate) const ALL: &'static [InboxOutcome] = &[
        Self::Pending,
        Self::Applied,
        Self::Stale,
        Self::Duplicate,
        Self::Rejected,
        Self::Unmatched,
        Self::Fetching,
        Self::Fetched,
        Self::Tie,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applied => "applied",
            Self::Stale => "stale",
            Self::Duplicate => "duplicate",
            Self::Rejected => "rejected",
            Self::Unmatched => "unmatched",
            Self::Fetching => "fetching",
            Self::Fetched => "fetched",
            Self::Tie => "tie",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|o| o.as_str() == s)
    }

    /// Whether the delta never took effect, so a later replay may record a new outcome.
    fn open_to_replay(self) -> bool {
        matches!(
            self,
            Self::Pending | Self::Rejected | Self::Unmatched | Self::Fetching
        )
    }
}

impl std::fmt::Display for InboxOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A delta as it arrived, about to be committed.
#[derive(Debug, Clone)]
pub struct InboxEntry {
    pub producer: String,
    pub channel: Channel,
    pub received_at: i64,
    /// Identifies a delivery; a second delivery with the same key is a duplicate.
    pub dedup_key: Option<String>,
    /// A JSON object of the headers kept for audit (never signature headers).
    pub headers: String,
    pub body: Vec<u8>,
}

/// What applying a delta means, decided by the caller from its body.
#[derive(Debug, Clone)]
pub enum InboxEffect {
    /// Entity writes of the delta's producer.
    Write {
        bucket_bits: u8,
        hasher: RecordHasher,
        writes: Vec<EntityWrite>,
        /// Whether a write that ties (the stored version, other content) asks
        /// for the record to be fetched (the producer has `[producer.fetch]`).
        ask_ties: bool,
    },
    /// Records of the delta's producer to fetch; the delta is `fetching`
    /// until every one is fetched and applied.
    Fetch { keys: Vec<String> },
    /// Nothing to write; the outcome (`rejected`, `unmatched`) and its reason.
    Settle {
        outcome: InboxOutcome,
        error: String,
    },
}

/// A stored delta's outcome after a commit or a settle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub id: i64,
    pub outcome: InboxOutcome,
    pub error: Option<String>,
    /// For a duplicate: the id of the first delivery.
    pub duplicate_of: Option<i64>,
    /// Whether an entity row changed.
    pub changed: bool,
}

/// One `inbox` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxRow {
    pub id: i64,
    pub producer: String,
    pub channel: Channel,
    pub received_at: i64,
    pub dedup_key: Option<String>,
    pub duplicate_of: Option<i64>,
    pub headers: String,
    pub body: Vec<u8>,
    pub outcome: InboxOutcome,
    pub error: Option<String>,
    pub applied_at: Option<i64>,
}

/// Where a batch stands among the batches of one process in flight at once
/// (see [`Store::ingest_in_order`]).
#[derive(Debug)]
pub(crate) struct LockOrder {
    /// Fires when the batch before has taken its locks (`None`: no batch before).
    pub(crate) after: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Fired when this batch has taken its locks.
    pub(crate) then: tokio::sync::oneshot::Sender<()>,
}

/// Which rows [`Store::inbox_page`] lists; `None` matches any.
#[derive(Debug, Clone, Default)]
pub struct InboxFilter {
    pub producer: Option<String>,
    /// Received at or after this time (ms since the epoch).
    pub since_ms: Option<i64>,
    pub outcome: Option<InboxOutcome>,
}

/// Which rows [`Store::settle_delta`] touches and records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SettleMode {
    /// The sweeper: only a row still `pending`; anything else is left alone.
    Pending,
    /// `driftd replay`: any row but a duplicate is applied again; the outcome
    /// is recorded only on rows that never took effect (`pending`,
    /// `rejected`, `unmatched`), so the history of applied rows stays.
    Replay,
}

const COLUMNS: &str = "id, producer, channel, received_at, dedup_key, duplicate_of, headers, \
                       body, outcome, error, applied_at";

/// PostgreSQL text cannot hold NUL; delta-derived text (reasons, dedup keys) may.
fn clean(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

fn outcome_col(r: &Row, i: usize) -> Result<InboxOutcome, StoreError> {
    let s: String = r.try_get(i).map_err(db("read an inbox row"))?;
    InboxOutcome::parse(&s).ok_or_else(|| StoreError::Corrupt {
        table: "inbox",
        reason: format!("unknown outcome {s:?}"),
    })
}

fn row_from(r: &Row) -> Result<InboxRow, StoreError> {
    let e = db("read an inbox row");
    let channel: String = r.try_get(2).map_err(e)?;
    Ok(InboxRow {
        id: r.try_get(0).map_err(e)?,
        producer: r.try_get(1).map_err(e)?,
        channel: Channel::parse(&channel).ok_or_else(|| StoreError::Corrupt {
            table: "inbox",
            reason: format!("unknown channel {channel:?}"),
        })?,
        received_at: r.try_get(3).map_err(e)?,
        dedup_key: r.try_get(4).map_err(e)?,
        duplicate_of: r.try_get(5).map_err(e)?,
        headers: r.try_get(6).map_err(e)?,
        body: r.try_get(7).map_err(e)?,
        outcome: outcome_col(r, 8)?,
        error: r.try_get(9).map_err(e)?,
        applied_at: r.try_get(10).map_err(e)?,
    })
}

/// The inbox outcome of a delta's record writes: `applied` when a record
/// was applied (or already held), else `tie` when one tied, else `stale`;
/// and whether any row changed.
fn outcome_of(writes: &[WriteOutcome]) -> (InboxOutcome, bool) {
    let changed = writes.contains(&WriteOutcome::Applied);
    let took = writes.is_empty()
        || writes
            .iter()
            .any(|w| matches!(w, WriteOutcome::Applied | WriteOutcome::Unchanged));
    let outcome = if took {
        InboxOutcome::Applied
    } else if writes.contains(&WriteOutcome::Tie) {
        InboxOutcome::Tie
    } else {
        InboxOutcome::Stale
    };
    (outcome, changed)
}

/// The keys of `writes` that tied, when ties ask for a fetch.
fn tied<'w>(writes: &'w [EntityWrite], outcomes: &[WriteOutcome], ask: bool) -> Vec<&'w str> {
    if !ask {
        return Vec::new();
    }
    writes
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| **o == WriteOutcome::Tie)
        .map(|(w, _)| w.key.as_str())
        .collect()
}

impl Store {
    /// Commits deltas in one transaction: each is inserted (a redelivery as
    /// `duplicate`), each new one applied with its effect, and every outcome
    /// recorded. All or nothing: on error nothing is committed.
    ///
    /// The writes of every new delta of a producer are planned and flushed
    /// together, in arrival order (a later delta of the same key sees the
    /// earlier one's write), so a batch costs the producer's write turn once,
    /// not once per delta.
    pub async fn ingest(
        &self,
        items: &[(InboxEntry, InboxEffect)],
    ) -> Result<Vec<Settled>, StoreError> {
        self.ingest_in_order(items, None).await
    }

    /// [`Store::ingest`] for one of several batches in flight at once: the
    /// batch inserts its deltas and takes its entity locks only after the
    /// batch before it (`order.after`) took its own, then lets the next one
    /// go (`order.then`), so two batches that write one key apply in arrival
    /// order, and none ever waits for a later one. Inserting, writing and
    /// committing overlap.
    pub(crate) async fn ingest_in_order(
        &self,
        items: &[(InboxEntry, InboxEffect)],
        order: Option<LockOrder>,
    ) -> Result<Vec<Settled>, StoreError> {
        let mut tx = self.begin_write().await?;
        let (after, then) = match order {
            Some(LockOrder { after, then }) => (after, Some(then)),
            None => (None, None),
        };
        if let Some(after) = after {
            // An error means the batch before failed or is gone: go on.
            let _ = after.await;
        }
        let entries: Vec<&InboxEntry> = items.iter().map(|(e, _)| e).collect();
        let stored = self.insert_all_in(&mut tx, &entries).await?;
        // The writes of the new deltas, per producer, in arrival order. The
        // producers' write turns are taken in name order, as every batch
        // takes them, so two replicas' batches cannot deadlock.
        let mut batches: BTreeMap<&str, (u8, &RecordHasher, Vec<EntityWrite>)> = BTreeMap::new();
        for ((entry, effect), id) in items.iter().zip(&stored) {
            if let (
                Ok(_),
                InboxEffect::Write {
                    bucket_bits,
                    hasher,
                    writes,
                    ..
                },
            ) = (id, effect)
            {
                let batch = batches
                    .entry(&entry.producer)
                    .or_insert_with(|| (*bucket_bits, hasher, Vec::new()));
                batch.2.extend(writes.iter().cloned());
            }
        }
        if self.backend == Backend::Postgres {
            for (producer, (_, _, writes)) in &batches {
                let mut keys: Vec<&str> = writes.iter().map(|w| w.key.as_str()).collect();
                keys.sort_unstable();
                keys.dedup();
                self.lock_keys(&mut tx, producer, &keys).await?;
            }
        }
        if let Some(then) = then {
            let _ = then.send(());
        }
        let mut outcomes: HashMap<&str, std::vec::IntoIter<WriteOutcome>> = HashMap::new();
        for (producer, (bucket_bits, hasher, writes)) in batches {
            let done = self
                .write_entities_in(&mut tx, producer, bucket_bits, hasher, &writes)
                .await?;
            outcomes.insert(producer, done.into_iter());
        }
        let mut out: Vec<Settled> = Vec::with_capacity(items.len());
        for ((entry, effect), id) in items.iter().zip(stored) {
            let id = match id {
                Ok(id) => id,
                Err(duplicate) => {
                    out.push(duplicate);
                    continue;
                }
            };
            let (outcome, error, changed) = match effect {
                InboxEffect::Settle { outcome, error } => {
                    (*outcome, Some(clean(error).into_owned()), false)
                }
                InboxEffect::Write {
                    writes, ask_ties, ..
                } => {
                    // One outcome per write, in the order the writes were batched.
                    let mine: Vec<WriteOutcome> = outcomes
                        .get_mut(entry.producer.as_str())
                        .map(|o| o.by_ref().take(writes.len()).collect())
                        .unwrap_or_default();
                    let ties = tied(writes, &mine, *ask_ties);
                    self.ask_fetches_in(&mut tx, &entry.producer, &ties, None, entry.received_at)
                        .await?;
                    let (outcome, changed) = outcome_of(&mine);
                    (outcome, None, changed)
                }
                InboxEffect::Fetch { keys } => {
                    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                    self.ask_fetches_in(
                        &mut tx,
                        &entry.producer,
                        &keys,
                        Some(id),
                        entry.received_at,
                    )
                    .await?;
                    (InboxOutcome::Fetching, None, false)
                }
            };
            out.push(Settled {
                id,
                outcome,
                error,
                duplicate_of: None,
                changed,
            });
        }
        let new: Vec<&Settled> = out.iter().filter(|s| s.duplicate_of.is_none()).collect();
        record_all_in(&mut tx, self.backend, &new).await?;
        tx.commit().await.map_err(db("commit deltas"))?;
        let changed: std::collections::BTreeSet<&str> = items
            .iter()
            .zip(&out)
            .filter(|(_, settled)| settled.changed)
            .map(|((entry, _), _)| entry.producer.as_str())
            .collect();
        for producer in changed {
            self.changes_committed(producer).await;
        }
        Ok(out)
    }

    /// Commits deltas without applying them: `pending` (or `duplicate`).
    pub async fn insert_deltas(&self, entries: &[InboxEntry]) -> Result<Vec<Settled>, StoreError> {
        let mut tx = self.begin_write().await?;
        let entries: Vec<&InboxEntry> = entries.iter().collect();
        let out = self
            .insert_all_in(&mut tx, &entries)
            .await?
            .into_iter()
            .map(|stored| match stored {
                Err(dup) => dup,
                Ok(id) => Settled {
                    id,
                    outcome: InboxOutcome::Pending,
                    error: None,
                    duplicate_of: None,
                    changed: false,
                },
            })
            .collect();
        tx.commit().await.map_err(db("commit deltas"))?;
        Ok(out)
    }

    /// Applies stored delta `id` with `effect` and records the outcome as
    /// `mode` says. `None` when the row is absent or `mode` leaves it alone.
    ///
    /// A write without a version is applied only if its entity has not been
    /// updated since the delta was received: without versions, arrival order
    /// decides, and a later delta (or a keyframe correction) already came
    /// after this one. That makes settling late, and replaying, idempotent.
    pub(crate) async fn settle_delta(
        &self,
        id: i64,
        effect: &InboxEffect,
        mode: SettleMode,
    ) -> Result<Option<Settled>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = query(&format!(
            "SELECT {COLUMNS} FROM inbox WHERE id = $1{}",
            self.backend.for_update()
        ))
        .bind(id)
        .fetch_optional(&mut tx)
        .await
        .map_err(db("lock an inbox row"))?;
        let Some(row) = row.as_ref().map(row_from).transpose()? else {
            return Ok(None);
        };
        match (mode, row.outcome) {
            (SettleMode::Pending, o) if o != InboxOutcome::Pending => return Ok(None),
            (_, InboxOutcome::Duplicate) => {
                return Ok(Some(Settled {
                    id,
                    outcome: InboxOutcome::Duplicate,
                    error: row.error,
                    duplicate_of: row.duplicate_of,
                    changed: false,
                }))
            }
            _ => {}
        }
        let entry = InboxEntry {
            producer: row.producer,
            channel: row.channel,
            received_at: row.received_at,
            dedup_key: None,
            headers: String::new(),
            body: Vec::new(),
        };
        let (outcome, error, changed) = self.apply_in(&mut tx, id, &entry, effect, true).await?;
        if row.outcome.open_to_replay() {
            record_in(&mut tx, id, outcome, error.as_deref()).await?;
        }
        tx.commit().await.map_err(db("commit a settled delta"))?;
        if changed {
            self.changes_committed(&entry.producer).await;
        }
        Ok(Some(Settled {
            id,
            outcome,
            error,
            duplicate_of: None,
            changed,
        }))
    }

    /// The oldest `pending` rows, in id order.
    pub async fn pending_deltas(&self, limit: i64) -> Result<Vec<InboxRow>, StoreError> {
        self.inbox_page(
            &InboxFilter {
                outcome: Some(InboxOutcome::Pending),
                ..InboxFilter::default()
            },
            0,
            limit,
        )
        .await
    }

    /// Up to `limit` deltas of `producer` with `outcome` and an id below
    /// `before_id`, newest first (attribution reads the refused and the
    /// pending ones, a page at a time).
    pub(crate) async fn newest_deltas(
        &self,
        producer: &str,
        outcome: InboxOutcome,
        before_id: i64,
        limit: i64,
    ) -> Result<Vec<InboxRow>, StoreError> {
        // The outcome is written into the statement, not bound: only then can
        // either database use the partial index of that outcome's rows
        // (`inbox_pending_by_producer`, `inbox_refused`) instead of walking
        // every delta the producer ever sent.
        let sql = format!(
            "SELECT {COLUMNS} FROM inbox WHERE producer = $1 AND outcome = '{}' AND id < $2
             ORDER BY id DESC LIMIT $3",
            outcome.as_str()
        );
        let rows = query(&sql)
            .bind(producer)
            .bind(before_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read the newest deltas"))?;
        rows.iter().map(row_from).collect()
    }

    /// Up to `limit` rows matching `filter` with an id above `after_id`, in id order.
    pub async fn inbox_page(
        &self,
        filter: &InboxFilter,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<InboxRow>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM inbox WHERE id > $1");
        let mut n = 1;
        let mut clause = |sql: &mut String, column: &str, op: &str| {
            n += 1;
            sql.push_str(&format!(" AND {column} {op} ${n}"));
        };
        if filter.producer.is_some() {
            clause(&mut sql, "producer", "=");
        }
        if filter.since_ms.is_some() {
            clause(&mut sql, "received_at", ">=");
        }
        if filter.outcome.is_some() {
            clause(&mut sql, "outcome", "=");
        }
        sql.push_str(&format!(" ORDER BY id LIMIT ${}", n + 1));
        let mut q = query(&sql).bind(after_id);
        if let Some(p) = &filter.producer {
            q = q.bind(p.as_str());
        }
        if let Some(since) = filter.since_ms {
            q = q.bind(At(since));
        }
        if let Some(o) = filter.outcome {
            q = q.bind(o.as_str());
        }
        q.bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("list inbox rows"))?
            .iter()
            .map(row_from)
            .collect()
    }

    /// The first delivery with this dedup key, if any.
    pub async fn find_duplicate(
        &self,
        producer: &str,
        channel: Channel,
        dedup_key: &str,
    ) -> Result<Option<i64>, StoreError> {
        first_delivery(&self.pool, producer, channel, dedup_key).await
    }

    /// Inserts deltas as `pending`, in order: for each, `Ok(id)`, or
    /// `Err(settled)` when it is a redelivery (of an earlier delta or of one
    /// earlier in `entries`), stored as `duplicate` of the first delivery.
    ///
    /// SQLite inserts them one by one (a statement is a function call there).
    /// PostgreSQL takes their ids from the sequence in one round trip, then
    /// inserts them all with one `UNNEST`; the ids it returns are the deltas
    /// that were new, and only redeliveries take a round trip of their own.
    async fn insert_all_in(
        &self,
        tx: &mut Tx,
        entries: &[&InboxEntry],
    ) -> Result<Vec<Result<i64, Settled>>, StoreError> {
        let mut out = Vec::with_capacity(entries.len());
        if self.backend == Backend::Sqlite || entries.len() == 1 {
            for e in entries {
                out.push(self.insert_in(tx, e).await?);
            }
            return Ok(out);
        }
        let ids: Vec<i64> = query_scalar(
            "SELECT nextval(pg_get_serial_sequence('inbox', 'id')) FROM generate_series(1, $1)",
        )
        .bind(i64::try_from(entries.len()).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(db("number deltas"))?;
        let rows: Vec<(i64, &&InboxEntry)> = ids.iter().copied().zip(entries).collect();
        let inserted: Vec<i64> = query_scalar(
            "INSERT INTO inbox (id, producer, channel, received_at, dedup_key, headers, body, outcome)
             SELECT u.*, 'pending' FROM UNNEST($1::bigint[], $2::text[], $3::text[],
               $4::timestamptz[], $5::text[], $6::jsonb[], $7::bytea[]) AS u
             ON CONFLICT (producer, channel, dedup_key)
               WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL DO NOTHING
             RETURNING id",
        )
        .bind(column(&rows, |r| r.0))
        .bind(column(&rows, |r| r.1.producer.clone()))
        .bind(column(&rows, |r| r.1.channel.as_str().to_string()))
        .bind(column(&rows, |r| At(r.1.received_at)))
        .bind(column(&rows, |r| r.1.dedup_key.as_deref().map(|k| clean(k).into_owned())))
        .bind(column(&rows, |r| Some(Json(clean(&r.1.headers).into_owned().into()))))
        .bind(column(&rows, |r| r.1.body.clone()))
        .fetch_all(&mut *tx)
        .await
        .map_err(db("insert deltas"))?;
        let inserted: std::collections::HashSet<i64> = inserted.into_iter().collect();
        for (id, e) in rows {
            out.push(if inserted.contains(&id) {
                Ok(id)
            } else {
                Err(self.duplicate_in(tx, e).await?)
            });
        }
        Ok(out)
    }

    /// Inserts one delta as `pending`: `Ok(id)`, or `Err(settled)` when it is
    /// a redelivery, stored as `duplicate` of the first delivery.
    async fn insert_in(
        &self,
        tx: &mut Tx,
        e: &InboxEntry,
    ) -> Result<Result<i64, Settled>, StoreError> {
        let dedup_key = e.dedup_key.as_deref().map(clean);
        let id: Option<i64> = query_scalar(
            "INSERT INTO inbox (producer, channel, received_at, dedup_key, headers, body, outcome)
             VALUES ($1, $2, $3, $4, $5, $6, 'pending')
             ON CONFLICT (producer, channel, dedup_key)
               WHERE dedup_key IS NOT NULL AND duplicate_of IS NULL DO NOTHING
             RETURNING id",
        )
        .bind(&e.producer)
        .bind(e.channel.as_str())
        .bind(At(e.received_at))
        .bind(dedup_key.as_deref())
        .bind(Json::text(clean(&e.headers).as_ref()))
        .bind(e.body.as_slice())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("insert a delta"))?;
        match id {
            Some(id) => Ok(Ok(id)),
            None => Ok(Err(self.duplicate_in(tx, e).await?)),
        }
    }

    /// Stores `e`, whose dedup key conflicted, as a `duplicate` of the first delivery.
    async fn duplicate_in(&self, tx: &mut Tx, e: &InboxEntry) -> Result<Settled, StoreError> {
        let key = e
            .dedup_key
            .as_deref()
            .map(clean)
            .ok_or_else(|| StoreError::Corrupt {
                table: "inbox",
                reason: "a delta without a dedup key was not inserted".into(),
            })?;
        let first = first_delivery(&mut *tx, &e.producer, e.channel, &key)
            .await?
            .ok_or_else(|| StoreError::Corrupt {
                table: "inbox",
                reason: format!("dedup key {key:?} conflicts, but no first delivery found"),
            })?;
        let id: i64 = query_scalar(
            "INSERT INTO inbox (producer, channel, received_at, dedup_key, duplicate_of, headers,
               body, outcome, applied_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'duplicate', $3)
             RETURNING id",
        )
        .bind(&e.producer)
        .bind(e.channel.as_str())
        .bind(At(e.received_at))
        .bind(key.as_ref())
        .bind(first)
        .bind(Json::text(clean(&e.headers).as_ref()))
        .bind(e.body.as_slice())
        .fetch_one(&mut *tx)
        .await
        .map_err(db("insert a duplicate delta"))?;
        Ok(Settled {
            id,
            outcome: InboxOutcome::Duplicate,
            error: None,
            duplicate_of: Some(first),
            changed: false,
        })
    }

    /// Carries out `effect` for a delta of `e.producer` received at
    /// `e.received_at`; `late` applies the rule for versionless writes of
    /// [`Store::settle_delta`].
    async fn apply_in(
        &self,
        tx: &mut Tx,
        id: i64,
        e: &InboxEntry,
        effect: &InboxEffect,
        late: bool,
    ) -> Result<(InboxOutcome, Option<String>, bool), StoreError> {
        let (bucket_bits, hasher, writes, ask_ties) = match effect {
            InboxEffect::Settle { outcome, error } => {
                return Ok((*outcome, Some(clean(error).into_owned()), false))
            }
            InboxEffect::Fetch { keys } => {
                let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
                self.ask_fetches_in(tx, &e.producer, &keys, Some(id), now_ms())
                    .await?;
                return Ok((InboxOutcome::Fetching, None, false));
            }
            InboxEffect::Write {
                bucket_bits,
                hasher,
                writes,
                ask_ties,
            } => (*bucket_bits, hasher, writes, *ask_ties),
        };
        if !late || writes.iter().all(|w| w.version.is_some()) {
            let outcomes = self
                .write_entities_in(tx, &e.producer, bucket_bits, hasher, writes)
                .await?;
            let ties = tied(writes, &outcomes, ask_ties);
            self.ask_fetches_in(tx, &e.producer, &ties, None, now_ms())
                .await?;
            let (outcome, changed) = outcome_of(&outcomes);
            return Ok((outcome, None, changed));
        }
        // Take the producer's write lock first so the updated_at read is exact.
        self.write_entities_in(tx, &e.producer, bucket_bits, hasher, &[])
            .await?;
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            if w.version.is_none() {
                let updated_at: Option<i64> = query_scalar(
                    "SELECT updated_at FROM entities WHERE producer = $1 AND key = $2",
                )
                .bind(&e.producer)
                .bind(&w.key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db("read an entity's update time"))?;
                if updated_at.is_some_and(|t| t >= e.received_at) {
                    outcomes.push(WriteOutcome::Stale);
                    continue;
                }
            }
            outcomes.extend(
                self.write_entities_in(
                    tx,
                    &e.producer,
                    bucket_bits,
                    hasher,
                    std::slice::from_ref(w),
                )
                .await?,
            );
        }
        let ties = tied(writes, &outcomes, ask_ties);
        self.ask_fetches_in(tx, &e.producer, &ties, None, now_ms())
            .await?;
        let (outcome, changed) = outcome_of(&outcomes);
        Ok((outcome, None, changed))
    }
}

async fn first_delivery<'a>(
    on: impl Into<On<'a>>,
    producer: &str,
    channel: Channel,
    dedup_key: &str,
) -> Result<Option<i64>, StoreError> {
    query_scalar(
        "SELECT id FROM inbox WHERE producer = $1 AND channel = $2 AND dedup_key = $3
           AND duplicate_of IS NULL",
    )
    .bind(producer)
    .bind(channel.as_str())
    .bind(clean(dedup_key).as_ref())
    .fetch_optional(on)
    .await
    .map_err(db("find the first delivery of a dedup key"))
}

/// Records the outcomes of `settled` deltas: one statement per 300 rows.
async fn record_all_in(
    tx: &mut Tx,
    backend: Backend,
    settled: &[&Settled],
) -> Result<(), StoreError> {
    let now = now_ms();
    for chunk in settled.chunks(backend.batch()) {
        let error = |s: &&Settled| s.error.as_deref().map(|e| clean(e).into_owned());
        let q = match backend {
            Backend::Sqlite => {
                let sql = format!(
                    "WITH v (id, outcome, error) AS (VALUES {})
                     UPDATE inbox SET outcome = v.outcome, error = v.error, applied_at = $1
                     FROM v WHERE inbox.id = v.id",
                    placeholders(chunk.len(), 2, "(?, ?, ?)")
                );
                let mut q = query(&sql).bind(At(now));
                for s in chunk {
                    q = q.bind(s.id).bind(s.outcome.as_str()).bind(error(s));
                }
                q.execute(&mut *tx).await
            }
            Backend::Postgres => {
                query(
                    "UPDATE inbox SET outcome = v.outcome, error = v.error, applied_at = $1
                 FROM UNNEST($2::bigint[], $3::text[], $4::text[]) AS v (id, outcome, error)
                 WHERE inbox.id = v.id",
                )
                .bind(At(now))
                .bind(column(chunk, |s| s.id))
                .bind(column(chunk, |s| s.outcome.as_str().to_string()))
                .bind(column(chunk, error))
                .execute(&mut *tx)
                .await
            }
        };
        q.map_err(db("record deltas' outcomes"))?;
    }
    Ok(())
}

async fn record_in(
    tx: &mut Tx,
    id: i64,
    outcome: InboxOutcome,
    error: Option<&str>,
) -> Result<(), StoreError> {
    query("UPDATE inbox SET outcome = $2, error = $3, applied_at = $4 WHERE id = $1")
        .bind(id)
        .bind(outcome.as_str())
        .bind(error.map(clean).as_deref())
        .bind(At(now_ms()))
        .execute(&mut *tx)
        .await
        .map_err(db("record a delta's outcome"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_of_writes() {
        use WriteOutcome::*;
        let cases: &[(&[WriteOutcome], InboxOutcome, bool)] = &[
            (&[Applied], InboxOutcome::Applied, true),
            (&[Stale], InboxOutcome::Stale, false),
            (&[Stale, Stale], InboxOutcome::Stale, false),
            (&[Stale, Applied], InboxOutcome::Applied, true),
            (&[Unchanged], InboxOutcome::Applied, false),
            (&[Stale, Unchanged], InboxOutcome::Applied, false),
            (&[Tie], InboxOutcome::Tie, false),
            (&[Stale, Tie], InboxOutcome::Tie, false),
            (&[Tie, Applied], InboxOutcome::Applied, true),
            (&[], InboxOutcome::Applied, false),
        ];
        for (writes, outcome, changed) in cases {
            assert_eq!(outcome_of(writes), (*outcome, *changed), "{writes:?}");
        }
    }

    #[test]
    fn names_round_trip() {
        for o in InboxOutcome::ALL {
            assert_eq!(InboxOutcome::parse(o.as_str()), Some(*o));
        }
        for c in [Channel::Webhook, Channel::Email] {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
        }
        assert_eq!(InboxOutcome::parse("nope"), None);
        assert_eq!(clean("a\0b"), "a\u{FFFD}b");
    }
}
