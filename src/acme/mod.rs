//! ACME through `instant-acme`, with our own HTTP client injected: it
//! trusts the Mozilla roots plus an issuer's extra CA bundle (for private ACME
//! CAs), connects only where the egress policy permits, bounds each request
//! ([`transport`]), and records every request (endpoint, status, latency) in
//! metrics.
//! Account credentials are secrets ([`crate::crypto::secrets`]), created once per
//! issuer and reused.

pub mod ari;
pub mod dns;
pub mod dns01;
pub mod order;
pub mod revoke;
pub mod transport;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use instant_acme::{
    Account, AccountCredentials, BodyWrapper, BytesResponse, ExternalAccountKey, HttpClient,
    NewAccount,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::crypto::secrets::{SecretError, SecretRef, Secrets};
use crate::domain::issuer::Issuer;
use crate::observe::metrics::Metrics;
pub use transport::{RequestLimits, Transport};

/// What went wrong talking to a CA, decided in one place
/// ([`AcmeError::from_acme`]) and turned into a job outcome by the work that
/// asked ([`crate::work::outcome`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeError {
    /// Retrying cannot help: a bad CA bundle, a damaged stored account, a
    /// challenge the CA does not offer, a key that does not match.
    #[error("{0}")]
    Permanent(String),
    /// May mend by itself: the network, the CA's 5xx, the KEK away for a
    /// moment, a DNS server not answering yet.
    #[error("{0}")]
    Transient(String),
    /// The CA answered with a problem document of its own (RFC 8555 §6.7)
    /// other than the two below: whether retrying helps depends on the request.
    #[error("ACME: {0}")]
    Refused(String),
    /// `rateLimited`: not before the CA's `Retry-After`.
    #[error("{reason}")]
    RateLimited {
        reason: String,
        retry_after: std::time::Duration,
    },
    /// `badNonce` still, after every resend: the CA did nothing.
    #[error("ACME: {0}")]
    BadNonce(String),
}

const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
/// How long a `rateLimited` answer without `Retry-After` keeps us away.
const DEFAULT_RATE_LIMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether an instant-acme error is the CA's problem document of `kind`.
pub fn is_problem(e: &instant_acme::Error, kind: &str) -> bool {
    matches!(e, instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(kind))
}

impl AcmeError {
    /// The one classification of instant-acme's errors: `retry_after` is
    /// the last `Retry-After` the CA sent this client.
    pub fn from_acme(e: instant_acme::Error, retry_after: &RetryAfter) -> AcmeError {
        if is_problem(&e, BAD_NONCE) {
            return AcmeError::BadNonce(e.to_string());
        }
        if is_problem(&e, RATE_LIMITED) {
            return AcmeError::RateLimited {
                reason: format!("ACME: {e}"),
                retry_after: retry_after.last().unwrap_or(DEFAULT_RATE_LIMIT_WAIT),
            };
        }
        match e {
            instant_acme::Error::Api(_) => AcmeError::Refused(e.to_string()),
            e => AcmeError::Transient(format!("ACME: {e}")),
        }
    }
}

impl From<SecretError> for AcmeError {
    fn from(e: SecretError) -> Self {
        AcmeError::Transient(e.to_string())
    }
}

/// How often a request the CA answered `badNonce` is sent in all.
/// instant-acme already retries a `badNonce` three times inside one call;
/// past that (one request in 8,000 at Pebble's 5 %), the whole call is made
/// again here. A rejected nonce means the CA did nothing, so resending is
/// safe even for a new order.
pub const NONCE_ATTEMPTS: u32 = 5;

/// Whether the `attempt`th answer `e` of a call is worth sending again:
/// the CA rejected our nonce, and did nothing.
pub fn resend(e: &instant_acme::Error, attempt: u32) -> bool {
    is_problem(e, BAD_NONCE) && attempt < NONCE_ATTEMPTS
}

