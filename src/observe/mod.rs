//! What the process tells the outside: metrics, logs, and the shutdown signal
//! every task watches.
//!
//! - [`metrics`] — the Prometheus registry and every metric we export.
//! - [`logging`] — JSON logs via `tracing`; panics logged as one line.
//! - [`shutdown`] — one shutdown signal threaded through every task.

pub mod logging;
pub mod metrics;
pub mod shutdown;
