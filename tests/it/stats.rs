//! The shared certificate counts behind the metrics: one claimer at a time
//! counts, everybody reads what it counted, and nobody counts again before
//! the interval has passed.

use crate::support::TestDb;
use certautopilot::store::stats::{count, read_or_claim, release};
use mongodb::bson::doc;

#[tokio::test]
async fn one_replica_counts_and_every_replica_reads_the_counts() {
    let db = TestDb::migrated("stats").await;
    let store = db.store().await;
    let certificates = store.collection("certificates");
    for (i, status) in ["issued", "issued", "pending"].iter().enumerate() {
        certificates
            .insert_one(doc! { "_id": format!("crt_{i}"), "status": status })
            .await
            .unwrap();
    }
    certificates
        .update_one(
            doc! { "_id": "crt_0" },
            doc! { "$set": { "drift_state": "stale" } },
        )
        .await
        .unwrap();

    // Eight replicas scrape at once: exactly one claims the count.
    let claims = futures::future::join_all((0..8).map(|_| read_or_claim(&store))).await;
    let claimed: Vec<_> = claims.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(claimed.iter().filter(|(_, c)| *c).count(), 1, "{claimed:?}");
    assert!(
        claimed.iter().all(|(counts, _)| counts.is_none()),
        "nothing counted yet"
    );

    // A counter whose count failed gives its claim up: the next one counts
    // at once rather than after the claim's five minutes.
    release(&store).await.unwrap();
    let (_, reclaimed) = read_or_claim(&store).await.unwrap();
    assert!(reclaimed, "released claims can be taken again");

    let counted = count(&store).await.unwrap();
    let (read, claimed_again) = read_or_claim(&store).await.unwrap();
    assert!(!claimed_again, "counted just now: not due again yet");
    let read = read.unwrap();
    assert_eq!(read, counted);
    let n =
        |pairs: &[(String, i64)], key: &str| pairs.iter().find(|(k, _)| k == key).map(|(_, n)| *n);
    assert_eq!(n(&read.by_status, "issued"), Some(2));
    assert_eq!(n(&read.by_status, "pending"), Some(1));
    assert_eq!(n(&read.by_drift, "stale"), Some(1));

    // Past the interval (5 s at least), one replica counts again.
    tokio::time::sleep(std::time::Duration::from_millis(5_200)).await;
    let again = futures::future::join_all((0..4).map(|_| read_or_claim(&store))).await;
    assert_eq!(again.iter().filter(|r| r.as_ref().unwrap().1).count(), 1);
}
