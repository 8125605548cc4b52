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

use std::sync::Arc;

use futures::future::BoxFuture;
use mongodb::bson::doc;
use mongodb::error::Error as MongoError;

use crate::audit::{Audit, Event};
use crate::crypto::kek::KekProvider;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::ClaimedJob;
use crate::store::keys::{self, data_keys_by_version, remaining, WrappedKey};
use crate::store::Store;

/// Data keys one round of a re-wrap job reads and re-wraps.
pub const REWRAP_BATCH: i64 = 200;

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
                let batch = keys::not_on_version(&store, target, REWRAP_BATCH)
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
    key: &WrappedKey,
    target: u32,
) -> Result<(), HandlerError> {
    let id = &key.id;
    let (Some(version), Some(wrapped)) = (key.kek_version, &key.wrapped_key) else {
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
        .fenced(keys::rewrapped(key, version, wrapped, target, &new_wrapped))
        .await?;
    Ok(())
}
