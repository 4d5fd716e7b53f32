//! The change feed: `changes` read after a position, and the wake-ups that tell waiting consumers a producer's log grew.
//!
//! A producer's `seq` is assigned once, without gaps, to committed rows only
//! (by the writer on SQLite, by a sealer on PostgreSQL; see `seal.rs`), and
//! each key's changes get rising positions: a consumer that holds
//! `after = N` and asks again receives every later change exactly once, in
//! order, whatever it missed while away. Waiting consumers are woken by the commit, not by
//! polling: every commit that appended to a producer's log bumps that
//! producer's in-process signal; on PostgreSQL the same transaction sends
//! `NOTIFY driftd_changes` so the other replicas bump theirs
//! ([`Store::listen_changes`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::sql::query;
use super::{db, Store, StoreError};
use crate::entity::Source;
use crate::state::WorkState;

/// The PostgreSQL channel a commit that appended to `changes` notifies.
pub(crate) const CHANNEL: &str = "driftd_changes";

/// One change as the feed serves it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeedChange {
    /// The position: resume with `after` = this.
    pub seq: i64,
    pub producer: String,
    pub key: String,
    /// `put` or `delete`.
    pub op: String,
    pub version: Option<i64>,
    /// blake3 of the record's canonical JSON, hex; null for a deletion.
    pub hash: Option<String>,
    /// `webhook`, `email`, `keyframe` (a correction), `replay`.
    pub source: Source,
    /// Commit time, milliseconds since the Unix epoch.
    pub at: i64,
    /// The record, when asked for and while it is still the entity's current
    /// content; `superseded` when a later change of the key replaced it (that
    /// change follows in the feed with its own document).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc: Option<Value>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub superseded: bool,
}

