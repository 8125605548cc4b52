//! Key-encryption keys (KEKs): versioned 256-bit keys that wrap every data
//! key ([`crate::envelope`]). Providers sit behind [`KekProvider`]; this
//! module has the `file` provider, a key-ring file (or a mounted Kubernetes
//! Secret) that must not be readable by group or others.
//!
//! Key-ring format (JSON): `{"current": 2, "keys": {"1": "<base64>", "2": "<base64>"}}`.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

pub const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;

/// A 256-bit key that is wiped from memory when dropped.
pub type SecretKey = Zeroizing<[u8; KEY_LEN]>;

#[derive(Debug, thiserror::Error)]
pub enum KekError {
    #[error("KEK version {version} is not available from {source_name}: supply the key ring that holds it")]
    MissingVersion { version: u32, source_name: String },
    #[error("cannot unwrap a data key with KEK version {version}: wrong key or damaged data")]
    UnwrapFailed { version: u32 },
    #[error("key ring {path} is readable by group or others (mode {mode:o}): chmod 600 it")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key ring {path}: {reason}")]
    BadKeyRing { path: PathBuf, reason: String },
    #[error("key ring {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Wraps and unwraps data keys. Implementations never expose a KEK itself.
pub trait KekProvider: Send + Sync {
    /// The version new data keys are wrapped with.
    fn current_version(&self) -> u32;
    /// Wraps `data_key` with the current KEK; returns the version used.
    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<(u32, Vec<u8>), KekError>;
    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<SecretKey, KekError>;

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

pub fn random_key() -> SecretKey {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rng().fill_bytes(key.as_mut());
    key
}

#[derive(Serialize, Deserialize)]
struct KeyRingFile {
    current: u32,
    keys: BTreeMap<String, String>,
}

/// The `file` provider: KEKs from a key-ring file.
pub struct FileKek {
    path: PathBuf,
    current: u32,
    keys: BTreeMap<u32, SecretKey>,
}

impl FileKek {
    /// Loads a key ring, refusing one readable by group or others.
    pub fn load(path: &Path) -> Result<FileKek, KekError> {
        let io = |error| KekError::Io {
            path: path.to_path_buf(),
            error,
        };
        let bad = |reason: String| KekError::BadKeyRing {
            path: path.to_path_buf(),
            reason,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KekError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let file: KeyRingFile =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a key ring: {e}")))?;
        let mut keys = BTreeMap::new();
        for (version, encoded) in &file.keys {
            let version: u32 = version
                .parse()
                .map_err(|_| bad(format!("version {version:?} is not a number")))?;
            let bytes = Zeroizing::new(
                B64.decode(encoded)
                    .map_err(|_| bad(format!("version {version} is not base64")))?,
            );
            let key: [u8; KEY_LEN] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| bad(format!("version {version} is not 256 bits")))?;
            keys.insert(version, Zeroizing::new(key));
        }
        if !keys.contains_key(&file.current) {
            return Err(bad(format!("current version {} has no key", file.current)));
        }
        Ok(FileKek {
            path: path.to_path_buf(),
            current: file.current,
            keys,
        })
    }

    /// Creates a new key ring holding one fresh KEK (version 1), mode 0600.
    /// Refuses to overwrite an existing file.
    pub fn init(path: &Path) -> Result<(), KekError> {
        let io = |error| KekError::Io {
            path: path.to_path_buf(),
            error,
        };
        let key = random_key();
        let file = KeyRingFile {
            current: 1,
            keys: BTreeMap::from([("1".to_string(), B64.encode(key.as_ref()))]),
        };
        let text =
            Zeroizing::new(serde_json::to_string_pretty(&file).expect("key ring serializes"));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        out.write_all(text.as_bytes()).map_err(io)?;
        out.sync_all().map_err(io)?;
        Ok(())
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }

    fn cipher(&self, version: u32) -> Result<Aes256Gcm, KekError> {
        let key = self
            .keys
            .get(&version)
            .ok_or_else(|| KekError::MissingVersion {
                version,
                source_name: self.path.display().to_string(),
            })?;
        Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref())))
    }
}

/// Associated data for a wrapped data key: binds it to its KEK version.
fn wrap_aad(version: u32) -> Vec<u8> {
    format!("certautopilot data key, KEK version {version}").into_bytes()
}

impl KekProvider for FileKek {
    fn current_version(&self) -> u32 {
        self.current
    }

    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<(u32, Vec<u8>), KekError> {
        let version = self.current;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let aad = wrap_aad(version);
        let sealed = self
            .cipher(version)?
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: data_key,
                    aad: &aad,
                },
            )
            .expect("AES-GCM encryption of 32 bytes cannot fail");
        Ok((version, [nonce.as_slice(), &sealed].concat()))
    }

    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<SecretKey, KekError> {
        let cipher = self.cipher(version)?;
        if wrapped.len() <= NONCE_LEN {
            return Err(KekError::UnwrapFailed { version });
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        let aad = wrap_aad(version);
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: sealed,
                        aad: &aad,
                    },
                )
                .map_err(|_| KekError::UnwrapFailed { version })?,
        );
        let key: [u8; KEY_LEN] = plain
            .as_slice()
            .try_into()
            .map_err(|_| KekError::UnwrapFailed { version })?;
        Ok(Zeroizing::new(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_private_key_ring_that_wraps_and_unwraps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        FileKek::init(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(FileKek::init(&path).is_err(), "never overwrites a key ring");
        let kek = FileKek::load(&path).unwrap();
        kek.check().unwrap();
        let dek = random_key();
        let (version, wrapped) = kek.wrap(&dek).unwrap();
        assert_eq!(version, 1);
        assert_ne!(
            &wrapped[NONCE_LEN..NONCE_LEN + KEY_LEN],
            dek.as_slice(),
            "wrapped, not copied"
        );
        assert_eq!(*kek.unwrap(1, &wrapped).unwrap(), *dek);
    }

    #[test]
    fn a_key_ring_open_to_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        FileKek::init(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = FileKek::load(&path).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_missing_or_wrong_kek_names_the_version_it_needs() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        FileKek::init(&a).unwrap();
        FileKek::init(&b).unwrap();
        let (ka, kb) = (FileKek::load(&a).unwrap(), FileKek::load(&b).unwrap());
        let (_, wrapped) = ka.wrap(&random_key()).unwrap();
        let wrong = kb.unwrap(1, &wrapped).err().unwrap().to_string();
        assert!(wrong.contains("KEK version 1"), "{wrong}");
        let missing = ka.unwrap(7, &wrapped).err().unwrap().to_string();
        assert!(
            missing.contains("KEK version 7") && missing.contains("a.json"),
            "{missing}"
        );
    }
}
