//! Use cases, one module each: checks the caller, applies the rules,
//! writes through the store, audits; called alike by HTTP handlers, CLI
//! commands and job handlers.
//!
//! - [`key_release`] — the one door a private key leaves the process by.
//! - [`migration`] — the KEK work of schema migrations (12: re-sealing; 17: binding settings).

pub mod key_release;
pub mod migration;
