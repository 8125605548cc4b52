//! `SchedulerActor`: while this process leads, enqueues time-driven work.
//!
//! Invariant kept: every enqueue carries a deterministic key (the kind and
//! the time bucket, by the database's clock) and goes through
//! [`Leases::enqueue_as_leader`], which refuses a deposed leader. So two
//! leaders by mistake, or one that just lost its lease, cannot enqueue the same
//! work twice. Today the only time-driven work is housekeeping; renewal
//! windows, drift scans and KEK rotation steps join it in later issues.

use std::time::Duration;

use actix::prelude::*;
use mongodb::bson::doc;

use crate::actors::lease::LeadershipChanged;
use crate::handlers::HOUSEKEEPING;
use crate::jobs::NewJob;
use crate::lease::{LeaseError, Leases, Term};

pub struct SchedulerActor {
    leases: Leases,
    housekeeping_every: Duration,
    term: Option<Term>,
    timer: Option<SpawnHandle>,
}

impl SchedulerActor {
    pub fn new(leases: Leases, housekeeping_every: Duration) -> SchedulerActor {
        SchedulerActor {
            leases,
            housekeeping_every,
            term: None,
            timer: None,
        }
    }

    fn enqueue_housekeeping(&mut self, ctx: &mut Context<Self>) {
        let Some(term) = self.term.clone() else {
            return;
        };
        let leases = self.leases.clone();
        let every = self.housekeeping_every;
        let store = self.leases.store().clone();
        ctx.spawn(
            async move {
                let now = store.server_now().await?;
                let bucket = now.timestamp_millis() / every.as_millis() as i64;
                let job = NewJob::new(HOUSEKEEPING, format!("{HOUSEKEEPING}:{bucket}"), doc! { "term": term.term });
                leases.enqueue_as_leader(&term, &job).await.map(|e| (e, bucket)).map_err(|e| match e {
                    LeaseError::Db(e) => e,
                    lost => mongodb::error::Error::custom(lost.to_string()),
                })
            }
            .into_actor(self)
            .map(|result, _act, _ctx| match result {
                Ok((enqueued, bucket)) if enqueued.created => {
                    tracing::info!(job = %enqueued.id, bucket, "enqueued housekeeping")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %crate::store::short(&e), "enqueueing housekeeping failed"),
            }),
        );
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;
}

impl Supervised for SchedulerActor {}

impl Handler<LeadershipChanged> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.term = msg.0;
        if self.term.is_some() {
            self.enqueue_housekeeping(ctx);
            self.timer = Some(ctx.run_interval(self.housekeeping_every, |act, ctx| {
                act.enqueue_housekeeping(ctx)
            }));
        }
    }
}
