//! Configuration: every knob is a `CAP_*` environment variable, overridable by
//! a flag, with a documented default (see README "Configuration").
//!
//! Values arrive as strings (clap binds flag and variable) and are validated
//! here, so that a bad value produces one line naming the variable and the
//! process exits with code 2.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_JOB_LEASE_SECS: u64 = 60;
pub const DEFAULT_LEADER_LEASE_SECS: u64 = 15;
pub const DEFAULT_WORKER_CONCURRENCY: usize = 8;
pub const DEFAULT_WORKER_PRESENCE_SECS: u64 = 10;
pub const DEFAULT_CLAIM_POLL_MS: u64 = 500;
pub const DEFAULT_ELECTION_RETRY_SECS: u64 = 30;
pub const DEFAULT_READYZ_GRACE_SECS: u64 = 10;
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 25;
/// The longest a token made through the API lives, and its lifetime when
/// the request names none: 90 days.
pub const DEFAULT_API_TOKEN_MAX_LIFETIME_SECS: u64 = 90 * 86_400;
pub const DEFAULT_API_TOKEN_CACHE_SECS: u64 = 5;
/// Requests per minute one API token may make, over every api replica:
/// 20 a second, sustained.
pub const DEFAULT_API_RATE_LIMIT: u64 = 1200;
/// Live API tokens one project may hold (tokens minted past it: 409).
pub const DEFAULT_MAX_TOKENS_PER_PROJECT: u64 = 500;
/// Notification channels one project, or the installation, may hold.
pub const DEFAULT_MAX_CHANNELS_PER_PROJECT: u64 = 50;
pub const DEFAULT_HOUSEKEEPING_SECS: u64 = 60;
pub const DEFAULT_RENEWAL_SCAN_SECS: u64 = 30;
pub const DEFAULT_DRIFT_SCAN_SECS: u64 = 3600;
pub const DEFAULT_ISSUE_BACKOFF_BASE_SECS: u64 = 60;
pub const DEFAULT_ISSUE_BACKOFF_MAX_SECS: u64 = 6 * 3600;
pub const DEFAULT_DISTRIBUTE_VALIDATE_ATTEMPTS: u64 = 6;
pub const DEFAULT_DISTRIBUTE_VALIDATE_INTERVAL_SECS: u64 = 5;
pub use crate::queue::jobs::DEFAULT_MAX_ATTEMPTS as DEFAULT_JOB_MAX_ATTEMPTS;
pub const DEFAULT_JOB_RETENTION_SECS: u64 = 7 * 24 * 3600;
/// One attempt of a job: longer than the longest DNS-01 propagation wait an
/// issuer may ask for (3,600 s), with five minutes for the ACME requests and
/// polls around it.
pub const DEFAULT_JOB_ATTEMPT_TIMEOUT_SECS: u64 = 3900;
pub const DEFAULT_ACME_REQUEST_TIMEOUT_SECS: u64 =
    crate::acme::transport::DEFAULT_REQUEST_TIMEOUT.as_secs();
pub const DEFAULT_ACME_MAX_RESPONSE_BYTES: u64 =
    crate::acme::transport::DEFAULT_MAX_RESPONSE_BYTES as u64;
pub const DEFAULT_LOG_FORMAT: &str = "json";
pub const DEFAULT_KEK_ROTATION_CHECK_SECS: u64 = 30;
pub const DEFAULT_SIEM_BATCH: u64 = 100;
pub const DEFAULT_SIEM_POLL_MS: u64 = 1000;
pub const DEFAULT_KEK_PROVIDER: &str = "file";
pub const DEFAULT_PKCS11_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const DEFAULT_PKCS11_TOKEN_LABEL: &str = "certautopilot";
pub const DEFAULT_ADAPTER_ADDR: &str = "0.0.0.0:6443";
/// The common name kube-apiserver's front-proxy client certificate has
/// when kubeadm makes it.
pub const DEFAULT_ADAPTER_ALLOWED_NAMES: &str = "front-proxy-client";

/// Flags shared by every command that talks to the database. Each one reads
/// its `CAP_*` variable when the flag is absent.
#[derive(Args, Debug, Clone, Default)]
pub struct CommonArgs {
    /// MongoDB connection string (required), e.g.
    /// mongodb://m0,m1,m2/certautopilot?replicaSet=rs0
    #[arg(long, env = "CAP_MONGO_URI", hide_env_values = true)]
    pub mongo_uri: Option<String>,
    /// Retry MongoDB errors caused by an election for this long [default: 30]
    #[arg(long, env = "CAP_ELECTION_RETRY_SECS")]
    pub election_retry_secs: Option<String>,
    /// Log format: json or text [default: json]
    #[arg(long, env = "CAP_LOG_FORMAT")]
    pub log_format: Option<String>,
    #[command(flatten)]
    pub kek: KekArgs,
}

/// Where the key-encryption keys are.
#[derive(Args, Debug, Clone, Default)]
pub struct KekArgs {
    /// KEK provider: file or pkcs11 [default: file]
    #[arg(long, env = "CAP_KEK_PROVIDER")]
    pub kek_provider: Option<String>,
    /// Key-ring file of the file provider (mode 0600; required with it)
    #[arg(long, env = "CAP_KEK_FILE")]
    pub kek_file: Option<String>,
    /// PKCS#11 module of the pkcs11 provider [default: /usr/lib/softhsm/libsofthsm2.so]
    #[arg(long, env = "CAP_PKCS11_MODULE")]
    pub pkcs11_module: Option<String>,
    /// Label of the PKCS#11 token holding the KEKs [default: certautopilot]
    #[arg(long, env = "CAP_PKCS11_TOKEN_LABEL")]
    pub pkcs11_token_label: Option<String>,
    /// User PIN of that token (required with the pkcs11 provider)
    #[arg(long, env = "CAP_PKCS11_PIN", hide_env_values = true)]
    pub pkcs11_pin: Option<SecretArg>,
}

