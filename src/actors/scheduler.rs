//! `SchedulerActor`: while this process leads, enqueues time-driven work —
//! housekeeping, renewals of certificates whose window has opened, drift
//! scans of certificates whose endpoints are due for a look, refreshes of
//! CAs' renewal windows (ARI), and the deliveries of newly issued serials to
//! their certificates' distribution targets.
//!
//! Invariant kept: every enqueue carries a deterministic key (housekeeping:
//! the time bucket by the database's clock; a renewal: the certificate, the
//! serial it replaces and its failure count; periodic work: the certificate
//! and the time it was due) and goes through
//! [`Leases::enqueue_as_leader`], which refuses a deposed leader. So two
//! leaders by mistake, or one that just lost its lease, cannot enqueue the
//! same work twice.

use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::lease::LeadershipChanged;
use crate::domain::jobs;
use crate::domain::renewal::PROVISIONAL_REFRESH;
use crate::queue::jobs::NewJob;
use crate::queue::lease::{LeaseError, Leases, Term};
use crate::work::distribute;
use crate::work::periodic::{self, TickReport};
use crate::work::renewal;

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub housekeeping_every: Duration,
    pub renewal_scan_every: Duration,
    /// Renewals enqueued per tick at most.
    pub renewal_batch: i64,
    /// How often each certificate's endpoints are scanned for drift (the
    /// due scans are looked for on the renewal scan's timer).
    pub drift_scan_every: Duration,
    /// Fault injection for tests (`CAP_FAULT_PAUSE_AFTER_STAGE=renewal_enqueued`).
    pub pause_after_renewal_enqueue: Option<Duration>,
}

pub struct SchedulerActor {
    leases: Leases,
    settings: SchedulerSettings,
    term: Option<Term>,
    timers: Vec<SpawnHandle>,
    /// A scan for due work is running: the next tick skips rather than overlap it.
    scanning: bool,
}

impl SchedulerActor {
    pub fn new(leases: Leases, settings: SchedulerSettings) -> SchedulerActor {
        SchedulerActor {
            leases,
            settings,
            term: None,
            timers: Vec::new(),
            scanning: false,
        }
    }

    fn enqueue_housekeeping(&mut self, ctx: &mut Context<Self>) {
        let Some(term) = self.term.clone() else {
            return;
        };
        let leases = self.leases.clone();
        let every = self.settings.housekeeping_every;
        let store = self.leases.store().clone();
        ctx.spawn(
            async move {
                let now = store.server_now().await?;
                let bucket = now.timestamp_millis() / every.as_millis() as i64;
                let job = NewJob::from_spec(jobs::housekeeping(bucket, term.term));
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

    fn scan_due(&mut self, ctx: &mut Context<Self>) {
        let Some(term) = self.term.clone() else {
            return;
        };
        if self.scanning {
            return;
        }
        self.scanning = true;
        let leases = self.leases.clone();
        let (batch, pause, drift_every) = (
            self.settings.renewal_batch,
            self.settings.pause_after_renewal_enqueue,
            self.settings.drift_scan_every,
        );
        ctx.spawn(
            async move {
                let started = Instant::now();
                let renewals = renewal::enqueue_due(&leases, &term, batch, pause).await;
                log_tick("renewal", started, renewals);
                let started = Instant::now();
                let deliveries =
                    distribute::enqueue_due(&leases, &term, periodic::DEFAULT_BATCH).await;
                log_tick("distribute", started, deliveries);
                for (work, every) in [
                    (periodic::DRIFT_SCANS, drift_every),
                    (periodic::ARI_REFRESHES, PROVISIONAL_REFRESH),
                ] {
                    let started = Instant::now();
                    let report =
                        periodic::enqueue_due(&leases, &term, work, periodic::DEFAULT_BATCH, every)
                            .await;
                    log_tick(work.kind().as_str(), started, report);
                }
            }
            .into_actor(self)
            .map(|(), act, _ctx| act.scanning = false),
        );
    }
}

/// One line per tick that found work (or failed); quiet ticks say nothing.
fn log_tick(kind: &str, started: Instant, result: Result<TickReport, LeaseError>) {
    match result {
        Ok(r) if r.due > 0 => tracing::info!(
            kind,
            due = r.due,
            enqueued = r.enqueued,
            already_queued = r.already_queued,
            took_ms = started.elapsed().as_millis() as u64,
            "scheduled due work"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(kind, error = %e, "scheduling due work failed"),
    }
}

impl Actor for SchedulerActor {
    type Context = Context<Self>;
}

impl Supervised for SchedulerActor {}

impl Handler<LeadershipChanged> for SchedulerActor {
    type Result = ();
    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Context<Self>) {
        for timer in self.timers.drain(..) {
            ctx.cancel_future(timer);
        }
        self.term = msg.0;
        if self.term.is_some() {
            self.enqueue_housekeeping(ctx);
            self.scan_due(ctx);
            self.timers = vec![
                ctx.run_interval(self.settings.housekeeping_every, |act, ctx| {
                    act.enqueue_housekeeping(ctx)
                }),
                ctx.run_interval(self.settings.renewal_scan_every, |act, ctx| {
                    act.scan_due(ctx)
                }),
            ];
        }
    }
}
