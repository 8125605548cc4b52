//! Envelope encryption: every secret is sealed with its own random 256-bit
//! data key (AES-256-GCM), and the data key is stored wrapped by a KEK
//! version ([`crate::crypto::kek`]). The record's identity is the associated data, so
//! a ciphertext copied onto another record does not decrypt.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::crypto::kek::{random_key, KekError, KekProvider};

pub const NONCE_LEN: usize = 12;

/// A sealed secret, as stored: nothing in it is usable without the KEK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub kek_version: u32,
    pub wrapped_key: Vec<u8>,
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Kek(#[from] KekError),
    /// The data key unwrapped but the secret did not open: it belongs to
    /// another record, or was altered.
    #[error("secret of {record} does not decrypt: it belongs to another record or was altered")]
    WrongRecord { record: String },
}

/// AES-256-GCM under `key` (32 bytes) with a fresh random nonce, `record`
/// as the associated data: the nonce and the ciphertext.
pub fn encrypt(key: &[u8], record: &str, plaintext: &[u8]) -> ([u8; NONCE_LEN], Vec<u8>) {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: record.as_bytes(),
            },
        )
        .expect("AES-GCM encryption cannot fail for in-memory sizes");
    (nonce, ciphertext)
}

/// Opens what [`encrypt`] made; `None` when it was sealed for another
/// record or altered.
pub fn decrypt(
    key: &[u8],
    record: &str,
    nonce: &[u8; NONCE_LEN],
    ciphertext: &[u8],
) -> Option<Zeroizing<Vec<u8>>> {
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: record.as_bytes(),
            },
        )
        .ok()
        .map(Zeroizing::new)
}

/// Seals `plaintext` for the record named `record` (e.g. `keys/<id>`).
pub fn seal(
    kek: &dyn KekProvider,
    record: &str,
    plaintext: &[u8],
) -> Result<Sealed, EnvelopeError> {
    let data_key = random_key();
    let (kek_version, wrapped_key) = kek.wrap(&data_key)?;
    let (nonce, ciphertext) = encrypt(data_key.as_ref(), record, plaintext);
    Ok(Sealed {
        kek_version,
        wrapped_key,
        nonce,
        ciphertext,
    })
}

/// Opens a secret sealed for `record`.
pub fn open(
    kek: &dyn KekProvider,
    record: &str,
    sealed: &Sealed,
) -> Result<Zeroizing<Vec<u8>>, EnvelopeError> {
    let data_key = kek.unwrap(sealed.kek_version, &sealed.wrapped_key)?;
    decrypt(data_key.as_ref(), record, &sealed.nonce, &sealed.ciphertext).ok_or_else(|| {
        EnvelopeError::WrongRecord {
            record: record.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kek::FileKek;

    fn kek() -> (tempfile::TempDir, FileKek) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        FileKek::init(&path).unwrap();
        let kek = FileKek::load(&path).unwrap();
        (dir, kek)
    }

    #[test]
    fn a_sealed_secret_opens_for_its_record_and_hides_its_plaintext() {
        let (_dir, kek) = kek();
        let secret = b"-----BEGIN PRIVATE KEY-----\nMIGH...";
        let sealed = seal(&kek, "keys/cert-1", secret).unwrap();
        assert!(!sealed.ciphertext.windows(11).any(|w| w == b"PRIVATE KEY"));
        assert_eq!(
            open(&kek, "keys/cert-1", &sealed).unwrap().as_slice(),
            secret
        );
        let again = seal(&kek, "keys/cert-1", secret).unwrap();
        assert_ne!(
            again.wrapped_key, sealed.wrapped_key,
            "a data key of its own each time"
        );
    }

    #[test]
    fn a_ciphertext_copied_onto_another_record_does_not_decrypt() {
        let (_dir, kek) = kek();
        let sealed = seal(&kek, "keys/cert-1", b"secret").unwrap();
        let err = open(&kek, "keys/cert-2", &sealed).unwrap_err().to_string();
        assert!(
            err.contains("keys/cert-2") && err.contains("another record"),
            "{err}"
        );
        let mut tampered = sealed.clone();
        tampered.ciphertext[0] ^= 1;
        assert!(matches!(
            open(&kek, "keys/cert-1", &tampered),
            Err(EnvelopeError::WrongRecord { .. })
        ));
    }
}
