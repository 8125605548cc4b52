//! The HTTP surface every workload serves: `/healthz`, `/readyz`,
//! `/metrics` ([`health`]); the API joins it on `api` replicas in a later issue.

pub mod health;

use std::sync::Arc;

use actix_web::web;

use crate::jobs::JobQueue;
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub queue: JobQueue,
    pub depth_cache: Arc<health::DepthCache>,
    /// Job kinds always shown in the queue-depth gauge.
    pub kinds: Vec<String>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics));
}
