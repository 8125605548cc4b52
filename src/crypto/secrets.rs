//! Secrets at rest (collection `keys`): each stored as an envelope
//! ([`crate::crypto::envelope`]), so that MongoDB only ever holds ciphertext
//! and wrapped data keys (DESIGN.md invariant 7).
//!
//! A secret is named by its owner ([`SecretRef`]): its record id is derived
//! from the owner, and the owner (project, certificate, order or issuer) is
//! part of the associated data. A reference moved in the database — project
//! B's certificate pointed at project A's key — therefore names a record
//! sealed for someone else, and opening it fails instead of handing A's key
//! to B.

use std::sync::Arc;

use mongodb::error::Error as MongoError;
use zeroize::Zeroizing;

use crate::crypto::envelope::{self, EnvelopeError, Sealed};
use crate::crypto::kek::KekProvider;
use crate::domain::issuer::{eab_secret_id, tsig_secret_id};
use crate::domain::order::key_secret_id;
use crate::domain::target_settings::origin;
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
    #[error("the sealed URL {0} is at {1}, not at the bound origin {2}")]
    OtherOrigin(String, String, String),
}

impl SecretError {
    /// The database or the KEK is away: it comes back, so try again later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            SecretError::Db(_) | SecretError::Envelope(EnvelopeError::Kek(_))
        )
    }
}

/// A secret and its owner: the record id is derived from the owner, and the
/// owner is sealed into the ciphertext's associated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    id: String,
    owner: String,
}

impl SecretRef {
    /// The private key of the certificate `order` obtains.
    pub fn certificate_key(project: &str, certificate: &str, order: &str) -> SecretRef {
        SecretRef {
            id: key_secret_id(order),
            owner: format!("projects/{project}/certificates/{certificate}/orders/{order}"),
        }
    }

    /// An issuer's ACME account key and URL.
    pub fn acme_account(project: &str, issuer: &str) -> SecretRef {
        SecretRef {
            id: format!("acme-accounts/{issuer}"),
            owner: issuer_owner(project, issuer),
        }
    }

    /// An issuer's external account binding HMAC key.
    pub fn eab_key(project: &str, issuer: &str) -> SecretRef {
        SecretRef {
            id: eab_secret_id(issuer),
            owner: issuer_owner(project, issuer),
        }
    }

    /// An issuer's TSIG secret for DNS-01 updates.
    pub fn tsig_key(project: &str, issuer: &str) -> SecretRef {
        SecretRef {
            id: tsig_secret_id(issuer),
            owner: issuer_owner(project, issuer),
        }
    }

    /// The credential a distribution target is reached with (a webhook
    /// secret, a kubeconfig, an SSH key).
    pub fn target_credential(project: &str, target: &str) -> SecretRef {
        SecretRef {
            id: format!("targets/{target}"),
            owner: format!("projects/{project}/targets/{target}"),
        }
    }

    /// The credential a notification channel sends with (a webhook's
    /// secret, a Slack URL, an SMTP password); `project` `None` for an
    /// installation channel.
    pub fn channel_credential(project: Option<&str>, channel: &str) -> SecretRef {
        let owner = match project {
            Some(p) => format!("projects/{p}/channels/{channel}"),
            None => format!("installation/channels/{channel}"),
        };
        SecretRef {
            id: format!("channels/{channel}"),
            owner,
        }
    }

    /// A webhook target's whole URL: its path and query may hold a token,
    /// so only its origin is stored in the clear.
    pub fn target_url(project: &str, target: &str) -> SecretRef {
        SecretRef {
            id: format!("targets/{target}/url"),
            owner: format!("projects/{project}/targets/{target}"),
        }
    }

    /// A webhook channel's whole URL (as [`SecretRef::target_url`]);
    /// `project` `None` for an installation channel.
    pub fn channel_url(project: Option<&str>, channel: &str) -> SecretRef {
        let credential = SecretRef::channel_credential(project, channel);
        SecretRef {
            id: format!("{}/url", credential.id),
            owner: credential.owner,
        }
    }

