//! Keys and secrets at rest.
//!
//! - [`kek`] — key-encryption keys behind one provider interface (`file`, `pkcs11`), backup bundles.
//! - [`envelope`] — AES-256-GCM envelope encryption: a data key per secret, wrapped by a KEK.
//! - [`secrets`] — secrets at rest in `keys`, sealed for their owner.
//! - [`api_tokens`] — API token records keyed by an HMAC only KEK holders can compute.
//! - [`binding`] — the MACs that bind target and channel settings, and a certificate's targets, to their owner.
//! - [`webhook_signature`] — the HMAC-SHA256 signature on every webhook POST (targets, notifications).
//! - [`reseal`] — schema migration 12's KEK work: binding what earlier builds stored.

pub mod api_tokens;
pub mod binding;
pub mod envelope;
pub mod kek;
pub mod reseal;
pub mod secrets;
pub mod webhook_signature;