/// A secret setting (the PKCS#11 PIN): wiped from memory when dropped, and
/// never shown by `Debug` (the argument structs derive it).
#[derive(Clone)]
pub struct SecretArg(pub zeroize::Zeroizing<String>);

impl From<String> for SecretArg {
    fn from(value: String) -> Self {
        SecretArg(zeroize::Zeroizing::new(value))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl KekArgs {
    pub fn resolve(&self) -> Result<crate::crypto::kek::KekConfig, ConfigError> {
        use crate::crypto::kek::KekConfig;
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        match set(&self.kek_provider).as_deref().unwrap_or(DEFAULT_KEK_PROVIDER) {
            "file" => match set(&self.kek_file) {
                Some(path) => Ok(KekConfig::File { path: path.into() }),
                None => Err(ConfigError(
                    "CAP_KEK_FILE is not set (or pass --kek-file): the file KEK provider needs its key ring; create one with `certautopilot kek init --file PATH`".into(),
                )),
            },
            "pkcs11" => Ok(KekConfig::Pkcs11 {
                module: set(&self.pkcs11_module)
                    .unwrap_or_else(|| DEFAULT_PKCS11_MODULE.into())
                    .into(),
                token_label: set(&self.pkcs11_token_label)
                    .unwrap_or_else(|| DEFAULT_PKCS11_TOKEN_LABEL.into()),
                pin: match &self.pkcs11_pin {
                    Some(pin) if !pin.0.trim().is_empty() => {
                        zeroize::Zeroizing::new(pin.0.trim().to_string())
                    }
                    _ => return Err(ConfigError(
                        "CAP_PKCS11_PIN is not set: the pkcs11 KEK provider needs the token's user PIN".into(),
                    )),
                },
            }),
            other => Err(ConfigError(format!(
                "invalid CAP_KEK_PROVIDER {other:?}: expected file or pkcs11"
            ))),
        }
    }
}

/// Flags of the long-running workloads (`api`, `worker`, `scheduler`, `all`).
#[derive(Args, Debug, Clone, Default)]
pub struct WorkloadArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address serving /healthz, /readyz, /metrics (and the API) [default: 127.0.0.1:8080]
    #[arg(long, env = "CAP_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// A second listener (api role) serving nothing but ACME HTTP-01 challenges, e.g. 0.0.0.0:80 [default: none]
    #[arg(long, env = "CAP_CHALLENGE_ADDR")]
    pub challenge_addr: Option<String>,
    /// A listener of its own for /metrics, which then leaves the main one, e.g. 0.0.0.0:9090 [default: none]
    #[arg(long, env = "CAP_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// PEM certificate chain: the main listener serves HTTPS (with CAP_HTTP_TLS_KEY) [default: none]
    #[arg(long, env = "CAP_HTTP_TLS_CERT")]
    pub http_tls_cert: Option<String>,
    /// PEM private key of CAP_HTTP_TLS_CERT [default: none]
    #[arg(long, env = "CAP_HTTP_TLS_KEY")]
    pub http_tls_key: Option<String>,
    /// Job lease length in seconds [default: 60]
    #[arg(long, env = "CAP_JOB_LEASE_SECS")]
    pub job_lease_secs: Option<String>,
    /// Scheduler leader lease length in seconds [default: 15]
    #[arg(long, env = "CAP_LEADER_LEASE_SECS")]
    pub leader_lease_secs: Option<String>,
    /// Jobs a worker runs at once [default: 8]
    #[arg(long, env = "CAP_WORKER_CONCURRENCY")]
    pub worker_concurrency: Option<String>,
    /// A worker's presence lease in seconds; its jobs are reclaimed this soon after it dies [default: 10]
    #[arg(long, env = "CAP_WORKER_PRESENCE_SECS")]
    pub worker_presence_secs: Option<String>,
    /// How often an idle worker looks for runnable jobs, in milliseconds [default: 500]
    #[arg(long, env = "CAP_CLAIM_POLL_MS")]
    pub claim_poll_ms: Option<String>,
    /// How long the database may be unreachable before /readyz fails [default: 10]
    #[arg(long, env = "CAP_READYZ_GRACE_SECS")]
    pub readyz_grace_secs: Option<String>,
    /// Longest a SIGTERM'd process spends draining before it exits [default: 25]
    #[arg(long, env = "CAP_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<String>,
    /// Longest lifetime of a token made through the API, and its lifetime when none is asked for [default: 7776000, 90 days]
    #[arg(long, env = "CAP_API_TOKEN_MAX_LIFETIME_SECS")]
    pub api_token_max_lifetime_secs: Option<String>,
    /// How long an api replica remembers a checked token; a revoked token works on other replicas for up to this long; 0 checks every request [default: 5]
    #[arg(long, env = "CAP_API_TOKEN_CACHE_SECS")]
    pub api_token_cache_secs: Option<String>,
    /// Requests per minute one API token may make, summed over every api replica; past it, 429 with Retry-After; 0: no limit [default: 1200]
    #[arg(long, env = "CAP_API_RATE_LIMIT")]
    pub api_rate_limit: Option<String>,
    /// Live API tokens one project may hold; minting past it is refused (409) [default: 500]
    #[arg(long, env = "CAP_MAX_TOKENS_PER_PROJECT")]
    pub max_tokens_per_project: Option<String>,
    /// Notification channels one project (and the installation) may hold; creating past it is refused (409) [default: 50]
    #[arg(long, env = "CAP_MAX_CHANNELS_PER_PROJECT")]
    pub max_channels_per_project: Option<String>,
    /// How often the scheduler leader enqueues housekeeping [default: 60]
    #[arg(long, env = "CAP_HOUSEKEEPING_SECS")]
    pub housekeeping_secs: Option<String>,
    /// Attempts before a failing job is dead [default: 5]
    #[arg(long, env = "CAP_JOB_MAX_ATTEMPTS")]
    pub job_max_attempts: Option<String>,
    /// How long finished jobs are kept before housekeeping deletes them [default: 604800]
    #[arg(long, env = "CAP_JOB_RETENTION_SECS")]
    pub job_retention_secs: Option<String>,
    /// Longest one attempt of a job may run; past it, it fails and is retried [default: 3900]
    #[arg(long, env = "CAP_JOB_ATTEMPT_TIMEOUT_SECS")]
    pub job_attempt_timeout_secs: Option<String>,
    /// Deprecated: restricted addresses opened to every purpose at once (ACME, DNS, drift,
    /// targets, notifications); use the CAP_EGRESS_ALLOW_<PURPOSE> lists [default: none]
    #[arg(long, env = "CAP_EGRESS_ALLOW")]
    pub egress_allow: Option<String>,
    /// Restricted addresses (loopback, link-local, private) ACME CAs may be reached at:
    /// comma-separated CIDRs, addresses and host names [default: none]
    #[arg(long, env = "CAP_EGRESS_ALLOW_ACME")]
    pub egress_allow_acme: Option<String>,
    /// Restricted addresses DNS-01 primaries and name servers may be reached at [default: none]
    #[arg(long, env = "CAP_EGRESS_ALLOW_DNS")]
    pub egress_allow_dns: Option<String>,
    /// Restricted addresses drift endpoints may be scanned at [default: none]
    #[arg(long, env = "CAP_EGRESS_ALLOW_DRIFT")]
    pub egress_allow_drift: Option<String>,
    /// Restricted addresses delivery targets (webhook, SSH, Kubernetes, validate probes) may be
    /// reached at [default: none]
    #[arg(long, env = "CAP_EGRESS_ALLOW_TARGETS")]
    pub egress_allow_targets: Option<String>,
    /// Restricted addresses notification channels (webhook, Slack, email) may be reached at
    /// [default: none]
    #[arg(long, env = "CAP_EGRESS_ALLOW_NOTIFY")]
    pub egress_allow_notify: Option<String>,
    /// Purposes that reach nothing at all, public addresses included: comma-separated of
    /// acme, dns, drift, targets, notify [default: none]
    #[arg(long, env = "CAP_EGRESS_CLOSED")]
    pub egress_closed: Option<String>,
    /// Longest one request to an ACME CA may take, answer included [default: 30]
    #[arg(long, env = "CAP_ACME_REQUEST_TIMEOUT_SECS")]
    pub acme_request_timeout_secs: Option<String>,
    /// Largest answer read from an ACME CA, in bytes [default: 1048576]
    #[arg(long, env = "CAP_ACME_MAX_RESPONSE_BYTES")]
    pub acme_max_response_bytes: Option<String>,
    /// How often the scheduler leader counts data keys per KEK version and queues re-wraps [default: 30]
    #[arg(long, env = "CAP_KEK_ROTATION_CHECK_SECS")]
    pub kek_rotation_check_secs: Option<String>,
    /// SIEM syslog receiver, host:port (RFC 5424 over TCP, octet counting) [default: off]
    #[arg(long, env = "CAP_SIEM_SYSLOG_ADDR")]
    pub siem_syslog_addr: Option<String>,
    /// Use TLS to the syslog receiver: true or false [default: false]
    #[arg(long, env = "CAP_SIEM_SYSLOG_TLS")]
    pub siem_syslog_tls: Option<String>,
    /// Extra CA certificates (PEM) trusted for the syslog receiver [default: none]
    #[arg(long, env = "CAP_SIEM_SYSLOG_CA_FILE")]
    pub siem_syslog_ca_file: Option<String>,
    /// SIEM webhook URL receiving JSON batches of audit records [default: off]
    #[arg(long, env = "CAP_SIEM_WEBHOOK_URL")]
    pub siem_webhook_url: Option<String>,
    /// Extra CA certificates (PEM) trusted for the webhook [default: none]
    #[arg(long, env = "CAP_SIEM_WEBHOOK_CA_FILE")]
    pub siem_webhook_ca_file: Option<String>,
    /// Audit records per SIEM send [default: 100]
    #[arg(long, env = "CAP_SIEM_BATCH")]
    pub siem_batch: Option<String>,
    /// How often an idle SIEM forwarder looks for new records, in milliseconds [default: 1000]
    #[arg(long, env = "CAP_SIEM_POLL_MS")]
    pub siem_poll_ms: Option<String>,
    /// How often the scheduler leader looks for certificates due for renewal [default: 30]
    #[arg(long, env = "CAP_RENEWAL_SCAN_SECS")]
    pub renewal_scan_secs: Option<String>,
    /// How often each certificate's declared endpoints are scanned for drift [default: 3600]
    #[arg(long, env = "CAP_DRIFT_SCAN_SECS")]
    pub drift_scan_secs: Option<String>,
    /// First delay after a failed issuance or renewal; doubles with each consecutive failure [default: 60]
    #[arg(long, env = "CAP_ISSUE_BACKOFF_BASE_SECS")]
    pub issue_backoff_base_secs: Option<String>,
    /// Longest delay between issuance or renewal attempts [default: 21600]
    #[arg(long, env = "CAP_ISSUE_BACKOFF_MAX_SECS")]
    pub issue_backoff_max_secs: Option<String>,
    /// How many times a delivery's validate step checks the target's endpoint [default: 6]
    #[arg(long, env = "CAP_DISTRIBUTE_VALIDATE_ATTEMPTS")]
    pub distribute_validate_attempts: Option<String>,
    /// Seconds between those checks (a reload has attempts-1 times this to take effect) [default: 5]
    #[arg(long, env = "CAP_DISTRIBUTE_VALIDATE_INTERVAL_SECS")]
    pub distribute_validate_interval_secs: Option<String>,
    /// How many times a notification is tried before it is kept as dead [default: 8]
    #[arg(long, env = "CAP_NOTIFY_ATTEMPTS")]
    pub notify_attempts: Option<String>,
    /// Fault injection for tests: a worker pauses (10 min) right after recording this ACME order stage;
    /// `renewal_enqueued` makes the scheduler leader pause between a renewal's enqueue and its mark [default: none]
    #[arg(long, env = "CAP_FAULT_PAUSE_AFTER_STAGE")]
    pub fault_pause_after_stage: Option<String>,
    /// Identity of this process in leases and job holders [default: hostname-pid-random]
    #[arg(long, env = "CAP_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Fault injection for tests: shift this process's local clock by N seconds [default: 0]
    #[arg(long, env = "CAP_CLOCK_OFFSET_SECS", allow_hyphen_values = true)]
    pub clock_offset_secs: Option<String>,
}

/// Flags of the `metrics-adapter` workload.
#[derive(Args, Debug, Clone, Default)]
pub struct AdapterArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address of the external.metrics.k8s.io listener (TLS) [default: 0.0.0.0:6443]
    #[arg(long, env = "CAP_ADAPTER_ADDR")]
    pub adapter_addr: Option<String>,
    /// Its serving certificate chain, PEM (required)
    #[arg(long, env = "CAP_ADAPTER_TLS_CERT")]
    pub adapter_tls_cert: Option<String>,
    /// The serving certificate's private key, PEM (required)
    #[arg(long, env = "CAP_ADAPTER_TLS_KEY")]
    pub adapter_tls_key: Option<String>,
    /// The request-header CA (PEM) that signs the aggregator's client certificate (required)
    #[arg(long, env = "CAP_ADAPTER_CLIENT_CA")]
    pub adapter_client_ca: Option<String>,
    /// Common names that client certificate may have, comma-separated [default: front-proxy-client]
    #[arg(long, env = "CAP_ADAPTER_ALLOWED_NAMES")]
    pub adapter_allowed_names: Option<String>,
    /// Plain listener for /healthz, /readyz and /metrics (probes carry no client certificate) [default: 127.0.0.1:8080]
    #[arg(long, env = "CAP_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// How long the database may be unreachable before /readyz fails [default: 10]
    #[arg(long, env = "CAP_READYZ_GRACE_SECS")]
    pub readyz_grace_secs: Option<String>,
    /// Longest a SIGTERM'd process spends draining before it exits [default: 25]
    #[arg(long, env = "CAP_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<String>,
    /// Identity of this process in logs [default: hostname-pid-random]
    #[arg(long, env = "CAP_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

/// What the metrics adapter needs: its files are read and checked here, so
/// a bad one stops it at start with the variable named.
#[derive(Debug, Clone)]
pub struct AdapterConfig {
    pub common: CommonConfig,
    pub addr: SocketAddr,
    pub tls: rustls::ServerConfig,
    /// Verifies the aggregator's client certificate chain.
    pub client_ca: std::sync::Arc<dyn rustls::server::danger::ClientCertVerifier>,
    pub allowed_names: Vec<String>,
    pub http_addr: SocketAddr,
    pub readyz_grace: Duration,
    pub shutdown_grace: Duration,
    pub instance_id: String,
}

impl AdapterArgs {
    pub fn resolve(&self) -> Result<AdapterConfig, ConfigError> {
        use crate::http::adapter::tls;
        let common = self.common.resolve()?;
        let addr = socket_addr(
            self.adapter_addr.as_deref().unwrap_or(DEFAULT_ADAPTER_ADDR),
            "CAP_ADAPTER_ADDR",
            "0.0.0.0:6443",
        )?;
        let http_addr = socket_addr(
            self.http_addr.as_deref().unwrap_or(DEFAULT_HTTP_ADDR),
            "CAP_HTTP_ADDR",
            "0.0.0.0:8080",
        )?;
        let file = |value: &Option<String>, name: &str, what: &str| match value
            .as_deref()
            .map(str::trim)
        {
            Some(path) if !path.is_empty() => Ok(std::path::PathBuf::from(path)),
            _ => Err(ConfigError(format!(
                "{name} is not set: the metrics adapter needs {what}"
            ))),
        };
        fn invalid(name: &'static str) -> impl Fn(String) -> ConfigError {
            move |e| ConfigError(format!("invalid {name}: {e}"))
        }
        let cert = file(
            &self.adapter_tls_cert,
            "CAP_ADAPTER_TLS_CERT",
            "its serving certificate chain (PEM)",
        )?;
        let key = file(
            &self.adapter_tls_key,
            "CAP_ADAPTER_TLS_KEY",
            "its serving certificate's private key (PEM)",
        )?;
        let ca = file(
            &self.adapter_client_ca,
            "CAP_ADAPTER_CLIENT_CA",
            "the request-header CA (PEM) that signs the aggregator's client certificate",
        )?;
        let chain = tls::read_certs(&cert).map_err(invalid("CAP_ADAPTER_TLS_CERT"))?;
        let key = tls::read_key(&key).map_err(invalid("CAP_ADAPTER_TLS_KEY"))?;
        let client_ca = tls::read_certs(&ca)
            .and_then(tls::client_verifier)
            .map_err(invalid("CAP_ADAPTER_CLIENT_CA"))?;
        let tls = tls::server_config(chain, key, client_ca.clone()).map_err(|e| {
            ConfigError(format!(
                "CAP_ADAPTER_TLS_KEY does not go with CAP_ADAPTER_TLS_CERT: {e}"
            ))
        })?;
        let allowed_names: Vec<String> = self
            .adapter_allowed_names
            .as_deref()
            .unwrap_or(DEFAULT_ADAPTER_ALLOWED_NAMES)
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        if allowed_names.is_empty() {
            return Err(ConfigError(
                "CAP_ADAPTER_ALLOWED_NAMES names no common name: list the front-proxy client certificate's, e.g. front-proxy-client".into(),
            ));
        }
        Ok(AdapterConfig {
            common,
            addr,
            tls,
            client_ca,
            allowed_names,
            http_addr,
            readyz_grace: secs(
                &self.readyz_grace_secs,
                "CAP_READYZ_GRACE_SECS",
                DEFAULT_READYZ_GRACE_SECS,
                0..=3600,
            )?,
            shutdown_grace: secs(
                &self.shutdown_grace_secs,
                "CAP_SHUTDOWN_GRACE_SECS",
                DEFAULT_SHUTDOWN_GRACE_SECS,
                1..=3600,
            )?,
            instance_id: match self.instance_id.as_deref().map(str::trim) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => default_instance_id(),
            },
        })
    }
}

