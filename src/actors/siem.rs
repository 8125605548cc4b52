//! `SiemActor`: runs the SIEM forwarder ([`crate::audit::siem`]) while this
//! process leads the scheduler, and stops it the moment leadership ends.

use std::sync::Arc;

use actix::prelude::*;
use tokio_util::sync::CancellationToken;

use crate::actors::lease::LeadershipChanged;
use crate::audit::siem::{self, SiemConfig};
use crate::observe::metrics::Metrics;
use crate::queue::lease::Leases;

pub struct SiemActor {
    leases: Leases,
    config: SiemConfig,
    metrics: Arc<Metrics>,
    running: Option<CancellationToken>,
}

impl SiemActor {
    pub fn new(leases: Leases, config: SiemConfig, metrics: Arc<Metrics>) -> SiemActor {
        SiemActor {
            leases,
            config,
            metrics,
            running: None,
        }
    }
}

impl Actor for SiemActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(stop) = self.running.take() {
            stop.cancel();
        }
    }
}

impl Supervised for SiemActor {}

impl Handler<LeadershipChanged> for SiemActor {
    type Result = ();
    fn handle(&mut self, msg: LeadershipChanged, _ctx: &mut Context<Self>) {
        if let Some(stop) = self.running.take() {
            stop.cancel();
        }
        if let Some(term) = msg.0 {
            let stop = CancellationToken::new();
            self.running = Some(stop.clone());
            tracing::info!(term = term.term, "forwarding audit records to the SIEM");
            actix::spawn(siem::run(
                self.leases.clone(),
                term,
                self.config.clone(),
                self.metrics.clone(),
                stop,
            ));
        }
    }
}
