//! Renewal windows: when a certificate is due, and the scheduler leader's
//! scan that enqueues its renewal.
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
use mongodb::bson::{doc, Bson, DateTime, Document};
use sha2::{Digest, Sha256};

use crate::acme::order::{CERTIFICATES, ISSUE_CERTIFICATE};
use crate::jobs::NewJob;
use crate::lease::{LeaseError, Leases, Term};
pub use crate::periodic::TickReport;
use crate::periodic::{due_certificates, ENQUEUE_CONCURRENCY};

/// The share of a certificate's lifetime after which it is renewed, unless
/// it says otherwise (`renew_before_secs`) or its CA suggests a window (ARI).
const DEFAULT_RENEW_AT: f64 = 2.0 / 3.0;
/// Per-certificate jitter: renewals are spread over up to this share of the
/// lifetime *before* the nominal time, so certificates issued together do not
/// all renew in the same tick.
const JITTER_SHARE: f64 = 1.0 / 30.0;
/// Certificates a tick enqueues at most (the rest wait for the next tick).
pub const DEFAULT_SCAN_BATCH: i64 = 1000;

/// A number in [0, 1) fixed for this certificate and serial, so every
/// process computes the same renewal time.
fn jitter_fraction(certificate_id: &str, serial: &str) -> f64 {
    let digest = Sha256::digest(format!("{certificate_id}/{serial}").as_bytes());
    let n = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
    (n >> 11) as f64 / (1u64 << 53) as f64
}

/// When a certificate valid from `not_before_ms` to `not_after_ms` is due
/// for renewal, in milliseconds since the epoch.
///
/// With `renew_before_secs` shorter than the lifetime: that long before
/// expiry. Otherwise two thirds into the lifetime. Both less a jitter of up
/// to 1/30 of the lifetime, fixed per certificate and serial.
pub fn renewal_due_ms(
    certificate_id: &str,
    serial: &str,
    not_before_ms: i64,
    not_after_ms: i64,
    renew_before_secs: Option<i64>,
) -> i64 {
    let lifetime = (not_after_ms - not_before_ms).max(0);
    let nominal = match renew_before_secs.map(|s| s.saturating_mul(1000)) {
        Some(before) if before > 0 && before < lifetime => not_after_ms - before,
        _ => not_before_ms + (lifetime as f64 * DEFAULT_RENEW_AT) as i64,
    };
    let jitter = (lifetime as f64 * JITTER_SHARE * jitter_fraction(certificate_id, serial)) as i64;
    (nominal - jitter).max(not_before_ms)
}

/// When to renew inside a CA's suggested window (RFC 9773 §4.2): a point
/// fixed per certificate and serial, spread uniformly over the window. A
/// point already past means at once.
pub fn ari_due_ms(certificate_id: &str, serial: &str, start_ms: i64, end_ms: i64) -> i64 {
    let span = (end_ms - start_ms).max(0);
    start_ms + (span as f64 * jitter_fraction(certificate_id, serial)) as i64
}

/// The job key of a renewal: one per certificate, serial replaced and
/// failure count, so a renewal that died is enqueued afresh once, and never
/// twice for the same state.
pub fn renewal_job_key(certificate_id: &str, serial: &str, failures: i64) -> String {
    format!("renew:{certificate_id}:{serial}:{failures}")
}

