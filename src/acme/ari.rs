//! ACME Renewal Information (RFC 9773): the CA's suggested renewal window,
//! and the `replaces` field naming the certificate a new order renews.
//!
//! The same conversion serves recorded responses in the tests and the live
//! answer of [`instant_acme::Account::renewal_info`].
//!
//! The window is fetched at issuance and then refreshed (RFC 9773 §4.3): a
//! certificate with a window carries `ari_next_fetch_at`, the time its CA's
//! `Retry-After` allows; the scheduler leader enqueues a `refresh-ari` job
//! when it passes ([`crate::periodic`]). A window the CA moved (say, ahead of
//! a mass revocation) moves the renewal with it, unless the renewal is
//! queued already.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use instant_acme::{CertificateIdentifier, Identifier, NewOrder, RenewalInfo};
use mongodb::bson::{doc, DateTime, Document};
use rustls_pki_types::CertificateDer;

use super::order::{find_certificate, issuer_of, CERTIFICATES};
use super::{account, RetryAfter};
use crate::certs;
use crate::handlers::{HandlerError, JobHandler};
use crate::jobs::{ClaimedJob, JobError};
use crate::metrics::Metrics;
use crate::periodic::Periodic;
use crate::renewal::ari_due_ms;
use crate::secrets::Secrets;

pub const REFRESH_ARI: &str = "refresh-ari";

/// ARI refreshes as periodic work of the scheduler leader.
pub const PERIODIC: Periodic = Periodic {
    kind: REFRESH_ARI,
    next_field: "ari_next_fetch_at",
    key_prefix: "ari",
};

/// How far the leader moves `ari_next_fetch_at` when it enqueues a refresh;
/// the refresh then sets it from the CA's `Retry-After`. So a refresh that
/// keeps failing is tried four times a day.
pub const PROVISIONAL_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// How soon we ask again when the CA's `Retry-After` is shorter, and how
/// long we wait at most when it is longer (RFC 9773 §4.3.2 asks clients to
/// honour Retry-After, within limits of their own).
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// A CA's suggested renewal window, and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AriWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub explanation_url: Option<String>,
    pub refresh_after: Duration,
}

impl AriWindow {
    /// The window of a `renewalInfo` answer with its `Retry-After`. A window
    /// that ends before it starts is the CA's error: refused, so the default
    /// window stays in force.
    pub fn from_response(info: &RenewalInfo, retry_after: Duration) -> Result<AriWindow, String> {
        let start_ms = (info.suggested_window.start.unix_timestamp_nanos() / 1_000_000) as i64;
        let end_ms = (info.suggested_window.end.unix_timestamp_nanos() / 1_000_000) as i64;
        if end_ms < start_ms {
            return Err("the CA's suggested window ends before it starts".into());
        }
        Ok(AriWindow {
            start_ms,
            end_ms,
            explanation_url: info.explanation_url.clone(),
            refresh_after: retry_after.clamp(MIN_REFRESH, MAX_REFRESH),
        })
    }
}

/// What a certificate records of its CA's window.
pub fn window_document(w: &AriWindow) -> Document {
    doc! {
        "window_start": DateTime::from_millis(w.start_ms),
        "window_end": DateTime::from_millis(w.end_ms),
        "explanation_url": w.explanation_url.clone(),
        "refresh_after_secs": w.refresh_after.as_secs() as i64,
    }
}

/// The certificate fields a (re)fetched window sets at `now`: always (the
/// window, the due time shown, the next fetch), and only while the renewal
/// is not queued yet (the scan's mark).
pub fn refreshed_fields(
    certificate_id: &str,
    serial: &str,
    w: &AriWindow,
    now: DateTime,
) -> (Document, Document) {
    let due = DateTime::from_millis(ari_due_ms(certificate_id, serial, w.start_ms, w.end_ms));
    let next_fetch =
        DateTime::from_millis(now.timestamp_millis() + w.refresh_after.as_millis() as i64);
    (
        doc! { "ari": window_document(w), "renewal_due_at": due, "ari_next_fetch_at": next_fetch },
        doc! { "renewal_next_at": due },
    )
}

/// The worker side of a refresh: asks the CA for the current certificate's
/// window and records it.
pub struct RefreshAri {
    pub secrets: Secrets,
    pub metrics: Arc<Metrics>,
}

