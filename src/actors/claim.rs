//! `ClaimActor`: claims runnable jobs up to the worker's concurrency, runs
//! each under its lease, and hands every in-flight job back on shutdown.
//!
//! Invariant kept: a job runs only while this worker holds it under its
//! fencing token. Each job runs in a task of its own that heartbeats the lease
//! about every third of its length; a refused heartbeat (the job was taken
//! over) cancels the handler at once. A handler's error *or panic* becomes the
//! job's failure; neither stops the actor or the process.
//!
//! Each attempt has a deadline (`CAP_JOB_ATTEMPT_TIMEOUT_SECS`): past it the
//! handler is cancelled and the attempt fails as retryable, so a peer that
//! answers slowly but never stops (a hostile CA) cannot hold a job slot for
//! good. An ACME order cut off this way resumes from its journal next time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use mongodb::bson::oid::ObjectId;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::actors::readiness::Readiness;
use crate::actors::supervision::Restarts;
use crate::audit::{Audit, Event};
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, Handlers, JobHandler};
use crate::queue::jobs::{ClaimedJob, FailOutcome, JobError, JobQueue};
use crate::queue::presence::Presence;
use mongodb::bson::doc;

/// The actor's life: claiming, or draining towards shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimState {
    Claiming,
    Draining,
}

#[derive(Clone)]
pub struct ClaimSettings {
    pub worker_id: String,
    pub concurrency: usize,
    pub job_lease: Duration,
    pub poll: Duration,
    /// How long one attempt of a job may run before it is cancelled.
    pub attempt_timeout: Duration,
}

pub struct ClaimActor {
    settings: ClaimSettings,
    queue: JobQueue,
    presence: Presence,
    handlers: Handlers,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    state: ClaimState,
    /// Jobs running now, with the token that makes each hand itself back.
    in_flight: HashMap<ObjectId, CancellationToken>,
    claiming: bool,
    /// Our presence has been recorded at least once.
    present: bool,
    restarts: Restarts,
    drained: Vec<oneshot::Sender<()>>,
}

impl ClaimActor {
    pub fn new(
        settings: ClaimSettings,
        queue: JobQueue,
        presence: Presence,
        handlers: Handlers,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
    ) -> ClaimActor {
        ClaimActor {
            settings,
            queue,
            presence,
            handlers,
            readiness,
            metrics,
            state: ClaimState::Claiming,
            in_flight: HashMap::new(),
            claiming: false,
            present: false,
            restarts: Restarts::default(),
            drained: Vec::new(),
        }
    }

    fn free_slots(&self) -> usize {
        self.settings
            .concurrency
            .saturating_sub(self.in_flight.len())
    }

    /// One claim round: ask for as many jobs as there are free slots.
    fn claim_round(&mut self, ctx: &mut Context<Self>) {
        // Jobs run only under a schema that fits and the installation's own
        // KEK: what another key ring sealed no other process could open.
        let fit =
            self.readiness.schema_fit().is_some_and(|f| f.runs()) && !self.readiness.kek_foreign();
        // Never hold a job before our presence is recorded: a worker that
        // died unannounced would keep its jobs for a whole job lease.
        if self.claiming
            || self.state != ClaimState::Claiming
            || !self.present
            || !fit
            || self.free_slots() == 0
        {
            return;
        }
        self.claiming = true;
        let want = self.free_slots();
        let queue = self.queue.clone();
        let worker = self.settings.worker_id.clone();
        let kinds = self.handlers.kinds();
        let lease = self.settings.job_lease;
        let latency = self.metrics.claim_latency.clone();
        let claim = async move {
            let started = Instant::now();
            let claimed = queue.claim(&worker, &kinds, want, lease).await;
            latency.observe(started.elapsed().as_secs_f64());
            claimed
        };
        ctx.spawn(claim.into_actor(self).map(move |result, act, ctx| {
            act.claiming = false;
            match result {
                Ok(jobs) => {
                    act.restarts.reset();
                    let full = jobs.len() == want;
                    for job in jobs {
                        act.start_job(job, ctx);
                    }
                    // A full batch suggests more is waiting: go again now.
                    if full {
                        ctx.notify(ClaimNow);
                    }
                    act.finish_drain_if_done(ctx);
                }
                Err(e) => {
                    // The election window has already been ridden through:
                    // fail, and let the supervisor restart us with back-off.
                    tracing::error!(error = %crate::store::short(&e), "claiming failed; restarting the claim actor");
                    ctx.stop();
                }
            }
        }));
    }

