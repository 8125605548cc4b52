//! KEK rotation: after `certautopilot kek rotate` makes a new KEK version
//! current, every data key wrapped by an older version is re-wrapped by the
//! current one, in batches, by `kek-rewrap` jobs that the scheduler leader's
//! [`crate::actors::kek_rotation::KekRotationActor`] enqueues.
//!
//! A re-wrap changes only the wrapped data key, never the secret's
//! ciphertext, and is a compare-and-set on the old wrapped key under the
//! job's fence: a job that lost its claim writes nothing, a secret replaced
//! meanwhile is left alone, and a re-run after a crash simply continues with
//! what is still on an old version.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;

use crate::audit::{Audit, Event};
use crate::handlers::{HandlerError, JobHandler};
use crate::jobs::ClaimedJob;
use crate::kek::KekProvider;
use crate::secrets::{binary, KEYS_COLLECTION};
use crate::store::Store;

pub const KEK_REWRAP: &str = "kek-rewrap";
/// Data keys one round of a re-wrap job reads and re-wraps.
pub const REWRAP_BATCH: i64 = 200;

/// Data keys by the KEK version wrapping them.
pub async fn data_keys_by_version(store: &Store) -> Result<BTreeMap<u32, i64>, MongoError> {
    let rows: Vec<Document> = store
        .collection(KEYS_COLLECTION)
        .aggregate(vec![
            doc! { "$group": { "_id": "$kek_version", "n": { "$sum": 1 } } },
        ])
        .await?
        .try_collect()
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let version = r
                .get_i64("_id")
                .ok()
                .or(r.get_i32("_id").ok().map(i64::from))?;
            let n = r.get_i64("n").ok().or(r.get_i32("n").ok().map(i64::from))?;
            Some((version as u32, n))
        })
        .collect())
}

/// Data keys not yet on `current`.
pub fn remaining(counts: &BTreeMap<u32, i64>, current: u32) -> i64 {
    counts
        .iter()
        .filter(|(v, _)| **v != current)
        .map(|(_, n)| n)
        .sum()
}

/// The `kek-rewrap` handler: re-wraps batches until no data key is on an
/// old version, then records the rotation as complete in the audit log.
pub struct KekRewrap {
    pub store: Store,
    pub kek: Arc<dyn KekProvider>,
}

impl JobHandler for KekRewrap {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let (store, kek) = (self.store.clone(), self.kek.clone());
        Box::pin(async move {
            let db = |e: MongoError| {
                HandlerError::Retryable(format!("database error: {}", crate::store::short(&e)))
            };
            kek.refresh()
                .map_err(|e| HandlerError::Retryable(e.to_string()))?;
            let target = kek.current_version();
            let before = remaining(&data_keys_by_version(&store).await.map_err(db)?, target);
            // Each round re-wraps a batch; more rounds than that means writes
            // are not landing, which must not spin forever.
            let mut rounds_left = before / REWRAP_BATCH + 3;
            let mut rewrapped = 0i64;
            loop {
                if rounds_left == 0 {
                    return Err(HandlerError::Retryable(format!(
                        "re-wrap to KEK version {target} is not making progress"
                    )));
                }
                rounds_left -= 1;
                let batch: Vec<Document> = store
                    .collection(KEYS_COLLECTION)
                    .find(doc! { "kek_version": { "$ne": target as i64 } })
                    .projection(doc! { "kek_version": 1, "wrapped_key": 1 })
                    .limit(REWRAP_BATCH)
                    .await
                    .map_err(db)?
                    .try_collect()
                    .await
                    .map_err(db)?;
                if batch.is_empty() {
                    break;
                }
                for key in batch {
                    rewrap_one(&job, kek.as_ref(), &key, target).await?;
                    rewrapped += 1;
                }
                tracing::info!(job = %job.lease.job_id, target, rewrapped, "re-wrapped a batch of data keys");
            }
            let event = Event::new(
                &job.lease.holder,
                "kek.rewrap_completed",
                format!("kek/{target}"),
            )
            .with(doc! { "version": target as i64, "rewrapped": rewrapped });
            Audit::new(store).append(&event).await.map_err(db)?;
            Ok(())
        })
    }
}

async fn rewrap_one(
    job: &ClaimedJob,
    kek: &dyn KekProvider,
    key: &Document,
    target: u32,
) -> Result<(), HandlerError> {
    let id = key.get_str("_id").unwrap_or_default();
    let (Ok(version), Ok(wrapped)) = (
        key.get_i64("kek_version"),
        key.get_binary_generic("wrapped_key"),
    ) else {
        return Err(HandlerError::Permanent(format!(
            "secret {id} is damaged: no wrapped key"
        )));
    };
    // A KEK error names the version it needs; the job retries with back-off
    // until the operator supplies it.
    let data_key = kek
        .unwrap(version as u32, wrapped)
        .map_err(|e| HandlerError::Retryable(format!("secret {id}: {e}")))?;
    let (new_version, new_wrapped) = kek
        .wrap(&data_key)
        .map_err(|e| HandlerError::Retryable(e.to_string()))?;
    if new_version != target {
        // Rotated again meanwhile: the next job continues towards the new one.
        return Err(HandlerError::Retryable(format!(
            "KEK version {new_version} became current during a re-wrap to {target}"
        )));
    }
    job.lease
        .fenced_update(
            KEYS_COLLECTION,
            doc! { "_id": id, "kek_version": version, "wrapped_key": binary(wrapped) },
            doc! {
                "$set": { "kek_version": target as i64, "wrapped_key": binary(&new_wrapped) },
                "$currentDate": { "rewrapped_at": true },
            },
            false,
        )
        .await?;
    Ok(())
}
