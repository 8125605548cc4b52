//! Leases against a real server: terms as fencing tokens.

use std::time::Duration;

use crate::support::TestDb;
use certautopilot::queue::jobs::NewJob;
use certautopilot::queue::lease::{LeaseError, Leases};
use mongodb::bson::doc;

#[tokio::test]
async fn a_deposed_leader_can_neither_renew_nor_enqueue() {
    let db = TestDb::migrated("leases").await;
    let store = db.store().await;
    let leases = Leases::new(store.clone());
    let a = leases
        .try_acquire("scheduler", "a", Duration::from_secs(1))
        .await
        .unwrap()
        .expect("a leads");
    assert_eq!(a.term, 1);
    assert!(
        leases
            .try_acquire("scheduler", "b", Duration::from_secs(10))
            .await
            .unwrap()
            .is_none(),
        "held"
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let b = leases
        .try_acquire("scheduler", "b", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("b takes over");
    assert_eq!(b.term, 2, "each term one larger");

    assert!(matches!(
        leases.renew(&a, Duration::from_secs(10)).await,
        Err(LeaseError::Lost(_))
    ));
    let job = NewJob::new("housekeeping", "housekeeping:1", doc! {});
    assert!(matches!(
        leases.enqueue_as_leader(&a, &job).await,
        Err(LeaseError::Lost(_))
    ));
    assert_eq!(
        store
            .collection("jobs")
            .count_documents(doc! {})
            .await
            .unwrap(),
        0,
        "a enqueued nothing"
    );

    assert!(leases.enqueue_as_leader(&b, &job).await.unwrap().created);
    assert!(
        !leases.enqueue_as_leader(&b, &job).await.unwrap().created,
        "same key: one job"
    );
    assert_eq!(
        store
            .collection("jobs")
            .count_documents(doc! {})
            .await
            .unwrap(),
        1
    );

    leases.release(&b).await.unwrap();
    let c = leases
        .try_acquire("scheduler", "c", Duration::from_secs(10))
        .await
        .unwrap()
        .expect("released: free at once");
    assert_eq!(c.term, 3);
}