impl JobHandler for RefreshAri {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (secrets, metrics) = (self.secrets.clone(), self.metrics.clone());
        Box::pin(async move { refresh(secrets, metrics, job).await })
    }
}

async fn refresh(
    secrets: Secrets,
    metrics: Arc<Metrics>,
    job: ClaimedJob,
) -> Result<(), HandlerError> {
    let store = job.lease.store().clone();
    let id = job
        .payload
        .get_str("certificate_id")
        .unwrap_or_default()
        .to_string();
    let Some(cert) = find_certificate(&store, &id).await? else {
        return Ok(()); // deleted since: no window to refresh
    };
    let Ok(current) = cert.get_document("current") else {
        return Ok(());
    };
    if cert.get_document("ari").is_err() || current.get_datetime("revoked_at").is_ok() {
        return Ok(()); // no window to refresh, or nothing left to renew
    }
    let serial = current.get_str("serial").unwrap_or_default().to_string();
    let leaf = certs::inspect_chain(current.get_str("chain_pem").unwrap_or_default())
        .map_err(|e| HandlerError::Permanent(e.to_string()))?;
    let ari_id = certificate_id(&leaf.leaf_der).map_err(HandlerError::Permanent)?;
    let issuer = issuer_of(&store, cert.get_str("issuer_id").unwrap_or_default()).await?;
    let account = account(&issuer, &secrets, metrics, RetryAfter::default()).await?;
    let this_serial = doc! { "_id": &id, "current.serial": &serial };
    let window = match account.renewal_info(&ari_id).await {
        Ok((info, retry_after)) => {
            AriWindow::from_response(&info, retry_after).map_err(HandlerError::Permanent)?
        }
        Err(instant_acme::Error::Unsupported(_)) => {
            // The CA no longer offers ARI: the window last given stands.
            job.lease
                .fenced_update(
                    CERTIFICATES,
                    this_serial,
                    doc! { "$unset": { "ari_next_fetch_at": "" } },
                    false,
                )
                .await?;
            return Ok(());
        }
        Err(e) => return Err(HandlerError::Retryable(format!("ARI: {e}"))),
    };
    let now = store.server_now().await.map_err(JobError::from)?;
    let (always, unless_queued) = refreshed_fields(&id, &serial, &window, now);
    job.lease
        .fenced_update(
            CERTIFICATES,
            this_serial.clone(),
            doc! { "$set": always },
            false,
        )
        .await?;
    let mut not_queued = this_serial;
    not_queued.insert("renewal_next_at", doc! { "$exists": true });
    job.lease
        .fenced_update(
            CERTIFICATES,
            not_queued,
            doc! { "$set": unless_queued },
            false,
        )
        .await?;
    tracing::info!(certificate = %id, serial = %serial, window_start = window.start_ms, window_end = window.end_ms, refresh_in_secs = window.refresh_after.as_secs(), "ARI window refreshed");
    Ok(())
}

/// The ARI identifier of a leaf certificate (`base64url(AKI).base64url(serial)`).
pub fn certificate_id(leaf_der: &[u8]) -> Result<CertificateIdentifier<'static>, String> {
    CertificateIdentifier::try_from(&CertificateDer::from(leaf_der.to_vec()))
}

