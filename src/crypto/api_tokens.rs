//! How API token records are keyed: `_id` = HMAC-SHA256, under a key only
//! KEK holders can read, of the SHA-256 of the token's secret. A database
//! writer who inserts a record for a secret of their choosing cannot
//! compute its id, so the record never authenticates anyone.
//!
//! Hashing the secret first lets records stored by earlier builds (keyed by
//! that SHA-256 alone) be rekeyed without their secrets (migration 12).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::secrets::{SecretError, SecretRef, Secrets};

/// The secret holding the token key.
pub const TOKEN_KEY_SECRET: &str = "api-token-key";

/// The token key, read (or created) once per process.
#[derive(Clone)]
pub struct TokenKey {
    secrets: Secrets,
    key: std::sync::Arc<OnceCell<Zeroizing<Vec<u8>>>>,
}

impl TokenKey {
    pub fn new(secrets: Secrets) -> TokenKey {
        TokenKey {
            secrets,
            key: Default::default(),
        }
    }

    async fn key(&self) -> Result<&[u8], SecretError> {
        let key = self
            .key
            .get_or_try_init(|| async {
                self.secrets
                    .get_or_create(&SecretRef::system(TOKEN_KEY_SECRET), || {
                        super::kek::random_key().to_vec()
                    })
                    .await
            })
            .await?;
        Ok(key.as_slice())
    }

    /// The record id of the token whose secret is `secret`.
    pub async fn record_id(&self, secret: &str) -> Result<String, SecretError> {
        Ok(keyed(self.key().await?, &legacy_id(secret)))
    }

    /// The record id for a record stored by earlier builds under `legacy`.
    pub async fn rekeyed(&self, legacy: &str) -> Result<String, SecretError> {
        Ok(keyed(self.key().await?, legacy))
    }
}

/// The id earlier builds stored a token under: SHA-256 of its secret.
fn legacy_id(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

fn keyed(key: &[u8], legacy: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(legacy.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
