//! The `notification_channels` collection, and the one parse of a channel
//! document. A channel of a project has its `project_id`; an installation
//! channel has `project_id: null`.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error as MongoError;

use super::Store;
use crate::domain::notifications::{Channel, ChannelDelivery, EmailSettings, QuietHours, Route};

pub const CHANNELS: &str = "notification_channels";

fn scope(project_id: Option<&str>) -> Bson {
    project_id.map(Bson::from).unwrap_or(Bson::Null)
}

/// The stored document of channel `id` of `project_id` (`None`: an
/// installation channel).
pub async fn in_scope(
    store: &Store,
    project_id: Option<&str>,
    id: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(CHANNELS)
        .find_one(doc! { "_id": id, "project_id": scope(project_id) })
        .await
}

/// Every channel of `project_id` (`None`: the installation's).
pub async fn all_in_scope(
    store: &Store,
    project_id: Option<&str>,
) -> Result<Vec<Document>, MongoError> {
    store
        .collection(CHANNELS)
        .find(doc! { "project_id": scope(project_id) })
        .await?
        .try_collect()
        .await
}

/// One page of the channels of `project_id` (see [`Store::page`]).
pub async fn page(
    store: &Store,
    project_id: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(
            CHANNELS,
            doc! { "project_id": scope(project_id) },
            after,
            limit,
        )
        .await
}

/// How many channels `project_id` (`None`: the installation) holds.
pub async fn count_in_scope(store: &Store, project_id: Option<&str>) -> Result<u64, MongoError> {
    store
        .collection(CHANNELS)
        .count_documents(doc! { "project_id": scope(project_id) })
        .await
}

pub async fn insert(store: &Store, record: Document) -> Result<(), MongoError> {
    store.insert("create channel", CHANNELS, record).await
}

/// Removes channel `id` of `project_id`; whether there was one.
pub async fn delete(store: &Store, project_id: Option<&str>, id: &str) -> Result<bool, MongoError> {
    let found = store
        .collection(CHANNELS)
        .delete_one(doc! { "_id": id, "project_id": scope(project_id) })
        .await?;
    Ok(found.deleted_count == 1)
}

/// The MAC a channel was stored with, if any.
pub fn binding_mac(d: &Document) -> Option<&str> {
    d.get_str(super::BINDING_MAC).ok()
}

/// Every channel, of every project and the installation's (migration 17
/// binds them).
pub async fn all(store: &Store) -> Result<Vec<Document>, MongoError> {
    store
        .collection(CHANNELS)
        .find(doc! {})
        .await?
        .try_collect()
        .await
}

/// Stores channel `id`'s binding MAC (migration 17).
pub async fn bind(store: &Store, id: &str, mac: &str) -> Result<(), MongoError> {
    store
        .collection(CHANNELS)
        .update_one(
            doc! { "_id": id },
            doc! { "$set": { super::BINDING_MAC: mac } },
        )
        .await?;
    Ok(())
}

/// Replaces the whole `url` in webhook channel `id`'s settings by its
/// `origin` (migration 17, once the URL is sealed); the stored document after.
pub async fn replace_url_by_origin(
    store: &Store,
    id: &str,
    origin: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(CHANNELS)
        .find_one_and_update(
            doc! { "_id": id },
            doc! { "$set": { "settings.origin": origin }, "$unset": { "settings.url": "" } },
        )
        .return_document(mongodb::options::ReturnDocument::After)
        .await
}

/// A channel document as senders use it; `Err` names what is wrong.
pub fn parse(d: &Document) -> Result<Channel, String> {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let settings = d.get_document("settings").ok();
    let setting = |f: &str| {
        settings
            .and_then(|x| x.get_str(f).ok())
            .map(str::to_string)
            .ok_or_else(|| format!("the channel's settings lack {f}"))
    };
    let delivery = match d.get_str("kind").unwrap_or_default() {
        // The whole URL is sealed (`SecretRef::channel_url`); the settings
        // hold its origin, or, stored before that, the whole `url`.
        "webhook" => ChannelDelivery::Webhook {
            url: setting("origin").or_else(|_| setting("url"))?,
        },
        "slack" => ChannelDelivery::Slack,
        "email" => ChannelDelivery::Email(EmailSettings {
            host: setting("host")?,
            port: settings.and_then(|x| x.get_i32("port").ok()).unwrap_or(587) as u16,
            tls: setting("tls").unwrap_or_else(|_| "starttls".into()),
            user: setting("user").ok(),
            from: setting("from")?,
            to: settings
                .and_then(|x| x.get_array("to").ok())
                .map(|a| {
                    a.iter()
                        .filter_map(Bson::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            ca_bundle_pem: setting("ca_bundle_pem").ok(),
        }),
        other => return Err(format!("unknown channel kind {other:?}")),
    };
    let routes = match d.get_array("routes") {
        Ok(a) => a
            .iter()
            .map(|r| mongodb::bson::from_bson::<Route>(r.clone()).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => Vec::new(),
    };
    let quiet_hours = match d.get_document("quiet_hours") {
        Ok(q) => Some(QuietHours::new(
            q.get_i32("start_minute").unwrap_or(0) as u32,
            q.get_i32("end_minute").unwrap_or(0) as u32,
        )?),
        Err(_) => None,
    };
    Ok(Channel {
        id: s("_id"),
        project_id: d.get_str("project_id").ok().map(str::to_string),
        name: s("name"),
        delivery,
        routes,
        quiet_hours,
    })
}
