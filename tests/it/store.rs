//! Store conformance: the same tests against SQLite and PostgreSQL.

use std::collections::BTreeMap;

use driftd::canonical::{bucket_of, Digest, RecordHash, RecordHasher};
use driftd::entity::{Change, EntityWrite, Source, WriteOutcome, WriteRule};
use driftd::store::Store;
use serde_json::{json, Value};

use crate::support::TestDb;

const BITS: u8 = 4;

fn put(key: &str, doc: Value, version: Option<i64>) -> EntityWrite {
    EntityWrite {
        key: key.into(),
        change: Change::Replace(doc),
        version,
        source: Source::Webhook,
        rule: WriteRule::IfNewer,
    }
}

fn delete(key: &str, version: Option<i64>) -> EntityWrite {
    EntityWrite {
        key: key.into(),
        change: Change::Delete,
        version,
        source: Source::Webhook,
        rule: WriteRule::IfNewer,
    }
}

async fn write(store: &Store, w: EntityWrite) -> WriteOutcome {
    store
        .write_entities("p", BITS, &RecordHasher::default(), &[w])
        .await
        .expect("write")[0]
}

/// Recomputes every bucket digest from the rows and compares with the stored digests.
async fn assert_digests_exact(store: &Store, producer: &str) {
    let all: Vec<u32> = (0..1 << BITS).collect();
    let mut fresh: BTreeMap<u32, Digest> = BTreeMap::new();
    for row in store.rows_in_buckets(producer, &all).await.unwrap() {
        if let Some(h) = row.hash {
            fresh
                .entry(bucket_of(&row.key, BITS))
                .or_default()
                .add(&row.key, &h);
        }
    }
    let stored: BTreeMap<u32, Digest> = store
        .bucket_digests(producer)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        stored, fresh,
        "stored bucket digests differ from a recomputation from rows"
    );
}

async fn put_read_delete(db: &TestDb) {
    let store = db.store().await;
    let doc = json!({"id": "a1", "status": "open", "amount": 1.0});
    assert_eq!(
        write(&store, put("a1", doc.clone(), Some(3))).await,
        WriteOutcome::Applied
    );
    let e = store.entity("p", "a1").await.unwrap().expect("stored");
    assert_eq!(e.doc, Some(doc.clone()));
    assert_eq!(e.hash, Some(RecordHasher::default().hash(&doc)));
    assert_eq!(e.bucket, bucket_of("a1", BITS));
    assert_eq!(e.version, Some(3));
    assert_eq!(e.source, driftd::entity::Source::Webhook);
    assert!(!e.deleted);
    assert_eq!(store.count_entities("p").await.unwrap(), 1);
    assert_eq!(store.count_entities("other").await.unwrap(), 0);

    assert_eq!(
        write(&store, delete("a1", Some(4))).await,
        WriteOutcome::Applied
    );
    let e = store
        .entity("p", "a1")
        .await
        .unwrap()
        .expect("tombstone kept");
    assert!(e.deleted);
    assert_eq!(e.doc, None);
    assert_eq!(e.version, Some(4));
    assert_eq!(store.count_entities("p").await.unwrap(), 0);
    assert!(store.entities("p").await.unwrap().is_empty());
    assert!(store.bucket_digests("p").await.unwrap().is_empty());
}

async fn versions_order_writes(db: &TestDb) {
    let store = db.store().await;
    assert_eq!(
        write(&store, put("k", json!({"v": 2}), Some(2))).await,
        WriteOutcome::Applied
    );
    assert_eq!(
        write(&store, put("k", json!({"v": 1}), Some(1))).await,
        WriteOutcome::Stale
    );
    assert_eq!(
        write(&store, put("k", json!({"v": 2}), Some(2))).await,
        WriteOutcome::Stale
    );
    assert_eq!(
        write(&store, delete("k", Some(1))).await,
        WriteOutcome::Stale
    );
    let e = store.entity("p", "k").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(json!({"v": 2})));
    // A delete at version 5 then a late update at version 4: the delete wins.
    assert_eq!(
        write(&store, delete("k", Some(5))).await,
        WriteOutcome::Applied
    );
    assert_eq!(
        write(&store, put("k", json!({"v": 4}), Some(4))).await,
        WriteOutcome::Stale
    );
    assert!(store.entity("p", "k").await.unwrap().unwrap().deleted);
    // A correction from a keyframe applies to the row the keyframe saw, whatever the versions.
    let forced = EntityWrite {
        rule: WriteRule::Correct { seen: None },
        source: Source::Keyframe,
        ..put("k", json!({"v": 3}), Some(3))
    };
    assert_eq!(write(&store, forced).await, WriteOutcome::Applied);
    assert_eq!(
        store.entity("p", "k").await.unwrap().unwrap().doc,
        Some(json!({"v": 3}))
    );
    assert_digests_exact(&store, "p").await;
}

