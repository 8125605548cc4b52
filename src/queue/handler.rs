//! The interface every job kind implements, its outcome, and the map from
//! kind to handler a worker claims with ([`crate::work::registry`] fills it).
//!
//! A handler returns an error to fail its job (retried with back-off, or
//! dead when permanent or out of attempts); a panic is caught by the
//! [`crate::actors::claim`] actor and treated as a retryable failure. Writes
//! a handler makes for its job go through [`crate::queue::jobs::JobLease::fenced`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::domain::jobs::JobKind;
use crate::queue::jobs::{ClaimedJob, JobError};

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later (after back-off), unless attempts are spent.
    #[error("{0}")]
    Retryable(String),
    /// Try again, but not before `after` (the other side said when: an ACME
    /// CA's `Retry-After` on `rateLimited`).
    #[error("{reason}")]
    RetryAfter { reason: String, after: Duration },
    /// Retrying cannot help: the job is dead at once, with this reason.
    #[error("{0}")]
    Permanent(String),
    /// Our claim was taken over: stop without writing anything.
    #[error("lease lost")]
    LeaseLost,
}

impl From<JobError> for HandlerError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::LeaseLost(_) => HandlerError::LeaseLost,
            JobError::Db(e) => {
                HandlerError::Retryable(format!("database error: {}", crate::store::short(&e)))
            }
        }
    }
}

impl From<mongodb::error::Error> for HandlerError {
    fn from(e: mongodb::error::Error) -> Self {
        HandlerError::Retryable(format!("database error: {}", crate::store::short(&e)))
    }
}

pub trait JobHandler: Send + Sync + 'static {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>>;
}

#[derive(Clone, Default)]
pub struct Handlers {
    by_kind: HashMap<String, Arc<dyn JobHandler>>,
}

impl Handlers {
    pub fn new() -> Handlers {
        Handlers::default()
    }

    pub fn register(mut self, kind: JobKind, handler: impl JobHandler) -> Handlers {
        self.by_kind
            .insert(kind.as_str().to_string(), Arc::new(handler));
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.by_kind.get(kind).cloned()
    }

    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.by_kind.keys().cloned().collect();
        kinds.sort();
        kinds
    }
}

impl ClaimedJob {
    /// The payload as its kind's type; a payload that does not fit can never
    /// run (the job is dead at once).
    pub fn payload_as<P: serde::de::DeserializeOwned>(&self) -> Result<P, HandlerError> {
        mongodb::bson::from_document(self.payload.clone()).map_err(|e| {
            HandlerError::Permanent(format!("the {} job's payload does not fit: {e}", self.kind))
        })
    }
}
