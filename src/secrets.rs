//! Secrets at rest (collection `keys`): each stored as an envelope
//! ([`crate::envelope`]) under its record id, so that MongoDB only ever holds
//! ciphertext and wrapped data keys (DESIGN.md invariant 7).

use std::sync::Arc;

use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::error::Error as MongoError;
use zeroize::Zeroizing;

use crate::envelope::{self, EnvelopeError, Sealed};
use crate::kek::KekProvider;
use crate::store::{short, Store};

pub const KEYS_COLLECTION: &str = "keys";

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
        let keys = self.store.collection(KEYS_COLLECTION);
        let update = doc! {
            "$set": sealed_fields(&sealed),
            "$currentDate": { "updated_at": true },
        };
        self.store
            .ride_through("store secret", || {
                keys.update_one(doc! { "_id": id }, update.clone())
                    .upsert(true)
            })
            .await?;
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
        let mut document = sealed_fields(&sealed);
        document.insert("_id", id);
        document.insert("updated_at", self.store.server_now().await?);
        let keys = self.store.collection(KEYS_COLLECTION);
        match self
            .store
            .ride_through("create secret", || keys.insert_one(document.clone()))
            .await
        {
            Ok(_) => {}
            Err(e) if crate::store::is_duplicate_key(&e) => {}
            Err(e) => return Err(e.into()),
        }
        self.get(id).await
    }

    /// Reads and opens the secret `id`.
    pub async fn get(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let keys = self.store.collection(KEYS_COLLECTION);
        let found = self
            .store
            .ride_through("read secret", || keys.find_one(doc! { "_id": id }))
            .await?;
        let d = found.ok_or_else(|| SecretError::NotFound(id.to_string()))?;
        let sealed = sealed_from(id, &d)?;
        Ok(envelope::open(self.kek.as_ref(), &record(id), &sealed)?)
    }
}

/// The associated data that binds a ciphertext to its record.
fn record(id: &str) -> String {
    format!("{KEYS_COLLECTION}/{id}")
}

/// The stored fields of a sealed secret.
fn sealed_fields(sealed: &Sealed) -> Document {
    doc! {
        "kek_version": sealed.kek_version as i64,
        "wrapped_key": binary(&sealed.wrapped_key),
        "nonce": binary(&sealed.nonce),
        "ciphertext": binary(&sealed.ciphertext),
    }
}

pub(crate) fn binary(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}

fn sealed_from(id: &str, d: &Document) -> Result<Sealed, SecretError> {
    let damaged = |what| SecretError::Damaged(id.to_string(), what);
    let bytes = |field| d.get_binary_generic(field).map_err(|_| damaged(field));
    Ok(Sealed {
        kek_version: d
            .get_i64("kek_version")
            .map_err(|_| damaged("kek_version"))? as u32,
        wrapped_key: bytes("wrapped_key")?.clone(),
        nonce: bytes("nonce")?
            .as_slice()
            .try_into()
            .map_err(|_| damaged("nonce"))?,
        ciphertext: bytes("ciphertext")?.clone(),
    })
}
