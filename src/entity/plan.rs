//! A batch of writes to one producer, decided in order: the outcomes, the rows to upsert, the bucket digest deltas and the `changes` links.

use std::collections::{BTreeMap, HashMap};

use super::{decide, ChainHead, ChangeLink, EntityWrite, Next, Source, StoredRow, WriteOutcome};
use crate::canonical::{bucket_of, Digest, RecordHash, RecordHasher};

/// A row to upsert: the state the batch's last applied write of `key` left.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RowWrite<'w> {
    pub(crate) key: &'w str,
    pub(crate) row: StoredRow,
    /// The source of that last write.
    pub(crate) source: Source,
}

/// A `changes` row to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewLink<'w> {
    pub(crate) key: &'w str,
    pub(crate) seq: i64,
    pub(crate) op: &'static str,
    pub(crate) hash: Option<RecordHash>,
    pub(crate) version: Option<i64>,
    pub(crate) source: Source,
    pub(crate) chain: [u8; 32],
}

/// What a batch of writes does, for the store to flush.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BatchPlan<'w> {
    /// One per write, in the order of the writes.
    pub(crate) outcomes: Vec<WriteOutcome>,
    /// One per key an applied write touched, in key order.
    pub(crate) rows: Vec<RowWrite<'w>>,
    /// What to add to each bucket's digest (summed over the batch; may be empty).
    pub(crate) buckets: BTreeMap<u32, Digest>,
    /// One per applied write, in order, each chained to the one before.
    pub(crate) links: Vec<NewLink<'w>>,
    /// The chain head after the last link.
    pub(crate) head: ChainHead,
}

/// Decides `writes` in order, each against the state the rows `current`
/// (the stored rows of the touched keys; an absent key has no row) and the
/// earlier writes of the batch left, and chains an applied write's
/// `changes` row to `head`, stamped `now`.
pub(crate) fn plan_batch<'w>(
    mut current: HashMap<&'w str, StoredRow>,
    writes: &'w [EntityWrite],
    hasher: &RecordHasher,
    bucket_bits: u8,
    producer: &str,
    head: ChainHead,
    now: i64,
) -> BatchPlan<'w> {
    let mut outcomes = Vec::with_capacity(writes.len());
    let mut buckets: BTreeMap<u32, Digest> = BTreeMap::new();
    let mut rows: BTreeMap<&'w str, (StoredRow, Source)> = BTreeMap::new();
    let mut links: Vec<NewLink<'w>> = Vec::new();
    let ChainHead { mut seq, mut chain } = head;
    for w in writes {
        let key = w.key.as_str();
        let stored = current.get(key);
        let (outcome, next) = decide(stored, w, hasher);
        outcomes.push(outcome);
        let Some(next) = next else { continue };
        if let Some(StoredRow {
            hash: Some(h),
            bucket,
            ..
        }) = stored
        {
            buckets.entry(*bucket).or_default().remove(key, h);
        }
        let bucket = bucket_of(key, bucket_bits);
        let (doc, hash) = match next {
            Next::Put { doc, hash } => {
                buckets.entry(bucket).or_default().add(key, &hash);
                (Some(doc), Some(hash))
            }
            Next::Tombstone => (None, None),
        };
        let version = w.version.or(stored.and_then(|c| c.version));
        seq += 1;
        let op = if hash.is_some() { "put" } else { "delete" };
        chain = ChangeLink {
            producer,
            seq,
            key,
            op,
            hash: hash.as_ref(),
            version,
            source: w.source.as_str(),
            at: now,
        }
        .chain(&chain);
        links.push(NewLink {
            key,
            seq,
            op,
            hash,
            version,
            source: w.source,
            chain,
        });
        let row = StoredRow {
            deleted: hash.is_none(),
            doc,
            hash,
            bucket,
            version,
        };
        current.insert(key, row.clone());
        rows.insert(key, (row, w.source));
    }
    BatchPlan {
        outcomes,
        rows: rows
            .into_iter()
            .map(|(key, (row, source))| RowWrite { key, row, source })
            .collect(),
        buckets,
        links,
        head: ChainHead { seq, chain },
    }
}

#[cfg(test)]
mod tests;
