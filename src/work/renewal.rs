//! The scheduler leader's renewal scan: enqueues the renewal of every
//! certificate whose window ([`crate::domain::renewal`]) has opened.
//!
//! Each issued certificate carries `renewal_due_at` (shown by the API) and,
//! while no renewal of it is queued, the same time in `renewal_next_at` (the
//! scan's indexed key). A tick asks only for certificates whose
//! `renewal_next_at` has passed, so its cost follows the certificates due,
//! not all certificates. For each it enqueues a job whose key is derived from
//! the certificate, the serial being replaced and its failure count, then
//! clears `renewal_next_at`, both as the leader ([`Leases::enqueue_as_leader`]):
//! a deposed leader writes nothing, and a leader that dies between the two
//! writes leaves a certificate its successor finds again, whose enqueue then
//! meets the same key and creates nothing.

use std::time::Duration;

use futures::StreamExt;
use mongodb::bson::{doc, Document};

use crate::domain::jobs;
use crate::queue::jobs::NewJob;
use crate::queue::lease::{LeaseError, Leases, Term};
use crate::store::certificates;
use crate::work::periodic::{TickReport, ENQUEUE_CONCURRENCY};

/// Certificates a tick enqueues at most (the rest wait for the next tick).
pub const DEFAULT_SCAN_BATCH: i64 = 1000;

/// One scan: enqueues a renewal for up to `batch` certificates whose time has
/// come, as the leader of `term`. `pause_after_enqueue` is fault injection for
/// tests: sleep between the enqueue and the mark, so a test can kill us there.
pub async fn enqueue_due(
    leases: &Leases,
    term: &Term,
    batch: i64,
    pause_after_enqueue: Option<Duration>,
) -> Result<TickReport, LeaseError> {
    let (_, due) = certificates::due(
        leases.store(),
        "renewal_next_at",
        batch,
        doc! { "_id": 1, "current.serial": 1, "consecutive_failures": 1 },
    )
    .await?;
    let outcomes: Vec<Result<bool, LeaseError>> = futures::stream::iter(due)
        .map(|cert| enqueue_one(leases, term, cert, pause_after_enqueue))
        .buffer_unordered(ENQUEUE_CONCURRENCY)
        .collect()
        .await;
    TickReport::of(outcomes)
}

async fn enqueue_one(
    leases: &Leases,
    term: &Term,
    cert: Document,
    pause_after_enqueue: Option<Duration>,
) -> Result<bool, LeaseError> {
    let cert = certificates::parse(&cert);
    let id = cert.id;
    let serial = cert.current.map(|c| c.serial).unwrap_or_default();
    let job = NewJob::from_spec(jobs::renewal(&id, &serial, cert.consecutive_failures));
    let enqueued = leases.enqueue_as_leader(term, &job).await?;
    if let Some(pause) = pause_after_enqueue {
        tracing::warn!(certificate = %id, pause_secs = pause.as_secs(), "fault injection: pausing between a renewal's enqueue and its mark");
        tokio::time::sleep(pause).await;
    }
    leases
        .write_as_leader(
            term,
            certificates::renewal_enqueued(&id, &serial, enqueued.id),
        )
        .await?;
    if enqueued.created {
        tracing::info!(certificate = %id, serial = %serial, job = %enqueued.id, "renewal enqueued");
    }
    Ok(enqueued.created)
}
