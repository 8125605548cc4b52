//! Renewal windows: when a certificate is due for renewal, by default, by
//! its own `renew_before_secs`, or inside its CA's suggested window (ARI,
//! RFC 9773), each with a jitter fixed per certificate and serial so that
//! every process computes the same time.

use std::time::Duration;

use sha2::{Digest, Sha256};

/// A CA's suggested renewal window, and when to ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AriWindow {
    pub start_ms: i64,
    pub end_ms: i64,
    pub explanation_url: Option<String>,
    pub refresh_after: Duration,
}

/// How soon we ask again when the CA's `Retry-After` is shorter, and how
/// long we wait at most when it is longer (RFC 9773 §4.3.2 asks clients to
/// honour Retry-After, within limits of their own).
pub const MIN_REFRESH: Duration = Duration::from_secs(60);
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// How far the leader moves `ari_next_fetch_at` when it enqueues a refresh;
/// the refresh then sets it from the CA's `Retry-After`. So a refresh that
/// keeps failing is tried four times a day.
pub const PROVISIONAL_REFRESH: Duration = Duration::from_secs(6 * 3600);

/// The share of a certificate's lifetime after which it is renewed, unless
/// it says otherwise (`renew_before_secs`) or its CA suggests a window (ARI).
const DEFAULT_RENEW_AT: f64 = 2.0 / 3.0;
/// Per-certificate jitter: renewals are spread over up to this share of the
/// lifetime *before* the nominal time, so certificates issued together do not
/// all renew in the same tick.
const JITTER_SHARE: f64 = 1.0 / 30.0;

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
}
