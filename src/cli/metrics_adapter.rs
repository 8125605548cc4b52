//! Wiring of the `metrics-adapter` workload: the `external.metrics.k8s.io`
//! API over TLS ([`crate::http::adapter`]) and, on a plain listener,
//! `/healthz`, `/readyz` and `/metrics` for the kubelet and Prometheus,
//! which have no front-proxy certificate. It holds no state of its own and
//! needs no KEK: it only counts jobs, so any number can run side by side.
//!
//! Not ready while the database is away past the grace period, the schema
//! does not fit, or it is shutting down. On SIGTERM/SIGINT `/readyz` fails
//! at once and both listeners drain.

use std::sync::Arc;

use actix_web::{web, App, HttpServer};

use crate::actors::readiness::{Readiness, PROBE_DEADLINE, PROBE_INTERVAL};
use crate::cli::config::AdapterConfig;
use crate::cli::workloads::StartError;
use crate::domain::jobs::JobKind;
use crate::http::adapter::{self, AdapterState};
use crate::http::{self as probes, health::DepthCache, AppState};
use crate::observe::metrics::Metrics;
use crate::observe::shutdown::{self, Shutdown};
use crate::queue::jobs::JobQueue;
use crate::queue::presence::Presence;
use crate::store::fleet::Identity;
use crate::store::schema::{self, SchemaFit};
use crate::store::{short, Store};

/// How long the adapter's fleet record lives unrenewed (as a worker's
/// presence does by default).
const FLEET_RECORD_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs the adapter until SIGTERM/SIGINT.
pub async fn run(cfg: AdapterConfig) -> Result<(), StartError> {
    let store = Store::connect(&cfg.common.mongo_uri, cfg.common.election_retry)
        .await
        .map_err(|e| StartError::Database(short(&e)))?;
    let state = schema::read_state(&store)
        .await
        .map_err(|e| StartError::Database(short(&e)))?;
    if let fit @ SchemaFit::TooNew(_) = SchemaFit::of(state) {
        return Err(StartError::Schema(fit.describe()));
    }

    let readiness = Readiness::new(cfg.readyz_grace);
    let shutdown = Shutdown::new();
    // In the fleet registry like every process (`fleet status`).
    let presence = Presence::new(
        store.clone(),
        Identity::of_this_binary(
            &cfg.instance_id,
            vec!["metrics-adapter"],
            schema::known_version(),
        ),
        FLEET_RECORD_TTL,
    );
    actix::spawn(presence.clone().keep_renewed(shutdown.clone()));
    let queue = JobQueue::new(store.clone());
    let kinds: Vec<String> = JobKind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    actix::spawn(watch_database(
        store.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));

    let state = AdapterState {
        queue: queue.clone(),
        allowed_names: Arc::new(cfg.allowed_names.clone()),
        kinds: kinds.clone(),
    };
    let api = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(adapter::configure)
    })
    .on_connect(adapter::on_connect(cfg.client_ca.clone()))
    .workers(2)
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_grace.as_secs())
    .bind_rustls_0_23(cfg.addr, cfg.tls.clone())
    .map_err(|error| StartError::Bind {
        addr: cfg.addr,
        error,
    })?
    .run();
    let api_handle = api.handle();
    let api_task = actix::spawn(api);

    let probe_state = AppState {
        readiness: readiness.clone(),
        metrics: Metrics::new(),
        queue,
        depth_cache: Arc::new(DepthCache::default()),
        kinds,
    };
    let plain = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(probe_state.clone()))
            .configure(probes::configure)
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_grace.as_secs())
    .bind(cfg.http_addr)
    .map_err(|error| StartError::Bind {
        addr: cfg.http_addr,
        error,
    })?
    .run();
    let plain_handle = plain.handle();
    let plain_task = actix::spawn(plain);
    tracing::info!(
        instance = %cfg.instance_id,
        adapter = %cfg.addr,
        http = %cfg.http_addr,
        allowed_names = %cfg.allowed_names.join(","),
        "metrics adapter started"
    );

    let signal = shutdown::signal().await;
    tracing::info!(signal, "shutting down");
    readiness.set_shutting_down();
    shutdown.trigger();
    if let Err(e) = presence.withdraw().await {
        tracing::warn!(error = %short(&e), "leaving the fleet registry failed; the record expires");
    }
    api_handle.stop(true).await;
    let _ = api_task.await;
    plain_handle.stop(true).await;
    let _ = plain_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// The readiness monitor's database half (the adapter has no KEK to check):
/// the primary and the schema version, every [`PROBE_INTERVAL`].
async fn watch_database(store: Store, readiness: Arc<Readiness>, shutdown: Shutdown) {
    loop {
        let probe = async {
            store.ping_primary(PROBE_DEADLINE).await?;
            tokio::time::timeout(PROBE_DEADLINE, schema::probe_state(&store))
                .await
                .map_err(|_| "schema version read timed out".to_string())?
                .map_err(|e| short(&e))
        };
        match probe.await {
            Ok(state) => readiness.record_ok(SchemaFit::of(state)),
            Err(e) => readiness.record_unreachable(e),
        }
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = shutdown.requested() => return,
        }
    }
}
