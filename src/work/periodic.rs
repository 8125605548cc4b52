//! Periodic per-certificate work scheduled by the scheduler leader: drift
//! scans (`drift_next_at`) and ARI refreshes (`ari_next_fetch_at`).
//!
//! Each kind keeps its next time in a field of the certificate, indexed. A
//! tick asks only for certificates whose time has passed, enqueues one job
//! per certificate keyed by the certificate and that time, and moves the time
//! one interval on — both as the leader ([`Leases::enqueue_all_as_leader`]), so a
//! deposed leader writes nothing and a successor that finds the same time
//! meets the same key. A job may set the next time itself (an ARI refresh
//! honours the CA's `Retry-After`); the move only applies while the time is
//! still the one the tick read.

use std::time::Duration;

use mongodb::bson::{doc, oid::ObjectId, DateTime, Document};

use crate::domain::jobs::{self, CertificatePayload, JobKind, JobSpec};
use crate::queue::jobs::{Enqueued, NewJob};
use crate::queue::lease::{LeaseError, Leases, Term};
use crate::store::certificates;
use crate::store::fence::FencedWrite;

/// Certificates one tick schedules at most, per kind (the rest wait).
pub const DEFAULT_BATCH: i64 = 1000;
/// Certificates whose jobs a tick enqueues in one transaction (and whose
/// marks it moves in the next): 1,000 due take 8 transactions.
pub const ENQUEUE_GROUP: usize = 250;

/// One kind of periodic work.
#[derive(Debug, Clone, Copy)]
pub struct Periodic {
    /// The certificate field holding the next time (indexed).
    pub next_field: &'static str,
    /// The job of one certificate due at a time (ms since the epoch).
    pub job: fn(&str, i64) -> JobSpec<CertificatePayload>,
}

impl Periodic {
    /// The kind of job this work enqueues.
    pub fn kind(&self) -> JobKind {
        (self.job)("", 0).kind
    }
}

/// Drift scans (`CAP_DRIFT_SCAN_SECS`).
pub const DRIFT_SCANS: Periodic = Periodic {
    next_field: "drift_next_at",
    job: jobs::drift_scan,
};

/// ARI refreshes (moved on by [`crate::domain::renewal::PROVISIONAL_REFRESH`];
/// the refresh sets the real time from the CA's `Retry-After`).
pub const ARI_REFRESHES: Periodic = Periodic {
    next_field: "ari_next_fetch_at",
    job: jobs::ari_refresh,
};

/// What one tick did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TickReport {
    pub due: usize,
    pub enqueued: usize,
    /// Already queued by an earlier tick (ours or another leader's).
    pub already_queued: usize,
}

impl TickReport {
    /// Counts a tick's enqueues: new jobs, and those already queued.
    pub fn of(enqueued: &[Enqueued]) -> TickReport {
        let created = enqueued.iter().filter(|e| e.created).count();
        TickReport {
            due: enqueued.len(),
            enqueued: created,
            already_queued: enqueued.len() - created,
        }
    }
}

/// Enqueues the job `job` makes of each of `work` as the leader of `term`,
/// [`ENQUEUE_GROUP`] at a time: a group's jobs in one fenced transaction,
/// then the writes `mark` makes of each (given the job queued for it) in
/// another (each may make several). A leader that dies between the two leaves work its successor
/// finds again, whose enqueue then meets the same keys. `pause_between` is
/// fault injection for tests: a sleep between a group's two transactions.
/// Answers, in the order of `work`, the job queued for each.
pub async fn enqueue_in_groups<T, M: IntoIterator<Item = FencedWrite>>(
    leases: &Leases,
    term: &Term,
    work: &[T],
    job: impl Fn(&T) -> NewJob,
    mark: impl Fn(&T, ObjectId) -> M,
    pause_between: Option<Duration>,
) -> Result<Vec<Enqueued>, LeaseError> {
    let mut queued = Vec::with_capacity(work.len());
    for group in work.chunks(ENQUEUE_GROUP) {
        let jobs: Vec<NewJob> = group.iter().map(&job).collect();
        let enqueued = leases.enqueue_all_as_leader(term, &jobs).await?;
        if let Some(pause) = pause_between {
            tracing::warn!(
                jobs = group.len(),
                pause_secs = pause.as_secs(),
                "fault injection: pausing between an enqueue and its marks"
            );
            tokio::time::sleep(pause).await;
        }
        let marks = group
            .iter()
            .zip(&enqueued)
            .flat_map(|(w, e)| mark(w, e.id))
            .collect();
        leases.write_all_as_leader(term, marks).await?;
        queued.extend(enqueued);
    }
    Ok(queued)
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
        certificates::due(leases.store(), field, batch, doc! { "_id": 1, field: 1 }).await?;
    let next = DateTime::from_millis(now.timestamp_millis() + every.as_millis() as i64);
    let due_at = |cert: &Document| cert.get_datetime(field).copied().unwrap_or(now);
    let id = |cert: &Document| cert.get_str("_id").unwrap_or_default().to_string();
    let enqueued = enqueue_in_groups(
        leases,
        term,
        &due,
        |cert| NewJob::from_spec((periodic.job)(&id(cert), due_at(cert).timestamp_millis())),
        |cert, _| {
            [certificates::move_next(
                &id(cert),
                field,
                due_at(cert),
                next,
            )]
        },
        None,
    )
    .await?;
    Ok(TickReport::of(&enqueued))
}
