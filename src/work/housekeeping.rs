//! `housekeeping`: periodic upkeep the scheduler leader enqueues.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::bson::{doc, DateTime};

use crate::audit::checkpoint::{self, KeyError, Next, Witness};
use crate::audit::{Audit, Event, CHECKPOINTS_COLLECTION};
use crate::crypto::secrets::Secrets;
use crate::domain::notifications::{self, expiry_notice_due, EXPIRY_NOTICE_DAYS};
use crate::notify::outbox::Outbox;
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::{ClaimedJob, JobError, JobQueue};
use crate::store::{certificates, challenges};

/// Periodic work, enqueued by the scheduler leader: seals the audit chain
/// with a checkpoint once it verifies (and raises `audit.chain_broken`
/// when it does not), raises the expiry notices due, deletes finished jobs
/// past their retention and presence records of long-gone workers.
pub struct Housekeeping {
    pub outbox: Outbox,
    pub queue: JobQueue,
    pub secrets: Secrets,
    pub job_retention: Duration,
    pub metrics: Arc<Metrics>,
    /// The last checkpoint this process sealed or found.
    pub witness: Arc<Witness>,
    /// One seal at a time in this process (across processes, the unique
    /// `follows` of a checkpoint refuses a second seal onto the same one).
    pub sealing: Arc<tokio::sync::Mutex<()>>,
}

impl JobHandler for Housekeeping {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let queue = self.queue.clone();
        let secrets = self.secrets.clone();
        let retention = self.job_retention;
        let metrics = self.metrics.clone();
        let witness = self.witness.clone();
        let sealing = self.sealing.clone();
        let outbox = self.outbox.clone();
        Box::pin(async move {
            let store = queue.store().clone();
            let sealed = {
                let _one_at_a_time = sealing.lock().await;
                seal_audit_chain(&job, &secrets, &witness, &metrics, &outbox).await?
            };
            let notices = expiry_notices(&job, &outbox).await?;
            let purged = queue
                .purge_finished(retention)
                .await
                .map_err(JobError::from)?;
            let forgotten = crate::queue::presence::forget_departed(&store)
                .await
                .map_err(JobError::from)?;
            let now = store.server_now().await.map_err(JobError::from)?;
            let cutoff =
                DateTime::from_millis(now.timestamp_millis() - retention.as_millis() as i64);
            let challenges = challenges::purge_before(&store, cutoff)
                .await
                .map_err(JobError::from)?;
            tracing::info!(job = %job.lease.job_id, purged_jobs = purged, forgotten_workers = forgotten, purged_challenges = challenges, audit_checkpoint = sealed, expiry_notices = notices, "housekeeping done");
            Ok(())
        })
    }
}

/// Raises the expiry notice due for each certificate within 30 days of its
/// end (the nearest threshold reached, each once per serial) or past it,
/// and records it under the job's fence. Answers how many were raised.
async fn expiry_notices(job: &ClaimedJob, outbox: &Outbox) -> Result<usize, HandlerError> {
    let store = job.lease.store();
    let now = store.server_now().await.map_err(JobError::from)?;
    // Expired (0) is owed a notice too.
    let thresholds: Vec<u32> = EXPIRY_NOTICE_DAYS.into_iter().chain([0]).collect();
    let expiring = certificates::owed_expiry_notice(store, now, &thresholds, EXPIRY_BATCH)
        .await
        .map_err(JobError::from)?;
    let mut raised = 0;
    for cert in &expiring {
        let (event, days) = match expiry_notice_due(now.timestamp_millis(), cert.not_after_ms) {
            Some(days) => (
                notifications::Event::Expiring {
                    certificate_id: cert.id.clone(),
                    serial: cert.serial.clone(),
                    days,
                },
                days,
            ),
            None => (
                notifications::Event::Expired {
                    certificate_id: cert.id.clone(),
                    serial: cert.serial.clone(),
                },
                0,
            ),
        };
        if cert.noticed_days.is_some_and(|n| n <= days) {
            continue;
        }
        // Marked only once raised: one that could not be is tried again at
        // the next run.
        if outbox
            .try_raise(&event, Some(&cert.project_id))
            .await
            .is_err()
        {
            continue;
        }
        job.lease
            .fenced(certificates::expiry_noticed(&cert.id, &cert.serial, days))
            .await?;
        raised += 1;
    }
    Ok(raised)
}

