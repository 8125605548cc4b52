//! The Slack channel: a Slack-compatible incoming webhook (Slack,
//! Mattermost, Rocket.Chat take the same `{"text": …}`). The URL is itself
//! the credential — sealed like every secret, and never shown in errors
//! (only its origin).

use std::time::Duration;

use url::Url;

use super::message::Notification;
use crate::distribute::http::{pinned_client, refusal, transport_failure, DeliveryError};
use crate::net::egress::EgressPolicy;

/// Posts `notification` to the incoming webhook at `url`.
pub async fn send(
    egress: &EgressPolicy,
    url: &Url,
    notification: &Notification,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let answer = pinned_client(egress, url, timeout, None)
        .await?
        .post(url.clone())
        .json(&notification.to_slack())
        .send()
        .await
        .map_err(|e| transport_failure("POST", url, e))?;
    if answer.status().is_success() {
        Ok(())
    } else {
        Err(refusal(answer).await)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use actix_web::{web, App, HttpResponse, HttpServer};

    use super::*;
    use crate::domain::notifications::Event;

    #[actix_web::test]
    async fn the_message_reaches_an_incoming_webhook_and_its_path_stays_secret() {
        let seen: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let kept = seen.clone();
        let server = HttpServer::new(move || {
            let kept = kept.clone();
            App::new()
                .route(
                    "/services/T0/B0/secret-path",
                    web::post().to(move |body: web::Json<serde_json::Value>| {
                        let kept = kept.clone();
                        async move {
                            kept.lock().unwrap().push(body.into_inner());
                            HttpResponse::Ok().body("ok")
                        }
                    }),
                )
                .default_service(web::to(|| async {
                    HttpResponse::NotFound().body("no_service")
                }))
        })
        .workers(1)
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_web::rt::spawn(server);

        let loopback = EgressPolicy::parse("127.0.0.1").unwrap();
        let n = Notification::new(
            &Event::RenewalFailed {
                certificate_id: "crt_1".into(),
                serial: "0a".into(),
                consecutive: 3,
            },
            Some("prj_1"),
        );
        let hook = Url::parse(&format!(
            "http://127.0.0.1:{port}/services/T0/B0/secret-path"
        ))
        .unwrap();
        send(&loopback, &hook, &n, Duration::from_secs(10))
            .await
            .unwrap();
        let got = seen.lock().unwrap().clone();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0]["text"],
            "⚠️ Renewal of certificate crt_1 (serial 0a) failed, 3 times in a row"
        );

        let wrong = Url::parse(&format!(
            "http://127.0.0.1:{port}/services/T0/B0/revoked-path"
        ))
        .unwrap();
        let e = send(&loopback, &wrong, &n, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, DeliveryError::Rejected { status: 404, .. }),
            "{e}"
        );
        let free = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let closed = Url::parse(&format!(
            "http://127.0.0.1:{free}/services/T0/B0/secret-path"
        ))
        .unwrap();
        let e = send(&loopback, &closed, &n, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(
            e.is_transient() && !e.to_string().contains("secret-path"),
            "{e}"
        );
        handle.stop(true).await;
    }
}
