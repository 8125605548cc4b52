//! `revoke-certificate`: the API records the request and enqueues one job
//! per certificate and serial; the worker asks the CA with the issuer's
//! account (RFC 8555 §7.6), records the revocation on the certificate,
//! audits it, and when the request or the certificate's policy
//! (`replace_on_revoke`) asks for it, enqueues the replacement's issue job.

use std::sync::Arc;

use futures::future::BoxFuture;
use mongodb::bson::doc;

use super::{certificate_of, issuer_of, outcome};
use crate::acme::{self, revoke::reason_named, RetryAfter};
use crate::audit::{Audit, Event};
use crate::crypto::secrets::Secrets;
use crate::domain::certs;
use crate::domain::jobs::{self, RevokePayload};
use crate::domain::notifications;
use crate::notify::outbox::Outbox;
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::{ClaimedJob, JobQueue, NewJob};
use crate::store::certificates;

pub struct RevokeCertificate {
    pub queue: JobQueue,
    pub secrets: Secrets,
    pub metrics: Arc<Metrics>,
    pub transport: acme::Transport,
    pub outbox: Outbox,
}

impl JobHandler for RevokeCertificate {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (queue, secrets, metrics, transport, outbox) = (
            self.queue.clone(),
            self.secrets.clone(),
            self.metrics.clone(),
            self.transport.clone(),
            self.outbox.clone(),
        );
        Box::pin(async move { revoke(queue, secrets, metrics, transport, outbox, job).await })
    }
}

async fn revoke(
    queue: JobQueue,
    secrets: Secrets,
    metrics: Arc<Metrics>,
    transport: acme::Transport,
    outbox: Outbox,
    job: ClaimedJob,
) -> Result<(), HandlerError> {
    let store = queue.store().clone();
    let request: RevokePayload = job.payload_as()?;
    let (id, serial) = (&request.certificate_id, &request.serial);
    let reason = reason_named(&request.reason).ok_or_else(|| {
        HandlerError::Permanent(format!("unknown revocation reason {:?}", request.reason))
    })?;
    let cert = certificate_of(&store, id).await?;
    let current = cert
        .current
        .as_ref()
        .ok_or_else(|| HandlerError::Permanent("the certificate was never issued".into()))?;
    if &current.serial != serial {
        return Err(HandlerError::Permanent(format!(
            "serial {serial} is no longer the certificate's current one"
        )));
    }
    let leaf = certs::inspect_chain(&current.chain_pem)
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;

    if !current.revoked {
        let issuer = issuer_of(&store, &cert).await?;
        let retry = RetryAfter::default();
        let account = acme::account(&issuer, &secrets, metrics, retry.clone(), &transport)
            .await
            .map_err(outcome::of_order)?;
        acme::revoke::revoke(&account, &leaf.leaf_der, reason, &retry)
            .await
            .map_err(outcome::of_revocation)?;
        job.lease
            .fenced(certificates::record_revoked(id, serial, &request.reason))
            .await?;
        Audit::new(store.clone())
            .record(
                Event::new(&job.lease.holder, "certificate.revoked", cert.audit_target()).with(
                    doc! { "project_id": &cert.project_id, "serial": serial, "reason": &request.reason },
                ),
            )
            .await;
        tracing::info!(certificate = %id, serial = %serial, reason = %request.reason, "certificate revoked");
        let event = notifications::Event::Revoked {
            certificate_id: id.clone(),
            serial: serial.clone(),
        };
        outbox.raise(&event, Some(&cert.project_id)).await;
    }
    if request.replace {
        let replacement = NewJob::from_spec(jobs::replacement(id, serial));
        let enqueued = queue.enqueue(&replacement).await?;
        job.lease
            .fenced(certificates::record_replacement_job(id, enqueued.id))
            .await?;
    }
    Ok(())
}
