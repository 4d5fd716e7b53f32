//! Table tests of `plan_batch`: each case is the stored rows and a batch of writes, and the plan it expects, rendered as text.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::*;
use crate::entity::{Change, WriteRule};

const PRODUCER: &str = "orders";
const BITS: u8 = 3;
const NOW: i64 = 1_700_000_000_000;
/// A head in the middle of a chain, so every case links onto earlier rows.
const HEAD: ChainHead = ChainHead {
    seq: 41,
    chain: [7; 32],
};

/// A stored row of `key`: live with `doc`, or a tombstone for `None`.
fn stored(
    key: &'static str,
    doc: Option<Value>,
    version: Option<i64>,
) -> (&'static str, StoredRow) {
    let hash = doc.as_ref().map(|d| RecordHasher::default().hash(d));
    let row = StoredRow {
        deleted: doc.is_none(),
        doc,
        hash,
        bucket: bucket_of(key, BITS),
        version,
    };
    (key, row)
}

fn write(key: &str, change: Change, version: Option<i64>) -> EntityWrite {
    EntityWrite {
        key: key.into(),
        change,
        version,
        source: Source::Webhook,
        rule: WriteRule::IfNewer,
    }
}

fn put(key: &str, doc: Value, version: Option<i64>) -> EntityWrite {
    write(key, Change::Replace(doc), version)
}

fn patch(key: &str, patch: Value, version: Option<i64>) -> EntityWrite {
    write(key, Change::MergePatch(patch), version)
}

fn del(key: &str, version: Option<i64>) -> EntityWrite {
    write(key, Change::Delete, version)
}

/// A keyframe's correction of `key` to `doc`, made while the row was `seen` (`None`: absent).
fn correct(key: &str, doc: Value, seen: Option<Value>) -> EntityWrite {
    EntityWrite {
        source: Source::Keyframe,
        rule: WriteRule::Correct {
            seen: seen.map(|s| RecordHasher::default().hash(&s)),
        },
        ..put(key, doc, None)
    }
}

fn v(version: Option<i64>) -> String {
    version.map_or("v-".into(), |n| format!("v{n}"))
}

/// The plan as text: outcomes, rows in key order, links in write order.
fn render(plan: &BatchPlan<'_>) -> String {
    let mut out = String::from("outcomes:");
    for o in &plan.outcomes {
        write!(out, " {o:?}").unwrap();
    }
    for r in &plan.rows {
        let doc = r
            .row
            .doc
            .as_ref()
            .map_or("tombstone".into(), Value::to_string);
        let source = r.source.as_str();
        write!(out, "\nrow {} {doc} {} {source}", r.key, v(r.row.version)).unwrap();
    }
    for l in &plan.links {
        let (seq, key, op, source) = (l.seq, l.key, l.op, l.source.as_str());
        write!(out, "\nlink {seq} {key} {op} {} {source}", v(l.version)).unwrap();
    }
    out
}

/// The digest of every live row, per bucket.
fn digests<'a>(rows: impl IntoIterator<Item = (&'a str, &'a StoredRow)>) -> BTreeMap<u32, Digest> {
    let mut out: BTreeMap<u32, Digest> = BTreeMap::new();
    for (key, row) in rows {
        if let Some(h) = &row.hash {
            out.entry(row.bucket).or_default().add(key, h);
        }
    }
    out
}

