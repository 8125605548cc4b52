//! `certautopilot agent`: runs beside a server, with a token of role
//! `agent` naming its target. Every `interval_secs` it asks the API which
//! certificates the target gets; for each whose newest serial is not the
//! one on disk it fetches the chain and key, writes `cert.pem`,
//! `chain.pem`, `fullchain.pem` and `key.pem` atomically into
//! `<directory>/<certificate id>/` (the previous set kept as `*.previous`),
//! runs the reload command, checks that the validation endpoint serves the
//! new certificate, and reports. A failed check (or reload) puts the
//! previous files back and reloads again.
//!
//! When the API is away the files stay as they are, so the server goes on
//! serving them; the agent retries with back-off.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ConfigError, Failure};
use crate::distribute::files::{self, FileSpec, Owner};
use crate::distribute::validate::{self, Checks};
use crate::domain::backoff::Backoff;
use crate::domain::certs;
use crate::domain::drift::Endpoint;
use crate::net::egress::EgressPolicy;

/// What the agent may connect to for validation when `CAP_EGRESS_ALLOW` is
/// not set: the server it runs beside.
pub const DEFAULT_AGENT_EGRESS: &str = "127.0.0.0/8,::1";

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    /// The agent's settings, JSON (README, "Agent targets")
    #[arg(long, env = "CAP_AGENT_CONFIG")]
    pub config: PathBuf,
    /// A file holding the agent token (role agent, naming the target)
    #[arg(long, env = "CAP_AGENT_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// One pass, then exit: 0 when every certificate is delivered, 1 when not
    #[arg(long)]
    pub once: bool,
    /// Addresses the validation check may reach [default: 127.0.0.0/8,::1]
    #[arg(long, env = "CAP_EGRESS_ALLOW")]
    pub egress_allow: Option<String>,
}

/// The agent's settings file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The API's base URL, e.g. https://certautopilot.example.com.
    pub api: String,
    pub project_id: String,
    pub target_id: String,
    /// Where each certificate's files go, one directory per certificate id.
    pub directory: PathBuf,
    /// Owner of the written files [default: the agent's own].
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Mode of key.pem, octal as chmod takes it [default: "0600"].
    #[serde(default = "key_mode", deserialize_with = "octal")]
    pub key_mode: u32,
    /// Mode of the certificate files [default: "0644"].
    #[serde(default = "cert_mode", deserialize_with = "octal")]
    pub cert_mode: u32,
    /// Run after the files change (and after a rollback), e.g.
    /// ["nginx", "-s", "reload"] [default: none].
    #[serde(default)]
    pub reload_command: Vec<String>,
    /// Seconds between passes [default: 60].
    #[serde(default = "interval")]
    pub interval_secs: u64,
    /// Checks of the validation endpoint after a reload [default: 6].
    #[serde(default = "attempts")]
    pub validate_attempts: u32,
    /// Seconds between them [default: 5].
    #[serde(default = "validate_interval")]
    pub validate_interval_secs: u64,
    /// Extra CA certificates (PEM file) trusted for the API [default: none].
    pub api_ca_file: Option<PathBuf>,
}

/// A file mode written as chmod takes it: "0640".
fn octal<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let text = String::deserialize(d)?;
    u32::from_str_radix(&text, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a file mode like \"0640\""))
        })
}

fn key_mode() -> u32 {
    0o600
}
fn cert_mode() -> u32 {
    0o644
}
fn interval() -> u64 {
    60
}
fn attempts() -> u32 {
    6
}
fn validate_interval() -> u64 {
    5
}

impl AgentConfig {
    pub fn read(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let config: AgentConfig = serde_json::from_str(&text)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        let api = url::Url::parse(&config.api)
            .map_err(|e| ConfigError(format!("api {:?}: {e}", config.api)))?;
        // The token and private keys cross this connection: plain http only
        // to the machine itself.
        let loopback = match api.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
            None => false,
        };
        if !(api.scheme() == "https" || api.scheme() == "http" && loopback) {
            return Err(ConfigError(format!(
                "api {:?}: expected an https:// URL (http:// only to a loopback address)",
                config.api
            )));
        }
        if config.key_mode & 0o007 != 0 {
            return Err(ConfigError(format!(
                "key_mode {:o} lets everyone read the private key",
                config.key_mode
            )));
        }
        if config.interval_secs == 0 || config.validate_attempts == 0 {
            return Err(ConfigError(
                "interval_secs and validate_attempts must be at least 1".into(),
            ));
        }
        Ok(config)
    }
}

