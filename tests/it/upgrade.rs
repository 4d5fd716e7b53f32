//! Upgrading a populated database from the first schema (0001): every row survives the migrations unchanged in meaning, on both backends.
//!
//! The content is made by driftd itself (deltas with outcomes, entity writes
//! and a tombstone, a hash chain, keyframe runs with drift lists, work items
//! in several states, health rows, leases) in a scratch database at the
//! current schema, then copied column by column into a database that has
//! only migration 0001 applied, with the values 0001 stores (milliseconds,
//! JSON text, 0/1 flags). After `Store::open` migrates it, every read of the
//! store returns what the scratch database returns, and the hash chain still
//! verifies.

use driftd::canonical::RecordHasher;
use driftd::entity::{Change, EntityWrite, Source, WriteRule};
use driftd::state::WorkState;
use driftd::store::sql::{query, At, Pool};
use driftd::store::{
    Backend, Channel, InboxEffect, InboxEntry, InboxFilter, InboxOutcome, NewWork, Store,
};
use serde_json::json;

use crate::support::TestDb;

/// What a 0001 column holds.
#[derive(Clone, Copy)]
enum Kind {
    Int,
    Text,
    Bytes,
}

/// Every table of the first schema with its columns.
const TABLES: &[(&str, &[(&str, Kind)])] = {
    use Kind::*;
    &[
        (
            "entities",
            &[
                ("producer", Text),
                ("key", Text),
                ("doc", Text),
                ("hash", Bytes),
                ("bucket", Int),
                ("version", Int),
                ("deleted", Int),
                ("source", Text),
                ("updated_at", Int),
            ],
        ),
        (
            "buckets",
            &[
                ("producer", Text),
                ("bucket", Int),
                ("rows", Int),
                ("l0", Int),
                ("l1", Int),
                ("l2", Int),
                ("l3", Int),
            ],
        ),
        (
            "chain_heads",
            &[("producer", Text), ("seq", Int), ("chain", Bytes)],
        ),
        (
            "changes",
            &[
                ("id", Int),
                ("producer", Text),
                ("seq", Int),
                ("key", Text),
                ("op", Text),
                ("hash", Bytes),
                ("version", Int),
                ("source", Text),
                ("at", Int),
                ("chain", Bytes),
            ],
        ),
        (
            "inbox",
            &[
                ("id", Int),
                ("producer", Text),
                ("channel", Text),
                ("received_at", Int),
                ("dedup_key", Text),
                ("duplicate_of", Int),
                ("headers", Text),
                ("body", Bytes),
                ("outcome", Text),
                ("error", Text),
                ("applied_at", Int),
            ],
        ),
        (
            "keyframe_runs",
            &[
                ("id", Int),
                ("producer", Text),
                ("started_at", Int),
                ("finished_at", Int),
                ("state", Text),
                ("records", Int),
                ("buckets_compared", Int),
                ("buckets_mismatched", Int),
                ("rows_read", Int),
                ("missing", Int),
                ("extra", Int),
                ("changed", Int),
                ("skipped_races", Int),
                ("error", Text),
                ("approved_at", Int),
            ],
        ),
        (
            "drifts",
            &[
                ("run_id", Int),
                ("producer", Text),
                ("key", Text),
                ("kind", Text),
                ("remote_hash", Bytes),
                ("local_hash", Bytes),
                ("doc", Text),
            ],
        ),
        (
            "work",
            &[
                ("id", Int),
                ("time", Int),
                ("spec", Text),
                ("producer", Text),
                ("key", Text),
                ("action", Text),
                ("state", Text),
                ("run_at", Int),
                ("attempts", Int),
                ("max_attempts", Int),
                ("last_error", Text),
                ("locked_by", Text),
                ("locked_until", Int),
                ("dedup_key", Text),
                ("updated_at", Int),
            ],
        ),
        (
            "producers",
            &[
                ("name", Text),
                ("health", Text),
                ("health_since", Int),
                ("failures", Int),
            ],
        ),
        (
            "leases",
            &[("name", Text), ("holder", Text), ("until", Int)],
        ),
        ("layouts", &[("producer", Text), ("bucket_bits", Int)]),
    ]
};

fn put(key: &str, doc: serde_json::Value, version: i64) -> EntityWrite {
    EntityWrite {
        key: key.into(),
        change: Change::Replace(doc),
        version: Some(version),
        source: Source::Webhook,
        rule: WriteRule::IfNewer,
    }
}

