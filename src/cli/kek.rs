//! `certautopilot kek …`: init, rotate, status, retire, export, import.
//! Each change is recorded in the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;

use mongodb::bson::doc;
use serde::Serialize;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::config::{CommonArgs, ConfigError, KekArgs};
use super::{connect, open_kek, operator, Failure};
use crate::audit::{Audit, Event};
use crate::crypto::kek::check::{self, CheckError};
use crate::crypto::kek::{KekError, KekProvider};
use crate::store::keys::{data_keys_by_version, remaining};
use crate::store::{short, Store};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Kek(#[from] KekError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error("database error: {0}")]
    Db(String),
    #[error("{0}")]
    Refused(String),
}

impl From<mongodb::error::Error> for AdminError {
    fn from(e: mongodb::error::Error) -> Self {
        AdminError::Db(short(&e))
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KekStatus {
    pub provider: String,
    pub current: u32,
    /// Versions the provider holds.
    pub versions: Vec<u32>,
    /// Data keys per KEK version (including versions the provider lacks).
    pub data_keys: BTreeMap<u32, i64>,
    pub total: i64,
    /// Data keys not yet re-wrapped by the current version.
    pub remaining: i64,
}

impl KekStatus {
    pub fn complete(&self) -> bool {
        self.remaining == 0
    }

    /// One line: `[#######-----]  58% 580/1000 data keys on version 2`.
    pub fn progress_bar(&self, width: usize) -> String {
        let done = self.total - self.remaining;
        let fraction = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let filled = (fraction * width as f64).round() as usize;
        format!(
            "[{}{}] {:3.0}% {done}/{} data keys on version {}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            fraction * 100.0,
            self.total,
            self.current
        )
    }
}

pub async fn status(store: &Store, kek: &Arc<dyn KekProvider>) -> Result<KekStatus, AdminError> {
    kek.refresh()?;
    let current = kek.current_version();
    let data_keys = data_keys_by_version(store).await?;
    Ok(KekStatus {
        provider: kek.describe(),
        current,
        versions: kek.versions(),
        total: data_keys.values().sum(),
        remaining: remaining(&data_keys, current),
        data_keys,
    })
}

/// Creates a new current KEK version and records it (and its check value).
/// Returns it. Refuses a key ring that is not the installation's.
pub async fn rotate(
    store: &Store,
    kek: &Arc<dyn KekProvider>,
    actor: &str,
) -> Result<u32, AdminError> {
    kek.check()?;
    check::verify(store, kek.clone()).await?;
    let from = kek.current_version();
    let version = kek.rotate()?;
    check::verify(store, kek.clone()).await?;
    let event = Event::new(actor, "kek.rotated", format!("kek/{version}"))
        .with(doc! { "from": from as i64, "to": version as i64, "provider": kek.describe() });
    Audit::new(store.clone()).append(&event).await?;
    Ok(version)
}

/// Removes `version`, refusing while it is current or wraps any data key.
pub async fn retire(
    store: &Store,
    kek: &Arc<dyn KekProvider>,
    version: u32,
    actor: &str,
) -> Result<(), AdminError> {
    let status = status(store, kek).await?;
    if version == status.current {
        return Err(AdminError::Refused(format!(
            "KEK version {version} is current: run `certautopilot kek rotate` first"
        )));
    }
    if !status.versions.contains(&version) {
        return Err(AdminError::Refused(format!(
            "KEK version {version} is not in {} (it holds {:?})",
            status.provider, status.versions
        )));
    }
    let in_use = status.data_keys.get(&version).copied().unwrap_or(0);
    if in_use > 0 {
        return Err(AdminError::Refused(format!(
            "KEK version {version} still wraps {in_use} data key(s): wait for the re-wrap to finish (`certautopilot kek status --wait`)"
        )));
    }
    kek.remove(version)?;
    let event = Event::new(actor, "kek.retired", format!("kek/{version}"))
        .with(doc! { "provider": kek.describe() });
    Audit::new(store.clone()).append(&event).await?;
    Ok(())
}

#[derive(Subcommand)]
pub enum KekCommand {
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

pub async fn run(command: KekCommand) -> Result<ExitCode, Failure> {
    use crate::crypto::kek::{bundle, KekConfig};
    let runtime = |e: String| Failure::Runtime(e);
    match command {
        KekCommand::Init { file, kek } => {
            let config = match file {
                Some(path) => KekConfig::File { path },
                None => kek.resolve()?,
            };
            match &config {
                KekConfig::File { path } => {
                    crate::crypto::kek::FileKek::init(path).map_err(|e| runtime(e.to_string()))?;
                    eprintln!(
                        "created key ring {} with KEK version 1 (mode 0600); keep a copy offsite (`certautopilot kek export`): without it no secret can be decrypted",
                        path.display()
                    );
                }
                KekConfig::Pkcs11 { .. } => {
                    let provider =
                        crate::crypto::kek::open(&config).map_err(|e| runtime(e.to_string()))?;
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
            let version = rotate(&store, &kek, &operator())
                .await
                .map_err(|e| runtime(e.to_string()))?;
            let status = status(&store, &kek)
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
                let status = status(&store, &kek)
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
            retire(&store, &kek, version, &operator())
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
            crate::crypto::kek::file::write_new(&out, &text).map_err(|e| runtime(e.to_string()))?;
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
pub fn passphrase(file: Option<&std::path::Path>) -> Result<zeroize::Zeroizing<String>, Failure> {
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

fn render_kek_status(s: &KekStatus) -> String {
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
