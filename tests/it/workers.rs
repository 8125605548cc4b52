//! Real `worker` processes, killed, paused and stopped with real signals.

use std::time::{Duration, Instant};

use crate::support::{self, Proc, TestDb};
use certautopilot::queue::jobs::{JobQueue, NewJob};
use certautopilot::work::probe::PROBE_RESULTS_COLLECTION;
use mongodb::bson::{doc, Document};
use nix::sys::signal::Signal;

async fn job(db: &TestDb, id: mongodb::bson::oid::ObjectId) -> Document {
    db.store()
        .await
        .collection("jobs")
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap()
}

async fn wait_for_holder(
    db: &TestDb,
    id: mongodb::bson::oid::ObjectId,
    holder: &str,
    timeout: Duration,
) -> bool {
    support::wait_until(timeout, || async {
        let j = job(db, id).await;
        j.get_str("state").ok() == Some("running") && j.get_str("holder").ok() == Some(holder)
    })
    .await
}

async fn wait_for_state(
    db: &TestDb,
    id: mongodb::bson::oid::ObjectId,
    state: &str,
    timeout: Duration,
) -> bool {
    support::wait_until(timeout, || async {
        job(db, id).await.get_str("state").ok() == Some(state)
    })
    .await
}

async fn probe(db: &TestDb, key: &str, payload: Document) -> mongodb::bson::oid::ObjectId {
    JobQueue::new(db.store().await)
        .enqueue(&NewJob::new("probe", key, payload))
        .await
        .unwrap()
        .id
}

#[tokio::test]
async fn a_sigkilled_workers_job_is_finished_by_a_peer_within_15_seconds() {
    let db = TestDb::migrated("sigkill").await;
    // Default job lease (60 s) and presence (10 s).
    let a = Proc::start("worker", &db, "worker-a", &[]);
    let id = probe(&db, "long", doc! { "sleep_ms": 6000i64 }).await;
    assert!(
        wait_for_holder(&db, id, "worker-a", Duration::from_secs(20)).await,
        "a claims the job"
    );
    let b = Proc::start("worker", &db, "worker-b", &[]);
    b.wait_alive().await;

    a.signal(Signal::SIGKILL);
    let killed = Instant::now();
    assert!(
        wait_for_holder(&db, id, "worker-b", Duration::from_secs(20)).await,
        "b re-claims the job"
    );
    let reclaimed_after = killed.elapsed();
    println!(
        "job re-claimed {:.1} s after SIGKILL (job lease 60 s)",
        reclaimed_after.as_secs_f64()
    );
    assert!(
        reclaimed_after < Duration::from_secs(15),
        "re-claimed only after {reclaimed_after:?}"
    );

    let j = job(&db, id).await;
    assert_eq!(j.get_i64("token").unwrap(), 2, "token increased");
    assert_eq!(j.get_i32("attempt").unwrap(), 2, "attempt increased");
    assert!(
        wait_for_state(&db, id, "done", Duration::from_secs(20)).await,
        "b completes it"
    );
    let result = db
        .store()
        .await
        .collection(PROBE_RESULTS_COLLECTION)
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(result.get_i32("count").unwrap(), 1);
    drop(b);
}

#[tokio::test]
async fn a_paused_worker_resumed_after_its_lease_expired_is_refused() {
    let db = TestDb::migrated("sigstop").await;
    let short = [
        ("CAP_JOB_LEASE_SECS", "4"),
        ("CAP_WORKER_PRESENCE_SECS", "3"),
    ];
    let a = Proc::start("worker", &db, "worker-a", &short);
    let id = probe(&db, "paused", doc! { "sleep_ms": 2500i64 }).await;
    assert!(wait_for_holder(&db, id, "worker-a", Duration::from_secs(20)).await);
    a.signal(Signal::SIGSTOP);

    let b = Proc::start("worker", &db, "worker-b", &short);
    assert!(
        wait_for_holder(&db, id, "worker-b", Duration::from_secs(20)).await,
        "b takes over the paused worker's job"
    );
    assert!(
        wait_for_state(&db, id, "done", Duration::from_secs(20)).await,
        "b completes it"
    );
    let after_b = job(&db, id).await;

    // By now a's handler has slept its time out; resumed, it tries to
    // heartbeat or record its result, under a stale token.
    a.signal(Signal::SIGCONT);
    let refused = support::wait_until(Duration::from_secs(15), || async {
        !a.log_lines_with(&["job finished", "lease_lost"]).is_empty()
    })
    .await;
    assert!(
        refused,
        "a must learn it lost the lease; log:\n{}",
        a.log_text()
    );

    let after_a = job(&db, id).await;
    assert_eq!(after_a.get_str("state").unwrap(), "done");
    assert_eq!(after_a.get_str("holder").unwrap(), "worker-b");
    assert_eq!(
        after_a.get_i64("token"),
        after_b.get_i64("token"),
        "a changed nothing"
    );
    let result = db
        .store()
        .await
        .collection(PROBE_RESULTS_COLLECTION)
        .find_one(doc! { "_id": id })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        result.get_i32("count").unwrap(),
        1,
        "only b's result stands: {result}"
    );
    let completion = result.get_array("completions").unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    assert_eq!(completion.get_str("holder").unwrap(), "worker-b");
    drop(b);
}

