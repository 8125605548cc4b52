//! The `certautopilot` binary: one subcommand per workload or operator command.
//!
//! Exit codes: 0 success (for `health`: healthy); 1 a runtime failure (or
//! unhealthy); 2 invalid configuration or usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use std::path::PathBuf;

use certautopilot::config::{CommonArgs, ConfigError, KekArgs, WorkloadArgs};
use certautopilot::workloads::{self, Roles};
use std::sync::Arc;

use certautopilot::audit::{self, Audit, Event};
use certautopilot::kek::KekProvider;
use certautopilot::secrets::{SecretError, Secrets};
use certautopilot::{health, logging, schema, store::Store};
use mongodb::bson::doc;

#[derive(Parser)]
#[command(
    name = "certautopilot",
    version,
    about = "Certificate-automation control plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (and /healthz, /readyz, /metrics)
    Api(WorkloadArgs),
    /// Claim and run jobs
    Worker(WorkloadArgs),
    /// Elect a leader; the leader enqueues time-driven work
    Scheduler(WorkloadArgs),
    /// api, worker and scheduler in one process (single machine, development)
    All(WorkloadArgs),
    /// Apply schema migrations (collections, indexes); safe to repeat
    Migrate(CommonArgs),
    /// Key-encryption keys: init, rotate, status, retire, export, import
    #[command(subcommand)]
    Kek(KekCommand),
    /// The audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// API tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Check the installation; exit 0 only when healthy
    Health {
        #[command(flatten)]
        common: CommonArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KekCommand {
    /// Create KEK version 1 for a fresh installation: a new key ring (mode
    /// 0600) for the file provider, or a key on the token for pkcs11
    Init {
        /// Key ring to create (file provider); refuses to overwrite [default: CAP_KEK_FILE]
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        kek: KekArgs,
    },
    /// Make a new KEK version current; workers then re-wrap every data key
    Rotate(CommonArgs),
    /// KEK versions, data keys per version and the rotation's progress
    Status {
        #[command(flatten)]
        common: CommonArgs,
        /// Follow the rotation until no data key is on an old version
        #[arg(long)]
        wait: bool,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Remove a KEK version; refused while any data key still uses it
    Retire {
        version: u32,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Write the key ring (file provider) to a passphrase-protected bundle
    Export {
        /// Bundle to create (mode 0600; refuses to overwrite)
        #[arg(long)]
        out: PathBuf,
        /// File holding the passphrase [default: CAP_KEK_PASSPHRASE]
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        kek: KekArgs,
    },
    /// Restore a key ring from a bundle made by `kek export`
    Import {
        /// The bundle
        #[arg(long)]
        bundle: PathBuf,
        /// Key ring to create (mode 0600; refuses to overwrite) [default: CAP_KEK_FILE]
        #[arg(long)]
        file: Option<PathBuf>,
        /// File holding the passphrase [default: CAP_KEK_PASSPHRASE]
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token and print it (only it) on standard output; it is
    /// stored only as a hash and cannot be shown again
    Create {
        /// admin, editor or viewer
        #[arg(long)]
        role: String,
        /// The project the role is on; without it, --role admin makes a
        /// global admin (the bootstrap token)
        #[arg(long)]
        project: Option<String>,
        /// A note for whoever finds the token in the audit log
        #[arg(long, default_value = "")]
        description: String,
        #[command(flatten)]
        common: CommonArgs,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain and its checkpoints; exit 0 when intact, 3 at the
    /// first tampered record
    Verify {
        #[command(flatten)]
        common: CommonArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

#[actix_web::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command).await {
        Ok(code) => code,
        Err(Failure::Config(e)) => {
            eprintln!("certautopilot: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            tracing::error!(error = %e, "exiting");
            eprintln!("certautopilot: {e}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Config(ConfigError),
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

async fn run(command: Command) -> Result<ExitCode, Failure> {
    let (roles, args) = match command {
        Command::Api(a) => (Roles::API, a),
        Command::Worker(a) => (Roles::WORKER, a),
        Command::Scheduler(a) => (Roles::SCHEDULER, a),
        Command::All(a) => (Roles::ALL, a),
        Command::Migrate(common) => return migrate(common).await,
        Command::Health { common, json } => return health(common, json).await,
        Command::Kek(command) => return kek(command).await,
        Command::Token(TokenCommand::Create {
            role,
            project,
            description,
            common,
        }) => return token_create(common, &role, project, &description).await,
        Command::Audit(AuditCommand::Verify { common, json }) => {
            return audit_verify(common, json).await
        }
    };
    let cfg = args.resolve()?;
    let kek = cfg.common.kek.clone()?;
    logging::init(cfg.common.log_format);
    workloads::run(roles, cfg, &kek)
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    Ok(ExitCode::SUCCESS)
}

async fn connect(common: &CommonArgs) -> Result<Store, Failure> {
    let cfg = common.resolve()?;
    logging::init(cfg.log_format);
    Store::connect(&cfg.mongo_uri, cfg.election_retry)
        .await
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot reach MongoDB: {}",
                certautopilot::store::short(&e)
            ))
        })
}

async fn migrate(common: CommonArgs) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let report = schema::migrate(&store, |step| eprintln!("applying {step}"))
        .await
        .map_err(|e| Failure::Runtime(e.to_string()))?;
    if !report.applied.is_empty() {
        let event = Event::new(operator(), "schema.migrated", "schema").with(doc! {
            "from": report.from,
            "to": report.to,
            "applied": report.applied.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        });
        audit(&store, event).await?;
    }
    if report.applied.is_empty() {
        eprintln!("schema is at version {}; nothing to do", report.to);
    } else {
        eprintln!(
            "schema migrated from version {} to {}",
            report.from, report.to
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn health(common: CommonArgs, json: bool) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let kek = open_kek(&common).map_err(|e| match e {
        Failure::Config(e) => e.to_string(),
        Failure::Runtime(e) => e,
    });
    let report = health::check(&store, kek).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.render_human());
    }
    Ok(if report.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Who operator commands act as, in the audit log.
fn operator() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("operator@{host}")
}

async fn audit(store: &Store, event: Event) -> Result<(), Failure> {
    Audit::new(store.clone())
        .append(&event)
        .await
        .map(|_| ())
        .map_err(|e| {
            Failure::Runtime(format!(
                "writing the audit record: {}",
                certautopilot::store::short(&e)
            ))
        })
}

fn open_kek(common: &CommonArgs) -> Result<Arc<dyn KekProvider>, Failure> {
    let config = common.kek.resolve()?;
    certautopilot::kek::open(&config).map_err(|e| Failure::Runtime(e.to_string()))
}

async fn audit_verify(common: CommonArgs, json: bool) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let kek = open_kek(&common)?;
    let secrets = Secrets::new(store.clone(), kek);
    let key = match secrets.get(audit::CHECKPOINT_KEY_SECRET).await {
        Ok(key) => Some(key),
        Err(SecretError::NotFound(_)) => None,
        Err(e) => return Err(Failure::Runtime(format!("reading the checkpoint key: {e}"))),
    };
    let total = store
        .collection(audit::AUDIT_COLLECTION)
        .estimated_document_count()
        .await
        .unwrap_or(0);
    let report = audit::verify(
        &store,
        key.as_deref().map(|k| k.as_slice()),
        audit::terminal_progress(total),
    )
    .await
    .map_err(|e| {
        Failure::Runtime(format!(
            "reading the audit log: {}",
            certautopilot::store::short(&e)
        ))
    })?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        match &report.problem {
            None => println!(
                "audit chain intact: {} records (last seq {}), {} checkpoints verified",
                report.records, report.last_seq, report.checkpoints
            ),
            Some(problem) => println!(
                "audit chain DAMAGED: {problem} (verified {} records before it)",
                report.records
            ),
        }
    }
    Ok(if report.problem.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn kek(command: KekCommand) -> Result<ExitCode, Failure> {
    use certautopilot::kek::{admin, bundle, KekConfig};
    let runtime = |e: String| Failure::Runtime(e);
    match command {
        KekCommand::Init { file, kek } => {
            let config = match file {
                Some(path) => KekConfig::File { path },
                None => kek.resolve()?,
            };
            match &config {
                KekConfig::File { path } => {
                    certautopilot::kek::FileKek::init(path).map_err(|e| runtime(e.to_string()))?;
                    eprintln!(
                        "created key ring {} with KEK version 1 (mode 0600); keep a copy offsite (`certautopilot kek export`): without it no secret can be decrypted",
                        path.display()
                    );
                }
                KekConfig::Pkcs11 { .. } => {
                    let provider =
                        certautopilot::kek::open(&config).map_err(|e| runtime(e.to_string()))?;
                    if !provider.versions().is_empty() {
                        return Err(runtime(format!(
                            "{} already holds KEK versions {:?}: use `certautopilot kek rotate`",
                            provider.describe(),
                            provider.versions()
                        )));
                    }
                    provider.rotate().map_err(|e| runtime(e.to_string()))?;
                    eprintln!("created KEK version 1 in {}", provider.describe());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KekCommand::Rotate(common) => {
            let store = connect(&common).await?;
            let kek = open_kek(&common)?;
            let version = admin::rotate(&store, &kek, &operator())
                .await
                .map_err(|e| runtime(e.to_string()))?;
            let status = admin::status(&store, &kek)
                .await
                .map_err(|e| runtime(e.to_string()))?;
            eprintln!(
                "KEK version {version} is now current in {}; new secrets use it. {} data key(s) on older versions will be re-wrapped by the workers: follow with `certautopilot kek status --wait`",
                kek.describe(),
                status.remaining
            );
            if matches!(common.kek.resolve(), Ok(KekConfig::File { .. })) {
                eprintln!("every process must see the new key ring: if it is a mounted Secret, update the Secret from this file now, and export a new offsite backup");
            }
            Ok(ExitCode::SUCCESS)
        }
        KekCommand::Status { common, wait, json } => {
            let store = connect(&common).await?;
            let kek = open_kek(&common)?;
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            loop {
                let status = admin::status(&store, &kek)
                    .await
                    .map_err(|e| runtime(e.to_string()))?;
                if !wait || status.complete() {
                    if tty && wait {
                        eprintln!("\r{}", status.progress_bar(40));
                    }
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&status).expect("status serializes")
                        );
                    } else {
                        print!("{}", render_kek_status(&status));
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                if tty {
                    eprint!("\r{}", status.progress_bar(40));
                } else {
                    eprintln!("{}", status.progress_bar(40));
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        KekCommand::Retire { version, common } => {
            let store = connect(&common).await?;
            let kek = open_kek(&common)?;
            admin::retire(&store, &kek, version, &operator())
                .await
                .map_err(|e| runtime(e.to_string()))?;
            eprintln!("KEK version {version} retired from {}", kek.describe());
            Ok(ExitCode::SUCCESS)
        }
        KekCommand::Export {
            out,
            passphrase_file,
            kek,
        } => {
            let KekConfig::File { path } = kek.resolve()? else {
                return Err(runtime("kek export works with the file provider; an HSM's keys are backed up with the HSM's own tools".into()));
            };
            let passphrase = passphrase(passphrase_file.as_deref())?;
            let text = bundle::export(&path, &passphrase).map_err(|e| runtime(e.to_string()))?;
            certautopilot::kek::file::write_new(&out, &text).map_err(|e| runtime(e.to_string()))?;
            eprintln!(
                "wrote {} (mode 0600): store it offsite, and the passphrase somewhere else",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        KekCommand::Import {
            bundle: from,
            file,
            passphrase_file,
        } => {
            let path =
                match file {
                    Some(p) => p,
                    None => match std::env::var("CAP_KEK_FILE") {
                        Ok(p) if !p.trim().is_empty() => PathBuf::from(p),
                        _ => return Err(Failure::Config(ConfigError(
                            "kek import needs --file or CAP_KEK_FILE: where to write the key ring"
                                .into(),
                        ))),
                    },
                };
            let passphrase = passphrase(passphrase_file.as_deref())?;
            let text = std::fs::read_to_string(&from)
                .map_err(|e| runtime(format!("cannot read {}: {e}", from.display())))?;
            let versions =
                bundle::import(&text, &passphrase, &path).map_err(|e| runtime(e.to_string()))?;
            eprintln!(
                "restored key ring {} (mode 0600) with KEK versions {versions:?}",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The bundle passphrase: from `--passphrase-file`, else `CAP_KEK_PASSPHRASE`.
fn passphrase(file: Option<&std::path::Path>) -> Result<zeroize::Zeroizing<String>, Failure> {
    let raw = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?,
        None => std::env::var("CAP_KEK_PASSPHRASE").map_err(|_| {
            Failure::Config(ConfigError(
                "no passphrase: pass --passphrase-file or set CAP_KEK_PASSPHRASE".into(),
            ))
        })?,
    };
    let raw = zeroize::Zeroizing::new(raw);
    Ok(zeroize::Zeroizing::new(
        raw.trim_end_matches(['\n', '\r']).to_string(),
    ))
}

fn render_kek_status(s: &certautopilot::kek::admin::KekStatus) -> String {
    let mut out = format!("provider: {}\ncurrent version: {}\n", s.provider, s.current);
    let mut versions: Vec<u32> = s.versions.clone();
    versions.extend(s.data_keys.keys());
    versions.sort_unstable();
    versions.dedup();
    out.push_str("version  data keys  held\n");
    for v in versions {
        out.push_str(&format!(
            "{:>7}  {:>9}  {}{}\n",
            v,
            s.data_keys.get(&v).copied().unwrap_or(0),
            if s.versions.contains(&v) {
                "yes"
            } else {
                "NO (supply it)"
            },
            if v == s.current { "  (current)" } else { "" }
        ));
    }
    out.push_str(&format!(
        "rotation: {}\n{}\n",
        if s.complete() {
            "complete"
        } else {
            "in progress"
        },
        s.progress_bar(40)
    ));
    out
}

async fn token_create(
    common: CommonArgs,
    role: &str,
    project: Option<String>,
    description: &str,
) -> Result<ExitCode, Failure> {
    use certautopilot::api::auth::{self, Role};
    let role = Role::parse(role).ok_or_else(|| {
        Failure::Config(ConfigError(format!(
            "invalid --role {role:?}: expected admin, editor or viewer"
        )))
    })?;
    let grants = match &project {
        Some(p) => vec![(p.clone(), role)],
        None if role == Role::Admin => Vec::new(),
        None => {
            return Err(Failure::Config(ConfigError(
                "--role editor or viewer needs --project".into(),
            )))
        }
    };
    let store = connect(&common).await?;
    if let Some(p) = &project {
        let found = store
            .collection("projects")
            .find_one(doc! { "_id": p })
            .await
            .map_err(|e| Failure::Runtime(certautopilot::store::short(&e)))?;
        if found.is_none() {
            return Err(Failure::Runtime(format!("no project {p}")));
        }
    }
    let token = auth::create(&store, project.is_none(), &grants, description)
        .await
        .map_err(|e| Failure::Runtime(certautopilot::store::short(&e)))?;
    let event =
        Event::new(operator(), "token.created", format!("tokens/{}", token.id)).with(doc! {
            "global_admin": project.is_none(),
            "project_id": project.clone(),
            "role": role.as_str(),
        });
    audit(&store, event).await?;
    eprintln!(
        "created token {} ({}); it is shown once, below",
        token.id,
        match &project {
            Some(p) => format!("{} on {p}", role.as_str()),
            None => "global admin".into(),
        }
    );
    println!("{}", token.secret);
    Ok(ExitCode::SUCCESS)
}
