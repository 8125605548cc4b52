//! Each worker's short presence lease: its record in the fleet registry
//! ([`crate::store::fleet`]).
//!
//! A job lease is long (60 s by default) so that a slow ACME call is not
//! interrupted; a worker's presence lease is short (10 s) and renewed about
//! every third of it. When a worker dies, its presence runs out and its jobs
//! become claimable within seconds. A worker that was only paused loses
//! nothing but those jobs: their fencing tokens refuse its late writes.

use std::time::Duration;

use mongodb::error::Error as MongoError;

use crate::observe::shutdown::Shutdown;
use crate::store::fleet::{self, Identity};
use crate::store::Store;

pub use crate::store::fleet::{forget_departed, FLEET_COLLECTION as WORKERS_COLLECTION};

#[derive(Clone, Debug)]
pub struct Presence {
    store: Store,
    identity: Identity,
    ttl: Duration,
}

impl Presence {
    pub fn new(store: Store, identity: Identity, ttl: Duration) -> Presence {
        Presence {
            store,
            identity,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Announces (or renews) this process until the database's now plus the TTL.
    pub async fn renew(&self) -> Result<(), MongoError> {
        fleet::announce(&self.store, &self.identity, self.ttl).await
    }

    /// Renews the record every third of its lease until shutdown (for the
    /// processes whose claim actor does not renew it: all but workers).
    pub async fn keep_renewed(self, shutdown: Shutdown) {
        let mut every = tokio::time::interval(self.ttl / 3);
        loop {
            tokio::select! {
                _ = every.tick() => {
                    if let Err(e) = self.renew().await {
                        tracing::warn!(error = %crate::store::short(&e), "renewing this process's fleet record failed");
                    }
                }
                _ = shutdown.requested() => return,
            }
        }
    }

    /// Removes this process's presence; called after its jobs were released.
    pub async fn withdraw(&self) -> Result<(), MongoError> {
        fleet::withdraw(&self.store, &self.identity.instance_id).await
    }
}
