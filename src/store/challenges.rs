//! The `challenges` collection: HTTP-01 key authorizations, written by the
//! worker that runs the order and served by every api replica.

use mongodb::bson::{doc, DateTime};
use mongodb::error::Error as MongoError;

use super::fence::FencedWrite;
use super::Store;

pub const CHALLENGES: &str = "challenges";

/// Publishes `key_authorization` for `token` (idempotent: a resumed order
/// publishes again).
pub fn publish(
    token: &str,
    key_authorization: &str,
    order_id: &str,
    identifier: &str,
) -> FencedWrite {
    FencedWrite::UpdateOne {
        collection: CHALLENGES.to_string(),
        filter: doc! { "_id": token },
        update: doc! { "$set": {
            "key_authorization": key_authorization,
            "order_id": order_id,
            "identifier": identifier,
        }, "$currentDate": { "created_at": true } },
        upsert: true,
    }
}

/// The key authorization published for `token`, and the name it proves.
pub async fn key_authorization(
    store: &Store,
    token: &str,
) -> Result<Option<(String, String)>, MongoError> {
    let found = store
        .collection(CHALLENGES)
        .find_one(doc! { "_id": token })
        .await?;
    Ok(found.map(|d| {
        let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
        (s("key_authorization"), s("identifier"))
    }))
}

/// Deletes an order's key authorizations once the CA has decided.
pub async fn forget_order(store: &Store, order_id: &str) -> Result<u64, MongoError> {
    let result = store
        .collection(CHALLENGES)
        .delete_many(doc! { "order_id": order_id })
        .await?;
    Ok(result.deleted_count)
}

/// Deletes key authorizations published before `cutoff`: those of orders
/// whose worker died between the CA's decision and their removal.
pub async fn purge_before(store: &Store, cutoff: DateTime) -> Result<u64, MongoError> {
    let filter = doc! { "created_at": { "$lt": cutoff } };
    let challenges = store.collection(CHALLENGES);
    let result = store
        .ride_through("purge challenges", || {
            challenges.delete_many(filter.clone())
        })
        .await?;
    Ok(result.deleted_count)
}
