//! Pure types and rules: no MongoDB, actix or HTTP in here.
//!
//! - [`certificate`] — a certificate, its status and the transitions between them.
//! - [`grants`] — the names each project may certify.
//! - [`issuer`] — an ACME issuer and its challenge settings.
//! - [`order`] — an order's stages and what it published.
//! - [`renewal`] — renewal windows (default, `renew_before_secs`, ARI) and their jitter.
//! - [`drift`] — endpoints and the classification of what they serve.
//! - [`jobs`] — every job kind, its payload and its idempotency key.
//! - [`backoff`] — exponential back-off with jitter, shared by every retry.
//! - [`certs`] — certificate keys, CSRs, reading issued chains.
//! - [`distribution`] — target kinds, a delivery's steps and states, its job key.
//! - [`target_settings`] — the rules a target's settings obey, checked by the API and again by workers.
//! - [`roles`] — the roles a token holds on a project, and which of them may release keys.
//! - [`notifications`] — events, severities, routes, quiet hours and deduplication keys.
//! - [`validate`] — input rules, each failure a field-level reason (the API and the workers check alike).
//! - [`autoscale`] — the worker count an HPA asks for from the queue depth.

pub mod autoscale;
pub mod backoff;
pub mod certificate;
pub mod certs;
pub mod distribution;
pub mod drift;
pub mod grants;
pub mod issuer;
pub mod jobs;
pub mod notifications;
pub mod order;
pub mod renewal;
pub mod roles;
pub mod target_settings;
pub mod validate;
pub mod whole_number;
