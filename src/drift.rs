//! Drift scans: is each endpoint a certificate declares serving the
//! certificate we issued last?
//!
//! A certificate may list `endpoints` (`host`, `port`, optional `sni`). The
//! scheduler leader finds certificates whose `drift_next_at` has passed and
//! enqueues a `scan-drift` job for each ([`crate::periodic`]).
//!
//! A worker then connects to every endpoint with TLS, takes the leaf the
//! server presents (whoever signed it: we compare, we do not trust) and
//! classifies it:
//!
//! - `in_sync`: the current certificate;
//! - `stale`: one we issued before (`issued_fingerprints`);
//! - `foreign`: anybody else's;
//! - `unreachable`: no TLS handshake within the timeout.
//!
//! The result replaces the certificate's `drift` (one entry per endpoint,
//! with `checked_at` and `since`, the time the state last changed) and its
//! summary `drift_state`, the worst of its endpoints. Each change is audited
//! (`certificate.drift_changed`) before it is stored, so a worker that dies in
//! between repeats the record rather than losing it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

use crate::acme::order::{find_certificate, CERTIFICATES};
use crate::audit::{Audit, Event};
use crate::handlers::{HandlerError, JobHandler};
use crate::jobs::{ClaimedJob, JobError};
use crate::periodic::Periodic;

pub const SCAN_DRIFT: &str = "scan-drift";
/// Endpoints one certificate may declare.
pub const MAX_ENDPOINTS: usize = 20;
/// How long one endpoint may take to connect and complete its handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Endpoints of one certificate probed at once.
const PROBE_CONCURRENCY: usize = 8;

/// An endpoint serving a certificate, as declared on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// A DNS name or an IP address.
    pub host: String,
    pub port: u16,
    /// The name sent in the TLS handshake [default: `host` when it is a DNS
    /// name; none for an IP address].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
}

impl Endpoint {
    pub fn to_document(&self) -> Document {
        let mut d = doc! { "host": &self.host, "port": self.port as i32 };
        if let Some(sni) = &self.sni {
            d.insert("sni", sni);
        }
        d
    }

    pub fn from_document(d: &Document) -> Option<Endpoint> {
        Some(Endpoint {
            host: d.get_str("host").ok()?.to_string(),
            port: u16::try_from(d.get_i32("port").ok()?).ok()?,
            sni: d.get_str("sni").ok().map(str::to_string),
        })
    }

    /// The endpoints a certificate document declares.
    pub fn of_certificate(cert: &Document) -> Vec<Endpoint> {
        cert.get_array("endpoints")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_document)
                    .filter_map(Endpoint::from_document)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The name the handshake carries; an IP address sends no SNI.
    fn server_name(&self) -> Result<ServerName<'static>, String> {
        let name = self.sni.as_deref().unwrap_or(&self.host);
        ServerName::try_from(name.to_string()).map_err(|e| format!("server name {name:?}: {e}"))
    }

    fn same(&self, d: &Document) -> bool {
        Endpoint::from_document(d).as_ref() == Some(self)
    }
}

/// What an endpoint serves, compared with ours. Ordered from best to worst:
/// a certificate's summary is its worst endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DriftState {
    InSync,
    Unreachable,
    Stale,
    Foreign,
}

impl DriftState {
    pub const ALL: [DriftState; 4] = [
        DriftState::InSync,
        DriftState::Unreachable,
        DriftState::Stale,
        DriftState::Foreign,
    ];

    pub fn parse(s: &str) -> Option<DriftState> {
        DriftState::ALL.into_iter().find(|d| d.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::InSync => "in_sync",
            DriftState::Unreachable => "unreachable",
            DriftState::Stale => "stale",
            DriftState::Foreign => "foreign",
        }
    }
}

/// Classifies a served leaf by its SHA-256 fingerprint.
pub fn classify(served: &str, current: Option<&str>, issued_before: &[String]) -> DriftState {
    if current == Some(served) {
        DriftState::InSync
    } else if issued_before.iter().any(|f| f == served) {
        DriftState::Stale
    } else {
        DriftState::Foreign
    }
}

/// What one probe saw.
#[derive(Debug, Clone)]
pub enum Served {
    Leaf {
        fingerprint_sha256: String,
        serial: Option<String>,
        not_after: Option<DateTime>,
    },
    Unreachable(String),
}

