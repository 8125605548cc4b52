//! Passphrase-protected key-ring bundles, for offsite backup of the `file`
//! provider's KEKs (`certautopilot kek export` / `import`).
//!
//! The key ring is sealed with AES-256-GCM under a key stretched from the
//! passphrase with Argon2id (64 MiB, 3 passes), so a stolen bundle costs an
//! attacker real work per guess; weak passphrases are refused outright.
//!
//! Format version 2 (written since) binds the whole header — format,
//! version, KDF and its parameters, salt, nonce — into the associated data,
//! and a header with fields this code does not know is refused, so nothing
//! read before decryption can be changed unnoticed. Version 1 bundles (whose
//! associated data is a fixed label) are still read.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::file::KeyRing;
use super::{KekError, KEY_LEN};

const FORMAT: &str = "certautopilot-kek-bundle";
/// The format version `export` writes.
const VERSION: u32 = 2;
/// Version 1's associated data: a label only.
const V1_AAD: &[u8] = b"certautopilot-kek-bundle/1";
pub const MIN_PASSPHRASE_CHARS: usize = 14;
const MIN_DISTINCT_CHARS: usize = 6;
const MEMORY_KIB: u32 = 64 * 1024;
const ITERATIONS: u32 = 3;
/// The most a bundle may ask of the importing machine: its KDF parameters
/// are read before anything in it is authenticated, so a bundle made to
/// exhaust memory or time is refused before the KDF runs.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 16;
const MAX_PARALLELISM: u32 = 16;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bundle {
    format: String,
    version: u32,
    kdf: Kdf,
    nonce: String,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

impl Bundle {
    /// The associated data the ciphertext is sealed with: every header field
    /// (from version 2; version 1 used a fixed label).
    fn aad(&self) -> Vec<u8> {
        if self.version == 1 {
            return V1_AAD.to_vec();
        }
        let k = &self.kdf;
        format!(
            "{}/{}\nkdf={} memory_kib={} iterations={} parallelism={} salt={}\nnonce={}",
            self.format,
            self.version,
            k.algorithm,
            k.memory_kib,
            k.iterations,
            k.parallelism,
            k.salt,
            self.nonce
        )
        .into_bytes()
    }
}

/// Refuses empty, short and low-variety passphrases, with the reason.
pub fn check_passphrase(passphrase: &str) -> Result<(), KekError> {
    let chars: Vec<char> = passphrase.chars().collect();
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let reason = if passphrase.trim().is_empty() {
        Some("it is empty".to_string())
    } else if chars.len() < MIN_PASSPHRASE_CHARS {
        Some(format!(
            "it has {} characters; use at least {MIN_PASSPHRASE_CHARS}",
            chars.len()
        ))
    } else if distinct.len() < MIN_DISTINCT_CHARS {
        Some(format!(
            "it uses only {} different characters; use at least {MIN_DISTINCT_CHARS}",
            distinct.len()
        ))
    } else {
        None
    };
    match reason {
        Some(r) => Err(KekError::Refused(format!("passphrase refused: {r}"))),
        None => Ok(()),
    }
}

fn stretch(passphrase: &str, salt: &[u8], kdf: &Kdf) -> Result<Zeroizing<[u8; KEY_LEN]>, KekError> {
    if kdf.memory_kib > MAX_MEMORY_KIB
        || kdf.iterations > MAX_ITERATIONS
        || !(1..=MAX_PARALLELISM).contains(&kdf.parallelism)
    {
        return Err(KekError::Refused(format!(
            "not a usable KEK bundle: its KDF asks for {} KiB, {} iterations, {} lanes; at most {MAX_MEMORY_KIB} KiB, {MAX_ITERATIONS} iterations, {MAX_PARALLELISM} lanes",
            kdf.memory_kib, kdf.iterations, kdf.parallelism
        )));
    }
    let params = Params::new(
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|e| KekError::Refused(format!("bundle KDF parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|e| KekError::Refused(format!("bundle KDF: {e}")))?;
    Ok(key)
}

/// Seals the key ring at `key_ring` into a bundle (JSON text).
pub fn export(key_ring: &Path, passphrase: &str) -> Result<String, KekError> {
    check_passphrase(passphrase)?;
    // Loading checks the file's mode and that it is a sound key ring.
    super::FileKek::load(key_ring)?;
    let ring_text = KeyRing::parse(
        &Zeroizing::new(
            std::fs::read_to_string(key_ring).map_err(|error| KekError::Io {
                path: key_ring.to_path_buf(),
                error,
            })?,
        ),
        key_ring,
    )?
    .to_json();
    seal(&ring_text, passphrase, VERSION)
}

/// Seals key-ring JSON into a bundle of format `version`.
fn seal(ring_text: &str, passphrase: &str, version: u32) -> Result<String, KekError> {
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; 12];
    rand::rng().fill_bytes(&mut salt);
    rand::rng().fill_bytes(&mut nonce);
    let kdf = Kdf {
        algorithm: "argon2id".into(),
        memory_kib: MEMORY_KIB,
        iterations: ITERATIONS,
        parallelism: 1,
        salt: B64.encode(salt),
    };
    let key = stretch(passphrase, &salt, &kdf)?;
    let mut bundle = Bundle {
        format: FORMAT.into(),
        version,
        kdf,
        nonce: B64.encode(nonce),
        ciphertext: String::new(),
    };
    let ciphertext = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: ring_text.as_bytes(),
                aad: &bundle.aad(),
            },
        )
        .expect("AES-GCM encryption cannot fail for in-memory sizes");
    bundle.ciphertext = B64.encode(ciphertext);
    Ok(serde_json::to_string_pretty(&bundle).expect("bundle serializes"))
}

/// Opens a bundle and writes its key ring to `key_ring` (mode 0600); refuses
/// to overwrite an existing file. Returns the key ring's versions.
pub fn import(bundle_text: &str, passphrase: &str, key_ring: &Path) -> Result<Vec<u32>, KekError> {
    let bad = |reason: &str| KekError::Refused(format!("not a usable KEK bundle: {reason}"));
    let bundle: Bundle = serde_json::from_str(bundle_text).map_err(|e| {
        bad(&format!(
            "not bundle JSON, or a field this version does not know: {e}"
        ))
    })?;
    if bundle.format != FORMAT
        || !(1..=VERSION).contains(&bundle.version)
        || bundle.kdf.algorithm != "argon2id"
    {
        return Err(bad("unknown format or version"));
    }
    let salt = B64
        .decode(&bundle.kdf.salt)
        .map_err(|_| bad("salt is not base64"))?;
    let nonce = B64
        .decode(&bundle.nonce)
        .map_err(|_| bad("nonce is not base64"))?;
    let ciphertext = B64
        .decode(&bundle.ciphertext)
        .map_err(|_| bad("ciphertext is not base64"))?;
    if nonce.len() != 12 {
        return Err(bad("nonce has the wrong length"));
    }
    let key = stretch(passphrase, &salt, &bundle.kdf)?;
    let plain = Zeroizing::new(
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref()))
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: &bundle.aad(),
                },
            )
            .map_err(|_| KekError::Refused("wrong passphrase, or the bundle was altered".into()))?,
    );
    let text = Zeroizing::new(
        String::from_utf8(plain.to_vec()).map_err(|_| bad("content is not a key ring"))?,
    );
    let ring = KeyRing::parse(&text, key_ring)?;
    super::file::write_new(key_ring, &ring.to_json())?;
    Ok(ring.versions())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::kek::{FileKek, KekProvider};

    #[test]
    fn weak_passphrases_are_refused_with_a_reason() {
        for (weak, why) in [
            ("", "empty"),
            ("   ", "empty"),
            ("short pass", "at least 14"),
            ("aaaaaaaaaaaaaaaaaaaa", "different characters"),
        ] {
            let err = check_passphrase(weak).unwrap_err().to_string();
            assert!(err.contains(why), "{weak:?}: {err}");
        }
        check_passphrase("correct horse battery staple").unwrap();
    }

    #[test]
    fn a_bundle_restores_the_same_keks_and_only_with_its_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("kek.json");
        FileKek::init(&original).unwrap();
        let kek = FileKek::load(&original).unwrap();
        kek.rotate().unwrap();
        let (version, wrapped) = kek.wrap(&crate::crypto::kek::random_key()).unwrap();

        let pass = "correct horse battery staple";
        let bundle = export(&original, pass).unwrap();
        assert!(!bundle.contains(&std::fs::read_to_string(&original).unwrap()));

        let wrong = import(
            &bundle,
            "incorrect horse battery staple",
            &dir.path().join("x.json"),
        );
        assert!(wrong.unwrap_err().to_string().contains("wrong passphrase"));

        let restored = dir.path().join("restored.json");
        assert_eq!(import(&bundle, pass, &restored).unwrap(), vec![1, 2]);
        let back = FileKek::load(&restored).unwrap();
        assert_eq!(back.current_version(), 2);
        back.unwrap(version, &wrapped).unwrap();
        assert!(
            import(&bundle, pass, &restored).is_err(),
            "never overwrites"
        );
    }

    #[test]
    fn an_altered_header_is_refused_and_old_bundles_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("kek.json");
        FileKek::init(&ring).unwrap();
        let pass = "correct horse battery staple";
        let text = export(&ring, pass).unwrap();
        let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(bundle["version"], 2);
        type Alteration = (&'static str, fn(&mut serde_json::Value));
        let alterations: [Alteration; 8] = [
            ("downgraded to version 1", |b| b["version"] = 1.into()),
            ("more memory", |b| b["kdf"]["memory_kib"] = 65537.into()),
            ("fewer iterations", |b| b["kdf"]["iterations"] = 2.into()),
            ("more lanes", |b| b["kdf"]["parallelism"] = 2.into()),
            // 16 and 12 bytes of 7.
            ("another salt", |b| {
                b["kdf"]["salt"] = "BwcHBwcHBwcHBwcHBwcHBw==".into()
            }),
            ("another nonce", |b| b["nonce"] = "BwcHBwcHBwcHBwcH".into()),
            ("a field added to the header", |b| b["note"] = "hi".into()),
            ("a field added to the KDF", |b| {
                b["kdf"]["secret"] = 1.into()
            }),
        ];
        for (what, alter) in alterations {
            let mut altered = bundle.clone();
            alter(&mut altered);
            let out = dir.path().join(format!("{}.json", what.replace(' ', "-")));
            let refused = import(&altered.to_string(), pass, &out);
            assert!(refused.is_err(), "{what}: accepted");
            assert!(!out.exists(), "{what}: nothing written");
        }
        assert_eq!(
            import(&text, pass, &dir.path().join("ok.json")).unwrap(),
            vec![1]
        );

        // A bundle written before version 2 still opens.
        let ring_text = KeyRing::parse(&std::fs::read_to_string(&ring).unwrap(), &ring)
            .unwrap()
            .to_json();
        let old = seal(&ring_text, pass, 1).unwrap();
        let restored = dir.path().join("from-v1.json");
        assert_eq!(import(&old, pass, &restored).unwrap(), vec![1]);
        assert_eq!(
            std::fs::read_to_string(&restored).unwrap(),
            std::fs::read_to_string(&ring).unwrap()
        );
    }

    #[test]
    fn a_bundle_asking_for_unbounded_memory_is_refused_before_the_kdf_runs() {
        let dir = tempfile::tempdir().unwrap();
        let ring = dir.path().join("kek.json");
        FileKek::init(&ring).unwrap();
        let pass = "correct horse battery staple";
        let bundle: serde_json::Value =
            serde_json::from_str(&export(&ring, pass).unwrap()).unwrap();
        for (field, value) in [
            ("memory_kib", 4u64 << 20),
            ("iterations", 1 << 20),
            ("parallelism", 1 << 10),
        ] {
            let mut hostile = bundle.clone();
            hostile["kdf"][field] = value.into();
            let refused =
                import(&hostile.to_string(), pass, &dir.path().join("x.json")).unwrap_err();
            assert!(
                refused.to_string().contains("at most"),
                "{field}: {refused}"
            );
        }
    }
}
