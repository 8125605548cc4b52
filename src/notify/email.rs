//! The email channel: one message over SMTP.
//!
//! The server is a tenant's, so its name is resolved through the egress
//! policy and the connection made to a permitted address, while TLS still
//! checks the certificate against the configured name. STARTTLS is required
//! unless the channel says `tls: none` (a relay on the same host); an
//! implicit-TLS port (465) is `tls: implicit`.
//!
//! The message's `Message-ID` is derived from the event's deduplication key,
//! so the same event sent twice (at-least-once delivery) carries the same id
//! and the key itself, for filters and ticket systems that drop duplicates
//! (most mailboxes show both).

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::distribute::http::{egress_failure, DeliveryError};
use crate::domain::certs::hex;
use crate::net::egress::EgressPolicy;

/// How long one delivery may take, every address tried, connection and
/// every command included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connect, then STARTTLS, refusing a server that does not offer it.
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: only for a relay on a trusted network, set explicitly.
    None,
}

/// Where and as whom a channel sends.
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    /// User name and password; `None` sends unauthenticated.
    pub credentials: Option<(String, Zeroizing<String>)>,
    pub from: String,
    pub to: Vec<String>,
    /// The server's CA (PEM), for a private one; public roots otherwise.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

/// One notification as a mail.
#[derive(Debug, Clone)]
pub struct Mail<'a> {
    pub subject: &'a str,
    pub text: &'a str,
    pub dedup_key: &'a str,
}

/// The `Message-ID` of the message for `dedup_key`.
pub fn message_id(dedup_key: &str) -> String {
    let digest = Sha256::digest(dedup_key.as_bytes());
    format!("<{}@certautopilot>", hex(&digest[..16]))
}

/// Sends `mail` to every recipient of `settings`.
pub async fn send(
    egress: &EgressPolicy,
    settings: &SmtpSettings,
    mail: &Mail<'_>,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let message = build(settings, mail)?;
    tokio::time::timeout(timeout, send_message(egress, settings, &message, timeout))
        .await
        .unwrap_or_else(|_| {
            Err(DeliveryError::Transient(format!(
                "SMTP {}:{}: no delivery within {}s",
                settings.host,
                settings.port,
                timeout.as_secs()
            )))
        })
}

async fn send_message(
    egress: &EgressPolicy,
    settings: &SmtpSettings,
    message: &Message,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let addrs = egress
        .resolve(&settings.host, settings.port)
        .await
        .map_err(egress_failure)?;
    let mut last = None;
    for addr in addrs {
        match send_to(&addr.ip().to_string(), settings, message, timeout).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| DeliveryError::Transient("no address to connect to".into())))
}

fn build(settings: &SmtpSettings, mail: &Mail<'_>) -> Result<Message, DeliveryError> {
    let mailbox = |what: &str, address: &str| {
        address
            .parse::<Mailbox>()
            .map_err(|e| DeliveryError::Refused(format!("{what} {address:?}: {e}")))
    };
    if settings.to.is_empty() {
        return Err(DeliveryError::Refused(
            "the channel has no recipient".into(),
        ));
    }
    let mut builder = Message::builder()
        .from(mailbox("from", &settings.from)?)
        .subject(mail.subject)
        .message_id(Some(message_id(mail.dedup_key)))
        .header(ContentType::TEXT_PLAIN);
    for to in &settings.to {
        builder = builder.to(mailbox("to", to)?);
    }
    let text = format!(
        "{}\n\n-- \nDeduplication key: {}\n",
        mail.text, mail.dedup_key
    );
    builder
        .body(text)
        .map_err(|e| DeliveryError::Refused(format!("the message: {e}")))
}

async fn send_to(
    ip: &str,
    settings: &SmtpSettings,
    message: &Message,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let tls = || {
        let mut parameters = TlsParameters::builder(settings.host.clone());
        if let Some(pem) = &settings.ca_pem {
            let root = Certificate::from_pem(pem)
                .map_err(|e| DeliveryError::Refused(format!("the SMTP server's CA: {e}")))?;
            parameters = parameters.add_root_certificate(root);
        }
        parameters
            .build_rustls()
            .map_err(|e| DeliveryError::Refused(format!("TLS settings: {e}")))
    };
    let tls = match settings.tls {
        SmtpTls::StartTls => Tls::Required(tls()?),
        SmtpTls::Implicit => Tls::Wrapper(tls()?),
        SmtpTls::None => Tls::None,
    };
    // The address the policy permitted; the name stays the one TLS checks.
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(ip)
        .port(settings.port)
        .tls(tls)
        .timeout(Some(timeout));
    if let Some((user, password)) = &settings.credentials {
        transport = transport.credentials(Credentials::new(user.clone(), password.to_string()));
    }
    transport
        .build()
        .send(message.clone())
        .await
        .map(|_| ())
        .map_err(|e| {
            let text = format!("SMTP {}:{}: {e}", settings.host, settings.port);
            if e.is_permanent() {
                DeliveryError::Rejected {
                    status: e.status().map(u16::from).unwrap_or(550),
                    body: text,
                }
            } else if e.is_tls() || e.is_client() || failed_tls(&e) {
                // A certificate we do not trust, no STARTTLS offered, no
                // authentication mechanism in common: the same again until
                // the channel is changed.
                DeliveryError::Refused(text)
            } else {
                DeliveryError::Transient(text)
            }
        })
}

/// Whether rustls refused the handshake somewhere in `e`'s causes. lettre
/// reports that as a connection error, with the rustls error inside an
/// `io::Error` (whose `source()` skips it, hence `get_ref`).
fn failed_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(error) = cause {
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        if error.is::<rustls::Error>() || inner.is_some_and(|i| i.is::<rustls::Error>()) {
            return true;
        }
        cause = error.source();
    }
    false
}
