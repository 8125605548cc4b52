//! Wiring of the long-running workloads: `api`, `worker`, `scheduler`, and
//! `all` (the three in one process).
//!
//! Startup: connect, refuse a schema newer than this binary, start the
//! readiness monitor, the actors of each role and the HTTP server.
//! Shutdown on SIGTERM/SIGINT (DESIGN.md invariant 9): `/readyz` fails at
//! once; the scheduler leader releases its lease; the worker stops claiming
//! and hands its jobs back; the HTTP server stops accepting and drains.

use std::sync::Arc;
use std::time::Duration;

use actix::{Addr, Supervisor};
use actix_web::{web, App, HttpServer};

use crate::actors::claim::{ClaimActor, ClaimSettings, Drain};
use crate::actors::kek_rotation::KekRotationActor;
use crate::actors::lease::{LeaseActor, LeaseSettings, StepDown};
use crate::actors::order::{OrderActor, OrderSettings, Orders};
use crate::actors::readiness::{self, Readiness};
use crate::actors::scheduler::{SchedulerActor, SchedulerSettings};
use crate::actors::siem::SiemActor;
use crate::audit::Audit;
use crate::cli::config::WorkloadConfig;
use crate::crypto::api_tokens::TokenKey;
use crate::crypto::kek::KekConfig;
use crate::crypto::secrets::Secrets;
use crate::domain::jobs::JobKind;
use crate::http::api::rate_limit::RateLimiter;
use crate::http::api::token_cache::TokenCache;
use crate::http::api::ApiState;
use crate::http::{self, health::DepthCache, AppState};
use crate::notify::outbox::Outbox;
use crate::observe::metrics::Metrics;
use crate::observe::shutdown::{self, Shutdown};
use crate::queue::jobs::JobQueue;
use crate::queue::lease::{Leases, SCHEDULER_LEASE};
use crate::queue::presence::Presence;
use crate::store::clock::LocalClock;
use crate::store::fleet::Identity;
use crate::store::schema::{self, SchemaFit};
use crate::store::{short, Store};
use crate::work::registry::{self, WorkerDeps};

#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub scheduler: bool,
}