async fn merge_patches_apply_to_stored_doc(db: &TestDb) {
    let store = db.store().await;
    write(
        &store,
        put(
            "m",
            json!({"status": "open", "eta": "mon", "n": {"a": 1}}),
            None,
        ),
    )
    .await;
    let patch = EntityWrite {
        change: Change::MergePatch(json!({"status": "closed", "eta": null, "n": {"b": 2}})),
        ..put("m", Value::Null, None)
    };
    assert_eq!(write(&store, patch).await, WriteOutcome::Applied);
    let doc = store.entity("p", "m").await.unwrap().unwrap().doc.unwrap();
    assert_eq!(doc, json!({"status": "closed", "n": {"a": 1, "b": 2}}));
    assert_digests_exact(&store, "p").await;
}

async fn rows_in_buckets_reads_only_those_buckets(db: &TestDb) {
    let store = db.store().await;
    let hasher = RecordHasher::default();
    let writes: Vec<EntityWrite> = (0..200)
        .map(|i| put(&format!("key-{i}"), json!({"i": i}), None))
        .collect();
    store
        .write_entities("p", BITS, &hasher, &writes)
        .await
        .unwrap();
    store
        .write_entities(
            "q",
            BITS,
            &hasher,
            &[put("key-1", json!({"other": true}), None)],
        )
        .await
        .unwrap();
    let wanted = [1u32, 7];
    let rows = store.rows_in_buckets("p", &wanted).await.unwrap();
    let expected: Vec<String> = (0..200)
        .map(|i| format!("key-{i}"))
        .filter(|k| wanted.contains(&bucket_of(k, BITS)))
        .collect();
    let mut got: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    got.sort();
    let mut expected_sorted = expected.clone();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);
    for r in &rows {
        let i: i64 = r.key.trim_start_matches("key-").parse().unwrap();
        assert_eq!(r.hash, Some(hasher.hash(&json!({"i": i}))));
    }
    // The digests the store keeps equal the ones built from the same documents elsewhere.
    let mut remote: BTreeMap<u32, Digest> = BTreeMap::new();
    for i in 0..200 {
        let key = format!("key-{i}");
        remote
            .entry(bucket_of(&key, BITS))
            .or_default()
            .add(&key, &hasher.hash(&json!({"i": i})));
    }
    let local: BTreeMap<u32, Digest> = store
        .bucket_digests("p")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(local, remote);
}