/// Per-producer wake-up signals of one process; shared by every clone of a [`Store`].
#[derive(Debug)]
pub(crate) struct Signals {
    /// Tells this process's own notifications apart from other replicas'.
    instance: String,
    producers: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Signals {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            instance: format!("{:016x}", rand::random::<u64>()),
            producers: Mutex::default(),
        })
    }

    fn sender(&self, producer: &str) -> watch::Sender<u64> {
        let mut map = self.producers.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(producer.to_string())
            .or_insert_with(|| watch::channel(0).0)
            .clone()
    }

    /// Wakes every consumer waiting on `producer`.
    pub(crate) fn bump(&self, producer: &str) {
        self.sender(producer)
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    fn bump_all(&self) {
        let map = self.producers.lock().unwrap_or_else(|e| e.into_inner());
        for tx in map.values() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The payload of this process's `NOTIFY` for `producer`.
    pub(crate) fn payload(&self, producer: &str) -> String {
        format!("{}:{producer}", self.instance)
    }
}

impl Store {
    /// A receiver that changes after every commit that appends to
    /// `producer`'s log (in this process, or on PostgreSQL in any replica
    /// while [`Store::listen_changes`] runs). Subscribe before reading, then
    /// wait for `changed()`, and no commit is missed.
    pub(crate) fn subscribe_changes(&self, producer: &str) -> watch::Receiver<u64> {
        self.signals.sender(producer).subscribe()
    }

    /// Changes of `producer` after position `after`, in order, at most `limit`.
    /// With `docs`, each carries the record while it is still current.
    pub async fn changes_after(
        &self,
        producer: &str,
        after: i64,
        limit: i64,
        docs: bool,
    ) -> Result<Vec<FeedChange>, StoreError> {
        let sql = if docs {
            "SELECT c.seq, c.key, c.op, c.hash, c.version, c.source, c.at, e.doc, e.hash
             FROM changes c LEFT JOIN entities e ON e.producer = c.producer AND e.key = c.key
             WHERE c.producer = $1 AND c.seq > $2 ORDER BY c.seq LIMIT $3"
        } else {
            "SELECT seq, key, op, hash, version, source, at FROM changes
             WHERE producer = $1 AND seq > $2 ORDER BY seq LIMIT $3"
        };
        let read = db("read the change feed");
        query(sql)
            .bind(producer)
            .bind(after)
            .bind(limit)
            .fetch(&self.pool)
            .map_err(read)
            .and_then(|r| async move {
                let hash: Option<Vec<u8>> = r.try_get(3).map_err(read)?;
                let op: String = r.try_get(2).map_err(read)?;
                let (doc, superseded) = if docs && op == "put" {
                    let current: Option<Vec<u8>> = r.try_get(8).map_err(read)?;
                    if current.is_some() && current == hash {
                        let text: Option<String> = r.try_get(7).map_err(read)?;
                        let doc =
                            text.map(|t| serde_json::from_str(&t))
                                .transpose()
                                .map_err(|e| StoreError::Corrupt {
                                    table: "entities",
                                    reason: format!("document is not JSON: {e}"),
                                })?;
                        (doc, false)
                    } else {
                        (None, true)
                    }
                } else {
                    (None, false)
                };
                Ok(FeedChange {
                    seq: r.try_get(0).map_err(read)?,
                    producer: producer.to_string(),
                    key: r.try_get(1).map_err(read)?,
                    op,
                    version: r.try_get(4).map_err(read)?,
                    hash: hash.map(hex::encode),
                    source: super::entities::source_col(&r, 5, "changes")?,
                    at: r.try_get(6).map_err(read)?,
                    doc,
                    superseded,
                })
            })
            .try_collect()
            .await
    }

    /// The position of `producer`'s newest change (0 before the first).
    pub(crate) async fn feed_head(&self, producer: &str) -> Result<i64, StoreError> {
        let seq: Option<i64> = query("SELECT seq FROM chain_heads WHERE producer = $1")
            .bind(producer)
            .fetch_optional(&self.pool)
            .await
            .map_err(db("read the chain head"))?
            .map(|r| r.try_get(0))
            .transpose()
            .map_err(db("read the chain head"))?;
        Ok(seq.unwrap_or(0))
    }

    /// The sync state of each of `keys` that has an open work item:
    /// `pending` is drifted, `running` is being corrected. Keys without an
    /// open item are in sync and absent from the map.
    pub(crate) async fn open_work_states(
        &self,
        producer: &str,
        keys: &[&str],
    ) -> Result<HashMap<String, WorkState>, StoreError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(self.backend.batch()) {
            let sql = format!(
                "SELECT key, state FROM work WHERE producer = $1 AND state IN ('pending', 'running') AND key {}",
                self.backend.any(2, chunk.len())
            );
            let q = query(&sql).bind(producer);
            let q = self
                .backend
                .bind_any(q, chunk.iter().map(|k| k.to_string()).collect());
            for r in q
                .fetch_all(&self.pool)
                .await
                .map_err(db("read open work of entities"))?
            {
                let key: String = r.try_get(0).map_err(db("read open work of entities"))?;
                let state: String = r.try_get(1).map_err(db("read open work of entities"))?;
                let state = super::work::work_state(&state)?;
                out.insert(key, state);
            }
        }
        Ok(out)
    }

    /// On PostgreSQL, turns other replicas' `NOTIFY driftd_changes` into
    /// this process's wake-ups until `cancel`; reconnects after a lost
    /// connection and then wakes every consumer once, so a notification lost
    /// meanwhile costs one read, not a missed change. Returns at once on SQLite
    /// (one process owns the file).
    pub(crate) async fn listen_changes(&self, cancel: CancellationToken) {
        let super::Pool::Postgres(pool) = &self.pool else {
            return;
        };
        // A pool of its own, so the listening connection is not one of the store's.
        let options = (*pool.connect_options()).clone();
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        while !cancel.is_cancelled() {
            match sqlx::postgres::PgListener::connect_with(&own).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => {
                        self.signals.bump_all();
                        loop {
                            tokio::select! {
                                _ = cancel.cancelled() => return,
                                n = l.recv() => match n {
                                    Ok(n) => {
                                        if let Some((from, producer)) = n.payload().split_once(':') {
                                            if from != self.signals.instance {
                                                self.signals.bump(producer);
                                            }
                                        }
                                    }
                                    Err(e) => {
                                        warn!(error = %e, "change feed LISTEN connection lost; reconnecting");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "LISTEN driftd_changes failed; retrying"),
                },
                Err(e) => {
                    warn!(error = %e, "cannot open the change feed LISTEN connection; retrying")
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}
