//! CertAutoPilot: a certificate-automation control plane coordinated through
//! MongoDB.
//!
//! A map of the crate, one concept per module:
//!
//! - [`config`] — every `CAP_*` knob, its default, and validation.
//! - [`store`] — the MongoDB connection (`w=majority`, primary reads) and the policy that rides through elections.
//! - [`clock`] — the database's clock, sampled; this process's clock only to report skew.
//! - [`backoff`] — exponential back-off with jitter, shared by every retry.
//! - [`schema`] — versioned migrations and the schema-version gate.
//! - [`kek`] — key-encryption keys behind one provider interface (`file`, `pkcs11`), rotation commands, backup bundles.
//! - [`envelope`] — AES-256-GCM envelope encryption: a data key per secret, wrapped by a KEK.
//! - [`secrets`] — secrets at rest in `keys`, sealed under their record id.
//! - [`renewal`] — renewal windows (default, `renew_before_secs`, ARI) and the leader's scan that enqueues renewals.
//! - [`rotation`] — re-wrapping data keys onto the current KEK version (`kek-rewrap` jobs).
//! - [`audit`] — the hash-chained audit log, its checkpoints and `audit verify`.
//! - [`siem`] — forwarding audit records to syslog (RFC 5424/6587, optional TLS) and a webhook.
//! - [`jobs`] — the fenced job queue: enqueue, claim, heartbeat, complete, fail, release, and fenced writes for handlers.
//! - [`fence`] — writes that land only while a job claim or leadership term is current.
//! - [`lease`] — named leases with fencing terms (scheduler leadership).
//! - [`presence`] — each worker's short presence lease, so a dead worker's jobs are reclaimed in seconds rather than a job lease.
//! - [`handlers`] — job handlers by kind (housekeeping, probe).
//! - [`actors`] — ClaimActor, LeaseActor, the scheduler loop and supervision.
//! - [`http`] — `/healthz`, `/readyz`, `/metrics`.
//! - [`api`] — the `/v1` API (projects, issuers, certificates, tokens), problem+json errors, the HTTP-01 responder.
//! - [`acme`] — the ACME client (our HTTP client, metered, extra CA bundles), accounts, and the resumable order behind `issue-certificate` jobs.
//! - [`certs`] — certificate keys, CSRs, reading issued chains.
//! - [`metrics`] — the Prometheus registry and every metric we export.
//! - [`readiness`] — what `/readyz` reports: database reachability with a grace period, schema fit, the KEK canary, shutting down.
//! - [`health`] — the `certautopilot health` operator command.
//! - [`logging`] — JSON logs via `tracing`; panics logged as one line.
//! - [`shutdown`] — one shutdown signal threaded through every task.
//! - [`workloads`] — wiring of `api`, `worker`, `scheduler` and `all`.

pub mod acme;
pub mod actors;
pub mod api;
pub mod audit;
pub mod backoff;
pub mod certs;
pub mod clock;
pub mod config;
pub mod dns;
pub mod drift;
pub mod envelope;
pub mod fence;
pub mod handlers;
pub mod health;
pub mod http;
pub mod jobs;
pub mod kek;
pub mod lease;
pub mod logging;
pub mod metrics;
pub mod periodic;
pub mod presence;
pub mod readiness;
pub mod renewal;
pub mod rotation;
pub mod schema;
pub mod secrets;
pub mod shutdown;
pub mod siem;
pub mod stats;
pub mod store;
pub mod workloads;
