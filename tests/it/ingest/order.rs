//! Version order: deliveries in any order, redelivered or concurrent, converge on the newest version; a deletion wins over an older update.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;

use super::{orders_doc, start};
use crate::support::TestDb;

/// The outcome each delivery of `versions` must get, in order: a repeated
/// version is a redelivery (same id), an older one is stale.
fn expected_outcomes(versions: &[i64]) -> Vec<&'static str> {
    let mut seen = std::collections::BTreeSet::new();
    let mut stored: Option<i64> = None;
    versions
        .iter()
        .map(|v| {
            if !seen.insert(*v) {
                "duplicate"
            } else if stored.is_none_or(|s| *v > s) {
                stored = Some(*v);
                "applied"
            } else {
                "stale"
            }
        })
        .collect()
}

async fn deliveries_converge_on_the_newest_version(db: &TestDb) {
    let d = start(db).await;
    let orders: &[&[i64]] = &[
        &[1, 2, 3, 4],
        &[4, 3, 2, 1],
        &[2, 4, 1, 3],
        &[3, 3, 1, 4, 4, 2],
        &[1, 4, 4, 4, 2, 1, 3],
        &[5],
    ];
    for (case, versions) in orders.iter().enumerate() {
        let key = format!("k{case}");
        let mut outcomes = Vec::new();
        for v in *versions {
            let (status, receipt) = d
                .send("orders", &orders_doc(&key, *v), &format!("{key}-v{v}"))
                .await;
            assert_eq!(status, 200, "{receipt}");
            outcomes.push(receipt["outcome"].as_str().unwrap().to_string());
        }
        assert_eq!(outcomes, expected_outcomes(versions), "{versions:?}");
        let newest = *versions.iter().max().unwrap();
        let e = d.store.entity("orders", &key).await.unwrap().unwrap();
        assert_eq!(e.version, Some(newest), "{versions:?}");
        assert_eq!(e.doc.unwrap()["status"], format!("s{newest}"));
    }
    // A deletion at v3 wins over an older update that arrives after it.
    for (v, deleted) in [(1, false), (3, true), (2, false)] {
        let doc = json!({"id": "gone", "version": v, "deleted": deleted});
        let (status, _) = d.send("orders", &doc, &format!("gone-{v}")).await;
        assert_eq!(status, 200);
    }
    let e = d.store.entity("orders", "gone").await.unwrap().unwrap();
    assert!(e.deleted);
    assert_eq!(e.version, Some(3));
    d.stop().await;
}

crate::limited_test! {
/// Random orders with redeliveries, sent concurrently, converge on the newest version.
async fn concurrent_deliveries_in_any_order_converge_sqlite() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};

    let db = TestDb::sqlite();
    let d = start(&db).await;
    let handle = tokio::runtime::Handle::current();
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(PropConfig {
        cases: 12,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let strategy = prop::collection::vec(1i64..=6, 1..12);
    let result = runner.run(&strategy, |versions| {
        let key = format!("p{}", case.fetch_add(1, Ordering::Relaxed));
        tokio::task::block_in_place(|| {
            handle.block_on(async {
                let d = &d;
                let sends = versions.iter().map(|v| {
                    let (doc, id) = (orders_doc(&key, *v), format!("{key}-v{v}"));
                    async move { d.send("orders", &doc, &id).await }
                });
                let answers = futures::future::join_all(sends).await;
                let mut duplicates = 0;
                for (status, receipt) in &answers {
                    prop_assert_eq!(*status, 200, "{}", receipt);
                    duplicates += usize::from(receipt["outcome"] == "duplicate");
                }
                let distinct: std::collections::BTreeSet<_> = versions.iter().collect();
                prop_assert_eq!(duplicates, versions.len() - distinct.len());
                let newest = *versions.iter().max().unwrap();
                let e = d
                    .store
                    .entity("orders", &key)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?
                    .ok_or_else(|| TestCaseError::fail("entity missing"))?;
                prop_assert_eq!(e.version, Some(newest));
                prop_assert_eq!(&e.doc.unwrap()["status"], &json!(format!("s{newest}")));
                Ok(())
            })
        })
    });
    d.stop().await;
    if let Err(e) = result {
        panic!("{e}");
    }
}
}

crate::on_both_backends!(deliveries_converge_on_the_newest_version,);