/// Makes an instant-acme call, sending it again while [`resend`] says so,
/// and classifies its error ([`AcmeError::from_acme`]). With `accept`, an
/// error it maps to a value counts as success (`alreadyRevoked`). A macro
/// because the calls borrow the order mutably, which a closure returning a
/// future cannot.
#[macro_export]
#[doc(hidden)]
macro_rules! acme_call {
    ($retry_after:expr, $call:expr) => {
        $crate::acme::acme_call!($retry_after, $call, accept = |_| None)
    };
    ($retry_after:expr, $call:expr, accept = $accept:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            match $call {
                Ok(v) => break Ok(v),
                Err(e) => match ($accept)(&e) {
                    Some(v) => break Ok(v),
                    None if $crate::acme::resend(&e, attempt) => {
                        tracing::debug!(attempt, "badNonce again; sending the request again");
                        continue;
                    }
                    None => break Err($crate::acme::AcmeError::from_acme(e, $retry_after)),
                },
            }
        }
    }};
}
pub use acme_call;

/// The TLS client config for ACME: Mozilla roots plus `extra_ca_pem`.
fn tls_config(extra_ca_pem: Option<&str>) -> Result<rustls::ClientConfig, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| AcmeError::Permanent(format!("issuer CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| AcmeError::Permanent(format!("issuer CA bundle: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(AcmeError::Permanent(
                "issuer CA bundle: no PEM certificate in it".into(),
            ));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Permanent(format!("issuer CA bundle: {e}")))
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// Checks that a CA bundle parses (for API input validation).
pub fn check_ca_bundle(pem: &str) -> Result<(), String> {
    tls_config(Some(pem)).map(|_| ()).map_err(|e| e.to_string())
}

/// The last `Retry-After` a CA sent this client (instant-acme's errors do
/// not carry it; a `rateLimited` answer is retried no sooner than this).
#[derive(Clone, Default)]
pub struct RetryAfter(Arc<std::sync::Mutex<Option<std::time::Duration>>>);

impl RetryAfter {
    pub fn last(&self) -> Option<std::time::Duration> {
        *self.0.lock().unwrap()
    }
}

/// `Retry-After` in seconds, or an HTTP date (taken as a minute: the CA
/// wants us gone for a while; the job's back-off does the rest).
fn parse_retry_after(value: &str) -> std::time::Duration {
    value
        .trim()
        .parse::<u64>()
        .map(std::time::Duration::from_secs)
        .unwrap_or(std::time::Duration::from_secs(60))
}

/// The HTTP client instant-acme uses: ours, fenced by the egress policy,
/// bounded per request, metered.
pub fn http_client(
    extra_ca_pem: Option<&str>,
    metrics: Arc<Metrics>,
    retry_after: RetryAfter,
    transport: &Transport,
) -> Result<Box<dyn HttpClient>, AcmeError> {
    let inner = transport::bounded_client(tls_config(extra_ca_pem)?, transport);
    Ok(Box::new(Metered {
        inner,
        metrics,
        retry_after,
    }))
}

struct Metered {
    inner: Box<dyn HttpClient>,
    metrics: Arc<Metrics>,
    retry_after: RetryAfter,
}

impl HttpClient for Metered {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let endpoint = endpoint_label(req.uri().path());
        let metrics = self.metrics.clone();
        let retry_after = self.retry_after.clone();
        let started = Instant::now();
        let response = self.inner.request(req);
        Box::pin(async move {
            let result = response.await;
            let status = match &result {
                Ok(r) => {
                    if let Some(v) = r.parts.headers.get(http::header::RETRY_AFTER) {
                        *retry_after.0.lock().unwrap() =
                            Some(parse_retry_after(v.to_str().unwrap_or_default()));
                    }
                    r.parts.status.as_u16().to_string()
                }
                Err(_) => "error".to_string(),
            };
            metrics
                .acme_requests_total
                .with_label_values(&[&endpoint, &status])
                .inc();
            metrics
                .acme_request_seconds
                .with_label_values(&[&endpoint])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// A low-cardinality name for an ACME URL path: its first segment that is
/// not `acme` (`/acme/new-order` → `new-order`, Pebble's `/authZ/x1y2` →
/// `authZ`), among at most [`MAX_ENDPOINT_LABELS`] per process.
fn endpoint_label(path: &str) -> String {
    static SEEN: EndpointLabels = EndpointLabels::new();
    SEEN.label(path)
}

/// Distinct endpoint labels one process reports at most: a CA that makes up
/// new paths has the rest counted as `other`, instead of growing the
/// metrics without bound.
const MAX_ENDPOINT_LABELS: usize = 32;

struct EndpointLabels(std::sync::Mutex<std::collections::BTreeSet<String>>);

impl EndpointLabels {
    const fn new() -> EndpointLabels {
        EndpointLabels(std::sync::Mutex::new(std::collections::BTreeSet::new()))
    }

    fn label(&self, path: &str) -> String {
        let label = path
            .split('/')
            .find(|s| !s.is_empty() && *s != "acme")
            .unwrap_or("root");
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.contains(label) {
            return label.to_string();
        }
        if seen.len() >= MAX_ENDPOINT_LABELS {
            return "other".into();
        }
        seen.insert(label.to_string());
        label.to_string()
    }
}

/// A stored account that cannot be read will not mend by retrying.
fn damaged(what: impl std::fmt::Display) -> AcmeError {
    AcmeError::Permanent(format!("stored ACME account is damaged: {what}"))
}

/// The issuer's ACME account: loaded from its stored credentials, or
/// registered once and stored (insert-only, so racing workers agree on one).
pub async fn account(
    issuer: &Issuer,
    secrets: &Secrets,
    metrics: Arc<Metrics>,
    retry_after: RetryAfter,
    transport: &Transport,
) -> Result<Account, AcmeError> {
    let secret = SecretRef::acme_account(&issuer.project_id, &issuer.id);
    let http = || {
        http_client(
            issuer.ca_bundle_pem.as_deref(),
            metrics.clone(),
            retry_after.clone(),
            transport,
        )
    };
    // Only an account that does not exist is registered: one that cannot be
    // read right now (the KEK away, say) must not make a new one on every
    // retry.
    match secrets.get(&secret).await {
        Ok(stored) => return from_stored(&stored, http()?, &retry_after).await,
        Err(SecretError::NotFound(_)) => {}
        Err(e) => {
            return Err(AcmeError::Transient(format!(
                "the issuer's ACME account cannot be read: {e}"
            )))
        }
    }
    let contact = format!("mailto:{}", issuer.contact);
    let eab = match &issuer.eab_kid {
        Some(kid) => {
            use base64::Engine;
            let sealed = secrets
                .get(&SecretRef::eab_key(&issuer.project_id, &issuer.id))
                .await?;
            let hmac_b64 =
                std::str::from_utf8(&sealed).map_err(|_| damaged("EAB HMAC key is not text"))?;
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(hmac_b64.trim_end_matches('='))
                .map_err(|e| damaged(format!("EAB HMAC key: {e}")))?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
        None => None,
    };
    let new_account = NewAccount {
        contact: &[&contact],
        terms_of_service_agreed: true,
        only_return_existing: false,
    };
    let (_, credentials) = acme_call!(
        &retry_after,
        Account::builder_with_http(http()?)
            .create(&new_account, issuer.directory_url.clone(), eab.as_ref())
            .await
    )?;
    let json = serde_json::to_vec(&credentials).map_err(|e| damaged(e.to_string()))?;
    let stored = secrets.get_or_create(&secret, || json).await?;
    from_stored(&stored, http()?, &retry_after).await
}

async fn from_stored(
    stored: &[u8],
    http: Box<dyn HttpClient>,
    retry_after: &RetryAfter,
) -> Result<Account, AcmeError> {
    let credentials: AccountCredentials =
        serde_json::from_slice(stored).map_err(|e| damaged(e.to_string()))?;
    Account::builder_with_http(http)
        .from_credentials(credentials)
        .await
        .map_err(|e| AcmeError::from_acme(e, retry_after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_labels_stay_few() {
        assert_eq!(endpoint_label("/acme/new-order"), "new-order");
        assert_eq!(endpoint_label("/authZ/abc123"), "authZ");
        assert_eq!(endpoint_label("/dir"), "dir");
        assert_eq!(endpoint_label("/"), "root");
    }

    #[test]
    fn a_ca_making_up_paths_cannot_grow_the_labels_without_bound() {
        let labels = EndpointLabels::new();
        assert_eq!(labels.label("/acme/new-order"), "new-order");
        let distinct: std::collections::BTreeSet<String> = (0..1000)
            .map(|i| labels.label(&format!("/made-up-{i}/x")))
            .collect();
        assert_eq!(distinct.len(), MAX_ENDPOINT_LABELS, "{distinct:?}");
        assert!(distinct.contains("other"));
        assert_eq!(
            labels.label("/acme/new-order"),
            "new-order",
            "known labels stay"
        );
    }

    #[test]
    fn retry_after_in_seconds_or_a_date() {
        assert_eq!(
            parse_retry_after("120"),
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT"),
            std::time::Duration::from_secs(60)
        );
    }
}