/// The new-order request for `identifiers`, naming the certificate it
/// replaces when the CA speaks ARI (a CA without it refuses the field).
pub fn new_order<'a>(
    identifiers: &'a [Identifier],
    replaces: Option<CertificateIdentifier<'a>>,
) -> NewOrder<'a> {
    let order = NewOrder::new(identifiers);
    match replaces {
        Some(id) => order.replaces(id),
        None => order,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    /// The example response of RFC 9773 §4.2.
    const RECORDED: &str = r#"{
        "suggestedWindow": {
            "start": "2025-01-02T04:00:00Z",
            "end": "2025-01-03T04:00:00Z"
        },
        "explanationURL": "https://acme.example.com/docs/ari"
    }"#;

    #[test]
    fn a_recorded_window_is_read_and_the_renewal_falls_inside_it() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let w = AriWindow::from_response(&info, Duration::from_secs(21_600)).unwrap();
        assert_eq!(w.start_ms, 1_735_790_400_000);
        assert_eq!(w.end_ms, 1_735_876_800_000);
        assert_eq!(w.refresh_after, Duration::from_secs(21_600));
        assert_eq!(
            w.explanation_url.as_deref(),
            Some("https://acme.example.com/docs/ari")
        );
        for i in 0..50 {
            let due = crate::renewal::ari_due_ms(&format!("crt_{i}"), "0a", w.start_ms, w.end_ms);
            assert!((w.start_ms..=w.end_ms).contains(&due));
        }
    }

    #[test]
    fn retry_after_is_honoured_within_limits() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let soon = AriWindow::from_response(&info, Duration::from_secs(1)).unwrap();
        assert_eq!(soon.refresh_after, MIN_REFRESH);
        let late = AriWindow::from_response(&info, Duration::from_secs(30 * 86_400)).unwrap();
        assert_eq!(late.refresh_after, MAX_REFRESH);
    }

    #[test]
    fn a_window_the_ca_moves_earlier_moves_the_renewal_and_the_next_fetch_follows_retry_after() {
        let info: RenewalInfo = serde_json::from_str(RECORDED).unwrap();
        let planned = AriWindow::from_response(&info, Duration::from_secs(21_600)).unwrap();
        // The CA's later answer: renew now (a window already open), ask
        // again in an hour.
        let moved: RenewalInfo = serde_json::from_str(
            r#"{"suggestedWindow":{"start":"2024-12-20T00:00:00Z","end":"2024-12-20T01:00:00Z"},
                "explanationURL":"https://acme.example.com/incident"}"#,
        )
        .unwrap();
        let moved = AriWindow::from_response(&moved, Duration::from_secs(3600)).unwrap();
        let now = DateTime::from_millis(1_734_700_000_000); // 2024-12-20T13:06Z
        let (before, _) = refreshed_fields("crt_a", "0a", &planned, now);
        let (after, mark) = refreshed_fields("crt_a", "0a", &moved, now);
        let due = after
            .get_datetime("renewal_due_at")
            .unwrap()
            .timestamp_millis();
        assert!((moved.start_ms..=moved.end_ms).contains(&due));
        assert!(
            due < before
                .get_datetime("renewal_due_at")
                .unwrap()
                .timestamp_millis()
        );
        assert!(
            due < now.timestamp_millis(),
            "already due: the next scan renews"
        );
        assert_eq!(
            mark.get_datetime("renewal_next_at")
                .unwrap()
                .timestamp_millis(),
            due
        );
        assert_eq!(
            after
                .get_datetime("ari_next_fetch_at")
                .unwrap()
                .timestamp_millis(),
            now.timestamp_millis() + 3_600_000
        );
        assert_eq!(
            after
                .get_document("ari")
                .unwrap()
                .get_str("explanation_url"),
            Ok("https://acme.example.com/incident")
        );
        // The same window again moves nothing: the point in it is fixed.
        let (again, _) = refreshed_fields("crt_a", "0a", &moved, now);
        assert_eq!(again.get("renewal_due_at"), after.get("renewal_due_at"));
    }

    #[test]
    fn an_inverted_window_is_refused() {
        let json =
            r#"{"suggestedWindow":{"start":"2025-01-03T04:00:00Z","end":"2025-01-02T04:00:00Z"}}"#;
        let info: RenewalInfo = serde_json::from_str(json).unwrap();
        assert!(AriWindow::from_response(&info, Duration::ZERO).is_err());
    }

    #[test]
    fn a_renewal_order_names_the_certificate_it_replaces() {
        // A leaf from a CA that sets the authority key identifier, as CAs do.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.serial_number = Some(rcgen::SerialNumber::from_slice(&[
            0x00, 0x87, 0x65, 0x43, 0x21,
        ]));
        let leaf = leaf
            .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap();
        let _ = ca_cert;

        let id = certificate_id(leaf.der()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.der()).unwrap();
        let aki = parsed
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.clone()
                }
                _ => None,
            })
            .unwrap();
        let expected = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(aki.0),
            URL_SAFE_NO_PAD.encode([0x00, 0x87, 0x65, 0x43, 0x21])
        );
        assert_eq!(id.to_string(), expected);

        let identifiers = [Identifier::Dns("a.example".into())];
        let body = serde_json::to_value(new_order(&identifiers, Some(id))).unwrap();
        assert_eq!(body["replaces"], expected);
        let first = serde_json::to_value(new_order(&identifiers, None)).unwrap();
        assert!(first.get("replaces").is_none(), "{first}");
    }
}
