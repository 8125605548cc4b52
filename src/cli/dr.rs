//! `certautopilot dr drill`: the quarterly disaster-recovery rehearsal,
//! end to end, against an empty database: restore a snapshot, supply the
//! KEK, migrate, `audit verify`, `health`, then issue a fixture certificate
//! from the given ACME directory with processes of its own. Each step's
//! outcome and duration is reported (text, and JSON with `--report`); exit 0
//! only when every step passed.
//!
//! The restored copy belongs to the installation being rehearsed, so the
//! drill keeps it from acting on that installation's behalf: it runs an api
//! and a worker but no scheduler (which would renew the restored
//! certificates from the rehearsal), sets the restored jobs aside before its
//! worker starts, and passes its processes no `CAP_*` setting of the
//! operator's environment (no SIEM forwarding from the copy, which would
//! send the SIEM records under sequence numbers it already holds).
//!
//! Nor does the copy reach the installation's outside world: its processes
//! run with every egress purpose but ACME closed ([`DRILL_CLOSED_EGRESS`]),
//! so the fixture's events never reach the restored notification channels
//! and nothing is delivered to the restored targets, public addresses
//! included; the ACME policy opens only the fixture's directory host.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use mongodb::bson::doc;
use serde::Serialize;
use serde_json::{json, Value};

use super::config::{ConfigError, KekArgs, DEFAULT_ELECTION_RETRY_SECS};
use super::{operator, Failure};
use crate::audit::{self, Audit, Event};
use crate::backup::{self, format::Manifest};
use crate::crypto::kek::{self, check, KekConfig, KekProvider};
use crate::crypto::secrets::Secrets;
use crate::queue::jobs::JobQueue;
use crate::services::migration::KekWork;
use crate::store::schema::{self, KekMigrations};
use crate::store::{short, Store};

pub const DEFAULT_CHALLENGE_ADDR: &str = "0.0.0.0:80";
/// The egress purposes closed in the drill's processes (`CAP_EGRESS_CLOSED`):
/// all but ACME, which the fixture certificate needs. Closing them in the
/// policy, rather than trusting the restored channels and targets to be
/// harmless, holds for every kind, present and future.
pub const DRILL_CLOSED_EGRESS: &str = "dns,drift,targets,notify";
pub const DEFAULT_ISSUE_TIMEOUT_SECS: u64 = 300;

#[derive(Subcommand)]
pub enum DrCommand {
    /// Rehearse a disaster recovery end to end against an empty database
    /// and report each step; exit 0 only when every step passed
    Drill(DrillArgs),
}

#[derive(Args)]
pub struct DrillArgs {
    /// The snapshot to restore (`certautopilot snapshot save`)
    #[arg(long)]
    snapshot: PathBuf,
    /// The clean cluster or scratch database to restore into; refused when
    /// it holds any document, e.g. mongodb://m0,m1,m2/drill?replicaSet=rs0
    #[arg(long)]
    target_uri: String,
    /// A KEK bundle (`certautopilot kek export`) to restore the key ring
    /// from; without it, the configured provider (CAP_KEK_*) is used
    #[arg(long)]
    kek_bundle: Option<PathBuf>,
    /// File holding the bundle's passphrase [default: CAP_KEK_PASSPHRASE]
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// ACME directory of the fixture certificate (Let's Encrypt staging in
    /// production: https://acme-staging-v02.api.letsencrypt.org/directory)
    #[arg(long)]
    acme_directory: String,
    /// Extra CA certificates (PEM) trusted for that directory [default: none]
    #[arg(long)]
    acme_ca_bundle: Option<PathBuf>,
    /// Where the drill answers HTTP-01 itself [default: 0.0.0.0:80]
    #[arg(long, default_value = DEFAULT_CHALLENGE_ADDR)]
    challenge_addr: String,
    /// The fixture certificate's name: it must resolve, for the CA, to
    /// this host's --challenge-addr
    #[arg(long)]
    domain: String,
    /// The fixture ACME account's contact [default: hostmaster@DOMAIN]
    #[arg(long)]
    contact: Option<String>,
    /// Longest wait for the fixture certificate, in seconds [default: 300]
    #[arg(long, default_value_t = DEFAULT_ISSUE_TIMEOUT_SECS)]
    issue_timeout_secs: u64,
    /// Also write the report as JSON to this file
    #[arg(long)]
    report: Option<PathBuf>,
    #[command(flatten)]
    kek: KekArgs,
}

