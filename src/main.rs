//! The `certautopilot` binary: one subcommand per workload or operator command.
//!
//! Exit codes: 0 success (for `health`: healthy); 1 a runtime failure (or
//! unhealthy); 2 invalid configuration or usage.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use certautopilot::cli::agent::AgentArgs;
use certautopilot::cli::audit::AuditCommand;
use certautopilot::cli::config::{AdapterArgs, CommonArgs, WorkloadArgs};
use certautopilot::cli::dr::DrCommand;
use certautopilot::cli::fleet::FleetCommand;
use certautopilot::cli::kek::KekCommand;
use certautopilot::cli::snapshot::SnapshotCommand;
use certautopilot::cli::token::TokenCommand;
use certautopilot::cli::workloads::{self, Roles};
use certautopilot::cli::{self, Failure};
use certautopilot::observe::logging;

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
    /// Beside a server: fetch its agent target's certificates, write them, reload, validate, report
    Agent(AgentArgs),
    /// Serve the queue depth to Kubernetes HPAs as external.metrics.k8s.io (TLS)
    MetricsAdapter(AdapterArgs),
    /// Apply schema migrations (collections, indexes); safe to repeat
    Migrate {
        #[command(flatten)]
        common: CommonArgs,
        /// Apply a breaking (contract) migration although instances that
        /// know an older schema are still live
        #[arg(long)]
        force: bool,
    },
    /// The live processes of the installation
    #[command(subcommand)]
    Fleet(FleetCommand),
    /// Key-encryption keys: init, rotate, status, retire, export, import
    #[command(subcommand)]
    Kek(KekCommand),
    /// The audit log
    #[command(subcommand)]
    Audit(AuditCommand),
    /// API tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// Snapshots of the whole installation: save, restore, inspect
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Disaster recovery: the end-to-end drill
    #[command(subcommand)]
    Dr(DrCommand),
    /// Check the installation; exit 0 only when healthy
    Health {
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

async fn run(command: Command) -> Result<ExitCode, Failure> {
    let (roles, args) = match command {
        Command::Api(a) => (Roles::API, a),
        Command::Worker(a) => (Roles::WORKER, a),
        Command::Scheduler(a) => (Roles::SCHEDULER, a),
        Command::All(a) => (Roles::ALL, a),
        Command::Migrate { common, force } => return cli::migrate::run(common, force).await,
        Command::Fleet(command) => return cli::fleet::run(command).await,
        Command::Health { common, json } => return cli::health::run(common, json).await,
        Command::Kek(command) => return cli::kek::run(command).await,
        Command::Token(command) => return cli::token::run(command).await,
        Command::Audit(command) => return cli::audit::run(command).await,
        Command::Snapshot(command) => return cli::snapshot::run(command).await,
        Command::Dr(command) => return cli::dr::run(command).await,
        Command::Agent(args) => {
            logging::init(logging::LogFormat::Json);
            return cli::agent::run(args).await;
        }
        Command::MetricsAdapter(args) => {
            let cfg = args.resolve()?;
            logging::init(cfg.common.log_format);
            cli::metrics_adapter::run(cfg)
                .await
                .map_err(|e| Failure::Runtime(e.to_string()))?;
            return Ok(ExitCode::SUCCESS);
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
