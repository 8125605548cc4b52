//! The egress policy inside hyper's connector, for clients that speak HTTP
//! through hyper (the ACME client).
//!
//! hyper's `HttpConnector` resolves a host name through [`Resolver`], which
//! keeps only the addresses the policy permits. A URL naming an IP address
//! skips the resolver, so [`Fenced`] judges such a host before the connector
//! sees it. Either way the refusal comes before any connection is made.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use super::egress::EgressPolicy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A TCP connector for hyper whose every connection passes `policy`.
/// Plain `http://` is let through here; the TLS layer above decides whether
/// it is allowed at all.
pub fn fenced_http(
    policy: EgressPolicy,
    connect_timeout: Duration,
) -> Fenced<HttpConnector<Resolver>> {
    let mut http = HttpConnector::new_with_resolver(Resolver(policy.clone()));
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    Fenced {
        inner: http,
        policy,
    }
}

/// hyper's resolver hook: a name's addresses, only those the policy permits.
#[derive(Clone, Debug)]
pub struct Resolver(EgressPolicy);

impl Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.0.clone();
        // Port 0: the connector puts the URL's port in.
        Box::pin(async move {
            Ok(policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(std::io::Error::from)?
                .into_iter())
        })
    }
}

/// A connector that refuses a URL whose host is an IP address the policy
/// does not permit (hyper connects to those without asking the resolver).
#[derive(Clone, Debug)]
pub struct Fenced<C> {
    inner: C,
    policy: EgressPolicy,
}

impl<C> Service<Uri> for Fenced<C>
where
    C: Service<Uri>,
    C::Response: Send + 'static,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<C::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let host = uri.host().unwrap_or_default();
        if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
            if let Err(e) = self.policy.check(host, ip) {
                return Box::pin(std::future::ready(Err(e.into())));
            }
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connects through the fenced connector; the listener on loopback is
    /// there to show that a refusal never reaches it.
    async fn connect(policy: &str, uri: String) -> Result<(), BoxError> {
        let mut connector =
            fenced_http(EgressPolicy::parse(policy).unwrap(), Duration::from_secs(5));
        std::future::poll_fn(|cx| connector.poll_ready(cx)).await?;
        connector.call(uri.parse().unwrap()).await.map(|_| ())
    }

    #[tokio::test]
    async fn ip_literals_and_names_alike_are_judged_before_connecting() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        for uri in [
            format!("https://127.0.0.1:{port}/dir"),
            format!("https://localhost:{port}/dir"),
            format!("https://[::ffff:127.0.0.1]:{port}/dir"),
        ] {
            let e = connect("", uri.clone()).await.unwrap_err();
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            assert!(text.contains("refused for host"), "{uri}: {text}");
        }
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "the listener saw a connection");

        connect("127.0.0.0/8", format!("https://127.0.0.1:{port}/dir"))
            .await
            .unwrap();
        listener.accept().await.unwrap();
    }
}
