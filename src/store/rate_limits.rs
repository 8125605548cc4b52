//! The `rate_limits` collection: how many requests each API token made in
//! each minute, summed over every api replica
//! ([`crate::http::api::rate_limit`]). One document per token and minute,
//! `{_id: "<token id>|<minute>", count}`; a TTL index on `expires_at`
//! removes it once no window needs it.

use std::collections::HashMap;

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime};
use mongodb::error::Error as MongoError;
use mongodb::options::UpdateOptions;

use super::Store;

pub const RATE_LIMITS: &str = "rate_limits";

/// The id of `token`'s count for `minute` (minutes since the epoch).
pub fn window_id(token: &str, minute: i64) -> String {
    format!("{token}|{minute}")
}

/// Adds `n` to the count `id`, creating it to expire at `expires_at`.
///
/// A retry after an ambiguous failure may count the same requests twice;
/// for a limit that errs toward refusing a little early, that is harmless.
pub async fn add(store: &Store, id: &str, n: u64, expires_at: DateTime) -> Result<(), MongoError> {
    let coll = store.collection(RATE_LIMITS);
    store
        .ride_through("count requests", || {
            coll.update_one(
                doc! { "_id": id },
                doc! {
                    "$inc": { "count": n as i64 },
                    "$setOnInsert": { "expires_at": expires_at },
                },
            )
            .with_options(UpdateOptions::builder().upsert(true).build())
        })
        .await?;
    Ok(())
}

/// The counts stored under `ids` (absent ones are 0).
pub async fn counts(store: &Store, ids: &[String]) -> Result<HashMap<String, u64>, MongoError> {
    let docs: Vec<_> = store
        .collection(RATE_LIMITS)
        .find(doc! { "_id": { "$in": ids } })
        .await?
        .try_collect()
        .await?;
    Ok(docs
        .iter()
        .filter_map(|d| {
            let count = d
                .get_i64("count")
                .ok()
                .or_else(|| d.get_i32("count").ok().map(i64::from))?;
            Some((d.get_str("_id").ok()?.to_string(), count.max(0) as u64))
        })
        .collect())
}
