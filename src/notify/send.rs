//! Sending one notification on one channel, whatever its kind: the `notify`
//! job and the API's test message both come here. The channel's sealed
//! credential is opened for the send and dropped after it.

use std::time::Duration;

use url::Url;
use zeroize::Zeroizing;

use super::email::{self, Mail, SmtpSettings, SmtpTls};
use super::message::Notification;
use super::slack;
use crate::crypto::secrets::{SecretRef, Secrets};
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
        ChannelDelivery::Webhook { url } => {
            let url = parse_url(url)?;
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

fn parse_url(url: &str) -> Result<Url, DeliveryError> {
    Url::parse(url).map_err(|e| DeliveryError::Refused(format!("the channel's URL: {e}")))
}
