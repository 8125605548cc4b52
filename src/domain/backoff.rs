//! Exponential back-off with jitter, used by every retry loop: riding through
//! elections, re-running failed jobs, restarting failed actors.

use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// The delay before retry number `attempt` (1 = first retry): `base·2^(attempt-1)`,
    /// capped, then "equal jitter": a random point in the upper half, so that
    /// many retries started together spread out but never retry at once.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1u32 << exp).min(self.cap);
        let half = full / 2;
        let jitter = rand::rng().random_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for attempt in 1..40 {
            let full = Duration::from_secs(1u64 << (attempt - 1).min(10)).min(b.cap);
            let d = b.delay(attempt);
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d:?} not in [{:?}, {full:?}]",
                full / 2
            );
        }
    }
}
