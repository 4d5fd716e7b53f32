//! Pending rows and replay: the sweeper settles committed rows, a failed apply waits for it, `driftd replay` is idempotent.

use driftd::store::{now_ms, Channel, Entity, InboxEntry, InboxFilter, InboxOutcome, Store};
use serde_json::json;

use super::{config_text, fixture, inbox, orders_doc, start, MAIL_TOKEN};
use crate::support::{driftd_bin, eventually, TestDb};

async fn sweeper_applies_pending_rows(db: &TestDb) {
    let d = start(db).await;
    let doc = orders_doc("late", 2);
    let entry = |producer: &str, channel, body: Vec<u8>| InboxEntry {
        producer: producer.into(),
        channel,
        received_at: now_ms(),
        dedup_key: None,
        headers: "{}".into(),
        body,
    };
    // Rows committed but not applied, as after a crash or a failed apply.
    let settled = d
        .store
        .insert_deltas(&[
            entry("orders", Channel::Webhook, doc.to_string().into_bytes()),
            entry("acme", Channel::Email, fixture("latin1.eml")),
            entry("gone", Channel::Webhook, b"{}".to_vec()),
        ])
        .await
        .unwrap();
    assert!(settled.iter().all(|s| s.outcome == InboxOutcome::Pending));
    let rows = eventually("the sweeper settled every row", || async {
        let rows = inbox(&d.store).await;
        rows.iter()
            .all(|r| r.outcome != InboxOutcome::Pending)
            .then_some(rows)
    })
    .await;
    let outcomes: Vec<InboxOutcome> = rows.iter().map(|r| r.outcome).collect();
    assert_eq!(
        outcomes,
        [
            InboxOutcome::Applied,
            InboxOutcome::Applied,
            InboxOutcome::Rejected
        ]
    );
    assert_eq!(
        rows[2].error.as_deref(),
        Some("producer \"gone\" is not configured")
    );
    let e = d.store.entity("orders", "late").await.unwrap().unwrap();
    assert_eq!((e.doc, e.version), (Some(doc), Some(2)));
    let e = d.store.entity("acme", "ORD-4004").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(json!({"status": "cancelled"})));
    assert_eq!(d.deltas("orders", "webhook", "applied").await, 1.0);
    assert_eq!(d.deltas("acme", "email", "applied").await, 1.0);
    d.stop().await;
}

/// Makes every write of entity `boom` fail inside the database.
async fn refuse_key_boom(store: &Store, refuse: bool) {
    let statements: &[&str] = match (store.backend(), refuse) {
        (driftd::store::Backend::Sqlite, true) => &[
            "CREATE TRIGGER refuse_boom BEFORE INSERT ON entities WHEN NEW.key = 'boom'
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        ],
        (driftd::store::Backend::Postgres, true) => &[
            "CREATE FUNCTION refuse_boom() RETURNS trigger AS $$ BEGIN
               IF NEW.key = 'boom' THEN RAISE EXCEPTION 'boom refused'; END IF;
               RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_boom BEFORE INSERT OR UPDATE ON entities
             FOR EACH ROW EXECUTE FUNCTION refuse_boom()",
        ],
        (driftd::store::Backend::Sqlite, false) => &["DROP TRIGGER refuse_boom"],
        (driftd::store::Backend::Postgres, false) => &["DROP TRIGGER refuse_boom ON entities"],
    };
    for sql in statements {
        driftd::store::sql::query(sql)
            .execute(store.pool())
            .await
            .unwrap();
    }
}

async fn failed_apply_leaves_the_delta_pending_for_the_sweeper(db: &TestDb) {
    let d = start(db).await;
    refuse_key_boom(&d.store, true).await;
    let boom = orders_doc("boom", 1);
    let (status, receipt) = d.send("orders", &boom, "boom-1").await;
    assert_eq!(status, 202, "{receipt}");
    assert_eq!(receipt["outcome"], "pending");
    // Committed, so a redelivery is a duplicate, not a second delta.
    let (status, receipt) = d.send("orders", &boom, "boom-1").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("duplicate")));
    // Other deltas are not held up.
    let (status, receipt) = d.send("orders", &orders_doc("fine", 1), "fine-1").await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("applied")));

    // The sweeper retries, then gives up with the reason; nothing is lost.
    let row = eventually("the sweeper gave up on the refused delta", || async {
        let rows = inbox(&d.store).await;
        rows.into_iter()
            .find(|r| r.dedup_key.as_deref() == Some("boom-1") && r.duplicate_of.is_none())
            .filter(|r| r.outcome == InboxOutcome::Rejected)
    })
    .await;
    let reason = row.error.as_deref().unwrap();
    assert!(
        reason.starts_with("could not be applied in 5 attempts: "),
        "{reason}"
    );
    assert_eq!(row.body, boom.to_string().into_bytes());
    assert_eq!(d.store.entity("orders", "boom").await.unwrap(), None);

    // Once the cause is gone, replay applies it.
    refuse_key_boom(&d.store, false).await;
    let filter = InboxFilter {
        outcome: Some(InboxOutcome::Rejected),
        ..InboxFilter::default()
    };
    let report = driftd::ingest::pipeline::replay(&d.store, &d.config, &filter)
        .await
        .unwrap();
    assert_eq!((report.rows, report.changed), (1, 1), "{report:?}");
    let e = d.store.entity("orders", "boom").await.unwrap().unwrap();
    assert_eq!(e.doc, Some(boom));
    let row = d
        .store
        .inbox_page(&InboxFilter::default(), row.id - 1, 1)
        .await
        .unwrap();
    assert_eq!(row[0].outcome, InboxOutcome::Applied);
    d.stop().await;
}

