//! `certautopilot audit verify`: walks the hash chain and its checkpoints.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::config::CommonArgs;
use super::{connect, open_kek, Failure};
use crate::audit;
use crate::crypto::secrets::Secrets;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain and its checkpoints; exit 0 when intact, 3 at the
    /// first tampered record
    Verify {
        #[command(flatten)]
        common: CommonArgs,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        /// Also compare the log with the records a SIEM received: a file of
        /// our syslog forwarder's lines as rsyslog writes them. Lists what
        /// the SIEM holds that the database lacks; exit 3 for any such
        /// record that no authenticated restore explains (one `snapshot
        /// restore` wrote with the KEK), and when the two disagree
        #[arg(long)]
        witness: Option<PathBuf>,
    },
}

pub async fn run(command: AuditCommand) -> Result<ExitCode, Failure> {
    match command {
        AuditCommand::Verify {
            common,
            json,
            witness,
        } => verify(common, json, witness).await,
    }
}

async fn verify(
    common: CommonArgs,
    json: bool,
    witness: Option<PathBuf>,
) -> Result<ExitCode, Failure> {
    let store = connect(&common).await?;
    let kek = open_kek(&common)?;
    let secrets = Secrets::new(store.clone(), kek);
    let key = audit::checkpoint::existing_key(&secrets)
        .await
        .map_err(|e| Failure::Runtime(format!("reading the checkpoint key: {e}")))?;
    let total = audit::estimated_count(&store).await.unwrap_or(0);
    let report = audit::verify(
        &store,
        key.as_deref().map(|k| k.as_slice()),
        audit::terminal_progress(total),
    )
    .await
    .map_err(|e| {
        Failure::Runtime(format!(
            "reading the audit log: {}",
            crate::store::short(&e)
        ))
    })?;
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!();
    }
    let witnessed = match &witness {
        None => None,
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::Runtime(format!("cannot read {}: {e}", path.display())))?;
            let restore_key = key.as_deref().map(|k| k.as_slice());
            let compared =
                audit::witness::compare(&store, restore_key, std::io::BufReader::new(file))
                    .await
                    .map_err(|e| {
                        Failure::Runtime(format!(
                            "reading the audit log: {}",
                            crate::store::short(&e)
                        ))
                    })?
                    .map_err(|e| Failure::Runtime(format!("reading {}: {e}", path.display())))?;
            Some(compared)
        }
    };
    let confirmed = witnessed.as_ref().is_none_or(|w| w.confirmed);
    if json {
        let value = match &witnessed {
            None => serde_json::to_value(&report),
            Some(w) => serde_json::to_value(serde_json::json!({ "chain": report, "witness": w })),
        }
        .expect("report serializes");
        println!(
            "{}",
            serde_json::to_string_pretty(&value).expect("report serializes")
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
        if let Some(w) = &witnessed {
            print!("{}", w.render_human());
        }
    }
    Ok(if report.problem.is_none() && confirmed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}
