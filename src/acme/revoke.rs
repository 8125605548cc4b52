//! Revocation (RFC 8555 §7.6 `revokeCert`) behind `revoke-certificate` jobs.
//!
//! The API records the request and enqueues one job per certificate and
//! serial; the worker asks the CA with the issuer's account, records the
//! revocation on the certificate (fenced by its job), audits it, and when the
//! request or the certificate's policy (`replace_on_revoke`) asks for it,
//! enqueues the replacement's issue job.

use futures::future::BoxFuture;
use instant_acme::{RevocationReason, RevocationRequest};
use mongodb::bson::doc;
use rustls_pki_types::CertificateDer;

use super::order::{certificate_of, db, issuer_of, CERTIFICATES, ISSUE_CERTIFICATE};
use super::{account, RetryAfter};
use crate::audit::{Audit, Event};
use crate::certs;
use crate::handlers::{HandlerError, JobHandler};
use crate::jobs::{ClaimedJob, JobQueue, NewJob};
use crate::metrics::Metrics;
use crate::secrets::Secrets;

pub const REVOKE_CERTIFICATE: &str = "revoke-certificate";

/// RFC 5280 reason codes by the names the API takes (`removeFromCRL` and
/// `certificateHold` are CRL mechanics, not reasons a subscriber gives).
pub const REASONS: [(&str, RevocationReason); 7] = [
    ("unspecified", RevocationReason::Unspecified),
    ("keyCompromise", RevocationReason::KeyCompromise),
    ("affiliationChanged", RevocationReason::AffiliationChanged),
    ("superseded", RevocationReason::Superseded),
    (
        "cessationOfOperation",
        RevocationReason::CessationOfOperation,
    ),
    ("privilegeWithdrawn", RevocationReason::PrivilegeWithdrawn),
    ("caCompromise", RevocationReason::CaCompromise),
];

pub fn reason_named(name: &str) -> Option<RevocationReason> {
    REASONS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, r)| r.clone())
}

pub struct RevokeCertificate {
    pub queue: JobQueue,
    pub secrets: Secrets,
    pub metrics: std::sync::Arc<Metrics>,
}

impl JobHandler for RevokeCertificate {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (queue, secrets, metrics) = (
            self.queue.clone(),
            self.secrets.clone(),
            self.metrics.clone(),
        );
        Box::pin(async move { revoke(queue, secrets, metrics, job).await })
    }
}

async fn revoke(
    queue: JobQueue,
    secrets: Secrets,
    metrics: std::sync::Arc<Metrics>,
    job: ClaimedJob,
) -> Result<(), HandlerError> {
    let store = queue.store().clone();
    let p = &job.payload;
    let (certificate_id, serial, reason_name) = (
        p.get_str("certificate_id").unwrap_or_default().to_string(),
        p.get_str("serial").unwrap_or_default().to_string(),
        p.get_str("reason").unwrap_or("unspecified").to_string(),
    );
    let reason = reason_named(&reason_name).ok_or_else(|| {
        HandlerError::Permanent(format!("unknown revocation reason {reason_name:?}"))
    })?;
    let cert = certificate_of(&store, &certificate_id).await?;
    let current = cert
        .get_document("current")
        .map_err(|_| HandlerError::Permanent("the certificate was never issued".into()))?;
    if current.get_str("serial") != Ok(serial.as_str()) {
        return Err(HandlerError::Permanent(format!(
            "serial {serial} is no longer the certificate's current one"
        )));
    }
    let leaf = certs::inspect_chain(current.get_str("chain_pem").unwrap_or_default())
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;

    // Asking twice is harmless: the CA answers `alreadyRevoked`.
    if current.get_datetime("revoked_at").is_err() {
        let issuer = issuer_of(&store, cert.get_str("issuer_id").unwrap_or_default()).await?;
        let account = account(&issuer, &secrets, metrics, RetryAfter::default()).await?;
        let der = CertificateDer::from(leaf.leaf_der.clone());
        let request = RevocationRequest {
            certificate: &der,
            reason: Some(reason),
        };
        match account.revoke(&request).await {
            Ok(()) => {}
            Err(instant_acme::Error::Api(p))
                if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:alreadyRevoked") => {}
            Err(instant_acme::Error::Api(p))
                if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce") =>
            {
                return Err(HandlerError::Retryable("ACME: badNonce".into()))
            }
            Err(e @ instant_acme::Error::Api(_)) => {
                return Err(HandlerError::Permanent(format!(
                    "the CA refused the revocation: {e}"
                )))
            }
            Err(e) => return Err(HandlerError::Retryable(format!("ACME: {e}"))),
        }
        job.lease
            .fenced_update(
                CERTIFICATES,
                doc! { "_id": &certificate_id, "current.serial": &serial },
                doc! {
                    "$set": { "status": "revoked", "current.revocation_reason": &reason_name },
                    "$unset": { "renewal_next_at": "" },
                    "$currentDate": { "current.revoked_at": true, "updated_at": true },
                },
                false,
            )
            .await?;
        let project_id = cert.get_str("project_id").unwrap_or_default();
        Audit::new(store.clone())
            .record(
                Event::new(
                    &job.lease.holder,
                    "certificate.revoked",
                    format!("projects/{project_id}/certificates/{certificate_id}"),
                )
                .with(doc! { "project_id": project_id, "serial": &serial, "reason": &reason_name }),
            )
            .await;
        tracing::info!(certificate = %certificate_id, serial = %serial, reason = %reason_name, "certificate revoked");
    }
    if p.get_bool("replace").unwrap_or(false) {
        let replacement = NewJob::new(
            ISSUE_CERTIFICATE,
            format!("replace:{certificate_id}:{serial}"),
            doc! { "certificate_id": &certificate_id, "replaces_revoked": &serial },
        );
        let enqueued = queue.enqueue(&replacement).await.map_err(db)?;
        job.lease
            .fenced_update(
                CERTIFICATES,
                doc! { "_id": &certificate_id },
                doc! { "$set": { "replacement_job_id": enqueued.id } },
                false,
            )
            .await?;
    }
    Ok(())
}
