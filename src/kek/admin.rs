//! The operator's KEK commands, as library calls: rotate, status, retire.
//! Each change is recorded in the audit log.

use std::collections::BTreeMap;
use std::sync::Arc;

use mongodb::bson::doc;
use serde::Serialize;

use super::{KekError, KekProvider};
use crate::audit::{Audit, Event};
use crate::rotation::{data_keys_by_version, remaining};
use crate::store::{short, Store};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Kek(#[from] KekError),
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

/// Creates a new current KEK version and records it. Returns it.
pub async fn rotate(
    store: &Store,
    kek: &Arc<dyn KekProvider>,
    actor: &str,
) -> Result<u32, AdminError> {
    kek.check()?;
    let from = kek.current_version();
    let version = kek.rotate()?;
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
