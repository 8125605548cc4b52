//! Restart back-off for supervised actors.
//!
//! An actor that fails calls `ctx.stop()`; its `Supervisor` restarts it and
//! calls `restarting`, where the actor records the failure here. When it
//! starts again it waits [`Restarts::delay`] before working, so a failure that
//! repeats (the database gone for minutes) does not spin.

use std::time::Duration;

use crate::domain::backoff::Backoff;

pub const RESTART_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));

#[derive(Debug, Default, Clone, Copy)]
pub struct Restarts {
    consecutive: u32,
}

impl Restarts {
    /// Called from `Supervised::restarting`.
    pub fn record_failure(&mut self) {
        self.consecutive = self.consecutive.saturating_add(1);
    }

    /// Called once the actor has done useful work again.
    pub fn reset(&mut self) {
        self.consecutive = 0;
    }

    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// How long to wait before working again; zero on a first start.
    pub fn delay(&self) -> Duration {
        if self.consecutive == 0 {
            Duration::ZERO
        } else {
            RESTART_BACKOFF.delay(self.consecutive)
        }
    }
}
