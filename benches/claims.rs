//! Claims per second: our batched, transactional claim against a bare
//! `findOneAndUpdate` claim loop on the same server, same data, same run.
//!
//! `cargo bench --bench claims` (set CAP_TEST_MONGO_URI to use a real
//! replica set; otherwise a throw-away secantusd-rs is started). Figures,
//! not pass/fail. Each run claims CAP_BENCH_CLAIMS jobs (default 1000) out of
//! CAP_BENCH_JOBS queued (default 5000), so the queue stays deep throughout.
//! CAP_BENCH_BATCH: jobs per claim for ours (default 8, a worker's default
//! concurrency).

#[path = "../tests/it/support/mod.rs"]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certautopilot::queue::jobs::{JobQueue, NewJob};
use certautopilot::store::Store;
use common::TestDb;
use mongodb::bson::{doc, Document};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn load(store: &Store, jobs: usize) {
    let now = store.server_now().await.unwrap();
    let docs: Vec<Document> = (0..jobs)
        .map(|i| {
            JobQueue::new_job_document(&NewJob::new("probe", format!("bench-{i}"), doc! {}), now)
        })
        .collect();
    for chunk in docs.chunks(1000) {
        store
            .collection("jobs")
            .insert_many(chunk.to_vec())
            .await
            .unwrap();
    }
}

/// The baseline: each claimer loops findOneAndUpdate on the oldest queued job.
async fn bare_loop(store: Store, claimers: usize, target: usize) -> usize {
    let claimed = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..claimers)
        .map(|c| {
            let (jobs, claimed) = (store.collection("jobs"), claimed.clone());
            tokio::spawn(async move {
                while claimed.load(Ordering::Relaxed) < target {
                    let got = jobs
                        .find_one_and_update(
                            doc! { "state": "queued", "kind": "probe" },
                            doc! { "$set": { "state": "running", "holder": format!("bare-{c}") }, "$inc": { "token": 1i64 } },
                        )
                        .sort(doc! { "run_at": 1 })
                        .await
                        .unwrap();
                    if got.is_none() {
                        break;
                    }
                    claimed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    claimed.load(Ordering::Relaxed)
}

/// Ours: each claimer calls `JobQueue::claim` for a batch at a time.
async fn our_claims(store: Store, claimers: usize, batch: usize, target: usize) -> usize {
    let queue = JobQueue::new(store);
    let claimed = Arc::new(AtomicUsize::new(0));
    let kinds = vec!["probe".to_string()];
    let tasks: Vec<_> = (0..claimers)
        .map(|c| {
            let (queue, claimed, kinds) = (queue.clone(), claimed.clone(), kinds.clone());
            tokio::spawn(async move {
                let mut empty = 0;
                while empty < 3 && claimed.load(Ordering::Relaxed) < target {
                    let got = queue
                        .claim(
                            &format!("ours-{c}"),
                            &kinds,
                            batch,
                            Duration::from_secs(600),
                        )
                        .await
                        .unwrap();
                    if got.is_empty() {
                        empty += 1;
                    } else {
                        empty = 0;
                        claimed.fetch_add(got.len(), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    claimed.load(Ordering::Relaxed)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let jobs = env_usize("CAP_BENCH_JOBS", 5000);
    let batch = env_usize("CAP_BENCH_BATCH", 8);
    let target = env_usize("CAP_BENCH_CLAIMS", 1000).min(jobs);
    println!(
        "claims per second: {target} claims from {jobs} queued jobs, our batch {batch}; server {}",
        common::server_base()
    );
    println!(
        "{:>9} {:>14} {:>14} {:>7}",
        "claimers", "bare loop/s", "ours/s", "ratio"
    );
    for claimers in [1, 4, 16] {
        let db = TestDb::migrated(&format!("bench_bare_{claimers}")).await;
        let store = db.store().await;
        // The baseline's best index: its sort order, without our slots.
        let by_due = mongodb::IndexModel::builder()
            .keys(doc! { "state": 1, "run_at": 1 })
            .build();
        store.collection("jobs").create_index(by_due).await.unwrap();
        load(&store, jobs).await;
        let t = Instant::now();
        let n = bare_loop(store.clone(), claimers, target).await;
        let bare = n as f64 / t.elapsed().as_secs_f64();
        assert!(n >= target);
        store.db().drop().await.unwrap();

        let db = TestDb::migrated(&format!("bench_ours_{claimers}")).await;
        let store = db.store().await;
        load(&store, jobs).await;
        let t = Instant::now();
        let n = our_claims(store.clone(), claimers, batch, target).await;
        let ours = n as f64 / t.elapsed().as_secs_f64();
        assert!(n >= target);
        store.db().drop().await.unwrap();
        println!(
            "{claimers:>9} {bare:>14.0} {ours:>14.0} {:>6.1}x",
            ours / bare
        );
    }
}
