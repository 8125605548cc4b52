//! The registry: the only place that names every job kind and the handler
//! that runs it. A worker claims only the kinds registered here.

use std::sync::Arc;
use std::time::Duration;

use crate::acme::Transport;
use crate::audit::Audit;
use crate::crypto::api_tokens::TokenKey;
use crate::crypto::binding::BindingKey;
use crate::crypto::kek::KekProvider;
use crate::crypto::secrets::Secrets;
use crate::domain::backoff::Backoff;
use crate::domain::jobs::JobKind;
use crate::observe::metrics::Metrics;
use crate::queue::handler::Handlers;
use crate::queue::jobs::JobQueue;

use super::distribute::Distribute;
use super::housekeeping::Housekeeping;
use super::issue::{IssueCertificate, OrderDriver};
use super::kek_rewrap::KekRewrap;
use super::notify::Notify;
use super::probe::Probe;
use super::refresh_ari::RefreshAri;
use super::revoke::RevokeCertificate;
use super::scan_drift::{ScanDrift, DEFAULT_CONNECT_TIMEOUT};
use crate::distribute::validate::Checks;
use crate::net::egress::EgressPolicies;
use crate::notify::outbox::Outbox;
use crate::services::key_release::KeyRelease;

/// What the handlers share.
pub struct WorkerDeps {
    pub queue: JobQueue,
    pub kek: Arc<dyn KekProvider>,
    pub metrics: Arc<Metrics>,
    /// How long finished jobs and leftover challenges are kept (`CAP_JOB_RETENTION_SECS`).
    pub job_retention: Duration,
    /// Delay after each consecutive failure of a certificate.
    pub issue_backoff: Backoff,
    /// Attempts of a notification before it is kept as dead (`CAP_NOTIFY_ATTEMPTS`).
    pub notify_attempts: u32,
    /// How a delivery's validate step checks its target.
    pub distribute_checks: Checks,
    /// Where `issue-certificate` jobs hand their ACME order (the OrderActor).
    pub orders: Arc<dyn OrderDriver>,
    /// How CAs are reached (revocations, ARI).
    pub transport: Transport,
    /// The egress policy of each purpose: drift probes, deliveries and
    /// notifications each pass their own.
    pub egress: EgressPolicies,
}

/// The handlers every worker runs, one per [`JobKind`].
pub fn standard(deps: WorkerDeps) -> Handlers {
    let store = deps.queue.store().clone();
    let secrets = Secrets::new(store.clone(), deps.kek.clone());
    let outbox = Outbox::new(deps.queue.clone(), deps.notify_attempts);
    JobKind::ALL
        .into_iter()
        .fold(Handlers::new(), |handlers, kind| match kind {
            JobKind::IssueCertificate => handlers.register(
                kind,
                IssueCertificate {
                    store: store.clone(),
                    metrics: deps.metrics.clone(),
                    backoff: deps.issue_backoff,
                    orders: deps.orders.clone(),
                    outbox: outbox.clone(),
                },
            ),
            JobKind::RevokeCertificate => handlers.register(
                kind,
                RevokeCertificate {
                    queue: deps.queue.clone(),
                    secrets: secrets.clone(),
                    metrics: deps.metrics.clone(),
                    transport: deps.transport.clone(),
                    outbox: outbox.clone(),
                },
            ),
            JobKind::RefreshAri => handlers.register(
                kind,
                RefreshAri {
                    secrets: secrets.clone(),
                    metrics: deps.metrics.clone(),
                    transport: deps.transport.clone(),
                },
            ),
            JobKind::ScanDrift => handlers.register(
                kind,
                ScanDrift {
                    connect_timeout: DEFAULT_CONNECT_TIMEOUT,
                    egress: deps.egress.drift.clone(),
                    outbox: outbox.clone(),
                },
            ),
            JobKind::KekRewrap => handlers.register(
                kind,
                KekRewrap {
                    store: store.clone(),
                    kek: deps.kek.clone(),
                },
            ),
            JobKind::Housekeeping => handlers.register(
                kind,
                Housekeeping {
                    queue: deps.queue.clone(),
                    secrets: secrets.clone(),
                    job_retention: deps.job_retention,
                    metrics: deps.metrics.clone(),
                    outbox: outbox.clone(),
                    witness: Default::default(),
                    sealing: Default::default(),
                },
            ),
            JobKind::Probe => handlers.register(kind, Probe),
            JobKind::Distribute => handlers.register(
                kind,
                Distribute {
                    secrets: secrets.clone(),
                    binding: BindingKey::new(TokenKey::new(secrets.clone())),
                    keys: KeyRelease::new(
                        secrets.clone(),
                        Audit::new(store.clone()).with_metrics(deps.metrics.clone()),
                    ),
                    metrics: deps.metrics.clone(),
                    egress: deps.egress.targets.clone(),
                    backoff: deps.issue_backoff,
                    checks: deps.distribute_checks,
                    outbox: outbox.clone(),
                },
            ),
            JobKind::Notify => handlers.register(
                kind,
                Notify {
                    secrets: secrets.clone(),
                    binding: BindingKey::new(TokenKey::new(secrets.clone())),
                    metrics: deps.metrics.clone(),
                    egress: deps.egress.notify.clone(),
                },
            ),
        })
}
