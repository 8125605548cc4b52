//! `LeaseActor`: leader election on a lease document (see [`crate::queue::lease`]).
//!
//! Invariant kept: this process acts as leader only while its lease is
//! certainly live. It renews about every fifth of the TTL and, when renewals
//! fail, steps down once two thirds of the TTL have passed since the last
//! renewal it sent — before the lease can expire and a standby take over. On
//! SIGTERM it releases the lease, so the standby takes over at once: a standby
//! watches the lease document through a change stream and tries to acquire
//! the moment it changes, polling only as a fallback.

use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::actors::readiness::Readiness;
use crate::actors::supervision::Restarts;
use crate::audit::{Audit, Event};
use crate::observe::metrics::Metrics;
use crate::observe::shutdown::Shutdown;
use crate::queue::lease::{next_change, LeaseError, Leases, Term};
use mongodb::bson::doc;
use std::sync::Arc;

/// Where this process stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    Follower,
    Leader {
        term: Term,
        renewed_at: Instant,
    },
    /// Released on shutdown: campaigns no more.
    Resigned,
}

/// Told to subscribers whenever leadership starts or ends.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct LeadershipChanged(pub Option<Term>);

/// Which lease, held by whom, for how long.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub holder: String,
    pub ttl: Duration,
}

pub struct LeaseActor {
    leases: Leases,
    name: String,
    holder: String,
    ttl: Duration,
    state: LeaseState,
    busy: bool,
    /// The lease document changed while an acquisition was in flight: that
    /// attempt may have read it before the change, so try again at once.
    changed_while_busy: bool,
    subscribers: Vec<Recipient<LeadershipChanged>>,
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    restarts: Restarts,
}

impl LeaseActor {
    pub fn new(
        leases: Leases,
        settings: LeaseSettings,
        subscribers: Vec<Recipient<LeadershipChanged>>,
        readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        shutdown: Shutdown,
    ) -> LeaseActor {
        LeaseActor {
            leases,
            name: settings.name,
            holder: settings.holder,
            ttl: settings.ttl,
            state: LeaseState::Follower,
            busy: false,
            changed_while_busy: false,
            subscribers,
            readiness,
            metrics,
            shutdown,
            restarts: Restarts::default(),
        }
    }

    /// How often a leader renews and a follower retries.
    pub fn retry_interval(ttl: Duration) -> Duration {
        ttl / 5
    }

    /// How long after the last renewal a leader that cannot renew steps down.
    fn step_down_after(&self) -> Duration {
        self.ttl * 2 / 3
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        if self.busy {
            return;
        }
        match self.state.clone() {
            LeaseState::Follower => self.try_acquire(ctx),
            LeaseState::Leader { term, renewed_at } => self.renew(term, renewed_at, ctx),
            LeaseState::Resigned => {}
        }
    }

    fn try_acquire(&mut self, ctx: &mut Context<Self>) {
        match self.readiness.schema_fit() {
            Some(fit) if fit.runs() => {}
            // The readiness monitor has not reported yet: look again shortly.
            None => {
                ctx.run_later(Duration::from_millis(100), |act, ctx| act.tick(ctx));
                return;
            }
            Some(_) => return,
        }
        self.busy = true;
        self.changed_while_busy = false;
        let leases = self.leases.clone();
        let (name, holder, ttl) = (self.name.clone(), self.holder.clone(), self.ttl);
        let sent = Instant::now();
        ctx.spawn(async move { leases.try_acquire(&name, &holder, ttl).await }.into_actor(self).map(
            move |result, act, ctx| {
                act.busy = false;
                if act.state != LeaseState::Follower {
                    return;
                }
                match result {
                    Ok(Some(term)) => {
                        act.restarts.reset();
                        tracing::info!(lease = %term.lease, term = term.term, "became leader");
                        act.metrics.leader_takeovers_total.inc();
                        let event = Event::new(&term.holder, "leader.takeover", format!("leases/{}", term.lease))
                            .with(doc! { "term": term.term });
                        let audit = Audit::new(act.leases.store().clone()).with_metrics(act.metrics.clone());
                        actix::spawn(async move { audit.record(event).await });
                        act.become_(LeaseState::Leader { term, renewed_at: sent });
                    }
                    Ok(None) => {
                        act.restarts.reset();
                        if std::mem::take(&mut act.changed_while_busy) {
                            act.tick(ctx);
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %crate::store::short(&e), "lease acquisition failed; restarting the lease actor");
                        ctx.stop();
                    }
                }
            },
        ));
    }

