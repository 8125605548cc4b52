//! The long-lived actors, each in its own file, each restarted by an actix
//! `Supervisor` with back-off when it fails:
//!
//! - [`claim::ClaimActor`] — claims jobs, heartbeats them, runs handlers, hands jobs back on shutdown.
//! - [`lease::LeaseActor`] — leader election on a lease document.
//! - [`scheduler::SchedulerActor`] — while leader, enqueues time-driven work.
//! - [`order::OrderActor`] — owns the state machine of the ACME order behind each `issue-certificate` job, each order in a task of its own.
//! - [`readiness`] — what `/readyz` reports, sampled in the background; workers and the scheduler wait on it.
//! - [`siem::SiemActor`] — while leader, forwards audit records to syslog and a webhook.
//! - [`kek_rotation::KekRotationActor`] — while leader, reports data keys per KEK version and enqueues re-wrap jobs until a rotation is complete.
//!
//! actix's `Supervisor` restarts an actor that stops; it does not catch
//! panics. So actors never run job code themselves: handlers run in their
//! own tasks, where a panic becomes the job's failure ([`claim`]).

pub mod claim;
pub mod kek_rotation;
pub mod lease;
pub mod order;
pub mod readiness;
pub mod scheduler;
pub mod siem;
pub mod supervision;
