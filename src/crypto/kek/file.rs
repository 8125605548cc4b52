//! The `file` KEK provider: versioned KEKs in a key-ring file (or a mounted
//! Kubernetes Secret), refused when readable by group or others.
//!
//! Key-ring format (JSON): `{"current": 2, "keys": {"1": "<base64>", "2": "<base64>"}}`.
//! Rewrites (rotate, retire) go to a temporary file in the same directory
//! that is renamed over the old one, so a reader never sees half a key ring,
//! and hold an exclusive lock on `<key ring>.lock` from reading the key ring
//! to renaming the new one, so two rotations at once cannot lose a version.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::SystemTime;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{
    check_value_of, random_key, wrap_aad, KekError, KekProvider, SecretKey, CHECK_BLOCK, KEY_LEN,
};

const NONCE_LEN: usize = 12;

#[derive(Serialize, Deserialize)]
struct KeyRingFile {
    current: u32,
    keys: BTreeMap<String, String>,
}

/// A parsed key ring.
pub struct KeyRing {
    pub current: u32,
    keys: BTreeMap<u32, SecretKey>,
}

impl KeyRing {
    /// Parses key-ring JSON; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<KeyRing, KekError> {
        let bad = |reason: String| KekError::BadKeyRing {
            path: origin.to_path_buf(),
            reason,
        };
        let file: KeyRingFile =
            serde_json::from_str(text).map_err(|e| bad(format!("not a key ring: {e}")))?;
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
        Ok(KeyRing {
            current: file.current,
            keys,
        })
    }

    /// The key ring as JSON (holds every KEK: handle as a secret).
    pub fn to_json(&self) -> Zeroizing<String> {
        let file = KeyRingFile {
            current: self.current,
            keys: self
                .keys
                .iter()
                .map(|(v, k)| (v.to_string(), B64.encode(k.as_ref())))
                .collect(),
        };
        Zeroizing::new(serde_json::to_string_pretty(&file).expect("key ring serializes"))
    }

    pub fn versions(&self) -> Vec<u32> {
        self.keys.keys().copied().collect()
    }
}

/// The `file` provider: KEKs from a key-ring file.
pub struct FileKek {
    path: PathBuf,
    ring: RwLock<Loaded>,
}

struct Loaded {
    ring: KeyRing,
    stamp: Option<Stamp>,
}

/// What tells us the file changed. The modification time alone is not
/// enough: two rewrites within one timestamp tick (a few ms on some
/// filesystems) share it. Each rewrite is a rename of a new file, so the
/// inode changes too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    inode: u64,
    len: u64,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            modified: meta.modified().ok(),
            inode: meta.ino(),
            len: meta.len(),
        }
    }
}

impl FileKek {
    /// Loads a key ring, refusing one readable by group or others.
    pub fn load(path: &Path) -> Result<FileKek, KekError> {
        let loaded = read(path)?;
        Ok(FileKek {
            path: path.to_path_buf(),
            ring: RwLock::new(loaded),
        })
    }

    /// Creates a new key ring holding one fresh KEK (version 1), mode 0600.
    /// Refuses to overwrite an existing file.
    pub fn init(path: &Path) -> Result<(), KekError> {
        let ring = KeyRing {
            current: 1,
            keys: BTreeMap::from([(1, random_key())]),
        };
        write_new(path, &ring.to_json())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn cipher(&self, version: u32) -> Result<Aes256Gcm, KekError> {
        let loaded = self.ring.read().unwrap();
        let key = loaded
            .ring
            .keys
            .get(&version)
            .ok_or_else(|| KekError::MissingVersion {
                version,
                source_name: self.path.display().to_string(),
            })?;
        Ok(Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref())))
    }

    /// Applies `change` to the key ring on disk and in memory, under the
    /// key ring's lock (released when the lock file is closed).
    fn rewrite(&self, change: impl FnOnce(&mut KeyRing)) -> Result<(), KekError> {
        let _lock = lock(&self.path)?;
        let mut loaded = read(&self.path)?;
        change(&mut loaded.ring);
        replace(&self.path, &loaded.ring.to_json())?;
        *self.ring.write().unwrap() = read(&self.path)?;
        Ok(())
    }
}

impl KekProvider for FileKek {
    fn describe(&self) -> String {
        format!("key ring {}", self.path.display())
    }

    fn current_version(&self) -> u32 {
        self.ring.read().unwrap().ring.current
    }

