//! SIEM forwarding: the scheduler leader ships audit records, in `seq`
//! order and at least once, to each configured sink:
//!
//! - `syslog`: RFC 5424 messages over TCP with octet-counting framing
//!   (RFC 6587), optionally over TLS (`CAP_SIEM_SYSLOG_TLS`);
//! - `webhook`: JSON batches POSTed to an HTTPS URL; a 2xx answer is the
//!   acknowledgement.
//!
//! Each sink's position (the last `seq` delivered) lives in
//! `audit_forwarders`, written under the leader's term, so a new leader
//! continues where the last one stopped. A record may arrive twice (sent,
//! then the forwarder died before storing its position); each carries its
//! `seq` and `hash` so the receiver can drop duplicates. Over plain syslog
//! TCP there is no application-level acknowledgement: what the kernel
//! accepted counts as delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::audit::read_range;
use crate::domain::backoff::Backoff;
use crate::observe::metrics::Metrics;
use crate::queue::lease::{Leases, Term};
use crate::store::short;

pub const FORWARDERS_COLLECTION: &str = "audit_forwarders";
/// RFC 5424 facility 13 (log audit), severity 6 (informational).
const PRI: u8 = 13 * 8 + 6;
/// The structured-data id; 32473 is the enterprise number RFC 5612 reserves
/// for documentation and examples.
const SD_ID: &str = "audit@32473";

/// Where audit records go (from `CAP_SIEM_*`).
#[derive(Debug, Clone, Default)]
pub struct SiemConfig {
    pub syslog: Option<SyslogConfig>,
    pub webhook: Option<WebhookConfig>,
    /// Records per send.
    pub batch: i64,
    /// How often an idle forwarder looks for new records.
    pub poll: Duration,
    /// HOSTNAME in syslog messages.
    pub hostname: String,
}

#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// `host:port`.
    pub addr: String,
    pub tls: bool,
    /// Extra trusted CA certificates (PEM), for a private CA.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    pub ca_file: Option<PathBuf>,
}

