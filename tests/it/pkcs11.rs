//! The `pkcs11` KEK provider against SoftHSM2 (Debian's `softhsm2`): wrap,
//! unwrap and rotate inside the token (and a KEK that could leave it
//! refused), and `/readyz` going 503 while the token is unavailable.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{self, OutputWithin, Proc, TestDb};
use certautopilot::crypto::kek::{random_key, KekError, KekProvider, Pkcs11Kek};
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "123456";

/// A SoftHSM2 configuration with one initialized token labelled
/// `certautopilot`, in `dir`. Returns the configuration file.
fn softhsm(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "certautopilot",
            "--so-pin",
            "0000",
            "--pin",
            PIN,
        ])
        .env("SOFTHSM2_CONF", &conf)
        .output()
        .expect("softhsm2-util (Debian package softhsm2; scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conf
}

#[test]
fn wraps_unwraps_and_rotates_inside_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm(dir.path());
    // The only test in this binary that loads the module in-process.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let kek = Pkcs11Kek::new(
        Path::new(MODULE),
        "certautopilot",
        Zeroizing::new(PIN.into()),
    )
    .unwrap();

    let none = kek.wrap(&random_key()).unwrap_err().to_string();
    assert!(
        none.contains("kek init"),
        "an empty token says what to do: {none}"
    );
    assert_eq!(kek.rotate().unwrap(), 1);
    kek.check().unwrap();
    let dek = random_key();
    let (v1, wrapped) = kek.wrap(&dek).unwrap();
    assert_eq!(v1, 1);
    assert_eq!(*kek.unwrap(1, &wrapped).unwrap(), *dek);

    assert_eq!(kek.rotate().unwrap(), 2);
    assert_eq!((kek.current_version(), kek.versions()), (2, vec![1, 2]));
    assert_eq!(
        kek.wrap(&dek).unwrap().0,
        2,
        "new data keys use the new version"
    );
    assert_eq!(
        *kek.unwrap(1, &wrapped).unwrap(),
        *dek,
        "old ones still open"
    );

    let mut damaged = wrapped.clone();
    damaged[20] ^= 1;
    assert!(matches!(
        kek.unwrap(1, &damaged),
        Err(KekError::UnwrapFailed { version: 1 })
    ));
    let missing = kek.unwrap(9, &wrapped).unwrap_err().to_string();
    assert!(missing.contains("KEK version 9"), "{missing}");
    assert!(kek.remove(2).is_err(), "the current version stays");
    kek.remove(1).unwrap();
    assert_eq!(kek.versions(), vec![2]);

    // A KEK that could leave the token is refused, naming the attribute:
    // one made here through the module, extractable.
    let raw = cryptoki::context::Pkcs11::new(MODULE).unwrap();
    // Already initialized by `kek` (the library is one per process).
    let _ = raw.initialize(cryptoki::context::CInitializeArgs::new(
        cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
    ));
    let slot = raw
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| raw.get_token_info(*s).unwrap().label().trim() == "certautopilot")
        .unwrap();
    let session = raw.open_rw_session(slot).unwrap();
    // The login is the token's, shared with `kek`'s session.
    let _ = session.login(
        cryptoki::session::UserType::User,
        Some(&cryptoki::types::AuthPin::from(PIN)),
    );
    use cryptoki::object::{Attribute, KeyType, ObjectClass};
    session
        .generate_key(
            &cryptoki::mechanism::Mechanism::AesKeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::ValueLen(32.into()),
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Label(b"certautopilot-kek-v3".to_vec()),
            ],
        )
        .unwrap();
    let refused = kek.refresh().unwrap_err().to_string();
    assert!(
        refused.contains("certautopilot-kek-v3") && refused.contains("CKA_EXTRACTABLE=true"),
        "{refused}"
    );
    assert!(
        kek.wrap(&dek).is_err(),
        "nothing is wrapped while the token holds it"
    );
    drop(session);
    drop(raw);
}

#[tokio::test]
async fn readyz_is_503_while_the_token_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let conf = softhsm(dir.path());
    let conf_s = conf.to_str().unwrap();
    let db = TestDb::migrated("pkcs11").await;
    let env = [
        ("SOFTHSM2_CONF", conf_s),
        ("CAP_KEK_PROVIDER", "pkcs11"),
        ("CAP_PKCS11_MODULE", MODULE),
        ("CAP_PKCS11_PIN", PIN),
        ("CAP_READYZ_GRACE_SECS", "0"),
    ];
    let init = Command::new(support::bin())
        .args(["kek", "init"])
        .env_clear()
        .envs(env)
        .output_within_limit()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );

    let api = Proc::start("api", &db, "hsm-api", &env);
    let status = || async {
        match reqwest::get(api.url("/readyz")).await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    };
    let ready =
        support::wait_until(Duration::from_secs(20), || async { status().await == 200 }).await;
    assert!(ready, "ready with the token; log:\n{}", api.log_text());

    // The token goes away (its directory is moved): not ready, with the reason.
    let tokens = dir.path().join("tokens");
    let away = dir.path().join("tokens-away");
    std::fs::rename(&tokens, &away).unwrap();
    std::fs::create_dir(&tokens).unwrap();
    let unready =
        support::wait_until(Duration::from_secs(20), || async { status().await == 503 }).await;
    assert!(unready, "503 without the token; log:\n{}", api.log_text());
    let body: serde_json::Value = reqwest::get(api.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["reason"], "KEK unreachable", "{body}");

    // It comes back: ready again, without a restart.
    std::fs::remove_dir(&tokens).unwrap();
    std::fs::rename(&away, &tokens).unwrap();
    let back =
        support::wait_until(Duration::from_secs(20), || async { status().await == 200 }).await;
    assert!(
        back,
        "ready again once the token is back; log:\n{}",
        api.log_text()
    );
}
