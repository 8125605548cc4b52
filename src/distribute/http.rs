//! HTTP to a place a tenant named (webhooks, Kubernetes API servers): the
//! connection passes the egress policy, and answers become one error type
//! that says whether a retry can help.

use std::time::Duration;

use url::Url;

use crate::net::egress::{EgressError, EgressPolicy};

/// How much of a refusing answer's body is kept for the error.
const ERROR_BODY_LIMIT: usize = 512;

/// Why a request did not succeed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The URL or its settings are unusable: retrying cannot help until the
    /// target is changed.
    #[error("{0}")]
    Refused(String),
    /// The egress policy refuses the host (or the purpose is closed): also
    /// final, and told in our own words, naming the setting that would
    /// open it, so it may be shown to whoever asked.
    #[error("{0}")]
    Egress(String),
    /// The receiver answered 4xx (other than 408 and 429): it will answer
    /// the same again.
    #[error("the receiver answered {status}: {body}")]
    Rejected { status: u16, body: String },
    /// A connection failure, a timeout, 408, 429 or 5xx: worth a retry.
    #[error("{0}")]
    Transient(String),
}

impl DeliveryError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliveryError::Transient(_))
    }
}

/// A client for requests to `url`'s host: the host is resolved here, each
/// address judged by `policy`, and the client pinned to the permitted ones,
/// so a name cannot resolve elsewhere between check and connect. No
/// redirect is followed (a `Location` could point past the policy).
/// `ca_pem`: the only roots trusted, instead of the public ones.
pub async fn pinned_client(
    policy: &EgressPolicy,
    url: &Url,
    timeout: Duration,
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::Client, DeliveryError> {
    if !matches!(url.scheme(), "https" | "http") {
        return Err(DeliveryError::Refused(format!(
            "{}: only http and https URLs are used",
            redacted(url)
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| DeliveryError::Refused(format!("{}: no host", redacted(url))))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| DeliveryError::Refused(format!("{}: no port", redacted(url))))?;
    let addrs = policy.resolve(host, port).await.map_err(egress_failure)?;
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would resolve the host itself, past
        // the policy and the pinning.
        .no_proxy()
        .resolve_to_addrs(host.trim_matches(['[', ']']), &addrs);
    if let Some(pem) = ca_pem {
        let roots = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| DeliveryError::Refused(format!("CA certificates: {e}")))?;
        builder = roots
            .into_iter()
            .fold(builder.tls_built_in_root_certs(false), |b, root| {
                b.add_root_certificate(root)
            });
    }
    builder
        .build()
        .map_err(|e| DeliveryError::Refused(format!("HTTP client: {e}")))
}

/// Why the egress policy gave no address: a name that did not resolve may
/// resolve later; a refused address stays refused until the target changes.
pub fn egress_failure(e: EgressError) -> DeliveryError {
    match e {
        EgressError::Unresolved { .. } => DeliveryError::Transient(e.to_string()),
        refused => DeliveryError::Egress(refused.to_string()),
    }
}

/// A request that got no answer: always worth a retry.
pub fn transport_failure(method: &str, url: &Url, e: reqwest::Error) -> DeliveryError {
    DeliveryError::Transient(format!("{method} {}: {}", redacted(url), e.without_url()))
}

/// A non-2xx answer as an error, with the start of its body (read no
/// further: a receiver could stream without end).
pub async fn refusal(answer: reqwest::Response) -> DeliveryError {
    let status = answer.status().as_u16();
    let body = body_start(answer).await;
    match status {
        408 | 429 | 500..=599 => {
            DeliveryError::Transient(format!("the receiver answered {status}: {body}"))
        }
        _ => DeliveryError::Rejected { status, body },
    }
}

/// The first [`ERROR_BODY_LIMIT`] bytes of `answer`'s body, as text; the
/// rest is never read.
pub async fn body_start(mut answer: reqwest::Response) -> String {
    let mut start = Vec::new();
    while start.len() < ERROR_BODY_LIMIT {
        match answer.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            _ => break,
        }
    }
    start.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&start).into_owned()
}

/// `answer`'s whole body, `what` it is, when it holds at most `limit`
/// bytes. Read chunk by chunk and given up on as soon as it passes
/// `limit` (a receiver could stream without end), so no more than that is
/// ever held; that is refused, a retry would read the same.
pub async fn body_capped(
    mut answer: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, DeliveryError> {
    let too_long = || {
        DeliveryError::Refused(format!(
            "{what} is longer than {limit} bytes; reading stopped there"
        ))
    };
    if answer.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_long());
    }
    let mut body = Vec::new();
    while let Some(chunk) = answer
        .chunk()
        .await
        .map_err(|e| DeliveryError::Transient(format!("{what}: {}", e.without_url())))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_long());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The URL's origin only: hook URLs carry secrets in their path and query
/// (Slack's do), so errors and logs never show more.
pub fn redacted(url: &Url) -> String {
    url.origin().ascii_serialization()
}
