//! Per-token rate limits shared by every api replica
//! (`CAP_API_RATE_LIMIT` requests per minute per token).
//!
//! A token minted by anyone but a global admin spends the budget of the
//! token that minted it ([`crate::http::api::auth::Caller::budget`]): the
//! budget is counted per root of the `created_by` chain, so a project admin
//! who mints a hundred tokens still has one budget. Counting the token
//! itself as well would change nothing: its count is never above its
//! root's. (Per root rather than per project: a token may hold roles on
//! several projects or none, and one project's tokens would otherwise
//! hold back tokens a global admin handed out separately.)
//!
//! Counts live in the database ([`crate::store::rate_limits`]), one per
//! token and minute of the database's clock, and the limit applies to a
//! sliding minute: the previous minute's count weighted by how much of it
//! the sliding minute still covers, plus this minute's.
//!
//! A request does not wait for the database: each replica admits against
//! the totals it last read plus what it admitted since, and every
//! [`FLUSH_EVERY`] adds its own requests to the shared counts and reads
//! them back. So the limit holds across any number of replicas, give or
//! take what the other replicas admitted in the last flush interval, and
//! an api request costs no extra round trip (a counter written per request
//! would halve the API's throughput; see the API benchmark). Health,
//! readiness, metrics, the OpenAPI document and the HTTP-01 responder take
//! no token and are never limited.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mongodb::bson::DateTime;

use crate::observe::shutdown::Shutdown;
use crate::store::{rate_limits, short, Store};

/// How often a replica adds its requests to the shared counts.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
const MINUTE_MS: i64 = 60_000;
/// A token not seen for this long is forgotten here.
const IDLE: Duration = Duration::from_secs(180);

pub struct RateLimiter {
    /// Requests per minute per token; 0: no limit.
    limit: u64,
    store: Store,
    tokens: Mutex<HashMap<String, Counts>>,
}

/// One token's counts as this replica knows them.
#[derive(Debug, Default)]
struct Counts {
    /// The minute `current` counts.
    minute: i64,
    /// The previous minute's count over every replica, as last read.
    previous: u64,
    /// This minute's count over every replica, as last read.
    current: u64,
    /// Admitted here in `minute` since the last flush.
    pending: u64,
    /// Admitted here in earlier minutes and not yet flushed.
    carried: Vec<(i64, u64)>,
    last_seen: Option<Instant>,
}

impl Counts {
    /// Moves to `minute`, carrying what was admitted before it.
    fn advance(&mut self, minute: i64) {
        if minute <= self.minute {
            return;
        }
        if self.pending > 0 {
            self.carried.push((self.minute, self.pending));
        }
        self.previous = if minute == self.minute + 1 {
            self.current + self.pending
        } else {
            0
        };
        self.current = 0;
        self.pending = 0;
        self.minute = minute;
    }

    /// The sliding minute's count at `now_ms`.
    fn estimate(&self, now_ms: i64) -> f64 {
        let into = (now_ms - self.minute * MINUTE_MS) as f64 / MINUTE_MS as f64;
        self.previous as f64 * (1.0 - into) + (self.current + self.pending) as f64
    }

    /// How long until one more request fits under `limit`, if no other
    /// request comes.
    fn wait(&self, now_ms: i64, limit: u64) -> Duration {
        let room = limit.saturating_sub(1) as f64;
        let now = (self.current + self.pending) as f64;
        let into_ms = now_ms - self.minute * MINUTE_MS;
        let fits_at_ms = if now <= room && self.previous > 0 {
            // This minute: the previous one's weight falls off.
            ((1.0 - (room - now) / self.previous as f64) * MINUTE_MS as f64).round() as i64
        } else {
            // The next minute: this one's weight falls off.
            let falls = if now > 0.0 { 1.0 - room / now } else { 0.0 };
            MINUTE_MS + (falls.max(0.0) * MINUTE_MS as f64).round() as i64
        };
        Duration::from_millis((fits_at_ms - into_ms).max(1) as u64)
    }
}

/// Past the limit: retry after this long.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub retry_after: Duration,
}

impl RateLimiter {
    pub fn new(store: Store, limit: u64) -> RateLimiter {
        RateLimiter {
            limit,
            store,
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request against `token`'s budget (the id of the token
    /// whose budget it spends), or refuses it past the limit.
    pub async fn admit(&self, token: &str) -> Result<(), Limited> {
        if self.limit == 0 {
            return Ok(());
        }
        // The database's clock, extrapolated locally (no round trip); a
        // request that cannot learn the time is not refused for it.
        let Ok(now) = self.store.server_now().await else {
            return Ok(());
        };
        let now_ms = now.timestamp_millis();
        let minute = now_ms.div_euclid(MINUTE_MS);
        let known = self.tokens.lock().unwrap().contains_key(token);
        if !known {
            // New here: start from the shared counts, not from nothing (one
            // read per token and replica while the token stays in use).
            let shared = self.read_shared(token, minute).await;
            self.tokens
                .lock()
                .unwrap()
                .entry(token.to_string())
                .or_insert(shared);
        }
        let mut tokens = self.tokens.lock().unwrap();
        let counts = tokens.entry(token.to_string()).or_default();
        counts.advance(minute);
        counts.last_seen = Some(Instant::now());
        if counts.estimate(now_ms) + 1.0 > self.limit as f64 {
            return Err(Limited {
                retry_after: counts.wait(now_ms, self.limit),
            });
        }
        counts.pending += 1;
        Ok(())
    }

    /// Adds this replica's requests to the shared counts every
    /// [`FLUSH_EVERY`] and reads the totals back, until shutdown.
    pub async fn keep_flushed(self: Arc<Self>, shutdown: Shutdown) {
        if self.limit == 0 {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = shutdown.requested() => break,
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %short(&e), "request counts not shared this time; retrying");
            }
        }
        // Our last requests still count on the other replicas.
        let _ = self.flush().await;
    }