/// One scan: enqueues a renewal for up to `batch` certificates whose time has
/// come, as the leader of `term`. `pause_after_enqueue` is fault injection for
/// tests: sleep between the enqueue and the mark, so a test can kill us there.
pub async fn enqueue_due(
    leases: &Leases,
    term: &Term,
    batch: i64,
    pause_after_enqueue: Option<Duration>,
) -> Result<TickReport, LeaseError> {
    let (_, due) = due_certificates(
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
    let id = cert.get_str("_id").unwrap_or_default().to_string();
    let serial = cert
        .get_document("current")
        .and_then(|c| c.get_str("serial"))
        .unwrap_or_default()
        .to_string();
    let failures = match cert.get("consecutive_failures") {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => *n as i64,
        _ => 0,
    };
    let job = NewJob::new(
        ISSUE_CERTIFICATE,
        renewal_job_key(&id, &serial, failures),
        doc! { "certificate_id": &id, "renews": &serial },
    );
    let enqueued = leases.enqueue_as_leader(term, &job).await?;
    if let Some(pause) = pause_after_enqueue {
        tracing::warn!(certificate = %id, pause_secs = pause.as_secs(), "fault injection: pausing between a renewal's enqueue and its mark");
        tokio::time::sleep(pause).await;
    }
    // Only if it still holds the serial we renew: a renewal that finished in
    // between has set the next window already.
    leases
        .update_as_leader(
            term,
            CERTIFICATES,
            doc! { "_id": &id, "current.serial": &serial },
            doc! {
                "$unset": { "renewal_next_at": "" },
                "$set": { "renewal_job_id": enqueued.id },
            },
            false,
        )
        .await?;
    if enqueued.created {
        tracing::info!(certificate = %id, serial = %serial, job = %enqueued.id, "renewal enqueued");
    }
    Ok(enqueued.created)
}

/// The fields that schedule a certificate's next renewal at `due`.
pub fn schedule_fields(due: DateTime) -> Document {
    doc! { "renewal_due_at": due, "renewal_next_at": due }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn by_default_two_thirds_into_the_lifetime_less_a_small_jitter() {
        let (nb, na) = (0, 90 * DAY);
        let due = renewal_due_ms("crt_a", "01", nb, na, None);
        assert!(due <= 60 * DAY, "{due}");
        assert!(
            due >= 60 * DAY - 3 * DAY,
            "jitter is at most 1/30 of 90 days: {due}"
        );
    }

    #[test]
    fn renew_before_counts_back_from_expiry() {
        let due = renewal_due_ms("crt_a", "01", 0, 90 * DAY, Some(10 * 86_400));
        assert!((77 * DAY..=80 * DAY).contains(&due), "{due}");
    }

    #[test]
    fn renew_before_longer_than_the_lifetime_falls_back_to_the_default() {
        // Renewing "a year before expiry" a 90-day certificate would renew it
        // in a loop; the default applies instead.
        let due = renewal_due_ms("crt_a", "01", 0, 90 * DAY, Some(365 * 86_400));
        assert!((57 * DAY..=60 * DAY).contains(&due), "{due}");
    }

    #[test]
    fn jitter_is_fixed_per_certificate_and_spread_across_them() {
        let a = renewal_due_ms("crt_a", "01", 0, 90 * DAY, None);
        assert_eq!(a, renewal_due_ms("crt_a", "01", 0, 90 * DAY, None));
        let distinct: std::collections::HashSet<i64> = (0..100)
            .map(|i| renewal_due_ms(&format!("crt_{i}"), "01", 0, 90 * DAY, None))
            .collect();
        assert!(distinct.len() > 90, "{}", distinct.len());
    }

    #[test]
    fn ari_picks_a_point_inside_the_window() {
        for i in 0..100 {
            let due = ari_due_ms(&format!("crt_{i}"), "01", 50 * DAY, 52 * DAY);
            assert!((50 * DAY..=52 * DAY).contains(&due), "{due}");
        }
        // A window in the past is due at once (its start is already past).
        assert!(ari_due_ms("crt_a", "01", -2 * DAY, -DAY) < 0);
    }

    #[test]
    fn job_keys_differ_by_serial_and_failures_only() {
        assert_eq!(renewal_job_key("c", "s", 0), renewal_job_key("c", "s", 0));
        assert_ne!(renewal_job_key("c", "s", 0), renewal_job_key("c", "t", 0));
        assert_ne!(renewal_job_key("c", "s", 0), renewal_job_key("c", "s", 1));
    }
}