fn socket_addr(value: &str, name: &str, example: &str) -> Result<SocketAddr, ConfigError> {
    value.trim().parse().map_err(|_| {
        ConfigError(format!(
            "invalid {name} {value:?}: expected host:port with an IP address, e.g. {example}"
        ))
    })
}

/// A configuration error: one line that names the variable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

pub use crate::observe::logging::LogFormat;

/// What every database-facing command needs.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub mongo_uri: String,
    /// Where the KEKs are; `Err` (with its message) when not configured,
    /// which only commands that need a KEK report.
    pub kek: Result<crate::crypto::kek::KekConfig, ConfigError>,
    pub election_retry: Duration,
    pub log_format: LogFormat,
}

/// What the long-running workloads need.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub common: CommonConfig,
    pub http_addr: SocketAddr,
    pub challenge_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    /// The main listener's certificate chain and key (PEM files), when it
    /// serves HTTPS.
    pub http_tls: Option<crate::http::tls::TlsFiles>,
    pub job_lease: Duration,
    pub leader_lease: Duration,
    pub worker_concurrency: usize,
    pub worker_presence: Duration,
    pub claim_poll: Duration,
    pub readyz_grace: Duration,
    pub shutdown_grace: Duration,
    pub api_token_max_lifetime: Duration,
    pub api_token_cache: Duration,
    /// Requests per minute per token; 0: none.
    pub api_rate_limit: u64,
    pub max_tokens_per_project: u64,
    pub max_channels_per_project: u64,
    pub housekeeping_interval: Duration,
    pub job_max_attempts: u32,
    pub job_retention: Duration,
    pub job_attempt_timeout: Duration,
    /// How CAs are reached: ACME's egress policy and the bounds on each
    /// ACME request.
    pub transport: crate::acme::Transport,
    /// The egress policy of each purpose (`CAP_EGRESS_ALLOW_<PURPOSE>`),
    /// which every outbound connection a tenant can aim passes.
    pub egress: crate::net::egress::EgressPolicies,
    /// The deprecated `CAP_EGRESS_ALLOW`, when set: warned about at start.
    pub egress_allow_shared: Option<String>,
    pub kek_rotation_check: Duration,
    pub renewal_scan: Duration,
    pub drift_scan: Duration,
    pub issue_backoff: crate::domain::backoff::Backoff,
    /// How a delivery's validate step checks.
    pub distribute_checks: crate::distribute::validate::Checks,
    pub notify_attempts: u32,
    pub siem: crate::audit::siem::SiemConfig,
    pub fault_pause_after_stage: Option<String>,
    pub instance_id: String,
    pub clock_offset_secs: i64,
}