fn run_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(driftd_bin())
        .args(args)
        .env_remove("DRIFTD_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run driftd");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count_of(stdout: &str, outcome: &str) -> u64 {
    stdout
        .lines()
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(outcome)).then(|| parts.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no count for {outcome} in {stdout}"))
}

async fn entities_of(store: &Store) -> Vec<Entity> {
    let mut all = Vec::new();
    for p in ["orders", "acme"] {
        all.extend(store.entities(p).await.unwrap());
    }
    all
}

async fn replay_is_idempotent(db: &TestDb) {
    let d = start(db).await;
    for (v, id) in [(1, "a1"), (3, "a3"), (2, "a2"), (3, "a3")] {
        let (status, _) = d.send("orders", &orders_doc("r", v), id).await;
        assert_eq!(status, 200);
    }
    let (status, _) = d.send_raw("orders", b"not json", "bad").await;
    assert_eq!(status, 400);
    for name in ["html-only.eml", "unmatched.eml"] {
        let (status, _) = d.email("acme", fixture(name), Some(MAIL_TOKEN)).await;
        assert_eq!(status, 200);
    }
    d.stop().await;

    let store = db.store().await;
    // A row committed but never applied (the daemon died before applying it).
    let late = orders_doc("r", 4);
    store
        .insert_deltas(&[InboxEntry {
            producer: "orders".into(),
            channel: Channel::Webhook,
            received_at: now_ms(),
            dedup_key: Some("a4".into()),
            headers: "{}".into(),
            body: late.to_string().into_bytes(),
        }])
        .await
        .unwrap();
    let before = entities_of(&store).await;
    let outcomes_before: Vec<InboxOutcome> =
        inbox(&store).await.iter().map(|r| r.outcome).collect();
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("driftd.toml");
    std::fs::write(
        &cfg,
        config_text(&db.url, "127.0.0.1:0", &dir.path().join("Maildir")),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();

    let (code, stdout, stderr) = run_cli(&["replay", "--config", cfg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed 8 deltas; 1 changed an entity"),
        "{stdout}"
    );
    // v1, v3, v2 and the versionless email are stale: each was already applied.
    for (outcome, n) in [
        ("applied", 1),
        ("stale", 4),
        ("duplicate", 1),
        ("rejected", 1),
        ("unmatched", 1),
    ] {
        assert_eq!(count_of(&stdout, outcome), n, "{outcome}: {stdout}");
    }
    let store = db.store().await;
    let after = entities_of(&store).await;
    let r = after.iter().find(|e| e.key == "r").unwrap();
    assert_eq!((r.doc.as_ref(), r.version), (Some(&late), Some(4)));
    assert_eq!(r.source, driftd::entity::Source::Replay);
    let unchanged: Vec<&Entity> = after.iter().filter(|e| e.key != "r").collect();
    let was: Vec<&Entity> = before.iter().filter(|e| e.key != "r").collect();
    assert_eq!(unchanged, was, "replay changed an applied delta's entity");
    let outcomes_after: Vec<InboxOutcome> = inbox(&store).await.iter().map(|r| r.outcome).collect();
    let mut expected = outcomes_before.clone();
    *expected.last_mut().unwrap() = InboxOutcome::Applied;
    assert_eq!(outcomes_after, expected, "only the pending row is recorded");
    store.close().await;

    let (code, stdout, stderr) = run_cli(&["replay", "--config", cfg]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("replayed 8 deltas; 0 changed an entity"),
        "{stdout}"
    );
    assert_eq!(count_of(&stdout, "applied"), 0, "{stdout}");
    let store = db.store().await;
    assert_eq!(entities_of(&store).await, after);
    store.close().await;

    let (code, stdout, _) = run_cli(&[
        "replay",
        "--config",
        cfg,
        "--producer",
        "orders",
        "--outcome",
        "rejected",
        "--since",
        "2000-01-01T00:00:00Z",
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 1 deltas"), "{stdout}");
    let (code, stdout, _) =
        run_cli(&["replay", "--config", cfg, "--since", "2999-01-01T00:00:00Z"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("replayed 0 deltas"), "{stdout}");
    for (args, complaint) in [
        (&["--outcome", "lost"][..], "unknown outcome \"lost\""),
        (
            &["--since", "yesterday"][..],
            "invalid --since \"yesterday\"",
        ),
        (&["--producer", "nope"][..], "unknown producer \"nope\""),
    ] {
        let mut all = vec!["replay", "--config", cfg];
        all.extend_from_slice(args);
        let (code, _, stderr) = run_cli(&all);
        assert_eq!(code, 64, "{args:?}: {stderr}");
        assert!(stderr.contains(complaint), "{stderr}");
    }
}

crate::on_both_backends!(
    sweeper_applies_pending_rows,
    failed_apply_leaves_the_delta_pending_for_the_sweeper,
    replay_is_idempotent,
);
