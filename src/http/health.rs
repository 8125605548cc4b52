//! `/healthz` (alive; touches nothing), `/readyz` (from the readiness
//! monitor's cached state) and `/metrics`.
//!
//! None of them answers 5xx because the database is briefly away: `/readyz`
//! is 503 only once the primary has been gone longer than the grace period,
//! and `/metrics` serves the last queue depth it could read.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;
use crate::jobs::JobState;

/// Queue depth read at most this often, however often `/metrics` is scraped.
const DEPTH_MAX_AGE: Duration = Duration::from_secs(5);
const DEPTH_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Default)]
pub struct DepthCache {
    read_at: Mutex<Option<Instant>>,
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "alive" }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let report = state.readiness.report();
    if report.ready {
        HttpResponse::Ok().json(report.body)
    } else {
        HttpResponse::ServiceUnavailable().json(report.body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    refresh_queue_depth(&state).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

async fn refresh_queue_depth(state: &AppState) {
    {
        let mut read_at = state.depth_cache.read_at.lock().unwrap();
        if read_at.is_some_and(|t| t.elapsed() < DEPTH_MAX_AGE) {
            return;
        }
        *read_at = Some(Instant::now());
    }
    match tokio::time::timeout(DEPTH_DEADLINE, state.queue.depth()).await {
        Ok(Ok(rows)) => {
            let gauge = &state.metrics.queue_depth;
            // Every known kind reads 0 rather than vanishing when drained.
            gauge.reset();
            for kind in &state.kinds {
                for s in [JobState::Queued, JobState::Running, JobState::Dead] {
                    gauge
                        .with_label_values(&[kind.as_str(), s.as_str()])
                        .set(0.0);
                }
            }
            for (kind, job_state, n) in rows {
                gauge.with_label_values(&[&kind, &job_state]).set(n as f64);
            }
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %crate::store::short(&e), "queue depth unavailable; serving the last value")
        }
        Err(_) => tracing::debug!("queue depth timed out; serving the last value"),
    }
}
