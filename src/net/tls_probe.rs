//! The TLS probe: connect to an endpoint, where the egress policy permits,
//! and read the leaf certificate it presents. Drift scans classify what it
//! saw; a distribution's `validate` step compares it with what was just
//! delivered.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::DateTime;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use super::egress::EgressPolicy;
use crate::domain::drift::Endpoint;

/// How long one endpoint may take to connect and complete its handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The name the handshake carries; an IP address sends no SNI.
fn server_name(endpoint: &Endpoint) -> Result<ServerName<'static>, String> {
    let name = endpoint.sni.as_deref().unwrap_or(&endpoint.host);
    ServerName::try_from(name.to_string()).map_err(|e| format!("server name {name:?}: {e}"))
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

/// Connects to `endpoint`, where `egress` permits, and returns the leaf it
/// presents.
pub async fn probe(endpoint: &Endpoint, timeout: Duration, egress: &EgressPolicy) -> Served {
    match tokio::time::timeout(timeout, handshake(endpoint, egress)).await {
        Ok(Ok(leaf)) => {
            let fingerprint_sha256 = crate::domain::certs::hex(&Sha256::digest(&leaf));
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

async fn handshake(
    endpoint: &Endpoint,
    egress: &EgressPolicy,
) -> Result<CertificateDer<'static>, String> {
    let name = server_name(endpoint)?;
    let tcp = egress
        .connect(&endpoint.host, endpoint.port)
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
