//! The fenced job queue (collection `jobs`).
//!
//! A job moves `queued → running → done`, or back to `queued` with a back-off
//! after a failure, or to `dead` when its attempts are spent. Every claim
//! stamps the job with a new fencing `token` (one larger than the job's last),
//! and every later write on behalf of that claim — heartbeat, complete, fail,
//! release, and any write a handler makes through [`JobLease::fenced`] —
//! is filtered on that token. A holder whose lease was taken over therefore has
//! its writes refused ([`JobError::LeaseLost`]) and must stop.
//!
//! Time is the database's: deadlines are computed from the database's clock
//! ([`crate::store::clock`]) and whether a lease expired is decided by the server
//! (`$expr` against `$$NOW`), never by this process's clock (DESIGN.md
//! invariant 2).

use std::time::Duration;

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;
use mongodb::{ClientSession, Collection};
use rand::seq::SliceRandom;

use crate::domain::backoff::Backoff;
use crate::domain::jobs::{JobKind, JobSpec};
use crate::queue::presence::WORKERS_COLLECTION;
use crate::store::fence::{write_all, write_fenced, FenceError, FencedWrite};
use crate::store::{is_duplicate_key, short, Store};

pub const JOBS_COLLECTION: &str = "jobs";

/// Attempts before a failing job is `dead` (`CAP_JOB_MAX_ATTEMPTS`).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

pub const DEFAULT_RETRY_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(5), Duration::from_secs(3600));

/// How many candidates a claimer looks at for each job it wants. Picking at
/// random among more candidates than it takes keeps concurrent claimers from
/// all reaching for the same few jobs and aborting each other's transactions.
const CANDIDATE_SPREAD: usize = 4;

/// Every job gets a random slot in `0..SLOTS` (indexed with its state and
/// due time). A claim first looks in one random window of `SLOT_WINDOW`
/// slots, so that its query matches about 1/64 of the queue — the server's
/// cost follows the documents a query matches, not its limit — and
/// concurrent claimers mostly look in different places. Only when the window
/// holds too few runnable jobs does it look at the whole queue, which is then
/// short anyway. (Measured in `benches/claims.rs`: windows of 1/8 and 1/32
/// of the queue gave 380 and 443 claims/s with 16 claimers, 1/64 gave 495.)
pub const SLOTS: i32 = 256;
const SLOT_WINDOW: i32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Queued,
    Running,
    Done,
    Dead,
}

impl JobState {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Dead => "dead",
        }
    }
}

/// A job to enqueue. The key makes enqueueing idempotent: a second job with
/// the same key is not created (time-driven work derives it from what and when).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub key: String,
    pub payload: Document,
    pub max_attempts: u32,
    /// Run no earlier than this long after the database's now.
    pub delay: Duration,
}

impl NewJob {
    /// The job `spec` describes ([`crate::domain::jobs`] builds one per kind).
    pub fn from_spec<P: serde::Serialize>(spec: JobSpec<P>) -> NewJob {
        let payload = mongodb::bson::to_document(&spec.payload)
            .expect("a job payload serializes to a document");
        NewJob::new(spec.kind.as_str(), spec.key, payload)
    }

    pub fn new(kind: &str, key: impl Into<String>, payload: Document) -> NewJob {
        NewJob {
            kind: kind.to_string(),
            key: key.into(),
            payload,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    pub id: ObjectId,
    /// False when a job with this key already existed.
    pub created: bool,
}

/// A claimed job: what the handler runs, and the lease it runs under.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub kind: String,
    pub key: String,
    pub payload: Document,
    pub attempt: u32,
    pub max_attempts: u32,
    pub last_error: Option<String>,
    pub lease: JobLease,
}

/// The right to write on behalf of one claim of one job.
#[derive(Debug, Clone)]
pub struct JobLease {
    pub job_id: ObjectId,
    /// How long each claim or heartbeat extends the lease.
    pub length: Duration,
    pub token: i64,
    pub holder: String,
    queue: JobQueue,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The job was claimed by someone else (our lease expired or our worker
    /// was declared dead): stop, and write nothing more for it.
    #[error("lease lost: job {0} is held under a newer fencing token")]
    LeaseLost(ObjectId),
    #[error("database error: {}", short(.0))]
    Db(#[from] MongoError),
}

/// What `fail` did with the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailOutcome {
    /// Back in the queue, runnable again after `delay`.
    Retrying { delay: Duration },
    /// Attempts spent (or the failure was permanent): kept with its error.
    Dead,
}

#[derive(Debug, Clone)]
pub struct JobQueue {
    store: Store,
    jobs: Collection<Document>,
    retry_backoff: Backoff,
}

impl JobQueue {
    pub fn new(store: Store) -> JobQueue {
        let jobs = store.collection(JOBS_COLLECTION);
        JobQueue {
            store,
            jobs,
            retry_backoff: DEFAULT_RETRY_BACKOFF,
        }
    }

