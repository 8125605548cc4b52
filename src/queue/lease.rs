//! Named leases with fencing terms (collection `leases`): the scheduler's
//! leadership.
//!
//! A lease document `{_id: name, holder, term, expires_at}` is acquired when
//! its `expires_at` is past by the database's clock; every acquisition raises
//! `term` by one, so terms are a fencing sequence. Each term is also written
//! to `lease_terms` (unique on lease and term), a history tests and operators
//! use to check that no two holders ever shared a term.

use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::change_stream::{event::ChangeStreamEvent, ChangeStream};
use mongodb::error::Error as MongoError;
use mongodb::Collection;

use crate::queue::jobs::{Enqueued, JobQueue, NewJob, JOBS_COLLECTION};
use crate::store::fence::{write_all_fenced, write_fenced, FenceError, FencedWrite};
use crate::store::{is_duplicate_key, Store};

pub const LEASES_COLLECTION: &str = "leases";
pub const LEASE_TERMS_COLLECTION: &str = "lease_terms";
pub const SCHEDULER_LEASE: &str = "scheduler";

/// One holder's term of a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub lease: String,
    pub holder: String,
    pub term: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Our term is over: someone else holds the lease, or it expired.
    #[error("lease lost: {0} is no longer held under this term")]
    Lost(String),
    #[error("database error: {}", crate::store::short(.0))]
    Db(#[from] MongoError),
}

#[derive(Debug, Clone)]
pub struct Leases {
    store: Store,
    leases: Collection<Document>,
    terms: Collection<Document>,
}