/// Connects to `endpoint` and returns the leaf it presents.
pub async fn probe(endpoint: &Endpoint, timeout: Duration) -> Served {
    match tokio::time::timeout(timeout, handshake(endpoint)).await {
        Ok(Ok(leaf)) => {
            let fingerprint_sha256 = crate::certs::hex(&Sha256::digest(&leaf));
            let parsed = x509_parser::parse_x509_certificate(&leaf).ok();
            Served::Leaf {
                fingerprint_sha256,
                serial: parsed
                    .as_ref()
                    .map(|(_, c)| c.raw_serial_as_string().replace(':', "").to_lowercase()),
                not_after: parsed.map(|(_, c)| {
                    DateTime::from_millis(c.validity().not_after.timestamp().saturating_mul(1000))
                }),
            }
        }
        Ok(Err(e)) => Served::Unreachable(e),
        Err(_) => Served::Unreachable(format!("no TLS handshake within {}s", timeout.as_secs())),
    }
}

async fn handshake(endpoint: &Endpoint) -> Result<CertificateDer<'static>, String> {
    let name = endpoint.server_name()?;
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(inspecting_config())
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let (_, session) = tls.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.clone().into_owned())
        .ok_or_else(|| "the server presented no certificate".to_string())
}

/// A client that completes the handshake with any certificate (we only read
/// it), while still checking the server's handshake signatures. Built once:
/// every probe shares it.
fn inspecting_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyLeaf(provider)))
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

#[derive(Debug)]
struct AcceptAnyLeaf(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyLeaf {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why `endpoints` cannot be declared, field by field (`endpoints[i].host`…).
pub fn endpoint_problems(endpoints: &[Endpoint]) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if endpoints.len() > MAX_ENDPOINTS {
        problems.push((
            "endpoints".to_string(),
            format!(
                "lists {} endpoints; at most {MAX_ENDPOINTS}",
                endpoints.len()
            ),
        ));
        return problems;
    }
    for (i, e) in endpoints.iter().enumerate() {
        let is_ip = e.host.parse::<IpAddr>().is_ok();
        if !is_ip {
            if let Some(p) = host_name_problem(&e.host) {
                problems.push((format!("endpoints[{i}].host"), format!("{:?} {p}", e.host)));
            }
        }
        if e.port == 0 {
            problems.push((format!("endpoints[{i}].port"), "must be 1 to 65535".into()));
        }
        if let Some(sni) = &e.sni {
            if let Some(p) = host_name_problem(sni) {
                problems.push((format!("endpoints[{i}].sni"), format!("{sni:?} {p}")));
            }
        }
        if endpoints[..i].contains(e) {
            problems.push((format!("endpoints[{i}]"), "is listed twice".into()));
        }
    }
    problems
}

/// A host name to connect to or send as SNI: lower-case letters, digits,
/// '-' and '.', one label allowed (`localhost`).
fn host_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.len() > 253 {
        return Some("is longer than 253 characters".into());
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    };
    if !name.split('.').all(ok_label) {
        return Some("is not a host name (lower-case labels of a-z, 0-9 and '-')".into());
    }
    None
}

/// Drift scans as periodic work of the scheduler leader.
pub const PERIODIC: Periodic = Periodic {
    kind: SCAN_DRIFT,
    next_field: "drift_next_at",
    key_prefix: "drift",
};

/// The worker side: probes every endpoint and records the drift.
pub struct ScanDrift {
    pub connect_timeout: Duration,
}

impl JobHandler for ScanDrift {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let timeout = self.connect_timeout;
        Box::pin(async move { scan(job, timeout).await })
    }
}

