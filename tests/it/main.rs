//! The integration tests, in one binary: the crate and the support code are
//! linked once, and `cargo test` runs every test from one list.
//!
//! Each module is one area:
//!
//! - the job queue and coordination: `queue`, `workers`, `leases`,
//!   `schedulers`, `election` (a step-down, on a server of its own),
//!   `supervision`;
//! - the database dying: `durability` (a `--sync-on-commit` server of its
//!   own SIGKILLed under API writes and restarted: none answered 2xx lost);
//! - running it: `operator` (settings, migrations, health), `stats`,
//!   `fleet` (the fleet registry, the schema floor);
//! - tenancy: `tenancy` (domain grants, the responder by name);
//! - the API's contract and abuse: `contract` (schemathesis against the
//!   OpenAPI document), `idempotency` (`Idempotency-Key` on POST),
//!   `rate_limits` (per-token limits shared by the replicas), `tokens`
//!   (minting while revoked, the caps on tokens);
//! - a database writer without the KEK: `db_writer` (forged tokens, moved
//!   key references, migration 12, targets steered elsewhere, migration 17);
//! - one door for keys: `key_release` (editors refused, one `key.released`
//!   record for every key that leaves, by every kind);
//! - the code's own shape: `architecture` (layers, cycles, collection owners);
//! - backup and disaster recovery: `backup` (snapshots under writes, restore
//!   into a fresh server, damaged files refused, `dr drill`, the SIEM witness);
//! - keys and records: `secrets`, `pkcs11`, `rotation`, `audit`, `siem`,
//!   `log_secrets` (no secret in any log line at debug);
//! - certificates against a real CA (Pebble): `issuance`, `orders`, `lb`,
//!   `api`, `renewals`, `revocation`, `dns01`, `drift`;
//! - getting certificates where they are used: `distribution` (webhook and
//!   Kubernetes Secret targets), `kubernetes_secret` (the Secrets exchange
//!   on a stand-in), `agent` (against nginx), `ssh_target` (against sshd
//!   and nginx); telling people: `notifications`, `email`;
//! - outbound connections: `egress` (the egress policy, request timeouts, the
//!   deadline of a job attempt);
//! - deploying it: `chart` (the Helm chart linted, rendered for Kubernetes
//!   1.29 to 1.33 and validated with the real tools, its objects checked).
//! - Kubernetes: `adapter` (the queue-depth metrics adapter, read as the
//!   aggregator and kubectl read it).
//! - the shell scripts: `chaos_scripts` (shellcheck over `chaos/` and
//!   `scripts/`; the chaos harness's kubernetes mode without a cluster).
//!
//! `support` starts what they run against — the database server, Pebble,
//! bind9, haproxy, `certautopilot` processes, or a whole [`support::cluster::Cluster`]
//! — and talks to the API as a user would.

mod support;

mod adapter;
mod agent;
mod api;
mod architecture;
mod audit;
mod backup;
mod chaos_scripts;
mod chart;
mod contract;
mod db_writer;
mod distribution;
mod dns01;
mod drift;
mod durability;
mod egress;
mod election;
mod email;
mod fleet;
mod idempotency;
mod issuance;
mod key_release;
mod kubernetes_secret;
mod lb;
mod leases;
mod log_secrets;
mod notifications;
mod operator;
mod orders;
mod pkcs11;
mod queue;
mod rate_limits;
mod renewals;
mod revocation;
mod rotation;
mod schedulers;
mod secrets;
mod siem;
mod ssh_target;
mod stats;
mod supervision;
mod tenancy;
mod tokens;
mod workers;