/// Fills `store` (current schema) with some of everything driftd keeps.
async fn populate(store: &Store) -> i64 {
    let hasher = RecordHasher::default();
    let entry = |n: i64, dedup: Option<&str>| InboxEntry {
        producer: "orders".into(),
        channel: Channel::Webhook,
        received_at: 1_700_000_000_000 + n,
        dedup_key: dedup.map(str::to_string),
        headers: json!({"content-type": "application/json", "x-n": n.to_string()}).to_string(),
        body: format!("{{\"n\": {n}}}").into_bytes(),
    };
    let writes = |w: Vec<EntityWrite>| InboxEffect::Write {
        bucket_bits: 4,
        hasher: hasher.clone(),
        writes: w,
        ask_ties: false,
    };
    store
        .ingest(&[
            (
                entry(1, Some("d1")),
                writes(vec![put("a", json!({"id": "a", "s": "new", "n": 1.5}), 1)]),
            ),
            (
                entry(2, Some("d2")),
                writes(vec![put("b", json!({"id": "b", "tags": ["x", "y"]}), 3)]),
            ),
            (
                entry(3, None),
                writes(vec![put("c", json!({"id": "c", "nested": {"k": null}}), 1)]),
            ),
            (
                entry(4, Some("d4")),
                InboxEffect::Settle {
                    outcome: InboxOutcome::Rejected,
                    error: "no key at /id".into(),
                },
            ),
        ])
        .await
        .unwrap();
    // A redelivery, a stale write and a deletion (a tombstone).
    store
        .ingest(&[
            (
                entry(5, Some("d1")),
                writes(vec![put("a", json!({"id": "a"}), 1)]),
            ),
            (
                entry(6, Some("d6")),
                writes(vec![put("b", json!({"id": "b", "old": true}), 2)]),
            ),
            (
                entry(7, Some("d7")),
                writes(vec![EntityWrite {
                    key: "c".into(),
                    change: Change::Delete,
                    version: Some(2),
                    source: Source::Email,
                    rule: WriteRule::IfNewer,
                }]),
            ),
        ])
        .await
        .unwrap();
    store.insert_deltas(&[entry(8, Some("d8"))]).await.unwrap();

    // Keyframe runs: one guarded then approved with a drift list, one running.
    let run = store
        .start_run("orders", 1_700_000_100_000, None)
        .await
        .unwrap();
    query(
        "UPDATE keyframe_runs SET state = 'guarded', finished_at = $2, records = 3, missing = 1,
           changed = 1, buckets_compared = 16, buckets_mismatched = 2, rows_read = 3,
           error = 'drift over the guard' WHERE id = $1",
    )
    .bind(run)
    .bind(At(1_700_000_101_000))
    .execute(store.pool())
    .await
    .unwrap();
    store.approve_run(run).await.unwrap();
    let doc = json!({"id": "d", "status": "shipped"});
    query(
        "INSERT INTO drifts (run_id, producer, key, kind, remote_hash, local_hash, doc)
         VALUES ($1, 'orders', 'd', 'missing', $2, NULL, $3), ($1, 'orders', 'a', 'extra', NULL, $2, NULL)",
    )
    .bind(run)
    .bind(hasher.hash(&doc).0.to_vec())
    .bind(driftd::store::sql::Json::of(&doc))
    .execute(store.pool())
    .await
    .unwrap();
    store
        .start_run("orders", 1_700_000_200_000, None)
        .await
        .unwrap();

    // Work: pending, running (claimed), retried with an error, done.
    let item = |key: &str| NewWork {
        key: key.into(),
        action: "apply".into(),
        spec: json!({"producer": "orders", "key": key, "record": {"id": key, "v": [1, 2]}})
            .to_string(),
        dedup_key: format!("dk-{key}"),
    };
    let items: Vec<NewWork> = ["w1", "w2", "w3", "w4"].iter().map(|k| item(k)).collect();
    store.emit_work("orders", &items, 5, 0).await.unwrap();
    let claimed = store
        .claim_work("orders", "worker-1", 3, 60_000, driftd::store::now_ms())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    let (retry, done) = (&claimed[0], &claimed[1]);
    store
        .finish_work(
            retry.id,
            "worker-1",
            WorkState::Pending,
            1_800_000_000_000,
            Some("vendor said 503"),
        )
        .await
        .unwrap();
    assert!(store.complete_work(done, "worker-1").await.unwrap());

    // Health rows and a lease.
    query("INSERT INTO producers (name, health, health_since, failures) VALUES ('orders', 'degraded', $1, 2)")
        .bind(At(1_700_000_300_000))
        .execute(store.pool())
        .await
        .unwrap();
    assert!(store
        .try_lease("keyframe:orders", "replica-a", 1_000_000, 1_700_000_400_000)
        .await
        .unwrap());
    run
}

