//! Leases at a given `now` on both backends: held until they end, renewed by their holder, taken over only from the named holder.

use crate::support::TestDb;

const TTL: i64 = 30_000;

async fn a_lease_is_held_until_it_ends(db: &TestDb) {
    let store = db.store().await;
    let now = 1_000_000;
    assert!(store.try_lease("k", "a", TTL, now).await.unwrap());
    assert!(
        !store.try_lease("k", "b", TTL, now + TTL).await.unwrap(),
        "held up to its last millisecond"
    );
    assert!(
        store.try_lease("k", "a", TTL, now + TTL).await.unwrap(),
        "its holder renews it"
    );
    assert!(!store.try_lease("k", "b", TTL, now + TTL + 1).await.unwrap());
    assert!(
        store
            .try_lease("k", "b", TTL, now + 2 * TTL + 1)
            .await
            .unwrap(),
        "taken once the renewed lease ended"
    );
    assert_eq!(store.lease_holder("k").await.unwrap().as_deref(), Some("b"));
    assert!(
        store.try_lease("other", "a", TTL, now).await.unwrap(),
        "leases are independent"
    );
    store.close().await;
}

async fn a_lease_is_taken_over_only_from_its_holder(db: &TestDb) {
    let store = db.store().await;
    let now = 1_000_000;
    assert!(store.try_lease("k", "a", TTL, now).await.unwrap());
    assert!(
        !store
            .take_over_lease("k", "b", "c", TTL, now)
            .await
            .unwrap(),
        "b does not hold it"
    );
    assert!(store
        .take_over_lease("k", "a", "c", TTL, now)
        .await
        .unwrap());
    assert_eq!(store.lease_holder("k").await.unwrap().as_deref(), Some("c"));
    assert!(
        !store.try_lease("k", "a", TTL, now + TTL).await.unwrap(),
        "the new holder's lease runs from the takeover"
    );
    store.release_lease("k", "a").await.unwrap();
    assert_eq!(
        store.lease_holder("k").await.unwrap().as_deref(),
        Some("c"),
        "only the holder releases it"
    );
    store.release_lease("k", "c").await.unwrap();
    assert_eq!(store.lease_holder("k").await.unwrap(), None);
    store.close().await;
}

crate::on_both_backends!(
    a_lease_is_held_until_it_ends,
    a_lease_is_taken_over_only_from_its_holder,
);