async fn concurrent_writers_keep_digests_exact(db: &TestDb) {
    // Two handles on one database, as a daemon and a CLI would have, each with several tasks.
    let stores = [db.store().await, db.store().await];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let store = stores[(t % 2) as usize].clone();
        tasks.spawn(async move {
            let hasher = RecordHasher::default();
            let mut x = t.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..40 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("k{}", x % 24);
                let w = if x % 5 == 0 {
                    delete(&key, None)
                } else {
                    put(&key, json!({"writer": t, "x": x % 1000}), None)
                };
                store
                    .write_entities("p", BITS, &hasher, &[w])
                    .await
                    .expect("concurrent write");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("writer task");
    }
    assert_digests_exact(&stores[0], "p").await;
    let (checked, broken) = stores[0].verify_chain().await.unwrap();
    assert_eq!(broken, None);
    assert!(
        checked >= 8 * 40 - 8 * 40 / 2,
        "most writes are recorded in the changes log: {checked}"
    );
}

/// Writers of one producer run at once (on PostgreSQL nothing makes them
/// take turns); the feed still lists every change once, at gapless
/// positions, and each key's changes in the order they were applied, which
/// for versioned writes is rising version order.
async fn concurrent_writers_keep_each_keys_feed_in_order(db: &TestDb) {
    let stores = [db.store().await, db.store().await];
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8i64 {
        let store = stores[(t % 2) as usize].clone();
        tasks.spawn(async move {
            let hasher = RecordHasher::default();
            let mut applied = 0;
            for round in 0..30i64 {
                // Every writer writes every key, in a different order, with
                // versions that interleave across writers.
                let writes: Vec<EntityWrite> = (0..6)
                    .map(|i| {
                        let key = format!("k{}", (i + t + round) % 6);
                        put(&key, json!({"t": t, "r": round}), Some(round * 8 + t))
                    })
                    .collect();
                let outcomes = store
                    .write_entities("p", BITS, &hasher, &writes)
                    .await
                    .expect("concurrent write");
                applied += outcomes
                    .iter()
                    .filter(|o| **o == WriteOutcome::Applied)
                    .count();
            }
            applied
        });
    }
    let mut applied = 0;
    while let Some(r) = tasks.join_next().await {
        applied += r.expect("writer task");
    }
    assert_digests_exact(&stores[0], "p").await;
    assert_eq!(
        stores[0].verify_chain().await.unwrap(),
        (applied as u64, None)
    );
    let feed = stores[0]
        .changes_after("p", 0, 10_000, false)
        .await
        .unwrap();
    assert_eq!(
        feed.len(),
        applied,
        "every applied write is in the feed once"
    );
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for (i, c) in feed.iter().enumerate() {
        assert_eq!(c.seq, i as i64 + 1, "positions are gapless");
        let v = c.version.expect("versioned");
        if let Some(prev) = last.insert(c.key.clone(), v) {
            assert!(prev < v, "key {}: version {v} listed after {prev}", c.key);
        }
    }
    // The last change of each key is the row's current version.
    for (key, v) in last {
        let e = stores[0].entity("p", &key).await.unwrap().unwrap();
        assert_eq!(e.version, Some(v), "{key}");
    }
}

async fn verify_finds_a_tampered_change(db: &TestDb) {
    let store = db.store().await;
    for i in 0..5 {
        write(&store, put(&format!("k{i}"), json!({"i": i}), None)).await;
    }
    store
        .write_entities(
            "q",
            BITS,
            &RecordHasher::default(),
            &[put("z", json!(1), None)],
        )
        .await
        .unwrap();
    let (checked, broken) = store.verify_chain().await.unwrap();
    assert_eq!((checked, broken), (6, None));
    let id: i64 =
        driftd::store::sql::query_scalar("SELECT id FROM changes WHERE producer = 'p' AND seq = 3")
            .fetch_one(store.pool())
            .await
            .unwrap();
    driftd::store::sql::query("UPDATE changes SET key = 'forged' WHERE id = $1")
        .bind(id)
        .execute(store.pool())
        .await
        .unwrap();
    let (_, broken) = store.verify_chain().await.unwrap();
    let broken = broken.expect("tampering detected");
    assert_eq!(
        (broken.id, broken.producer.as_str(), broken.seq),
        (Some(id), "p", 3)
    );
}

async fn verify_finds_a_cut_off_tail(db: &TestDb) {
    let store = db.store().await;
    for i in 0..8 {
        write(&store, put(&format!("k{i}"), json!({"i": i}), None)).await;
    }
    assert_eq!(store.verify_chain().await.unwrap(), (8, None));
    let exec = |sql: &'static str| {
        let pool = store.pool().clone();
        async move { driftd::store::sql::query(sql).execute(&pool).await.unwrap() }
    };
    // The last three rows cut off: every remaining link is intact, but the
    // walk must reach the recorded head.
    exec("DELETE FROM changes WHERE producer = 'p' AND seq > 5").await;
    let (checked, broken) = store.verify_chain().await.unwrap();
    let broken = broken.expect("a cut-off tail is a break");
    assert_eq!(checked, 5);
    assert_eq!((broken.producer.as_str(), broken.seq), ("p", 6));
    assert!(
        broken.reason.contains("ends at seq 5") && broken.reason.contains("records seq 8"),
        "{}",
        broken.reason
    );
    // The whole log gone: the head still tells.
    exec("DELETE FROM changes WHERE producer = 'p'").await;
    let (_, broken) = store.verify_chain().await.unwrap();
    let broken = broken.expect("an emptied log is a break");
    assert_eq!((broken.id, broken.seq), (None, 8));
    // A head that points past the log is a break even when the rows are intact.
    let other = db.store().await;
    other
        .write_entities(
            "q",
            BITS,
            &RecordHasher::default(),
            &[put("z", json!(1), None)],
        )
        .await
        .unwrap();
    exec("DELETE FROM chain_heads WHERE producer = 'p'").await;
    assert_eq!(other.verify_chain().await.unwrap(), (1, None));
    exec("UPDATE chain_heads SET seq = 2 WHERE producer = 'q'").await;
    let (_, broken) = other.verify_chain().await.unwrap();
    assert_eq!(
        broken.map(|b| (b.producer, b.seq)),
        Some(("q".to_string(), 2))
    );
}