async fn scan(job: ClaimedJob, timeout: Duration) -> Result<(), HandlerError> {
    let store = job.lease.store().clone();
    let id = job
        .payload
        .get_str("certificate_id")
        .unwrap_or_default()
        .to_string();
    let Some(cert) = find_certificate(&store, &id).await? else {
        return Ok(()); // deleted since: nothing to watch
    };
    let endpoints = Endpoint::of_certificate(&cert);
    let current = cert
        .get_document("current")
        .ok()
        .and_then(|c| c.get_str("fingerprint_sha256").ok())
        .map(str::to_string);
    let issued_before: Vec<String> = cert
        .get_array("issued_fingerprints")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let previous: Vec<Document> = cert
        .get_array("drift")
        .map(|a| a.iter().filter_map(Bson::as_document).cloned().collect())
        .unwrap_or_default();

    let served: Vec<Served> = futures::stream::iter(endpoints.clone())
        .map(|e| async move { probe(&e, timeout).await })
        .buffered(PROBE_CONCURRENCY)
        .collect()
        .await;
    let now = store.server_now().await.map_err(JobError::from)?;
    let project_id = cert.get_str("project_id").unwrap_or_default();
    let audit = Audit::new(store.clone());
    let mut drift = Vec::with_capacity(endpoints.len());
    let mut summary: Option<DriftState> = None;
    for (endpoint, served) in endpoints.iter().zip(served) {
        let mut entry = endpoint.to_document();
        let state = match &served {
            Served::Leaf {
                fingerprint_sha256,
                serial,
                not_after,
            } => {
                entry.insert("served_fingerprint_sha256", fingerprint_sha256);
                if let Some(serial) = serial {
                    entry.insert("served_serial", serial);
                }
                if let Some(not_after) = not_after {
                    entry.insert("served_not_after", *not_after);
                }
                classify(fingerprint_sha256, current.as_deref(), &issued_before)
            }
            Served::Unreachable(why) => {
                entry.insert("error", why);
                DriftState::Unreachable
            }
        };
        summary = summary.max(Some(state));
        let before = previous.iter().find(|d| endpoint.same(d));
        let before_state = before.and_then(|d| d.get_str("state").ok());
        let since = match before {
            Some(d) if before_state == Some(state.as_str()) => {
                d.get_datetime("since").copied().unwrap_or(now)
            }
            _ => now,
        };
        entry.insert("state", state.as_str());
        entry.insert("checked_at", now);
        entry.insert("since", since);
        if before_state != Some(state.as_str()) {
            let event = Event::new(
                &job.lease.holder,
                "certificate.drift_changed",
                format!("projects/{project_id}/certificates/{id}"),
            )
            .with(doc! {
                "project_id": project_id,
                "endpoint": endpoint.to_document(),
                "from": before_state.map(Bson::from).unwrap_or(Bson::Null),
                "to": state.as_str(),
                "served_fingerprint_sha256": entry.get("served_fingerprint_sha256").cloned().unwrap_or(Bson::Null),
            });
            audit.append(&event).await.map_err(|e| {
                HandlerError::Retryable(format!("audit: {}", crate::store::short(&e)))
            })?;
            tracing::info!(certificate = %id, host = %endpoint.host, port = endpoint.port, from = ?before_state, to = state.as_str(), "drift changed");
        }
        drift.push(Bson::Document(entry));
    }
    let mut set = doc! { "drift": drift, "drift_checked_at": now };
    let update = match summary {
        Some(s) => {
            set.insert("drift_state", s.as_str());
            doc! { "$set": set }
        }
        None => doc! { "$set": set, "$unset": { "drift_state": "" } },
    };
    // Only while the endpoints are the ones we scanned: a scan that raced
    // with a change of them writes nothing (the change scans again).
    let scanned = cert.get("endpoints").cloned().unwrap_or(Bson::Null);
    job.lease
        .fenced_update(
            CERTIFICATES,
            doc! { "_id": &id, "endpoints": scanned },
            update,
            false,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_leaf_is_ours_now_ours_before_or_someone_elses() {
        let before = vec!["aa".to_string(), "bb".to_string()];
        assert_eq!(classify("bb", Some("bb"), &before), DriftState::InSync);
        assert_eq!(classify("aa", Some("bb"), &before), DriftState::Stale);
        assert_eq!(classify("cc", Some("bb"), &before), DriftState::Foreign);
        assert_eq!(classify("cc", None, &[]), DriftState::Foreign);
    }

    #[test]
    fn a_certificate_is_as_drifted_as_its_worst_endpoint() {
        let worst = [DriftState::InSync, DriftState::Foreign, DriftState::Stale]
            .into_iter()
            .max();
        assert_eq!(worst, Some(DriftState::Foreign));
        assert!(DriftState::Unreachable > DriftState::InSync);
        assert!(DriftState::Stale > DriftState::Unreachable);
    }

    #[test]
    fn endpoints_are_validated_with_a_reason_each() {
        let e = |host: &str, port: u16, sni: Option<&str>| Endpoint {
            host: host.into(),
            port,
            sni: sni.map(str::to_string),
        };
        assert!(endpoint_problems(&[
            e("localhost", 443, None),
            e("127.0.0.1", 8443, Some("www.example.com"))
        ])
        .is_empty());
        let problems = endpoint_problems(&[
            e("bad host", 443, None),
            e("ok.example", 0, None),
            e("ok.example", 443, Some("*.example.com")),
            e("localhost", 443, None),
            e("localhost", 443, None),
        ]);
        let fields: Vec<&str> = problems.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "endpoints[0].host",
                "endpoints[1].port",
                "endpoints[2].sni",
                "endpoints[4]"
            ]
        );
        let many: Vec<Endpoint> = (1..=21).map(|p| e("localhost", p, None)).collect();
        assert_eq!(endpoint_problems(&many)[0].0, "endpoints");
    }
}
