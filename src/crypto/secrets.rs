//! Secrets at rest (collection `keys`): each stored as an envelope
//! ([`crate::crypto::envelope`]) under its record id, so that MongoDB only ever holds
//! ciphertext and wrapped data keys (DESIGN.md invariant 7).

use std::sync::Arc;

use mongodb::error::Error as MongoError;
use zeroize::Zeroizing;

use crate::crypto::envelope::{self, EnvelopeError, Sealed};
use crate::crypto::kek::KekProvider;
use crate::store::keys::{self, StoredSecret, KEYS};
use crate::store::{short, Store};

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("no secret stored for {0}")]
    NotFound(String),
    #[error("secret {0} is damaged: {1}")]
    Damaged(String, &'static str),
    #[error("database error: {}", short(.0))]
    Db(#[from] MongoError),
}

#[derive(Clone)]
pub struct Secrets {
    store: Store,
    kek: Arc<dyn KekProvider>,
}

impl Secrets {
    pub fn new(store: Store, kek: Arc<dyn KekProvider>) -> Secrets {
        Secrets { store, kek }
    }

    /// Seals and stores `plaintext` as the secret `id` (replacing any before).
    pub async fn put(&self, id: &str, plaintext: &[u8]) -> Result<(), SecretError> {
        let sealed = envelope::seal(self.kek.as_ref(), &record(id), plaintext)?;
        keys::put(&self.store, id, &stored(&sealed)).await?;
        Ok(())
    }

    /// Reads the secret `id`, first creating it from `make()` if it does not
    /// exist. Creation is insert-only, so processes racing to create the same
    /// secret all end up with the one that landed first.
    pub async fn get_or_create(
        &self,
        id: &str,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        match self.get(id).await {
            Err(SecretError::NotFound(_)) => {}
            found => return found,
        }
        let value = Zeroizing::new(make());
        let sealed = envelope::seal(self.kek.as_ref(), &record(id), &value)?;
        keys::insert_new(&self.store, id, &stored(&sealed)).await?;
        self.get(id).await
    }

    /// Reads and opens the secret `id`.
    pub async fn get(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let found = keys::get(&self.store, id)
            .await?
            .ok_or_else(|| SecretError::NotFound(id.to_string()))?
            .map_err(|field| SecretError::Damaged(id.to_string(), field))?;
        let sealed = Sealed {
            kek_version: found.kek_version,
            wrapped_key: found.wrapped_key,
            nonce: found
                .nonce
                .as_slice()
                .try_into()
                .map_err(|_| SecretError::Damaged(id.to_string(), "nonce"))?,
            ciphertext: found.ciphertext,
        };
        Ok(envelope::open(self.kek.as_ref(), &record(id), &sealed)?)
    }
}

/// The associated data that binds a ciphertext to its record.
fn record(id: &str) -> String {
    format!("{KEYS}/{id}")
}

fn stored(sealed: &Sealed) -> StoredSecret {
    StoredSecret {
        kek_version: sealed.kek_version,
        wrapped_key: sealed.wrapped_key.clone(),
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext.clone(),
    }
}
