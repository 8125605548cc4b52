//! `refresh-ari`: asks the CA for the current certificate's renewal window
//! again (RFC 9773 §4.3) and records it. A window the CA moved (say, ahead
//! of a mass revocation) moves the renewal with it, unless the renewal is
//! queued already.

use std::sync::Arc;

use futures::future::BoxFuture;

use super::{find_certificate, issuer_of, outcome};
use crate::acme::{self, ari, RetryAfter};
use crate::crypto::secrets::Secrets;
use crate::domain::certs;
use crate::domain::jobs::CertificatePayload;
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::ClaimedJob;
use crate::store::certificates;

pub struct RefreshAri {
    pub secrets: Secrets,
    pub metrics: Arc<Metrics>,
    pub transport: acme::Transport,
}

impl JobHandler for RefreshAri {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (secrets, metrics, transport) = (
            self.secrets.clone(),
            self.metrics.clone(),
            self.transport.clone(),
        );
        Box::pin(async move { refresh(secrets, metrics, transport, job).await })
    }
}

async fn refresh(
    secrets: Secrets,
    metrics: Arc<Metrics>,
    transport: acme::Transport,
    job: ClaimedJob,
) -> Result<(), HandlerError> {
    let store = job.lease.store().clone();
    let payload: CertificatePayload = job.payload_as()?;
    let Some(cert) = find_certificate(&store, &payload.certificate_id).await? else {
        return Ok(()); // deleted since: no window to refresh
    };
    let Some(current) = &cert.current else {
        return Ok(());
    };
    if !cert.has_ari_window || current.revoked {
        return Ok(()); // no window to refresh, or nothing left to renew
    }
    let leaf = certs::inspect_chain(&current.chain_pem)
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
    let ari_id = ari::certificate_id(&leaf.leaf_der).map_err(HandlerError::Permanent)?;
    let issuer = issuer_of(&store, &cert).await?;
    let account = acme::account(
        &issuer,
        &secrets,
        metrics,
        RetryAfter::default(),
        &transport,
    )
    .await
    .map_err(outcome::of_order)?;
    let window = match account.renewal_info(&ari_id).await {
        Ok((info, retry_after)) => {
            ari::window_of(&info, retry_after).map_err(HandlerError::Permanent)?
        }
        Err(instant_acme::Error::Unsupported(_)) => {
            // The CA no longer offers ARI: the window last given stands.
            job.lease
                .fenced(certificates::stop_ari_refresh(&cert.id, &current.serial))
                .await?;
            return Ok(());
        }
        Err(e) => return Err(HandlerError::Retryable(format!("ARI: {e}"))),
    };
    let now = store.server_now().await?;
    for write in certificates::ari_refreshed(&cert.id, &current.serial, &window, now) {
        job.lease.fenced(write).await?;
    }
    tracing::info!(certificate = %cert.id, serial = %current.serial, window_start = window.start_ms, window_end = window.end_ms, refresh_in_secs = window.refresh_after.as_secs(), "ARI window refreshed");
    Ok(())
}