async fn unchanged_content_is_not_a_change(db: &TestDb) {
    let store = db.store().await;
    assert_eq!(
        write(&store, put("u", json!({"a": 1, "b": 2}), None)).await,
        WriteOutcome::Applied
    );
    assert_eq!(
        write(&store, put("u", json!({"b": 2, "a": 1.0}), None)).await,
        WriteOutcome::Unchanged
    );
    let (checked, _) = store.verify_chain().await.unwrap();
    assert_eq!(checked, 1);
    let hash: Option<RecordHash> = store.entity("p", "u").await.unwrap().unwrap().hash;
    assert!(hash.is_some());
}

/// One ingest batch of several deltas and producers: each delta's outcome is
/// its own, a later delta of a key sees the earlier one, a redelivery is a
/// duplicate, and a settled delta writes nothing.
async fn an_ingest_batch_settles_each_delta_in_order(db: &TestDb) {
    use driftd::store::{Channel, InboxEffect, InboxEntry, InboxOutcome};
    let store = db.store().await;
    let hasher = RecordHasher::default();
    let entry = |producer: &str, dedup: &str| InboxEntry {
        producer: producer.into(),
        channel: Channel::Webhook,
        received_at: driftd::store::now_ms(),
        dedup_key: Some(dedup.into()),
        headers: "{}".into(),
        body: b"{}".to_vec(),
    };
    let writes = |w: Vec<EntityWrite>| InboxEffect::Write {
        bucket_bits: BITS,
        hasher: hasher.clone(),
        writes: w,
        ask_ties: false,
    };
    let settled = store
        .ingest(&[
            (
                entry("b", "d1"),
                writes(vec![put("k", json!({"v": 2}), Some(2))]),
            ),
            (
                entry("b", "d2"),
                writes(vec![put("k", json!({"v": 1}), Some(1))]),
            ),
            (
                entry("a", "d3"),
                writes(vec![
                    put("x", json!({"v": 1}), Some(1)),
                    put("y", json!({}), None),
                ]),
            ),
            (
                entry("b", "d1"),
                writes(vec![put("k", json!({"v": 9}), Some(9))]),
            ),
            (
                entry("a", "d4"),
                InboxEffect::Settle {
                    outcome: InboxOutcome::Rejected,
                    error: "no key".into(),
                },
            ),
            (
                entry("b", "d5"),
                writes(vec![put("k", json!({"v": 3}), Some(3))]),
            ),
        ])
        .await
        .unwrap();
    let outcomes: Vec<(InboxOutcome, bool)> =
        settled.iter().map(|s| (s.outcome, s.changed)).collect();
    assert_eq!(
        outcomes,
        [
            (InboxOutcome::Applied, true),
            (InboxOutcome::Stale, false),
            (InboxOutcome::Applied, true),
            (InboxOutcome::Duplicate, false),
            (InboxOutcome::Rejected, false),
            (InboxOutcome::Applied, true),
        ]
    );
    assert_eq!(settled[3].duplicate_of, Some(settled[0].id));
    assert_eq!(settled[4].error.as_deref(), Some("no key"));
    // The rows say the same: every outcome, error and apply time recorded.
    let rows = store
        .inbox_page(&driftd::store::InboxFilter::default(), 0, 100)
        .await
        .unwrap();
    let recorded: Vec<(i64, InboxOutcome, Option<String>, bool)> = rows
        .iter()
        .map(|r| (r.id, r.outcome, r.error.clone(), r.applied_at.is_some()))
        .collect();
    let mut expected: Vec<(i64, InboxOutcome, Option<String>, bool)> = settled
        .iter()
        .map(|s| (s.id, s.outcome, s.error.clone(), true))
        .collect();
    expected.sort_by_key(|e| e.0);
    assert_eq!(recorded, expected);
    let k = store.entity("b", "k").await.unwrap().unwrap();
    assert_eq!((k.doc, k.version), (Some(json!({"v": 3})), Some(3)));
    assert_eq!(store.count_entities("a").await.unwrap(), 2);
    let (checked, broken) = store.verify_chain().await.unwrap();
    assert_eq!(
        (checked, broken),
        (4, None),
        "k twice, x and y: one link each"
    );
}

