//! One signed POST to a webhook: the `webhook` distribution target and the
//! webhook notification channel (docs/distribution.md). The URL is a
//! tenant's, so the request goes through [`pinned_client`]: the egress
//! policy, no redirects.

use std::time::Duration;

use url::Url;

pub use super::http::DeliveryError;
use super::http::{pinned_client, refusal, transport_failure};
use crate::crypto::webhook_signature::{self, SIGNATURE_HEADER};
use crate::net::egress::EgressPolicy;

/// The header naming the delivery, the same on every retry, so a receiver
/// can drop a duplicate that at-least-once delivery made.
pub const DELIVERY_HEADER: &str = "CertAutoPilot-Delivery";

/// How long one POST may take, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// POSTs JSON `body` to `url`, signed with `secret` at `now_secs` (the
/// sender's Unix time, which the receiver compares with its clock), naming
/// the delivery `delivery_id`. The answer's status on 2xx.
pub async fn post(
    policy: &EgressPolicy,
    url: &Url,
    secret: &[u8],
    delivery_id: &str,
    body: &[u8],
    now_secs: i64,
    timeout: Duration,
) -> Result<u16, DeliveryError> {
    let answer = pinned_client(policy, url, timeout, None)
        .await?
        .post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            SIGNATURE_HEADER,
            webhook_signature::sign(secret, now_secs, body),
        )
        .header(DELIVERY_HEADER, delivery_id)
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| transport_failure("POST", url, e))?;
    if answer.status().is_success() {
        return Ok(answer.status().as_u16());
    }
    Err(refusal(answer).await)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

    use super::*;
    use crate::crypto::webhook_signature::{verify, DEFAULT_TOLERANCE_SECS};

    const SECRET: &[u8] = b"target secret";

    /// A receiver on loopback that checks the signature as a customer's
    /// would, and answers what the path asks for.
    async fn receiver(seen: Arc<Mutex<Vec<String>>>) -> (Url, actix_web::dev::ServerHandle) {
        let server = HttpServer::new(move || {
            let seen = seen.clone();
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let seen = seen.clone();
                async move {
                    let header = req
                        .headers()
                        .get(SIGNATURE_HEADER)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs() as i64;
                    if verify(SECRET, header, &body, now, DEFAULT_TOLERANCE_SECS).is_err() {
                        return HttpResponse::Unauthorized().body("bad signature");
                    }
                    let delivery = req.headers().get(DELIVERY_HEADER).unwrap();
                    seen.lock()
                        .unwrap()
                        .push(delivery.to_str().unwrap().to_string());
                    match req.path() {
                        "/busy" => HttpResponse::ServiceUnavailable().body("try later"),
                        "/gone" => HttpResponse::Gone().body("no such hook"),
                        "/moved" => HttpResponse::Found()
                            .insert_header(("Location", "http://169.254.169.254/"))
                            .finish(),
                        _ => HttpResponse::NoContent().finish(),
                    }
                }
            }))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        (
            Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
            handle,
        )
    }

    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    #[actix_web::test]
    async fn a_signed_post_is_accepted_and_answers_are_classified() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (base, server) = receiver(seen.clone()).await;
        let loopback = EgressPolicy::parse("127.0.0.1").unwrap();
        let body = br#"{"event":"certificate.issued"}"#;
        let send = |path: &str, secret: &'static [u8]| {
            let url = base.join(path).unwrap();
            let loopback = loopback.clone();
            async move { post(&loopback, &url, secret, "d-1", body, now(), DEFAULT_TIMEOUT).await }
        };
        assert_eq!(send("/hook", SECRET).await, Ok(204));
        assert_eq!(seen.lock().unwrap().as_slice(), ["d-1"]);

        let wrong = send("/hook", b"another secret").await.unwrap_err();
        assert_eq!(
            wrong,
            DeliveryError::Rejected {
                status: 401,
                body: "bad signature".into()
            }
        );
        let busy = send("/busy", SECRET).await.unwrap_err();
        assert!(busy.is_transient(), "{busy}");
        let gone = send("/gone", SECRET).await.unwrap_err();
        assert!(
            matches!(gone, DeliveryError::Rejected { status: 410, .. }),
            "{gone}"
        );
        let moved = send("/moved", SECRET).await.unwrap_err();
        assert!(
            matches!(moved, DeliveryError::Rejected { status: 302, .. }),
            "a redirect is not followed: {moved}"
        );
        server.stop(true).await;
    }

    #[actix_web::test]
    async fn the_egress_policy_refuses_before_anything_is_sent() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (base, server) = receiver(seen.clone()).await;
        let url = base.join("/hook").unwrap();
        let e = post(
            &EgressPolicy::default(),
            &url,
            SECRET,
            "d",
            b"{}",
            now(),
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DeliveryError::Egress(_)), "{e}");
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(seen.lock().unwrap().is_empty());
        let ftp = Url::parse("ftp://127.0.0.1/x").unwrap();
        let e = post(
            &EgressPolicy::default(),
            &ftp,
            SECRET,
            "d",
            b"{}",
            now(),
            DEFAULT_TIMEOUT,
        )
        .await
        .unwrap_err();
        assert!(matches!(e, DeliveryError::Refused(_)), "{e}");
        server.stop(true).await;
    }

    #[actix_web::test]
    async fn a_receiver_that_is_not_there_is_worth_a_retry_and_the_error_hides_the_path() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("http://127.0.0.1:{port}/secret-token-in-path?k=v")).unwrap();
        let loopback = EgressPolicy::parse("127.0.0.1").unwrap();
        let e = post(&loopback, &url, SECRET, "d", b"{}", now(), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(e.is_transient(), "{e}");
        assert!(!e.to_string().contains("secret-token"), "{e}");
    }
}