pub async fn run(args: AgentArgs) -> Result<ExitCode, Failure> {
    let config = AgentConfig::read(&args.config).map_err(Failure::Config)?;
    let token = std::fs::read_to_string(&args.token_file)
        .map_err(|e| Failure::Config(ConfigError(format!("{}: {e}", args.token_file.display()))))?
        .trim()
        .to_string();
    let egress = EgressPolicy::parse(args.egress_allow.as_deref().unwrap_or(DEFAULT_AGENT_EGRESS))
        .map_err(|e| Failure::Config(ConfigError(format!("CAP_EGRESS_ALLOW: {e}"))))?;
    let agent = Agent::new(config, token, egress).map_err(Failure::Config)?;
    if args.once {
        return match agent.pass().await {
            Ok(0) => Ok(ExitCode::SUCCESS),
            Ok(n) => Err(Failure::Runtime(format!(
                "{n} certificate(s) not delivered"
            ))),
            Err(e) => Err(Failure::Runtime(e)),
        };
    }
    let backoff = Backoff::new(
        Duration::from_secs(agent.config.interval_secs),
        Duration::from_secs(agent.config.interval_secs * 10),
    );
    let mut failures = 0;
    loop {
        match agent.pass().await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "the API cannot be reached; the files stay as they are");
            }
        }
        let wait = match failures {
            0 => Duration::from_secs(agent.config.interval_secs),
            n => backoff.delay(n),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
}

struct Agent {
    config: AgentConfig,
    token: String,
    http: reqwest::Client,
    egress: EgressPolicy,
}

/// How one certificate's delivery ended.
enum Outcome {
    Validated,
    RolledBack(String),
    Failed(String),
}