    fn renew(&mut self, term: Term, renewed_at: Instant, ctx: &mut Context<Self>) {
        if renewed_at.elapsed() >= self.step_down_after() {
            tracing::warn!(lease = %term.lease, term = term.term, "could not renew in time; stepping down before the lease expires");
            self.become_(LeaseState::Follower);
            return;
        }
        self.busy = true;
        let leases = self.leases.clone();
        let ttl = self.ttl;
        let deadline = Self::retry_interval(ttl);
        let sent = Instant::now();
        let renewing = term.clone();
        ctx.spawn(
            async move { tokio::time::timeout(deadline, leases.renew(&renewing, ttl)).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    act.busy = false;
                    let LeaseState::Leader { term: current, .. } = &act.state else { return };
                    if *current != term {
                        return;
                    }
                    let renewed = matches!(result, Ok(Ok(())));
                    match result {
                        Ok(Ok(())) => act.state = LeaseState::Leader { term, renewed_at: sent },
                        Ok(Err(LeaseError::Lost(_))) => {
                            tracing::warn!(lease = %term.lease, term = term.term, "lease lost to another holder");
                            act.become_(LeaseState::Follower);
                        }
                        Ok(Err(LeaseError::Db(e))) => {
                            tracing::warn!(error = %crate::store::short(&e), "lease renewal failed; will retry");
                        }
                        Err(_) => tracing::warn!("lease renewal timed out; will retry"),
                    }
                    // Check the step-down deadline again soon rather than at the next tick.
                    if matches!(act.state, LeaseState::Leader { .. }) && !renewed {
                        ctx.run_later(Duration::from_millis(250), |act, ctx| act.tick(ctx));
                    }
                }),
        );
    }

    fn become_(&mut self, state: LeaseState) {
        let leading = match &state {
            LeaseState::Leader { term, .. } => Some(term.clone()),
            _ => None,
        };
        let was_leading = matches!(self.state, LeaseState::Leader { .. });
        self.state = state;
        self.metrics
            .scheduler_is_leader
            .set(leading.is_some() as i64);
        if was_leading != leading.is_some() {
            for s in &self.subscribers {
                s.do_send(LeadershipChanged(leading.clone()));
            }
        }
    }

    /// Runs a change stream on the lease document; every change wakes the
    /// actor. Reopened after errors until shutdown.
    fn watch(&self, ctx: &mut Context<Self>) {
        let leases = self.leases.clone();
        let name = self.name.clone();
        let addr = ctx.address();
        let shutdown = self.shutdown.clone();
        ctx.spawn(
            async move {
                loop {
                    match leases.watch(&name).await {
                        Ok(mut stream) => loop {
                            tokio::select! {
                                changed = next_change(&mut stream) => {
                                    if !changed { break; }
                                    addr.do_send(LeaseChanged);
                                }
                                _ = shutdown.requested() => return,
                            }
                        },
                        Err(e) => tracing::debug!(error = %crate::store::short(&e), "lease watch failed; reopening"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.requested() => return,
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for LeaseActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.restarts.delay();
        let every = Self::retry_interval(self.ttl);
        ctx.run_later(delay, move |act, ctx| {
            act.watch(ctx);
            act.tick(ctx);
            ctx.run_interval(every, |act, ctx| act.tick(ctx));
        });
    }
}

impl Supervised for LeaseActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.busy = false;
        self.restarts.record_failure();
        self.metrics
            .actor_restarts_total
            .with_label_values(&["lease"])
            .inc();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct LeaseChanged;

impl Handler<LeaseChanged> for LeaseActor {
    type Result = ();
    fn handle(&mut self, _: LeaseChanged, ctx: &mut Context<Self>) {
        if self.state != LeaseState::Follower {
            return;
        }
        tracing::debug!(busy = self.busy, "the lease document changed");
        if self.busy {
            // Dropping it would leave the standby to its next retry (a fifth
            // of the TTL) when the leader has just let go.
            self.changed_while_busy = true;
        } else {
            self.tick(ctx);
        }
    }
}

/// Stop leading and give the lease up (with a short timeout of its own, so
/// that the lease's TTL is only the fallback); campaign no more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StepDown;

pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(2);

impl Handler<StepDown> for LeaseActor {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, _: StepDown, _ctx: &mut Context<Self>) -> Self::Result {
        let held = match &self.state {
            LeaseState::Leader { term, .. } => Some(term.clone()),
            _ => None,
        };
        self.become_(LeaseState::Resigned);
        let leases = self.leases.clone();
        Box::pin(async move {
            if let Some(term) = held {
                match tokio::time::timeout(RELEASE_TIMEOUT, leases.release(&term)).await {
                    Ok(Ok(())) => {
                        tracing::info!(lease = %term.lease, term = term.term, "released leadership")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(error = %crate::store::short(&e), "releasing the lease failed; it will expire")
                    }
                    Err(_) => tracing::warn!("releasing the lease timed out; it will expire"),
                }
            }
        })
    }
}
