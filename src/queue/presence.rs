//! Each worker's short presence lease (collection `workers`).
//!
//! A job lease is long (60 s by default) so that a slow ACME call is not
//! interrupted; a worker's presence lease is short (10 s) and renewed about
//! every third of it. When a worker dies, its presence runs out and its jobs
//! become claimable within seconds. A worker that was only paused loses
//! nothing but those jobs: their fencing tokens refuse its late writes.

use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::Error as MongoError;
use mongodb::Collection;

use crate::store::Store;

pub const WORKERS_COLLECTION: &str = "workers";
/// Presence documents expired for longer than this are deleted by housekeeping.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Debug)]
pub struct Presence {
    store: Store,
    workers: Collection<Document>,
    worker_id: String,
    ttl: Duration,
}

impl Presence {
    pub fn new(store: Store, worker_id: &str, ttl: Duration) -> Presence {
        let workers = store.collection(WORKERS_COLLECTION);
        Presence {
            store,
            workers,
            worker_id: worker_id.to_string(),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Announces (or renews) this worker until the database's now plus the TTL.
    pub async fn renew(&self) -> Result<(), MongoError> {
        let update = doc! {
            "$set": { "expires_at": self.store.server_after(self.ttl).await?, "pid": std::process::id() as i64 },
            "$currentDate": { "renewed_at": true },
        };
        let filter = doc! { "_id": &self.worker_id };
        self.store
            .ride_through("renew presence", || {
                self.workers
                    .update_one(filter.clone(), update.clone())
                    .upsert(true)
            })
            .await?;
        Ok(())
    }

    /// Removes this worker's presence; called after its jobs were released.
    pub async fn withdraw(&self) -> Result<(), MongoError> {
        self.workers
            .delete_one(doc! { "_id": &self.worker_id })
            .await?;
        Ok(())
    }
}

/// Deletes presence documents that expired long ago.
pub async fn forget_departed(store: &Store) -> Result<u64, MongoError> {
    let workers = store.collection(WORKERS_COLLECTION);
    let now = store.server_now().await?;
    let cutoff = DateTime::from_millis(now.timestamp_millis() - FORGET_AFTER.as_millis() as i64);
    let filter = doc! { "expires_at": { "$lt": cutoff } };
    let result = store
        .ride_through("forget workers", || workers.delete_many(filter.clone()))
        .await?;
    Ok(result.deleted_count)
}
