//! The pure core of a keyframe: compare bucket digests, classify the rows of mismatched buckets, apply the race rule and the guard.
//!
//! Nothing here does IO or reads a clock: the caller passes what it observed
//! (the snapshot's rows and digests, the local digests and rows) and the time
//! the pull began, and gets back a plan.

use std::collections::BTreeMap;

use super::cause::Cause;
use super::fetch::DocAt;
use crate::canonical::{Digest, RecordHash};
use crate::entity::LocalRow;

/// One record of the producer's snapshot, as the compare needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Remote<'a> {
    pub key: &'a str,
    pub bucket: u32,
    pub hash: RecordHash,
    pub version: Option<i64>,
    /// Where the record's document is in the snapshot, to read it later.
    pub doc: DocAt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum DriftKind {
    /// The producer has it, the local copy doesn't.
    Missing,
    /// The local copy has it, the producer doesn't.
    Extra,
    /// Both have it with different content.
    Changed,
}

impl DriftKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Extra => "extra",
            Self::Changed => "changed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "missing" => Some(Self::Missing),
            "extra" => Some(Self::Extra),
            "changed" => Some(Self::Changed),
            _ => None,
        }
    }
}

/// One drifted entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Drift {
    pub key: String,
    pub kind: DriftKind,
    pub(crate) remote_hash: Option<RecordHash>,
    pub local_hash: Option<RecordHash>,
    /// The producer's record (`missing`, `changed`): where its document is
    /// in the snapshot, and its version.
    pub(crate) remote: Option<(DocAt, Option<i64>)>,
    /// Why it happened, once attributed ([`super::cause::attribute`]).
    pub cause: Option<Cause>,
}

/// Buckets whose digests differ (a bucket absent on one side counts as empty).
pub(crate) fn mismatched_buckets(
    remote: &BTreeMap<u32, Digest>,
    local: &BTreeMap<u32, Digest>,
) -> Vec<u32> {
    let empty = Digest::default();
    let mut out: Vec<u32> = remote
        .keys()
        .chain(local.keys())
        .copied()
        .filter(|b| remote.get(b).unwrap_or(&empty) != local.get(b).unwrap_or(&empty))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Buckets compared: every bucket either side holds (the union), so it is
/// never less than the mismatched buckets.
pub(crate) fn compared_buckets(
    remote: &BTreeMap<u32, Digest>,
    local: &BTreeMap<u32, Digest>,
) -> u64 {
    let only_local = local.keys().filter(|b| !remote.contains_key(b)).count();
    (remote.len() + only_local) as u64
}

/// What classifying found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Classified {
    pub drifts: Vec<Drift>,
    /// Keys left for the next keyframe because a newer local change raced the pull.
    pub skipped_races: Vec<String>,
}

