//! CertAutoPilot: a certificate-automation control plane coordinated through
//! MongoDB.
//!
//! The crate is built in layers, lowest first; each imports only from the
//! layers before it (`tests/it/architecture.rs` keeps it so, and refuses
//! import cycles between modules):
//!
//! | layer | owns |
//! |---|---|
//! | [`domain`] | pure types and rules: certificate and its status transitions, distribution targets and steps, notification events and routes, issuer, order stage, renewal windows and jitter, drift classification, every job kind with its payload and idempotency key, back-off, keys and CSRs, the worker count an HPA asks for |
//! | [`observe`] | metrics, JSON logs, the shutdown signal |
//! | [`net`] | the egress policy every outbound connection a tenant can aim passes, one per purpose (`CAP_EGRESS_ALLOW_<PURPOSE>`), its hook into hyper's connector, and the TLS probe drift scans and deliveries share |
//! | [`store`] | the MongoDB connection and the database's clock, fenced writes, schema and migrations, and one module per collection — the only code that reads or writes `certificates`, `orders`, `challenges`, `issuers`, `projects`, `tokens`, `keys`, `kek_versions`, `idempotency_keys`, `rate_limits` and the fleet registry (`workers`) |
//! | [`crypto`] | KEK providers (`file`, `pkcs11`) and bundles, envelope encryption, secrets at rest sealed for their owners, API token keys, migration 12's re-sealing |
//! | [`queue`] | the fenced job queue, leases and worker presence (their own collections), the handler interface and its outcome |
//! | [`audit`] | the hash-chained audit log (its own collections), chained checkpoints, `audit verify`, SIEM forwarding |
//! | [`backup`] | snapshots of the whole installation: the file format (manifest, digests, zstd), `snapshot save` at one point in time, `snapshot restore` checked end to end before anything is written |
//! | [`acme`] | the ACME client and the calls behind each order step, with its own error type; DNS-01 over RFC 2136, ARI, revocation |
//! | [`distribute`] | delivering certificates to their targets: atomic certificate files with the previous set kept, the signed webhook POST |
//! | [`notify`] | notification channels: email over SMTP (STARTTLS, authentication) |
//! | [`services`] | use cases, one module each, called alike by handlers, commands and jobs: the key-release door |
//! | [`work`] | one module per job kind, the registry that names them all, the leader's scans, ACME errors as job outcomes |
//! | [`actors`] | ClaimActor, LeaseActor, SchedulerActor, OrderActor (owns the order state machine), KekRotationActor, SiemActor, readiness, supervision |
//! | [`http`] | `/healthz`, `/readyz`, `/metrics`, the HTTP-01 responder, the `/v1` API and the metrics adapter's `external.metrics.k8s.io` |
//! | [`cli`] | the configuration, the workloads' wiring, one module per operator command |
//!
//! `main.rs` parses the command line and dispatches to [`cli`].
//! `fuzzing` (feature `fuzzing` only) holds the fuzz targets' entry points
//! into the parsers of outside input (`fuzz/`).

pub mod acme;
pub mod actors;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod crypto;
pub mod distribute;
pub mod domain;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod net;
pub mod notify;
pub mod observe;
pub mod queue;
pub mod services;
pub mod store;
pub mod work;