impl Leases {
    pub fn new(store: Store) -> Leases {
        Leases {
            leases: store.collection(LEASES_COLLECTION),
            terms: store.collection(LEASE_TERMS_COLLECTION),
            store,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Takes the lease if it is free or expired. `None`: someone holds it.
    pub async fn try_acquire(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Term>, MongoError> {
        // The document must exist before a conditional update can take it
        // over; a duplicate key just means it already does.
        let seed = doc! { "_id": name, "holder": Bson::Null, "term": 0i64, "expires_at": DateTime::from_millis(0) };
        match self
            .store
            .ride_through("create lease", || self.leases.insert_one(seed.clone()))
            .await
        {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {}
            Err(e) => return Err(e),
        }
        let filter = doc! { "_id": name, "$expr": { "$lt": ["$expires_at", "$$NOW"] } };
        let update = doc! {
            "$set": { "holder": holder, "expires_at": self.store.server_after(ttl).await? },
            "$inc": { "term": 1i64 },
            "$currentDate": { "acquired_at": true, "renewed_at": true },
        };
        let taken = self
            .store
            .ride_through("acquire lease", || {
                self.leases.update_one(filter.clone(), update.clone())
            })
            .await?;
        // Read back what we hold: after an ambiguous retry `taken` may say 0
        // although the first try landed, so the document is the authority.
        let current = self
            .store
            .ride_through("read lease", || {
                self.leases.find_one(doc! { "_id": name, "holder": holder, "$expr": { "$gt": ["$expires_at", "$$NOW"] } })
            })
            .await?;
        let Some(current) = current else {
            return Ok(None);
        };
        let term = Term {
            lease: name.to_string(),
            holder: holder.to_string(),
            term: current.get_i64("term").unwrap_or(0),
        };
        if taken.matched_count == 1 {
            self.record_term(&term).await?;
        }
        Ok(Some(term))
    }

    async fn record_term(&self, term: &Term) -> Result<(), MongoError> {
        let filter = doc! { "lease": &term.lease, "term": term.term };
        let update =
            doc! { "$set": { "holder": &term.holder }, "$currentDate": { "started_at": true } };
        match self
            .store
            .ride_through("record term", || {
                self.terms
                    .update_one(filter.clone(), update.clone())
                    .upsert(true)
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Extends our term to the database's now plus `ttl`.
    pub async fn renew(&self, term: &Term, ttl: Duration) -> Result<(), LeaseError> {
        let filter = doc! { "_id": &term.lease, "holder": &term.holder, "term": term.term };
        // A single attempt: the caller owns the timing and steps down in time.
        let expires_at = self.store.clock().after(self.store.db(), ttl).await?;
        let update =
            doc! { "$set": { "expires_at": expires_at }, "$currentDate": { "renewed_at": true } };
        let result = self.leases.update_one(filter, update).await?;
        if result.matched_count == 0 {
            return Err(LeaseError::Lost(term.lease.clone()));
        }
        Ok(())
    }

    /// Gives the lease up at once, so a standby can take it without waiting
    /// for it to expire.
    pub async fn release(&self, term: &Term) -> Result<(), MongoError> {
        let filter = doc! { "_id": &term.lease, "holder": &term.holder, "term": term.term };
        let update = doc! {
            "$set": { "expires_at": DateTime::from_millis(0), "holder": Bson::Null },
            "$currentDate": { "released_at": true },
        };
        self.leases
            .update_one(filter.clone(), update.clone())
            .await?;
        let ended = doc! { "$currentDate": { "ended_at": true } };
        self.terms
            .update_one(doc! { "lease": &term.lease, "term": term.term }, ended)
            .await?;
        Ok(())
    }

    /// The live holder of a lease, by the database's clock.
    pub async fn live_holder(&self, name: &str) -> Result<Option<Term>, MongoError> {
        let found = self
            .store
            .ride_through("read lease", || {
                self.leases
                    .find_one(doc! { "_id": name, "$expr": { "$gt": ["$expires_at", "$$NOW"] } })
            })
            .await?;
        Ok(found.and_then(|d| {
            Some(Term {
                lease: name.to_string(),
                holder: d.get_str("holder").ok()?.to_string(),
                term: d.get_i64("term").ok()?,
            })
        }))
    }

    /// Every change to the lease document, for a standby that wants to know
    /// at once when the leader lets go.
    pub async fn watch(
        &self,
        name: &str,
    ) -> Result<ChangeStream<ChangeStreamEvent<Document>>, MongoError> {
        self.leases
            .watch()
            .pipeline(vec![doc! { "$match": { "documentKey._id": name } }])
            .await
    }

    /// Updates one document on behalf of a leader, only while its term is
    /// current (the SIEM forwarder's position, a certificate's renewal mark).
    pub async fn update_as_leader(
        &self,
        term: &Term,
        collection: &str,
        filter: Document,
        update: Document,
        upsert: bool,
    ) -> Result<(), LeaseError> {
        let write = FencedWrite::UpdateOne {
            collection: collection.to_string(),
            filter,
            update,
            upsert,
        };
        self.write_as_leader(term, write).await
    }

    /// Makes `write` (built by the store module that owns its collection) on
    /// behalf of the leader of `term`, only while that term is current.
    pub async fn write_as_leader(&self, term: &Term, write: FencedWrite) -> Result<(), LeaseError> {
        match write_fenced(&self.store, LEASES_COLLECTION, leader_fence(term), write).await {
            Ok(()) => Ok(()),
            Err(FenceError::Lost) => Err(LeaseError::Lost(term.lease.clone())),
            Err(FenceError::Db(e)) => Err(LeaseError::Db(e)),
        }
    }

    /// Enqueues a job on behalf of a leader, in a transaction that first
    /// proves the term is still current: a deposed leader enqueues nothing.
    pub async fn enqueue_as_leader(
        &self,
        term: &Term,
        job: &NewJob,
    ) -> Result<Enqueued, LeaseError> {
        let fence = leader_fence(term);
        let document = JobQueue::new_job_document(job, self.store.server_now().await?);
        let id = document.get_object_id("_id").expect("new job has an id");
        let write = FencedWrite::InsertOne {
            collection: JOBS_COLLECTION.to_string(),
            document,
        };
        let result = write_fenced(&self.store, LEASES_COLLECTION, fence, write).await;
        match result {
            Ok(()) => Ok(Enqueued { id, created: true }),
            Err(FenceError::Db(e)) if is_duplicate_key(&e) => Ok(Enqueued { id, created: false }),
            Err(FenceError::Lost) => Err(LeaseError::Lost(term.lease.clone())),
            Err(FenceError::Db(e)) => Err(LeaseError::Db(e)),
        }
    }

    /// Enqueues `jobs` on behalf of a leader in one transaction that first
    /// proves the term is still current; a job whose key is already queued
    /// is not added again. Answers in the order of `jobs`.
    pub async fn enqueue_all_as_leader(
        &self,
        term: &Term,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>, LeaseError> {
        let queue = JobQueue::new(self.store.clone());
        let keys: Vec<&str> = jobs.iter().map(|j| j.key.as_str()).collect();
        // A write error aborts a transaction, so the keys already queued are
        // looked up first; one queued meanwhile by another enqueuer (not a
        // leader: those are fenced off) aborts it, and it is looked at again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut queued = queue.ids_by_key(&keys).await?;
            let now = self.store.server_now().await?;
            let mut fresh = Vec::new();
            let enqueued: Vec<Enqueued> = jobs
                .iter()
                .map(|job| match queued.get(&job.key) {
                    Some(id) => Enqueued {
                        id: *id,
                        created: false,
                    },
                    None => {
                        let document = JobQueue::new_job_document(job, now);
                        let id = document.get_object_id("_id").expect("new job has an id");
                        fresh.push(document);
                        // The same key twice in `jobs`: one job.
                        queued.insert(job.key.clone(), id);
                        Enqueued { id, created: true }
                    }
                })
                .collect();
            let write = FencedWrite::InsertMany {
                collection: JOBS_COLLECTION.to_string(),
                documents: fresh,
            };
            match write_all_fenced(
                &self.store,
                LEASES_COLLECTION,
                leader_fence(term),
                vec![write],
            )
            .await
            {
                Ok(()) => return Ok(enqueued),
                Err(FenceError::Db(e)) if is_duplicate_key(&e) && attempt < 3 => continue,
                Err(FenceError::Lost) => return Err(LeaseError::Lost(term.lease.clone())),
                Err(FenceError::Db(e)) => return Err(LeaseError::Db(e)),
            }
        }
    }

    /// Makes every one of `writes` on behalf of a leader, in one transaction,
    /// only while its term is current.
    pub async fn write_all_as_leader(
        &self,
        term: &Term,
        writes: Vec<FencedWrite>,
    ) -> Result<(), LeaseError> {
        if writes.is_empty() {
            return Ok(());
        }
        match write_all_fenced(&self.store, LEASES_COLLECTION, leader_fence(term), writes).await {
            Ok(()) => Ok(()),
            Err(FenceError::Lost) => Err(LeaseError::Lost(term.lease.clone())),
            Err(FenceError::Db(e)) => Err(LeaseError::Db(e)),
        }
    }
}

/// Matches the lease document only while `term` holds it, unexpired.
fn leader_fence(term: &Term) -> Document {
    doc! {
        "_id": &term.lease, "holder": &term.holder, "term": term.term,
        "$expr": { "$gt": ["$expires_at", "$$NOW"] },
    }
}

/// Waits for the next event of a lease watch; `false` when the stream ended.
pub async fn next_change(stream: &mut ChangeStream<ChangeStreamEvent<Document>>) -> bool {
    matches!(stream.next().await, Some(Ok(_)))
}