/// Runs only the first migration of `url`'s backend.
async fn migrate_to_0001(pool: &Pool) {
    let first = |m: sqlx::migrate::Migrator| sqlx::migrate::Migrator {
        migrations: m.migrations[..1].to_vec().into(),
        ..m
    };
    match pool {
        Pool::Sqlite(p) => first(sqlx::migrate!("migrations/sqlite"))
            .run(p)
            .await
            .unwrap(),
        Pool::Postgres(p) => first(sqlx::migrate!("migrations/postgres"))
            .run(p)
            .await
            .unwrap(),
    }
}

/// Copies every 0001 column of every table from `from` (a current SQLite
/// database, whose values are what 0001 stores) into `to` (at 0001).
async fn copy_rows(from: &Pool, to: &Pool) -> usize {
    let mut copied = 0;
    for (table, columns) in TABLES {
        let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let params: Vec<String> = (1..=columns.len()).map(|i| format!("${i}")).collect();
        let insert = format!(
            "INSERT INTO {table} ({}) VALUES ({})",
            names.join(", "),
            params.join(", ")
        );
        for row in query(&select).fetch_all(from).await.unwrap() {
            let mut q = query(&insert);
            for (i, (_, kind)) in columns.iter().enumerate() {
                q = match kind {
                    Kind::Int => q.bind(row.try_get::<Option<i64>>(i).unwrap()),
                    Kind::Text => q.bind(row.try_get::<Option<String>>(i).unwrap()),
                    Kind::Bytes => q.bind(row.try_get::<Option<Vec<u8>>>(i).unwrap()),
                };
            }
            q.execute(to).await.unwrap();
            copied += 1;
        }
    }
    if matches!(to, Pool::Postgres(_)) {
        // Rows were inserted with their ids: move the sequences past them.
        for table in ["changes", "inbox", "keyframe_runs", "work"] {
            query(&format!(
                "SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
            ))
            .execute(to)
            .await
            .unwrap();
        }
    }
    copied
}

/// Everything the store reads back, as one comparable value.
async fn everything(store: &Store, run: i64) -> serde_json::Value {
    let entities: Vec<_> = store
        .entities("orders")
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{e:?}"))
        .collect();
    let tombstone = store.entity("orders", "c").await.unwrap();
    let inbox: Vec<_> = store
        .inbox_page(&InboxFilter::default(), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            // The kept headers are a JSON object; PostgreSQL's jsonb spells
            // its text its own way, so compare them as JSON.
            let headers: serde_json::Value = serde_json::from_str(&r.headers).unwrap();
            let row = driftd::store::InboxRow {
                headers: String::new(),
                ..r
            };
            json!([format!("{row:?}"), headers])
        })
        .collect();
    let runs: Vec<_> = store
        .runs("orders", 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{r:?}"))
        .collect();
    let drifts: Vec<_> = store
        .drifts_of_run(run)
        .await
        .unwrap()
        .into_iter()
        .map(|d| {
            let doc = d
                .doc
                .as_deref()
                .map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap());
            let mut d = d;
            d.doc = None;
            format!("{d:?} {doc:?}")
        })
        .collect();
    let work: Vec<_> = store
        .list_work(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|w| {
            let spec: serde_json::Value = serde_json::from_str(&w.spec).unwrap();
            json!([
                w.id,
                w.time,
                w.key,
                w.state,
                w.run_at,
                w.attempts,
                w.max_attempts,
                w.last_error,
                w.locked_by,
                w.dedup_key,
                spec
            ])
        })
        .collect();
    let feed = store.changes_after("orders", 0, 100, true).await.unwrap();
    json!({
        "entities": entities,
        "tombstone": format!("{tombstone:?}"),
        "digests": format!("{:?}", store.bucket_digests("orders").await.unwrap()),
        "inbox": inbox,
        "runs": runs,
        "drifts": drifts,
        "work": work,
        "work_counts": format!("{:?}", store.work_counts().await.unwrap()),
        "feed": serde_json::to_value(feed).unwrap(),
        "lease": store.lease_holder("keyframe:orders").await.unwrap(),
        "lease_held": store.try_lease("keyframe:orders", "replica-b", 1, 1_700_000_500_000).await.unwrap(),
        "chain": format!("{:?}", store.verify_chain().await.unwrap()),
    })
}

