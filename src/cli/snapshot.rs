//! `certautopilot snapshot save | restore | inspect`: backups of the whole
//! installation ([`crate::backup`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::config::CommonArgs;
use super::{connect, open_kek, operator, Failure};
use crate::backup;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Write every collection, read at one point in time, to one compressed
    /// file with a manifest (mode 0600; refuses to overwrite). Secrets stay
    /// ciphertext: the snapshot is useless without the KEK
    Save {
        /// The snapshot to create
        #[arg(long, required_unless_present = "out_dir", conflicts_with = "out_dir")]
        out: Option<PathBuf>,
        /// Or a directory to create it in, named
        /// certautopilot-YYYYMMDDTHHMMSSZ.snap (a scheduled backup)
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// With --out-dir: after a successful save, delete the oldest
        /// certautopilot-*.snap there beyond the newest N [default: keep all]
        #[arg(long, requires = "out_dir")]
        keep: Option<usize>,
        /// Print the manifest as JSON on standard output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Check a snapshot end to end and the configured KEK against it, then
    /// load it into the (empty) database CAP_MONGO_URI or --mongo-uri names
    /// and record the restore, authenticated with the KEK; run `migrate`
    /// after it
    Restore {
        /// The snapshot
        #[arg(long)]
        from: PathBuf,
        /// Print what was restored as JSON on standard output
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Check a snapshot end to end and print its manifest; touches no database
    Inspect {
        /// The snapshot
        #[arg(long)]
        from: PathBuf,
        /// Print the manifest as JSON
        #[arg(long)]
        json: bool,
    },
}

fn failed(e: backup::BackupError) -> Failure {
    Failure::Runtime(e.to_string())
}

fn print_json(value: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("a manifest serializes")
    );
}

pub async fn run(command: SnapshotCommand) -> Result<ExitCode, Failure> {
    match command {
        SnapshotCommand::Save {
            out,
            out_dir,
            keep,
            json,
            common,
        } => {
            if keep == Some(0) {
                return Err(Failure::Config(super::config::ConfigError(
                    "--keep 0 would delete the snapshot just taken: keep at least 1".into(),
                )));
            }
            let out = match (out, &out_dir) {
                (Some(out), _) => out,
                (None, Some(dir)) => dir.join(backup::scheduled_name(std::time::SystemTime::now())),
                (None, None) => unreachable!("clap requires one of them"),
            };
            let store = connect(&common).await?;
            let manifest = backup::save(&store, &out).await.map_err(failed)?;
            let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "wrote {} ({} documents, {:.1} MiB, mode 0600). Store it offsite; it holds ciphertext only, so keep the KEK bundle (`certautopilot kek export`) and its passphrase apart from it: without them it restores nothing usable",
                out.display(),
                manifest.documents(),
                size as f64 / (1024.0 * 1024.0)
            );
            if let (Some(dir), Some(keep)) = (&out_dir, keep) {
                for old in backup::prune(dir, keep).map_err(failed)? {
                    eprintln!("deleted {} (keeping the newest {keep})", old.display());
                }
            }
            if json {
                print_json(&manifest);
            } else {
                print!("{}", backup::describe(&manifest));
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Restore { from, json, common } => {
            let store = connect(&common).await?;
            // The restore record is authenticated with the KEK, so that
            // `audit verify --witness` can tell it from one anyone who can
            // write the database appends.
            let kek = open_kek(&common)?;
            let restored = backup::restore(&store, &from, &operator(), kek)
                .await
                .map_err(failed)?;
            eprintln!(
                "restored {} documents into database {} (audit record {} records the restore). Next: run `certautopilot migrate` (it builds the indexes), `certautopilot audit verify --witness SIEM-FILE` and `certautopilot health`",
                restored.documents,
                store.db().name(),
                restored.audit_seq
            );
            if json {
                print_json(&restored);
            } else {
                print!("{}", backup::describe(&restored.manifest));
            }
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Inspect { from, json } => {
            let manifest = backup::inspect(&from).map_err(failed)?;
            eprintln!("{} is whole and matches its manifest", from.display());
            if json {
                print_json(&manifest);
            } else {
                print!("{}", backup::describe(&manifest));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
