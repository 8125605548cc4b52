//! `issue-certificate`: the certificate's side of an order — which
//! certificate and issuer, its status while it is first issued, the failure
//! back-off stored with it, the renewal metrics. The order itself is the
//! OrderActor's state machine ([`crate::actors::order`]), reached through
//! [`OrderDriver`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{certificate_of, issuer_of};
use crate::domain::backoff::Backoff;
use crate::domain::certificate::{Certificate, CertificateStatus};
use crate::domain::grants::uncovered;
use crate::domain::issuer::Issuer;
use crate::domain::jobs::IssuePayload;
use crate::domain::notifications::Event;
use crate::notify::outbox::Outbox;
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::ClaimedJob;
use crate::store::certificates::{self, Failure};
use crate::store::{projects, Store};

/// Drives the ACME order behind one claim of an `issue-certificate` job
/// until the certificate is stored (from marking it `issuing` to the
/// certificate in service).
pub trait OrderDriver: Send + Sync + 'static {
    /// The inner result is the order's: a failure there is the
    /// certificate's, and backs off with it. The outer error means the order
    /// could not be driven at all (the actor away, the order's task
    /// panicked): the job retries, and the certificate records nothing.
    fn drive(
        &self,
        job: ClaimedJob,
        certificate: Certificate,
        issuer: Issuer,
        payload: IssuePayload,
    ) -> BoxFuture<'static, Result<Result<(), HandlerError>, HandlerError>>;
}

pub struct IssueCertificate {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Delay after each consecutive failure of a certificate
    /// (`CAP_ISSUE_BACKOFF_BASE_SECS`, `CAP_ISSUE_BACKOFF_MAX_SECS`).
    pub backoff: Backoff,
    pub orders: Arc<dyn OrderDriver>,
    /// Told of an issue, and of failed or stalled renewals.
    pub outbox: Outbox,
}

impl JobHandler for IssueCertificate {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (store, metrics, backoff, orders, outbox) = (
            self.store.clone(),
            self.metrics.clone(),
            self.backoff,
            self.orders.clone(),
            self.outbox.clone(),
        );
        Box::pin(async move {
            let payload: IssuePayload = job.payload_as()?;
            let cert = certificate_of(&store, &payload.certificate_id).await?;
            let renewal = payload.is_renewal();
            let ready = async {
                granted(&store, &cert).await?;
                issuer_of(&store, &cert).await
            };
            let result = match ready.await {
                Ok(issuer) => {
                    orders
                        .drive(job.clone(), cert.clone(), issuer, payload)
                        .await?
                }
                Err(e) => Err(e),
            };
            let outcome = match &result {
                Ok(()) => "succeeded",
                Err(HandlerError::LeaseLost) => return result,
                Err(_) => "failed",
            };
            if renewal {
                metrics.renewals_total.with_label_values(&[outcome]).inc();
            }
            match result {
                Ok(()) => {
                    issued(&store, &outbox, &cert.id).await;
                    Ok(())
                }
                Err(e) => record_failure(&store, backoff, &outbox, &job, &cert, e).await,
            }
        })
    }
}

/// Tells the certificate's channels of the serial just stored.
async fn issued(store: &Store, outbox: &Outbox, id: &str) {
    let Ok(Some(cert)) = certificates::find(store, id).await else {
        return;
    };
    if let Some(current) = &cert.current {
        let event = Event::CertificateIssued {
            certificate_id: cert.id.clone(),
            serial: current.serial.clone(),
        };
        outbox.raise(&event, Some(&cert.project_id)).await;
    }
}

/// Whether every name of the certificate is still granted to its project
/// (grants can be taken back after a certificate was declared).
async fn granted(store: &Store, cert: &Certificate) -> Result<(), HandlerError> {
    let grants = projects::domains(store, &cert.project_id)
        .await?
        .unwrap_or_default();
    match uncovered(&grants, &cert.dns_names).as_slice() {
        [] => Ok(()),
        outside => Err(HandlerError::Permanent(format!(
            "{} not granted to project {}",
            outside.join(", "),
            cert.project_id
        ))),
    }
}

/// A failed attempt, persisted with the certificate so that it survives
/// restarts and re-claims: one more consecutive failure, and no new attempt
/// before `retry_at` (exponential, capped). The job retries then; once its
/// attempts are spent, a certificate that has a current certificate is
/// handed back to the renewal scan at `retry_at`, under a new job key (the
/// failure count is part of it).
async fn record_failure(
    store: &Store,
    backoff: Backoff,
    outbox: &Outbox,
    job: &ClaimedJob,
    cert: &Certificate,
    error: HandlerError,
) -> Result<(), HandlerError> {
    let (reason, hint, permanent) = match &error {
        HandlerError::Retryable(r) => (r.clone(), Duration::ZERO, false),
        HandlerError::RetryAfter { reason, after } => (reason.clone(), *after, false),
        HandlerError::Permanent(r) => (r.clone(), Duration::ZERO, true),
        HandlerError::LeaseLost => return Err(HandlerError::LeaseLost),
    };
    let last_attempt = permanent || job.attempt >= job.max_attempts;
    let failures = cert.consecutive_failures + 1;
    let delay = backoff.delay(failures as u32).max(hint);
    let retry_at = store.server_after(delay).await?;
    let has_current = cert.current.is_some();
    let status = cert
        .status
        .unwrap_or(CertificateStatus::Pending)
        .after_failure(has_current, last_attempt);
    let failure = Failure {
        reason: &reason,
        status,
        consecutive_failures: failures,
        retry_at,
        rescan: last_attempt && has_current && !permanent,
    };
    let _ = job
        .lease
        .fenced(certificates::record_failure(&cert.id, &failure))
        .await;
    tracing::warn!(certificate = %cert.id, failures, retry_in_secs = delay.as_secs(), error = %reason, "issuance failed");
    if let Some(current) = &cert.current {
        // A certificate in service that did not renew.
        let (certificate_id, serial) = (cert.id.clone(), current.serial.clone());
        let event = if last_attempt {
            Event::RenewalStalled {
                certificate_id,
                serial,
            }
        } else {
            Event::RenewalFailed {
                certificate_id,
                serial,
                consecutive: failures,
            }
        };
        outbox.raise(&event, Some(&cert.project_id)).await;
    }
    if permanent {
        Err(HandlerError::Permanent(reason))
    } else {
        Err(HandlerError::RetryAfter {
            reason,
            after: delay,
        })
    }
}
