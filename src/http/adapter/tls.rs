//! The adapter's TLS: its serving certificate, and the front-proxy client
//! certificate the aggregator presents, checked the way kube-apiserver
//! checks it.
//!
//! The handshake asks for a client certificate but does not insist on one
//! and does not judge its chain: it only checks that the client holds the
//! key of what it sent. The chain is verified against the request-header CA
//! once per connection ([`Peer::of`]), and every request is then answered
//! by what that found — so a missing certificate or one from a CA we do not
//! trust gets a 401 `Status` a client can read rather than a bare TLS alert,
//! as with kube-apiserver (which also requests but verifies later).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

/// The certificates of a PEM file, at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("{}: holds no usable PEM private key: {e}", path.display()))
}

/// Verifies client chains against the request-header CA.
pub fn client_verifier(
    ca: Vec<CertificateDer<'static>>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert)
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("not a usable CA: {e}"))
}

/// The server's TLS configuration: our certificate, and a client
/// certificate requested (see the module's comment) from clients of `ca`.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig, String> {
    ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(Arc::new(Deferred(ca)))
        .with_single_cert(chain, key)
        .map_err(|e| format!("the key does not fit the certificate, or is unusable: {e}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Asks for a client certificate, checks the client's signature with it,
/// and leaves the chain to [`Peer::of`].
#[derive(Debug)]
struct Deferred(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for Deferred {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Who is at the other end of a connection, as far as its certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate.
    Anonymous,
    /// A certificate the request-header CA did not sign (or one that is
    /// expired, or not for client authentication).
    Untrusted(String),
    /// A verified chain; the leaf's subject common name.
    Verified { common_name: String },
}

impl Peer {
    /// Judges the chain a client presented (leaf first).
    pub fn of(chain: Option<&[CertificateDer<'_>]>, ca: &dyn ClientCertVerifier) -> Peer {
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return Peer::Anonymous;
        };
        if let Err(e) = ca.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            return Peer::Untrusted(e.to_string());
        }
        match common_name(leaf) {
            Some(common_name) => Peer::Verified { common_name },
            None => Peer::Untrusted("the certificate's subject has no common name".into()),
        }
    }
}

fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}