    pub fn with_retry_backoff(mut self, backoff: Backoff) -> JobQueue {
        self.retry_backoff = backoff;
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The document that enqueues `job` at `now` (the database's time),
    /// runnable after its delay.
    pub fn new_job_document(job: &NewJob, now: DateTime) -> Document {
        let run_at = DateTime::from_millis(now.timestamp_millis() + job.delay.as_millis() as i64);
        doc! {
            "_id": ObjectId::new(),
            "key": &job.key,
            "kind": &job.kind,
            "payload": &job.payload,
            "state": JobState::Queued.as_str(),
            "run_at": run_at,
            "attempt": 0i32,
            "max_attempts": job.max_attempts as i32,
            "token": 0i64,
            "slot": rand::random_range(0..SLOTS),
            "holder": Bson::Null,
            "last_error": Bson::Null,
            "created_at": now,
        }
    }

    /// The ids of the jobs that hold any of `keys`, by key.
    pub async fn ids_by_key(
        &self,
        keys: &[&str],
    ) -> Result<std::collections::HashMap<String, ObjectId>, MongoError> {
        let found: Vec<Document> = self
            .store
            .ride_through("find jobs by key", || async {
                self.jobs
                    .find(doc! { "key": { "$in": keys } })
                    .projection(doc! { "_id": 1, "key": 1 })
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(found
            .iter()
            .filter_map(|d| {
                Some((
                    d.get_str("key").ok()?.to_string(),
                    d.get_object_id("_id").ok()?,
                ))
            })
            .collect())
    }

    /// Adds a job unless one with the same key exists (the unique index on
    /// `key` refuses the second). Safe to repeat.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, MongoError> {
        let document = Self::new_job_document(job, self.store.server_now().await?);
        let id = document.get_object_id("_id").expect("new job has an id");
        let result = self
            .store
            .ride_through("enqueue job", || self.jobs.insert_one(document.clone()))
            .await;
        match result {
            Ok(_) => Ok(Enqueued { id, created: true }),
            Err(e) if is_duplicate_key(&e) => {
                let existing = self
                    .store
                    .ride_through("find job by key", || {
                        self.jobs.find_one(doc! { "key": &job.key })
                    })
                    .await?;
                match existing.and_then(|d| d.get_object_id("_id").ok()) {
                    // A retried insert whose first try landed finds its own job.
                    Some(existing) => Ok(Enqueued {
                        id: existing,
                        created: existing == id,
                    }),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Makes `write` and enqueues `job` (unless its key is queued already)
    /// in one transaction, so neither is ever found without the other: for
    /// a record whose job carries it out. Safe to repeat when `write` is.
    pub async fn enqueue_with(&self, job: &NewJob, write: FencedWrite) -> Result<(), MongoError> {
        let mut document = Self::new_job_document(job, self.store.server_now().await?);
        document.remove("key");
        let enqueue = FencedWrite::UpdateOne {
            collection: JOBS_COLLECTION.into(),
            filter: doc! { "key": &job.key },
            update: doc! { "$setOnInsert": document },
            upsert: true,
        };
        write_all(&self.store, vec![write, enqueue]).await
    }

    /// Claims up to `max` runnable jobs of the given kinds for `holder`, in
    /// one transaction: a queued job whose time has come, a running job whose
    /// lease expired, or a running job whose holder's presence lease expired.
    ///
    /// Each claimed job gets `token + 1`, `attempt + 1`, the holder, and a
    /// lease until the database's now plus `lease`.
    pub async fn claim(
        &self,
        holder: &str,
        kinds: &[String],
        max: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, MongoError> {
        if max == 0 || kinds.is_empty() {
            return Ok(Vec::new());
        }
        // Tags this claim's writes, so that after an ambiguous failure (the
        // commit may have landed) we find what we claimed instead of leaking it.
        let claim_id = ObjectId::new().to_hex();
        let result = self
            .store
            .ride_through("claim jobs", || {
                self.claim_once(holder, kinds, max, lease, &claim_id)
            })
            .await;
        match result {
            Ok(()) => self.load_claimed(&claim_id).await,
            Err(e) => {
                let claimed = self.load_claimed(&claim_id).await.unwrap_or_default();
                if claimed.is_empty() {
                    Err(e)
                } else {
                    Ok(claimed)
                }
            }
        }
    }

    async fn claim_once(
        &self,
        holder: &str,
        kinds: &[String],
        max: usize,
        lease: Duration,
        claim_id: &str,
    ) -> Result<(), MongoError> {
        let dead_workers = self.dead_workers().await?;
        let now = self.store.server_now().await?;
        let lease_expires_at = self.store.server_after(lease).await?;
        let window_start = rand::random_range(0..SLOTS / SLOT_WINDOW) * SLOT_WINDOW;
        let in_window = claimable_filter(
            kinds,
            &dead_workers,
            now,
            Some(window_start..window_start + SLOT_WINDOW),
        );
        let claimable = claimable_filter(kinds, &dead_workers, now, None);
        let lease_ms = lease.as_millis() as i64;
        let context = (
            self.jobs.clone(),
            in_window,
            claimable,
            holder.to_string(),
            claim_id.to_string(),
        );
        let mut session = self.store.client().start_session().await?;
        session
            .start_transaction()
            .and_run(context, |session, (jobs, in_window, claimable, holder, claim_id)| {
                async move {
                    let limit = (max * CANDIDATE_SPREAD) as i64;
                    let mut found = candidates(jobs, in_window, limit, session).await?;
                    if found.len() < max {
                        found = candidates(jobs, claimable, limit, session).await?;
                    }
                    if found.is_empty() {
                        return Ok(());
                    }
                    found.shuffle(&mut rand::rng());
                    found.truncate(max);
                    let mut filter = claimable.clone();
                    filter.insert("_id", doc! { "$in": found });
                    jobs.update_many(
                        filter,
                        doc! {
                            "$set": {
                                "state": JobState::Running.as_str(),
                                "holder": holder.as_str(),
                                "claim_id": claim_id.as_str(),
                                "lease_ms": lease_ms,
                                "lease_expires_at": lease_expires_at,
                            },
                            "$inc": { "token": 1i64, "attempt": 1i32 },
                            "$currentDate": { "claimed_at": true, "heartbeat_at": true, "updated_at": true },
                        },
                    )
                    .session(&mut *session)
                    .await?;
                    Ok(())
                }
                .boxed()
            })
            .await
    }

    async fn load_claimed(&self, claim_id: &str) -> Result<Vec<ClaimedJob>, MongoError> {
        let docs: Vec<Document> = self
            .store
            .ride_through("load claimed jobs", || async {
                self.jobs
                    .find(doc! { "claim_id": claim_id, "state": "running" })
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(docs
            .into_iter()
            .filter_map(|d| self.claimed_from(d))
            .collect())
    }

    fn claimed_from(&self, d: Document) -> Option<ClaimedJob> {
        Some(ClaimedJob {
            kind: d.get_str("kind").ok()?.to_string(),
            key: d.get_str("key").ok()?.to_string(),
            payload: d.get_document("payload").cloned().unwrap_or_default(),
            attempt: int(&d, "attempt") as u32,
            max_attempts: int(&d, "max_attempts") as u32,
            last_error: d.get_str("last_error").ok().map(str::to_string),
            lease: JobLease {
                length: Duration::from_millis(int(&d, "lease_ms").max(0) as u64),
                job_id: d.get_object_id("_id").ok()?,
                token: int(&d, "token"),
                holder: d.get_str("holder").ok()?.to_string(),
                queue: self.clone(),
            },
        })
    }

    /// Workers whose presence lease has run out, by the database's clock.
    async fn dead_workers(&self) -> Result<Vec<String>, MongoError> {
        let workers = self.store.collection(WORKERS_COLLECTION);
        let dead: Vec<Document> = workers
            .find(doc! { "$expr": { "$lt": ["$expires_at", "$$NOW"] } })
            .projection(doc! { "_id": 1 })
            .await?
            .try_collect()
            .await?;
        Ok(dead
            .into_iter()
            .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
            .collect())
    }

    /// Sets every queued or running job aside (queued, due in the year
    /// 9999, its holder cleared, `held` saying why) so that no worker runs
    /// it: `dr drill` does this to the restored copy's jobs, which belong to
    /// the installation it rehearses, before it runs a worker of its own.
    /// Returns how many it set aside.
    pub async fn hold_all(&self, why: &str) -> Result<u64, MongoError> {
        const YEAR_9999: i64 = 253_402_300_799_000;
        let result = self
            .store
            .ride_through("hold jobs", || {
                self.jobs.update_many(
                    doc! { "state": { "$in": ["queued", "running"] } },
                    doc! {
                        "$set": {
                            "state": JobState::Queued.as_str(),
                            "run_at": DateTime::from_millis(YEAR_9999),
                            "holder": Bson::Null,
                            "held": why,
                        },
                        "$currentDate": { "updated_at": true },
                    },
                )
            })
            .await?;
        Ok(result.modified_count)
    }

    /// Extends the lease to the database's now plus its length.
    pub async fn heartbeat(&self, lease: &JobLease) -> Result<(), JobError> {
        let expires_at = self.store.server_after(lease.length).await?;
        let update = doc! {
            "$set": { "lease_expires_at": expires_at },
            "$currentDate": { "heartbeat_at": true },
        };
        self.fenced_job_update(lease, "heartbeat", update).await
    }

    /// Marks the job done. Repeating it is harmless: the token is unchanged.
    pub async fn complete(&self, lease: &JobLease) -> Result<(), JobError> {
        let update = doc! {
            "$set": { "state": JobState::Done.as_str(), "last_error": Bson::Null },
            "$currentDate": { "finished_at": true, "updated_at": true },
        };
        self.fenced_job_update(lease, "complete job", update).await
    }

    /// Records a failure: back to the queue after an exponential back-off with
    /// jitter, or `dead` (keeping the error) when attempts are spent or the
    /// failure is permanent.
    pub async fn fail(
        &self,
        job: &ClaimedJob,
        error: &str,
        permanent: bool,
    ) -> Result<FailOutcome, JobError> {
        self.fail_not_before(job, error, permanent, Duration::ZERO)
            .await
    }

    /// [`Self::fail`], retrying no sooner than `not_before` from now even if
    /// the back-off is shorter.
    pub async fn fail_not_before(
        &self,
        job: &ClaimedJob,
        error: &str,
        permanent: bool,
        not_before: Duration,
    ) -> Result<FailOutcome, JobError> {
        let error = truncate(error, 4000);
        if permanent || job.attempt >= job.max_attempts {
            let update = doc! {
                "$set": { "state": JobState::Dead.as_str(), "last_error": &error },
                "$currentDate": { "finished_at": true, "updated_at": true },
            };
            self.fenced_job_update(&job.lease, "fail job", update)
                .await?;
            return Ok(FailOutcome::Dead);
        }
        let delay = self.retry_backoff.delay(job.attempt).max(not_before);
        let run_at = self.store.server_after(delay).await?;
        let update = doc! {
            "$set": { "state": JobState::Queued.as_str(), "holder": Bson::Null, "last_error": &error, "run_at": run_at },
            "$currentDate": { "updated_at": true },
        };
        self.fenced_job_update(&job.lease, "fail job", update)
            .await?;
        Ok(FailOutcome::Retrying { delay })
    }

    /// Puts the job back in the queue at once, without spending an attempt:
    /// used when a worker shuts down with the job in flight.
    pub async fn release(&self, lease: &JobLease) -> Result<(), JobError> {
        let filter =
            doc! { "_id": lease.job_id, "token": lease.token, "state": JobState::Running.as_str() };
        let run_at = self.store.server_now().await?;
        let update = doc! {
            "$set": { "state": JobState::Queued.as_str(), "holder": Bson::Null, "run_at": run_at },
            "$inc": { "attempt": -1i32 },
            "$currentDate": { "updated_at": true },
        };
        let result = self
            .store
            .ride_through("release job", || {
                self.jobs.update_one(filter.clone(), update.clone())
            })
            .await?;
        if result.matched_count == 0 {
            return Err(JobError::LeaseLost(lease.job_id));
        }
        Ok(())
    }

    /// An update of the job document itself, filtered on the lease's token.
    async fn fenced_job_update(
        &self,
        lease: &JobLease,
        what: &str,
        update: Document,
    ) -> Result<(), JobError> {
        let filter = doc! { "_id": lease.job_id, "token": lease.token };
        let result = self
            .store
            .ride_through(what, || {
                self.jobs.update_one(filter.clone(), update.clone())
            })
            .await?;
        if result.matched_count == 0 {
            return Err(JobError::LeaseLost(lease.job_id));
        }
        Ok(())
    }

    /// One job by id (for tests, `health` and later the API).
    pub async fn get(&self, id: ObjectId) -> Result<Option<Document>, MongoError> {
        self.store
            .ride_through("get job", || self.jobs.find_one(doc! { "_id": id }))
            .await
    }

    /// Jobs in each (kind, state) except `done`, from the `state_kind` index.
    /// When the oldest runnable queued job became runnable (its `run_at`,
    /// not after the database's now), if any waits: from the
    /// `state_run_at` index (migration 14).
    pub async fn oldest_runnable(&self) -> Result<Option<DateTime>, MongoError> {
        let filter =
            doc! { "state": JobState::Queued.as_str(), "$expr": { "$lte": ["$run_at", "$$NOW"] } };
        let found = self
            .store
            .ride_through("oldest queued job", || {
                self.jobs
                    .find_one(filter.clone())
                    .sort(doc! { "run_at": 1 })
                    .projection(doc! { "run_at": 1 })
            })
            .await?;
        Ok(found.and_then(|d| d.get_datetime("run_at").ok().copied()))
    }

    pub async fn depth(&self) -> Result<Vec<(String, String, i64)>, MongoError> {
        let pipeline = vec![
            doc! { "$match": { "state": { "$in": ["queued", "running", "dead"] } } },
            doc! { "$group": { "_id": { "kind": "$kind", "state": "$state" }, "n": { "$sum": 1 } } },
        ];
        let rows: Vec<Document> = self
            .store
            .ride_through("queue depth", || async {
                self.jobs
                    .aggregate(pipeline.clone())
                    .await?
                    .try_collect()
                    .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                let id = r.get_document("_id").ok()?;
                Some((
                    id.get_str("kind").ok()?.to_string(),
                    id.get_str("state").ok()?.to_string(),
                    int(&r, "n"),
                ))
            })
            .collect())
    }

    /// Deletes finished (`done`) jobs older than `retention`. Dead jobs stay
    /// until an operator looks at them.
    /// Jobs of `kind` queued or running.
    pub async fn count_active(&self, kind: JobKind) -> Result<u64, MongoError> {
        self.jobs
            .count_documents(doc! {
                "kind": kind.as_str(),
                "state": { "$in": [JobState::Queued.as_str(), JobState::Running.as_str()] },
            })
            .await
    }

    /// The job of `kind` for certificate `certificate_id` queued or running, if any.
    pub async fn active_for_certificate(
        &self,
        kind: JobKind,
        certificate_id: &str,
    ) -> Result<Option<ObjectId>, MongoError> {
        let found = self
            .jobs
            .find_one(doc! {
                "kind": kind.as_str(),
                "payload.certificate_id": certificate_id,
                "state": { "$in": [JobState::Queued.as_str(), JobState::Running.as_str()] },
            })
            .await?;
        Ok(found.and_then(|j| j.get_object_id("_id").ok()))
    }

    /// One page of the jobs of `kind` for certificate `certificate_id`, in
    /// creation order (job ids are ObjectIds), after `after`; and whether
    /// there are more.
    pub async fn page_for_certificate(
        &self,
        kind: JobKind,
        certificate_id: &str,
        after: Option<ObjectId>,
        limit: i64,
    ) -> Result<(Vec<Document>, bool), MongoError> {
        let mut filter = doc! { "kind": kind.as_str(), "payload.certificate_id": certificate_id };
        if let Some(after) = after {
            filter.insert("_id", doc! { "$gt": after });
        }
        let mut found: Vec<Document> = self
            .jobs
            .find(filter)
            .sort(doc! { "_id": 1 })
            .limit(limit + 1)
            .await?
            .try_collect()
            .await?;
        let more = found.len() as i64 > limit;
        found.truncate(limit as usize);
        Ok((found, more))
    }

    pub async fn purge_finished(&self, retention: Duration) -> Result<u64, MongoError> {
        let now = self.store.server_now().await?;
        let cutoff = DateTime::from_millis(now.timestamp_millis() - retention.as_millis() as i64);
        let filter = doc! { "state": JobState::Done.as_str(), "finished_at": { "$lt": cutoff } };
        let result = self
            .store
            .ride_through("purge jobs", || self.jobs.delete_many(filter.clone()))
            .await?;
        Ok(result.deleted_count)
    }
}

impl JobLease {
    /// The database this job lives in.
    pub fn store(&self) -> &Store {
        &self.queue.store
    }

    /// Updates one document of `collection` on behalf of this job, only while
    /// the job is still held under this token ([`crate::store::fence`]).
    pub async fn fenced_update(
        &self,
        collection: &str,
        filter: Document,
        update: Document,
        upsert: bool,
    ) -> Result<(), JobError> {
        self.fenced(FencedWrite::UpdateOne {
            collection: collection.to_string(),
            filter,
            update,
            upsert,
        })
        .await
    }

    /// Makes `write` (built by the store module that owns its collection) on
    /// behalf of this job, only while the job is still held under this token.
    pub async fn fenced(&self, write: FencedWrite) -> Result<(), JobError> {
        let fence =
            doc! { "_id": self.job_id, "token": self.token, "state": JobState::Running.as_str() };
        match write_fenced(&self.queue.store, JOBS_COLLECTION, fence, write).await {
            Ok(()) => Ok(()),
            Err(FenceError::Lost) => Err(JobError::LeaseLost(self.job_id)),
            Err(FenceError::Db(e)) => Err(JobError::Db(e)),
        }
    }
}

/// Ids of up to `limit` jobs matching `filter`, the longest due first.
async fn candidates(
    jobs: &Collection<Document>,
    filter: &Document,
    limit: i64,
    session: &mut ClientSession,
) -> Result<Vec<ObjectId>, MongoError> {
    jobs.find(filter.clone())
        .sort(doc! { "run_at": 1 })
        .limit(limit)
        .projection(doc! { "_id": 1 })
        .session(&mut *session)
        .await?
        .stream(&mut *session)
        .try_filter_map(|d| async move { Ok(d.get_object_id("_id").ok()) })
        .try_collect()
        .await
}

/// Runnable now: queued and due, or running under a lease the database's
/// clock says expired, or running for a worker whose presence expired.
/// `slots` narrows the queued jobs to a window of slots.
fn claimable_filter(
    kinds: &[String],
    dead_workers: &[String],
    now: DateTime,
    slots: Option<std::ops::Range<i32>>,
) -> Document {
    let mut queued = doc! { "state": "queued" };
    if let Some(slots) = slots {
        queued.insert("slot", doc! { "$gte": slots.start, "$lt": slots.end });
    }
    queued.insert("run_at", doc! { "$lte": now });
    let mut branches = vec![
        queued,
        doc! { "state": "running", "$expr": { "$lt": ["$lease_expires_at", "$$NOW"] } },
    ];
    if !dead_workers.is_empty() {
        branches.push(doc! { "state": "running", "holder": { "$in": dead_workers } });
    }
    doc! { "kind": { "$in": kinds }, "$or": branches }
}

fn int(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(Bson::Int32(v)) => *v as i64,
        Some(Bson::Int64(v)) => *v,
        Some(Bson::Double(v)) => *v as i64,
        _ => 0,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}
