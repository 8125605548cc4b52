//! `certautopilot audit verify`: walks the hash chain and its checkpoints.

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
    },
}

pub async fn run(command: AuditCommand) -> Result<ExitCode, Failure> {
    match command {
        AuditCommand::Verify { common, json } => verify(common, json).await,
    }
}

async fn verify(common: CommonArgs, json: bool) -> Result<ExitCode, Failure> {
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
