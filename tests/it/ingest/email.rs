//! Emails: maildir messages committed, then moved to `cur/`; the inbound-email endpoint with its token.

use driftd::store::{Channel, InboxOutcome, InboxRow};
use serde_json::json;

use super::{
    assert_fixture_entities, deliver, fixture, inbox, maildir, names_in, start, FIXTURES,
    MAIL_TOKEN,
};
use crate::support::{eventually, TestDb};

async fn maildir_messages_are_committed_then_moved(db: &TestDb) {
    let d = start(db).await;
    for (i, name) in FIXTURES.iter().enumerate() {
        deliver(
            &maildir(&d),
            &format!("17000000{i:02}.M{i}P1.test"),
            &fixture(name),
        );
    }
    let cur = eventually("every message moved to cur/", || async {
        let cur = names_in(&maildir(&d).join("cur"));
        (names_in(&maildir(&d).join("new")).is_empty() && cur.len() == FIXTURES.len())
            .then_some(cur)
    })
    .await;
    assert!(cur.iter().all(|n| n.ends_with(":2,S")), "{cur:?}");
    assert_fixture_entities(&d.store).await;

    let rows = inbox(&d.store).await;
    assert_eq!(rows.len(), FIXTURES.len());
    for (row, name) in rows.iter().zip(FIXTURES) {
        assert_eq!(row.channel, Channel::Email);
        assert_eq!(row.body, fixture(name), "{name}: raw message kept");
        assert!(row.headers.contains("maildir_file"), "{}", row.headers);
    }
    let unmatched: Vec<&InboxRow> = rows
        .iter()
        .filter(|r| r.outcome == InboxOutcome::Unmatched)
        .collect();
    assert_eq!(unmatched.len(), 1);
    assert_eq!(
        unmatched[0].dedup_key.as_deref(),
        Some("6006.lookalike@acme.example.net")
    );
    let reason = unmatched[0].error.as_deref().unwrap();
    assert!(
        reason.contains("sender \"alerts@acme.example.net\" not allowed"),
        "{reason}"
    );
    assert_eq!(
        rows.iter()
            .filter(|r| r.outcome == InboxOutcome::Applied)
            .count(),
        5
    );
    assert_eq!(d.deltas("acme", "email", "applied").await, 5.0);
    assert_eq!(d.deltas("acme", "email", "unmatched").await, 1.0);

    // The same message delivered again (same Message-ID) is a duplicate.
    deliver(&maildir(&d), "1800000000.again.test", &fixture(FIXTURES[0]));
    eventually("the redelivery moved", || async {
        (names_in(&maildir(&d).join("cur")).len() == FIXTURES.len() + 1).then_some(())
    })
    .await;
    let rows = inbox(&d.store).await;
    assert_eq!(rows.last().unwrap().outcome, InboxOutcome::Duplicate);
    assert_eq!(d.deltas("acme", "email", "duplicate").await, 1.0);
    d.stop().await;
}

async fn inbound_email_endpoint(db: &TestDb) {
    let d = start(db).await;
    for (token, why) in [(None, "no token"), (Some("wrong"), "wrong token")] {
        let (status, answer) = d.email("acme", fixture(FIXTURES[0]), token).await;
        assert_eq!(status, 401, "{why}: {answer}");
    }
    assert!(inbox(&d.store).await.is_empty());

    for name in FIXTURES {
        let (status, receipt) = d.email("acme", fixture(name), Some(MAIL_TOKEN)).await;
        assert_eq!(status, 200, "{name}: {receipt}");
        let expected = if *name == "unmatched.eml" {
            "unmatched"
        } else {
            "applied"
        };
        assert_eq!(receipt["outcome"], expected, "{name}: {receipt}");
        if expected == "unmatched" {
            assert!(receipt["error"].as_str().unwrap().contains("not allowed"));
        }
    }
    assert_fixture_entities(&d.store).await;
    let (status, receipt) = d
        .email("acme", fixture(FIXTURES[1]), Some(MAIL_TOKEN))
        .await;
    assert_eq!((status, &receipt["outcome"]), (200, &json!("duplicate")));
    let (status, receipt) = d.email("acme", Vec::new(), Some(MAIL_TOKEN)).await;
    assert_eq!((status, &receipt["outcome"]), (400, &json!("rejected")));
    let rows = inbox(&d.store).await;
    assert_eq!(rows.len(), FIXTURES.len() + 2);
    assert!(rows.iter().all(|r| !r.headers.contains(MAIL_TOKEN)));
    assert_eq!(d.deltas("acme", "email", "applied").await, 5.0);
    assert_eq!(d.deltas("acme", "email", "unmatched").await, 1.0);
    assert_eq!(d.deltas("acme", "email", "rejected").await, 1.0);
    d.stop().await;
}

crate::on_both_backends!(
    maildir_messages_are_committed_then_moved,
    inbound_email_endpoint,
);
