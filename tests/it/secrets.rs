//! Secrets at rest against a real server: nothing readable in the database.

use std::sync::Arc;

use crate::support::api::raw_documents;
use crate::support::TestDb;
use certautopilot::crypto::kek::FileKek;
use certautopilot::crypto::secrets::{SecretError, SecretRef, Secrets};
use mongodb::bson::doc;

const PEM: &[u8] = b"-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n";

#[tokio::test]
async fn stored_secrets_leave_no_plaintext_in_any_collection() {
    let db = TestDb::migrated("secrets").await;
    let store = db.store().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    FileKek::init(&path).unwrap();
    let secrets = Secrets::new(store.clone(), Arc::new(FileKek::load(&path).unwrap()));

    let raw_key = [0x5au8; 32];
    secrets
        .put(&SecretRef::system("cert-1"), PEM)
        .await
        .unwrap();
    secrets
        .put(&SecretRef::system("account-1"), &raw_key)
        .await
        .unwrap();
    assert_eq!(
        secrets
            .get(&SecretRef::system("cert-1"))
            .await
            .unwrap()
            .as_slice(),
        PEM
    );
    assert_eq!(
        secrets
            .get(&SecretRef::system("account-1"))
            .await
            .unwrap()
            .as_slice(),
        raw_key
    );

    // A raw scan of every collection: no PEM marker, no raw key bytes.
    for (name, d) in raw_documents(&store).await {
        let bytes = mongodb::bson::to_vec(&d).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "PEM marker in {name}: {d}"
        );
        assert!(
            !bytes.windows(16).any(|w| w == &raw_key[..16]),
            "raw key bytes in {name}"
        );
    }

    // A ciphertext copied onto another record fails with a clear error.
    let keys = store.collection("keys");
    let mut stolen = keys
        .find_one(doc! { "_id": "cert-1" })
        .await
        .unwrap()
        .unwrap();
    stolen.insert("_id", "cert-2");
    keys.insert_one(stolen).await.unwrap();
    let err = secrets.get(&SecretRef::system("cert-2")).await.unwrap_err();
    assert!(matches!(err, SecretError::Envelope(_)), "{err}");
    assert!(err.to_string().contains("another record"), "{err}");

    // Without the right KEK: an error naming the version it needs.
    let other = dir.path().join("other.json");
    FileKek::init(&other).unwrap();
    let wrong = Secrets::new(store.clone(), Arc::new(FileKek::load(&other).unwrap()));
    let err = wrong
        .get(&SecretRef::system("cert-1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("KEK version 1"), "{err}");
}