async fn a_populated_first_schema_database_upgrades_in_place(db: &TestDb) {
    let scratch_db = TestDb::sqlite();
    let scratch = scratch_db.store().await;
    let run = populate(&scratch).await;
    let expected = everything(&scratch, run).await;
    assert_eq!(
        expected["chain"], "(4, None)",
        "the scratch chain: {expected}"
    );
    assert_eq!(expected["entities"].as_array().unwrap().len(), 2);
    assert_eq!(expected["work"].as_array().unwrap().len(), 4);

    let old = Store::connect(&db.url, 4).await.unwrap();
    migrate_to_0001(old.pool()).await;
    let copied = copy_rows(scratch.pool(), old.pool()).await;
    assert!(copied >= 25, "rows copied: {copied}");
    old.close().await;
    scratch.close().await;

    let upgraded = db.store().await;
    let got = everything(&upgraded, run).await;
    for (part, want) in expected.as_object().unwrap() {
        assert_eq!(&got[part], want, "{part} after the upgrade");
    }
    if upgraded.backend() == Backend::Postgres {
        let types: Vec<(String, String)> = driftd::store::sql::query_scalar(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns
             WHERE table_schema = current_schema()
               AND column_name IN ('doc', 'spec', 'headers', 'at', 'updated_at', 'run_at',
                                   'locked_until', 'deleted', 'mirrored', 'until', 'tick',
                                   'received_at', 'applied_at', 'started_at', 'finished_at',
                                   'approved_at', 'scheduled_for', 'time', 'health_since',
                                   'first_asked', 'last_at', 'last_ok', 'next_at')
             ORDER BY 1",
        )
        .fetch_all(upgraded.pool())
        .await
        .unwrap();
        assert_eq!(types.len(), 29, "{types:?}");
        for (column, ty) in &types {
            let want = match column.rsplit('.').next().unwrap() {
                "doc" | "spec" | "headers" => "jsonb",
                "deleted" | "mirrored" | "last_ok" => "boolean",
                _ => "timestamp with time zone",
            };
            assert_eq!(ty, want, "{column}");
        }
    }
    // The upgraded database keeps working: a new write chains onto the old log.
    upgraded
        .write_entities(
            "orders",
            4,
            &RecordHasher::default(),
            &[put("e", json!({"id": "e"}), 1)],
        )
        .await
        .unwrap();
    assert_eq!(upgraded.verify_chain().await.unwrap(), (5, None));
    upgraded.close().await;
}

/// Migrations recorded as applied in `url`'s database.
async fn applied(url: &str) -> i64 {
    let store = Store::connect(url, 2).await.unwrap();
    let n: i64 = driftd::store::sql::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.close().await;
    n
}

/// On a database an earlier driftd left behind, every command but `run`,
/// `migrate` and `sync` refuses, saying how far behind it is and what to
/// run, and migrates nothing; `migrate` brings it up to date (README's
/// command table).
async fn commands_refuse_a_database_behind_and_migrate_upgrades_it(db: &TestDb) {
    let old = Store::connect(&db.url, 2).await.unwrap();
    migrate_to_0001(old.pool()).await;
    old.close().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("driftd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{}\"\n[[producer]]\nname = \"orders\"\n\
             schedule = \"0 0 3 * * *\"\n[producer.snapshot]\nurl = \"http://127.0.0.1:9/x\"\n",
            db.url
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(crate::support::driftd_bin())
            .args(args)
            .arg("--config")
            .arg(&config)
            .env_remove("DRIFTD_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let commands: &[&[&str]] = &[
        &["status"],
        &["verify"],
        &["work", "list"],
        &["replay"],
        &["approve", "1"],
        &["keyframe", "orders"],
        &["tail"],
    ];
    for args in commands {
        let (code, stderr) = tokio::task::block_in_place(|| run(args));
        assert_ne!(code, Some(0), "{args:?} must fail: {stderr}");
        assert!(
            stderr.contains("the database schema is behind: 1 of ")
                && stderr.contains("run `driftd migrate` (or `driftd run`) to apply the rest"),
            "{args:?}: {stderr}"
        );
        assert_eq!(applied(&db.url).await, 1, "{args:?} migrated nothing");
    }
    let (code, stderr) = tokio::task::block_in_place(|| run(&["migrate"]));
    assert_eq!(code, Some(0), "{stderr}");
    let all = std::fs::read_dir(crate::support::repo_root().join("migrations/sqlite"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied(&db.url).await, all);
    let (code, stderr) = tokio::task::block_in_place(|| run(&["status"]));
    assert_eq!(code, Some(0), "{stderr}");
}

crate::on_both_backends!(
    a_populated_first_schema_database_upgrades_in_place,
    commands_refuse_a_database_behind_and_migrate_upgrades_it,
);
