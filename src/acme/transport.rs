//! How the ACME client reaches a CA: through the egress policy's connector
//! ([`crate::net::connector`]), over TLS, and within bounds on every
//! request, so that a CA that never answers, or answers without end, can
//! hold neither a worker's job slot nor its memory.
//!
//! The whole exchange — connecting, the TLS handshake, the answer's head and
//! its body — has [`RequestLimits::timeout`]; the body is read here, up to
//! [`RequestLimits::max_response_bytes`], and handed to instant-acme whole
//! (it reads every body in full anyway).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};

use crate::net::connector::{fenced_http, Fenced, Resolver};
use crate::net::egress::EgressPolicy;

/// How long one request to a CA may take, start to end.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from a CA: directories, orders and certificate
/// chains are a few kilobytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Bounds on each request to a CA (`CAP_ACME_REQUEST_TIMEOUT_SECS`,
/// `CAP_ACME_MAX_RESPONSE_BYTES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub timeout: Duration,
    pub max_response_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            timeout: DEFAULT_REQUEST_TIMEOUT,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

/// What reaching a CA takes: where connections may go, and the bounds on
/// each request.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    pub egress: EgressPolicy,
    pub limits: RequestLimits,
}

type Connector = HttpsConnector<Fenced<HttpConnector<Resolver>>>;

/// An HTTPS client for instant-acme whose connections pass the transport's
/// egress policy and whose requests keep to its limits.
pub fn bounded_client(tls: rustls::ClientConfig, transport: &Transport) -> Box<dyn HttpClient> {
    let limits = transport.limits;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(fenced_http(transport.egress.clone(), limits.timeout));
    Box::new(Bounded {
        client: HyperClient::builder(TokioExecutor::new()).build(connector),
        limits,
    })
}

struct Bounded {
    client: HyperClient<Connector, BodyWrapper<Bytes>>,
    limits: RequestLimits,
}

impl HttpClient for Bounded {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let limits = self.limits;
        let response = self.client.request(req);
        Box::pin(async move {
            let exchange = async {
                let (parts, body) = response.await.map_err(|e| chain(&e))?.into_parts();
                let body = Limited::new(body, limits.max_response_bytes)
                    .collect()
                    .await
                    .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
                        Some(_) => format!(
                            "the CA's answer is longer than {} bytes",
                            limits.max_response_bytes
                        ),
                        None => format!("reading the CA's answer: {}", chain(&*e)),
                    })?
                    .to_bytes();
                Ok::<_, String>(BytesResponse {
                    parts,
                    body: Box::new(body),
                })
            };
            let result = match tokio::time::timeout(limits.timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("the CA did not answer within {:?}", limits.timeout)),
            };
            result.map_err(|e| instant_acme::Error::Other(e.into()))
        })
    }
}

/// An error with its causes, as one line: hyper's own text ("client error
/// (Connect)") says little, the reason (an egress refusal, a TLS failure) is
/// in its sources.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A throw-away CA and a server certificate for 127.0.0.1 signed by it.
    fn test_pki() -> (rustls::ClientConfig, rustls::ServerConfig) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(leaf.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        (client, server)
    }

    /// A hostile "CA" on loopback: after the TLS handshake it reads the
    /// request and sends `head`, then `chunk` over and over, forever.
    async fn hostile_ca(
        server: rustls::ServerConfig,
        head: &'static str,
        chunk: &'static [u8],
    ) -> u16 {
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    if tls.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    loop {
                        if chunk.is_empty() {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                        } else if tls.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    fn get(port: u16) -> http::Request<BodyWrapper<Bytes>> {
        http::Request::get(format!("https://127.0.0.1:{port}/dir"))
            .body(BodyWrapper::default())
            .unwrap()
    }

    fn loopback(limits: RequestLimits) -> Transport {
        Transport {
            egress: EgressPolicy::parse("127.0.0.0/8").unwrap(),
            limits,
        }
    }

    async fn error_of(client: &dyn HttpClient, port: u16) -> String {
        match client.request(get(port)).await {
            Ok(r) => panic!("answered {}", r.parts.status),
            Err(e) => e.to_string(),
        }
    }

    #[tokio::test]
    async fn an_endless_answer_is_cut_off_at_the_cap() {
        let (client_tls, server_tls) = test_pki();
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
        // 1 KiB chunks, without end.
        let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
        let port = hostile_ca(
            server_tls,
            head,
            Box::leak(chunk.into_bytes().into_boxed_slice()),
        )
        .await;
        let limits = RequestLimits {
            timeout: Duration::from_secs(20),
            max_response_bytes: 64 * 1024,
        };
        let client = bounded_client(client_tls, &loopback(limits));
        let started = Instant::now();
        let e = error_of(&*client, port).await;
        assert_eq!(e, "the CA's answer is longer than 65536 bytes");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_ca_that_never_answers_is_given_up_on_in_time() {
        let (client_tls, server_tls) = test_pki();
        // Sends its head, then nothing: the body never ends.
        let port = hostile_ca(
            server_tls,
            "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            b"",
        )
        .await;
        // And one that accepts the connection and says nothing at all.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = silent.accept().await {
                held.push(tcp);
            }
        });
        let limits = RequestLimits {
            timeout: Duration::from_millis(1500),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        };
        let client = bounded_client(client_tls, &loopback(limits));
        for port in [port, silent_port] {
            let started = Instant::now();
            let e = error_of(&*client, port).await;
            assert_eq!(e, "the CA did not answer within 1.5s");
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
                "{took:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_refused_address_is_named_in_the_error() {
        let (client_tls, server_tls) = test_pki();
        let port = hostile_ca(
            server_tls,
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
            b"",
        )
        .await;
        let client = bounded_client(client_tls.clone(), &Transport::default());
        let e = error_of(&*client, port).await;
        assert!(
            e.contains("egress to 127.0.0.1 (loopback) refused for host 127.0.0.1: allow it with CAP_EGRESS_ALLOW"),
            "{e}"
        );
        // Allowed, the same server answers.
        let client = bounded_client(client_tls, &loopback(RequestLimits::default()));
        let answer = client.request(get(port)).await.unwrap();
        assert_eq!(answer.parts.status, 200);
    }
}
