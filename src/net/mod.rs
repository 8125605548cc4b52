//! Outbound connections: where the process may connect, decided once, after
//! name resolution, for every connection a tenant can aim.
//!
//! - [`egress`] — the egress policy of each purpose (`CAP_EGRESS_ALLOW_<PURPOSE>`): which addresses are
//!   refused, resolving and connecting through it.
//! - [`connector`] — the same policy as a hyper connector: a resolver hook, and a
//!   guard for URLs that name an IP address (those skip resolvers).
//! - [`tls_probe`] — the leaf certificate an endpoint presents (drift scans, distribution's validate step).

pub mod connector;
pub mod egress;
pub mod tls_probe;
