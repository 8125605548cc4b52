//! Supervision: a failing actor is restarted by its supervisor, with back-off.

use std::time::{Duration, Instant};

use actix::Supervisor;
use certautopilot::actors::claim::{ClaimActor, ClaimSettings};
use certautopilot::actors::readiness::Readiness;
use certautopilot::domain::jobs::JobKind;
use certautopilot::observe::metrics::Metrics;
use certautopilot::queue::handler::Handlers;
use certautopilot::queue::jobs::JobQueue;
use certautopilot::queue::presence::Presence;
use certautopilot::store::schema::SchemaFit;
use certautopilot::store::Store;
use certautopilot::work::probe::Probe;

#[actix_web::test]
async fn a_claim_actor_that_keeps_failing_is_restarted_with_growing_back_off() {
    // Nothing listens on port 1: announcing presence (and so every claim)
    // fails after a 50 ms server
    // selection, with no election window to ride through.
    let store = Store::connect(
        "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=50",
        Duration::ZERO,
    )
    .await
    .unwrap();
    let readiness = Readiness::new(Duration::from_secs(10));
    readiness.record_ok(SchemaFit::Current);
    let metrics = Metrics::new();
    let settings = ClaimSettings {
        worker_id: "w".into(),
        concurrency: 4,
        job_lease: Duration::from_secs(60),
        poll: Duration::from_millis(50),
        attempt_timeout: Duration::from_secs(60),
    };
    let (m, r) = (metrics.clone(), readiness.clone());
    let _claim = Supervisor::start(move |_| {
        ClaimActor::new(
            settings,
            JobQueue::new(store.clone()),
            Presence::new(
                store.clone(),
                certautopilot::store::fleet::Identity::of_this_binary(
                    "w",
                    vec!["worker"],
                    certautopilot::store::schema::CURRENT_VERSION,
                ),
                Duration::from_secs(10),
            ),
            Handlers::new().register(JobKind::Probe, Probe),
            r,
            m,
        )
    });

    let restarts = metrics.actor_restarts_total.with_label_values(&["claim"]);
    let started = Instant::now();
    let mut seen = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let n = restarts.get();
        if n as usize > seen.len() {
            seen.push(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!("restarts at {seen:?}, gaps {gaps:?}");
    // Without back-off, a 50 ms poll would restart it about a hundred times.
    assert!(
        (3..=9).contains(&seen.len()),
        "{} restarts in 8 s",
        seen.len()
    );
    assert!(
        gaps.last().unwrap() > &(gaps[0] * 2.0),
        "back-off grows: {gaps:?}"
    );
}
