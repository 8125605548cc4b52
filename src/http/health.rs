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
use crate::domain::certificate::CertificateStatus;
use crate::queue::jobs::JobState;
use crate::store::{certificates, orders};

/// Queue depth read at most this often, however often `/metrics` is scraped.
const DEPTH_MAX_AGE: Duration = Duration::from_secs(5);
const DEPTH_DEADLINE: Duration = Duration::from_secs(2);
/// Certificates with an expiry series: the soonest to expire.
pub const EXPIRY_SERIES: i64 = 1000;

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
    if refresh_due(&state) {
        refresh_queue_depth(&state).await;
        if let Err(e) = refresh_certificates(&state).await {
            tracing::debug!(error = %e, "certificate metrics unavailable; serving the last values");
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

/// True at most once per [`DEPTH_MAX_AGE`], however often we are scraped.
fn refresh_due(state: &AppState) -> bool {
    let mut read_at = state.depth_cache.read_at.lock().unwrap();
    if read_at.is_some_and(|t| t.elapsed() < DEPTH_MAX_AGE) {
        return false;
    }
    *read_at = Some(Instant::now());
    true
}

/// Certificates by status and drift (the shared counts of
/// [`crate::store::stats`]), orders in flight, and the notAfter of the
/// [`EXPIRY_SERIES`] certificates expiring soonest (a bounded number of
/// series, from the `current.not_after` index).
async fn refresh_certificates(state: &AppState) -> Result<(), String> {
    use mongodb::bson::{doc, Document};
    let store = state.queue.store();
    let short = |e: mongodb::error::Error| crate::store::short(&e);
    let read = async {
        let (counts, claimed) = crate::store::stats::read_or_claim(store)
            .await
            .map_err(short)?;
        if claimed {
            // Counted in the background: a large collection takes longer
            // than a scrape may wait; until then the last counts serve.
            let store = store.clone();
            actix_web::rt::spawn(async move {
                if let Err(e) = crate::store::stats::count(&store).await {
                    tracing::warn!(error = %crate::store::short(&e), "counting certificates failed");
                    let _ = crate::store::stats::release(&store).await;
                }
            });
        }
        let in_flight = orders::count_open(store).await.map_err(short)?;
        let soonest: Vec<Document> = certificates::first_by(
            store,
            doc! { "current.not_after": { "$exists": true } },
            doc! { "current.not_after": 1 },
            EXPIRY_SERIES,
            doc! { "project_id": 1, "current.not_after": 1 },
        )
        .await
        .map_err(short)?;
        let due_soonest: Vec<Document> = certificates::first_by(
            store,
            doc! { "renewal_due_at": { "$exists": true } },
            doc! { "renewal_due_at": 1 },
            EXPIRY_SERIES,
            doc! { "project_id": 1, "renewal_due_at": 1 },
        )
        .await
        .map_err(short)?;
        let failing: Vec<Document> = certificates::first_by(
            store,
            doc! { "consecutive_failures": { "$gt": 0 } },
            doc! { "consecutive_failures": -1 },
            EXPIRY_SERIES,
            doc! { "project_id": 1, "consecutive_failures": 1 },
        )
        .await
        .map_err(short)?;

        Ok::<_, String>((counts, in_flight, soonest, due_soonest, failing))
    };
    let (counts, in_flight, soonest, due_soonest, failing) =
        tokio::time::timeout(DEPTH_DEADLINE, read)
            .await
            .map_err(|_| "timed out".to_string())??;
    let m = &state.metrics;
    if let Some(counts) = counts {
        m.certificates.reset();
        for s in CertificateStatus::ALL {
            m.certificates.with_label_values(&[s.as_str()]).set(0);
        }
        for (status, n) in &counts.by_status {
            m.certificates.with_label_values(&[status]).set(*n);
        }
        m.certificates_by_drift.reset();
        for state in crate::domain::drift::DriftState::ALL {
            m.certificates_by_drift
                .with_label_values(&[state.as_str()])
                .set(0);
        }
        for (state, n) in &counts.by_drift {
            m.certificates_by_drift.with_label_values(&[state]).set(*n);
        }
    }
    m.orders_in_flight.set(in_flight as i64);
    m.certificate_expiry.reset();
    for c in soonest {
        let not_after = c
            .get_document("current")
            .ok()
            .and_then(|cur| cur.get_datetime("not_after").ok())
            .map(|t| t.timestamp_millis() / 1000)
            .unwrap_or(0);
        m.certificate_expiry
            .with_label_values(&[
                c.get_str("project_id").unwrap_or_default(),
                c.get_str("_id").unwrap_or_default(),
            ])
            .set(not_after);
    }
    let labels = |c: &Document| {
        [
            c.get_str("project_id").unwrap_or_default().to_string(),
            c.get_str("_id").unwrap_or_default().to_string(),
        ]
    };
    m.certificate_renewal_due.reset();
    for c in due_soonest {
        let due = c
            .get_datetime("renewal_due_at")
            .map(|t| t.timestamp_millis() / 1000)
            .unwrap_or(0);
        m.certificate_renewal_due
            .with_label_values(&labels(&c))
            .set(due);
    }
    m.certificate_consecutive_failures.reset();
    for c in failing {
        let n = c.get_i64("consecutive_failures").unwrap_or(0);
        m.certificate_consecutive_failures
            .with_label_values(&labels(&c))
            .set(n);
    }
    Ok(())
}

async fn refresh_queue_depth(state: &AppState) {
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
    let oldest = async {
        let since = state.queue.oldest_runnable().await?;
        let now = state.queue.store().server_now().await?;
        Ok::<_, mongodb::error::Error>(since.map_or(0, |t| {
            (now.timestamp_millis() - t.timestamp_millis()).max(0) / 1000
        }))
    };
    match tokio::time::timeout(DEPTH_DEADLINE, oldest).await {
        Ok(Ok(secs)) => state.metrics.queue_oldest_queued_seconds.set(secs),
        Ok(Err(e)) => {
            tracing::debug!(error = %crate::store::short(&e), "oldest queued job unavailable; serving the last value")
        }
        Err(_) => tracing::debug!("oldest queued job timed out; serving the last value"),
    }
}