impl CommonArgs {
    pub fn resolve(&self) -> Result<CommonConfig, ConfigError> {
        let mongo_uri = match self.mongo_uri.as_deref().map(str::trim) {
            Some(uri) if !uri.is_empty() => uri.to_string(),
            _ => {
                return Err(ConfigError(
                    "CAP_MONGO_URI is not set (or pass --mongo-uri): the MongoDB connection string is required".into(),
                ))
            }
        };
        if !(mongo_uri.starts_with("mongodb://") || mongo_uri.starts_with("mongodb+srv://")) {
            return Err(ConfigError(
                "CAP_MONGO_URI must start with mongodb:// or mongodb+srv://".into(),
            ));
        }
        Ok(CommonConfig {
            mongo_uri,
            kek: self.kek.resolve(),
            election_retry: secs(
                &self.election_retry_secs,
                "CAP_ELECTION_RETRY_SECS",
                DEFAULT_ELECTION_RETRY_SECS,
                0..=600,
            )?,
            log_format: log_format(self.log_format.as_deref())?,
        })
    }
}

impl WorkloadArgs {
    fn issue_backoff(&self) -> Result<crate::domain::backoff::Backoff, ConfigError> {
        let base = secs(
            &self.issue_backoff_base_secs,
            "CAP_ISSUE_BACKOFF_BASE_SECS",
            DEFAULT_ISSUE_BACKOFF_BASE_SECS,
            1..=86_400,
        )?;
        let max = secs(
            &self.issue_backoff_max_secs,
            "CAP_ISSUE_BACKOFF_MAX_SECS",
            DEFAULT_ISSUE_BACKOFF_MAX_SECS,
            1..=7 * 86_400,
        )?;
        if max < base {
            return Err(ConfigError(
                "CAP_ISSUE_BACKOFF_MAX_SECS must not be shorter than CAP_ISSUE_BACKOFF_BASE_SECS"
                    .into(),
            ));
        }
        Ok(crate::domain::backoff::Backoff::new(base, max))
    }

