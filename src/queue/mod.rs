//! The fenced job queue and the leases around it.
//!
//! - [`jobs`] — enqueue, claim, heartbeat, complete, fail, release, and fenced writes for handlers.
//! - [`lease`] — named leases with fencing terms (scheduler leadership).
//! - [`presence`] — each worker's short presence lease, so a dead worker's jobs are reclaimed in seconds.
//! - [`handler`] — the interface every job kind implements, and its outcome.

pub mod handler;
pub mod jobs;
pub mod lease;
pub mod presence;
