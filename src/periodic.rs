//! Periodic per-certificate work scheduled by the scheduler leader: drift
//! scans (`drift_next_at`) and ARI refreshes (`ari_next_fetch_at`).
//!
//! Each kind keeps its next time in a field of the certificate, indexed. A
//! tick asks only for certificates whose time has passed, enqueues one job
//! per certificate keyed by the certificate and that time, and moves the time
//! one interval on — both as the leader ([`Leases::enqueue_as_leader`]), so a
//! deposed leader writes nothing and a successor that finds the same time
//! meets the same key. A job may set the next time itself (an ARI refresh
//! honours the CA's `Retry-After`); the move only applies while the time is
//! still the one the tick read.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use mongodb::bson::{doc, DateTime, Document};

use crate::acme::order::CERTIFICATES;
use crate::jobs::NewJob;
use crate::lease::{LeaseError, Leases, Term};
use crate::store::Store;

/// Certificates one tick schedules at most, per kind (the rest wait).
pub const DEFAULT_BATCH: i64 = 1000;
/// Enqueues in flight at once during a tick.
pub const ENQUEUE_CONCURRENCY: usize = 8;

/// One kind of periodic work.
#[derive(Debug, Clone, Copy)]
pub struct Periodic {
    /// The job kind enqueued.
    pub kind: &'static str,
    /// The certificate field holding the next time (indexed).
    pub next_field: &'static str,
    /// The job key's prefix: `<prefix>:<certificate>:<time in ms>`.
    pub key_prefix: &'static str,
}

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub due: usize,
    pub enqueued: usize,
    /// Already queued by an earlier tick (ours or another leader's).
    pub already_queued: usize,
}

impl TickReport {
    /// Counts a tick's enqueues (`true`: created); the first error wins.
    pub fn of(outcomes: Vec<Result<bool, LeaseError>>) -> Result<TickReport, LeaseError> {
        let mut report = TickReport {
            due: outcomes.len(),
            ..TickReport::default()
        };
        for outcome in outcomes {
            match outcome? {
                true => report.enqueued += 1,
                false => report.already_queued += 1,
            }
        }
        Ok(report)
    }
}

/// Up to `batch` certificates whose `field` (an indexed time) has passed by
/// the database's clock, the longest due first, with `projection`.
pub async fn due_certificates(
    store: &Store,
    field: &str,
    batch: i64,
    projection: Document,
) -> Result<(DateTime, Vec<Document>), LeaseError> {
    let now = store.server_now().await?;
    let due = store
        .collection(CERTIFICATES)
        .find(doc! { field: { "$lte": now } })
        .sort(doc! { field: 1 })
        .limit(batch)
        .projection(projection)
        .await
        .map_err(LeaseError::Db)?
        .try_collect()
        .await
        .map_err(LeaseError::Db)?;
    Ok((now, due))
}

pub fn job_key(periodic: &Periodic, certificate_id: &str, due: DateTime) -> String {
    format!(
        "{}:{certificate_id}:{}",
        periodic.key_prefix,
        due.timestamp_millis()
    )
}

/// Enqueues `periodic` for up to `batch` certificates whose time has come,
/// as the leader of `term`, and moves each one's time `every` on.
pub async fn enqueue_due(
    leases: &Leases,
    term: &Term,
    periodic: Periodic,
    batch: i64,
    every: Duration,
) -> Result<TickReport, LeaseError> {
    let field = periodic.next_field;
    let (now, due) =
        due_certificates(leases.store(), field, batch, doc! { "_id": 1, field: 1 }).await?;
    let next = DateTime::from_millis(now.timestamp_millis() + every.as_millis() as i64);
    let outcomes: Vec<Result<bool, LeaseError>> = futures::stream::iter(due)
        .map(|cert| async move {
            let id = cert.get_str("_id").unwrap_or_default().to_string();
            let due_at = cert.get_datetime(field).copied().unwrap_or(now);
            let job = NewJob::new(
                periodic.kind,
                job_key(&periodic, &id, due_at),
                doc! { "certificate_id": &id },
            );
            let enqueued = leases.enqueue_as_leader(term, &job).await?;
            leases
                .update_as_leader(
                    term,
                    CERTIFICATES,
                    doc! { "_id": &id, field: due_at },
                    doc! { "$set": { field: next } },
                    false,
                )
                .await?;
            Ok(enqueued.created)
        })
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .collect()
        .await;
    TickReport::of(outcomes)
}