/// What every plan must satisfy, whatever the case: the digest deltas take
/// the stored digests to the digests of the rows after the batch, every
/// applied write has one link chained onto the one before it, and the head
/// is the last link.
fn check_invariants(
    name: &str,
    current: &HashMap<&str, StoredRow>,
    writes: &[EntityWrite],
    plan: &BatchPlan<'_>,
) {
    let hasher = RecordHasher::default();
    assert_eq!(
        plan.outcomes.len(),
        writes.len(),
        "{name}: one outcome per write"
    );
    let applied = plan
        .outcomes
        .iter()
        .filter(|o| **o == WriteOutcome::Applied)
        .count();
    assert_eq!(
        plan.links.len(),
        applied,
        "{name}: one link per applied write"
    );

    let mut after: BTreeMap<&str, &StoredRow> = current.iter().map(|(k, r)| (*k, r)).collect();
    for r in &plan.rows {
        assert_eq!(
            r.row.bucket,
            bucket_of(r.key, BITS),
            "{name}: bucket of {}",
            r.key
        );
        assert_eq!(
            r.row.hash,
            r.row.doc.as_ref().map(|d| hasher.hash(d)),
            "{name}: hash of {}",
            r.key
        );
        assert_eq!(
            r.row.deleted,
            r.row.doc.is_none(),
            "{name}: tombstone {}",
            r.key
        );
        after.insert(r.key, &r.row);
    }
    let mut expected = digests(current.iter().map(|(k, r)| (*k, r)));
    for (bucket, delta) in &plan.buckets {
        let d = expected.entry(*bucket).or_default();
        d.rows += delta.rows;
        for (acc, x) in d.lanes.iter_mut().zip(delta.lanes) {
            *acc += x;
        }
    }
    expected.retain(|_, d| !d.is_empty());
    assert_eq!(expected, digests(after), "{name}: digest deltas");

    let mut head = HEAD;
    for l in &plan.links {
        head.seq += 1;
        assert_eq!(l.seq, head.seq, "{name}: seq of the link of {}", l.key);
        let link = ChangeLink {
            producer: PRODUCER,
            seq: l.seq,
            key: l.key,
            op: l.op,
            hash: l.hash.as_ref(),
            version: l.version,
            source: l.source.as_str(),
            at: NOW,
        };
        head.chain = link.chain(&head.chain);
        assert_eq!(
            l.chain, head.chain,
            "{name}: chain of the link of seq {}",
            l.seq
        );
    }
    assert_eq!(plan.head, head, "{name}: head after the batch");
}

fn plan_of<'w>(current: &HashMap<&'w str, StoredRow>, writes: &'w [EntityWrite]) -> BatchPlan<'w> {
    let hasher = RecordHasher::default();
    plan_batch(current.clone(), writes, &hasher, BITS, PRODUCER, HEAD, NOW)
}