/// Work items by producer and state (the `driftd_work_items` gauge), and
/// each item's open and close times (the demo's open drift), on both
/// backends' column types.
async fn work_counts_and_spans_per_producer(db: &TestDb) {
    use driftd::state::WorkState;
    use driftd::store::NewWork;
    let store = db.store().await;
    let item = |key: &str| NewWork {
        key: key.into(),
        action: "apply".into(),
        spec: json!({"producer": "orders", "key": key}).to_string(),
        dedup_key: format!("dk-{key}"),
    };
    let before = driftd::store::now_ms();
    store
        .emit_work("orders", &[item("a"), item("b"), item("c")], 5, 0)
        .await
        .unwrap();
    store
        .emit_work("billing", &[item("x")], 5, 0)
        .await
        .unwrap();
    let claimed = store
        .claim_work("orders", "w", 2, 60_000, driftd::store::now_ms())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(store.complete_work(&claimed[0], "w").await.unwrap());

    let counts = store.work_counts_by_producer().await.unwrap();
    let n = |p: &str, s: WorkState| counts.get(&(p.to_string(), s)).copied().unwrap_or(0);
    assert_eq!(
        (
            n("orders", WorkState::Pending),
            n("orders", WorkState::Running),
            n("orders", WorkState::Done),
            n("billing", WorkState::Pending),
        ),
        (1, 1, 1, 1),
        "{counts:?}"
    );

    let spans = store.work_spans("orders", before).await.unwrap();
    assert_eq!(spans.len(), 3, "{spans:?}");
    assert!(
        spans.iter().all(|(opened, _)| *opened >= before),
        "{spans:?}"
    );
    let closed: Vec<(i64, i64)> = spans
        .iter()
        .filter_map(|(o, c)| Some((*o, (*c)?)))
        .collect();
    assert_eq!(closed.len(), 1, "one done: {spans:?}");
    assert!(
        closed[0].1 >= closed[0].0,
        "closed after it opened: {spans:?}"
    );
    // From a later time on, only the items still open.
    let later = store.work_spans("orders", closed[0].1 + 1).await.unwrap();
    assert_eq!(later.len(), 2, "{later:?}");
    assert!(later.iter().all(|(_, c)| c.is_none()), "{later:?}");
}

crate::on_both_backends!(
    work_counts_and_spans_per_producer,
    an_ingest_batch_settles_each_delta_in_order,
    one_batch_with_repeated_keys,
    prune_deletes_old_history_and_keeps_what_matters,
    put_read_delete,
    versions_order_writes,
    merge_patches_apply_to_stored_doc,
    rows_in_buckets_reads_only_those_buckets,
    concurrent_writers_keep_digests_exact,
    concurrent_writers_keep_each_keys_feed_in_order,
    verify_finds_a_tampered_change,
    verify_finds_a_cut_off_tail,
    unchanged_content_is_not_a_change,
);

