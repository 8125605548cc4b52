//! Key-encryption keys (KEKs): versioned 256-bit keys that wrap every data
//! key ([`crate::crypto::envelope`]). Providers sit behind [`KekProvider`], chosen by
//! `CAP_KEK_PROVIDER`:
//!
//! - [`file`]: a key-ring file (or a mounted Kubernetes Secret) that must not
//!   be readable by group or others; the default for a single machine.
//! - [`pkcs11`]: KEKs that never leave an HSM, reached through PKCS#11.
//!
//! A provider re-reads its source on [`KekProvider::refresh`] (the readiness
//! monitor calls it every probe), so a rotation made by `certautopilot kek
//! rotate` reaches every running process without a restart.

pub mod bundle;
pub mod check;
pub mod file;
pub mod pkcs11;

use std::path::PathBuf;
use std::sync::Arc;

use rand::RngCore;
use zeroize::Zeroizing;

pub use file::FileKek;
pub use pkcs11::Pkcs11Kek;

pub const KEY_LEN: usize = 32;

/// A 256-bit key that is wiped from memory when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("KEK version {version} is not available from {source_name}: supply the key ring or token that holds it")]
    MissingVersion { version: u32, source_name: String },
    #[error("cannot unwrap a data key with KEK version {version}: wrong key or damaged data")]
    UnwrapFailed { version: u32 },
    #[error("KEK version {version} does not match the key-check value recorded for it: this is another key ring (or token), not the one this installation's data keys are wrapped with")]
    NotThisKeyRing { version: u32 },
    #[error("key ring {path} is readable by group or others (mode {mode:o}): chmod 600 it (one owned by root may also be group-readable, 0440, for a process that is not root, as a Kubernetes Secret with an fsGroup is)")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key ring {path}: {reason}")]
    BadKeyRing { path: PathBuf, reason: String },
    #[error("key ring {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("PKCS#11: {0}")]
    Pkcs11(String),
    #[error("{0}")]
    Refused(String),
}

/// Wraps and unwraps data keys. Implementations never expose a KEK itself.
pub trait KekProvider: Send + Sync {
    /// Where the KEKs live, for messages (`file /etc/cap/kek.json`).
    fn describe(&self) -> String;
    /// The version new data keys are wrapped with.
    fn current_version(&self) -> u32;
    /// Every version this provider holds, ascending.
    fn versions(&self) -> Vec<u32>;
    /// Wraps `data_key` with the current KEK; returns the version used.
    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<(u32, Vec<u8>), KekError>;
    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<SecretKey, KekError>;
    /// Re-reads the KEK source (a rotated key ring, a new token object).
    fn refresh(&self) -> Result<(), KekError>;
    /// Creates a new KEK version and makes it current; returns it.
    fn rotate(&self) -> Result<u32, KekError>;
    /// Removes `version` from the source. Callers check it is unused first.
    fn remove(&self, version: u32) -> Result<(), KekError>;
    /// The key-check value of `version`: [`CHECK_BLOCK`] encrypted under it
    /// (AES-256, one block), which tells one key from another without
    /// revealing either ([`check`] records and compares them).
    fn check_value(&self, version: u32) -> Result<[u8; CHECK_BLOCK.len()], KekError>;

    /// A wrap/unwrap round trip with a canary: is the KEK reachable and sound?
    fn check(&self) -> Result<(), KekError> {
        let canary = random_key();
        let (version, wrapped) = self.wrap(&canary)?;
        let back = self.unwrap(version, &wrapped)?;
        if *back != *canary {
            return Err(KekError::UnwrapFailed { version });
        }
        Ok(())
    }
}

/// Which provider, and where its keys are (from `CAP_KEK_*` / `CAP_PKCS11_*`).
#[derive(Clone)]
pub enum KekConfig {
    File {
        path: PathBuf,
    },
    Pkcs11 {
        module: PathBuf,
        token_label: String,
        pin: Zeroizing<String>,
    },
}

/// Without the PIN.
impl std::fmt::Debug for KekConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KekConfig::File { path } => f.debug_struct("File").field("path", path).finish(),
            KekConfig::Pkcs11 {
                module,
                token_label,
                pin: _,
            } => f
                .debug_struct("Pkcs11")
                .field("module", module)
                .field("token_label", token_label)
                .field("pin", &"<redacted>")
                .finish(),
        }
    }
}

/// Opens the configured provider. A file key ring is read (and its mode
/// checked) now; a PKCS#11 token is looked up on first use, so that a token
/// that is briefly away makes the process unready rather than crash.
pub fn open(config: &KekConfig) -> Result<Arc<dyn KekProvider>, KekError> {
    Ok(match config {
        KekConfig::File { path } => Arc::new(FileKek::load(path)?),
        KekConfig::Pkcs11 {
            module,
            token_label,
            pin,
        } => Arc::new(Pkcs11Kek::new(module, token_label, pin.clone())?),
    })
}

/// The block whose encryption is a KEK's check value. Not all zeros (that
/// block's encryption is the GHASH key of AES-GCM under the same key) and
/// ending in a zero 32-bit counter, which AES-GCM with 96-bit nonces never
/// encrypts: so the value is no keystream block of any wrap either.
pub const CHECK_BLOCK: [u8; 16] = *b"cap-kek-kcv1\0\0\0\0";

/// The check value of a KEK held in memory (the `file` provider).
fn check_value_of(key: &[u8; KEY_LEN]) -> [u8; CHECK_BLOCK.len()] {
    use aes::cipher::{BlockEncrypt, KeyInit};
    let cipher = aes::Aes256::new(key.into());
    let mut block = CHECK_BLOCK.into();
    cipher.encrypt_block(&mut block);
    block.into()
}

pub fn random_key() -> SecretKey {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rng().fill_bytes(key.as_mut());
    key
}

/// Associated data for a wrapped data key: binds it to its KEK version.
fn wrap_aad(version: u32) -> Vec<u8> {
    format!("certautopilot data key, KEK version {version}").into_bytes()
}