impl Agent {
    fn new(config: AgentConfig, token: String, egress: EgressPolicy) -> Result<Agent, ConfigError> {
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.api_ca_file {
            let pem =
                std::fs::read(path).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| ConfigError(format!("the HTTP client: {e}")))?;
        Ok(Agent {
            config,
            token,
            http,
            egress,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!(
            "{}/v1/projects/{}/targets/{}/deliveries{tail}",
            self.config.api.trim_end_matches('/'),
            self.config.project_id,
            self.config.target_id
        )
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Value, String> {
        let answer = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("the API: {e}"))?;
        let status = answer.status();
        let text = answer.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(format!("the API answered {status}: {text}"));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// One pass over every certificate of the target; answers how many are
    /// not delivered. `Err`: the API could not be asked at all.
    async fn pass(&self) -> Result<usize, String> {
        let mut after: Option<String> = None;
        let mut undelivered = 0;
        loop {
            let mut request = self.http.get(self.url("")).query(&[("limit", "200")]);
            if let Some(after) = &after {
                request = request.query(&[("after", after)]);
            }
            let page = self.call(request).await?;
            for item in page["items"].as_array().into_iter().flatten() {
                if !self.keep_up(item).await {
                    undelivered += 1;
                }
            }
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_string()),
                None => return Ok(undelivered),
            }
        }
    }

    /// Brings one certificate's files up to date; whether they are.
    async fn keep_up(&self, item: &Value) -> bool {
        let s = |f: &str| item[f].as_str().unwrap_or_default().to_string();
        let (id, serial, wanted) = (s("certificate_id"), s("serial"), s("fingerprint_sha256"));
        if serial.is_empty() || !safe_segment(&id) {
            return true;
        }
        let dir = self.config.directory.join(&id);
        let on_disk = on_disk_fingerprint(&dir);
        let state = s("state");
        let ended_badly = state == "rolled_back" || state == "failed";
        if on_disk.as_deref() == Some(wanted.as_str()) {
            if state == "validated" {
                return true;
            }
            if !ended_badly {
                // Written before, and the outcome's report did not get
                // through: which outcome is not known (the agent may have
                // stopped before reloading; a first delivery that failed
                // leaves its files too), so settle it again.
                let validate: Option<Endpoint> =
                    serde_json::from_value(item["validate"].clone()).ok();
                let outcome = self
                    .settle(&id, &serial, &dir, validate.as_ref(), &wanted)
                    .await;
                let served = matches!(outcome, Outcome::Validated);
                return self.report(&id, &serial, outcome).await.is_ok() && served;
            }
        }
        if ended_badly {
            tracing::warn!(certificate = %id, serial = %serial, state = %state, "not delivered again: this serial failed here before");
            return false;
        }
        let validate: Option<Endpoint> = serde_json::from_value(item["validate"].clone()).ok();
        // The serial the bundle holds: a newer one may have come since the
        // list was read, and the report must name what was written.
        let (serial, outcome) = match self.deliver(&id, &serial, &dir, validate.as_ref()).await {
            Ok(delivered) => delivered,
            Err(e) => {
                tracing::warn!(certificate = %id, error = %e, "cannot fetch the certificate");
                return false;
            }
        };
        let delivered = matches!(outcome, Outcome::Validated);
        if let Err(e) = self.report(&id, &serial, outcome).await {
            tracing::warn!(certificate = %id, error = %e, "the outcome was not reported; it is reported at the next pass");
        }
        delivered
    }

    async fn deliver(
        &self,
        id: &str,
        serial: &str,
        dir: &Path,
        validate: Option<&Endpoint>,
    ) -> Result<(String, Outcome), String> {
        let _ = self
            .call(
                self.http
                    .post(self.url(&format!("/{id}/report")))
                    .json(&json!({ "serial": serial, "state": "running" })),
            )
            .await;
        let bundle = self
            .call(self.http.get(self.url(&format!("/{id}"))))
            .await?;
        let chain = bundle["chain_pem"].as_str().unwrap_or_default();
        let key =
            zeroize::Zeroizing::new(bundle["key_pem"].as_str().unwrap_or_default().to_string());
        let fingerprint = bundle["fingerprint_sha256"].as_str().unwrap_or_default();
        let serial = bundle["serial"].as_str().unwrap_or(serial).to_string();
        let outcome = |o: Outcome| Ok((serial.clone(), o));
        let (leaf, issuers) = certs::split_chain(chain);
        let files = self.file_set(
            leaf.as_bytes(),
            issuers.as_bytes(),
            chain.as_bytes(),
            key.as_bytes(),
        );
        if let Err(e) =
            std::fs::create_dir_all(dir).and_then(|()| files::install(dir, &files, self.owner()))
        {
            return outcome(Outcome::Failed(format!("writing {}: {e}", dir.display())));
        }
        tracing::info!(certificate = %id, serial = %serial, directory = %dir.display(), "certificate files written");
        outcome(self.settle(id, &serial, dir, validate, fingerprint).await)
    }

    /// The four files with their configured modes.
    fn file_set<'a>(
        &self,
        leaf: &'a [u8],
        issuers: &'a [u8],
        chain: &'a [u8],
        key: &'a [u8],
    ) -> [FileSpec<'a>; 4] {
        let (cert_mode, key_mode) = (self.config.cert_mode, self.config.key_mode);
        [
            FileSpec {
                name: "cert.pem",
                contents: leaf,
                mode: cert_mode,
            },
            FileSpec {
                name: "chain.pem",
                contents: issuers,
                mode: cert_mode,
            },
            FileSpec {
                name: "fullchain.pem",
                contents: chain,
                mode: cert_mode,
            },
            FileSpec {
                name: "key.pem",
                contents: key,
                mode: key_mode,
            },
        ]
    }

    fn owner(&self) -> Owner {
        Owner {
            uid: self.config.uid,
            gid: self.config.gid,
        }
    }

    /// Once new files are in `dir`: reloads and checks that `fingerprint`
    /// is served, and when not, puts the previous set back and reloads.
    async fn settle(
        &self,
        id: &str,
        serial: &str,
        dir: &Path,
        validate: Option<&Endpoint>,
        fingerprint: &str,
    ) -> Outcome {
        let checked = match self.reload() {
            Err(e) => Err(e),
            Ok(()) => self.check(validate, fingerprint).await,
        };
        let Err(why) = checked else {
            return Outcome::Validated;
        };
        tracing::warn!(certificate = %id, serial = %serial, error = %why, "the new certificate is not served; putting the previous files back");
        // A rollback reads the kept set: only the names and modes count.
        let kept = self.file_set(b"", b"", b"", b"");
        match files::roll_back(dir, &kept, self.owner()) {
            Ok(()) => match self.reload() {
                Ok(()) => Outcome::RolledBack(why),
                Err(e) => Outcome::Failed(format!("{why}; then, rolled back: {e}")),
            },
            Err(e) => Outcome::Failed(format!("{why}; and no rollback: {e}")),
        }
    }

