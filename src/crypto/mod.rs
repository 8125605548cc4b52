//! Keys and secrets at rest.
//!
//! - [`kek`] — key-encryption keys behind one provider interface (`file`, `pkcs11`), backup bundles.
//! - [`envelope`] — AES-256-GCM envelope encryption: a data key per secret, wrapped by a KEK.
//! - [`secrets`] — secrets at rest in `keys`, sealed under their record id.

pub mod envelope;
pub mod kek;
pub mod secrets;