#[tokio::test]
async fn sigterm_hands_in_flight_jobs_back_at_once() {
    let db = TestDb::migrated("sigterm").await;
    let mut a = Proc::start("worker", &db, "worker-a", &[]);
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(probe(&db, &format!("inflight-{i}"), doc! { "sleep_ms": 3000i64 }).await);
    }
    for id in &ids {
        assert!(wait_for_holder(&db, *id, "worker-a", Duration::from_secs(20)).await);
    }
    let b = Proc::start("worker", &db, "worker-b", &[]);
    b.wait_alive().await;

    a.signal(Signal::SIGTERM);
    let termed = Instant::now();
    let handed_back = support::wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for id in &ids {
            all &= job(&db, *id).await.get_str("holder").ok() != Some("worker-a");
        }
        all
    })
    .await;
    let took = termed.elapsed();
    println!(
        "3 in-flight jobs handed back {:.2} s after SIGTERM (job lease 60 s)",
        took.as_secs_f64()
    );
    assert!(
        handed_back && took < Duration::from_secs(5),
        "jobs handed back after {took:?}"
    );
    assert_eq!(
        a.wait_exit(Duration::from_secs(10)).await,
        Some(0),
        "a exits cleanly"
    );

    for id in &ids {
        assert!(wait_for_state(&db, *id, "done", Duration::from_secs(20)).await);
        let j = job(&db, *id).await;
        assert_eq!(j.get_str("holder").unwrap(), "worker-b");
        assert_eq!(
            j.get_i32("attempt").unwrap(),
            1,
            "a hand-back spends no attempt"
        );
    }
    drop(b);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_job_and_the_worker_carries_on() {
    let db = TestDb::migrated("panic").await;
    let w = Proc::start("worker", &db, "worker-p", &[]);
    let queue = JobQueue::new(db.store().await);
    let mut panicking = NewJob::new("probe", "panics", doc! { "panic": true });
    panicking.max_attempts = 1;
    let bad = queue.enqueue(&panicking).await.unwrap().id;
    assert!(wait_for_state(&db, bad, "dead", Duration::from_secs(20)).await);
    let err = job(&db, bad)
        .await
        .get_str("last_error")
        .unwrap()
        .to_string();
    assert!(
        err.contains("handler panicked") && err.contains("asked to panic"),
        "{err}"
    );

    let good = probe(&db, "after-panic", doc! {}).await;
    assert!(
        wait_for_state(&db, good, "done", Duration::from_secs(20)).await,
        "the worker still runs jobs"
    );
    assert!(
        w.metric("certautopilot_jobs_total", "outcome=\"dead\"")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );
}

#[tokio::test]
async fn a_skewed_local_clock_changes_nothing() {
    let db = TestDb::migrated("skew").await;
    // This process believes it is an hour later than it is.
    let w = Proc::start("all", &db, "skewed", &[("CAP_CLOCK_OFFSET_SECS", "3600")]);
    w.wait_alive().await;
    let queue = JobQueue::new(db.store().await);
    let mut delayed = NewJob::new("probe", "delayed", doc! {});
    delayed.delay = Duration::from_secs(3);
    let id = queue.enqueue(&delayed).await.unwrap().id;
    assert!(wait_for_state(&db, id, "done", Duration::from_secs(20)).await);

    let j = job(&db, id).await;
    let claimed_at = j.get_datetime("claimed_at").unwrap().timestamp_millis();
    let run_at = j.get_datetime("run_at").unwrap().timestamp_millis();
    let lease_expires_at = j
        .get_datetime("lease_expires_at")
        .unwrap()
        .timestamp_millis();
    assert!(
        claimed_at >= run_at,
        "not run before its time: claimed {claimed_at} < due {run_at}"
    );
    let lease = lease_expires_at - claimed_at;
    assert!(
        (59_000..=61_000).contains(&lease),
        "job lease measured on the database's clock: {lease} ms"
    );

    let lease_doc = db
        .store()
        .await
        .collection("leases")
        .find_one(doc! { "_id": "scheduler" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease_doc.get_str("holder").unwrap(), "skewed");
    let ttl = lease_doc
        .get_datetime("expires_at")
        .unwrap()
        .timestamp_millis()
        - lease_doc
            .get_datetime("renewed_at")
            .unwrap()
            .timestamp_millis();
    assert!(
        (14_000..=16_000).contains(&ttl),
        "leader lease measured on the database's clock: {ttl} ms"
    );

    // The skew was really injected: the process sees the database an hour behind.
    let skew = w
        .metric("certautopilot_clock_skew_seconds", "")
        .await
        .unwrap();
    assert!((-3610.0..=-3590.0).contains(&skew), "observed skew {skew}");
}