    fn start_job(&mut self, job: ClaimedJob, ctx: &mut Context<Self>) {
        let id = job.lease.job_id;
        let release = CancellationToken::new();
        // Claimed just as the drain began: hand it straight back.
        if self.state == ClaimState::Draining {
            release.cancel();
        }
        self.in_flight.insert(id, release.clone());
        self.metrics.jobs_in_flight.set(self.in_flight.len() as i64);
        let Some(handler) = self.handlers.get(&job.kind) else {
            // Only registered kinds are claimed; this cannot happen, but if it
            // did the job must go back rather than sit claimed.
            let queue = self.queue.clone();
            let addr = ctx.address();
            actix::spawn(async move {
                let _ = queue.release(&job.lease).await;
                addr.do_send(JobFinished { id });
            });
            return;
        };
        tracing::info!(job = %id, kind = %job.kind, attempt = job.attempt, token = job.lease.token, "job claimed");
        let run = run_job(
            job,
            handler,
            self.queue.clone(),
            self.metrics.clone(),
            release,
            self.settings.attempt_timeout,
        );
        let addr = ctx.address();
        actix::spawn(async move {
            run.await;
            addr.do_send(JobFinished { id });
        });
    }

    fn renew_presence(&mut self, ctx: &mut Context<Self>) {
        if self.state == ClaimState::Draining {
            return;
        }
        let presence = self.presence.clone();
        ctx.spawn(async move { presence.renew().await }.into_actor(self).map(
            |result, act, ctx| match result {
                Ok(()) if !act.present => {
                    act.present = true;
                    act.claim_round(ctx);
                }
                Ok(()) => {}
                // Never announced: nothing to claim with; restart with back-off.
                Err(e) if !act.present => {
                    tracing::error!(error = %crate::store::short(&e), "announcing worker presence failed; restarting the claim actor");
                    ctx.stop();
                }
                Err(e) => {
                    tracing::warn!(error = %crate::store::short(&e), "renewing worker presence failed")
                }
            },
        ));
    }

