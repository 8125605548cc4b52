//! Certificate counts for the metrics (by status, by drift state), counted
//! by one process at a time and shared through one document, so that every
//! `api` replica's `/metrics` reads a document instead of grouping the whole
//! `certificates` collection itself.
//!
//! The document (`stats`, `_id: "certificate_counts"`) holds the counts,
//! when they were counted and how long that took. A reader that finds them
//! older than [`recount_after`] claims the next count (a conditional update
//! on `counting_until`, so one replica counts while the others keep serving
//! the last counts) and counts in the background. The interval grows with
//! the count's own cost — ten times it, at least 5 s — so a million
//! certificates cost one process a few percent of its time, not every
//! replica a full scan every scrape.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;

use super::certificates::CERTIFICATES;
use super::{is_duplicate_key, Store};

pub const STATS_COLLECTION: &str = "stats";
const COUNTS_ID: &str = "certificate_counts";
/// The shortest time between two counts.
const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// A claimed count that has not finished by then may be claimed again (its
/// counter died).
const CLAIM_FOR: Duration = Duration::from_secs(300);

/// The last counts: `(status, n)` and `(drift state, n)` pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub by_status: Vec<(String, i64)>,
    pub by_drift: Vec<(String, i64)>,
}

/// When counts that took `took` are due again after being counted.
pub fn recount_after(took: Duration) -> Duration {
    (took * 10).max(MIN_INTERVAL)
}

/// The last counts (none before the first), and whether this caller has
/// claimed the next count: if so it must call [`count`].
pub async fn read_or_claim(store: &Store) -> Result<(Option<Counts>, bool), MongoError> {
    let stats = store.collection(STATS_COLLECTION);
    let now = store.server_now().await?;
    let current = stats.find_one(doc! { "_id": COUNTS_ID }).await?;
    let Some(current) = current else {
        let first = doc! { "_id": COUNTS_ID, "counting_until": after(now, CLAIM_FOR) };
        return match stats.insert_one(first).await {
            Ok(_) => Ok((None, true)),
            Err(e) if is_duplicate_key(&e) => Ok((None, false)),
            Err(e) => Err(e),
        };
    };
    let counts = current.get_document("by_status").is_ok().then(|| Counts {
        by_status: pairs(&current, "by_status"),
        by_drift: pairs(&current, "by_drift"),
    });
    let took = Duration::from_millis(current.get_i64("took_ms").unwrap_or(0).max(0) as u64);
    let due = match current.get_datetime("counted_at") {
        Ok(at) => after(*at, recount_after(took)) <= now,
        Err(_) => true,
    };
    let claimable = current
        .get_datetime("counting_until")
        .map_or(true, |until| *until <= now);
    if !(due && claimable) {
        return Ok((counts, false));
    }
    let claimed = stats
        .update_one(
            doc! { "_id": COUNTS_ID, "counting_until": current.get("counting_until").cloned().unwrap_or(Bson::Null) },
            doc! { "$set": { "counting_until": after(now, CLAIM_FOR) } },
        )
        .await?;
    Ok((counts, claimed.modified_count == 1))
}

/// Counts certificates by status and by drift state and shares the counts.
pub async fn count(store: &Store) -> Result<Counts, MongoError> {
    let started = std::time::Instant::now();
    let certificates = store.collection(CERTIFICATES);
    let group = |field: &str, filter: Document| {
        let certificates = certificates.clone();
        let field = format!("${field}");
        async move {
            let rows: Vec<Document> = certificates
                .aggregate(vec![
                    doc! { "$match": filter },
                    doc! { "$group": { "_id": field, "n": { "$sum": 1 } } },
                ])
                .await?
                .try_collect()
                .await?;
            let mut counts = Document::new();
            for row in rows {
                if let Ok(key) = row.get_str("_id") {
                    let n = row
                        .get_i32("n")
                        .map(i64::from)
                        .or(row.get_i64("n"))
                        .unwrap_or(0);
                    counts.insert(key, n);
                }
            }
            Ok::<_, MongoError>(counts)
        }
    };
    let by_status = group("status", doc! {}).await?;
    let by_drift = group("drift_state", doc! { "drift_state": { "$exists": true } }).await?;
    let took_ms = started.elapsed().as_millis() as i64;
    store
        .collection(STATS_COLLECTION)
        .update_one(
            doc! { "_id": COUNTS_ID },
            doc! {
                "$set": { "by_status": &by_status, "by_drift": &by_drift, "took_ms": took_ms },
                "$unset": { "counting_until": "" },
                "$currentDate": { "counted_at": true },
            },
        )
        .await?;
    tracing::debug!(took_ms, "certificates counted");
    let as_pairs = |d: &Document| {
        d.iter()
            .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
            .collect()
    };
    Ok(Counts {
        by_status: as_pairs(&by_status),
        by_drift: as_pairs(&by_drift),
    })
}

/// Gives up a claimed count that failed, so the next reader counts at once
/// instead of after the claim's 5 minutes.
pub async fn release(store: &Store) -> Result<(), MongoError> {
    store
        .collection(STATS_COLLECTION)
        .update_one(
            doc! { "_id": COUNTS_ID },
            doc! { "$unset": { "counting_until": "" } },
        )
        .await?;
    Ok(())
}

fn pairs(d: &Document, field: &str) -> Vec<(String, i64)> {
    d.get_document(field)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

fn after(t: DateTime, d: Duration) -> DateTime {
    DateTime::from_millis(t.timestamp_millis() + d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costly_count_is_repeated_less_often() {
        assert_eq!(recount_after(Duration::from_millis(30)), MIN_INTERVAL);
        assert_eq!(
            recount_after(Duration::from_millis(3_435)),
            Duration::from_millis(34_350)
        );
    }
}
