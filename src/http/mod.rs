//! The HTTP surface: `/healthz`, `/readyz` and `/metrics` on every workload
//! ([`health`]), and on `api` replicas the `/v1` API and the HTTP-01
//! responder ([`api`]); HTTPS on the main listener when it has a
//! certificate ([`tls`]); on the metrics adapter, the
//! `external.metrics.k8s.io` API ([`adapter`]).

pub mod adapter;
pub mod api;
pub mod health;
pub mod tls;

use std::sync::Arc;

use actix_web::web;

use crate::actors::readiness::Readiness;
use crate::observe::metrics::Metrics;
use crate::queue::jobs::JobQueue;

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

/// `/healthz`, `/readyz` and `/metrics`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_probes(cfg);
    configure_metrics(cfg);
}

/// `/healthz` and `/readyz`, for a main listener when `/metrics` has a
/// listener of its own (`CAP_METRICS_ADDR`).
pub fn configure_probes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz));
}

/// `/metrics` alone.
pub fn configure_metrics(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(health::metrics));
}