/// Classifies the rows of the mismatched buckets.
///
/// `remote` and `local` hold only rows of those buckets. `pull_started_ms` is
/// when the pull began: a local row written at or after it may hold a delta
/// the snapshot predates, so it is not drift (invariant 5). So is a local row
/// whose version is newer than the snapshot's record, if it was written since
/// `previous_pull_ms` (the previous keyframe's start): a race lasts one
/// keyframe, so a producer whose versions went backwards still converges.
pub(crate) fn classify(
    remote: &[Remote<'_>],
    local: &[LocalRow],
    pull_started_ms: i64,
    previous_pull_ms: Option<i64>,
) -> Classified {
    let local_by_key: BTreeMap<&str, &LocalRow> =
        local.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut out = Classified::default();
    let protect_since = previous_pull_ms.unwrap_or(i64::MIN);
    let raced = |l: &LocalRow, remote_version: Option<i64>| {
        l.updated_at >= pull_started_ms
            || (l.updated_at >= protect_since
                && matches!((l.version, remote_version), (Some(lv), Some(rv)) if lv > rv))
    };
    for r in remote {
        let drift = match local_by_key.get(r.key) {
            Some(l) if !l.deleted && l.hash == Some(r.hash) => continue,
            Some(l) if raced(l, r.version) => {
                out.skipped_races.push(r.key.to_string());
                continue;
            }
            Some(l) if !l.deleted => Drift {
                key: r.key.to_string(),
                kind: DriftKind::Changed,
                remote_hash: Some(r.hash),
                local_hash: l.hash,
                remote: Some((r.doc, r.version)),
                cause: None,
            },
            _ => Drift {
                key: r.key.to_string(),
                kind: DriftKind::Missing,
                remote_hash: Some(r.hash),
                local_hash: None,
                remote: Some((r.doc, r.version)),
                cause: None,
            },
        };
        out.drifts.push(drift);
    }
    let remote_keys: std::collections::BTreeSet<&str> = remote.iter().map(|r| r.key).collect();
    for l in local {
        if l.deleted || remote_keys.contains(l.key.as_str()) {
            continue;
        }
        if raced(l, None) {
            out.skipped_races.push(l.key.clone());
            continue;
        }
        out.drifts.push(Drift {
            key: l.key.clone(),
            kind: DriftKind::Extra,
            remote_hash: None,
            local_hash: l.hash,
            remote: None,
            cause: None,
        });
    }
    out.drifts.sort_by(|a, b| a.key.cmp(&b.key));
    out.skipped_races.sort();
    out
}

/// The blast-radius guard: whether this drift must wait for an operator.
///
/// Only drift that endangers existing rows counts: `extra` (a deletion) and
/// `changed` (an overwrite), as a share of the live local rows. `missing`
/// rows are additions that lose nothing, so a table seeded by a few deltas
/// before its first keyframe still fills without an approval, while a partial
/// or empty snapshot against a full table (many `extra`) is held.
pub(crate) fn guard_trips(
    extra: u64,
    changed: u64,
    local_rows: u64,
    max_ratio: f64,
    max_rows: Option<u64>,
) -> bool {
    let endangered = extra + changed;
    endangered > 0
        && (endangered as f64 > max_ratio * local_rows as f64
            || max_rows.is_some_and(|max| endangered > max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{bucket_of, RecordHasher};
    use serde_json::json;

    fn h(n: i64) -> RecordHash {
        RecordHasher::default().hash(&json!(n))
    }

    fn remote(key: &'static str, content: i64, version: Option<i64>) -> Remote<'static> {
        Remote {
            key,
            bucket: bucket_of(key, 2),
            hash: h(content),
            version,
            doc: DocAt { offset: 0, len: 0 },
        }
    }

    /// Per-bucket digests of `records`, as the snapshot sums them.
    fn remote_digests<'a>(records: impl IntoIterator<Item = Remote<'a>>) -> BTreeMap<u32, Digest> {
        let mut out: BTreeMap<u32, Digest> = BTreeMap::new();
        for r in records {
            out.entry(r.bucket).or_default().add(r.key, &r.hash);
        }
        out
    }

    fn local(key: &str, content: Option<i64>, version: Option<i64>, updated_at: i64) -> LocalRow {
        LocalRow {
            key: key.into(),
            hash: content.map(h),
            version,
            deleted: content.is_none(),
            updated_at,
        }
    }

    /// Renders a classification compactly: `kind:key` per drift, `race:key` per skip.
    fn render(c: &Classified) -> String {
        let mut parts: Vec<String> = c
            .drifts
            .iter()
            .map(|d| format!("{}:{}", d.kind.as_str(), d.key))
            .collect();
        parts.extend(c.skipped_races.iter().map(|k| format!("race:{k}")));
        parts.join(" ")
    }

    #[test]
    fn classification_table() {
        const START: i64 = 1_000;
        let cases: Vec<(&str, Vec<Remote<'static>>, Vec<LocalRow>, &str)> = vec![
            (
                "equal rows",
                vec![remote("a", 1, None)],
                vec![local("a", Some(1), None, 0)],
                "",
            ),
            ("missing", vec![remote("a", 1, None)], vec![], "missing:a"),
            (
                "extra",
                vec![],
                vec![local("a", Some(1), None, 0)],
                "extra:a",
            ),
            (
                "changed",
                vec![remote("a", 2, None)],
                vec![local("a", Some(1), None, 0)],
                "changed:a",
            ),
            (
                "local tombstone, producer still has it",
                vec![remote("a", 1, Some(1))],
                vec![local("a", None, Some(1), 0)],
                "missing:a",
            ),
            (
                "tombstone absent remotely",
                vec![],
                vec![local("a", None, None, 0)],
                "",
            ),
            (
                "local version newer than snapshot",
                vec![remote("a", 1, Some(5))],
                vec![local("a", Some(2), Some(6), START - 100)],
                "race:a",
            ),
            (
                "local version older than snapshot",
                vec![remote("a", 1, Some(5))],
                vec![local("a", Some(2), Some(4), 0)],
                "changed:a",
            ),
            (
                "newer version, but unchanged since the previous keyframe",
                vec![remote("a", 1, Some(5))],
                vec![local("a", Some(2), Some(6), START - 600)],
                "changed:a",
            ),
            (
                "written after the pull began",
                vec![remote("a", 1, None)],
                vec![local("a", Some(2), None, START)],
                "race:a",
            ),
            (
                "created after the pull began",
                vec![],
                vec![local("a", Some(2), None, START + 5)],
                "race:a",
            ),
            (
                "deleted after the pull began",
                vec![remote("a", 1, None)],
                vec![local("a", None, None, START + 1)],
                "race:a",
            ),
            (
                "deleted at a newer version",
                vec![remote("a", 1, Some(3))],
                vec![local("a", None, Some(4), START - 100)],
                "race:a",
            ),
            (
                "mixed",
                vec![
                    remote("a", 1, None),
                    remote("b", 2, None),
                    remote("c", 3, None),
                ],
                vec![
                    local("b", Some(9), None, 0),
                    local("c", Some(3), None, 0),
                    local("d", Some(4), None, 0),
                ],
                "missing:a changed:b extra:d",
            ),
        ];
        for (name, r, l, expected) in cases {
            let got = classify(&r, &l, START, Some(START - 500));
            assert_eq!(render(&got), expected, "{name}");
        }
    }

    #[test]
    fn mismatched_buckets_treats_absent_as_empty() {
        let rs = [
            remote("a", 1, None),
            remote("b", 2, None),
            remote("c", 3, None),
        ];
        let remote_d = remote_digests(rs.iter().copied());
        assert_eq!(mismatched_buckets(&remote_d, &remote_d), Vec::<u32>::new());
        let mut local_d = remote_d.clone();
        let first = *local_d.keys().next().unwrap();
        local_d.remove(&first);
        local_d.insert(
            99,
            Digest {
                rows: 0,
                lanes: [0; 4],
            },
        );
        assert_eq!(mismatched_buckets(&remote_d, &local_d), vec![first]);
        assert_eq!(
            compared_buckets(&remote_d, &local_d),
            remote_d.len() as u64 + 1,
            "the union of both sides' buckets"
        );
        assert_eq!(
            mismatched_buckets(&BTreeMap::new(), &remote_d).len(),
            remote_d.len()
        );
    }

    #[test]
    fn guard_table() {
        let cases = [
            // (extra, changed, local rows, ratio, max_rows, trips)
            (0, 0, 100, 0.5, None, false),
            (50, 0, 100, 0.5, None, false),
            (30, 21, 100, 0.5, None, true),
            // an empty snapshot against a full table
            (100, 0, 100, 0.5, None, true),
            // a partial snapshot: 1,000 of 3,000 records
            (2_000, 0, 3_000, 0.5, None, true),
            // the first keyframe into an empty table (any number missing)
            (0, 0, 0, 0.5, None, false),
            // seeding after a few deltas: 290 missing, nothing endangered
            (0, 0, 10, 0.5, None, false),
            (0, 0, 10, 0.5, Some(5), false),
            // ...but overwriting most of those few rows is held
            (0, 6, 10, 0.5, None, true),
            (11, 0, 1_000, 0.5, Some(10), true),
            (5, 5, 1_000, 0.5, Some(10), false),
            (2, 0, 1_000, 0.001, None, true),
        ];
        for (extra, changed, local, ratio, rows, trips) in cases {
            assert_eq!(
                guard_trips(extra, changed, local, ratio, rows),
                trips,
                "extra {extra}, changed {changed} of {local} local rows, ratio {ratio}, rows {rows:?}"
            );
        }
    }
}
