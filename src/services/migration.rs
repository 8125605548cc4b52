//! The KEK work of schema migrations ([`KekMigrations`]): migration 12's
//! re-sealing ([`Reseal`]) and migration 17's bindings.
//!
//! Migration 17 binds what earlier builds stored unbound
//! ([`crate::crypto::binding`]): every target's and channel's settings and
//! every certificate's list of targets get their MAC, as they are. A target
//! that receives keys is an admin's decision from now on; one whose
//! `target.created` audit record does not name a token that is (still) an
//! admin of its project, or a global admin, is bound disabled, and receives
//! nothing until an admin confirms it (`POST …/targets/{id}/confirm`).
//!
//! Before a webhook target or channel is bound, the whole URL its settings
//! hold (`url`, whose path or query may hold a token) is sealed under its
//! owner ([`SecretRef::target_url`], [`SecretRef::channel_url`]) and
//! replaced in the clear by its `origin`, which the MAC then covers.
//!
//! It binds only once: at the end it seals a marker, and a later run that
//! finds the marker binds nothing, so a database writer who strips a MAC
//! and rolls the schema back cannot have a forged record bound (those
//! records are listed instead, and workers go on refusing them).

use futures::future::BoxFuture;
use mongodb::bson::{doc, Bson, Document};

use crate::audit;
use crate::crypto::api_tokens::TokenKey;
use crate::crypto::binding::BindingKey;
use crate::crypto::reseal::Reseal;
use crate::crypto::secrets::{SecretError, SecretRef, Secrets};
use crate::domain::distribution::Target;
use crate::services::key_release;
use crate::store::schema::KekMigrations;
use crate::store::{certificates, channels, short, targets, tokens, Store, BINDING_MAC};

/// The sealed marker of migration 17's one binding run.
const BOUND_MARKER: &str = "settings-bound-v17";

pub struct KekWork {
    pub secrets: Secrets,
}

impl KekMigrations for KekWork {
    fn run<'a>(
        &'a self,
        version: i64,
        store: &'a Store,
        progress: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            match version {
                17 => self.bind_settings(store, progress).await,
                _ => {
                    let reseal = Reseal {
                        secrets: self.secrets.clone(),
                    };
                    reseal.run(version, store, progress).await
                }
            }
        })
    }
}

