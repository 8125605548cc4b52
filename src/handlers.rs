//! Job handlers, registered by kind. A worker claims only the kinds it has a
//! handler for.
//!
//! A handler returns an error to fail its job (retried with back-off, or
//! dead when permanent or out of attempts); a panic is caught by the
//! [`crate::actors::claim`] actor and treated as a retryable failure. Writes
//! a handler makes for its job go through [`crate::jobs::JobLease::fenced_update`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::bson::doc;

use actix::Supervisor;

use crate::acme::ari::{RefreshAri, REFRESH_ARI};
use crate::acme::order::{OrderSettings, ISSUE_CERTIFICATE};
use crate::acme::revoke::{RevokeCertificate, REVOKE_CERTIFICATE};
use crate::actors::order::{IssueCertificate, OrderActor};
use crate::audit::{self, Audit};
use crate::drift::{ScanDrift, SCAN_DRIFT};
use crate::jobs::{ClaimedJob, JobError, JobQueue};
use crate::kek::KekProvider;
use crate::metrics::Metrics;
use crate::rotation::{KekRewrap, KEK_REWRAP};
use crate::secrets::Secrets;

pub const HOUSEKEEPING: &str = "housekeeping";
pub const PROBE: &str = "probe";
pub const PROBE_RESULTS_COLLECTION: &str = "probe_results";

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (after back-off), unless attempts are spent.
    #[error("{0}")]
    Retryable(String),
    /// Try again, but not before `after` (the other side said when: an ACME
    /// CA's `Retry-After` on `rateLimited`).
    #[error("{reason}")]
    RetryAfter { reason: String, after: Duration },
    /// Retrying cannot help: the job is dead at once, with this reason.
    #[error("{0}")]
    Permanent(String),
    /// Our claim was taken over: stop without writing anything.
    #[error("lease lost")]
    LeaseLost,
}

impl From<JobError> for HandlerError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::LeaseLost(_) => HandlerError::LeaseLost,
            JobError::Db(e) => {
                HandlerError::Retryable(format!("database error: {}", crate::store::short(&e)))
            }
        }
    }
}

pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>>;
}

#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn JobHandler>>,
}

impl Handlers {
    pub fn new() -> Handlers {
        Handlers::default()
    }

    pub fn register(mut self, kind: &str, handler: impl JobHandler) -> Handlers {
        self.by_kind.insert(kind.to_string(), Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.by_kind.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.by_kind.keys().cloned().collect();
        kinds.sort();
        kinds
    }

    /// The handlers every worker runs.
    pub fn standard(
        queue: JobQueue,
        kek: Arc<dyn KekProvider>,
        metrics: Arc<Metrics>,
        job_retention: Duration,
        issue_backoff: crate::backoff::Backoff,
        pause_after_stage: Option<String>,
    ) -> Handlers {
        let store = queue.store().clone();
        let settings = OrderSettings {
            store: store.clone(),
            secrets: Secrets::new(store.clone(), kek.clone()),
            metrics: metrics.clone(),
            backoff: issue_backoff,
            pause_after: pause_after_stage.map(|stage| (stage, Duration::from_secs(600))),
        };
        let orders = Supervisor::start(move |_| OrderActor::new(settings));
        let revoke = RevokeCertificate {
            queue: queue.clone(),
            secrets: Secrets::new(store.clone(), kek.clone()),
            metrics: metrics.clone(),
        };
        Handlers::new()
            .register(ISSUE_CERTIFICATE, IssueCertificate(orders))
            .register(REVOKE_CERTIFICATE, revoke)
            .register(
                HOUSEKEEPING,
                Housekeeping {
                    queue,
                    secrets: Secrets::new(store.clone(), kek.clone()),
                    job_retention,
                },
            )
            .register(
                REFRESH_ARI,
                RefreshAri {
                    secrets: Secrets::new(store.clone(), kek.clone()),
                    metrics: metrics.clone(),
                },
            )
            .register(
                SCAN_DRIFT,
                ScanDrift {
                    connect_timeout: crate::drift::DEFAULT_CONNECT_TIMEOUT,
                },
            )
            .register(KEK_REWRAP, KekRewrap { store, kek })
            .register(PROBE, Probe)
    }
}

/// Periodic work, enqueued by the scheduler leader: seals the audit chain
/// with a checkpoint, deletes finished jobs past their retention and
/// presence records of long-gone workers.
pub struct Housekeeping {
    pub queue: JobQueue,
    pub secrets: Secrets,
    pub job_retention: Duration,
}

impl JobHandler for Housekeeping {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let queue = self.queue.clone();
        let secrets = self.secrets.clone();
        let retention = self.job_retention;
        Box::pin(async move {
            let store = queue.store().clone();
            let sealed = seal_audit_chain(&job, &secrets).await?;
            let purged = queue
                .purge_finished(retention)
                .await
                .map_err(JobError::from)?;
            let forgotten = crate::presence::forget_departed(&store)
                .await
                .map_err(JobError::from)?;
            let challenges = purge_challenges(&store, retention)
                .await
                .map_err(JobError::from)?;
            tracing::info!(job = %job.lease.job_id, purged_jobs = purged, forgotten_workers = forgotten, purged_challenges = challenges, audit_checkpoint = sealed, "housekeeping done");
            Ok(())
        })
    }
}

