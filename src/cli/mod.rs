//! Operator commands, one module per command, and the workloads; `main.rs`
//! parses the command line and dispatches here.
//!
//! - [`config`] — every `CAP_*` knob, its default, and validation.
//! - [`workloads`] — wiring of `api`, `worker`, `scheduler` and `all`.
//! - [`metrics_adapter`] — wiring of `metrics-adapter`, the HPA's queue-depth source.
//! - [`migrate`], [`health`], [`audit`], [`kek`], [`token`], [`fleet`],
//!   [`snapshot`], [`dr`] — the operator commands.

pub mod agent;
pub mod audit;
pub mod config;
pub mod dr;
pub mod fleet;
pub mod health;
pub mod kek;
pub mod metrics_adapter;
pub mod migrate;
pub mod snapshot;
pub mod token;
pub mod workloads;

use std::sync::Arc;

use crate::audit::{Audit, Event};
use crate::crypto::kek::KekProvider;
use crate::store::Store;
use config::{CommonArgs, ConfigError};

/// Why a command failed: a setting (exit 2) or at run time (exit 1).
pub enum Failure {
    Config(ConfigError),
    Runtime(String),
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

/// The database, for an operator command (and its logs set up).
pub async fn connect(common: &CommonArgs) -> Result<Store, Failure> {
    let cfg = common.resolve()?;
    crate::observe::logging::init(cfg.log_format);
    Store::connect(&cfg.mongo_uri, cfg.election_retry)
        .await
        .map_err(|e| Failure::Runtime(format!("cannot reach MongoDB: {}", crate::store::short(&e))))
}

/// Who operator commands act as, in the audit log.
pub fn operator() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("operator@{host}")
}

pub async fn audit(store: &Store, event: Event) -> Result<(), Failure> {
    Audit::new(store.clone())
        .append(&event)
        .await
        .map(|_| ())
        .map_err(|e| {
            Failure::Runtime(format!(
                "writing the audit record: {}",
                crate::store::short(&e)
            ))
        })
}

pub fn open_kek(common: &CommonArgs) -> Result<Arc<dyn KekProvider>, Failure> {
    let config = common.kek.resolve()?;
    crate::crypto::kek::open(&config).map_err(|e| Failure::Runtime(e.to_string()))
}