/// A case: its name, the stored rows, the batch, and the plan it expects.
type Case = (
    &'static str,
    Vec<(&'static str, StoredRow)>,
    Vec<EntityWrite>,
    &'static str,
);

#[test]
fn plan_batch_table() {
    let cases: Vec<Case> = vec![
        (
            "new key",
            vec![],
            vec![put("a", json!({"n": 1}), Some(1))],
            "outcomes: Applied\n\
             row a {\"n\":1} v1 webhook\n\
             link 42 a put v1 webhook",
        ),
        (
            "newer version replaces",
            vec![stored("a", Some(json!({"n": 1})), Some(1))],
            vec![put("a", json!({"n": 2}), Some(2))],
            "outcomes: Applied\n\
             row a {\"n\":2} v2 webhook\n\
             link 42 a put v2 webhook",
        ),
        (
            "older version is stale",
            vec![stored("a", Some(json!({"n": 5})), Some(5))],
            vec![put("a", json!({"n": 4}), Some(4))],
            "outcomes: Stale",
        ),
        (
            "equal version is stale",
            vec![stored("a", Some(json!({"n": 5})), Some(5))],
            vec![put("a", json!({"n": 6}), Some(5))],
            "outcomes: Stale",
        ),
        (
            "older version after a delete is stale",
            vec![stored("a", None, Some(5))],
            vec![put("a", json!({"n": 4}), Some(4))],
            "outcomes: Stale",
        ),
        (
            "newer version revives a tombstone",
            vec![stored("a", None, Some(5))],
            vec![put("a", json!({"n": 6}), Some(6))],
            "outcomes: Applied\n\
             row a {\"n\":6} v6 webhook\n\
             link 42 a put v6 webhook",
        ),
        (
            "merge patch onto the stored doc",
            vec![stored("a", Some(json!({"m": 1, "n": 1})), Some(1))],
            vec![patch("a", json!({"m": null, "o": 2}), Some(2))],
            "outcomes: Applied\n\
             row a {\"n\":1,\"o\":2} v2 webhook\n\
             link 42 a put v2 webhook",
        ),
        (
            "merge patch of an absent key starts from an empty object",
            vec![],
            vec![patch("a", json!({"x": 1}), None)],
            "outcomes: Applied\n\
             row a {\"x\":1} v- webhook\n\
             link 42 a put v- webhook",
        ),
        (
            "merge patch onto a tombstone starts from an empty object",
            vec![stored("a", None, Some(1))],
            vec![patch("a", json!({"x": 1}), Some(2))],
            "outcomes: Applied\n\
             row a {\"x\":1} v2 webhook\n\
             link 42 a put v2 webhook",
        ),
        (
            "delete leaves a tombstone",
            vec![stored("a", Some(json!({"n": 1})), Some(1))],
            vec![del("a", Some(2))],
            "outcomes: Applied\n\
             row a tombstone v2 webhook\n\
             link 42 a delete v2 webhook",
        ),
        (
            "delete without a version keeps the stored version",
            vec![stored("a", Some(json!({"n": 1})), Some(3))],
            vec![del("a", None)],
            "outcomes: Applied\n\
             row a tombstone v3 webhook\n\
             link 42 a delete v3 webhook",
        ),
        (
            "delete of an absent key without a version does nothing",
            vec![],
            vec![del("a", None)],
            "outcomes: Unchanged",
        ),
        (
            "delete of an absent key with a version leaves a tombstone",
            vec![],
            vec![del("a", Some(4))],
            "outcomes: Applied\n\
             row a tombstone v4 webhook\n\
             link 42 a delete v4 webhook",
        ),
        (
            "newer delete of a tombstone records its version",
            vec![stored("a", None, Some(1))],
            vec![del("a", Some(2))],
            "outcomes: Applied\n\
             row a tombstone v2 webhook\n\
             link 42 a delete v2 webhook",
        ),
        (
            "correction of the row the keyframe saw",
            vec![stored("a", Some(json!({"n": 1})), Some(5))],
            vec![correct("a", json!({"n": 9}), Some(json!({"n": 1})))],
            "outcomes: Applied\n\
             row a {\"n\":9} v5 keyframe\n\
             link 42 a put v5 keyframe",
        ),
        (
            "correction after the row moved on",
            vec![stored("a", Some(json!({"n": 2})), Some(6))],
            vec![correct("a", json!({"n": 9}), Some(json!({"n": 1})))],
            "outcomes: Stale",
        ),
        (
            "correction creating a row the keyframe saw missing",
            vec![],
            vec![correct("a", json!({"n": 9}), None)],
            "outcomes: Applied\n\
             row a {\"n\":9} v- keyframe\n\
             link 42 a put v- keyframe",
        ),
        (
            "correction of a missing row that a delta created since",
            vec![stored("a", Some(json!({"n": 1})), Some(1))],
            vec![correct("a", json!({"n": 9}), None)],
            "outcomes: Stale",
        ),
        (
            "correction of a missing row over a tombstone",
            vec![stored("a", None, Some(3))],
            vec![correct("a", json!({"n": 9}), None)],
            "outcomes: Applied\n\
             row a {\"n\":9} v3 keyframe\n\
             link 42 a put v3 keyframe",
        ),
        (
            "a correction run twice applies once",
            vec![stored("a", Some(json!({"n": 1})), Some(5))],
            vec![
                correct("a", json!({"n": 9}), Some(json!({"n": 1}))),
                correct("a", json!({"n": 9}), Some(json!({"n": 1}))),
            ],
            "outcomes: Applied Stale\n\
             row a {\"n\":9} v5 keyframe\n\
             link 42 a put v5 keyframe",
        ),
        (
            "unchanged content",
            vec![stored("a", Some(json!({"n": 1})), None)],
            vec![put("a", json!({"n": 1}), None)],
            "outcomes: Unchanged",
        ),
        (
            "unchanged content under the same version",
            vec![stored("a", Some(json!({"n": 1})), Some(2))],
            vec![patch("a", json!({"n": 1}), None)],
            "outcomes: Unchanged",
        ),
        (
            "unchanged content with a newer version records the version",
            vec![stored("a", Some(json!({"n": 1})), Some(1))],
            vec![put("a", json!({"n": 1}), Some(2))],
            "outcomes: Applied\n\
             row a {\"n\":1} v2 webhook\n\
             link 42 a put v2 webhook",
        ),
        (
            "repeated keys: each write sees the ones before it",
            vec![stored("a", Some(json!({"n": 0})), Some(0))],
            vec![
                put("a", json!({"n": 1}), Some(1)),
                put("a", json!({"n": 3}), Some(3)),
                put("a", json!({"n": 2}), Some(2)),
                patch("a", json!({"m": 4}), Some(4)),
                put("a", json!({"m": 4, "n": 3}), None),
            ],
            "outcomes: Applied Applied Stale Applied Unchanged\n\
             row a {\"m\":4,\"n\":3} v4 webhook\n\
             link 42 a put v1 webhook\n\
             link 43 a put v3 webhook\n\
             link 44 a put v4 webhook",
        ),
        (
            "repeated keys: put, delete, stale put, put",
            vec![],
            vec![
                put("a", json!({"n": 1}), Some(1)),
                del("a", Some(2)),
                put("a", json!({"n": 1}), Some(2)),
                put("a", json!({"n": 3}), Some(3)),
            ],
            "outcomes: Applied Applied Stale Applied\n\
             row a {\"n\":3} v3 webhook\n\
             link 42 a put v1 webhook\n\
             link 43 a delete v2 webhook\n\
             link 44 a put v3 webhook",
        ),
        (
            "repeated keys: the row keeps the last write's source",
            vec![stored("a", Some(json!({"n": 1})), Some(1))],
            vec![
                put("a", json!({"n": 2}), Some(2)),
                correct("a", json!({"n": 1}), Some(json!({"n": 2}))),
            ],
            "outcomes: Applied Applied\n\
             row a {\"n\":1} v2 keyframe\n\
             link 42 a put v2 webhook\n\
             link 43 a put v2 keyframe",
        ),
        (
            "rows in key order, links in write order",
            vec![
                stored("b", Some(json!({"n": 1})), Some(1)),
                stored("d", Some(json!({"n": 1})), Some(1)),
            ],
            vec![
                put("c", json!({"n": 1}), Some(1)),
                del("b", Some(2)),
                put("d", json!({"n": 1}), Some(1)),
                patch("a", json!({"n": 1}), Some(1)),
            ],
            "outcomes: Applied Applied Stale Applied\n\
             row a {\"n\":1} v1 webhook\n\
             row b tombstone v2 webhook\n\
             row c {\"n\":1} v1 webhook\n\
             link 42 c put v1 webhook\n\
             link 43 b delete v2 webhook\n\
             link 44 a put v1 webhook",
        ),
        ("an empty batch", vec![], vec![], "outcomes:"),
    ];
    for (name, current, writes, expected) in cases {
        let current: HashMap<&str, StoredRow> = current.into_iter().collect();
        let plan = plan_of(&current, &writes);
        assert_eq!(render(&plan), expected, "{name}");
        check_invariants(name, &current, &writes, &plan);
    }
}

/// A batch chains exactly as its writes would one batch at a time: the
/// links, the rows and the head do not depend on where a batch is cut.
#[test]
fn plan_batch_chains_across_batches() {
    let current: HashMap<&str, StoredRow> = [
        stored("a", Some(json!({"n": 1})), Some(1)),
        stored("b", None, Some(1)),
    ]
    .into_iter()
    .collect();
    let writes = vec![
        put("a", json!({"n": 2}), Some(2)),
        put("b", json!({"n": 2}), Some(2)),
        put("a", json!({"n": 1}), Some(1)),
        del("a", Some(3)),
        patch("c", json!({"n": 3}), None),
        correct("b", json!({"n": 4}), Some(json!({"n": 2}))),
    ];
    let whole = plan_of(&current, &writes);
    check_invariants("whole batch", &current, &writes, &whole);

    let hasher = RecordHasher::default();
    let (mut state, mut head) = (current.clone(), HEAD);
    let (mut outcomes, mut links) = (Vec::new(), Vec::new());
    for w in &writes {
        let one = plan_batch(
            state.clone(),
            std::slice::from_ref(w),
            &hasher,
            BITS,
            PRODUCER,
            head,
            NOW,
        );
        for r in &one.rows {
            state.insert(r.key, r.row.clone());
        }
        outcomes.extend(one.outcomes);
        links.extend(one.links);
        head = one.head;
    }
    assert_eq!(whole.outcomes, outcomes);
    assert_eq!(whole.links, links);
    assert_eq!(whole.head, head);
    let rows: BTreeMap<&str, StoredRow> =
        whole.rows.iter().map(|r| (r.key, r.row.clone())).collect();
    for (key, row) in &rows {
        assert_eq!(state.get(key), Some(row), "row {key}");
    }
}