    /// `token`'s shared counts for `minute` and the one before.
    async fn read_shared(&self, token: &str, minute: i64) -> Counts {
        let ids = [
            rate_limits::window_id(token, minute),
            rate_limits::window_id(token, minute - 1),
        ];
        match rate_limits::counts(&self.store, &ids).await {
            Ok(totals) => Counts {
                minute,
                current: totals.get(&ids[0]).copied().unwrap_or(0),
                previous: totals.get(&ids[1]).copied().unwrap_or(0),
                ..Counts::default()
            },
            Err(e) => {
                tracing::warn!(error = %short(&e), "shared request counts unread; counting from here");
                Counts {
                    minute,
                    ..Counts::default()
                }
            }
        }
    }

    async fn flush(&self) -> Result<(), mongodb::error::Error> {
        // What to write, taken out under the lock; put back if writing fails.
        let mut writes: Vec<(String, i64, u64)> = Vec::new();
        let mut reads: Vec<(String, i64)> = Vec::new();
        {
            let mut tokens = self.tokens.lock().unwrap();
            tokens.retain(|_, c| c.last_seen.is_some_and(|t| t.elapsed() < IDLE));
            for (token, c) in tokens.iter_mut() {
                for (minute, n) in c.carried.drain(..) {
                    writes.push((token.clone(), minute, n));
                }
                if c.pending > 0 {
                    writes.push((token.clone(), c.minute, c.pending));
                    c.pending = 0;
                }
                reads.push((token.clone(), c.minute));
            }
        }
        let mut written = 0;
        let mut failed = None;
        for (token, minute, n) in &writes {
            let id = rate_limits::window_id(token, *minute);
            // Kept until the minute after it has ended: its weight is 0 then.
            let expires = DateTime::from_millis((minute + 2) * MINUTE_MS + MINUTE_MS);
            if let Err(e) = rate_limits::add(&self.store, &id, *n, expires).await {
                failed = Some(e);
                break;
            }
            written += 1;
        }
        if let Some(e) = failed {
            let mut tokens = self.tokens.lock().unwrap();
            for (token, minute, n) in writes.into_iter().skip(written) {
                let c = tokens.entry(token).or_default();
                if minute == c.minute {
                    c.pending += n;
                } else {
                    c.carried.push((minute, n));
                }
            }
            return Err(e);
        }
        let ids: Vec<String> = reads
            .iter()
            .flat_map(|(t, m)| {
                [
                    rate_limits::window_id(t, *m),
                    rate_limits::window_id(t, m - 1),
                ]
            })
            .collect();
        let totals = rate_limits::counts(&self.store, &ids).await?;
        let mut tokens = self.tokens.lock().unwrap();
        for (token, minute) in reads {
            let Some(c) = tokens.get_mut(&token) else {
                continue;
            };
            if c.minute != minute {
                continue; // moved on meanwhile; the next flush reads it
            }
            let total = |m| {
                totals
                    .get(&rate_limits::window_id(&token, m))
                    .copied()
                    .unwrap_or(0)
            };
            // Never below what we know we admitted ourselves.
            c.current = c.current.max(total(minute));
            c.previous = c.previous.max(total(minute - 1));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64, previous: u64, current: u64) -> Counts {
        Counts {
            minute,
            previous,
            current,
            ..Counts::default()
        }
    }

    #[test]
    fn the_previous_minute_weighs_what_the_sliding_minute_still_covers() {
        let c = at(10, 60, 30);
        assert_eq!(c.estimate(10 * MINUTE_MS), 90.0);
        assert_eq!(c.estimate(10 * MINUTE_MS + 30_000), 60.0);
        assert_eq!(c.estimate(10 * MINUTE_MS + 59_999).round(), 30.0);
    }

    #[test]
    fn advancing_a_minute_makes_this_one_the_previous_and_carries_the_unflushed() {
        let mut c = at(10, 5, 20);
        c.pending = 3;
        c.advance(11);
        assert_eq!((c.minute, c.previous, c.current, c.pending), (11, 23, 0, 0));
        assert_eq!(c.carried, vec![(10, 3)]);
        c.advance(13);
        assert_eq!(
            c.previous, 0,
            "a gap of a minute or more leaves nothing to weigh"
        );
    }

    #[test]
    fn the_wait_is_until_one_more_request_fits() {
        // 60 last minute, 0 now, limit 30: fits once the weight of the
        // previous minute falls to 29/60, a bit past the middle.
        let c = at(10, 60, 0);
        let wait = c.wait(10 * MINUTE_MS, 30);
        assert_eq!(wait, Duration::from_millis(31_000));
        let later = at(10, 60, 0);
        assert!(later.estimate(10 * MINUTE_MS + 31_000) + 1.0 <= 30.0);
        // This minute is full: wait into the next.
        let full = at(10, 0, 30);
        let wait = full.wait(10 * MINUTE_MS + 45_000, 30);
        assert_eq!(wait, Duration::from_millis(15_000 + 2_000));
    }
}
