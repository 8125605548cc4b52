//! `chaos`: breaks a whole local CertAutoPilot installation on purpose and
//! prints what held. See chaos/README.md; `chaos/run` builds and runs it.

mod load;
mod procs;
mod report;
mod scenarios;
mod stack;
mod topology;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Breaks a local CertAutoPilot installation on purpose and reports what held"
)]
struct Args {
    /// Scenarios to run, one after another, each on an installation of its
    /// own; `all` for every one; `clean` removes what an interrupted run left.
    #[arg(required = true)]
    scenarios: Vec<String>,
    /// How long each scenario runs under load (seconds), fault included:
    /// the full length by default; CI runs 30.
    #[arg(long, default_value_t = 300)]
    duration: u64,
    /// Also write the reports as JSON here (an array, one per scenario).
    #[arg(long)]
    report: Option<PathBuf>,
    /// Worker hosts per zone.
    #[arg(long, default_value_t = 1)]
    workers_per_zone: usize,
    /// Pebble's certificate lifetime (seconds): certificates renew about two
    /// thirds into it, so a short run sees every certificate renewed.
    #[arg(long, default_value_t = 40)]
    validity_secs: u64,
    /// The certautopilot binary under test.
    #[arg(long, default_value = "target/debug/certautopilot")]
    bin: PathBuf,
    /// The previous release's binary, for rolling-upgrade.
    #[arg(long)]
    previous_bin: Option<PathBuf>,
    /// Where each run's database, logs and report go (a directory per scenario).
    #[arg(long, default_value = ".chaos/runs")]
    dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("chaos: needs root, for its network namespaces (CI runs as root)");
        return ExitCode::from(2);
    }
    let names: Vec<String> = if args.scenarios == ["all"] {
        scenarios::SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    if names == ["clean"] {
        topology::clean();
        return ExitCode::SUCCESS;
    }
    if let Some(unknown) = names
        .iter()
        .find(|n| !scenarios::SCENARIOS.contains(&n.as_str()))
    {
        eprintln!(
            "chaos: unknown scenario {unknown:?}; the scenarios: {}, all, clean",
            scenarios::SCENARIOS.join(", ")
        );
        return ExitCode::from(2);
    }
    // One thread: every process is spawned from it, so each one's
    // parent-death signal fires only when the harness itself ends.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let code = runtime.block_on(async {
        tokio::select! {
            code = run_all(&args, &names) => code,
            signal = interrupted() => {
                eprintln!("chaos: {signal}: stopping and cleaning up");
                ExitCode::from(130)
            }
        }
    });
    // Whatever the outcome, nothing of the run stays behind.
    drop(runtime);
    topology::clean();
    code
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn run_all(args: &Args, names: &[String]) -> ExitCode {
    let mut reports = Vec::new();
    let mut failed = false;
    for name in names {
        // An earlier run that was killed outright may have left its network.
        topology::clean();
        let dir = args.dir.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        let settings = stack::Settings {
            bin: std::fs::canonicalize(&args.bin).unwrap_or_else(|_| args.bin.clone()),
            workers_per_zone: args.workers_per_zone,
            validity_secs: args.validity_secs,
            dir: std::path::absolute(&dir).unwrap_or(dir.clone()),
        };
        let options = scenarios::Options {
            duration: Duration::from_secs(args.duration),
            previous_bin: args
                .previous_bin
                .as_ref()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        };
        eprintln!(
            "chaos: {name}: starting ({} s under load; logs in {})",
            args.duration,
            dir.display()
        );
        match scenarios::run(name, settings, &options).await {
            Ok(report) => {
                print!("{}", report.text());
                failed |= !report.passed;
                let json = serde_json::to_string_pretty(&report).expect("a report serializes");
                let _ = std::fs::write(dir.join("report.json"), &json);
                reports.push(serde_json::to_value(&report).expect("a report serializes"));
            }
            Err(e) => {
                println!("scenario {name}: could not run: {e}");
                failed = true;
                reports.push(serde_json::json!({ "scenario": name, "mode": "local", "error": e, "passed": false }));
            }
        }
        topology::clean();
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&reports).expect("reports serialize");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("chaos: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
