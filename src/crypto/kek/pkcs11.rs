//! The `pkcs11` KEK provider: KEKs are AES-256 keys generated inside an HSM
//! (non-extractable, sensitive), labelled `certautopilot-kek-v<N>`; data keys
//! are wrapped and unwrapped by the HSM with AES-GCM, so a KEK never reaches
//! this process. The highest version on the token is current.
//!
//! The module is loaded once per process; the token is found by label and
//! logged into on first use. A failure closes the session and finalizes the
//! library, and the next call initializes it afresh, so a token that goes
//! away makes the process unready (the readiness monitor's canary fails)
//! and one that comes back is picked up again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use rand::RngCore;
use zeroize::Zeroizing;

use super::{wrap_aad, KekError, KekProvider, SecretKey, CHECK_BLOCK, KEY_LEN};

const LABEL_PREFIX: &str = "certautopilot-kek-v";
const IV_LEN: usize = 12;

pub struct Pkcs11Kek {
    module: PathBuf,
    token_label: String,
    pin: Zeroizing<String>,
    ctx: Pkcs11,
    conn: Mutex<Option<Connection>>,
}

/// A logged-in session and the KEK objects found on the token.
struct Connection {
    session: Session,
    keys: BTreeMap<u32, ObjectHandle>,
}

fn err(context: &str, e: impl std::fmt::Display) -> KekError {
    KekError::Pkcs11(format!("{context}: {e}"))
}

impl Pkcs11Kek {
    /// Loads the module; the token is reached on first use. One per process:
    /// a PKCS#11 library is initialized once per process.
    pub fn new(
        module: &Path,
        token_label: &str,
        pin: Zeroizing<String>,
    ) -> Result<Pkcs11Kek, KekError> {
        if !module.is_file() {
            return Err(KekError::Pkcs11(format!(
                "module {} does not exist (set CAP_PKCS11_MODULE)",
                module.display()
            )));
        }
        let ctx = Pkcs11::new(module).map_err(|e| err("loading the module", e))?;
        Ok(Pkcs11Kek {
            module: module.to_path_buf(),
            token_label: token_label.to_string(),
            pin,
            ctx,
            conn: Mutex::new(None),
        })
    }

    fn connect(&self) -> Result<Connection, KekError> {
        use cryptoki::error::{Error, RvError};
        let ctx = &self.ctx;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(err("initializing the module", e)),
        }
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| err("listing slots", e))?;
        let slot = slots
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|t| t.label().trim() == self.token_label)
                    .unwrap_or(false)
            })
            .ok_or_else(|| {
                KekError::Pkcs11(format!("token {:?} is not present", self.token_label))
            })?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| err("opening a session", e))?;
        session
            .login(UserType::User, Some(&AuthPin::from(self.pin.as_str())))
            .map_err(|e| err("logging in to the token (check CAP_PKCS11_PIN)", e))?;
        let mut conn = Connection {
            session,
            keys: BTreeMap::new(),
        };
        conn.load_keys()?;
        Ok(conn)
    }

    /// Runs `op` on a connection, connecting first if needed; a failure
    /// drops the connection so that the next call starts afresh.
    fn with<T>(
        &self,
        op: impl FnOnce(&mut Connection) -> Result<T, KekError>,
    ) -> Result<T, KekError> {
        let mut guard = self.conn.lock().unwrap();
        if guard.is_none() {
            match self.connect() {
                Ok(conn) => *guard = Some(conn),
                Err(e) => {
                    let _ = self.ctx.clone().finalize();
                    return Err(e);
                }
            }
        }
        let result = op(guard.as_mut().expect("connected"));
        if matches!(result, Err(KekError::Pkcs11(_) | KekError::Refused(_))) {
            // Start afresh next time: the library re-reads its tokens.
            *guard = None;
            let _ = self.ctx.clone().finalize();
        }
        result
    }

    fn source(&self) -> String {
        format!("PKCS#11 token {:?}", self.token_label)
    }
}

impl Connection {
    fn load_keys(&mut self) -> Result<(), KekError> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
        ];
        let handles = self
            .session
            .find_objects(&template)
            .map_err(|e| err("finding KEKs", e))?;
        self.keys.clear();
        for handle in handles {
            let attrs = self
                .session
                .get_attributes(
                    handle,
                    &[
                        AttributeType::Label,
                        AttributeType::Sensitive,
                        AttributeType::Extractable,
                    ],
                )
                .map_err(|e| err("reading a KEK's attributes", e))?;
            let (mut version, mut sensitive, mut extractable) = (None, None, None);
            for attr in attrs {
                match attr {
                    Attribute::Label(label) => {
                        version = String::from_utf8_lossy(&label)
                            .strip_prefix(LABEL_PREFIX)
                            .and_then(|v| v.parse::<u32>().ok())
                    }
                    Attribute::Sensitive(b) => sensitive = Some(b),
                    Attribute::Extractable(b) => extractable = Some(b),
                    _ => {}
                }
            }
            let Some(version) = version else { continue };
            guard_kek(version, sensitive, extractable)?;
            self.keys.insert(version, handle);
        }
        Ok(())
    }

    fn current(&self) -> Option<u32> {
        self.keys.keys().max().copied()
    }

    fn key(&self, version: u32, source: String) -> Result<ObjectHandle, KekError> {
        self.keys
            .get(&version)
            .copied()
            .ok_or(KekError::MissingVersion {
                version,
                source_name: source,
            })
    }
}

