//! Raising an event: one outbox record per channel that takes it, and one
//! `notify` job per record, runnable when the channel's quiet hours let it
//! go. The record's id is the channel and the event's deduplication key,
//! and the job's key is the record's, so the same event raised twice (a
//! retried job, two leaders' scans) is recorded and sent once.
//!
//! A failure to raise is logged, not returned: the event itself has
//! happened and is in the audit log, and the caller's work must not be
//! undone or repeated for a message.

use std::time::Duration;

use mongodb::bson::DateTime;
use mongodb::error::Error as MongoError;

use super::message::Notification;
use crate::domain::jobs;
use crate::domain::notifications::Event;
use crate::queue::jobs::{JobQueue, NewJob};
use crate::store::channels;
use crate::store::notifications::{self, NewNotification};

/// How many times a notification is tried before it is kept as dead
/// (`CAP_NOTIFY_ATTEMPTS`).
pub const DEFAULT_ATTEMPTS: u32 = 8;

#[derive(Clone)]
pub struct Outbox {
    queue: JobQueue,
    attempts: u32,
}

impl Outbox {
    pub fn new(queue: JobQueue, attempts: u32) -> Outbox {
        Outbox { queue, attempts }
    }

    /// Records `event` of `project_id` (`None`: installation-wide) for every
    /// channel of that scope that takes it, and enqueues their sending.
    pub async fn raise(&self, event: &Event, project_id: Option<&str>) {
        match self.try_raise(event, project_id).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(event = event.kind(), dedup_key = %event.dedup_key(), channels = n, "notification raised")
            }
            Err(e) => {
                tracing::warn!(event = event.kind(), dedup_key = %event.dedup_key(), error = %crate::store::short(&e), "a notification could not be raised")
            }
        }
    }

    /// As [`Outbox::raise`], answering how many channels took it. Every
    /// channel is tried; the first error is answered once all were.
    pub async fn try_raise(
        &self,
        event: &Event,
        project_id: Option<&str>,
    ) -> Result<usize, MongoError> {
        let store = self.queue.store();
        // The project's channels, and the installation's, whose routes may
        // take a project's events too.
        let mut found = channels::all_in_scope(store, None).await?;
        if let Some(p) = project_id {
            found.extend(channels::all_in_scope(store, Some(p)).await?);
        }
        let takers: Vec<_> = found
            .iter()
            .filter_map(|d| channels::parse(d).ok())
            .filter(|c| c.takes(event, project_id))
            .collect();
        if takers.is_empty() {
            return Ok(0);
        }
        let message = Notification::new(event, project_id);
        let now = store.server_now().await?;
        let mut first_error = None;
        for channel in &takers {
            let release_ms = channel.release_at(message.severity, now.timestamp_millis());
            let record = NewNotification {
                channel_id: &channel.id,
                scope: channel.project_id.as_deref(),
                project_id,
                kind: &message.kind,
                severity: message.severity.as_str(),
                dedup_key: &message.dedup_key,
                summary: &message.summary,
                release_at: DateTime::from_millis(release_ms),
            };
            let id = notifications::record_id(&channel.id, &message.dedup_key);
            let mut job = NewJob::from_spec(jobs::notification(&id));
            job.max_attempts = self.attempts;
            job.delay = Duration::from_millis((release_ms - now.timestamp_millis()).max(0) as u64);
            // The record and its job together: never one without the other.
            if let Err(e) = self
                .queue
                .enqueue_with(&job, notifications::new_record(&record, now))
                .await
            {
                tracing::warn!(channel = %channel.id, dedup_key = %message.dedup_key, error = %crate::store::short(&e), "a notification could not be recorded for this channel");
                first_error.get_or_insert(e);
            }
        }
        match first_error {
            None => Ok(takers.len()),
            Some(e) => Err(e),
        }
    }
}