impl Roles {
    /// The names the fleet registry records.
    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.api, "api"),
            (self.worker, "worker"),
            (self.scheduler, "scheduler"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    pub const API: Roles = Roles {
        api: true,
        worker: false,
        scheduler: false,
    };
    pub const WORKER: Roles = Roles {
        api: false,
        worker: true,
        scheduler: false,
    };
    pub const SCHEDULER: Roles = Roles {
        api: false,
        worker: false,
        scheduler: true,
    };
    pub const ALL: Roles = Roles {
        api: true,
        worker: true,
        scheduler: true,
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot reach MongoDB: {0}")]
    Database(String),
    #[error("{0}")]
    Schema(String),
    #[error("KEK: {0}")]
    Kek(String),
    #[error("HTTPS: {0}")]
    Tls(String),
    #[error("cannot serve HTTP on {addr}: {error}")]
    Bind {
        addr: std::net::SocketAddr,
        error: std::io::Error,
    },
}

/// Runs the given roles until SIGTERM/SIGINT, then shuts down gracefully.
pub async fn run(roles: Roles, cfg: WorkloadConfig, kek: &KekConfig) -> Result<(), StartError> {
    // A key ring that is missing or open to others stops us here; a PKCS#11
    // token that is away only makes us unready until it is back.
    let kek = crate::crypto::kek::open(kek).map_err(|e| StartError::Kek(e.to_string()))?;
    let local = LocalClock {
        offset_secs: cfg.clock_offset_secs,
    };
    let store = Store::connect_with_clock(&cfg.common.mongo_uri, cfg.common.election_retry, local)
        .await
        .map_err(|e| StartError::Database(short(&e)))?;
    let state = schema::read_state(&store)
        .await
        .map_err(|e| StartError::Database(short(&e)))?;
    match SchemaFit::of(state) {
        fit @ SchemaFit::TooNew(_) => return Err(StartError::Schema(fit.describe())),
        fit @ SchemaFit::TooOld(_) => {
            tracing::warn!(schema = %fit.describe(), "not ready until migrated")
        }
        fit @ SchemaFit::Newer(_) => {
            tracing::info!(schema = %fit.describe(), "running against a newer schema")
        }
        SchemaFit::Current => {}
    }

    if let Some(shared) = &cfg.egress_allow_shared {
        tracing::warn!(
            entries = %shared,
            "CAP_EGRESS_ALLOW is deprecated: it opens these addresses to every purpose at once \
             (ACME, DNS-01, drift, delivery targets, notification channels), so every project \
             editor's webhook can reach them; list each purpose's own in CAP_EGRESS_ALLOW_ACME, \
             _DNS, _DRIFT, _TARGETS or _NOTIFY instead"
        );
    }
    let metrics = Metrics::new();
    let readiness = Readiness::new(cfg.readyz_grace);
    let shutdown = Shutdown::new();
    let queue = JobQueue::new(store.clone());
    let api_state = ApiState {
        store: store.clone(),
        secrets: Secrets::new(store.clone(), kek.clone()),
        token_key: TokenKey::new(Secrets::new(store.clone(), kek.clone())),
        token_cache: Arc::new(TokenCache::new(cfg.api_token_cache)),
        rate_limiter: Arc::new(RateLimiter::new(store.clone(), cfg.api_rate_limit)),
        queue: queue.clone(),
        audit: Audit::new(store.clone()).with_metrics(metrics.clone()),
        metrics: metrics.clone(),
        token_max_lifetime: cfg.api_token_max_lifetime,
        max_tokens_per_project: cfg.max_tokens_per_project,
        max_channels_per_project: cfg.max_channels_per_project,
        egress: cfg.egress.notify.clone(),
        outbox: Outbox::new(queue.clone(), cfg.notify_attempts),
    };
    actix::spawn(readiness::monitor(
        store.clone(),
        kek.clone(),
        readiness.clone(),
        metrics.clone(),
        shutdown.clone(),
    ));

    if roles.api {
        actix::spawn(
            api_state
                .rate_limiter
                .clone()
                .keep_flushed(shutdown.clone()),
        );
    }

    // Every process is in the fleet registry; a worker's record is also its
    // presence lease, renewed by its claim actor, the others' by a task here.
    let identity =
        Identity::of_this_binary(&cfg.instance_id, roles.names(), schema::known_version());
    let registered = (!roles.worker).then(|| {
        let presence = Presence::new(store.clone(), identity.clone(), cfg.worker_presence);
        actix::spawn(presence.clone().keep_renewed(shutdown.clone()));
        presence
    });

    // Only a worker runs jobs, and only it needs the OrderActor.
    let claim = roles.worker.then(|| {
        let orders = {
            let settings = OrderSettings {
                store: store.clone(),
                secrets: Secrets::new(store.clone(), kek.clone()),
                metrics: metrics.clone(),
                transport: cfg.transport.clone(),
                dns_egress: cfg.egress.dns.clone(),
                pause_after: cfg
                    .fault_pause_after_stage
                    .clone()
                    .map(|stage| (stage, Duration::from_secs(600))),
            };
            Supervisor::start(move |_| OrderActor::new(settings))
        };
        let handlers = registry::standard(WorkerDeps {
            queue: queue.clone(),
            kek: kek.clone(),
            metrics: metrics.clone(),
            job_retention: cfg.job_retention,
            issue_backoff: cfg.issue_backoff,
            distribute_checks: cfg.distribute_checks,
            notify_attempts: cfg.notify_attempts,
            orders: Arc::new(Orders(orders)),
            transport: cfg.transport.clone(),
            egress: cfg.egress.clone(),
        });
        let settings = ClaimSettings {
            worker_id: cfg.instance_id.clone(),
            concurrency: cfg.worker_concurrency,
            job_lease: cfg.job_lease,
            poll: cfg.claim_poll,
            attempt_timeout: cfg.job_attempt_timeout,
        };
        let presence = Presence::new(store.clone(), identity.clone(), cfg.worker_presence);
        let (queue, readiness, metrics) = (queue.clone(), readiness.clone(), metrics.clone());
        Supervisor::start(move |_| {
            ClaimActor::new(settings, queue, presence, handlers, readiness, metrics)
        })
    });
    let lease: Option<Addr<LeaseActor>> = roles.scheduler.then(|| {
        let leases = Leases::new(store.clone());
        let scheduler = Supervisor::start({
            let leases = leases.clone();
            let settings = SchedulerSettings {
                housekeeping_every: cfg.housekeeping_interval,
                renewal_scan_every: cfg.renewal_scan,
                renewal_batch: crate::work::renewal::DEFAULT_SCAN_BATCH,
                drift_scan_every: cfg.drift_scan,
                pause_after_renewal_enqueue: (cfg.fault_pause_after_stage.as_deref()
                    == Some("renewal_enqueued"))
                .then_some(Duration::from_secs(600)),
            };
            move |_| SchedulerActor::new(leases, settings.clone())
        });
        let rotation = Supervisor::start({
            let (leases, kek, metrics) = (leases.clone(), kek.clone(), metrics.clone());
            let every = cfg.kek_rotation_check;
            let outbox = Outbox::new(queue.clone(), cfg.notify_attempts);
            move |_| KekRotationActor::new(leases, kek, metrics, every, outbox.clone())
        });
        let mut subscribers = vec![scheduler.recipient(), rotation.recipient()];
        if cfg.siem.enabled() {
            let (leases, siem, metrics) = (leases.clone(), cfg.siem.clone(), metrics.clone());
            let forwarder = Supervisor::start(move |_| SiemActor::new(leases, siem, metrics));
            subscribers.push(forwarder.recipient());
        }
        let (readiness, metrics, shutdown) = (readiness.clone(), metrics.clone(), shutdown.clone());
        let settings = LeaseSettings {
            name: SCHEDULER_LEASE.to_string(),
            holder: cfg.instance_id.clone(),
            ttl: cfg.leader_lease,
        };
        Supervisor::start(move |_| {
            LeaseActor::new(leases, settings, subscribers, readiness, metrics, shutdown)
        })
    });

    let state = AppState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
        queue: queue.clone(),
        depth_cache: Arc::new(DepthCache::default()),
        kinds: JobKind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .collect(),
    };
    // HTTPS on the main listener only: HTTP-01 challenges are plain HTTP by
    // definition, and the metrics listener is for the scraper.
    let tls = cfg
        .http_tls
        .as_ref()
        .map(http::tls::server_config)
        .transpose()
        .map_err(StartError::Tls)?;
    let serve_api = roles.api;
    let metrics_apart = cfg.metrics_addr.is_some();
    let api_state_for_challenges = api_state.clone();
    let state_for_metrics = state.clone();
    let server = HttpServer::new(move || {
        let app = App::new()
            .app_data(web::Data::new(state.clone()))
            .app_data(web::Data::new(api_state.clone()))
            .configure(if metrics_apart {
                http::configure_probes
            } else {
                http::configure
            });
        if serve_api {
            app.configure(crate::http::api::configure)
        } else {
            app
        }
    })
    .workers(if roles.api { 2 } else { 1 })
    .disable_signals()
    .shutdown_timeout(cfg.shutdown_grace.as_secs());
    let server = match tls {
        Some(config) => server.bind_rustls_0_23(cfg.http_addr, config),
        None => server.bind(cfg.http_addr),
    }
    .map_err(|error| StartError::Bind {
        addr: cfg.http_addr,
        error,
    })?
    .run();
    let server_handle = server.handle();
    let server_task = actix::spawn(server);
    let challenge_server = match (roles.api, cfg.challenge_addr) {
        (true, Some(addr)) => {
            let api_state = api_state_for_challenges;
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(api_state.clone()))
                    .configure(crate::http::api::configure_challenges_only)
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(cfg.shutdown_grace.as_secs())
            .bind(addr)
            .map_err(|error| StartError::Bind { addr, error })?
            .run();
            let handle = server.handle();
            Some((handle, actix::spawn(server)))
        }
        _ => None,
    };
    // Metrics on a listener of their own: off the API's, which may face the
    // internet, and where the chart's scraper finds them.
    let metrics_server = match cfg.metrics_addr {
        Some(addr) => {
            let state = state_for_metrics;
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(web::Data::new(state.clone()))
                    .configure(http::configure_metrics)
            })
            .workers(1)
            .disable_signals()
            .shutdown_timeout(cfg.shutdown_grace.as_secs())
            .bind(addr)
            .map_err(|error| StartError::Bind { addr, error })?
            .run();
            Some((server.handle(), actix::spawn(server)))
        }
        None => None,
    };
    tracing::info!(
        instance = %cfg.instance_id,
        http = %cfg.http_addr,
        https = cfg.http_tls.is_some(),
        api = roles.api, worker = roles.worker, scheduler = roles.scheduler,
        "started"
    );

    let signal = shutdown::signal().await;
    tracing::info!(signal, "shutting down");
    readiness.set_shutting_down();
    let grace = cfg.shutdown_grace;
    // The scheduler steps down first: its lease release is the quickest
    // hand-over, and nothing else waits on it.
    if let Some(lease) = &lease {
        let _ = tokio::time::timeout(Duration::from_secs(3), lease.send(StepDown)).await;
    }
    if let Some(claim) = &claim {
        if tokio::time::timeout(grace, claim.send(Drain))
            .await
            .is_err()
        {
            tracing::warn!(
                "jobs not handed back within the shutdown grace; their leases will expire"
            );
        }
    }
    shutdown.trigger();
    if let Some(presence) = &registered {
        if let Err(e) = presence.withdraw().await {
            tracing::warn!(error = %short(&e), "leaving the fleet registry failed; the record expires");
        }
    }
    server_handle.stop(true).await;
    let _ = server_task.await;
    if let Some((handle, task)) = metrics_server {
        handle.stop(true).await;
        let _ = task.await;
    }
    if let Some((handle, task)) = challenge_server {
        handle.stop(true).await;
        let _ = task.await;
    }
    tracing::info!("stopped");
    Ok(())
}
