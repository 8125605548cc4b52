//! `housekeeping`: periodic upkeep the scheduler leader enqueues.

use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::bson::{doc, DateTime};

use crate::audit::{self, Audit};
use crate::crypto::secrets::Secrets;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::{ClaimedJob, JobError, JobQueue};
use crate::store::challenges;

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
            let forgotten = crate::queue::presence::forget_departed(&store)
                .await
                .map_err(JobError::from)?;
            let now = store.server_now().await.map_err(JobError::from)?;
            let cutoff =
                DateTime::from_millis(now.timestamp_millis() - retention.as_millis() as i64);
            let challenges = challenges::purge_before(&store, cutoff)
                .await
                .map_err(JobError::from)?;
            tracing::info!(job = %job.lease.job_id, purged_jobs = purged, forgotten_workers = forgotten, purged_challenges = challenges, audit_checkpoint = sealed, "housekeeping done");
            Ok(())
        })
    }
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
