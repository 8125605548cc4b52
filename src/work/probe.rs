//! `probe`: a diagnostic job of known length.

use std::time::Duration;

use futures::future::BoxFuture;
use mongodb::bson::doc;

use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::ClaimedJob;

/// Where probes record their completions.
pub const PROBE_RESULTS_COLLECTION: &str = "probe_results";

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
