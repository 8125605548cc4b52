//! The `tokens` collection: API tokens, stored under a keyed hash of their
//! secret only ([`crate::crypto::api_tokens`]; the secret is shown once,
//! never stored).

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;

use super::Store;

pub const TOKENS: &str = "tokens";

/// How records written by this build are keyed (records without it were
/// keyed by a plain SHA-256, before migration 12).
const KEYED: &str = "hmac-sha256";

pub async fn insert(store: &Store, mut record: Document) -> Result<(), MongoError> {
    record.insert("keyed", KEYED);
    store.insert("create token", TOKENS, record).await
}

/// The live token stored under `record_id`: keyed by this build, not
/// revoked, and not past its `expires_at` by the database's clock.
pub async fn live(store: &Store, record_id: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(TOKENS)
        .find_one(doc! {
            "_id": record_id,
            "keyed": KEYED,
            "revoked": false,
            "$or": [
                { "expires_at": { "$exists": false } },
                { "$expr": { "$gt": ["$expires_at", "$$NOW"] } },
            ],
        })
        .await
}

/// Whether any record is keyed by this build (then its token key exists).
pub async fn any_keyed(store: &Store) -> Result<bool, MongoError> {
    Ok(store
        .collection(TOKENS)
        .find_one(doc! { "keyed": KEYED })
        .await?
        .is_some())
}

/// Records keyed by earlier builds.
pub async fn legacy(store: &Store) -> Result<Vec<Document>, MongoError> {
    store
        .collection(TOKENS)
        .find(doc! { "keyed": { "$ne": KEYED } })
        .await?
        .try_collect()
        .await
}

/// Replaces the legacy record `old_id` with `rekeyed` under `new_id`, in
/// one transaction (the record keeps its unique `id`, so the old one must
/// go as the new one lands).
pub async fn rekey(
    store: &Store,
    rekeyed: &Document,
    old_id: &str,
    new_id: &str,
) -> Result<(), MongoError> {
    let mut record = rekeyed.clone();
    record.insert("_id", new_id);
    record.insert("keyed", KEYED);
    let old_id = old_id.to_string();
    store
        .ride_through("rekey token", || async {
            let context = (store.clone(), old_id.clone(), record.clone());
            let mut session = store.client().start_session().await?;
            session
                .start_transaction()
                .and_run(context, |session, (store, old_id, record)| {
                    async move {
                        store
                            .collection(TOKENS)
                            .delete_one(doc! { "_id": old_id.clone(), "keyed": { "$ne": KEYED } })
                            .session(&mut *session)
                            .await?;
                        store
                            .collection(TOKENS)
                            .insert_one(record.clone())
                            .session(&mut *session)
                            .await?;
                        Ok(())
                    }
                    .boxed()
                })
                .await
        })
        .await
}

/// The token with id `id` (`tok_…`), as stored.
pub async fn find(store: &Store, id: &str) -> Result<Option<Document>, MongoError> {
    store.collection(TOKENS).find_one(doc! { "id": id }).await
}

/// Up to `limit` tokens matching `filter` after id `after`, in id order,
/// and the id to continue after when there are more.
pub async fn page(
    store: &Store,
    mut filter: Document,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    if let Some(after) = after {
        filter.insert("id", doc! { "$gt": after });
    }
    let mut found: Vec<Document> = store
        .collection(TOKENS)
        .find(filter)
        .sort(doc! { "id": 1 })
        .limit(limit + 1)
        .await?
        .try_collect()
        .await?;
    let next = if found.len() as i64 > limit {
        found.truncate(limit as usize);
        found
            .last()
            .and_then(|d| d.get_str("id").ok())
            .map(str::to_string)
    } else {
        None
    };
    Ok((found, next))
}

/// Revokes `id` and, transitively, every token minted with it
/// (`created_by`), walking through tokens already revoked so that the live
/// tokens they minted are reached too; returns the ids walked.
pub async fn revoke_with_minted(store: &Store, id: &str) -> Result<Vec<String>, MongoError> {
    let mut revoked = Vec::new();
    let mut wave = vec![id.to_string()];
    while !wave.is_empty() {
        store
            .collection(TOKENS)
            .update_many(
                doc! { "id": { "$in": &wave }, "revoked": false },
                doc! { "$set": { "revoked": true }, "$currentDate": { "revoked_at": true } },
            )
            .await?;
        revoked.extend(wave.iter().cloned());
        let minted: Vec<Document> = store
            .collection(TOKENS)
            .find(doc! { "created_by": { "$in": &wave } })
            .projection(doc! { "id": 1 })
            .await?
            .try_collect()
            .await?;
        wave = minted
            .iter()
            .filter_map(|d| d.get_str("id").ok().map(str::to_string))
            .filter(|m| !revoked.contains(m))
            .collect();
    }
    Ok(revoked)
}

/// Notes that token `record_id` was used at `now`, unless that was noted
/// less than a minute before (`seen`: the `last_used_at` just read). The
/// filter makes replicas racing on one token write once.
pub async fn touch(
    store: &Store,
    record_id: &str,
    seen: Option<DateTime>,
    now: DateTime,
) -> Result<(), MongoError> {
    if let Some(seen) = seen {
        if now.timestamp_millis() - seen.timestamp_millis() < LAST_USED_RESOLUTION_MS {
            return Ok(());
        }
    }
    let unchanged = match seen {
        Some(seen) => Bson::DateTime(seen),
        None => Bson::Null,
    };
    store
        .collection(TOKENS)
        .update_one(
            doc! { "_id": record_id, "last_used_at": unchanged },
            doc! { "$set": { "last_used_at": now } },
        )
        .await?;
    Ok(())
}

/// `last_used_at` is updated at most this often.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;
