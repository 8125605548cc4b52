//! Two real `scheduler` processes: one leader at a time, fast hand-over.

use std::time::{Duration, Instant};

use crate::support::{self, Proc, TestDb};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use nix::sys::signal::Signal;

async fn holder(db: &TestDb) -> Option<String> {
    let store = db.store().await;
    let lease = store
        .collection("leases")
        .find_one(doc! { "_id": "scheduler", "$expr": { "$gt": ["$expires_at", "$$NOW"] } })
        .await
        .unwrap()?;
    lease.get_str("holder").ok().map(str::to_string)
}

async fn terms(db: &TestDb) -> Vec<Document> {
    db.store()
        .await
        .collection("lease_terms")
        .find(doc! { "lease": "scheduler" })
        .sort(doc! { "term": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Samples both processes' `is_leader` gauge; panics if both claim to lead.
async fn assert_never_two_leaders(a: &Proc, b: &Proc, for_how_long: Duration) {
    let until = Instant::now() + for_how_long;
    while Instant::now() < until {
        let la = a
            .metric("certautopilot_scheduler_is_leader", "")
            .await
            .unwrap_or(0.0);
        let lb = b
            .metric("certautopilot_scheduler_is_leader", "")
            .await
            .unwrap_or(0.0);
        assert!(la + lb <= 1.0, "both {} and {} lead", a.id, b.id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_leader_at_a_time_and_the_standby_takes_over() {
    let db = TestDb::migrated("leaders").await;
    // The lease actor's debug lines say why a hand-over was slow.
    let env = [("RUST_LOG", "info,certautopilot::actors::lease=debug")];
    let a = Proc::start("scheduler", &db, "sched-a", &env);
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            holder(&db).await.is_some()
        })
        .await
    );
    let b = Proc::start("scheduler", &db, "sched-b", &env);
    b.wait_alive().await;
    assert_never_two_leaders(&a, &b, Duration::from_secs(4)).await;
    let first = holder(&db).await.unwrap();
    let (leader, standby) = if first == "sched-a" { (a, b) } else { (b, a) };

    // SIGTERM: the leader releases its lease and the standby, watching the
    // lease document, takes it at once.
    leader.signal(Signal::SIGTERM);
    let sent = Instant::now();
    let took_over = support::wait_until(Duration::from_secs(5), || async {
        holder(&db).await.as_deref() == Some(standby.id.as_str())
    })
    .await;
    let handover = sent.elapsed();
    println!(
        "standby led {:.0} ms after SIGTERM to the leader",
        handover.as_secs_f64() * 1000.0
    );
    assert!(
        took_over && handover < Duration::from_secs(2),
        "hand-over took {handover:?}\nleader's log:\n{}\nstandby's log:\n{}",
        leader.log_text(),
        standby.log_text()
    );

    // SIGKILL: no release; the standby waits out the lease (15 s) plus at most
    // one retry interval (3 s).
    let restarted = Proc::start("scheduler", &db, &format!("{}-2", leader.id), &[]);
    restarted.wait_alive().await;
    drop(leader);
    assert_never_two_leaders(&standby, &restarted, Duration::from_secs(2)).await;
    assert_eq!(
        holder(&db).await.as_deref(),
        Some(standby.id.as_str()),
        "a newcomer does not depose a live leader"
    );
    standby.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let took_over = support::wait_until(Duration::from_secs(25), || async {
        holder(&db).await.as_deref() == Some(restarted.id.as_str())
    })
    .await;
    let failover = killed.elapsed();
    println!(
        "standby led {:.1} s after SIGKILL of the leader (lease 15 s, retry 3 s)",
        failover.as_secs_f64()
    );
    assert!(
        took_over && failover <= Duration::from_secs(19),
        "fail-over took {failover:?}"
    );

    // Terms: strictly increasing by one, one holder each, never two at once.
    let terms = terms(&db).await;
    let numbers: Vec<i64> = terms.iter().map(|t| t.get_i64("term").unwrap()).collect();
    assert_eq!(
        numbers,
        (1..=numbers.len() as i64).collect::<Vec<_>>(),
        "terms {numbers:?}"
    );
    assert_eq!(
        numbers.len(),
        3,
        "three leaderships: first, after SIGTERM, after SIGKILL"
    );
    for pair in terms.windows(2) {
        assert_ne!(
            pair[0].get_str("holder").unwrap(),
            pair[1].get_str("holder").unwrap()
        );
        if let Ok(ended) = pair[0].get_datetime("ended_at") {
            assert!(
                ended <= pair[1].get_datetime("started_at").unwrap(),
                "terms overlap: {pair:?}"
            );
        }
    }
    // The leader enqueued housekeeping; a worker is not needed to see it.
    let housekeeping = db
        .store()
        .await
        .collection("jobs")
        .count_documents(doc! { "kind": "housekeeping" })
        .await
        .unwrap();
    assert!(housekeeping >= 1);
}
