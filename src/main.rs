//! The `certautopilot` binary: one subcommand per workload or operator command.
//!
//! Exit codes: 0 success (for `health`: healthy); 1 a runtime failure (or
//! unhealthy); 2 invalid configuration or usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use certautopilot::config::{CommonArgs, ConfigError, WorkloadArgs};
use certautopilot::workloads::{self, Roles};
use certautopilot::{health, logging, schema, store::Store};

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
    /// Key-encryption keys
    #[command(subcommand)]
    Kek(KekCommand),
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
    /// Create a new key ring (mode 0600) holding KEK version 1, for a fresh installation
    Init {
        /// Where to write it; refuses to overwrite
        #[arg(long, env = "CAP_KEK_FILE")]
        file: std::path::PathBuf,
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
        Command::Kek(KekCommand::Init { file }) => return kek_init(&file),
    };
    let cfg = args.resolve()?;
    logging::init(cfg.common.log_format);
    workloads::run(roles, cfg)
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

fn kek_init(file: &std::path::Path) -> Result<ExitCode, Failure> {
    certautopilot::kek::FileKek::init(file).map_err(|e| Failure::Runtime(e.to_string()))?;
    eprintln!(
        "created key ring {} with KEK version 1 (mode 0600); keep a copy offsite: without it no secret can be decrypted",
        file.display()
    );
    Ok(ExitCode::SUCCESS)
}

async fn health(common: CommonArgs, json: bool) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let report = health::check(&store).await;
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