    fn finish_drain_if_done(&mut self, ctx: &mut Context<Self>) {
        if self.state != ClaimState::Draining || !self.in_flight.is_empty() || self.claiming {
            return;
        }
        let presence = self.presence.clone();
        let waiters = std::mem::take(&mut self.drained);
        ctx.spawn(
            async move {
                if let Err(e) = presence.withdraw().await {
                    tracing::warn!(error = %crate::store::short(&e), "withdrawing worker presence failed");
                }
                for w in waiters {
                    let _ = w.send(());
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for ClaimActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.restarts.delay();
        if !delay.is_zero() {
            tracing::info!(
                delay_ms = delay.as_millis() as u64,
                restarts = self.restarts.consecutive(),
                "claim actor restarting after back-off"
            );
        }
        let presence_every = self.presence.ttl() / 3;
        let poll = self.settings.poll;
        ctx.run_later(delay, move |act, ctx| {
            // Restarted mid-drain: the drain may be complete already.
            act.finish_drain_if_done(ctx);
            act.renew_presence(ctx);
            ctx.run_interval(presence_every, |act, ctx| act.renew_presence(ctx));
            act.claim_round(ctx);
            ctx.run_interval(poll, |act, ctx| act.claim_round(ctx));
        });
    }
}

impl Supervised for ClaimActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.claiming = false;
        self.restarts.record_failure();
        self.metrics
            .actor_restarts_total
            .with_label_values(&["claim"])
            .inc();
    }
}

/// Claim again now (a slot freed up, or the last batch was full).
#[derive(Message)]
#[rtype(result = "()")]
struct ClaimNow;

impl Handler<ClaimNow> for ClaimActor {
    type Result = ();
    fn handle(&mut self, _: ClaimNow, ctx: &mut Context<Self>) {
        self.claim_round(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct JobFinished {
    id: ObjectId,
}

impl Handler<JobFinished> for ClaimActor {
    type Result = ();
    fn handle(&mut self, msg: JobFinished, ctx: &mut Context<Self>) {
        self.in_flight.remove(&msg.id);
        self.metrics.jobs_in_flight.set(self.in_flight.len() as i64);
        match self.state {
            ClaimState::Claiming => self.claim_round(ctx),
            ClaimState::Draining => self.finish_drain_if_done(ctx),
        }
    }
}

/// Stop claiming, hand every in-flight job back to the queue, withdraw this
/// worker's presence; resolves when that is done.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for ClaimActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) -> Self::Result {
        if self.state == ClaimState::Claiming {
            tracing::info!(
                in_flight = self.in_flight.len(),
                "draining: handing jobs back"
            );
            self.state = ClaimState::Draining;
            for release in self.in_flight.values() {
                release.cancel();
            }
        }
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        self.finish_drain_if_done(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

/// How one claimed job ended, from this worker's point of view.
enum Ending {
    Finished(Result<(), HandlerError>),
    Panicked(String),
    LeaseLost,
    HandedBack,
}

/// Runs one job under its lease: the handler in its own task (so that a
/// panic is caught), heartbeats beside it, the attempt's deadline over both,
/// and the outcome written with the job's fencing token.
async fn run_job(
    job: ClaimedJob,
    handler: Arc<dyn JobHandler>,
    queue: JobQueue,
    metrics: Arc<Metrics>,
    release: CancellationToken,
    attempt_timeout: Duration,
) {
    let lease = job.lease.clone();
    let mut task = actix::spawn(handler.run(job.clone()));
    let deadline = tokio::time::sleep(attempt_timeout);
    tokio::pin!(deadline);
    let beat_every = lease.length / 3;
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + beat_every, beat_every);
    let mut last_beat = Instant::now();
    let ending = loop {
        tokio::select! {
            result = &mut task => break match result {
                Ok(outcome) => Ending::Finished(outcome),
                Err(e) if e.is_panic() => Ending::Panicked(panic_message(e.into_panic())),
                Err(_) => Ending::LeaseLost,
            },
            _ = heartbeat.tick() => match queue.heartbeat(&lease).await {
                Ok(()) => last_beat = Instant::now(),
                Err(JobError::LeaseLost(_)) => { task.abort(); break Ending::LeaseLost; }
                Err(JobError::Db(e)) => {
                    tracing::warn!(job = %lease.job_id, error = %crate::store::short(&e), "heartbeat failed");
                    // Past our lease, someone may hold the job: stop working on it.
                    if last_beat.elapsed() >= lease.length {
                        task.abort();
                        break Ending::LeaseLost;
                    }
                }
            },
            _ = release.cancelled() => { task.abort(); break Ending::HandedBack; }
            _ = &mut deadline => {
                task.abort();
                break Ending::Finished(Err(HandlerError::Retryable(past_deadline(attempt_timeout))));
            }
        }
    };
    let kind = job.kind.as_str();
    let outcome = match ending {
        Ending::Finished(Ok(())) => match queue.complete(&lease).await {
            Ok(()) => "completed",
            Err(JobError::LeaseLost(_)) => "lease_lost",
            Err(e) => {
                tracing::error!(job = %lease.job_id, error = %e, "recording completion failed; the job will be re-run");
                "unrecorded"
            }
        },
        Ending::Finished(Err(HandlerError::LeaseLost)) => "lease_lost",
        Ending::Finished(Err(HandlerError::Retryable(reason))) => {
            fail(&queue, &job, &reason, false, Duration::ZERO).await
        }
        Ending::Finished(Err(HandlerError::RetryAfter { reason, after })) => {
            fail(&queue, &job, &reason, false, after).await
        }
        Ending::Finished(Err(HandlerError::Permanent(reason))) => {
            fail(&queue, &job, &reason, true, Duration::ZERO).await
        }
        Ending::Panicked(message) => {
            fail(
                &queue,
                &job,
                &format!("handler panicked: {message}"),
                false,
                Duration::ZERO,
            )
            .await
        }
        Ending::LeaseLost => "lease_lost",
        Ending::HandedBack => match queue.release(&lease).await {
            Ok(()) => "released",
            Err(JobError::LeaseLost(_)) => "lease_lost",
            Err(e) => {
                tracing::warn!(job = %lease.job_id, error = %e, "handing the job back failed; it will be reclaimed when its lease expires");
                "unrecorded"
            }
        },
    };
    tracing::info!(job = %lease.job_id, kind, attempt = job.attempt, token = lease.token, outcome, "job finished");
    metrics.jobs_total.with_label_values(&[kind, outcome]).inc();
    if matches!(outcome, "completed" | "retrying" | "dead") {
        let event = Event::new(&lease.holder, &format!("job.{outcome}"), format!("jobs/{}", lease.job_id))
            .with(doc! { "kind": kind, "key": &job.key, "attempt": job.attempt as i64, "token": lease.token });
        Audit::new(queue.store().clone())
            .with_metrics(metrics.clone())
            .record(event)
            .await;
    }
}

async fn fail(
    queue: &JobQueue,
    job: &ClaimedJob,
    reason: &str,
    permanent: bool,
    not_before: Duration,
) -> &'static str {
    tracing::warn!(job = %job.lease.job_id, kind = %job.kind, attempt = job.attempt, reason, "job failed");
    match queue
        .fail_not_before(job, reason, permanent, not_before)
        .await
    {
        Ok(FailOutcome::Retrying { .. }) => "retrying",
        Ok(FailOutcome::Dead) => "dead",
        Err(JobError::LeaseLost(_)) => "lease_lost",
        Err(e) => {
            tracing::error!(job = %job.lease.job_id, error = %e, "recording the failure failed; the job will be re-run");
            "unrecorded"
        }
    }
}

/// The failure of an attempt cut off at its deadline.
fn past_deadline(timeout: Duration) -> String {
    format!("attempt exceeded its deadline of {}s", timeout.as_secs())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
