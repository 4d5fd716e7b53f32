//! Why each drift happened: one cause from a fixed set, decided from the drift, the local row and what the inbox says about the key (pure).
//!
//! The rules, first match wins:
//! 1. `late_delta`: a delta naming the key arrived but was not applied when
//!    the keyframe compared (it waits for the sweeper or for its fetch).
//! 2. `rejected_delta`: a delta naming the key was refused (`rejected`)
//!    after the local row was last written (or at all, when there is none).
//! 3. `deleted_upstream`: the local row exists, the producer no longer has
//!    it, and no deletion reached driftd.
//! 4. `created_upstream`: the producer has a record driftd never held (no
//!    row, not even a tombstone) and no delta for it arrived.
//! 5. `silent_change`: the content differs but the producer's version is not
//!    newer than the local one (the vendor changed it without a newer
//!    version, or went back): no delta could have ordered it.
//! 6. `lost_delta`: the producer's version is newer (or versions are not
//!    kept, so newer cannot be told from silent) and no delta for it arrived.

use super::compare::{Drift, DriftKind};
use crate::entity::LocalRow;

/// The cause of one drift; its `as_str` is the `cause` label and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    LostDelta,
    LateDelta,
    RejectedDelta,
    SilentChange,
    DeletedUpstream,
    CreatedUpstream,
}

impl Cause {
    pub const ALL: &'static [Cause] = &[
        Self::LostDelta,
        Self::LateDelta,
        Self::RejectedDelta,
        Self::SilentChange,
        Self::DeletedUpstream,
        Self::CreatedUpstream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::LostDelta => "lost_delta",
            Self::LateDelta => "late_delta",
            Self::RejectedDelta => "rejected_delta",
            Self::SilentChange => "silent_change",
            Self::DeletedUpstream => "deleted_upstream",
            Self::CreatedUpstream => "created_upstream",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == s)
    }

    /// The causes [`attribute`] can give a drift of `kind`.
    pub(crate) fn of_kind(kind: DriftKind) -> &'static [Cause] {
        use Cause::*;
        match kind {
            DriftKind::Missing => &[
                LateDelta,
                RejectedDelta,
                CreatedUpstream,
                SilentChange,
                LostDelta,
            ],
            DriftKind::Extra => &[LateDelta, RejectedDelta, DeletedUpstream],
            DriftKind::Changed => &[LateDelta, RejectedDelta, SilentChange, LostDelta],
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the inbox says about one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Evidence {
    /// A delta naming the key is committed and not applied yet.
    pub waiting: bool,
    /// When the newest refused delta naming the key arrived (ms).
    pub refused_at: Option<i64>,
}

/// The cause of `d`, given the local row the compare saw (live or a
/// tombstone; none if driftd never held the key) and the key's evidence.
pub(crate) fn attribute(d: &Drift, local: Option<&LocalRow>, e: Evidence) -> Cause {
    if e.waiting {
        return Cause::LateDelta;
    }
    let written_at = local.map(|l| l.updated_at);
    if e.refused_at
        .is_some_and(|at| written_at.is_none_or(|w| at >= w))
    {
        return Cause::RejectedDelta;
    }
    let remote_version = d.remote.and_then(|(_, v)| v);
    match d.kind {
        DriftKind::Extra => Cause::DeletedUpstream,
        DriftKind::Missing if local.is_none() => Cause::CreatedUpstream,
        DriftKind::Missing | DriftKind::Changed => {
            match (remote_version, local.and_then(|l| l.version)) {
                (Some(remote), Some(local)) if remote <= local => Cause::SilentChange,
                _ => Cause::LostDelta,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::RecordHasher;
    use crate::keyframe::fetch::DocAt;
    use serde_json::json;

    fn drift(kind: DriftKind, version: Option<i64>) -> Drift {
        let h = RecordHasher::default().hash(&json!(1));
        Drift {
            key: "k".into(),
            kind,
            remote_hash: (kind != DriftKind::Extra).then_some(h),
            local_hash: None,
            remote: (kind != DriftKind::Extra).then_some((DocAt { offset: 0, len: 0 }, version)),
            cause: None,
        }
    }

    fn row(version: Option<i64>, deleted: bool, updated_at: i64) -> LocalRow {
        LocalRow {
            key: "k".into(),
            hash: None,
            version,
            deleted,
            updated_at,
        }
    }

    #[test]
    fn each_cause_from_its_evidence() {
        use Cause::*;
        use DriftKind::*;
        let none = Evidence::default();
        let waiting = Evidence {
            waiting: true,
            ..none
        };
        let refused = |at| Evidence {
            refused_at: Some(at),
            ..none
        };
        let live = row(Some(5), false, 100);
        let tomb = row(Some(5), true, 100);
        let cases: &[(Drift, Option<&LocalRow>, Evidence, Cause)] = &[
            (drift(Changed, Some(6)), Some(&live), none, LostDelta),
            (
                drift(Changed, None),
                Some(&row(None, false, 100)),
                none,
                LostDelta,
            ),
            (drift(Changed, Some(5)), Some(&live), none, SilentChange),
            (drift(Changed, Some(4)), Some(&live), none, SilentChange),
            (drift(Changed, Some(6)), Some(&live), waiting, LateDelta),
            (drift(Missing, Some(6)), None, waiting, LateDelta),
            (
                drift(Changed, Some(6)),
                Some(&live),
                refused(150),
                RejectedDelta,
            ),
            // Refused before the row was last written: older news.
            (drift(Changed, Some(6)), Some(&live), refused(50), LostDelta),
            (drift(Missing, Some(1)), None, refused(50), RejectedDelta),
            (drift(Missing, Some(1)), None, none, CreatedUpstream),
            (drift(Missing, Some(6)), Some(&tomb), none, LostDelta),
            (drift(Missing, Some(5)), Some(&tomb), none, SilentChange),
            (drift(Extra, None), Some(&live), none, DeletedUpstream),
            (drift(Extra, None), Some(&live), refused(150), RejectedDelta),
        ];
        for (i, (d, local, e, want)) in cases.iter().enumerate() {
            assert_eq!(
                attribute(d, *local, *e),
                *want,
                "case {i}: {d:?} {local:?} {e:?}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for c in Cause::ALL {
            assert_eq!(Cause::parse(c.as_str()), Some(*c));
        }
        assert_eq!(Cause::parse("other"), None);
    }
}