/// Expiry notices one housekeeping run raises at most, the soonest
/// expiring first; the rest are raised at the next runs.
const EXPIRY_BATCH: i64 = 1000;

/// Writes a checkpoint at the audit chain's head once the records since
/// the last checkpoint verify (idempotent: its id is the head's seq), and
/// copies it into the log for the SIEM sinks. Returns the seq sealed, or
/// the head when nothing was new; 0 when sealing was refused.
async fn seal_audit_chain(
    job: &ClaimedJob,
    secrets: &Secrets,
    witness: &Witness,
    metrics: &Metrics,
    outbox: &Outbox,
) -> Result<i64, HandlerError> {
    let store = job.lease.store();
    let now = store.server_now().await.map_err(JobError::from)?;
    let next = match checkpoint::key(secrets).await {
        Ok(key) => checkpoint::next(store, &key, Some(witness), now)
            .await
            .map_err(JobError::from)?,
        Err(e @ KeyError::Gone) => Next::Refused(e.to_string()),
        Err(e) => return Err(HandlerError::Retryable(e.to_string())),
    };
    let checkpoint = match next {
        Next::UpToDate(seq) => {
            metrics.audit_seal_refused.set(0);
            return Ok(seq);
        }
        Next::Seal(checkpoint) => checkpoint,
        Next::Refused(problem) => {
            tracing::error!(job = %job.lease.job_id, %problem, "the audit chain does not verify since its last checkpoint: not sealing it");
            Audit::new(store.clone())
                .record(
                    Event::new(&job.lease.holder, checkpoint::SEAL_REFUSED_ACTION, "audit")
                        .with(doc! { "problem": &problem }),
                )
                .await;
            // Raised once the refusal is in the log, so whoever sees the
            // gauge (an alert, `health`) finds the record that says why.
            metrics.audit_seal_refused.set(1);
            // Keyed by the last good checkpoint: told once per break, not
            // at every run while it stays broken.
            let since = checkpoint::latest(store)
                .await
                .map_err(JobError::from)?
                .map_or(0, |c| c.seq);
            outbox
                .raise(&notifications::Event::AuditChainBroken { seq: since }, None)
                .await;
            return Ok(0);
        }
    };
    let inserted = job
        .lease
        .fenced_update(
            CHECKPOINTS_COLLECTION,
            doc! { "_id": checkpoint.seq },
            doc! { "$setOnInsert": checkpoint.fields() },
            true,
        )
        .await;
    match inserted {
        Ok(()) => {}
        // A run in another process sealed onto the same checkpoint first
        // (`follows` is unique): the chain goes on from its checkpoint.
        Err(JobError::Db(e)) if checkpoint::is_sealed_by_another(&e) => {
            let sealed = checkpoint::latest(store).await.map_err(JobError::from)?;
            if let Some(sealed) = &sealed {
                witness.saw(sealed);
            }
            metrics.audit_seal_refused.set(0);
            return Ok(sealed.map_or(0, |c| c.seq));
        }
        Err(e) => return Err(e.into()),
    }
    // What is stored at that seq (another run may have sealed it first).
    let stored = checkpoint::at(store, checkpoint.seq)
        .await
        .map_err(JobError::from)?
        .unwrap_or_else(|| checkpoint.clone());
    witness.saw(&stored);
    if stored != checkpoint {
        metrics.audit_seal_refused.set(0);
        return Ok(stored.seq);
    }
    metrics.audit_seal_refused.set(0);
    Audit::new(store.clone())
        .record(checkpoint.event(&job.lease.holder))
        .await;
    Ok(checkpoint.seq)
}