/// Deletes HTTP-01 key authorizations older than `retention`: those of
/// orders whose worker died between the CA's decision and their removal.
async fn purge_challenges(
    store: &crate::store::Store,
    retention: Duration,
) -> Result<u64, mongodb::error::Error> {
    let cutoff = store.server_now().await?.timestamp_millis() - retention.as_millis() as i64;
    let filter = doc! { "created_at": { "$lt": mongodb::bson::DateTime::from_millis(cutoff) } };
    let challenges = store.collection(crate::acme::order::CHALLENGES);
    let result = store
        .ride_through("purge challenges", || {
            challenges.delete_many(filter.clone())
        })
        .await?;
    Ok(result.deleted_count)
}

/// Writes a checkpoint at the audit chain's head (idempotent: its id is the
/// head's seq). Returns the seq sealed.
async fn seal_audit_chain(job: &ClaimedJob, secrets: &Secrets) -> Result<i64, HandlerError> {
    let store = job.lease.store();
    let (seq, hash) = Audit::new(store.clone())
        .head()
        .await
        .map_err(JobError::from)?;
    if seq == 0 {
        return Ok(0);
    }
    let key = audit::checkpoint_key(secrets)
        .await
        .map_err(|e| HandlerError::Retryable(e.to_string()))?;
    let now = store.server_now().await.map_err(JobError::from)?;
    job.lease
        .fenced_update(
            audit::CHECKPOINTS_COLLECTION,
            doc! { "_id": seq },
            doc! { "$setOnInsert": audit::checkpoint_fields(&key, seq, &hash, now) },
            true,
        )
        .await?;
    Ok(seq)
}

/// A diagnostic job: sleeps, then records its completion (a fenced write to
/// `probe_results`). Operators use it to prove the pipeline end to end; the
/// crash tests use it as a job of known length. Payload fields, all optional:
/// `sleep_ms`, `fail_attempts` (fail while `attempt` ≤ it), `panic`,
/// `permanent` (fail permanently), `record` (write the completion record;
/// default true).
pub struct Probe;

impl JobHandler for Probe {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        Box::pin(async move {
            let p = &job.payload;
            let sleep_ms = p
                .get_i64("sleep_ms")
                .or_else(|_| p.get_i32("sleep_ms").map(i64::from))
                .unwrap_or(0);
            if sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(sleep_ms as u64)).await;
            }
            if p.get_bool("panic").unwrap_or(false) {
                panic!("probe job {} asked to panic", job.lease.job_id);
            }
            if p.get_bool("permanent").unwrap_or(false) {
                return Err(HandlerError::Permanent(
                    "probe asked to fail permanently".into(),
                ));
            }
            let fail_attempts = p.get_i32("fail_attempts").unwrap_or(0);
            if job.attempt as i32 <= fail_attempts {
                return Err(HandlerError::Retryable(format!(
                    "probe failure on attempt {}",
                    job.attempt
                )));
            }
            if !p.get_bool("record").unwrap_or(true) {
                return Ok(());
            }
            job.lease
                .fenced_update(
                    PROBE_RESULTS_COLLECTION,
                    doc! { "_id": job.lease.job_id },
                    doc! {
                        "$push": { "completions": { "token": job.lease.token, "holder": &job.lease.holder, "attempt": job.attempt as i32 } },
                        "$inc": { "count": 1i32 },
                        "$currentDate": { "completed_at": true },
                    },
                    true,
                )
                .await?;
            Ok(())
        })
    }
}
