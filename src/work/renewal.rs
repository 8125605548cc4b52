//! The scheduler leader's renewal scan: enqueues the renewal of every
//! certificate whose window ([`crate::domain::renewal`]) has opened.
//!
//! Each issued certificate carries `renewal_due_at` (shown by the API) and,
//! while no renewal of it is queued, the same time in `renewal_next_at` (the
//! scan's indexed key). A tick asks only for certificates whose
//! `renewal_next_at` has passed, so its cost follows the certificates due,
//! not all certificates. For each it enqueues a job whose key is derived from
//! the certificate, the serial being replaced and its failure count, then
//! clears `renewal_next_at`, both as the leader ([`Leases::enqueue_all_as_leader`]):
//! a deposed leader writes nothing, and a leader that dies between the two
//! writes leaves a certificate its successor finds again, whose enqueue then
//! meets the same key and creates nothing.

use std::time::Duration;

use mongodb::bson::doc;

use crate::domain::certificate::Certificate;
use crate::domain::jobs;
use crate::queue::jobs::NewJob;
use crate::queue::lease::{LeaseError, Leases, Term};
use crate::store::certificates;
use crate::work::periodic::{enqueue_in_groups, TickReport};

/// Certificates a tick enqueues at most (the rest wait for the next tick).
pub const DEFAULT_SCAN_BATCH: i64 = 1000;

/// One scan: enqueues a renewal for up to `batch` certificates whose time has
/// come, as the leader of `term`, in groups ([`enqueue_in_groups`]): each group's
/// jobs in one fenced transaction, then their marks in another.
/// `pause_after_enqueue` is fault injection for tests: sleep between a
/// group's enqueue and its marks, so a test can kill us there.
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
    let due: Vec<Certificate> = due.iter().map(certificates::parse).collect();
    let serial = |c: &Certificate| {
        c.current
            .as_ref()
            .map(|c| c.serial.clone())
            .unwrap_or_default()
    };
    let enqueued = enqueue_in_groups(
        leases,
        term,
        &due,
        |c| NewJob::from_spec(jobs::renewal(&c.id, &serial(c), c.consecutive_failures)),
        |c, job| [certificates::renewal_enqueued(&c.id, &serial(c), job)],
        pause_after_enqueue,
    )
    .await?;
    for (c, e) in due.iter().zip(&enqueued) {
        if e.created {
            tracing::info!(certificate = %c.id, serial = %serial(c), job = %e.id, "renewal enqueued");
        }
    }
    Ok(TickReport::of(&enqueued))
}
