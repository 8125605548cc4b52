//! How API token records are keyed: `_id` = HMAC-SHA256, under a key only
//! KEK holders can read, of the SHA-256 of the token's secret. A database
//! writer who inserts a record for a secret of their choosing cannot
//! compute its id, so the record never authenticates anyone.
//!
//! Hashing the secret first lets records stored by earlier builds (keyed by
//! that SHA-256 alone) be rekeyed without their secrets (migration 12).

use hmac::{Hmac, Mac};
use mongodb::bson::{Bson, Document};
use sha2::{Digest, Sha256};
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use super::envelope;
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
                let secret = SecretRef::system(TOKEN_KEY_SECRET);
                match self.secrets.get(&secret).await {
                    Err(SecretError::NotFound(_)) => {}
                    found => return found,
                }
                // Made once, with the first token: once tokens were keyed
                // with it, a missing key was deleted, and a new one would
                // only split the replicas (and hide it).
                if crate::store::tokens::any_keyed(self.secrets.store()).await? {
                    return Err(SecretError::NotFound(format!(
                        "{TOKEN_KEY_SECRET}, although API tokens were keyed with it: restore it from a backup (it is not made again)"
                    )));
                }
                self.secrets
                    .get_or_create(&secret, || super::kek::random_key().to_vec())
                    .await
            })
            .await?;
        Ok(key.as_slice())
    }

    /// The record id of the token whose secret is `secret`.
    pub async fn record_id(&self, secret: &str) -> Result<String, SecretError> {
        Ok(keyed(self.key().await?, &legacy_id(secret)))
    }

    /// Whether the token key exists already.
    pub async fn exists(&self) -> Result<bool, SecretError> {
        match self.secrets.get(&SecretRef::system(TOKEN_KEY_SECRET)).await {
            Ok(_) => Ok(true),
            Err(SecretError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The MAC over what a token record grants — its ids, `global_admin`,
    /// `roles`, `expires_at` and `created_by` — so that a database writer
    /// cannot raise a token it holds, or revive an expired one, by editing
    /// its record.
    pub async fn grants_mac(&self, record: &Document) -> Result<String, SecretError> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key().await?).expect("HMAC takes any key length");
        mac.update(grants_text(record).as_bytes());
        Ok(hex(&mac.finalize().into_bytes()))
    }

    /// Seals an answer kept for an idempotent retry (it may hold a token's
    /// secret, shown once) for the record `record`: AES-256-GCM under a key
    /// derived from the token key, so the database holds only ciphertext and
    /// a KEK rotation leaves it readable. The nonce comes first.
    pub async fn seal_answer(
        &self,
        record: &str,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, SecretError> {
        let (nonce, ciphertext) = envelope::encrypt(&self.answer_key().await?, record, plaintext);
        Ok([nonce.as_slice(), &ciphertext].concat())
    }

    /// Opens what [`TokenKey::seal_answer`] sealed for `record`.
    pub async fn open_answer(&self, record: &str, sealed: &[u8]) -> Result<Vec<u8>, SecretError> {
        let damaged =
            || SecretError::Damaged(record.to_string(), "the kept answer does not decrypt");
        let (nonce, ciphertext) = sealed
            .split_first_chunk::<{ envelope::NONCE_LEN }>()
            .ok_or_else(damaged)?;
        envelope::decrypt(&self.answer_key().await?, record, nonce, ciphertext)
            .map(|plain| plain.to_vec())
            .ok_or_else(damaged)
    }

    /// The answers' key: derived from the token key, for that use only.
    async fn answer_key(&self) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        self.derived_key(b"certautopilot idempotent answers v1")
            .await
    }

    /// A key for one `purpose` alone, derived from the token key (so only
    /// KEK holders can compute it, and a restored snapshot keeps it).
    pub async fn derived_key(&self, purpose: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.key().await?).expect("HMAC takes any key length");
        mac.update(purpose);
        Ok(Zeroizing::new(mac.finalize().into_bytes().to_vec()))
    }

    /// The record id for a record stored by earlier builds under `legacy`.
    pub async fn rekeyed(&self, legacy: &str) -> Result<String, SecretError> {
        Ok(keyed(self.key().await?, legacy))
    }
}

/// The granting fields of a token record, in a fixed form.
fn grants_text(record: &Document) -> String {
    let roles: Vec<String> = record
        .get_array("roles")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|r| {
                    // An agent's targets are part of its grant; other roles
                    // have none, and read as they always did.
                    let targets: Vec<&str> = r
                        .get_array("targets")
                        .map(|t| t.iter().filter_map(Bson::as_str).collect())
                        .unwrap_or_default();
                    let targets = match targets.as_slice() {
                        [] => String::new(),
                        t => format!("[{}]", t.join("+")),
                    };
                    format!(
                        "{}={}{targets}",
                        r.get_str("project_id").unwrap_or_default(),
                        r.get_str("role").unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    // Whose rate budget a minted token spends: part of what it is given.
    // Records without one (older, or made by a global admin) read as they
    // always did.
    let budget = match record.get_str("rate_budget") {
        Ok(budget) => format!("\nbudget={budget}"),
        Err(_) => String::new(),
    };
    format!(
        "certautopilot token grants v1\n{}\n{}\n{}\n{}\n{}\n{}{budget}",
        record.get_str("_id").unwrap_or_default(),
        record.get_str("id").unwrap_or_default(),
        record.get_bool("global_admin").unwrap_or(false),
        roles.join(","),
        record
            .get_datetime("expires_at")
            .map(|t| t.timestamp_millis().to_string())
            .unwrap_or_else(|_| "never".into()),
        record.get_str("created_by").unwrap_or_default(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::doc;

    #[test]
    fn whose_budget_a_token_spends_is_part_of_what_is_maced() {
        let record = doc! { "_id": "r", "id": "tok_1", "global_admin": false, "roles": [], "created_by": "tok_0" };
        let mut budgeted = record.clone();
        budgeted.insert("rate_budget", "tok_0");
        let mut moved = record.clone();
        moved.insert("rate_budget", "tok_9");
        assert_ne!(grants_text(&record), grants_text(&budgeted));
        assert_ne!(grants_text(&budgeted), grants_text(&moved));
        assert!(
            !grants_text(&record).contains("budget"),
            "a record without one reads as before"
        );
    }
}
