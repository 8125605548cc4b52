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
//! - [`notifications`] — events, severities, routes, quiet hours and deduplication keys.
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
pub mod whole_number;