/// One step of the drill.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    /// passed, failed or skipped
    pub outcome: &'static str,
    pub seconds: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub passed: bool,
    pub snapshot: String,
    pub target: String,
    pub started_at: String,
    pub seconds: f64,
    pub steps: Vec<Step>,
}

impl DrillReport {
    pub fn render_human(&self) -> String {
        let mut out = format!(
            "DR drill {} in {:.1} s: snapshot {} into {}\n",
            if self.passed { "PASSED" } else { "FAILED" },
            self.seconds,
            self.snapshot,
            self.target
        );
        for s in &self.steps {
            out.push_str(&format!(
                "  [{:^7}] {:<22} {:>7.1} s  {}\n",
                s.outcome, s.name, s.seconds, s.detail
            ));
        }
        out
    }
}

/// The steps, in order; a failure skips the rest.
const STEPS: [&str; 9] = [
    "target is empty",
    "snapshot is whole",
    "restore",
    "kek",
    "migrate",
    "audit verify",
    "health",
    "restored jobs held",
    "issue a certificate",
];

struct Drill {
    steps: Vec<Step>,
}

impl Drill {
    /// Runs one step unless an earlier one failed; returns its value.
    async fn step<T>(
        &mut self,
        name: &'static str,
        work: impl std::future::Future<Output = Result<(T, String), String>>,
    ) -> Option<T> {
        if self.steps.iter().any(|s| s.outcome != "passed") {
            return None;
        }
        eprintln!("dr drill: {name}…");
        let started = Instant::now();
        let (value, outcome, detail) = match work.await {
            Ok((value, detail)) => (Some(value), "passed", detail),
            Err(detail) => (None, "failed", detail),
        };
        let step = Step {
            name,
            outcome,
            seconds: started.elapsed().as_secs_f64(),
            detail,
        };
        eprintln!(
            "dr drill: {name}: {} ({:.1} s) {}",
            step.outcome, step.seconds, step.detail
        );
        self.steps.push(step);
        value
    }

    fn finish(mut self) -> Vec<Step> {
        for name in STEPS.iter().skip(self.steps.len()) {
            self.steps.push(Step {
                name,
                outcome: "skipped",
                seconds: 0.0,
                detail: "an earlier step failed".into(),
            });
        }
        self.steps
    }
}

