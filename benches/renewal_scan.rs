//! One scheduler renewal tick (the due query plus the enqueues) over 10,000,
//! 100,000 and 1,000,000 certificates with the same 1,000 due, to show the
//! tick's cost follows the certificates due, not all certificates. Next to
//! each: a full pass over the collection (the cost of a scan that looked at
//! every certificate), timed in the same run on the same data, and the
//! `$group` by status that the metrics run at each refresh.
//!
//! `cargo bench --bench renewal_scan` (set CAP_TEST_MONGO_URI to use a real
//! replica set; otherwise a throw-away secantusd-rs is started). Figures,
//! not pass/fail. CAP_BENCH_SIZES: comma-separated totals (default
//! 10000,100000,1000000); CAP_BENCH_DUE: certificates due (default 1000).

#[path = "../tests/it/support/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use certautopilot::queue::lease::Leases;
use certautopilot::store::Store;
use certautopilot::work::renewal;
use common::TestDb;
use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};

/// Synthetic issued certificates, `due` of them with their window open.
async fn load(store: &Store, total: usize, due: usize) {
    let now = store.server_now().await.unwrap().timestamp_millis();
    let day = 86_400_000i64;
    let started = Instant::now();
    let chunk = 5_000;
    for start in (0..total).step_by(chunk) {
        let docs: Vec<Document> = (start..(start + chunk).min(total))
            .map(|i| {
                // Spread the due ones through the collection, not at its start.
                let is_due = i % (total / due) == 0;
                let next = if is_due {
                    now - 60_000
                } else {
                    now + (1 + (i as i64 % 60)) * day
                };
                doc! {
                    "_id": format!("crt_bench_{i:07}"),
                    "project_id": format!("prj_{}", i % 100),
                    "name": format!("cert-{i}"),
                    "dns_names": [format!("host{i}.bench.example")],
                    "issuer_id": "iss_bench",
                    "key_algorithm": "ecdsa-p256",
                    "status": "issued",
                    "current": {
                        "serial": format!("{i:016x}"),
                        "not_before": DateTime::from_millis(now - 30 * day),
                        "not_after": DateTime::from_millis(now + 60 * day),
                    },
                    "renewal_due_at": DateTime::from_millis(next),
                    "renewal_next_at": DateTime::from_millis(next),
                    "consecutive_failures": 0i64,
                }
            })
            .collect();
        store
            .collection("certificates")
            .insert_many(docs)
            .await
            .unwrap();
        if start % 100_000 == 0 && start > 0 {
            eprintln!(
                "  loaded {start} of {total} ({:.0}/s)",
                start as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
}

/// What a scan that ignored the index would pay: read every certificate's
/// renewal time and pick the due ones on our side.
async fn full_pass(store: &Store) -> (Duration, usize) {
    let now = store.server_now().await.unwrap();
    let t = Instant::now();
    let all: Vec<Document> = store
        .collection("certificates")
        .find(doc! {})
        .projection(doc! { "renewal_next_at": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let due = all
        .iter()
        .filter(|d| d.get_datetime("renewal_next_at").is_ok_and(|t| *t <= now))
        .count();
    (t.elapsed(), due)
}

/// The metrics' certificates-by-status read: one `$group` over the
/// collection, which every api replica runs at most every 5 s.
async fn status_group(store: &Store) -> Duration {
    let t = Instant::now();
    let grouped: Vec<Document> = store
        .collection("certificates")
        .aggregate(vec![
            doc! { "$group": { "_id": "$status", "n": { "$sum": 1 } } },
        ])
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(!grouped.is_empty());
    t.elapsed()
}

/// The tick's query alone (the indexed read of what is due).
async fn due_query(store: &Store, limit: i64) -> Duration {
    let now = store.server_now().await.unwrap();
    let t = Instant::now();
    let found: Vec<Document> = store
        .collection("certificates")
        .find(doc! { "renewal_next_at": { "$lte": now } })
        .sort(doc! { "renewal_next_at": 1 })
        .limit(limit)
        .projection(doc! { "_id": 1, "current.serial": 1, "consecutive_failures": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert!(!found.is_empty());
    t.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let sizes: Vec<usize> = std::env::var("CAP_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,100000,1000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let due: usize = std::env::var("CAP_BENCH_DUE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    println!(
        "renewal tick: {due} certificates due among N; server {}",
        common::server_base()
    );
    println!(
        "{:>10} {:>6} {:>10} {:>10} {:>14} {:>14} {:>14} {:>16}",
        "total",
        "due",
        "query ms",
        "tick ms",
        "tick vs first",
        "full pass ms",
        "full/query",
        "metrics $group ms"
    );
    let mut first_tick = None;
    for total in sizes {
        let db = TestDb::migrated(&format!("bench_renewal_{total}")).await;
        let store = db.store().await;
        load(&store, total, due).await;
        let (pass, seen_due) = full_pass(&store).await;
        let group = status_group(&store).await;
        let query = due_query(&store, due as i64).await;
        let leases = Leases::new(store.clone());
        let term = leases
            .try_acquire("scheduler", "bench", Duration::from_secs(600))
            .await
            .unwrap()
            .expect("a fresh database has no leader");
        let t = Instant::now();
        let report = renewal::enqueue_due(&leases, &term, due as i64, None)
            .await
            .unwrap();
        let tick = t.elapsed();
        assert_eq!(
            report.enqueued, seen_due,
            "every due certificate enqueued in one tick"
        );
        // A second tick finds nothing: the due ones are marked.
        let again = renewal::enqueue_due(&leases, &term, due as i64, None)
            .await
            .unwrap();
        assert_eq!(again.due, 0);
        let first = *first_tick.get_or_insert(tick);
        println!(
            "{total:>10} {:>6} {:>10.1} {:>10.0} {:>13.2}x {:>14.0} {:>13.0}x {:>16.0}",
            report.enqueued,
            query.as_secs_f64() * 1000.0,
            tick.as_secs_f64() * 1000.0,
            tick.as_secs_f64() / first.as_secs_f64(),
            pass.as_secs_f64() * 1000.0,
            pass.as_secs_f64() / query.as_secs_f64(),
            group.as_secs_f64() * 1000.0,
        );
        store.db().drop().await.unwrap();
    }
}