    pub fn resolve(&self) -> Result<WorkloadConfig, ConfigError> {
        let common = self.common.resolve()?;
        let egress = self.egress()?;
        let http_addr = self.http_addr.as_deref().unwrap_or(DEFAULT_HTTP_ADDR);
        let http_addr: SocketAddr = http_addr.trim().parse().map_err(|_| {
            ConfigError(format!(
                "invalid CAP_HTTP_ADDR {http_addr:?}: expected host:port with an IP address, e.g. 0.0.0.0:8080"
            ))
        })?;
        let challenge_addr = match self.challenge_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                ConfigError(format!(
                    "invalid CAP_CHALLENGE_ADDR {a:?}: expected host:port with an IP address, e.g. 0.0.0.0:80"
                ))
            })?),
        };
        let metrics_addr = match self.metrics_addr.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(a) => Some(a.parse().map_err(|_| {
                ConfigError(format!(
                    "invalid CAP_METRICS_ADDR {a:?}: expected host:port with an IP address, e.g. 0.0.0.0:9090"
                ))
            })?),
        };
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from)
        };
        let http_tls = match (set(&self.http_tls_cert), set(&self.http_tls_key)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(crate::http::tls::TlsFiles { cert, key }),
            _ => {
                return Err(ConfigError(
                    "CAP_HTTP_TLS_CERT and CAP_HTTP_TLS_KEY go together: set both (HTTPS) or neither (HTTP)".into(),
                ))
            }
        };
        let job_lease = secs(
            &self.job_lease_secs,
            "CAP_JOB_LEASE_SECS",
            DEFAULT_JOB_LEASE_SECS,
            3..=3600,
        )?;
        let leader_lease = secs(
            &self.leader_lease_secs,
            "CAP_LEADER_LEASE_SECS",
            DEFAULT_LEADER_LEASE_SECS,
            3..=600,
        )?;
        let worker_presence = secs(
            &self.worker_presence_secs,
            "CAP_WORKER_PRESENCE_SECS",
            DEFAULT_WORKER_PRESENCE_SECS,
            3..=600,
        )?;
        let instance_id = match self.instance_id.as_deref().map(str::trim) {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => default_instance_id(),
        };
        Ok(WorkloadConfig {
            common,
            http_addr,
            challenge_addr,
            metrics_addr,
            http_tls,
            job_lease,
            leader_lease,
            worker_concurrency: number(
                &self.worker_concurrency,
                "CAP_WORKER_CONCURRENCY",
                DEFAULT_WORKER_CONCURRENCY as u64,
                1..=1024,
            )? as usize,
            worker_presence,
            claim_poll: Duration::from_millis(number(
                &self.claim_poll_ms,
                "CAP_CLAIM_POLL_MS",
                DEFAULT_CLAIM_POLL_MS,
                10..=60_000,
            )?),
            readyz_grace: secs(
                &self.readyz_grace_secs,
                "CAP_READYZ_GRACE_SECS",
                DEFAULT_READYZ_GRACE_SECS,
                0..=3600,
            )?,
            shutdown_grace: secs(
                &self.shutdown_grace_secs,
                "CAP_SHUTDOWN_GRACE_SECS",
                DEFAULT_SHUTDOWN_GRACE_SECS,
                1..=3600,
            )?,
            api_token_max_lifetime: secs(
                &self.api_token_max_lifetime_secs,
                "CAP_API_TOKEN_MAX_LIFETIME_SECS",
                DEFAULT_API_TOKEN_MAX_LIFETIME_SECS,
                60..=10 * 365 * 86_400,
            )?,
            api_token_cache: secs(
                &self.api_token_cache_secs,
                "CAP_API_TOKEN_CACHE_SECS",
                DEFAULT_API_TOKEN_CACHE_SECS,
                0..=300,
            )?,
            api_rate_limit: number(
                &self.api_rate_limit,
                "CAP_API_RATE_LIMIT",
                DEFAULT_API_RATE_LIMIT,
                0..=100_000_000,
            )?,
            max_tokens_per_project: number(
                &self.max_tokens_per_project,
                "CAP_MAX_TOKENS_PER_PROJECT",
                DEFAULT_MAX_TOKENS_PER_PROJECT,
                1..=1_000_000,
            )?,
            max_channels_per_project: number(
                &self.max_channels_per_project,
                "CAP_MAX_CHANNELS_PER_PROJECT",
                DEFAULT_MAX_CHANNELS_PER_PROJECT,
                1..=10_000,
            )?,
            housekeeping_interval: secs(
                &self.housekeeping_secs,
                "CAP_HOUSEKEEPING_SECS",
                DEFAULT_HOUSEKEEPING_SECS,
                1..=86_400,
            )?,
            job_max_attempts: number(
                &self.job_max_attempts,
                "CAP_JOB_MAX_ATTEMPTS",
                DEFAULT_JOB_MAX_ATTEMPTS as u64,
                1..=100,
            )? as u32,
            job_retention: secs(
                &self.job_retention_secs,
                "CAP_JOB_RETENTION_SECS",
                DEFAULT_JOB_RETENTION_SECS,
                60..=365 * 86_400,
            )?,
            job_attempt_timeout: secs(
                &self.job_attempt_timeout_secs,
                "CAP_JOB_ATTEMPT_TIMEOUT_SECS",
                DEFAULT_JOB_ATTEMPT_TIMEOUT_SECS,
                1..=7 * 86_400,
            )?,
            transport: self.transport(&egress)?,
            egress_allow_shared: self
                .egress_allow
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
            egress,
            kek_rotation_check: secs(
                &self.kek_rotation_check_secs,
                "CAP_KEK_ROTATION_CHECK_SECS",
                DEFAULT_KEK_ROTATION_CHECK_SECS,
                1..=86_400,
            )?,
            renewal_scan: secs(
                &self.renewal_scan_secs,
                "CAP_RENEWAL_SCAN_SECS",
                DEFAULT_RENEWAL_SCAN_SECS,
                1..=3600,
            )?,
            drift_scan: secs(
                &self.drift_scan_secs,
                "CAP_DRIFT_SCAN_SECS",
                DEFAULT_DRIFT_SCAN_SECS,
                1..=7 * 86_400,
            )?,
            issue_backoff: self.issue_backoff()?,
            distribute_checks: crate::distribute::validate::Checks {
                attempts: number(
                    &self.distribute_validate_attempts,
                    "CAP_DISTRIBUTE_VALIDATE_ATTEMPTS",
                    DEFAULT_DISTRIBUTE_VALIDATE_ATTEMPTS,
                    1..=100,
                )? as u32,
                interval: secs(
                    &self.distribute_validate_interval_secs,
                    "CAP_DISTRIBUTE_VALIDATE_INTERVAL_SECS",
                    DEFAULT_DISTRIBUTE_VALIDATE_INTERVAL_SECS,
                    1..=600,
                )?,
                connect_timeout: crate::net::tls_probe::DEFAULT_CONNECT_TIMEOUT,
            },
            notify_attempts: number(
                &self.notify_attempts,
                "CAP_NOTIFY_ATTEMPTS",
                crate::notify::outbox::DEFAULT_ATTEMPTS as u64,
                1..=100,
            )? as u32,
            siem: self.siem(&instance_id)?,
            fault_pause_after_stage: self
                .fault_pause_after_stage
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            instance_id,
            clock_offset_secs: signed(&self.clock_offset_secs, "CAP_CLOCK_OFFSET_SECS", 0)?,
        })
    }
}

