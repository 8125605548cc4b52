//! The `idempotency_keys` collection: what a POST sent with an
//! `Idempotency-Key` answered, kept 24 hours so that a retry of it gets the
//! same answer instead of doing the work again
//! ([`crate::http::api::idempotency`]).
//!
//! A record is `running` while its first request is being answered and
//! `done` once its answer is stored. A TTL index on `expires_at` removes it.

use mongodb::bson::{doc, spec::BinarySubtype, Binary, DateTime, Document};
use mongodb::error::Error as MongoError;

use super::{is_duplicate_key, Store};

pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    pub location: Option<String>,
    pub body: Vec<u8>,
}

/// What [`begin`] found.
#[derive(Debug)]
pub enum Begun {
    /// This request is the key's first (or takes over from one that died):
    /// do the work, then [`finish`] or [`abandon`].
    First,
    /// The key's first request, with the same fingerprint, was answered so.
    Replay(Answer),
    /// The key was used for a request with another fingerprint.
    OtherRequest,
    /// The key's first request is still being answered.
    InFlight,
}

/// Claims `id` for a request with `fingerprint`. `stale_at`: when a
/// `running` record is taken to belong to a request that died, and may be
/// taken over; `expires_at`: when the record goes.
pub async fn begin(
    store: &Store,
    id: &str,
    fingerprint: &str,
    stale_at: DateTime,
    expires_at: DateTime,
) -> Result<Begun, MongoError> {
    let coll = store.collection(IDEMPOTENCY_KEYS);
    let record = doc! {
        "_id": id,
        "fingerprint": fingerprint,
        "state": "running",
        "stale_at": stale_at,
        "expires_at": expires_at,
    };
    match store
        .ride_through("claim idempotency key", || coll.insert_one(record.clone()))
        .await
    {
        Ok(_) => return Ok(Begun::First),
        Err(e) if is_duplicate_key(&e) => {}
        Err(e) => return Err(e),
    }
    let Some(found) = coll.find_one(doc! { "_id": id }).await? else {
        // Expired between the two calls: the next retry starts afresh.
        return Ok(Begun::InFlight);
    };
    if found.get_str("fingerprint") != Ok(fingerprint) {
        return Ok(Begun::OtherRequest);
    }
    if found.get_str("state") == Ok("done") {
        return Ok(answer_of(&found).map_or(Begun::InFlight, Begun::Replay));
    }
    // Running: take it over only once it is stale, and only one taker wins.
    let taken = coll
        .update_one(
            doc! {
                "_id": id,
                "state": "running",
                "stale_at": found.get("stale_at").cloned().unwrap_or_default(),
                "$expr": { "$lt": ["$stale_at", "$$NOW"] },
            },
            doc! { "$set": { "stale_at": stale_at, "expires_at": expires_at } },
        )
        .await?;
    Ok(if taken.modified_count == 1 {
        Begun::First
    } else {
        Begun::InFlight
    })
}

/// Stores the answer to `id`'s first request.
pub async fn finish(store: &Store, id: &str, answer: &Answer) -> Result<(), MongoError> {
    let coll = store.collection(IDEMPOTENCY_KEYS);
    let mut set = doc! {
        "state": "done",
        "status": answer.status as i32,
        "body": Binary { subtype: BinarySubtype::Generic, bytes: answer.body.clone() },
    };
    if let Some(t) = &answer.content_type {
        set.insert("content_type", t);
    }
    if let Some(l) = &answer.location {
        set.insert("location", l);
    }
    let update = doc! { "$set": set, "$unset": { "stale_at": "" } };
    store
        .ride_through("store idempotent answer", || {
            coll.update_one(doc! { "_id": id }, update.clone())
        })
        .await?;
    Ok(())
}

/// Forgets `id`'s running record: its request failed in a way a retry
/// should not be told again (a 5xx, a 429), so the next try does the work.
pub async fn abandon(store: &Store, id: &str) -> Result<(), MongoError> {
    let coll = store.collection(IDEMPOTENCY_KEYS);
    store
        .ride_through("release idempotency key", || {
            coll.delete_one(doc! { "_id": id, "state": "running" })
        })
        .await?;
    Ok(())
}

fn answer_of(d: &Document) -> Option<Answer> {
    Some(Answer {
        status: u16::try_from(d.get_i32("status").ok()?).ok()?,
        content_type: d.get_str("content_type").ok().map(str::to_string),
        location: d.get_str("location").ok().map(str::to_string),
        body: d.get_binary_generic("body").ok()?.clone(),
    })
}
