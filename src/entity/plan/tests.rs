//! Tests of `plan_batch`: the cases of `cases.txt` (stored rows, a batch of writes, the plan it expects as text) and the chain across batches.

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
fn stored(key: &str, doc: Option<Value>, version: Option<i64>) -> (String, StoredRow) {
    let hash = doc.as_ref().map(|d| RecordHasher::default().hash(d));
    let row = StoredRow {
        deleted: doc.is_none(),
        doc,
        hash,
        bucket: bucket_of(key, BITS),
        version,
    };
    (key.to_string(), row)
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

/// The producer's record of `key`, fetched.
fn fetched(key: &str, doc: Value, version: Option<i64>) -> EntityWrite {
    EntityWrite {
        source: Source::Fetch,
        rule: WriteRule::Fetched,
        ..put(key, doc, version)
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

/// One case of `cases.txt`.
struct Case {
    name: String,
    stored: Vec<(String, StoredRow)>,
    writes: Vec<EntityWrite>,
    plan: String,
}

fn parse_version(word: &str) -> Option<i64> {
    let n = word.strip_prefix('v').expect("a version is v<n> or v-");
    (n != "-").then(|| n.parse().expect("a version number"))
}

fn parse_doc(word: &str) -> Value {
    serde_json::from_str(word).expect("a document in compact JSON")
}

/// The cases of `cases.txt`, in order.
fn parse_cases(text: &str) -> Vec<Case> {
    let mut cases: Vec<Case> = Vec::new();
    let mut expecting = false;
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Some(name) = line.strip_prefix("== ") {
            cases.push(Case {
                name: name.into(),
                stored: Vec::new(),
                writes: Vec::new(),
                plan: String::new(),
            });
            expecting = false;
            continue;
        }
        let case = cases.last_mut().expect("a line before the first case");
        if line == "--" {
            expecting = true;
        } else if expecting {
            if !case.plan.is_empty() {
                case.plan.push('\n');
            }
            case.plan.push_str(line);
        } else {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words[..] {
                ["stored", key, "tombstone", version] => {
                    case.stored.push(stored(key, None, parse_version(version)));
                }
                ["stored", key, doc, version] => {
                    let row = stored(key, Some(parse_doc(doc)), parse_version(version));
                    case.stored.push(row);
                }
                ["put", key, doc, version] => {
                    case.writes
                        .push(put(key, parse_doc(doc), parse_version(version)));
                }
                ["patch", key, doc, version] => {
                    case.writes
                        .push(patch(key, parse_doc(doc), parse_version(version)));
                }
                ["delete", key, version] => case.writes.push(del(key, parse_version(version))),
                ["fetched", key, doc, version] => {
                    case.writes
                        .push(fetched(key, parse_doc(doc), parse_version(version)));
                }
                ["correct", key, doc, "seen", seen] => {
                    let seen = (seen != "none").then(|| parse_doc(seen));
                    case.writes.push(correct(key, parse_doc(doc), seen));
                }
                _ => panic!("{}: cannot read {line:?}", case.name),
            }
        }
    }
    cases
}

#[test]
fn plan_batch_cases() {
    let cases = parse_cases(include_str!("cases.txt"));
    assert!(cases.len() >= 25, "cases.txt read {} cases", cases.len());
    for case in &cases {
        let current: HashMap<&str, StoredRow> = case
            .stored
            .iter()
            .map(|(key, row)| (key.as_str(), row.clone()))
            .collect();
        let plan = plan_of(&current, &case.writes);
        assert_eq!(render(&plan), case.plan, "{}", case.name);
        check_invariants(&case.name, &current, &case.writes, &plan);
    }
}

/// A batch chains exactly as its writes would one batch at a time: the
/// links, the rows and the head do not depend on where a batch is cut.
#[test]
fn plan_batch_chains_across_batches() {
    let rows = [
        stored("a", Some(json!({"n": 1})), Some(1)),
        stored("b", None, Some(1)),
    ];
    let current: HashMap<&str, StoredRow> =
        rows.iter().map(|(k, r)| (k.as_str(), r.clone())).collect();
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
