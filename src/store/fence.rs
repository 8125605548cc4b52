//! Fenced writes: a write made on behalf of a job claim or a leadership term
//! lands only while that claim or term is still current (DESIGN.md
//! invariant 3).
//!
//! The write runs in a transaction that first touches the fence document (the
//! job, or the lease) with a filter naming our token or term. If the filter no
//! longer matches, the transaction is abandoned and the caller learns
//! [`FenceError::Lost`]. If someone takes the fence over concurrently, both
//! transactions write the fence document, so one of them aborts: a stale
//! holder's write can never land after the new holder's claim.

use futures::FutureExt;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;
use mongodb::ClientSession;

use crate::store::Store;

/// A write to make under a fence.
#[derive(Debug, Clone)]
pub enum FencedWrite {
    UpdateOne {
        collection: String,
        filter: Document,
        update: Document,
        upsert: bool,
    },
    InsertOne {
        collection: String,
        document: Document,
    },
    /// Nothing when `documents` is empty.
    InsertMany {
        collection: String,
        documents: Vec<Document>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    /// The fence document no longer matches: our claim or term is over.
    #[error("fence lost")]
    Lost,
    #[error("database error: {}", crate::store::short(.0))]
    Db(#[from] MongoError),
}

#[derive(Debug)]
struct AbortFenceLost;

/// Makes `write` only if `fence` still matches a document of `fence_collection`,
/// riding through elections.
pub async fn write_fenced(
    store: &Store,
    fence_collection: &str,
    fence: Document,
    write: FencedWrite,
) -> Result<(), FenceError> {
    write_all_fenced(store, fence_collection, fence, vec![write]).await
}

/// Makes every one of `writes`, in order and in one transaction, only if
/// `fence` still matches: all land or none.
pub async fn write_all_fenced(
    store: &Store,
    fence_collection: &str,
    fence: Document,
    writes: Vec<FencedWrite>,
) -> Result<(), FenceError> {
    let result = store
        .ride_through("fenced write", || async {
            let context = (
                store.clone(),
                store.collection(fence_collection),
                fence.clone(),
                writes.clone(),
            );
            let mut session = store.client().start_session().await?;
            session
                .start_transaction()
                .and_run(context, |session, (store, fences, fence, writes)| {
                    async move {
                        let touched = fences
                            .update_one(
                                fence.clone(),
                                doc! { "$currentDate": { "fenced_write_at": true } },
                            )
                            .session(&mut *session)
                            .await?;
                        if touched.matched_count == 0 {
                            return Err(MongoError::custom(AbortFenceLost));
                        }
                        for write in writes.iter() {
                            apply(store, &mut *session, write).await?;
                        }
                        Ok(())
                    }
                    .boxed()
                })
                .await
        })
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.get_custom::<AbortFenceLost>().is_some() => Err(FenceError::Lost),
        Err(e) => Err(FenceError::Db(e)),
    }
}

/// Makes every one of `writes`, in order and in one transaction, with no
/// fence: all land or none.
pub async fn write_all(store: &Store, writes: Vec<FencedWrite>) -> Result<(), MongoError> {
    store
        .ride_through("write together", || async {
            let context = (store.clone(), writes.clone());
            let mut session = store.client().start_session().await?;
            session
                .start_transaction()
                .and_run(context, |session, (store, writes)| {
                    async move {
                        for write in writes.iter() {
                            apply(store, &mut *session, write).await?;
                        }
                        Ok(())
                    }
                    .boxed()
                })
                .await
        })
        .await
}

/// Makes `write` in `session`'s transaction.
async fn apply(
    store: &Store,
    session: &mut ClientSession,
    write: &FencedWrite,
) -> Result<(), MongoError> {
    match write {
        FencedWrite::UpdateOne {
            collection,
            filter,
            update,
            upsert,
        } => {
            store
                .collection(collection)
                .update_one(filter.clone(), update.clone())
                .upsert(*upsert)
                .session(session)
                .await?;
        }
        FencedWrite::InsertOne {
            collection,
            document,
        } => {
            store
                .collection(collection)
                .insert_one(document.clone())
                .session(session)
                .await?;
        }
        FencedWrite::InsertMany {
            collection,
            documents,
        } => {
            if !documents.is_empty() {
                store
                    .collection(collection)
                    .insert_many(documents.clone())
                    .session(session)
                    .await?;
            }
        }
    }
    Ok(())
}
