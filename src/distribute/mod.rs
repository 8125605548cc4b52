//! Getting certificates to where they are served (docs/distribution.md):
//! one module per way of delivering, used by the `distribute` job and the
//! agent.
//!
//! - [`files`] — certificate files written atomically, the previous set kept for rollback.
//! - [`webhook`] — one signed POST through the egress policy (targets and notification channels).

pub mod files;
pub mod webhook;