impl SiemConfig {
    pub fn enabled(&self) -> bool {
        self.syslog.is_some() || self.webhook.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Config(String),
}

/// One RFC 5424 message for an audit record (without framing).
pub fn syslog_message(record: &Document, hostname: &str) -> String {
    let seq = record.get_i64("seq").unwrap_or(0);
    let time = record
        .get_datetime("time")
        .ok()
        .and_then(|t| t.try_to_rfc3339_string().ok())
        .unwrap_or_else(|| "-".into());
    let field = |name| sd_escape(record.get_str(name).unwrap_or("-"));
    let msgid: String = printable(record.get_str("action").unwrap_or("-"), 32);
    format!(
        "<{PRI}>1 {time} {host} certautopilot - {msgid} [{SD_ID} seq=\"{seq}\" hash=\"{hash}\" prev_hash=\"{prev}\" actor=\"{actor}\" target=\"{target}\"] {body}",
        host = printable(hostname, 255),
        hash = field("hash"),
        prev = field("prev_hash"),
        actor = field("actor"),
        target = field("target"),
        body = record_json(record),
    )
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn octet_counted(message: &str) -> String {
    format!("{} {message}", message.len())
}

/// The record as JSON (relaxed extended JSON for BSON types).
pub fn record_json(record: &Document) -> serde_json::Value {
    let mut record = record.clone();
    record.remove("_id");
    Bson::Document(record).into_relaxed_extjson()
}

/// PARAM-VALUE escaping (RFC 5424 6.3.3): `"`, `\` and `]`.
fn sd_escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace(']', "\\]")
}

/// HOSTNAME and MSGID allow printable US-ASCII without spaces.
fn printable(value: &str, max: usize) -> String {
    let s: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}

fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, SinkError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .map_err(|e| SinkError::Config(format!("CA file {}: {e}", path.display())))?
        {
            let cert =
                cert.map_err(|e| SinkError::Config(format!("CA file {}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| SinkError::Config(format!("CA file {}: {e}", path.display())))?;
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SinkError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

type Stream = Box<dyn AsyncWrite + Unpin + Send>;

/// A sink: delivers a batch, or fails (and is reconnected next time).
enum Sink {
    Syslog {
        config: SyslogConfig,
        hostname: String,
        stream: Option<Stream>,
    },
    Webhook {
        url: String,
        client: reqwest::Client,
    },
}

impl Sink {
    fn name(&self) -> &'static str {
        match self {
            Sink::Syslog { .. } => "syslog",
            Sink::Webhook { .. } => "webhook",
        }
    }

    async fn send(&mut self, records: &[Document]) -> Result<(), SinkError> {
        match self {
            Sink::Syslog {
                config,
                hostname,
                stream,
            } => {
                if stream.is_none() {
                    *stream = Some(connect_syslog(config).await?);
                }
                let mut frames = String::new();
                for r in records {
                    frames.push_str(&octet_counted(&syslog_message(r, hostname)));
                }
                let s = stream.as_mut().expect("connected");
                // A receiver that stops reading must not stall the forwarder
                // for good: the batch fails and is sent again.
                let written = tokio::time::timeout(SYSLOG_WRITE_TIMEOUT, async {
                    s.write_all(frames.as_bytes()).await?;
                    s.flush().await
                })
                .await
                .unwrap_or_else(|_| {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("not written within {} s", SYSLOG_WRITE_TIMEOUT.as_secs()),
                    ))
                });
                if let Err(e) = written {
                    *stream = None;
                    return Err(SinkError::Io(format!("syslog {}: {e}", config.addr)));
                }
                Ok(())
            }
            Sink::Webhook { url, client } => {
                let body = serde_json::json!({
                    "records": records.iter().map(record_json).collect::<Vec<_>>(),
                });
                let response = client
                    .post(url.as_str())
                    .json(&body)
                    .send()
                    .await
                    .map_err(|e| SinkError::Io(webhook_failure(e)))?;
                if !response.status().is_success() {
                    return Err(SinkError::Io(format!(
                        "webhook answered {}",
                        response.status()
                    )));
                }
                Ok(())
            }
        }
    }
}

/// How long one batch may take to write to the syslog receiver.
const SYSLOG_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect_syslog(config: &SyslogConfig) -> Result<Stream, SinkError> {
    let io = |e: std::io::Error| SinkError::Io(format!("syslog {}: {e}", config.addr));
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&config.addr))
        .await
        .map_err(|_| SinkError::Io(format!("syslog {}: connect timed out", config.addr)))?
        .map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    if !config.tls {
        return Ok(Box::new(tcp));
    }
    let host = config
        .addr
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(['[', ']']))
        .unwrap_or(&config.addr)
        .to_string();
    let name = ServerName::try_from(host)
        .map_err(|e| SinkError::Config(format!("syslog {}: {e}", config.addr)))?;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(tls_config(config.ca_file.as_ref())?));
    let tls = connector.connect(name, tcp).await.map_err(io)?;
    Ok(Box::new(tls))
}

fn sinks(config: &SiemConfig) -> Result<Vec<Sink>, SinkError> {
    let mut sinks = Vec::new();
    if let Some(syslog) = &config.syslog {
        sinks.push(Sink::Syslog {
            config: syslog.clone(),
            hostname: config.hostname.clone(),
            stream: None,
        });
    }
    if let Some(webhook) = &config.webhook {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .use_rustls_tls();
        if let Some(path) = &webhook.ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| SinkError::Config(format!("CA file {}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| SinkError::Config(format!("CA file {}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        sinks.push(Sink::Webhook {
            url: webhook.url.clone(),
            client: builder
                .build()
                .map_err(|e| SinkError::Config(e.to_string()))?,
        });
    }
    Ok(sinks)
}

/// Forwards to every sink until `stop` is cancelled (leadership lost or
/// shutdown). Each sink runs on its own, so a slow one does not hold up
/// another.
pub async fn run(
    leases: Leases,
    term: Term,
    config: SiemConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let sinks = match sinks(&config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "SIEM forwarding is misconfigured; nothing is forwarded");
            return;
        }
    };
    let tasks = sinks.into_iter().map(|sink| {
        forward(
            leases.clone(),
            term.clone(),
            sink,
            config.clone(),
            metrics.clone(),
            stop.clone(),
        )
    });
    futures::future::join_all(tasks).await;
}