impl WorkloadArgs {
    fn egress(&self) -> Result<crate::net::egress::EgressPolicies, ConfigError> {
        use crate::net::egress::{EgressPolicies, Purpose};
        let own = |purpose: Purpose| {
            match purpose {
                Purpose::Acme => &self.egress_allow_acme,
                Purpose::Dns => &self.egress_allow_dns,
                Purpose::Drift => &self.egress_allow_drift,
                Purpose::Targets => &self.egress_allow_targets,
                Purpose::Notify => &self.egress_allow_notify,
            }
            .as_deref()
            .unwrap_or_default()
        };
        EgressPolicies::build(
            own,
            self.egress_allow.as_deref().unwrap_or_default(),
            self.egress_closed.as_deref().unwrap_or_default(),
        )
        .map_err(ConfigError)
    }

    fn transport(
        &self,
        egress: &crate::net::egress::EgressPolicies,
    ) -> Result<crate::acme::Transport, ConfigError> {
        let egress = egress.acme.clone();
        let limits = crate::acme::RequestLimits {
            timeout: secs(
                &self.acme_request_timeout_secs,
                "CAP_ACME_REQUEST_TIMEOUT_SECS",
                DEFAULT_ACME_REQUEST_TIMEOUT_SECS,
                1..=600,
            )?,
            max_response_bytes: number(
                &self.acme_max_response_bytes,
                "CAP_ACME_MAX_RESPONSE_BYTES",
                DEFAULT_ACME_MAX_RESPONSE_BYTES,
                16 * 1024..=64 << 20,
            )? as usize,
        };
        Ok(crate::acme::Transport { egress, limits })
    }

