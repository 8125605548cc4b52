//! The `issuers` collection, and the one parse of an issuer document.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;

use super::Store;
use crate::domain::issuer::{
    DnsSettings, Issuer, TsigAlgorithm, DEFAULT_PROPAGATION_TIMEOUT_SECS, DEFAULT_TTL,
};

pub const ISSUERS: &str = "issuers";

/// The stored document of issuer `id`.
pub async fn find_document(store: &Store, id: &str) -> Result<Option<Document>, MongoError> {
    store.collection(ISSUERS).find_one(doc! { "_id": id }).await
}

/// The stored document of issuer `id` of `project_id`.
pub async fn in_project(
    store: &Store,
    project_id: &str,
    id: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(ISSUERS)
        .find_one(doc! { "_id": id, "project_id": project_id })
        .await
}

/// One page of a project's issuers (see [`Store::page`]).
pub async fn page(
    store: &Store,
    project_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(ISSUERS, doc! { "project_id": project_id }, after, limit)
        .await
}

pub async fn insert(store: &Store, record: Document) -> Result<(), MongoError> {
    store.insert("create issuer", ISSUERS, record).await
}

/// Issuers whose EAB HMAC key earlier builds stored in the clear, as
/// `(issuer, project, key)`.
pub async fn clear_eab_keys(store: &Store) -> Result<Vec<(String, String, String)>, MongoError> {
    let found: Vec<Document> = store
        .collection(ISSUERS)
        .find(doc! { "eab.hmac_key": { "$exists": true } })
        .await?
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .filter_map(|d| {
            let key = d.get_document("eab").ok()?.get_str("hmac_key").ok()?;
            Some((
                d.get_str("_id").ok()?.to_string(),
                d.get_str("project_id").unwrap_or_default().to_string(),
                key.to_string(),
            ))
        })
        .collect())
}

/// Drops the clear EAB key of issuer `id` (once it is sealed).
pub async fn forget_clear_eab_key(store: &Store, id: &str) -> Result<(), MongoError> {
    store
        .collection(ISSUERS)
        .update_one(
            doc! { "_id": id },
            doc! { "$unset": { "eab.hmac_key": "" } },
        )
        .await?;
    Ok(())
}

/// An issuer document as the workers use it; `Err` names what is wrong
/// with it (retrying will not mend it).
pub fn parse(d: &Document) -> Result<Issuer, String> {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let eab = d.get_document("eab").ok();
    let eab_field = |f: &str| eab.and_then(|e| e.get_str(f).ok()).map(str::to_string);
    let dns = match d.get_document("dns") {
        Ok(settings) if d.get_str("challenge") == Ok("dns-01") => Some(dns_settings(settings)?),
        _ => None,
    };
    Ok(Issuer {
        id: s("_id"),
        project_id: s("project_id"),
        directory_url: s("directory_url"),
        contact: s("contact"),
        ca_bundle_pem: d.get_str("ca_bundle_pem").ok().map(str::to_string),
        eab_kid: eab_field("kid"),
        dns,
    })
}

/// An issuer's DNS-01 settings, as stored under `dns`.
pub fn dns_settings(d: &Document) -> Result<DnsSettings, String> {
    let s = |f: &str| {
        d.get_str(f)
            .map(str::to_string)
            .map_err(|_| format!("the issuer's dns settings lack {f}"))
    };
    Ok(DnsSettings {
        primary: s("primary")?,
        zone: s("zone")?,
        tsig_name: s("tsig_key_name")?,
        tsig_algorithm: TsigAlgorithm::parse(&s("tsig_algorithm")?)
            .ok_or("unknown TSIG algorithm")?,
        nameservers: d
            .get_array("nameservers")
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        propagation_timeout: Duration::from_secs(
            d.get_i64("propagation_timeout_secs")
                .unwrap_or(DEFAULT_PROPAGATION_TIMEOUT_SECS)
                .max(1) as u64,
        ),
        ttl: d.get_i64("ttl").map(|t| t as u32).unwrap_or(DEFAULT_TTL),
    })
}
