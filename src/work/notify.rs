//! `notify`: sends one record of the outbox to its channel, at least once
//! (the deduplication key in every message lets receivers drop a repeat),
//! retried with back-off until its attempts are spent; then, or when it
//! cannot be sent at all, it is kept as dead with the last error (as
//! [`reason_to_show`] words it: never the receiver's answer).

use std::sync::Arc;

use futures::future::BoxFuture;

use crate::crypto::binding::BindingKey;
use crate::crypto::secrets::Secrets;
use crate::domain::jobs::NotifyPayload;
use crate::domain::notifications::Severity;
use crate::net::egress::EgressPolicy;
use crate::notify::message::Notification;
use crate::notify::send::{reason_to_show, send};
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::ClaimedJob;
use crate::store::{channels, notifications};

#[derive(Clone)]
pub struct Notify {
    pub secrets: Secrets,
    /// Checks that a channel's settings are as an API replica bound them.
    pub binding: BindingKey,
    pub metrics: Arc<Metrics>,
    pub egress: EgressPolicy,
}

impl JobHandler for Notify {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let this = self.clone();
        Box::pin(async move { this.notify(job).await })
    }
}

impl Notify {
    async fn notify(&self, job: ClaimedJob) -> Result<(), HandlerError> {
        let store = self.secrets.store().clone();
        let p: NotifyPayload = job.payload_as()?;
        let Some(record) = notifications::find(&store, &p.notification_id).await? else {
            return Ok(());
        };
        if record.get_str("state") != Ok(notifications::PENDING) {
            return Ok(());
        }
        let s = |f: &str| record.get_str(f).unwrap_or_default().to_string();
        let project_id = record.get_str("project_id").ok();
        let scope = record.get_str("scope").ok();
        let channel = channels::in_scope(&store, scope, &s("channel_id"))
            .await?
            .ok_or_else(|| "the channel no longer exists".to_string())
            .and_then(|d| {
                let mac = channels::binding_mac(&d).map(str::to_string);
                channels::parse(&d).map(|c| (c, mac))
            });
        let (channel, mac) = match channel {
            Ok(found) => found,
            Err(why) => return self.dead(&job, &p.notification_id, why).await,
        };
        // Where the message (and the channel's credential) goes is what an
        // API replica bound, not what a database writer put there since.
        match self.binding.verify_channel(&channel, mac.as_deref()).await {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(HandlerError::Retryable(e.to_string())),
            Err(e) => {
                e.report(&self.metrics);
                return self.dead(&job, &p.notification_id, e.to_string()).await;
            }
        }
        let notification = Notification {
            kind: s("kind"),
            severity: Severity::parse(&s("severity")).unwrap_or_default(),
            dedup_key: s("dedup_key"),
            summary: s("summary"),
            project_id: project_id.map(str::to_string),
        };
        let now = store.server_now().await?.timestamp_millis() / 1000;
        match send(&self.secrets, &self.egress, &channel, &notification, now).await {
            Ok(()) => {
                job.lease
                    .fenced(notifications::sent(&p.notification_id))
                    .await?;
                tracing::info!(notification = %p.notification_id, channel = %channel.id, "notification sent");
                Ok(())
            }
            Err(e) if e.is_transient() && job.attempt < job.max_attempts => {
                // Viewers read `last_error`: our words, not the receiver's.
                let shown = reason_to_show(&e);
                job.lease
                    .fenced(notifications::failed(&p.notification_id, &shown, false))
                    .await?;
                tracing::warn!(notification = %p.notification_id, attempt = job.attempt, error = %e, "notification not sent; retrying");
                Err(HandlerError::Retryable(shown))
            }
            Err(e) => {
                tracing::warn!(notification = %p.notification_id, error = %e, "notification not sent");
                self.dead(&job, &p.notification_id, reason_to_show(&e))
                    .await
            }
        }
    }

    async fn dead(&self, job: &ClaimedJob, id: &str, error: String) -> Result<(), HandlerError> {
        job.lease
            .fenced(notifications::failed(id, &error, true))
            .await?;
        tracing::warn!(notification = %id, error = %error, "notification dead");
        Err(HandlerError::Permanent(error))
    }
}
