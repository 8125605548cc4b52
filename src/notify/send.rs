//! Sending one notification on one channel, whatever its kind: the `notify`
//! job and the API's test message both come here. The channel's sealed
//! credential is opened for the send and dropped after it.

use std::time::Duration;

use url::Url;
use zeroize::Zeroizing;

use super::email::{self, Mail, SmtpSettings, SmtpTls};
use super::message::Notification;
use super::slack;
use crate::crypto::secrets::{SecretError, SecretRef, Secrets};
use crate::distribute::http::DeliveryError;
use crate::distribute::webhook;
use crate::domain::notifications::{Channel, ChannelDelivery};
use crate::net::egress::EgressPolicy;

/// How long one send may take.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Sends `notification` on `channel`, signed (webhook) or authenticated
/// (email) with its sealed credential, at `now_secs` (the database's clock).
pub async fn send(
    secrets: &Secrets,
    egress: &EgressPolicy,
    channel: &Channel,
    notification: &Notification,
    now_secs: i64,
) -> Result<(), DeliveryError> {
    let credential = || async {
        let secret = SecretRef::channel_credential(channel.project_id.as_deref(), &channel.id);
        secrets.get(&secret).await.map_err(|e| {
            let why = format!("the channel's credential: {e}");
            if e.is_transient() {
                DeliveryError::Transient(why)
            } else {
                DeliveryError::Refused(why)
            }
        })
    };
    match &channel.delivery {
        ChannelDelivery::Webhook { url: origin } => {
            // The whole URL is sealed; the settings hold its bound origin.
            let sealed = SecretRef::channel_url(channel.project_id.as_deref(), &channel.id);
            let url = secrets
                .open_url(&sealed, origin)
                .await
                .map_err(|e| match e {
                    SecretError::NotFound(_) => DeliveryError::Refused(
                        "the channel's URL is not sealed: delete the channel and make it again"
                            .into(),
                    ),
                    e if e.is_transient() => {
                        DeliveryError::Transient(format!("the channel's URL: {e}"))
                    }
                    e => DeliveryError::Refused(format!("the channel's URL: {e}")),
                })?;
            let url = parse_url(&url)?;
            let secret = credential().await?;
            let body = serde_json::to_vec(&notification.to_json()).expect("JSON serializes");
            webhook::post(
                egress,
                &url,
                &secret,
                &notification.dedup_key,
                &body,
                now_secs,
                TIMEOUT,
            )
            .await
            .map(|_| ())
        }
        ChannelDelivery::Slack => {
            let url = credential().await?;
            let url = parse_url(&String::from_utf8_lossy(&url))?;
            slack::send(egress, &url, notification, TIMEOUT).await
        }
        ChannelDelivery::Email(settings) => {
            let password = match &settings.user {
                Some(_) => Some(credential().await?),
                None => None,
            };
            let smtp = SmtpSettings {
                host: settings.host.clone(),
                port: settings.port,
                tls: match settings.tls.as_str() {
                    "implicit" => SmtpTls::Implicit,
                    "none" => SmtpTls::None,
                    _ => SmtpTls::StartTls,
                },
                credentials: settings.user.clone().zip(
                    password.map(|p| Zeroizing::new(String::from_utf8_lossy(&p).into_owned())),
                ),
                from: settings.from.clone(),
                to: settings.to.clone(),
                ca_pem: settings.ca_bundle_pem.clone().map(String::into_bytes),
            };
            let mail = Mail {
                subject: &notification.summary,
                text: &format!(
                    "{}\n\nKind: {}\nSeverity: {}",
                    notification.summary,
                    notification.kind,
                    notification.severity.as_str()
                ),
                dedup_key: &notification.dedup_key,
            };
            email::send(egress, &smtp, &mail, TIMEOUT).await
        }
    }
}

/// What a failed send may tell whoever can read it (the caller of a test
/// message, the outbox's `last_error`, the audit log): the receiver's
/// status when it answered, and why in our own words. Never the
/// receiver's bytes: a channel aimed at an internal service must not make
/// the API a way to read that service. The whole error goes to the log.
pub fn reason_to_show(e: &DeliveryError) -> String {
    match e {
        DeliveryError::Rejected { status, .. } => {
            format!("the receiver answered {status}: it refused the message")
        }
        DeliveryError::Transient(text) => match answered_status(text) {
            Some(status) => format!("the receiver answered {status}: busy or failing"),
            None => "no answer from the receiver (no connection, a timeout, or the \
                     connection closed); try again later"
                .into(),
        },
        DeliveryError::Egress(ours) => format!("not sent: {ours}"),
        DeliveryError::Refused(_) => "not sent: the channel's address, TLS settings or \
                                      credential refuse it (an operator finds the reason in \
                                      the server's log)"
            .into(),
    }
}

/// The status in a transient error made of an answer
/// ([`crate::distribute::http::refusal`]: "the receiver answered 503: …").
fn answered_status(text: &str) -> Option<u16> {
    let rest = text.strip_prefix("the receiver answered ")?;
    rest.get(..3)?.parse().ok()
}

fn parse_url(url: &str) -> Result<Url, DeliveryError> {
    Url::parse(url).map_err(|e| DeliveryError::Refused(format!("the channel's URL: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distribute::http::refusal;

    fn answer(status: u16, body: &str) -> reqwest::Response {
        reqwest::Response::from(
            http::Response::builder()
                .status(status)
                .body(body.to_string())
                .unwrap(),
        )
    }

    /// A channel aimed at an internal service answers with that service's
    /// page: what is shown of the failure holds its status, never its body.
    #[tokio::test]
    async fn what_is_shown_of_a_failure_holds_the_status_and_none_of_the_answer() {
        let page = "<h1>internal admin</h1> db_password=hunter2";
        for status in [400, 404, 429, 500, 503] {
            let error = refusal(answer(status, page)).await;
            assert!(
                error.to_string().contains("hunter2"),
                "the log keeps it all"
            );
            let shown = reason_to_show(&error);
            assert!(shown.contains(&status.to_string()), "{status}: {shown}");
            assert!(
                !shown.contains("hunter2") && !shown.contains("admin"),
                "{shown}"
            );
        }
        let refused = DeliveryError::Refused("address 10.0.0.1 (private) refused".into());
        assert!(!reason_to_show(&refused).contains("10.0.0.1"));
        let transient = DeliveryError::Transient("POST https://h: connection reset".into());
        assert!(reason_to_show(&transient).starts_with("no answer"));
    }
}
