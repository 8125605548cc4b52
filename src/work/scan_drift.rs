//! Drift scans: is each endpoint a certificate declares serving the
//! certificate we issued last?
//!
//! A certificate may list `endpoints` (`host`, `port`, optional `sni`). The
//! scheduler leader finds certificates whose `drift_next_at` has passed and
//! enqueues a `scan-drift` job for each ([`crate::work::periodic`]).
//!
//! A worker then connects to every endpoint with TLS, takes the leaf the
//! server presents (whoever signed it: we compare, we do not trust) and
//! classifies it:
//!
//! - `in_sync`: the current certificate;
//! - `stale`: one we issued before (`issued_fingerprints`);
//! - `foreign`: anybody else's;
//! - `unreachable`: no TLS handshake within the timeout, or the endpoint's
//!   address is one the egress policy refuses ([`crate::net::egress`]; the
//!   entry's `error` says so).
//!
//! The result replaces the certificate's `drift` (one entry per endpoint,
//! with `checked_at` and `since`, the time the state last changed) and its
//! summary `drift_state`, the worst of its endpoints. Each change is audited
//! (`certificate.drift_changed`) before it is stored, so a worker that dies in
//! between repeats the record rather than losing it.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use mongodb::bson::{doc, Bson};

use crate::audit::{Audit, Event};
use crate::domain::drift::{classify, DriftState};
use crate::domain::jobs::CertificatePayload;
use crate::domain::notifications;
use crate::net::egress::EgressPolicy;
pub use crate::net::tls_probe::{probe, Served, DEFAULT_CONNECT_TIMEOUT};
use crate::notify::outbox::Outbox;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::ClaimedJob;
use crate::store::certificates;

/// Endpoints of one certificate probed at once.
const PROBE_CONCURRENCY: usize = 8;

/// The worker side: probes every endpoint and records the drift.
pub struct ScanDrift {
    pub connect_timeout: Duration,
    pub egress: EgressPolicy,
    /// Told of a change to `foreign` or `stale`.
    pub outbox: Outbox,
}

impl JobHandler for ScanDrift {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (timeout, egress, outbox) = (
            self.connect_timeout,
            self.egress.clone(),
            self.outbox.clone(),
        );
        Box::pin(async move { scan(job, timeout, egress, outbox).await })
    }
}

async fn scan(
    job: ClaimedJob,
    timeout: Duration,
    egress: EgressPolicy,
    outbox: Outbox,
) -> Result<(), HandlerError> {
    let store = job.lease.store().clone();
    let payload: CertificatePayload = job.payload_as()?;
    let Some(stored) = certificates::find_document(&store, &payload.certificate_id).await? else {
        return Ok(()); // deleted since: nothing to watch
    };
    let cert = certificates::parse(&stored);
    let endpoints = certificates::endpoints(&stored);
    let previous = certificates::last_drift(&stored);
    let current = cert.current.as_ref().map(|c| c.fingerprint_sha256.as_str());

    let served: Vec<Served> = futures::stream::iter(endpoints.clone())
        .map(|e| {
            let egress = &egress;
            async move { probe(&e, timeout, egress).await }
        })
        .buffered(PROBE_CONCURRENCY)
        .collect()
        .await;
    let now = store.server_now().await?;
    let audit = Audit::new(store.clone());
    let mut entries = Vec::with_capacity(endpoints.len());
    for (endpoint, served) in endpoints.iter().zip(&served) {
        let (state, fingerprint, serial, not_after, error) = match served {
            Served::Leaf {
                fingerprint_sha256,
                serial,
                not_after,
            } => (
                classify(fingerprint_sha256, current, &cert.issued_fingerprints),
                Some(fingerprint_sha256.as_str()),
                serial.as_deref(),
                *not_after,
                None,
            ),
            Served::Unreachable(why) => (
                DriftState::Unreachable,
                None,
                None,
                None,
                Some(why.as_str()),
            ),
        };
        let before = previous.iter().find(|(e, _, _)| e == endpoint);
        let before_state = before.and_then(|(_, s, _)| *s);
        let since = match before {
            Some((_, s, since)) if *s == Some(state) => since.unwrap_or(now),
            _ => now,
        };
        if before_state != Some(state) {
            let event = Event::new(
                &job.lease.holder,
                "certificate.drift_changed",
                cert.audit_target(),
            )
            .with(doc! {
                "project_id": &cert.project_id,
                "endpoint": certificates::endpoint_document(endpoint),
                "from": before_state.map(|s| Bson::from(s.as_str())).unwrap_or(Bson::Null),
                "to": state.as_str(),
                "served_fingerprint_sha256": fingerprint.map(Bson::from).unwrap_or(Bson::Null),
            });
            audit.append(&event).await.map_err(|e| {
                HandlerError::Retryable(format!("audit: {}", crate::store::short(&e)))
            })?;
            tracing::info!(certificate = %cert.id, host = %endpoint.host, port = endpoint.port, from = ?before_state.map(DriftState::as_str), to = state.as_str(), "drift changed");
            if matches!(state, DriftState::Foreign | DriftState::Stale) {
                let event = notifications::Event::DriftChanged {
                    certificate_id: cert.id.clone(),
                    endpoint: format!("{}:{}", endpoint.host, endpoint.port),
                    to: state.as_str().into(),
                    at_ms: now.timestamp_millis(),
                };
                outbox.raise(&event, Some(&cert.project_id)).await;
            }
        }
        entries.push(certificates::DriftEntry {
            endpoint,
            state,
            served_fingerprint_sha256: fingerprint,
            served_serial: serial,
            served_not_after: not_after,
            error,
            checked_at: now,
            since,
        });
    }
    job.lease
        .fenced(certificates::record_drift(&stored, &entries, now))
        .await?;
    Ok(())
}