pub async fn run(command: DrCommand) -> Result<ExitCode, Failure> {
    let DrCommand::Drill(args) = command;
    crate::observe::logging::init(crate::observe::logging::LogFormat::Text);
    if !(args.target_uri.starts_with("mongodb://") || args.target_uri.starts_with("mongodb+srv://"))
    {
        return Err(Failure::Config(ConfigError(
            "--target-uri must start with mongodb:// or mongodb+srv://".into(),
        )));
    }
    let directory = reqwest::Url::parse(&args.acme_directory).map_err(|e| {
        Failure::Config(ConfigError(format!(
            "--acme-directory {:?} is not a URL: {e}",
            args.acme_directory
        )))
    })?;
    if args.challenge_addr.parse::<std::net::SocketAddr>().is_err() {
        return Err(Failure::Config(ConfigError(format!(
            "--challenge-addr {:?} is not an address:port",
            args.challenge_addr
        ))));
    }
    let ca_bundle = match &args.acme_ca_bundle {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let kek_source = match &args.kek_bundle {
        Some(bundle) => KekSource::Bundle {
            bundle: bundle.clone(),
            passphrase: super::kek::passphrase(args.passphrase_file.as_deref())?,
        },
        None => KekSource::Configured(args.kek.resolve()),
    };

    let started = Instant::now();
    let started_at = chrono_now();
    let work = tempdir()?;
    let mut drill = Drill { steps: Vec::new() };

    let store = drill
        .step("target is empty", async {
            let store = Store::connect(
                &args.target_uri,
                Duration::from_secs(DEFAULT_ELECTION_RETRY_SECS),
            )
            .await
            .map_err(|e| format!("cannot reach the target: {}", short(&e)))?;
            backup::ensure_empty(&store)
                .await
                .map_err(|e| e.to_string())?;
            let name = store.db().name().to_string();
            Ok((store, format!("database {name} holds no document")))
        })
        .await;
    let manifest = drill
        .step("snapshot is whole", async {
            let m = backup::inspect(&args.snapshot).map_err(|e| e.to_string())?;
            let detail = format!(
                "{} documents in {} collections, taken {} by {}, audit head {}",
                m.documents(),
                m.collections.len(),
                m.taken_at,
                m.created_by,
                m.audit_head.seq
            );
            Ok((m, detail))
        })
        .await;
    if let (Some(store), Some(manifest)) = (&store, &manifest) {
        drill
            .step("restore", async {
                // The KEK comes in the next step: the scratch copy's restore
                // record stays plain (no witness is ever run on it).
                let r =
                    backup::restore_inspected(store, &args.snapshot, manifest, &operator(), None)
                        .await
                        .map_err(|e| e.to_string())?;
                Ok((
                    (),
                    format!(
                        "{} documents restored; audit record {} records it",
                        r.documents, r.audit_seq
                    ),
                ))
            })
            .await;
    }
    let kek = match (&store, &manifest) {
        (Some(store), Some(manifest)) => {
            drill
                .step("kek", supply_kek(store, manifest, &kek_source, work.path()))
                .await
        }
        _ => None,
    };
    if let (Some(store), Some((kek, _))) = (&store, &kek) {
        drill.step("migrate", migrate(store, kek.clone())).await;
        drill
            .step("audit verify", verify_audit(store, kek.clone()))
            .await;
        drill.step("health", health(store, kek.clone())).await;
        drill
            .step("restored jobs held", async {
                let held = JobQueue::new(store.clone())
                    .hold_all(
                        "dr drill: a restored copy runs none of the rehearsed installation's jobs",
                    )
                    .await
                    .map_err(|e| short(&e))?;
                Audit::new(store.clone())
                    .append(
                        &Event::new(operator(), "dr.jobs_held", "jobs")
                            .with(doc! { "jobs": held as i64 }),
                    )
                    .await
                    .map_err(|e| short(&e))?;
                Ok((
                    (),
                    format!("{held} restored job(s) set aside (due in 9999)"),
                ))
            })
            .await;
    }
    if let (Some(store), Some((kek, kek_config))) = (&store, &kek) {
        let fixture = Fixture {
            target_uri: &args.target_uri,
            kek_config,
            directory: &directory,
            ca_bundle: ca_bundle.as_deref(),
            challenge_addr: &args.challenge_addr,
            domain: &args.domain,
            contact: args
                .contact
                .clone()
                .unwrap_or_else(|| format!("hostmaster@{}", args.domain)),
            timeout: Duration::from_secs(args.issue_timeout_secs),
            logs: work.path(),
        };
        drill
            .step("issue a certificate", issue(store, kek.clone(), &fixture))
            .await;
    }
    let steps = drill.finish();
    let report = DrillReport {
        passed: steps.iter().all(|s| s.outcome == "passed"),
        snapshot: args.snapshot.display().to_string(),
        target: redact(&args.target_uri),
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        steps,
    };
    print!("{}", report.render_human());
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report).expect("a report serializes");
        std::fs::write(path, text + "\n")
            .map_err(|e| Failure::Runtime(format!("cannot write {}: {e}", path.display())))?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The URI without its password, for the report.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &uri[..scheme], &uri[at + 1..])
        }
        _ => uri.to_string(),
    }
}

