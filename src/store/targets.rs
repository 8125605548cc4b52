//! The `distribution_targets` collection, and the one parse of a target
//! document.

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;

use super::{Store, BINDING_MAC};
use crate::domain::distribution::{Delivery, Target, TargetKind};
use crate::domain::drift::Endpoint;

pub const TARGETS: &str = "distribution_targets";
/// Why a target receives nothing until an admin confirms it.
pub const DISABLED: &str = "disabled";

/// The stored document of target `id` of `project_id`.
pub async fn in_project(
    store: &Store,
    project_id: &str,
    id: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(TARGETS)
        .find_one(doc! { "_id": id, "project_id": project_id })
        .await
}

/// The targets of `project_id` named `names` (those that exist).
pub async fn named(
    store: &Store,
    project_id: &str,
    names: &[String],
) -> Result<Vec<Document>, MongoError> {
    store
        .collection(TARGETS)
        .find(doc! { "project_id": project_id, "name": { "$in": names } })
        .await?
        .try_collect()
        .await
}

/// One page of a project's targets (see [`Store::page`]).
pub async fn page(
    store: &Store,
    project_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(TARGETS, doc! { "project_id": project_id }, after, limit)
        .await
}

/// How many targets `project_id` holds.
pub async fn count_in_project(store: &Store, project_id: &str) -> Result<u64, MongoError> {
    store
        .collection(TARGETS)
        .count_documents(doc! { "project_id": project_id })
        .await
}

/// Stores a new target; a name already taken in the project is a
/// duplicate-key error (the unique index of migration 16).
pub async fn insert(store: &Store, record: Document) -> Result<(), MongoError> {
    store.insert("create target", TARGETS, record).await
}

/// Removes target `id` of `project_id`; whether there was one.
pub async fn delete(store: &Store, project_id: &str, id: &str) -> Result<bool, MongoError> {
    let found = store
        .collection(TARGETS)
        .delete_one(doc! { "_id": id, "project_id": project_id })
        .await?;
    Ok(found.deleted_count == 1)
}

/// A target document as the workers use it; `Err` names what is wrong with
/// it (retrying will not mend it).
pub fn parse(d: &Document) -> Result<Target, String> {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let settings = d.get_document("settings").ok();
    let setting = |f: &str| {
        settings
            .and_then(|x| x.get_str(f).ok())
            .map(str::to_string)
            .ok_or_else(|| format!("the target's settings lack {f}"))
    };
    let flag = |f: &str| settings.and_then(|x| x.get_bool(f).ok()).unwrap_or(false);
    let kind = TargetKind::parse(d.get_str("kind").unwrap_or_default())
        .ok_or_else(|| format!("unknown target kind {:?}", d.get_str("kind")))?;
    let delivery = match kind {
        TargetKind::Agent => Delivery::Agent,
        TargetKind::Ssh => Delivery::Ssh {
            host: setting("host")?,
            port: settings
                .and_then(|x| x.get_i32("port").ok())
                .and_then(|p| u16::try_from(p).ok())
                .ok_or("the target's settings lack port")?,
            user: setting("user")?,
            host_key: setting("host_key")?,
            directory: setting("directory")?,
            reload_command: setting("reload_command").ok(),
        },
        TargetKind::KubernetesSecret => Delivery::KubernetesSecret {
            namespace: setting("namespace")?,
            secret_name: setting("secret_name")?,
            include_ca: flag("include_ca"),
            kubeconfig: flag("kubeconfig"),
        },
        // The whole URL is sealed (`SecretRef::target_url`); the settings
        // hold its origin, or, stored before that, the whole `url`.
        TargetKind::Webhook => Delivery::Webhook {
            url: setting("origin").or_else(|_| setting("url"))?,
            include_key: flag("include_key"),
        },
    };
    let validate = d.get_document("validate").ok().map(|v| Endpoint {
        host: v.get_str("host").unwrap_or_default().to_string(),
        port: v.get_i32("port").unwrap_or(0) as u16,
        sni: v.get_str("sni").ok().map(str::to_string),
    });
    Ok(Target {
        id: s("_id"),
        project_id: s("project_id"),
        name: s("name"),
        delivery,
        validate,
        disabled: d.get_str(DISABLED).ok().map(str::to_string),
    })
}

/// The stored form of `target` (the inverse of [`parse`]): the one place
/// its field names are written.
pub fn document(target: &Target) -> Document {
    let settings = match &target.delivery {
        Delivery::Agent => doc! {},
        Delivery::Ssh {
            host,
            port,
            user,
            host_key,
            directory,
            reload_command,
        } => {
            let mut settings = doc! {
                "host": host,
                "port": i32::from(*port),
                "user": user,
                "host_key": host_key,
                "directory": directory,
            };
            if let Some(command) = reload_command {
                settings.insert("reload_command", command);
            }
            settings
        }
        Delivery::KubernetesSecret {
            namespace,
            secret_name,
            include_ca,
            kubeconfig,
        } => doc! {
            "namespace": namespace,
            "secret_name": secret_name,
            "include_ca": include_ca,
            "kubeconfig": kubeconfig,
        },
        // Only the origin in the clear, and no `url`: a worker of the
        // previous release, which reads `url`, then fails the delivery
        // instead of posting to the bare origin.
        Delivery::Webhook { url, include_key } => doc! {
            "origin": crate::domain::target_settings::origin(url),
            "include_key": include_key,
        },
    };
    let mut d = doc! {
        "_id": &target.id,
        "project_id": &target.project_id,
        "name": &target.name,
        "kind": target.kind().as_str(),
        "settings": settings,
    };
    if let Some(e) = &target.validate {
        d.insert("validate", super::certificates::endpoint_document(e));
    }
    if let Some(why) = &target.disabled {
        d.insert(DISABLED, why);
    }
    d
}

/// The MAC a target was stored with, if any.
pub fn binding_mac(d: &Document) -> Option<&str> {
    d.get_str(BINDING_MAC).ok()
}

/// Every target of every project (migration 17 binds them).
pub async fn all(store: &Store) -> Result<Vec<Document>, MongoError> {
    store
        .collection(TARGETS)
        .find(doc! {})
        .await?
        .try_collect()
        .await
}

/// Stores `target`'s disabled state with its new MAC: migration 17 and an
/// admin's confirmation. `None` when the target is gone.
pub async fn set_disabled(
    store: &Store,
    target: &Target,
    binding_mac: &str,
) -> Result<Option<Document>, MongoError> {
    let update = match &target.disabled {
        Some(why) => doc! { "$set": { DISABLED: why, BINDING_MAC: binding_mac } },
        None => doc! { "$set": { BINDING_MAC: binding_mac }, "$unset": { DISABLED: "" } },
    };
    store
        .collection(TARGETS)
        .find_one_and_update(
            doc! { "_id": &target.id, "project_id": &target.project_id },
            update,
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await
}

/// Replaces the whole `url` in webhook target `id`'s settings by its
/// `origin` (migration 17, once the URL is sealed); the stored document after.
pub async fn replace_url_by_origin(
    store: &Store,
    id: &str,
    origin: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(TARGETS)
        .find_one_and_update(
            doc! { "_id": id },
            doc! { "$set": { "settings.origin": origin }, "$unset": { "settings.url": "" } },
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await
}
