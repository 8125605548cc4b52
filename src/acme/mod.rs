//! ACME through `instant-acme`, with our own HTTP client injected: it
//! trusts the Mozilla roots plus an issuer's extra CA bundle (for private ACME
//! CAs), and records every request (endpoint, status, latency) in metrics.
//! Account credentials are secrets ([`crate::secrets`]), created once per
//! issuer and reused.

pub mod ari;
pub mod dns01;
pub mod order;
pub mod revoke;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, BodyWrapper, BytesResponse, ExternalAccountKey, HttpClient,
    NewAccount,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::metrics::Metrics;
use crate::secrets::{SecretError, Secrets};

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("issuer CA bundle: {0}")]
    CaBundle(String),
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("stored ACME account is damaged: {0}")]
    Damaged(String),
}

/// An account that cannot be had, as a job outcome: a bad CA bundle or a
/// damaged stored account will not mend by retrying; anything else may.
impl From<AcmeError> for crate::handlers::HandlerError {
    fn from(e: AcmeError) -> Self {
        match e {
            AcmeError::CaBundle(_) | AcmeError::Damaged(_) => Self::Permanent(e.to_string()),
            e => Self::Retryable(e.to_string()),
        }
    }
}

/// The TLS client config for ACME: Mozilla roots plus `extra_ca_pem`.
fn tls_config(extra_ca_pem: Option<&str>) -> Result<rustls::ClientConfig, AcmeError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| AcmeError::CaBundle(e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| AcmeError::CaBundle(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(AcmeError::CaBundle("no PEM certificate in it".into()));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::CaBundle(e.to_string()))
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

/// The HTTP client instant-acme uses: ours, metered.
pub fn http_client(
    extra_ca_pem: Option<&str>,
    metrics: Arc<Metrics>,
    retry_after: RetryAfter,
) -> Result<Box<dyn HttpClient>, AcmeError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(extra_ca_pem)?)
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let inner: HyperClient<_, BodyWrapper<Bytes>> =
        HyperClient::builder(TokioExecutor::new()).build(connector);
    Ok(Box::new(Metered {
        inner: Box::new(inner),
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
/// not `acme` and holds no digits (`/acme/new-order` → `new-order`,
/// Pebble's `/authZ/x1y2` → `authZ`).
fn endpoint_label(path: &str) -> String {
    path.split('/')
        .find(|s| !s.is_empty() && *s != "acme")
        .map(|s| s.to_string())
        .unwrap_or_else(|| "root".into())
}

/// The issuer's fields the ACME client needs.
#[derive(Debug, Clone)]
pub struct IssuerAcme {
    pub id: String,
    pub directory_url: String,
    pub contact: String,
    pub ca_bundle_pem: Option<String>,
    /// The EAB key id; its HMAC key is the secret [`eab_secret_id`].
    pub eab_kid: Option<String>,
    /// An HMAC key stored in the clear by builds before it was sealed.
    pub eab_legacy_hmac: Option<String>,
    /// DNS-01 through RFC 2136, when the issuer uses that challenge.
    pub dns: Option<dns01::DnsSettings>,
}

/// The secret holding an issuer's EAB HMAC key.
pub fn eab_secret_id(issuer_id: &str) -> String {
    format!("issuer-eab/{issuer_id}")
}

/// The issuer's ACME account: loaded from its stored credentials, or
/// registered once and stored (insert-only, so racing workers agree on one).
pub async fn account(
    issuer: &IssuerAcme,
    secrets: &Secrets,
    metrics: Arc<Metrics>,
    retry_after: RetryAfter,
) -> Result<Account, AcmeError> {
    let secret_id = format!("acme-accounts/{}", issuer.id);
    let http = || {
        http_client(
            issuer.ca_bundle_pem.as_deref(),
            metrics.clone(),
            retry_after.clone(),
        )
    };
    if let Ok(stored) = secrets.get(&secret_id).await {
        return from_stored(&stored, http()?).await;
    }
    let contact = format!("mailto:{}", issuer.contact);
    let eab = match &issuer.eab_kid {
        Some(kid) => {
            use base64::Engine;
            let hmac_b64 = match &issuer.eab_legacy_hmac {
                Some(legacy) => legacy.clone(),
                None => {
                    let sealed = secrets.get(&eab_secret_id(&issuer.id)).await?;
                    String::from_utf8(sealed.to_vec())
                        .map_err(|_| AcmeError::Damaged("EAB HMAC key is not text".into()))?
                }
            };
            let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(hmac_b64.trim_end_matches('='))
                .map_err(|e| AcmeError::Damaged(format!("EAB HMAC key: {e}")))?;
            Some(ExternalAccountKey::new(kid.clone(), &key))
        }
        None => None,
    };
    let (_, credentials) = Account::builder_with_http(http()?)
        .create(
            &NewAccount {
                contact: &[&contact],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            issuer.directory_url.clone(),
            eab.as_ref(),
        )
        .await?;
    let json = serde_json::to_vec(&credentials).map_err(|e| AcmeError::Damaged(e.to_string()))?;
    let stored = secrets.get_or_create(&secret_id, || json).await?;
    from_stored(&stored, http()?).await
}

async fn from_stored(stored: &[u8], http: Box<dyn HttpClient>) -> Result<Account, AcmeError> {
    let credentials: AccountCredentials =
        serde_json::from_slice(stored).map_err(|e| AcmeError::Damaged(e.to_string()))?;
    Ok(Account::builder_with_http(http)
        .from_credentials(credentials)
        .await?)
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