fn chrono_now() -> String {
    mongodb::bson::DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_default()
}

/// A private working directory (key ring, process logs), removed at the end.
struct WorkDir(PathBuf);

impl WorkDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> Result<WorkDir, Failure> {
    use std::os::unix::fs::DirBuilderExt;
    let path = std::env::temp_dir().join(format!(
        "certautopilot-dr-drill-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .map_err(|e| Failure::Runtime(format!("cannot create {}: {e}", path.display())))?;
    Ok(WorkDir(path))
}

enum KekSource {
    Bundle {
        bundle: PathBuf,
        passphrase: zeroize::Zeroizing<String>,
    },
    Configured(Result<KekConfig, ConfigError>),
}

/// Opens the KEK (restoring the key ring from the bundle into the drill's
/// own directory) and checks it holds every version the snapshot's data
/// keys need, each being the installation's.
async fn supply_kek(
    store: &Store,
    manifest: &Manifest,
    source: &KekSource,
    work: &Path,
) -> Result<((Arc<dyn KekProvider>, KekConfig), String), String> {
    let config = match source {
        KekSource::Bundle { bundle, passphrase } => {
            let text = std::fs::read_to_string(bundle)
                .map_err(|e| format!("cannot read {}: {e}", bundle.display()))?;
            let ring = work.join("kek.json");
            kek::bundle::import(&text, passphrase, &ring)
                .map_err(|e| format!("the KEK bundle {}: {e}", bundle.display()))?;
            KekConfig::File { path: ring }
        }
        KekSource::Configured(config) => config.clone().map_err(|e| {
            format!(
                "no KEK: pass --kek-bundle and --passphrase-file, or configure the provider ({e})"
            )
        })?,
    };
    let provider = kek::open(&config).map_err(|e| e.to_string())?;
    let held = provider.versions();
    let needs = |v: i64| {
        manifest
            .kek_versions
            .iter()
            .find(|k| k.version == v)
            .map(|k| k.data_keys)
            .unwrap_or(0)
    };
    if let Some(missing) = manifest
        .kek_versions
        .iter()
        .find(|k| !held.contains(&(k.version as u32)))
    {
        return Err(format!(
            "the snapshot's data keys need KEK version {} ({} data key(s)), which {} does not hold (it holds {:?})",
            missing.version,
            missing.data_keys,
            provider.describe(),
            held
        ));
    }
    // Each version must open a data key it wrapped: before the check values
    // are compared (or, if none is recorded yet, recorded), so that a wrong
    // key ring never has its values taken for the installation's.
    for need in &manifest.kek_versions {
        let version = need.version as u32;
        let Some(wrapped) = crate::store::keys::sample_wrapped_key(store, version)
            .await
            .map_err(|e| short(&e))?
        else {
            continue;
        };
        let kek = provider.clone();
        let opened = tokio::task::spawn_blocking(move || kek.unwrap(version, &wrapped))
            .await
            .map_err(|_| "unwrapping a data key panicked".to_string())?;
        if opened.is_err() {
            return Err(format!(
                "KEK version {version} of {} does not open the data keys wrapped with it: wrong key ring or bundle; the snapshot's data keys need KEK version {version} ({} data key(s))",
                provider.describe(),
                need.data_keys
            ));
        }
    }
    check::verify(store, provider.clone()).await.map_err(|e| match e {
        check::CheckError::Kek(kek::KekError::NotThisKeyRing { version }) => format!(
            "KEK version {version} of {} is not this installation's (its check value differs from the recorded one): wrong key ring or bundle; the snapshot's data keys need KEK version {version} ({} data key(s))",
            provider.describe(),
            needs(version as i64)
        ),
        other => other.to_string(),
    })?;
    crate::actors::readiness::kek_canary(provider.clone()).await?;
    let versions: Vec<String> = manifest
        .kek_versions
        .iter()
        .map(|k| format!("{} ({} data keys)", k.version, k.data_keys))
        .collect();
    let detail = format!(
        "{} holds every version the data keys need: {}",
        provider.describe(),
        if versions.is_empty() {
            "none".to_string()
        } else {
            versions.join(", ")
        }
    );
    Ok(((provider, config), detail))
}

async fn migrate(store: &Store, kek: Arc<dyn KekProvider>) -> Result<((), String), String> {
    let reseal = KekWork {
        secrets: Secrets::new(store.clone(), kek),
    };
    let report =
        schema::migrate_with_kek(store, Some(&reseal as &dyn KekMigrations), false, |step| {
            eprintln!("dr drill:   {step}")
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok((
        (),
        format!(
            "schema version {} (from {}); indexes built",
            report.to, report.from
        ),
    ))
}

async fn verify_audit(store: &Store, kek: Arc<dyn KekProvider>) -> Result<((), String), String> {
    let secrets = Secrets::new(store.clone(), kek);
    let key = audit::checkpoint::existing_key(&secrets)
        .await
        .map_err(|e| format!("reading the checkpoint key: {e}"))?;
    let total = audit::estimated_count(store).await.unwrap_or(0);
    let report = audit::verify(
        store,
        key.as_deref().map(|k| k.as_slice()),
        audit::terminal_progress(total),
    )
    .await
    .map_err(|e| short(&e))?;
    match report.problem {
        None => Ok((
            (),
            format!(
                "chain intact: {} records (last {}), {} checkpoints",
                report.records, report.last_seq, report.checkpoints
            ),
        )),
        Some(problem) => Err(format!(
            "audit chain DAMAGED: {problem} (after {} intact records)",
            report.records
        )),
    }
}

/// `health`'s checks, but the scheduler leader's: the drill runs no
/// scheduler (see the module's comment), so a live leader is not expected.
async fn health(store: &Store, kek: Arc<dyn KekProvider>) -> Result<((), String), String> {
    let report = super::health::check(store, Ok(kek)).await;
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| !c.ok && c.name != "scheduler leader")
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if !failed.is_empty() {
        return Err(format!("UNHEALTHY: {}", failed.join("; ")));
    }
    let passed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.ok)
        .map(|c| c.name)
        .collect();
    Ok((
        (),
        format!(
            "{} pass; scheduler leader not checked (the drill runs no scheduler)",
            passed.join(", ")
        ),
    ))
}

struct Fixture<'a> {
    target_uri: &'a str,
    kek_config: &'a KekConfig,
    directory: &'a reqwest::Url,
    ca_bundle: Option<&'a str>,
    challenge_addr: &'a str,
    domain: &'a str,
    contact: String,
    timeout: Duration,
    logs: &'a Path,
}

/// A process the drill started; killed if still running when dropped.
struct Child {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    fn start(
        name: &'static str,
        fixture: &Fixture<'_>,
        env: &[(&str, String)],
    ) -> Result<Child, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let log = fixture.logs.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let mut command = tokio::process::Command::new(exe);
        command.arg(name);
        // The operator's settings are not the copy's (SIEM, webhooks, …).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CAP_") {
                command.env_remove(key);
            }
        }
        command
            .env("CAP_MONGO_URI", fixture.target_uri)
            .env("CAP_LOG_FORMAT", "json")
            .env("CAP_INSTANCE_ID", format!("dr-drill-{name}"))
            .env(crate::net::egress::CLOSED_VARIABLE, DRILL_CLOSED_EGRESS)
            .envs(kek_env(fixture.kek_config))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start `certautopilot {name}`: {e}"))?;
        Ok(Child { name, child, log })
    }

    /// The last lines of its log that say something went wrong.
    fn trouble(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"ERROR\"") || l.contains("\"WARN\"") || !l.starts_with('{'))
            .collect();
        lines[lines.len().saturating_sub(3)..].join(" | ")
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "`certautopilot {}` exited ({status}): {}",
                self.name,
                self.trouble()
            )),
            _ => None,
        }
    }

    /// SIGTERM, as in production, then a wait for it to drain.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn kek_env(config: &KekConfig) -> Vec<(&'static str, String)> {
    match config {
        KekConfig::File { path } => vec![
            ("CAP_KEK_PROVIDER", "file".into()),
            ("CAP_KEK_FILE", path.display().to_string()),
        ],
        KekConfig::Pkcs11 {
            module,
            token_label,
            pin,
        } => vec![
            ("CAP_KEK_PROVIDER", "pkcs11".into()),
            ("CAP_PKCS11_MODULE", module.display().to_string()),
            ("CAP_PKCS11_TOKEN_LABEL", token_label.clone()),
            ("CAP_PKCS11_PIN", pin.to_string()),
        ],
    }
}

