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

/// A filter for the live tokens among `filter`: not revoked, and not past
/// `expires_at` by the database's clock.
fn live_among(mut filter: Document) -> Document {
    filter.insert("revoked", false);
    filter.insert(
        "$or",
        vec![
            doc! { "expires_at": { "$exists": false } },
            doc! { "$expr": { "$gt": ["$expires_at", "$$NOW"] } },
        ],
    );
    filter
}

/// The live token stored under `record_id`: keyed by this build, not
/// revoked, and not past its `expires_at` by the database's clock.
pub async fn live(store: &Store, record_id: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(TOKENS)
        .find_one(live_among(doc! { "_id": record_id, "keyed": KEYED }))
        .await
}

/// Why a token minted through the API was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MintRefused {
    /// The token minting it was revoked (or expired) by the time the new
    /// token was stored; the new one is revoked too.
    MinterNotLive,
    /// `project` already holds `live` live tokens, the most it may.
    ProjectFull { project: String, live: u64 },
}

/// Stores `record`, a token minted by the token `minted_by` (its `id`),
/// unless a project the record grants a role on already holds
/// `max_per_project` live tokens, or `minted_by` is no longer live once the
/// record is stored.
///
/// The minter is read *after* the new record is written, and a revocation
/// writes the minter's record *before* it looks for what it minted
/// ([`revoke_with_minted`]). So either this read sees the minter live, and
/// the revocation's look comes later and finds the new token; or it sees
/// it revoked, and the new token is revoked here before its secret is
/// shown to anyone. No token minted while its minter is being revoked
/// stays live. (A crash between the two leaves a live record whose secret
/// nobody was given.)
///
/// The count per project is read before the write: mints racing on one
/// project may each pass it, so a project can go past the cap by the mints
/// in flight at that moment, never further.
pub async fn insert_minted(
    store: &Store,
    mut record: Document,
    minted_by: &str,
    max_per_project: u64,
) -> Result<Result<(), MintRefused>, MongoError> {
    let tokens = store.collection(TOKENS);
    let projects: Vec<&str> = record
        .get_array("roles")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .filter_map(|r| r.get_str("project_id").ok())
                .collect()
        })
        .unwrap_or_default();
    for project in projects {
        let live = tokens
            .count_documents(live_among(doc! { "roles.project_id": project }))
            .await?;
        if live >= max_per_project {
            return Ok(Err(MintRefused::ProjectFull {
                project: project.to_string(),
                live,
            }));
        }
    }
    let record_id = record.get_str("_id").unwrap_or_default().to_string();
    record.insert("keyed", KEYED);
    store.insert("mint token", TOKENS, record).await?;
    let minter = tokens
        .find_one(live_among(doc! { "id": minted_by }))
        .projection(doc! { "id": 1 })
        .await?;
    if minter.is_some() {
        return Ok(Ok(()));
    }
    store
        .ride_through("revoke a token minted by a revoked one", || {
            tokens.update_one(
                doc! { "_id": &record_id },
                doc! { "$set": { "revoked": true }, "$currentDate": { "revoked_at": true } },
            )
        })
        .await?;
    Ok(Err(MintRefused::MinterNotLive))
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
    let tokens = store.collection(TOKENS);
    while !wave.is_empty() {
        // Written before the walk looks for what these minted: a mint that
        // reads its minter after this write refuses itself, and one that
        // read it before had stored its token already (see `insert_minted`).
        tokens
            .update_many(
                doc! { "id": { "$in": &wave }, "revoked": false },
                doc! { "$set": { "revoked": true }, "$currentDate": { "revoked_at": true } },
            )
            .await?;
        revoked.extend(wave.iter().cloned());
        let minted: Vec<Document> = tokens
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
