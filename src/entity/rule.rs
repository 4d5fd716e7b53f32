//! The version rule: what one write does to the row stored under its key.

use serde_json::Value;

use super::{Change, EntityWrite, WriteOutcome, WriteRule};
use crate::canonical::{RecordHash, RecordHasher};
use crate::patch::merge_patch;

/// What a write needs of the row stored under its key. A tombstone
/// (`deleted`) has no doc and no hash but keeps its version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredRow {
    pub(crate) doc: Option<Value>,
    pub(crate) hash: Option<RecordHash>,
    pub(crate) bucket: u32,
    pub(crate) version: Option<i64>,
    pub(crate) deleted: bool,
}

/// The row a write leaves behind.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Next {
    Put { doc: Value, hash: RecordHash },
    Tombstone,
}

/// Decides what a write does given the stored row (`None`: no row).
pub(crate) fn decide(
    current: Option<&StoredRow>,
    w: &EntityWrite,
    hasher: &RecordHasher,
) -> (WriteOutcome, Option<Next>) {
    if let WriteRule::Correct { seen } = w.rule {
        let now = current.filter(|c| !c.deleted).and_then(|c| c.hash);
        if now != seen {
            return (WriteOutcome::Stale, None);
        }
    }
    // A write of the stored version: a delta's content must match to be
    // stale; another content is a tie. A fetched record takes the tie.
    let mut same_version = false;
    if matches!(w.rule, WriteRule::IfNewer | WriteRule::Fetched) {
        if let (Some(stored), Some(incoming)) = (current.and_then(|c| c.version), w.version) {
            if incoming < stored {
                return (WriteOutcome::Stale, None);
            }
            same_version = incoming == stored;
        }
    }
    let live = current.filter(|c| !c.deleted);
    let tie = same_version && w.rule == WriteRule::IfNewer;
    if tie && w.change == Change::Delete {
        let outcome = if live.is_none() {
            WriteOutcome::Stale
        } else {
            WriteOutcome::Tie
        };
        return (outcome, None);
    }
    let next = match &w.change {
        Change::Delete => {
            if live.is_none() {
                // Already absent: record a newer version on an existing tombstone only.
                let newer = current.is_some_and(|c| w.version > c.version);
                if current.is_none() && w.version.is_none() {
                    return (WriteOutcome::Unchanged, None);
                }
                if current.is_some() && !newer {
                    return (WriteOutcome::Unchanged, None);
                }
            }
            Next::Tombstone
        }
        Change::Replace(doc) => Next::Put {
            hash: hasher.hash(doc),
            doc: doc.clone(),
        },
        Change::Hashed(doc, hash) => Next::Put {
            hash: *hash,
            doc: doc.clone(),
        },
        Change::MergePatch(patch) => {
            let mut doc = live
                .and_then(|c| c.doc.clone())
                .unwrap_or_else(|| Value::Object(Default::default()));
            merge_patch(&mut doc, patch);
            Next::Put {
                hash: hasher.hash(&doc),
                doc,
            }
        }
    };
    let same_content = match (&next, live) {
        (Next::Put { hash, .. }, Some(c)) => c.hash == Some(*hash),
        _ => false,
    };
    if tie {
        let outcome = if same_content {
            WriteOutcome::Stale
        } else {
            WriteOutcome::Tie
        };
        return (outcome, None);
    }
    if same_content && (w.version.is_none() || w.version == current.and_then(|c| c.version)) {
        return (WriteOutcome::Unchanged, None);
    }
    (WriteOutcome::Applied, Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::Source;
    use serde_json::json;

    fn cur(version: Option<i64>, deleted: bool) -> StoredRow {
        let doc = json!({"a": 1});
        StoredRow {
            hash: (!deleted).then(|| RecordHasher::default().hash(&doc)),
            doc: (!deleted).then_some(doc),
            bucket: 0,
            version,
            deleted,
        }
    }

    fn write(change: Change, version: Option<i64>, rule: WriteRule) -> EntityWrite {
        EntityWrite {
            key: "k".into(),
            change,
            version,
            source: Source::Webhook,
            rule,
        }
    }

    #[test]
    fn a_hashed_replace_writes_as_a_replace_with_the_hash_it_carries() {
        let h = RecordHasher::default();
        let doc = json!({"a": 2});
        let plain = decide(
            None,
            &write(Change::Replace(doc.clone()), None, WriteRule::IfNewer),
            &h,
        );
        let hash = h.hash(&doc);
        let hashed = decide(
            None,
            &write(Change::Hashed(doc.clone(), hash), None, WriteRule::IfNewer),
            &h,
        );
        assert_eq!(plain, hashed);
        assert_eq!(
            hashed,
            (WriteOutcome::Applied, Some(Next::Put { doc, hash }))
        );
        // The same content as stored: unchanged either way.
        let same = cur(None, false);
        let again = json!({"a": 1});
        let w = write(
            Change::Hashed(again.clone(), h.hash(&again)),
            None,
            WriteRule::IfNewer,
        );
        assert_eq!(decide(Some(&same), &w, &h).0, WriteOutcome::Unchanged);
    }

    #[test]
    fn version_rule_table() {
        use WriteOutcome::*;
        let h = RecordHasher::default();
        let put = |v| write(Change::Replace(json!({"a": 2})), v, WriteRule::IfNewer);
        let same = |v| write(Change::Replace(json!({"a": 1})), v, WriteRule::IfNewer);
        let del = |v| write(Change::Delete, v, WriteRule::IfNewer);
        let cases: Vec<(&str, Option<StoredRow>, EntityWrite, WriteOutcome)> = vec![
            ("new row", None, put(Some(1)), Applied),
            (
                "newer version",
                Some(cur(Some(1), false)),
                put(Some(2)),
                Applied,
            ),
            (
                "older version",
                Some(cur(Some(5), false)),
                put(Some(2)),
                Stale,
            ),
            (
                "same version, other content: a tie to ask the vendor about",
                Some(cur(Some(5), false)),
                put(Some(5)),
                Tie,
            ),
            (
                "same version, same content",
                Some(cur(Some(5), false)),
                same(Some(5)),
                Stale,
            ),
            (
                "delete at the stored version of a live row",
                Some(cur(Some(5), false)),
                del(Some(5)),
                Tie,
            ),
            (
                "delete at the stored version of a tombstone",
                Some(cur(Some(5), true)),
                del(Some(5)),
                Stale,
            ),
            (
                "put at the stored version of a tombstone",
                Some(cur(Some(5), true)),
                put(Some(5)),
                Tie,
            ),
            (
                "fetched record of the stored version wins the tie",
                Some(cur(Some(5), false)),
                write(
                    Change::Replace(json!({"a": 2})),
                    Some(5),
                    WriteRule::Fetched,
                ),
                Applied,
            ),
            (
                "fetched record older than the stored one",
                Some(cur(Some(5), false)),
                write(
                    Change::Replace(json!({"a": 2})),
                    Some(4),
                    WriteRule::Fetched,
                ),
                Stale,
            ),
            (
                "fetched record equal to the stored one",
                Some(cur(Some(5), false)),
                write(
                    Change::Replace(json!({"a": 1})),
                    Some(5),
                    WriteRule::Fetched,
                ),
                Unchanged,
            ),
            (
                "no versions: arrival order",
                Some(cur(None, false)),
                put(None),
                Applied,
            ),
            (
                "same content",
                Some(cur(None, false)),
                same(None),
                Unchanged,
            ),
            (
                "same content, newer version",
                Some(cur(Some(1), false)),
                same(Some(2)),
                Applied,
            ),
            (
                "delete live row",
                Some(cur(Some(1), false)),
                del(Some(2)),
                Applied,
            ),
            ("delete absent row", None, del(None), Unchanged),
            (
                "older put after delete",
                Some(cur(Some(5), true)),
                put(Some(4)),
                Stale,
            ),
            (
                "newer put after delete",
                Some(cur(Some(5), true)),
                put(Some(6)),
                Applied,
            ),
            (
                "correction of the row the keyframe saw",
                Some(cur(Some(5), false)),
                write(
                    Change::Replace(json!({"a": 2})),
                    Some(3),
                    WriteRule::Correct {
                        seen: Some(h.hash(&json!({"a": 1}))),
                    },
                ),
                Applied,
            ),
            (
                "correction after the row moved on",
                Some(cur(Some(5), false)),
                write(
                    Change::Replace(json!({"a": 2})),
                    Some(6),
                    WriteRule::Correct {
                        seen: Some(h.hash(&json!({"a": 9}))),
                    },
                ),
                Stale,
            ),
            (
                "correction creating a missing row",
                None,
                write(
                    Change::Replace(json!({"a": 2})),
                    None,
                    WriteRule::Correct { seen: None },
                ),
                Applied,
            ),
        ];
        for (name, current, w, expected) in cases {
            let (got, _) = decide(current.as_ref(), &w, &h);
            assert_eq!(got, expected, "{name}");
        }
    }
}
