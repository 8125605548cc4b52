//! Is this the installation's KEK? A wrap/unwrap canary only says a KEK
//! works; a second key ring made by `kek init` works too, under the same
//! version numbers, and would wrap new data keys that no other process can
//! open. So the check value of every KEK version ([`KekProvider::check_value`])
//! is recorded in the database the first time a process sees the version
//! (`kek_versions`), and a provider whose version computes another value is
//! refused, naming the version.

use std::sync::Arc;

use super::{KekError, KekProvider};
use crate::store::{kek_versions, short, Store};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The KEK is unreachable or is not this installation's.
    #[error(transparent)]
    Kek(#[from] KekError),
    /// The recorded values could not be read or written: nothing is known.
    #[error("KEK check values: database error: {0}")]
    Db(String),
}

impl From<mongodb::error::Error> for CheckError {
    fn from(e: mongodb::error::Error) -> Self {
        CheckError::Db(short(&e))
    }
}

/// Compares the check value of every version `kek` holds with the recorded
/// one, recording those not seen before.
pub async fn verify(store: &Store, kek: Arc<dyn KekProvider>) -> Result<(), CheckError> {
    // An HSM call blocks: off the async threads.
    let values = tokio::task::spawn_blocking(move || {
        kek.versions()
            .into_iter()
            .map(|v| kek.check_value(v).map(|value| (v, value)))
            .collect::<Result<Vec<_>, KekError>>()
    })
    .await
    .map_err(|_| KekError::Refused("computing KEK check values panicked".into()))??;
    let recorded = kek_versions::recorded(store).await?;
    for (version, value) in values {
        let expected = match recorded.get(&version) {
            Some(expected) => expected.clone(),
            None => kek_versions::record(store, version, &value).await?,
        };
        if expected != value {
            return Err(KekError::NotThisKeyRing { version }.into());
        }
    }
    Ok(())
}