    fn versions(&self) -> Vec<u32> {
        self.ring.read().unwrap().ring.versions()
    }

    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<(u32, Vec<u8>), KekError> {
        let version = self.current_version();
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
        let cipher = match self.cipher(version) {
            Ok(c) => c,
            // A version rotated in by another process: look again once.
            Err(KekError::MissingVersion { .. }) => {
                self.refresh()?;
                self.cipher(version)?
            }
            Err(e) => return Err(e),
        };
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

    fn refresh(&self) -> Result<(), KekError> {
        let stamp = stamp(&self.path)?;
        if self.ring.read().unwrap().stamp == Some(stamp) {
            return Ok(());
        }
        *self.ring.write().unwrap() = read(&self.path)?;
        Ok(())
    }

    fn rotate(&self) -> Result<u32, KekError> {
        let mut new_version = 0;
        self.rewrite(|ring| {
            new_version = ring.keys.keys().max().copied().unwrap_or(0) + 1;
            ring.keys.insert(new_version, random_key());
            ring.current = new_version;
        })?;
        Ok(new_version)
    }

    fn check_value(&self, version: u32) -> Result<[u8; CHECK_BLOCK.len()], KekError> {
        let loaded = self.ring.read().unwrap();
        let key = loaded
            .ring
            .keys
            .get(&version)
            .ok_or_else(|| KekError::MissingVersion {
                version,
                source_name: self.path.display().to_string(),
            })?;
        Ok(check_value_of(key))
    }

    fn remove(&self, version: u32) -> Result<(), KekError> {
        if version == self.current_version() {
            return Err(KekError::Refused(format!(
                "KEK version {version} is current: rotate to a new version first"
            )));
        }
        self.rewrite(|ring| {
            ring.keys.remove(&version);
        })
    }
}

fn stamp(path: &Path) -> Result<Stamp, KekError> {
    std::fs::metadata(path)
        .map(|m| Stamp::of(&m))
        .map_err(|error| KekError::Io {
            path: path.to_path_buf(),
            error,
        })
}

fn read(path: &Path) -> Result<Loaded, KekError> {
    let io = |error| KekError::Io {
        path: path.to_path_buf(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    let mode = meta.permissions().mode() & 0o777;
    use std::os::unix::fs::MetadataExt;
    // Our own uid is the owner of /proc/self; where that cannot be read,
    // take the strict rule (as root).
    let me = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0);
    if !private_enough(mode, meta.uid(), me) {
        return Err(KekError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    Ok(Loaded {
        ring: KeyRing::parse(&text, path)?,
        stamp: Some(Stamp::of(&meta)),
    })
}

/// Whether a key ring with `mode`, owned by `owner`, may be read by the
/// process running as `me`: readable and writable by its owner only, or —
/// as PostgreSQL allows for its key files — also readable by the group when
/// root owns it and we are not root. That is how Kubernetes mounts a Secret
/// for a non-root pod with an `fsGroup` (root-owned, mode 0440).
fn private_enough(mode: u32, owner: u32, me: u32) -> bool {
    mode & 0o077 == 0 || (owner == 0 && me != 0 && mode & 0o037 == 0)
}

/// Takes the exclusive lock of the key ring at `path` (waiting for it): a
/// lock file beside it, since the key ring itself is replaced by a rename.
fn lock(path: &Path) -> Result<std::fs::File, KekError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let io = |error| KekError::Io {
        path: lock_path.clone(),
        error,
    };
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

/// Writes a new file with mode 0600; refuses to overwrite.
pub fn write_new(path: &Path, text: &str) -> Result<(), KekError> {
    let io = |error| KekError::Io {
        path: path.to_path_buf(),
        error,
    };
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

/// Replaces `path` atomically (temporary file, then rename), mode 0600.
fn replace(path: &Path, text: &str) -> Result<(), KekError> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, text)?;
    std::fs::rename(&tmp, path).map_err(|error| KekError::Io {
        path: path.to_path_buf(),
        error,
    })
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
    fn a_root_owned_group_readable_key_ring_is_private_enough_for_a_non_root_reader() {
        // A Kubernetes Secret mounted for uid 65532 with fsGroup: 0440, root's.
        assert!(private_enough(0o440, 0, 65532));
        assert!(private_enough(0o640, 0, 65532));
        assert!(private_enough(0o600, 65532, 65532));
        // Writable or executable by the group, readable by others, owned by
        // someone else than root, or read by root itself: refused.
        assert!(!private_enough(0o460, 0, 65532));
        assert!(!private_enough(0o444, 0, 65532));
        assert!(!private_enough(0o440, 1000, 65532));
        assert!(!private_enough(0o440, 0, 0));
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

    #[test]
    fn concurrent_rotations_keep_every_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        FileKek::init(&path).unwrap();
        // Each thread is a `kek rotate` of its own: its own view of the file.
        let (threads, rounds) = (4u32, 5u32);
        let made: Vec<u32> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let kek = FileKek::load(&path).unwrap();
                    s.spawn(move || {
                        (0..rounds)
                            .map(|_| kek.rotate().unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let last = 1 + threads * rounds;
        let mut made = made;
        made.sort_unstable();
        assert_eq!(
            made,
            (2..=last).collect::<Vec<_>>(),
            "each rotation made a version of its own"
        );
        let kek = FileKek::load(&path).unwrap();
        assert_eq!(kek.versions(), (1..=last).collect::<Vec<_>>(), "none lost");
        assert_eq!(kek.current_version(), last);
    }

    #[test]
    fn rotate_adds_a_current_version_and_remove_refuses_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.json");
        FileKek::init(&path).unwrap();
        let kek = FileKek::load(&path).unwrap();
        let (_, old) = kek.wrap(&random_key()).unwrap();
        assert_eq!(kek.rotate().unwrap(), 2);
        assert_eq!((kek.current_version(), kek.versions()), (2, vec![1, 2]));
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Another process's view catches up on refresh.
        let other = FileKek::load(&path).unwrap();
        kek.unwrap(1, &old).unwrap();
        assert!(kek.remove(2).is_err(), "the current version stays");
        kek.remove(1).unwrap();
        assert_eq!(kek.versions(), vec![2]);
        std::thread::sleep(std::time::Duration::from_millis(10));
        other.refresh().unwrap();
        assert_eq!(other.versions(), vec![2]);
    }
}