/// A KEK must never leave the token: only a key that is sensitive and not
/// extractable is used (a key made by `kek init` or `kek rotate` is both).
fn guard_kek(
    version: u32,
    sensitive: Option<bool>,
    extractable: Option<bool>,
) -> Result<(), KekError> {
    let label = format!("{LABEL_PREFIX}{version}");
    let refuse = |what: &str| {
        Err(KekError::Pkcs11(format!(
            "KEK {label} is refused: {what}; a KEK must be CKA_SENSITIVE=true and CKA_EXTRACTABLE=false (replace the object with one made so)"
        )))
    };
    match (sensitive, extractable) {
        (Some(true), Some(false)) => Ok(()),
        (Some(false), _) => refuse("it is CKA_SENSITIVE=false"),
        (_, Some(true)) => refuse("it is CKA_EXTRACTABLE=true"),
        (None, _) => refuse("the token does not report CKA_SENSITIVE"),
        (_, None) => refuse("the token does not report CKA_EXTRACTABLE"),
    }
}

impl KekProvider for Pkcs11Kek {
    fn describe(&self) -> String {
        format!("{} via {}", self.source(), self.module.display())
    }

    fn current_version(&self) -> u32 {
        self.with(|c| Ok(c.current().unwrap_or(0))).unwrap_or(0)
    }

    fn versions(&self) -> Vec<u32> {
        self.with(|c| Ok(c.keys.keys().copied().collect()))
            .unwrap_or_default()
    }

    fn wrap(&self, data_key: &[u8; KEY_LEN]) -> Result<(u32, Vec<u8>), KekError> {
        let source = self.source();
        self.with(|c| {
            let version = c.current().ok_or_else(|| {
                KekError::Refused(format!(
                    "{source} holds no certautopilot KEK: run `certautopilot kek init`"
                ))
            })?;
            let key = c.key(version, source.clone())?;
            let mut iv = [0u8; IV_LEN];
            rand::rng().fill_bytes(&mut iv);
            let aad = wrap_aad(version);
            let params =
                GcmParams::new(&mut iv, &aad, 128.into()).map_err(|e| err("GCM parameters", e))?;
            let sealed = c
                .session
                .encrypt(&Mechanism::AesGcm(params), key, data_key)
                .map_err(|e| err("wrapping a data key", e))?;
            // The IV the token used: one in FIPS mode makes its own and writes
            // it back over ours (SoftHSM keeps ours).
            Ok((version, [iv.as_slice(), &sealed].concat()))
        })
    }

    fn unwrap(&self, version: u32, wrapped: &[u8]) -> Result<SecretKey, KekError> {
        let source = self.source();
        self.with(|c| {
            if !c.keys.contains_key(&version) {
                c.load_keys()?;
            }
            let key = c.key(version, source)?;
            if wrapped.len() <= IV_LEN {
                return Err(KekError::UnwrapFailed { version });
            }
            let (iv, sealed) = wrapped.split_at(IV_LEN);
            let mut iv: [u8; IV_LEN] = iv.try_into().expect("split at IV_LEN");
            let aad = wrap_aad(version);
            let params =
                GcmParams::new(&mut iv, &aad, 128.into()).map_err(|e| err("GCM parameters", e))?;
            let plain = Zeroizing::new(
                c.session
                    .decrypt(&Mechanism::AesGcm(params), key, sealed)
                    // The token answered: the data is wrong, not the token.
                    .map_err(|_| KekError::UnwrapFailed { version })?,
            );
            let key: [u8; KEY_LEN] = plain
                .as_slice()
                .try_into()
                .map_err(|_| KekError::UnwrapFailed { version })?;
            Ok(Zeroizing::new(key))
        })
    }

    fn refresh(&self) -> Result<(), KekError> {
        self.with(|c| c.load_keys())
    }

    fn check_value(&self, version: u32) -> Result<[u8; CHECK_BLOCK.len()], KekError> {
        let source = self.source();
        self.with(|c| {
            if !c.keys.contains_key(&version) {
                c.load_keys()?;
            }
            let key = c.key(version, source)?;
            // One block under ECB: the same value the file provider computes
            // for the same key.
            let value = c
                .session
                .encrypt(&Mechanism::AesEcb, key, &CHECK_BLOCK)
                .map_err(|e| err("computing a KEK check value", e))?;
            value
                .try_into()
                .map_err(|_| KekError::Pkcs11("the token's check value is not one block".into()))
        })
    }

    fn rotate(&self) -> Result<u32, KekError> {
        self.with(|c| {
            c.load_keys()?;
            let version = c.current().unwrap_or(0) + 1;
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen((KEY_LEN as u64).into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(format!("{LABEL_PREFIX}{version}").into_bytes()),
            ];
            let handle = c
                .session
                .generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| err("generating a KEK", e))?;
            c.keys.insert(version, handle);
            Ok(version)
        })
    }

    fn remove(&self, version: u32) -> Result<(), KekError> {
        let source = self.source();
        self.with(|c| {
            c.load_keys()?;
            if c.current() == Some(version) {
                return Err(KekError::Refused(format!(
                    "KEK version {version} is current: rotate to a new version first"
                )));
            }
            let handle = c.key(version, source)?;
            c.session
                .destroy_object(handle)
                .map_err(|e| err("destroying a KEK", e))?;
            c.keys.remove(&version);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_sensitive_unextractable_kek_is_used() {
        guard_kek(1, Some(true), Some(false)).unwrap();
        for (sensitive, extractable, named) in [
            (Some(false), Some(false), "CKA_SENSITIVE=false"),
            (Some(true), Some(true), "CKA_EXTRACTABLE=true"),
            (None, Some(false), "does not report CKA_SENSITIVE"),
            (Some(true), None, "does not report CKA_EXTRACTABLE"),
        ] {
            let refused = guard_kek(3, sensitive, extractable)
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(named) && refused.contains("certautopilot-kek-v3"),
                "{refused}"
            );
        }
    }
}
