//! The job queue against a real server: concurrent claimers, fencing,
//! retries and dead jobs, idempotent enqueue.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::TestDb;
use certautopilot::domain::backoff::Backoff;
use certautopilot::queue::jobs::{ClaimedJob, FailOutcome, JobError, JobQueue, NewJob};
use certautopilot::work::probe::PROBE_RESULTS_COLLECTION;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

fn kinds() -> Vec<String> {
    vec!["probe".to_string()]
}

/// Claims up to `max` probe jobs for `holder` under a lease of `lease_secs`.
async fn claim(queue: &JobQueue, holder: &str, max: usize, lease_secs: u64) -> Vec<ClaimedJob> {
    queue
        .claim(holder, &kinds(), max, Duration::from_secs(lease_secs))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_claimers_complete_500_jobs_exactly_once_and_never_share_one() {
    let db = TestDb::migrated("claimers").await;
    let store = db.store().await;
    let queue = JobQueue::new(store.clone());
    for i in 0..500 {
        queue
            .enqueue(&NewJob::new("probe", format!("job-{i}"), doc! {}))
            .await
            .unwrap();
    }

    // Each claimer logs (job, token, claimer) when it claims and again when its
    // fenced completion record lands; holding intervals are checked after.
    #[derive(Debug, Clone)]
    struct Hold {
        job: String,
        token: i64,
        claimer: usize,
        start: std::time::Instant,
        end: std::time::Instant,
    }
    let holds = Arc::new(Mutex::new(Vec::<Hold>::new()));
    let mut tasks = Vec::new();
    for claimer in 0..8 {
        let queue = queue.clone();
        let holds = holds.clone();
        tasks.push(tokio::spawn(async move {
            let mut idle_rounds = 0;
            while idle_rounds < 5 {
                let jobs = claim(&queue, &format!("claimer-{claimer}"), 4, 60).await;
                if jobs.is_empty() {
                    idle_rounds += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle_rounds = 0;
                for job in jobs {
                    let start = std::time::Instant::now();
                    job.lease
                        .fenced_update(
                            PROBE_RESULTS_COLLECTION,
                            doc! { "_id": job.lease.job_id },
                            doc! { "$inc": { "count": 1 }, "$push": { "tokens": job.lease.token } },
                            true,
                        )
                        .await
                        .unwrap();
                    queue.complete(&job.lease).await.unwrap();
                    holds.lock().unwrap().push(Hold {
                        job: job.lease.job_id.to_hex(),
                        token: job.lease.token,
                        claimer,
                        start,
                        end: std::time::Instant::now(),
                    });
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let jobs: Vec<Document> = store
        .collection("jobs")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(jobs.len(), 500, "no job lost or added");
    assert!(
        jobs.iter().all(|j| j.get_str("state").unwrap() == "done"),
        "every job done"
    );

    let results: Vec<Document> = store
        .collection(PROBE_RESULTS_COLLECTION)
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(results.len(), 500, "one completion record per job");
    for r in &results {
        assert_eq!(
            r.get_i32("count").unwrap(),
            1,
            "job completed more than once: {r}"
        );
    }

    let holds = holds.lock().unwrap().clone();
    assert_eq!(holds.len(), 500);
    let mut by_job: HashMap<String, Vec<Hold>> = HashMap::new();
    for h in holds {
        by_job.entry(h.job.clone()).or_default().push(h);
    }
    for (job, hs) in &by_job {
        // One claim each; were there more, their tokens must differ and
        // their holding intervals must not overlap.
        let tokens: HashSet<i64> = hs.iter().map(|h| h.token).collect();
        assert_eq!(
            tokens.len(),
            hs.len(),
            "job {job} held twice under one token: {hs:?}"
        );
        for a in hs {
            for b in hs {
                if a.claimer != b.claimer {
                    assert!(
                        a.end <= b.start || b.end <= a.start,
                        "job {job} held by two claimers at once"
                    );
                }
            }
        }
    }
    let claimers: HashSet<usize> = by_job.values().flatten().map(|h| h.claimer).collect();
    assert!(
        claimers.len() >= 4,
        "work spread over claimers: {claimers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_is_refused_after_its_lease_expires() {
    let db = TestDb::migrated("stale").await;
    let queue = JobQueue::new(db.store().await);
    queue
        .enqueue(&NewJob::new("probe", "only", doc! {}))
        .await
        .unwrap();
    let first = claim(&queue, "a", 1, 1).await.remove(0);
    assert!(
        claim(&queue, "b", 1, 60).await.is_empty(),
        "held job not claimable"
    );

    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = claim(&queue, "b", 1, 60).await.remove(0);
    assert_eq!(second.lease.job_id, first.lease.job_id);
    assert!(
        second.lease.token > first.lease.token,
        "a new claim gets a larger token"
    );
    assert_eq!(second.attempt, 2);

    assert!(matches!(
        queue.heartbeat(&first.lease).await,
        Err(JobError::LeaseLost(_))
    ));
    assert!(matches!(
        queue.complete(&first.lease).await,
        Err(JobError::LeaseLost(_))
    ));
    assert!(matches!(
        first
            .lease
            .fenced_update(
                PROBE_RESULTS_COLLECTION,
                doc! { "_id": 1 },
                doc! { "$set": { "x": 1 } },
                true
            )
            .await,
        Err(JobError::LeaseLost(_))
    ));
    queue.heartbeat(&second.lease).await.unwrap();
    queue.complete(&second.lease).await.unwrap();
    let job = queue.get(second.lease.job_id).await.unwrap().unwrap();
    assert_eq!(job.get_str("state").unwrap(), "done");
    assert_eq!(job.get_i64("token").unwrap(), second.lease.token);
}

#[tokio::test]
async fn attempts_exhausted_leave_a_dead_job_with_its_last_error() {
    let db = TestDb::migrated("dead").await;
    let queue = JobQueue::new(db.store().await).with_retry_backoff(Backoff::new(
        Duration::from_millis(10),
        Duration::from_millis(20),
    ));
    let mut job = NewJob::new("probe", "failing", doc! {});
    job.max_attempts = 3;
    let id = queue.enqueue(&job).await.unwrap().id;
    let mut outcomes = Vec::new();
    for attempt in 1..=3 {
        let claimed = loop {
            let mut c = claim(&queue, "w", 1, 60).await;
            if let Some(c) = c.pop() {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(claimed.attempt, attempt);
        outcomes.push(
            queue
                .fail(&claimed, &format!("boom {attempt}"), false)
                .await
                .unwrap(),
        );
    }
    assert!(matches!(outcomes[0], FailOutcome::Retrying { .. }));
    assert!(matches!(outcomes[1], FailOutcome::Retrying { .. }));
    assert_eq!(outcomes[2], FailOutcome::Dead);
    let doc = queue.get(id).await.unwrap().unwrap();
    assert_eq!(doc.get_str("state").unwrap(), "dead");
    assert_eq!(doc.get_str("last_error").unwrap(), "boom 3");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        claim(&queue, "w", 1, 60).await.is_empty(),
        "dead jobs are not claimed"
    );
}

#[tokio::test]
async fn a_failed_job_waits_out_its_back_off() {
    let db = TestDb::migrated("backoff").await;
    let queue = JobQueue::new(db.store().await)
        .with_retry_backoff(Backoff::new(Duration::from_secs(2), Duration::from_secs(2)));
    queue
        .enqueue(&NewJob::new("probe", "later", doc! {}))
        .await
        .unwrap();
    let claimed = claim(&queue, "w", 1, 60).await.remove(0);
    let FailOutcome::Retrying { delay } = queue.fail(&claimed, "transient", false).await.unwrap()
    else {
        panic!("expected a retry")
    };
    assert!(delay >= Duration::from_secs(1), "{delay:?}");
    assert!(
        claim(&queue, "w", 1, 60).await.is_empty(),
        "not before its back-off"
    );
    tokio::time::sleep(delay + Duration::from_millis(200)).await;
    assert_eq!(claim(&queue, "w", 1, 60).await.len(), 1);
}

#[tokio::test]
async fn the_same_key_twice_gives_one_job() {
    let db = TestDb::migrated("idem").await;
    let store = db.store().await;
    let queue = JobQueue::new(store.clone());
    let job = NewJob::new("probe", "renew:cert-1:2026-11-28", doc! {});
    let first = queue.enqueue(&job).await.unwrap();
    let second = queue.enqueue(&job).await.unwrap();
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.id, second.id);
    assert_eq!(
        store
            .collection("jobs")
            .count_documents(doc! { "key": &job.key })
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn release_puts_the_job_back_without_spending_an_attempt() {
    let db = TestDb::migrated("release").await;
    let queue = JobQueue::new(db.store().await);
    queue
        .enqueue(&NewJob::new("probe", "r", doc! {}))
        .await
        .unwrap();
    let first = claim(&queue, "a", 1, 60).await.remove(0);
    queue.release(&first.lease).await.unwrap();
    let second = claim(&queue, "b", 1, 60).await.remove(0);
    assert_eq!(second.attempt, 1);
    assert!(second.lease.token > first.lease.token);
}
