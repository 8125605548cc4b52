//! The `tokens` collection: API tokens, stored by the SHA-256 of their
//! secret only (the secret is shown once, never stored).

use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;

use super::Store;

pub const TOKENS: &str = "tokens";

pub async fn insert(store: &Store, record: Document) -> Result<(), MongoError> {
    store.insert("create token", TOKENS, record).await
}

/// Revokes a token by id; false when there is no such token.
pub async fn revoke(store: &Store, id: &str) -> Result<bool, MongoError> {
    let result = store
        .collection(TOKENS)
        .update_one(
            doc! { "id": id },
            doc! { "$set": { "revoked": true }, "$currentDate": { "revoked_at": true } },
        )
        .await?;
    Ok(result.matched_count > 0)
}

/// The live token whose secret hashes to `hash`: not revoked, and not
/// past its `expires_at` by the database's clock.
pub async fn live_by_hash(store: &Store, hash: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(TOKENS)
        .find_one(doc! {
            "_id": hash,
            "revoked": false,
            "$or": [
                { "expires_at": { "$exists": false } },
                { "$expr": { "$gt": ["$expires_at", "$$NOW"] } },
            ],
        })
        .await
}