fn free_loopback_addr() -> Result<String, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener
        .local_addr()
        .map_err(|e| e.to_string())?
        .to_string())
}

/// Starts an api (answering HTTP-01 on the challenge address) and a worker
/// on the restored copy, declares the fixture through the API, waits for the
/// certificate and checks its stored key matches it; stops both after.
async fn issue(
    store: &Store,
    kek: Arc<dyn KekProvider>,
    fixture: &Fixture<'_>,
) -> Result<((), String), String> {
    let http = free_loopback_addr()?;
    let egress = match fixture.directory.host_str() {
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        None => return Err("the ACME directory names no host".into()),
    };
    let mut api = Child::start(
        "api",
        fixture,
        &[
            ("CAP_HTTP_ADDR", http.clone()),
            ("CAP_CHALLENGE_ADDR", fixture.challenge_addr.to_string()),
        ],
    )?;
    let mut worker = Child::start(
        "worker",
        fixture,
        &[
            ("CAP_HTTP_ADDR", free_loopback_addr()?),
            ("CAP_CLAIM_POLL_MS", "200".into()),
            // The CA may be on a restricted address (Pebble on loopback in
            // tests): opened for ACME alone.
            ("CAP_EGRESS_ALLOW_ACME", egress),
        ],
    )?;
    let result = async {
        wait_ready(&mut api, &http).await?;
        wait_ready(&mut worker, "").await?;
        let started = Instant::now();
        let client = Client::new(store, kek, &http).await?;
        let issued = client
            .declare_and_wait(fixture, &mut [&mut api, &mut worker])
            .await?;
        Ok::<_, String>(format!(
            "{issued} in {:.1} s",
            started.elapsed().as_secs_f64()
        ))
    }
    .await;
    api.stop().await;
    worker.stop().await;
    result.map(|detail| ((), detail))
}