    /// Whether the validation endpoint (if any) serves `fingerprint`.
    async fn check(&self, validate: Option<&Endpoint>, fingerprint: &str) -> Result<(), String> {
        let Some(endpoint) = validate else {
            return Ok(());
        };
        let checks = Checks {
            attempts: self.config.validate_attempts,
            interval: Duration::from_secs(self.config.validate_interval_secs),
            connect_timeout: crate::net::tls_probe::DEFAULT_CONNECT_TIMEOUT,
        };
        validate::serves(&self.egress, endpoint, fingerprint, checks).await
    }

    fn reload(&self) -> Result<(), String> {
        let Some((program, args)) = self.config.reload_command.split_first() else {
            return Ok(());
        };
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("reload {program}: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "reload {program} exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    async fn report(&self, id: &str, serial: &str, outcome: Outcome) -> Result<(), String> {
        let (state, error) = match outcome {
            Outcome::Validated => ("validated", None),
            Outcome::RolledBack(e) => ("rolled_back", Some(e)),
            Outcome::Failed(e) => ("failed", Some(e)),
        };
        let error = error.map(|e| {
            e.chars()
                .take(crate::http::api::agent::MAX_ERROR_LEN)
                .collect::<String>()
        });
        self.call(
            self.http
                .post(self.url(&format!("/{id}/report")))
                .json(&json!({ "serial": serial, "state": state, "error": error })),
        )
        .await
        .map(|_| tracing::info!(certificate = %id, serial = %serial, state, "delivery reported"))
    }
}

/// The SHA-256 fingerprint of the leaf in `dir/cert.pem`, if there is one.
fn on_disk_fingerprint(dir: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(dir.join("cert.pem")).ok()?;
    certs::inspect_chain(&pem)
        .ok()
        .map(|c| c.fingerprint_sha256)
}

/// An id the API made: nothing that could leave the directory.
fn safe_segment(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_leave_the_directory_are_refused() {
        assert!(safe_segment("crt_0123abcd"));
        for bad in ["", "..", "a/b", "crt/../../etc"] {
            assert!(!safe_segment(bad), "{bad}");
        }
    }

    #[test]
    fn a_key_mode_readable_by_everyone_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let write = |extra: &str| {
            std::fs::write(
                &path,
                format!(r#"{{"api":"http://127.0.0.1:1","project_id":"p","target_id":"t","directory":"/tmp"{extra}}}"#),
            )
            .unwrap();
        };
        write("");
        let config = AgentConfig::read(&path).unwrap();
        assert_eq!(
            (config.key_mode, config.cert_mode, config.interval_secs),
            (0o600, 0o644, 60)
        );
        write(r#","key_mode":"0644""#);
        let e = AgentConfig::read(&path).unwrap_err();
        assert!(e.0.contains("everyone"), "{}", e.0);
        write(r#","colour":"blue""#);
        assert!(AgentConfig::read(&path)
            .unwrap_err()
            .0
            .contains("unknown field"));
        write(r#","key_mode":"0640""#);
        assert_eq!(AgentConfig::read(&path).unwrap().key_mode, 0o640);
        write(r#","key_mode":"rw-r""#);
        assert!(AgentConfig::read(&path)
            .unwrap_err()
            .0
            .contains("file mode"));
    }

    #[test]
    fn plain_http_is_taken_only_to_the_machine_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let read = |api: &str| {
            std::fs::write(
                &path,
                format!(r#"{{"api":"{api}","project_id":"p","target_id":"t","directory":"/tmp"}}"#),
            )
            .unwrap();
            AgentConfig::read(&path).map(|_| ()).map_err(|e| e.0)
        };
        for fine in [
            "https://certautopilot.example.com",
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost:8080",
        ] {
            assert_eq!(read(fine), Ok(()), "{fine}");
        }
        for refused in [
            "http://certautopilot.example.com",
            "http://10.0.0.1",
            "ftp://127.0.0.1",
        ] {
            assert!(read(refused).unwrap_err().contains("https://"), "{refused}");
        }
    }
}
