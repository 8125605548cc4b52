//! Whole-database reads and writes for snapshots (`crate::backup`): every
//! collection read at one point in time, and documents loaded back as they
//! were stored.
//!
//! One point in time: every collection is read inside one multi-document
//! transaction with read concern `snapshot`, so each read sees the data as
//! of the transaction's first read, whatever is written meanwhile (writers
//! are not blocked; a read-only transaction conflicts with nobody). On a
//! real `mongod` a transaction lives at most `transactionLifetimeLimitSeconds`
//! (60 s by default) from its start, so the whole read must fit in it; the
//! README says what to do for an installation too large for that.

use mongodb::bson::{doc, RawDocumentBuf};
use mongodb::error::Error as MongoError;
use mongodb::options::{Acknowledgment, ReadConcern, WriteConcern};

use super::{is_duplicate_key, Store};

/// Documents per cursor batch while reading a snapshot.
const READ_BATCH: u32 = 1000;

/// The installation's collections (not the server's own `system.*`), by name.
pub async fn collections(store: &Store) -> Result<Vec<String>, MongoError> {
    let mut names: Vec<String> = store
        .ride_through("list collections", || store.db().list_collection_names())
        .await?
        .into_iter()
        .filter(|n| !n.starts_with("system."))
        .collect();
    names.sort();
    Ok(names)
}

/// About how many documents `names` hold together (for progress).
pub async fn estimated_total(store: &Store, names: &[String]) -> u64 {
    let mut total = 0;
    for name in names {
        total += store
            .collection(name)
            .estimated_document_count()
            .await
            .unwrap_or(0);
    }
    total
}

/// Collections that hold at least one document, with their counts.
pub async fn non_empty(store: &Store) -> Result<Vec<(String, u64)>, MongoError> {
    let mut found = Vec::new();
    for name in collections(store).await? {
        let coll = store.collection(&name);
        let n = store
            .ride_through("count documents", || coll.count_documents(doc! {}))
            .await?;
        if n > 0 {
            found.push((name, n));
        }
    }
    Ok(found)
}

/// What a snapshot read hands its consumer.
pub enum Read<'a> {
    Collection(&'a str),
    Document(&'a RawDocumentBuf),
}

/// Reads every document of `names`, in that order and each collection in
/// `_id` order, all at one point in time, handing each to `visit` (which
/// may fail, e.g. on a full disk, and so stop the read). Returns the
/// database's time as the read began.
pub async fn read_at_one_point<E>(
    store: &Store,
    names: &[String],
    mut visit: impl FnMut(Read<'_>) -> Result<(), E>,
) -> Result<Result<mongodb::bson::DateTime, E>, MongoError> {
    let taken_at = store.server_now().await?;
    let mut session = store.client().start_session().await?;
    session
        .start_transaction()
        .read_concern(ReadConcern::snapshot())
        .await?;
    for name in names {
        if let Err(e) = visit(Read::Collection(name)) {
            let _ = session.abort_transaction().await;
            return Ok(Err(e));
        }
        let coll = store.db().collection::<RawDocumentBuf>(name);
        let mut cursor = coll
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .batch_size(READ_BATCH)
            .session(&mut session)
            .await?;
        while let Some(document) = cursor.next(&mut session).await {
            let document = document?;
            if let Err(e) = visit(Read::Document(&document)) {
                drop(cursor);
                let _ = session.abort_transaction().await;
                return Ok(Err(e));
            }
        }
    }
    // It wrote nothing: ending it either way releases its snapshot.
    session.abort_transaction().await?;
    Ok(Ok(taken_at))
}

/// Creates `name` (nothing when it exists): a restored collection exists
/// even when it was empty.
pub async fn create_collection(store: &Store, name: &str) -> Result<(), MongoError> {
    match store
        .ride_through("create collection", || store.db().create_collection(name))
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if super::error_code(&e) == Some(super::NAMESPACE_EXISTS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Inserts `documents` into `name`, riding through elections. A retry after
/// an ambiguous failure meets the documents its first try stored (same
/// `_id`, and the target held nothing else): those duplicates are success.
pub async fn load(
    store: &Store,
    name: &str,
    documents: &[RawDocumentBuf],
) -> Result<(), MongoError> {
    if documents.is_empty() {
        return Ok(());
    }
    let coll = store.db().collection::<RawDocumentBuf>(name);
    let majority = WriteConcern::builder().w(Acknowledgment::Majority).build();
    let mut attempt = 0;
    store
        .ride_through("restore documents", || {
            attempt += 1;
            let (coll, majority, retry) = (coll.clone(), majority.clone(), attempt > 1);
            async move {
                match coll
                    .insert_many(documents)
                    .ordered(false)
                    .write_concern(majority)
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if retry && only_duplicates(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        })
        .await
}

fn only_duplicates(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|errs| errs.iter().all(|w| w.code == super::DUPLICATE_KEY))
        }
        _ => is_duplicate_key(e),
    }
}