impl KekWork {
    async fn bind_settings(
        &self,
        store: &Store,
        progress: &mut (dyn FnMut(&str) + Send),
    ) -> Result<(), String> {
        let db = |e: mongodb::error::Error| short(&e);
        let secret = |e: SecretError| e.to_string();
        let tokens_key = TokenKey::new(self.secrets.clone());
        let binding = BindingKey::new(tokens_key.clone());
        let marker = SecretRef::system(BOUND_MARKER);
        let all_targets = targets::all(store).await.map_err(db)?;
        let all_channels = channels::all(store).await.map_err(db)?;
        let all_certificates = certificates::with_targets(store).await.map_err(db)?;
        match self.secrets.get(&marker).await {
            Ok(_) => {
                let unbound: Vec<String> = all_targets
                    .iter()
                    .chain(&all_channels)
                    .filter(|d| !d.contains_key(BINDING_MAC))
                    .chain(
                        all_certificates
                            .iter()
                            .filter(|d| !d.contains_key(certificates::TARGETS_MAC)),
                    )
                    .map(|d| d.get_str("_id").unwrap_or("?").to_string())
                    .collect();
                if !unbound.is_empty() {
                    tracing::warn!(records = ?unbound, "unbound records appeared after migration 17 bound the installation's: not bound");
                    progress(&format!(
                        "  left {} unbound record(s) that appeared after the settings were bound (workers refuse them; delete and make them again through the API): {}",
                        unbound.len(),
                        unbound.join(", ")
                    ));
                }
                return Ok(());
            }
            Err(SecretError::NotFound(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        let (mut bound, mut disabled, mut unreadable) = (0, 0, Vec::new());
        for d in all_targets.iter().filter(|d| !d.contains_key(BINDING_MAC)) {
            let stored = match legacy_url(d) {
                Some(url) => {
                    let (id, project) = (s(d, "_id"), s(d, "project_id"));
                    let sealed = SecretRef::target_url(project, id);
                    self.secrets
                        .put(&sealed, url.as_bytes())
                        .await
                        .map_err(secret)?;
                    targets::replace_url_by_origin(store, id, &key_release::origin(url))
                        .await
                        .map_err(db)?
                }
                None => None,
            };
            let d = stored.as_ref().unwrap_or(d);
            let mut target = match targets::parse(d) {
                Ok(target) => target,
                Err(why) => {
                    unreadable.push(format!("target {}: {why}", d.get_str("_id").unwrap_or("?")));
                    continue;
                }
            };
            if target.receives_keys() {
                if let Some(why) = not_made_by_an_admin(store, &tokens_key, &target).await? {
                    target.disabled = Some(why);
                    disabled += 1;
                }
            }
            let mac = binding.target_mac(&target).await.map_err(secret)?;
            targets::set_disabled(store, &target, &mac)
                .await
                .map_err(db)?;
            bound += 1;
        }
        progress(&format!(
            "  bound {bound} target(s); {disabled} of them receive keys and were not made by a project admin: disabled until an admin confirms them (POST /v1/projects/{{p}}/targets/{{id}}/confirm)"
        ));
        let mut channels_bound = 0;
        for d in all_channels.iter().filter(|d| !d.contains_key(BINDING_MAC)) {
            let stored = match legacy_url(d) {
                Some(url) => {
                    let id = s(d, "_id");
                    let sealed = SecretRef::channel_url(d.get_str("project_id").ok(), id);
                    self.secrets
                        .put(&sealed, url.as_bytes())
                        .await
                        .map_err(secret)?;
                    channels::replace_url_by_origin(store, id, &key_release::origin(url))
                        .await
                        .map_err(db)?
                }
                None => None,
            };
            let d = stored.as_ref().unwrap_or(d);
            match channels::parse(d) {
                Ok(channel) => {
                    let mac = binding.channel_mac(&channel).await.map_err(secret)?;
                    channels::bind(store, &channel.id, &mac).await.map_err(db)?;
                    channels_bound += 1;
                }
                Err(why) => unreadable.push(format!(
                    "channel {}: {why}",
                    d.get_str("_id").unwrap_or("?")
                )),
            }
        }
        progress(&format!("  bound {channels_bound} channel(s)"));
        let mut lists = 0;
        for d in all_certificates
            .iter()
            .filter(|d| !d.contains_key(certificates::TARGETS_MAC))
        {
            let id = d.get_str("_id").unwrap_or_default();
            let ids: Vec<String> = certificates::targets(d)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            let mac = binding
                .certificate_targets_mac(d.get_str("project_id").unwrap_or_default(), id, &ids)
                .await
                .map_err(secret)?;
            certificates::bind_targets(store, id, &mac)
                .await
                .map_err(db)?;
            lists += 1;
        }
        progress(&format!(
            "  bound the target lists of {lists} certificate(s)"
        ));
        if !unreadable.is_empty() {
            progress(&format!(
                "  left {} record(s) that do not read (workers refuse them): {}",
                unreadable.len(),
                unreadable.join("; ")
            ));
        }
        self.secrets.put(&marker, b"bound").await.map_err(secret)?;
        Ok(())
    }
}

/// The whole URL a webhook target's or channel's settings hold
/// in the clear, as builds before migration 17 stored it.
fn legacy_url(d: &Document) -> Option<&str> {
    if d.get_str("kind") != Ok("webhook") {
        return None;
    }
    d.get_document("settings").ok()?.get_str("url").ok()
}

fn s<'d>(d: &'d Document, field: &str) -> &'d str {
    d.get_str(field).unwrap_or_default()
}

/// Why `target` is not known to be a project admin's: `None` when its
/// `target.created` record names a token whose (verified) grants make it an
/// admin of the target's project, or a global admin.
async fn not_made_by_an_admin(
    store: &Store,
    token_key: &TokenKey,
    target: &Target,
) -> Result<Option<String>, String> {
    let path = format!("projects/{}/targets/{}", target.project_id, target.id);
    let created = audit::find(
        store,
        doc! { "action": "target.created", "target": &path },
        1,
    )
    .await
    .map_err(|e| short(&e))?;
    let Some(actor) = created
        .first()
        .and_then(|r| r.get_str("actor").ok())
        .map(str::to_string)
    else {
        return Ok(Some(
            "no audit record says who made it, so it is not known to be an admin's".into(),
        ));
    };
    let token = match actor.strip_prefix("token:") {
        Some(id) => tokens::find(store, id).await.map_err(|e| short(&e))?,
        None => None,
    };
    let Some(token) = token else {
        return Ok(Some(format!(
            "made by {actor}, which is not a token that still exists"
        )));
    };
    let mac = token_key
        .grants_mac(&token)
        .await
        .map_err(|e| e.to_string())?;
    if token.get_str("grants_mac") != Ok(mac.as_str()) {
        return Ok(Some(format!("made by {actor}, whose grants do not verify")));
    }
    if is_admin_of(&token, &target.project_id) {
        Ok(None)
    } else {
        Ok(Some(format!(
            "made by {actor}, which is not an admin of the project"
        )))
    }
}

/// Whether a token record grants the global admin role or `admin` on
/// `project_id`.
fn is_admin_of(token: &Document, project_id: &str) -> bool {
    token.get_bool("global_admin").unwrap_or(false)
        || token.get_array("roles").is_ok_and(|roles| {
            roles.iter().filter_map(Bson::as_document).any(|r| {
                r.get_str("project_id") == Ok(project_id) && r.get_str("role") == Ok("admin")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_admin_grant_on_the_project_counts() {
        let admin = doc! { "roles": [ { "project_id": "p", "role": "admin" } ] };
        let editor = doc! { "roles": [ { "project_id": "p", "role": "editor" }, { "project_id": "q", "role": "admin" } ] };
        let global = doc! { "global_admin": true, "roles": [] };
        assert!(is_admin_of(&admin, "p"));
        assert!(!is_admin_of(&editor, "p"));
        assert!(is_admin_of(&global, "p"));
    }
}
