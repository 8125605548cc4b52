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

use mongodb::bson::{doc, DateTime};

use crate::domain::jobs::{self, CertificatePayload, JobKind, JobSpec};
use crate::queue::jobs::NewJob;
use crate::queue::lease::{LeaseError, Leases, Term};
use crate::store::certificates;

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
    let mut outcomes = Vec::with_capacity(due.len());
    for group in due.chunks(ENQUEUE_GROUP) {
        let due_at =
            |cert: &mongodb::bson::Document| cert.get_datetime(field).copied().unwrap_or(now);
        let id =
            |cert: &mongodb::bson::Document| cert.get_str("_id").unwrap_or_default().to_string();
        let jobs: Vec<NewJob> = group
            .iter()
            .map(|cert| {
                NewJob::from_spec((periodic.job)(&id(cert), due_at(cert).timestamp_millis()))
            })
            .collect();
        let enqueued = leases.enqueue_all_as_leader(term, &jobs).await?;
        let moves = group
            .iter()
            .map(|cert| certificates::move_next(&id(cert), field, due_at(cert), next))
            .collect();
        leases.write_all_as_leader(term, moves).await?;
        outcomes.extend(enqueued.iter().map(|e| Ok(e.created)));
    }
    TickReport::of(outcomes)
}