    fn siem(&self, hostname: &str) -> Result<crate::audit::siem::SiemConfig, ConfigError> {
        use crate::audit::siem::{SiemConfig, SyslogConfig, WebhookConfig};
        let set = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let tls = match set(&self.siem_syslog_tls).as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ConfigError(format!(
                    "invalid CAP_SIEM_SYSLOG_TLS {other:?}: expected true or false"
                )))
            }
        };
        let syslog = match set(&self.siem_syslog_addr) {
            None => None,
            Some(addr)
                if addr
                    .rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Some(SyslogConfig {
                    addr,
                    tls,
                    ca_file: set(&self.siem_syslog_ca_file).map(Into::into),
                })
            }
            Some(addr) => {
                return Err(ConfigError(format!(
                    "invalid CAP_SIEM_SYSLOG_ADDR {addr:?}: expected host:port"
                )))
            }
        };
        let webhook = match set(&self.siem_webhook_url) {
            None => None,
            Some(url) if url.starts_with("https://") => Some(WebhookConfig {
                url,
                ca_file: set(&self.siem_webhook_ca_file).map(Into::into),
            }),
            // Not echoed: a webhook URL often carries its credential.
            Some(url) if url.starts_with("http://") => {
                return Err(ConfigError(
                    "invalid CAP_SIEM_WEBHOOK_URL: it is plain http://, and audit records are sent only over https:// (trust a private CA with CAP_SIEM_WEBHOOK_CA_FILE)".into(),
                ))
            }
            Some(_) => {
                return Err(ConfigError(
                    "invalid CAP_SIEM_WEBHOOK_URL: expected an https:// URL".into(),
                ))
            }
        };
        Ok(SiemConfig {
            syslog,
            webhook,
            batch: number(
                &self.siem_batch,
                "CAP_SIEM_BATCH",
                DEFAULT_SIEM_BATCH,
                1..=10_000,
            )? as i64,
            poll: Duration::from_millis(number(
                &self.siem_poll_ms,
                "CAP_SIEM_POLL_MS",
                DEFAULT_SIEM_POLL_MS,
                10..=600_000,
            )?),
            hostname: hostname.to_string(),
        })
    }
}

fn number(
    value: &Option<String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let Some(raw) = value else { return Ok(default) };
    match raw.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError(format!(
            "invalid {name} {raw:?}: expected a whole number from {} to {}",
            range.start(),
            range.end()
        ))),
    }
}

fn secs(
    value: &Option<String>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    number(value, name, default, range).map(Duration::from_secs)
}

fn signed(value: &Option<String>, name: &str, default: i64) -> Result<i64, ConfigError> {
    let Some(raw) = value else { return Ok(default) };
    raw.trim().parse::<i64>().map_err(|_| {
        ConfigError(format!(
            "invalid {name} {raw:?}: expected a whole number of seconds"
        ))
    })
}

fn log_format(value: Option<&str>) -> Result<LogFormat, ConfigError> {
    match value.unwrap_or(DEFAULT_LOG_FORMAT).trim() {
        "json" => Ok(LogFormat::Json),
        "text" => Ok(LogFormat::Text),
        other => Err(ConfigError(format!(
            "invalid CAP_LOG_FORMAT {other:?}: expected json or text"
        ))),
    }
}

fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".to_string());
    let suffix: u32 = rand::random::<u32>() % 0x10000;
    format!("{host}-{}-{suffix:04x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> WorkloadArgs {
        WorkloadArgs {
            common: CommonArgs {
                mongo_uri: Some("mongodb://127.0.0.1:27017/x".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn defaults_are_pinned() {
        let c = args().resolve().unwrap();
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert!(c.http_tls.is_none(), "plain HTTP unless asked");
        assert_eq!(c.job_lease, Duration::from_secs(60));
        assert_eq!(c.leader_lease, Duration::from_secs(15));
        assert_eq!(c.worker_concurrency, 8);
        assert_eq!(c.worker_presence, Duration::from_secs(10));
        assert_eq!(c.claim_poll, Duration::from_millis(500));
        assert_eq!(c.common.election_retry, Duration::from_secs(30));
        assert_eq!(c.readyz_grace, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));
        assert_eq!(c.housekeeping_interval, Duration::from_secs(60));
        assert_eq!(c.job_max_attempts, 5);
        assert_eq!(c.max_tokens_per_project, 500);
        assert_eq!(c.max_channels_per_project, 50);
        assert_eq!(c.kek_rotation_check, Duration::from_secs(30));
        assert_eq!(c.job_attempt_timeout, Duration::from_secs(3900));
        assert_eq!(c.transport.limits.timeout, Duration::from_secs(30));
        assert_eq!(c.transport.limits.max_response_bytes, 1 << 20);
        assert!(
            c.transport
                .egress
                .check("h", "127.0.0.1".parse().unwrap())
                .is_err(),
            "nothing restricted is allowed by default"
        );
        for purpose in crate::net::egress::Purpose::ALL {
            assert!(
                c.egress
                    .get(purpose)
                    .check("h", "10.0.0.1".parse().unwrap())
                    .is_err(),
                "{purpose:?} opens nothing restricted by default"
            );
        }
        assert_eq!(c.egress_allow_shared, None);
        assert_eq!(c.clock_offset_secs, 0);
        assert_eq!(c.common.log_format, LogFormat::Json);
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let mut a = args();
        a.job_lease_secs = Some("sixty".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_JOB_LEASE_SECS"), "{err}");

        let mut a = args();
        a.worker_concurrency = Some("0".into());
        assert!(a
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("CAP_WORKER_CONCURRENCY"));

        let mut a = args();
        a.egress_allow = Some("10.0.0.0/8, not a host".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(
            err.contains("CAP_EGRESS_ALLOW") && err.contains("not a host"),
            "{err}"
        );

        let mut a = args();
        a.egress_allow_targets = Some("10.0.0.0/33".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_EGRESS_ALLOW_TARGETS"), "{err}");

        let mut a = args();
        a.egress_closed = Some("everything".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_EGRESS_CLOSED"), "{err}");

        let mut a = args();
        a.job_attempt_timeout_secs = Some("0".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_JOB_ATTEMPT_TIMEOUT_SECS"), "{err}");

        let mut a = args();
        a.acme_max_response_bytes = Some("10".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_ACME_MAX_RESPONSE_BYTES"), "{err}");

        let mut a = args();
        a.http_addr = Some("localhost".into());
        assert!(a
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("CAP_HTTP_ADDR"));
    }

    #[test]
    fn a_tls_certificate_needs_its_key_and_the_other_way_round() {
        for (cert, key) in [(Some("cert.pem"), None), (None, Some("key.pem"))] {
            let mut a = args();
            a.http_tls_cert = cert.map(Into::into);
            a.http_tls_key = key.map(Into::into);
            let err = a.resolve().unwrap_err().to_string();
            assert!(
                err.contains("CAP_HTTP_TLS_CERT") && err.contains("CAP_HTTP_TLS_KEY"),
                "{err}"
            );
        }
        let mut a = args();
        a.http_tls_cert = Some("cert.pem".into());
        a.http_tls_key = Some("key.pem".into());
        let tls = a.resolve().unwrap().http_tls.unwrap();
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str()),
            (Some("cert.pem"), Some("key.pem"))
        );
    }

    #[test]
    fn a_plain_http_webhook_is_refused_without_echoing_it() {
        let mut a = args();
        a.siem_webhook_url = Some("http://siem.example/hook?token=s3cr3t".into());
        let err = a.resolve().unwrap_err().to_string();
        assert!(
            err.contains("CAP_SIEM_WEBHOOK_URL") && err.contains("https://"),
            "{err}"
        );
        assert!(!err.contains("s3cr3t"), "{err}");
        a.siem_webhook_url = Some("https://siem.example/hook".into());
        assert!(a.resolve().unwrap().siem.webhook.is_some());
    }

    #[test]
    fn no_debug_output_shows_the_pin() {
        let mut a = args();
        a.common.kek.kek_provider = Some("pkcs11".into());
        a.common.kek.pkcs11_pin = Some(String::from("4711-secret-pin").into());
        let resolved = a.resolve().unwrap();
        for shown in [format!("{a:?}"), format!("{resolved:?}")] {
            assert!(!shown.contains("4711-secret-pin"), "{shown}");
            assert!(shown.contains("<redacted>"), "{shown}");
        }
    }

    #[test]
    fn the_adapter_defaults_are_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["adapter".into()]).unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Some(path.to_string_lossy().into_owned())
        };
        let args = AdapterArgs {
            common: args().common,
            adapter_tls_cert: write("tls.crt", cert.cert.pem()),
            adapter_tls_key: write("tls.key", cert.signing_key.serialize_pem()),
            adapter_client_ca: write("ca.crt", cert.cert.pem()),
            ..Default::default()
        };
        let c = args.resolve().unwrap();
        assert_eq!(c.addr, "0.0.0.0:6443".parse().unwrap());
        assert_eq!(c.allowed_names, vec!["front-proxy-client".to_string()]);
        assert_eq!(c.http_addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.readyz_grace, Duration::from_secs(10));
        assert_eq!(c.shutdown_grace, Duration::from_secs(25));

        let mut named = args.clone();
        named.adapter_allowed_names = Some(" aggregator , front-proxy-client,".into());
        assert_eq!(
            named.resolve().unwrap().allowed_names,
            vec!["aggregator".to_string(), "front-proxy-client".to_string()]
        );
        let mut bad = args.clone();
        bad.adapter_addr = Some("6443".into());
        let err = bad.resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_ADAPTER_ADDR"), "{err}");
    }

    #[test]
    fn a_missing_uri_names_its_variable() {
        let err = CommonArgs::default().resolve().unwrap_err().to_string();
        assert!(err.contains("CAP_MONGO_URI"), "{err}");
    }
}
