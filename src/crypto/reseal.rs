//! Schema migration 12's KEK work ([`KekMigrations`]), for what earlier
//! builds stored:
//!
//! - API tokens keyed by a plain SHA-256 are rekeyed under the token key
//!   ([`crate::crypto::api_tokens`]); their secrets keep working.
//! - Secrets sealed under their record id alone are sealed again for their
//!   owner ([`SecretRef`]), found from the order or issuer they belong to.
//! - EAB HMAC keys stored in the clear in `issuers.eab.hmac_key` are sealed
//!   and removed from the issuer.
//!
//! Every step is idempotent: a rerun finds only what is left.

use futures::future::BoxFuture;

use super::api_tokens::TokenKey;
use super::envelope::EnvelopeError;
use super::secrets::{SecretError, SecretRef, Secrets};
use crate::store::schema::KekMigrations;
use crate::store::{issuers, keys, orders, short, tokens, Store};

pub struct Reseal {
    pub secrets: Secrets,
}

impl KekMigrations for Reseal {
    fn run<'a>(
        &'a self,
        version: i64,
        store: &'a Store,
        progress: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match version {
                12 => self.bind_what_earlier_builds_stored(store, progress).await,
                _ => Ok(()),
            }
        })
    }
}

impl Reseal {
    async fn bind_what_earlier_builds_stored(
        &self,
        store: &Store,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), String> {
        let token_key = TokenKey::new(self.secrets.clone());
        let legacy_tokens = tokens::legacy(store).await.map_err(|e| short(&e))?;
        // Old tokens are rekeyed once, by the run that makes the token key.
        // Records "of earlier builds" found after that were inserted since
        // (a database writer who also rolled the schema back): left alone,
        // they authenticate nobody.
        if !legacy_tokens.is_empty() && token_key.exists().await.map_err(|e| e.to_string())? {
            let ids: Vec<&str> = legacy_tokens
                .iter()
                .map(|t| t.get_str("id").unwrap_or("?"))
                .collect();
            tracing::warn!(tokens = ?ids, "token records keyed by a plain hash appeared after the token key was made: not rekeyed");
            progress(&format!(
                "  left {} token record(s) keyed by a plain hash that appeared after the token key was made (not rekeyed: they authenticate nobody): {}",
                ids.len(),
                ids.join(", ")
            ));
            return self.bind_secrets(store, progress).await;
        }
        for record in &legacy_tokens {
            let old = record.get_str("_id").unwrap_or_default();
            let new = token_key.rekeyed(old).await.map_err(|e| e.to_string())?;
            let mut rekeyed = record.clone();
            rekeyed.insert("_id", new.as_str());
            let mac = token_key
                .grants_mac(&rekeyed)
                .await
                .map_err(|e| e.to_string())?;
            rekeyed.insert("grants_mac", mac);
            tokens::rekey(store, &rekeyed, old, &new)
                .await
                .map_err(|e| short(&e))?;
        }
        progress(&format!("  rekeyed {} API token(s)", legacy_tokens.len()));
        self.bind_secrets(store, progress).await
    }

    /// Seals clear EAB keys and binds every unbound secret to its owner.
    async fn bind_secrets(
        &self,
        store: &Store,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), String> {
        let clear = issuers::clear_eab_keys(store)
            .await
            .map_err(|e| short(&e))?;
        for (issuer, project, key) in &clear {
            self.secrets
                .put(&SecretRef::eab_key(project, issuer), key.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            issuers::forget_clear_eab_key(store, issuer)
                .await
                .map_err(|e| short(&e))?;
        }
        progress(&format!(
            "  sealed {} EAB key(s) stored in the clear",
            clear.len()
        ));

        let unbound = keys::unbound(store).await.map_err(|e| short(&e))?;
        let (mut bound, mut orphans, mut damaged) = (0, Vec::new(), Vec::new());
        for id in &unbound {
            let Some(owner) = owner_of(store, id).await.map_err(|e| short(&e))? else {
                orphans.push(id.as_str());
                continue;
            };
            match self.secrets.bind_to_owner(&owner).await {
                Ok(()) => bound += 1,
                Err(SecretError::Envelope(EnvelopeError::WrongRecord { .. })) => {
                    damaged.push(id.as_str())
                }
                Err(e) => return Err(format!("re-sealing secret {id}: {e}")),
            }
        }
        progress(&format!("  sealed {bound} secret(s) for their owners"));
        if !orphans.is_empty() {
            tracing::warn!(secrets = ?orphans, "secrets whose order or issuer is gone were left as they are: nothing can open them now");
            progress(&format!(
                "  left {} secret(s) whose order or issuer is gone: {}",
                orphans.len(),
                orphans.join(", ")
            ));
        }
        if !damaged.is_empty() {
            return Err(format!(
                "{} secret(s) do not open as earlier builds sealed them (altered?): {}",
                damaged.len(),
                damaged.join(", ")
            ));
        }
        Ok(())
    }
}

/// The owner of secret `id`, from the record it belongs to: an order for a
/// certificate key, an issuer for its account, EAB and TSIG keys; ids
/// without a `/` are the installation's own. `None`: the owner is gone.
async fn owner_of(store: &Store, id: &str) -> Result<Option<SecretRef>, mongodb::error::Error> {
    let Some((kind, of)) = id.split_once('/') else {
        return Ok(Some(SecretRef::system(id)));
    };
    if kind == "cert-keys" {
        return Ok(orders::find(store, of)
            .await?
            .map(|o| SecretRef::certificate_key(&o.project_id, &o.certificate_id, &o.id)));
    }
    let project = match issuers::find_document(store, of).await? {
        Some(d) => d.get_str("project_id").unwrap_or_default().to_string(),
        None => return Ok(None),
    };
    Ok(match kind {
        "acme-accounts" => Some(SecretRef::acme_account(&project, of)),
        "issuer-eab" => Some(SecretRef::eab_key(&project, of)),
        "issuer-tsig" => Some(SecretRef::tsig_key(&project, of)),
        _ => None,
    })
}