async fn wait_ready(child: &mut Child, http: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(why) = child.exited() {
            return Err(why);
        }
        if http.is_empty() {
            // A worker has no API to ask: alive a moment after start is enough;
            // a worker that cannot start exits at once.
            tokio::time::sleep(Duration::from_millis(500)).await;
            return match child.exited() {
                Some(why) => Err(why),
                None => Ok(()),
            };
        }
        if let Ok(r) = reqwest::get(format!("http://{http}/readyz")).await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "`certautopilot {}` was not ready within 60 s: {}",
                child.name,
                child.trouble()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The drill's own API client, with a global-admin token made for it.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    async fn new(store: &Store, kek: Arc<dyn KekProvider>, addr: &str) -> Result<Client, String> {
        use crate::crypto::api_tokens::TokenKey;
        use crate::http::api::auth;
        let key = TokenKey::new(Secrets::new(store.clone(), kek));
        let expires = store
            .server_after(Duration::from_secs(3600))
            .await
            .map_err(|e| short(&e))?;
        let spec = auth::TokenSpec {
            global_admin: true,
            roles: &[],
            description: "dr drill",
            expires_at: Some(expires),
        };
        let token = auth::create(store, &key, &spec)
            .await
            .map_err(|e| format!("making the drill's API token: {e}"))?;
        Audit::new(store.clone())
            .append(
                &Event::new(operator(), "token.created", format!("tokens/{}", token.id)).with(
                    doc! { "global_admin": true, "role": "admin", "description": "dr drill" },
                ),
            )
            .await
            .map_err(|e| short(&e))?;
        Ok(Client {
            http: reqwest::Client::new(),
            base: format!("http://{addr}/v1"),
            token: token.secret,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value, String), String> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(30));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(format!("{method} {path} answered {status}: {text}"));
        }
        Ok((status, value, text))
    }

    async fn declare_and_wait(
        &self,
        fixture: &Fixture<'_>,
        children: &mut [&mut Child],
    ) -> Result<String, String> {
        use reqwest::Method;
        let stamp = mongodb::bson::DateTime::now().timestamp_millis();
        let (_, project, _) = self
            .call(
                Method::POST,
                "/projects",
                Some(json!({ "name": format!("dr-drill-{stamp}") })),
            )
            .await?;
        let p = project["id"].as_str().unwrap_or_default().to_string();
        self.call(
            Method::PUT,
            &format!("/projects/{p}/domains"),
            Some(json!({ "domains": [fixture.domain] })),
        )
        .await?;
        let mut issuer = json!({
            "name": "dr drill",
            "directory_url": fixture.directory.as_str(),
            "contact": fixture.contact,
            "challenge": "http-01",
        });
        if let Some(ca) = fixture.ca_bundle {
            issuer["ca_bundle_pem"] = json!(ca);
        }
        let (_, issuer, _) = self
            .call(
                Method::POST,
                &format!("/projects/{p}/issuers"),
                Some(issuer),
            )
            .await?;
        let (_, cert, _) = self
            .call(
                Method::POST,
                &format!("/projects/{p}/certificates"),
                Some(json!({
                    "name": "dr-drill",
                    "dns_names": [fixture.domain],
                    "issuer_id": issuer["id"],
                    "key_algorithm": "ecdsa-p256",
                })),
            )
            .await?;
        let path = format!(
            "/projects/{p}/certificates/{}",
            cert["id"].as_str().unwrap_or_default()
        );
        let deadline = Instant::now() + fixture.timeout;
        let issued = loop {
            let (_, c, _) = self.call(Method::GET, &path, None).await?;
            match c["status"].as_str() {
                Some("issued") => break c,
                Some("failed") => {
                    return Err(format!(
                        "the fixture certificate failed: {}",
                        c["last_error"].as_str().unwrap_or("no reason given")
                    ))
                }
                _ => {}
            }
            for child in children.iter_mut() {
                if let Some(why) = child.exited() {
                    return Err(why);
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the fixture certificate was not issued within {} s (status {}, {})",
                    fixture.timeout.as_secs(),
                    c["status"],
                    c["last_error"].as_str().unwrap_or("no error recorded")
                ));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        // The key the workers stored, decrypted through the restored KEK,
        // must be the chain's.
        let (_, _, key) = self
            .call(Method::GET, &format!("{path}/private-key"), None)
            .await?;
        let chain = issued["chain_pem"].as_str().unwrap_or_default();
        let leaf = crate::domain::certs::inspect_chain(chain).map_err(|e| e.to_string())?;
        let key_public = crate::domain::certs::public_key_der(&key).map_err(|e| e.to_string())?;
        if key_public != leaf.public_key_der {
            return Err("the stored private key does not match the issued certificate".into());
        }
        Ok(format!(
            "{} for {} from {}: serial {}, not after {}, its stored key matches",
            issued["id"].as_str().unwrap_or_default(),
            fixture.domain,
            fixture.directory,
            issued["serial"].as_str().unwrap_or("?"),
            issued["not_after"].as_str().unwrap_or("?")
        ))
    }
}
