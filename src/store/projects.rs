//! The `projects` collection.

use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;

use super::Store;

pub const PROJECTS: &str = "projects";

pub async fn insert(store: &Store, record: Document) -> Result<(), MongoError> {
    store.insert("create project", PROJECTS, record).await
}

pub async fn find(store: &Store, id: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(PROJECTS)
        .find_one(doc! { "_id": id })
        .await
}

/// One page of projects matching `filter` (see [`Store::page`]).
pub async fn page(
    store: &Store,
    filter: Document,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store.page(PROJECTS, filter, after, limit).await
}
