//! `certautopilot fleet status|wait`: the live processes of an installation,
//! from the fleet registry ([`crate::store::fleet`]).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Subcommand;

use super::config::{CommonArgs, ConfigError};
use super::{connect, Failure};
use crate::queue::lease::{Leases, SCHEDULER_LEASE};
use crate::store::fleet::{self, Instance};
use crate::store::{short, Store};

/// How often `fleet wait` looks again.
const POLL: Duration = Duration::from_secs(2);

#[derive(Subcommand)]
pub enum FleetCommand {
    /// List the live instances, their roles and versions, and the scheduler leader
    Status {
        #[command(flatten)]
        common: CommonArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Wait until no live instance of the given roles runs a version older
    /// than --version; exit 0 then, 1 on timeout
    Wait {
        #[command(flatten)]
        common: CommonArgs,
        /// Comma-separated roles: api, worker, scheduler, metrics-adapter
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// The version every instance of those roles must have reached (semver)
        #[arg(long)]
        version: String,
        /// Give up after this many seconds [default: 600]
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

pub async fn run(command: FleetCommand) -> Result<ExitCode, Failure> {
    match command {
        FleetCommand::Status { common, json } => status(common, json).await,
        FleetCommand::Wait {
            common,
            roles,
            version,
            timeout,
        } => wait(common, roles, &version, Duration::from_secs(timeout)).await,
    }
}

async fn live(store: &Store) -> Result<Vec<Instance>, Failure> {
    fleet::live(store)
        .await
        .map_err(|e| Failure::Runtime(format!("reading the fleet registry: {}", short(&e))))
}

async fn status(common: CommonArgs, json: bool) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let instances = live(&store).await?;
    let leader = Leases::new(store.clone())
        .live_holder(SCHEDULER_LEASE)
        .await
        .map_err(|e| Failure::Runtime(short(&e)))?
        .map(|term| term.holder);
    if json {
        let report = serde_json::json!({ "instances": instances, "scheduler_leader": leader });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serializes")
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<32} {:<24} {:<10} {:<7} {:<26} last seen",
        "instance", "roles", "version", "schema", "started"
    );
    for i in &instances {
        println!(
            "{:<32} {:<24} {:<10} {:<7} {:<26} {}",
            i.instance_id,
            i.roles.join(","),
            i.version.as_deref().unwrap_or("unknown"),
            i.schema_known.map(|s| s.to_string()).unwrap_or("?".into()),
            i.started_at.as_deref().unwrap_or("?"),
            i.last_seen.as_deref().unwrap_or("?"),
        );
    }
    println!(
        "{} live instance(s); scheduler leader: {}",
        instances.len(),
        leader.as_deref().unwrap_or("none")
    );
    Ok(ExitCode::SUCCESS)
}

/// The instances of `roles` running a version older than `wanted` (an
/// instance that records no version is older: it predates the registry).
pub fn older(instances: &[Instance], roles: &[String], wanted: &semver::Version) -> Vec<String> {
    instances
        .iter()
        .filter(|i| i.roles.iter().any(|r| roles.contains(r)))
        .filter(|i| {
            i.version
                .as_deref()
                .and_then(|v| semver::Version::parse(v).ok())
                .is_none_or(|v| v < *wanted)
        })
        .map(|i| {
            format!(
                "{} ({}, {})",
                i.instance_id,
                i.roles.join(","),
                i.version.as_deref().unwrap_or("unknown version")
            )
        })
        .collect()
}

async fn wait(
    common: CommonArgs,
    roles: Vec<String>,
    version: &str,
    timeout: Duration,
) -> Result<ExitCode, Failure> {
    let wanted = semver::Version::parse(version.trim_start_matches('v')).map_err(|e| {
        Failure::Config(ConfigError(format!(
            "invalid --version {version:?}: {e} (expected a version such as 1.4.0)"
        )))
    })?;
    const KNOWN: [&str; 4] = ["api", "worker", "scheduler", "metrics-adapter"];
    if let Some(bad) = roles.iter().find(|r| !KNOWN.contains(&r.as_str())) {
        return Err(Failure::Config(ConfigError(format!(
            "invalid --roles entry {bad:?}: expected {}",
            KNOWN.join(", ")
        ))));
    }
    let store = connect(&common).await?;
    let started = Instant::now();
    let mut last_said = String::new();
    loop {
        let waiting = older(&live(&store).await?, &roles, &wanted);
        if waiting.is_empty() {
            eprintln!(
                "fleet: no live {} instance runs a version older than {wanted}",
                roles.join("/")
            );
            return Ok(ExitCode::SUCCESS);
        }
        let said = format!(
            "waiting for {} older instance(s): {}",
            waiting.len(),
            waiting.join("; ")
        );
        if said != last_said {
            eprintln!("fleet: {said}");
            last_said = said;
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "fleet: timed out after {} s: {} instance(s) still older than {wanted}: {}",
                timeout.as_secs(),
                waiting.len(),
                waiting.join("; ")
            );
            return Ok(ExitCode::from(1));
        }
        tokio::time::sleep(POLL).await;
    }
}