async fn forward(
    leases: Leases,
    term: Term,
    mut sink: Sink,
    config: SiemConfig,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let name = sink.name();
    let store = leases.store().clone();
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
    let mut failures = 0u32;
    let mut position: Option<i64> = None;
    loop {
        let step = async {
            let after = match position {
                Some(p) => p,
                None => {
                    let stored = store
                        .collection(FORWARDERS_COLLECTION)
                        .find_one(doc! { "_id": name })
                        .await
                        .map_err(|e| short(&e))?;
                    stored.and_then(|d| d.get_i64("seq").ok()).unwrap_or(0)
                }
            };
            position = Some(after);
            let records = read_range(&store, after, config.batch)
                .await
                .map_err(|e| short(&e))?;
            let Some(last) = records.last().and_then(|r| r.get_i64("seq").ok()) else {
                return Ok(false);
            };
            sink.send(&records).await.map_err(|e| e.to_string())?;
            leases
                .update_as_leader(
                    &term,
                    FORWARDERS_COLLECTION,
                    doc! { "_id": name },
                    doc! { "$set": { "seq": last }, "$currentDate": { "updated_at": true } },
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
            position = Some(last);
            metrics
                .audit_forwarded_seq
                .with_label_values(&[name])
                .set(last);
            Ok::<bool, String>(true)
        };
        let pause = match step.await {
            Ok(true) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(false) => config.poll,
            Err(e) => {
                failures += 1;
                // Read the stored position again: another leader may have moved it.
                position = None;
                let delay = backoff.delay(failures);
                tracing::warn!(sink = name, error = %e, retry_in_ms = delay.as_millis() as u64, "forwarding audit records failed");
                delay
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// A failed webhook call, for logs and metrics: without the URL, which
/// may carry a credential (a token in its path or query).
fn webhook_failure(e: reqwest::Error) -> String {
    format!("webhook: {}", e.without_url())
}

#[cfg(test)]
mod tests {

    #[tokio::test]
    async fn a_failed_webhook_call_is_described_without_its_url() {
        // Nothing listens on port 1: a real connection failure.
        let url = "http://127.0.0.1:1/hooks/s3cr3t-token?key=hunter2";
        let e = reqwest::Client::new().post(url).send().await.unwrap_err();
        assert!(
            e.to_string().contains("s3cr3t"),
            "reqwest names the URL: {e}"
        );
        let described = webhook_failure(e);
        assert!(
            !described.contains("s3cr3t") && !described.contains("hunter2"),
            "{described}"
        );
        assert!(described.starts_with("webhook: "), "{described}");
    }
    use super::*;
    use mongodb::bson::DateTime;

    #[test]
    fn a_record_becomes_one_octet_counted_rfc5424_message() {
        let record = doc! {
            "_id": 7i64, "seq": 7i64, "time": DateTime::from_millis(1_700_000_000_123),
            "actor": "w-1", "action": "job.completed", "target": "jobs/\"x]",
            "details": { "n": 1 }, "prev_hash": "aa", "hash": "bb",
        };
        let message = syslog_message(&record, "host one");
        assert!(
            message.starts_with("<110>1 2023-11-14T22:13:20.123Z hostone certautopilot - job.completed [audit@32473 seq=\"7\" hash=\"bb\""),
            "{message}"
        );
        assert!(message.contains(r#"target="jobs/\"x\]""#), "{message}");
        assert!(
            message.ends_with(r#""seq":7}"#) || message.contains(r#""seq":7"#),
            "{message}"
        );
        let framed = octet_counted(&message);
        let (len, rest) = framed.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rest.len());
    }
}
