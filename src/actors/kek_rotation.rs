//! `KekRotationActor`: while this process leads the scheduler, every
//! `CAP_KEK_ROTATION_CHECK_SECS` it counts data keys per KEK version (the
//! `certautopilot_kek_*` metrics) and, while any is wrapped by a version
//! other than the current one, makes sure a `kek-rewrap` job is queued.
//!
//! The job's key names the target version and the time bucket, and the
//! enqueue is fenced by the leader's term ([`Leases::enqueue_as_leader`]): a
//! deposed leader cannot add one, and one tick cannot add two.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::lease::LeadershipChanged;
use crate::crypto::kek::KekProvider;
use crate::domain::jobs::{self, JobKind};
use crate::domain::notifications::Event;
use crate::notify::outbox::Outbox;
use crate::observe::metrics::Metrics;
use crate::queue::jobs::{JobQueue, NewJob};
use crate::queue::lease::{Leases, Term};
use crate::store::keys::{data_keys_by_version, remaining};

pub struct KekRotationActor {
    leases: Leases,
    kek: Arc<dyn KekProvider>,
    metrics: Arc<Metrics>,
    every: Duration,
    term: Option<Term>,
    timer: Option<SpawnHandle>,
    outbox: Outbox,
    /// The version whose finished rotation this process has announced
    /// (the outbox sends each version's once anyway; this spares the
    /// lookups at every tick).
    announced: Arc<AtomicU32>,
}

impl KekRotationActor {
    pub fn new(
        leases: Leases,
        kek: Arc<dyn KekProvider>,
        metrics: Arc<Metrics>,
        every: Duration,
        outbox: Outbox,
    ) -> Self {
        KekRotationActor {
            leases,
            kek,
            metrics,
            every,
            term: None,
            timer: None,
            outbox,
            announced: Arc::default(),
        }
    }

    fn tick(&mut self, ctx: &mut Context<Self>) {
        let Some(term) = self.term.clone() else {
            return;
        };
        let (leases, kek, metrics, every) = (
            self.leases.clone(),
            self.kek.clone(),
            self.metrics.clone(),
            self.every,
        );
        let (outbox, announced) = (self.outbox.clone(), self.announced.clone());
        ctx.spawn(
            async move {
                let announce = Announce {
                    outbox: &outbox,
                    announced: &announced,
                };
                if let Err(e) = step(&leases, &term, kek, &metrics, every, announce).await {
                    tracing::warn!(error = %e, "KEK rotation check failed; trying again next tick");
                }
            }
            .into_actor(self),
        );
    }
}

async fn step(
    leases: &Leases,
    term: &Term,
    kek: Arc<dyn KekProvider>,
    metrics: &Metrics,
    every: Duration,
    announce: Announce<'_>,
) -> Result<(), String> {
    let store = leases.store();
    let short = |e: mongodb::error::Error| crate::store::short(&e);
    let current = tokio::task::spawn_blocking({
        let kek = kek.clone();
        move || kek.refresh().map(|_| kek.current_version())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let counts = data_keys_by_version(store).await.map_err(short)?;
    metrics.kek_data_keys.reset();
    for (version, n) in &counts {
        metrics
            .kek_data_keys
            .with_label_values(&[&version.to_string()])
            .set(*n);
    }
    let left = remaining(&counts, current);
    metrics.kek_rotation_remaining.set(left);
    if left == 0 {
        // Version 1 was never rotated to: nothing finished.
        if current > 1 && announce.announced.swap(current, Ordering::Relaxed) != current {
            let event = Event::KekRotationFinished { version: current };
            announce.outbox.raise(&event, None).await;
        }
        return Ok(());
    }
    let active = JobQueue::new(store.clone())
        .count_active(JobKind::KekRewrap)
        .await
        .map_err(short)?;
    if active > 0 {
        return Ok(());
    }
    let now = store.server_now().await.map_err(short)?;
    let bucket = now.timestamp_millis() / every.as_millis().max(1) as i64;
    let job = NewJob::from_spec(jobs::kek_rewrap(current, bucket, term.term));
    let enqueued = leases
        .enqueue_as_leader(term, &job)
        .await
        .map_err(|e| e.to_string())?;
    if enqueued.created {
        tracing::info!(job = %enqueued.id, target = current, remaining = left, "enqueued a KEK re-wrap");
    }
    Ok(())
}

/// Where a finished rotation is announced.
struct Announce<'a> {
    outbox: &'a Outbox,
    announced: &'a AtomicU32,
}

impl Actor for KekRotationActor {
    type Context = Context<Self>;
}

impl Supervised for KekRotationActor {}

impl Handler<LeadershipChanged> for KekRotationActor {
    type Result = ();
    fn handle(&mut self, msg: LeadershipChanged, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.term = msg.0;
        if self.term.is_some() {
            self.tick(ctx);
            self.timer = Some(ctx.run_interval(self.every, |act, ctx| act.tick(ctx)));
        }
    }
}
