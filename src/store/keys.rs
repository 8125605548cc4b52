//! The `keys` collection: secrets at rest, as ciphertext and a wrapped data
//! key only ([`crate::crypto::secrets`] seals and opens them).

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document};
use mongodb::error::Error as MongoError;

use super::fence::FencedWrite;
use super::{is_duplicate_key, Store};

pub const KEYS: &str = "keys";

/// A secret as stored: its data key wrapped by KEK version `kek_version`,
/// and its ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    pub kek_version: u32,
    pub wrapped_key: Vec<u8>,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

/// Every secret written by this build is sealed for its owner; records
/// without `bound` were sealed under their id alone (before migration 12).
fn fields(s: &StoredSecret) -> Document {
    doc! {
        "kek_version": s.kek_version as i64,
        "wrapped_key": binary(&s.wrapped_key),
        "nonce": binary(&s.nonce),
        "ciphertext": binary(&s.ciphertext),
        "bound": true,
    }
}

/// The ids of secrets sealed by earlier builds under their id alone.
pub async fn unbound(store: &Store) -> Result<Vec<String>, MongoError> {
    let found: Vec<Document> = store
        .collection(KEYS)
        .find(doc! { "bound": { "$ne": true } })
        .projection(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect())
}

fn binary(bytes: &[u8]) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: bytes.to_vec(),
    }
}

/// Stores the secret `id`, replacing any before.
pub async fn put(store: &Store, id: &str, secret: &StoredSecret) -> Result<(), MongoError> {
    let keys = store.collection(KEYS);
    let update = doc! { "$set": fields(secret), "$currentDate": { "updated_at": true } };
    store
        .ride_through("store secret", || {
            keys.update_one(doc! { "_id": id }, update.clone())
                .upsert(true)
        })
        .await?;
    Ok(())
}

/// Stores the secret `id` unless one exists (insert-only: processes racing
/// to create it all end up with the one that landed first).
pub async fn insert_new(store: &Store, id: &str, secret: &StoredSecret) -> Result<(), MongoError> {
    let mut document = fields(secret);
    document.insert("_id", id);
    document.insert("updated_at", store.server_now().await?);
    let keys = store.collection(KEYS);
    match store
        .ride_through("create secret", || keys.insert_one(document.clone()))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate_key(&e) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the secrets `ids` (those not stored are no matter); how many
/// were.
pub async fn delete(store: &Store, ids: &[String]) -> Result<u64, MongoError> {
    let keys = store.collection(KEYS);
    let removed = store
        .ride_through("remove secrets", || {
            keys.delete_many(doc! { "_id": { "$in": ids } })
        })
        .await?;
    Ok(removed.deleted_count)
}

/// The secret `id` as stored: `None` when there is none, `Some(Err(field))`
/// naming the field that is damaged.
pub async fn get(
    store: &Store,
    id: &str,
) -> Result<Option<Result<StoredSecret, &'static str>>, MongoError> {
    let keys = store.collection(KEYS);
    let found = store
        .ride_through("read secret", || keys.find_one(doc! { "_id": id }))
        .await?;
    Ok(found.map(|d| parse(&d)))
}

fn parse(d: &Document) -> Result<StoredSecret, &'static str> {
    let bytes = |field: &'static str| {
        d.get_binary_generic(field)
            .map(|b| b.to_vec())
            .map_err(|_| field)
    };
    Ok(StoredSecret {
        kek_version: d.get_i64("kek_version").map_err(|_| "kek_version")? as u32,
        wrapped_key: bytes("wrapped_key")?,
        nonce: bytes("nonce")?,
        ciphertext: bytes("ciphertext")?,
    })
}

/// Data keys by the KEK version wrapping them.
pub async fn data_keys_by_version(store: &Store) -> Result<BTreeMap<u32, i64>, MongoError> {
    let rows: Vec<Document> = store
        .collection(KEYS)
        .aggregate(vec![
            doc! { "$group": { "_id": "$kek_version", "n": { "$sum": 1 } } },
        ])
        .await?
        .try_collect()
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let version = r
                .get_i64("_id")
                .ok()
                .or(r.get_i32("_id").ok().map(i64::from))?;
            let n = r.get_i64("n").ok().or(r.get_i32("n").ok().map(i64::from))?;
            Some((version as u32, n))
        })
        .collect())
}

/// One wrapped data key of KEK version `version`, if any: a restore
/// proves the KEK it was given opens what the snapshot holds.
pub async fn sample_wrapped_key(
    store: &Store,
    version: u32,
) -> Result<Option<Vec<u8>>, MongoError> {
    let found = store
        .collection(KEYS)
        .find_one(doc! { "kek_version": version as i64 })
        .projection(doc! { "wrapped_key": 1 })
        .await?;
    Ok(found.and_then(|d| d.get_binary_generic("wrapped_key").ok().cloned()))
}

/// Data keys not yet on `current`.
pub fn remaining(counts: &BTreeMap<u32, i64>, current: u32) -> i64 {
    counts
        .iter()
        .filter(|(v, _)| **v != current)
        .map(|(_, n)| n)
        .sum()
}

/// A data key wrapped by an old KEK version.
pub struct WrappedKey {
    pub id: String,
    /// `None` when the stored record lacks it (damaged).
    pub kek_version: Option<i64>,
    /// `None` when the stored record has no wrapped key (damaged).
    pub wrapped_key: Option<Vec<u8>>,
}

/// Up to `limit` data keys not wrapped by `target`.
pub async fn not_on_version(
    store: &Store,
    target: u32,
    limit: i64,
) -> Result<Vec<WrappedKey>, MongoError> {
    let found: Vec<Document> = store
        .collection(KEYS)
        .find(doc! { "kek_version": { "$ne": target as i64 } })
        .projection(doc! { "kek_version": 1, "wrapped_key": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .map(|d| WrappedKey {
            id: d.get_str("_id").unwrap_or_default().to_string(),
            kek_version: d.get_i64("kek_version").ok(),
            wrapped_key: d.get_binary_generic("wrapped_key").ok().cloned(),
        })
        .collect())
}

/// Re-wraps one data key: a compare-and-set on the old wrapped key, so a
/// secret replaced meanwhile is left alone. The ciphertext never changes.
pub fn rewrapped(
    key: &WrappedKey,
    old_version: i64,
    old_wrapped: &[u8],
    target: u32,
    new_wrapped: &[u8],
) -> FencedWrite {
    FencedWrite::UpdateOne {
        collection: KEYS.to_string(),
        filter: doc! { "_id": &key.id, "kek_version": old_version, "wrapped_key": binary(old_wrapped) },
        update: doc! {
            "$set": { "kek_version": target as i64, "wrapped_key": binary(new_wrapped) },
            "$currentDate": { "rewrapped_at": true },
        },
        upsert: false,
    }
}