    /// What a target held before a delivery of `certificate` replaced it,
    /// kept for the rollback (it holds a private key).
    pub fn distribution_previous(project: &str, certificate: &str, target: &str) -> SecretRef {
        SecretRef {
            id: format!("distributions/{certificate}:{target}/previous"),
            owner: format!("projects/{project}/certificates/{certificate}/targets/{target}"),
        }
    }

    /// A secret of the installation itself (the audit checkpoint key, the
    /// API token key).
    pub fn system(id: &str) -> SecretRef {
        SecretRef {
            id: id.to_string(),
            owner: "system".to_string(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The associated data that binds a ciphertext to its record and owner.
    fn associated_data(&self) -> String {
        format!("{KEYS}/{} owner={}", self.id, self.owner)
    }
}

fn issuer_owner(project: &str, issuer: &str) -> String {
    format!("projects/{project}/issuers/{issuer}")
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

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Seals and stores `plaintext` as the secret `secret` (replacing any before).
    pub async fn put(&self, secret: &SecretRef, plaintext: &[u8]) -> Result<(), SecretError> {
        let sealed = envelope::seal(self.kek.as_ref(), &secret.associated_data(), plaintext)?;
        keys::put(&self.store, &secret.id, &stored(&sealed)).await?;
        Ok(())
    }

    /// Removes `secrets`, whose owners are gone.
    pub async fn delete(&self, secrets: &[SecretRef]) -> Result<(), SecretError> {
        let ids: Vec<String> = secrets.iter().map(|s| s.id.clone()).collect();
        keys::delete(&self.store, &ids).await?;
        Ok(())
    }

    /// Reads the secret, first creating it from `make()` if it does not
    /// exist. Creation is insert-only, so processes racing to create the same
    /// secret all end up with the one that landed first.
    pub async fn get_or_create(
        &self,
        secret: &SecretRef,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        match self.get(secret).await {
            Err(SecretError::NotFound(_)) => {}
            found => return found,
        }
        let value = Zeroizing::new(make());
        let sealed = envelope::seal(self.kek.as_ref(), &secret.associated_data(), &value)?;
        keys::insert_new(&self.store, &secret.id, &stored(&sealed)).await?;
        self.get(secret).await
    }

    /// Reads and opens the secret. A record sealed for another owner does
    /// not open ([`EnvelopeError::WrongRecord`]).
    pub async fn get(&self, secret: &SecretRef) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        self.open(&secret.id, &secret.associated_data()).await
    }

    /// Opens a webhook's sealed whole URL ([`SecretRef::target_url`],
    /// [`SecretRef::channel_url`]) and checks that it is at `bound`, the
    /// origin stored in the clear and covered by the owner's binding MAC: a
    /// sealed URL swapped in the database does not send elsewhere.
    pub async fn open_url(&self, secret: &SecretRef, bound: &str) -> Result<String, SecretError> {
        let opened = self.get(secret).await?;
        let url = std::str::from_utf8(&opened)
            .map_err(|_| SecretError::Damaged(secret.id.clone(), "URL"))?;
        let (at, bound) = (origin(url), origin(bound));
        if at != bound {
            return Err(SecretError::OtherOrigin(secret.id.clone(), at, bound));
        }
        Ok(url.to_string())
    }

    /// Re-seals a secret stored by builds before owners were bound into the
    /// associated data (schema migration 12): opened as it was sealed, under
    /// its record id alone, and sealed again for `secret`'s owner.
    pub async fn bind_to_owner(&self, secret: &SecretRef) -> Result<(), SecretError> {
        let plaintext = self
            .open(&secret.id, &format!("{KEYS}/{}", secret.id))
            .await?;
        self.put(secret, &plaintext).await
    }

    async fn open(
        &self,
        id: &str,
        associated_data: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SecretError> {
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
        Ok(envelope::open(self.kek.as_ref(), associated_data, &sealed)?)
    }
}

fn stored(sealed: &Sealed) -> StoredSecret {
    StoredSecret {
        kek_version: sealed.kek_version,
        wrapped_key: sealed.wrapped_key.clone(),
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext.clone(),
    }
}
