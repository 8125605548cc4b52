//! The `kek_versions` collection: the key-check value of every KEK version
//! this installation has used, recorded the first time a process sees the
//! version. A key ring (or token) whose version N computes another value is
//! not the one the data keys were wrapped with, although its version numbers
//! match ([`crate::crypto::kek::check`] compares them).
//!
//! A check value is one AES block encrypted under the KEK: it says which key
//! it is, not what the key is.

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::error::Error as MongoError;

use super::{is_duplicate_key, Store};

pub const KEK_VERSIONS: &str = "kek_versions";

/// Every recorded check value, by KEK version.
pub async fn recorded(store: &Store) -> Result<BTreeMap<u32, Vec<u8>>, MongoError> {
    let coll = store.collection(KEK_VERSIONS);
    let found: Vec<Document> = store
        .ride_through("read KEK check values", || async {
            coll.find(doc! {}).await?.try_collect().await
        })
        .await?;
    Ok(found
        .iter()
        .filter_map(|d| {
            let version = d.get_i64("_id").ok()?;
            let value = d.get_binary_generic("check_value").ok()?;
            Some((version as u32, value.clone()))
        })
        .collect())
}

/// Records `value` for `version` unless one is recorded already (insert
/// only: two processes racing end with the first one's). Returns the value
/// that is recorded now.
pub async fn record(store: &Store, version: u32, value: &[u8]) -> Result<Vec<u8>, MongoError> {
    let coll = store.collection(KEK_VERSIONS);
    let document = doc! {
        "_id": version as i64,
        "check_value": Binary { subtype: BinarySubtype::Generic, bytes: value.to_vec() },
        "recorded_at": store.server_now().await?,
    };
    match store
        .ride_through("record KEK check value", || {
            coll.insert_one(document.clone())
        })
        .await
    {
        Ok(_) => Ok(value.to_vec()),
        Err(e) if is_duplicate_key(&e) => Ok(recorded(store)
            .await?
            .remove(&version)
            .unwrap_or_else(|| value.to_vec())),
        Err(e) => Err(e),
    }
}
