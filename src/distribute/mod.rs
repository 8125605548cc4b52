//! Getting certificates to where they are served (docs/distribution.md):
//! one module per way of delivering, used by the `distribute` job and the
//! agent.
//!
//! - [`files`] — certificate files written atomically, the previous set kept for rollback.
//! - [`http`] — requests to tenant-named hosts through the egress policy, one error type.
//! - [`kubernetes_secret`] — a `kubernetes.io/tls` Secret replaced with optimistic concurrency.
//! - [`ssh`] — files uploaded over SFTP to a host with a pinned key, the previous set kept.
//! - [`validate`] — the `validate` step: the endpoint serves the delivered certificate.
//! - [`webhook`] — one signed POST through the egress policy (targets and notification channels).

pub mod files;
pub mod http;
pub mod kubernetes_secret;
pub mod ssh;
pub mod validate;
pub mod webhook;
