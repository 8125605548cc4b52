//! A delivery's `validate` step: does the target's validation endpoint now
//! serve the certificate just delivered? The same TLS probe as the drift
//! scans, compared by SHA-256 fingerprint, a few times: a server takes a
//! moment to reload.

use std::time::Duration;

use crate::domain::drift::Endpoint;
use crate::net::egress::EgressPolicy;
use crate::net::tls_probe::{probe, Served};

/// How often, and how far apart, the endpoint is checked.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    pub attempts: u32,
    pub interval: Duration,
    pub connect_timeout: Duration,
}

impl Default for Checks {
    /// Six checks 5 s apart: a reload has 25 s to take effect.
    fn default() -> Self {
        Checks {
            attempts: 6,
            interval: Duration::from_secs(5),
            connect_timeout: crate::net::tls_probe::DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// `Ok` once `endpoint` presents the leaf with `fingerprint_sha256`; the
/// last thing it served otherwise.
pub async fn serves(
    egress: &EgressPolicy,
    endpoint: &Endpoint,
    fingerprint_sha256: &str,
    checks: Checks,
) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 1..=checks.attempts.max(1) {
        if attempt > 1 {
            tokio::time::sleep(checks.interval).await;
        }
        last = match probe(endpoint, checks.connect_timeout, egress).await {
            Served::Leaf {
                fingerprint_sha256: served,
                ..
            } if served.eq_ignore_ascii_case(fingerprint_sha256) => return Ok(()),
            Served::Leaf {
                fingerprint_sha256: served,
                serial,
                ..
            } => format!(
                "serves {served} (serial {}), not the delivered {fingerprint_sha256}",
                serial.as_deref().unwrap_or("unknown")
            ),
            Served::Unreachable(why) => format!("unreachable: {why}"),
        };
    }
    Err(format!(
        "{}:{} after {} checks {}",
        endpoint.host,
        endpoint.port,
        checks.attempts.max(1),
        last
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use sha2::{Digest, Sha256};
    use tokio::net::TcpListener;

    use super::*;

    /// A TLS server on loopback whose certificate can be swapped, as a
    /// reload does.
    struct Server {
        port: u16,
        serving: Arc<Mutex<tokio_rustls::TlsAcceptor>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn acceptor(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> tokio_rustls::TlsAcceptor {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.cert.der().to_vec())], key)
        .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    impl Server {
        async fn start(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let serving = Arc::new(Mutex::new(acceptor(cert)));
            let current = serving.clone();
            let task = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let acceptor = current.lock().unwrap().clone();
                    tokio::spawn(async move {
                        let _ = acceptor.accept(tcp).await;
                    });
                }
            });
            Server {
                port,
                serving,
                task,
            }
        }

        fn reload(&self, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) {
            *self.serving.lock().unwrap() = acceptor(cert);
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn fingerprint(cert: &rcgen::CertifiedKey<rcgen::KeyPair>) -> String {
        crate::domain::certs::hex(&Sha256::digest(cert.cert.der()))
    }

    fn quick(attempts: u32) -> Checks {
        Checks {
            attempts,
            interval: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            host: "127.0.0.1".into(),
            port,
            sni: Some("www.example.test".into()),
        }
    }

    #[tokio::test]
    async fn the_new_certificate_is_found_once_the_server_has_reloaded() {
        let old = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
        let new = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
        let server = Server::start(&old).await;
        let loopback = EgressPolicy::parse("127.0.0.1").unwrap();

        let e = serves(
            &loopback,
            &endpoint(server.port),
            &fingerprint(&new),
            quick(2),
        )
        .await
        .unwrap_err();
        assert!(e.contains(&format!("serves {}", fingerprint(&old))), "{e}");
        assert!(e.contains("after 2 checks"), "{e}");

        // The reload lands between the first and the second check.
        let reload = {
            let serving = server.serving.clone();
            let new = acceptor(&new);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                *serving.lock().unwrap() = new;
            })
        };
        serves(
            &loopback,
            &endpoint(server.port),
            &fingerprint(&new),
            quick(5),
        )
        .await
        .unwrap();
        reload.await.unwrap();
        server.reload(&old);
        assert!(serves(
            &loopback,
            &endpoint(server.port),
            &fingerprint(&new),
            quick(1)
        )
        .await
        .is_err());
    }

    #[tokio::test]
    async fn an_endpoint_the_policy_refuses_or_nobody_serves_fails_with_the_reason() {
        let cert = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
        let server = Server::start(&cert).await;
        let e = serves(
            &EgressPolicy::default(),
            &endpoint(server.port),
            &fingerprint(&cert),
            quick(1),
        )
        .await
        .unwrap_err();
        assert!(e.contains("unreachable") && e.contains("loopback"), "{e}");
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let loopback = EgressPolicy::parse("127.0.0.1").unwrap();
        let e = serves(&loopback, &endpoint(closed), &fingerprint(&cert), quick(1))
            .await
            .unwrap_err();
        assert!(e.contains("unreachable: connect"), "{e}");
    }
}