async fn prune_deletes_old_history_and_keeps_what_matters(db: &TestDb) {
    let store = db.store().await;
    // Times are bound (`$1`), as each backend spells them its own way.
    let exec_at = |sql: String, at: i64| {
        let pool = store.pool().clone();
        async move {
            driftd::store::sql::query(&sql)
                .bind(driftd::store::sql::At(at))
                .execute(&pool)
                .await
                .unwrap()
        }
    };
    let exec = |sql: String| {
        let pool = store.pool().clone();
        async move {
            driftd::store::sql::query(&sql)
                .execute(&pool)
                .await
                .unwrap()
        }
    };
    // Inbox: old settled, old pending, new settled.
    for (at, outcome) in [(1_000, "applied"), (1_000, "pending"), (9_000, "applied")] {
        exec_at(format!(
            "INSERT INTO inbox (producer, channel, received_at, headers, body, outcome) VALUES ('p', 'webhook', $1, '{{}}', '', '{outcome}')"
        ), at).await;
    }
    // Work: old done, old dead, old pending, new done.
    for (i, (at, state)) in [
        (1_000, "done"),
        (1_000, "dead"),
        (1_000, "pending"),
        (9_000, "done"),
    ]
    .iter()
    .enumerate()
    {
        exec_at(format!(
            "INSERT INTO work (time, spec, producer, key, action, state, run_at, max_attempts, dedup_key, updated_at)
             VALUES ($1, '{{}}', 'p', 'k{i}', 'apply', '{state}', $1, 5, 'd{i}', $1)"
        ), *at).await;
    }
    // Runs: old ok, old guarded (expired), the latest (old too), each with a drift row.
    let mut ids = Vec::new();
    for state in ["ok", "guarded", "ok"] {
        let id = store.start_run("p", 1_000, None).await.unwrap();
        exec(format!(
            "UPDATE keyframe_runs SET state = '{state}' WHERE id = {id}"
        ))
        .await;
        exec(format!(
            "INSERT INTO drifts (run_id, producer, key, kind) VALUES ({id}, 'p', 'k', 'extra')"
        ))
        .await;
        ids.push(id);
    }
    let pruned = store.prune(5_000).await.unwrap();
    assert_eq!(
        pruned,
        driftd::store::Pruned {
            inbox: 1,
            work: 1,
            drifts: 2,
            runs: 2
        }
    );
    assert!(
        store.run(ids[0]).await.unwrap().is_none(),
        "old ok run pruned"
    );
    assert!(
        store.run(ids[1]).await.unwrap().is_none(),
        "an old guarded run has expired and is pruned"
    );
    assert!(
        store.run(ids[2]).await.unwrap().is_some(),
        "the producer's latest run kept"
    );
    assert!(store.drifts_of_run(ids[1]).await.unwrap().is_empty());
    assert_eq!(store.drifts_of_run(ids[2]).await.unwrap().len(), 1);
    let states: Vec<String> = store
        .list_work(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|w| w.state.to_string())
        .collect();
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(
        !states.contains(&"done".to_string())
            || states.iter().filter(|s| *s == "done").count() == 1
    );
    assert_eq!(
        store.prune(5_000).await.unwrap(),
        driftd::store::Pruned::default(),
        "idempotent"
    );
}

/// Several writes of one key in one batch are decided in order, each against
/// the state the previous one left; the flushed row, digest and chain agree.
async fn one_batch_with_repeated_keys(db: &TestDb) {
    let store = db.store().await;
    let writes = vec![
        put("k", json!({"v": 1}), Some(1)),
        put("k", json!({"v": 3}), Some(3)),
        put("k", json!({"v": 2}), Some(2)),
        put("j", json!({"v": 1}), Some(1)),
        delete("j", Some(2)),
        put("j", json!({"v": 1}), Some(1)),
        EntityWrite {
            change: Change::MergePatch(json!({"w": true})),
            ..put("k", Value::Null, Some(4))
        },
    ];
    let outcomes = store
        .write_entities("p", BITS, &RecordHasher::default(), &writes)
        .await
        .unwrap();
    use WriteOutcome::*;
    assert_eq!(
        outcomes,
        vec![Applied, Applied, Stale, Applied, Applied, Stale, Applied]
    );
    let k = store.entity("p", "k").await.unwrap().unwrap();
    assert_eq!(
        (k.doc, k.version),
        (Some(json!({"v": 3, "w": true})), Some(4))
    );
    let j = store.entity("p", "j").await.unwrap().unwrap();
    assert!(j.deleted);
    assert_digests_exact(&store, "p").await;
    assert_eq!(store.verify_chain().await.unwrap(), (5, None));
}
