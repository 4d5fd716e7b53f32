//! The entity domain: what a write is, which write wins, what a batch of writes does, and how the `changes` chain links.
//!
//! Nothing here does IO or reads a clock. The store reads the touched rows
//! and the chain head, calls `plan_batch` with the time, and flushes the
//! plan it gets back; the keyframe compare and the delta mapping build and
//! read these types without going through the store.
//!
//! - `rule.rs`: `decide`, the version rule for one write against its stored row.
//! - `plan.rs`: `plan_batch`, a batch of writes decided in order (cases: `plan/cases.txt`).
//! - `chain.rs`: `ChangeLink`, one `changes` row's link in its producer's chain.

mod chain;
mod plan;
mod rule;

use serde_json::Value;

use crate::canonical::RecordHash;

pub(crate) use chain::{ChainHead, ChangeLink};
pub(crate) use plan::{plan_batch, RowWrite};
pub(crate) use rule::{decide, Next, StoredRow};

/// What a write does to an entity.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The full record.
    Replace(Value),
    /// The full record with its hash under the producer's hasher, already
    /// computed (a keyframe hashed every record it pulled): written as
    /// `Replace`, without hashing it again.
    Hashed(Value, RecordHash),
    /// An RFC 7396 merge patch applied to the stored record (or to `{}`).
    MergePatch(Value),
    Delete,
}

/// Where a write came from; stored on the entity and in `changes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Webhook,
    Email,
    /// A corrective `apply` work item from a keyframe.
    Keyframe,
    Replay,
    /// The producer's record, fetched by key (a thin delta, a version tie, a refresh).
    Fetch,
    /// A record of an incremental pull between keyframes.
    Catchup,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Webhook => "webhook",
            Self::Email => "email",
            Self::Keyframe => "keyframe",
            Self::Replay => "replay",
            Self::Fetch => "fetch",
            Self::Catchup => "catchup",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Webhook,
            Self::Email,
            Self::Keyframe,
            Self::Replay,
            Self::Fetch,
            Self::Catchup,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The precondition a write must meet against the stored row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRule {
    /// Deltas: applied only when the version is newer than the stored one
    /// (without versions on either side, arrival order decides).
    IfNewer,
    /// Corrections from a keyframe: applied only while the local row is still
    /// what the keyframe saw (`seen`: its hash, `None` for absent), so a delta
    /// that landed since is never overwritten and a second run is a no-op.
    Correct { seen: Option<RecordHash> },
    /// The producer's current record, fetched: applied unless the stored
    /// version is newer. Unlike a delta it wins a tie (the same version with
    /// other content): it is what the producer holds now.
    Fetched,
}

/// One write of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityWrite {
    pub key: String,
    pub change: Change,
    pub version: Option<i64>,
    pub source: Source,
    pub rule: WriteRule,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The row changed.
    Applied,
    /// Same content as stored (a version bump may have been recorded).
    Unchanged,
    /// Older than (or as old as, with the same content) the stored version:
    /// nothing changed.
    Stale,
    /// The same version as stored but other content: the payload cannot say
    /// which is current, so nothing changed (a producer with `[producer.fetch]`
    /// asks the producer).
    Tie,
}

/// What a keyframe needs of a local row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRow {
    pub key: String,
    pub hash: Option<RecordHash>,
    pub version: Option<i64>,
    pub deleted: bool,
    pub updated_at: i64,
}
