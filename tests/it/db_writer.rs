//! What a database writer without the KEK can no longer do (issue 11,
//! section 3): mint an API token by inserting its record, or read another
//! project's private key by moving a reference; and migration 12, which
//! binds what earlier builds stored so that both hold for old data too.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::api::token;
use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use crate::support::TestDb;
use certautopilot::crypto::api_tokens::TokenKey;
use certautopilot::crypto::envelope;
use certautopilot::crypto::reseal::Reseal;
use certautopilot::crypto::secrets::{SecretRef, Secrets};
use certautopilot::store::keys::{self, StoredSecret};
use certautopilot::store::schema::{self, KekMigrations, MigrateError};
use certautopilot::store::tokens;

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token record as the attacker writes it: the SHA-256 of a secret of
/// their choosing, global admin, marked as keyed like real ones.
fn forged_token(secret: &str) -> Document {
    doc! {
        "_id": sha256_hex(secret),
        "id": "tok_forged",
        "global_admin": true,
        "roles": [],
        "description": "inserted straight into MongoDB",
        "revoked": false,
        "keyed": "hmac-sha256",
        "created_at": mongodb::bson::DateTime::now(),
    }
}

#[tokio::test]
async fn a_token_record_inserted_into_the_database_authenticates_nobody() {
    let cluster = Cluster::builder("forged_token").start().await;
    let store = cluster.db.store().await;
    let secret = "cap_chosen-by-the-attacker";
    store
        .collection("tokens")
        .insert_one(forged_token(secret))
        .await
        .unwrap();
    let got = cluster.api.with_token(secret).get_answer("/projects").await;
    assert_eq!(got.status, 401, "{}", got.text);
    // A real token still works.
    assert_eq!(cluster.api.get_answer("/projects").await.status, 200);

    // Nor can a token's record be edited to grant more: a viewer made a
    // global admin, or an expired token revived, no longer authenticates.
    let (status, p) = cluster
        .api
        .post("/projects", serde_json::json!({ "name": "raised" }))
        .await;
    assert_eq!(status, 201, "{p}");
    let (status, viewer) = cluster
        .api
        .post(
            "/tokens",
            serde_json::json!({ "roles": [{ "project_id": p["id"], "role": "viewer" }] }),
        )
        .await;
    assert_eq!(status, 201, "{viewer}");
    let viewer_api = cluster.api.with_token(viewer["token"].as_str().unwrap());
    assert_eq!(viewer_api.get_answer("/projects").await.status, 200);
    store
        .collection("tokens")
        .update_one(
            doc! { "id": viewer["id"].as_str().unwrap() },
            doc! { "$set": { "global_admin": true }, "$unset": { "expires_at": "" } },
        )
        .await
        .unwrap();
    // The api remembers a checked token for CAP_API_TOKEN_CACHE_SECS (5 s):
    // until then it is let in as what it was checked as, a viewer of its
    // one project; from then on, refused.
    let raised = Instant::now();
    let refused = crate::support::wait_until(Duration::from_secs(7), || async {
        let got = viewer_api.get_answer("/projects").await;
        if got.status == 200 {
            let ids: Vec<&str> = got.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, [p["id"].as_str().unwrap()], "never more than a viewer");
        }
        got.status == 401
    })
    .await;
    assert!(
        refused && raised.elapsed() <= Duration::from_secs(6),
        "a raised token authenticates nobody once its check is due again ({:?})",
        raised.elapsed()
    );
}

#[tokio::test]
async fn a_key_reference_moved_to_another_project_does_not_open() {
    let cluster = Cluster::builder("moved_key")
        .pebble(PebbleOptions::default())
        .workers(1)
        .start()
        .await;
    let (admin, pebble) = (&cluster.api, cluster.pebble());
    let mut issued = Vec::new();
    for name in ["alpha", "bravo"] {
        let (p, issuer) = admin.project_with_issuer(name, pebble).await;
        let domain = format!("{name}.example.test");
        admin.grant(&p, &[&domain]).await;
        let (path, cert) = admin
            .issue(
                &p,
                json!({ "name": "www", "dns_names": [domain], "issuer_id": issuer }),
                Duration::from_secs(90),
            )
            .await;
        issued.push((p, path, cert["id"].as_str().unwrap().to_string()));
    }
    let (a, b) = (&issued[0], &issued[1]);
    let a_admin = admin.with_token(&token(&cluster.db, &["--role", "admin", "--project", &a.0]));
    let b_admin = admin.with_token(&token(&cluster.db, &["--role", "admin", "--project", &b.0]));
    let a_key = a_admin.get_text(&format!("{}/private-key", a.1)).await;
    assert!(a_key.contains("PRIVATE KEY"), "{a_key}");

    // The attack: point B's certificate at A's key.
    let store = cluster.db.store().await;
    let certs = store.collection("certificates");
    let a_doc = certs.find_one(doc! { "_id": &a.2 }).await.unwrap().unwrap();
    let a_current = a_doc.get_document("current").unwrap();
    certs
        .update_one(
            doc! { "_id": &b.2 },
            doc! { "$set": {
                "current.key_secret": a_current.get_str("key_secret").unwrap(),
                "current.order_id": a_current.get_str("order_id").unwrap(),
            } },
        )
        .await
        .unwrap();
    let got = b_admin.get_answer(&format!("{}/private-key", b.1)).await;
    assert!(
        !got.text.contains("PRIVATE KEY"),
        "B read A's key: {}",
        got.text
    );
    assert_eq!(got.status, 409, "{}", got.text);
    assert!(got.text.contains("another owner"), "{}", got.text);
    // A still reads its own.
    assert_eq!(
        a_admin.get_text(&format!("{}/private-key", a.1)).await,
        a_key
    );

    // Point B's certificate at A's issuer: the worker looks issuers up in
    // the certificate's own project, so A's ACME account is never used.
    let a_issuer = a_doc.get_str("issuer_id").unwrap();
    certs
        .update_one(
            doc! { "_id": &b.2 },
            doc! { "$set": { "issuer_id": a_issuer } },
        )
        .await
        .unwrap();
    let (status, body) = b_admin.post(&format!("{}/issue", b.1), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let refused = b_admin
        .wait_for(&b.1, Duration::from_secs(60), "refused", |c| {
            c["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no longer exists in project"))
        })
        .await;
    assert_ne!(
        refused["serial"],
        a_doc
            .get_document("current")
            .unwrap()
            .get_str("serial")
            .unwrap()
    );
}

/// Seals `plaintext` as builds before migration 12 did: under the record
/// id alone, without the `bound` mark.
async fn legacy_secret(db: &TestDb, id: &str, plaintext: &[u8]) {
    let store = db.store().await;
    let sealed = envelope::seal(db.kek().as_ref(), &format!("keys/{id}"), plaintext).unwrap();
    let stored = StoredSecret {
        kek_version: sealed.kek_version,
        wrapped_key: sealed.wrapped_key,
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext,
    };
    keys::put(&store, id, &stored).await.unwrap();
    store
        .collection("keys")
        .update_one(doc! { "_id": id }, doc! { "$unset": { "bound": "" } })
        .await
        .unwrap();
}

#[tokio::test]
async fn migration_12_rekeys_tokens_and_seals_what_earlier_builds_stored() {
    let db = TestDb::migrated("migration_12").await;
    let store = db.store().await;
    // What a build before migration 12 left: a token keyed by SHA-256, a
    // certificate key and an account sealed under their ids, an EAB key in
    // the clear.
    let secret = "cap_an-old-token";
    let mut old_token = forged_token(secret);
    old_token.remove("keyed");
    store
        .collection("tokens")
        .insert_one(old_token)
        .await
        .unwrap();
    store
        .collection("orders")
        .insert_one(doc! { "_id": "ord_old", "project_id": "prj_a", "certificate_id": "crt_a", "stage": "valid" })
        .await
        .unwrap();
    store
        .collection("issuers")
        .insert_one(doc! { "_id": "iss_old", "project_id": "prj_a", "eab": { "kid": "kid-1", "hmac_key": "c2VjcmV0LWhtYWM" } })
        .await
        .unwrap();
    legacy_secret(&db, "cert-keys/ord_old", b"-----BEGIN PRIVATE KEY-----old").await;
    legacy_secret(&db, "acme-accounts/iss_old", b"{\"account\":1}").await;
    store
        .collection("schema")
        .update_one(
            doc! { "_id": "version" },
            doc! { "$set": { "version": 11i64 } },
        )
        .await
        .unwrap();

    // Without the KEK the migration cannot do its work, and says so.
    let err = schema::migrate(&store, |_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            MigrateError::NeedsKek {
                version: 12,
                pending: 4
            }
        ),
        "{err}"
    );

    let secrets = Secrets::new(store.clone(), db.kek());
    let reseal = Reseal {
        secrets: secrets.clone(),
    };
    for run in 0..2 {
        schema::migrate_with_kek(&store, Some(&reseal as &dyn KekMigrations), false, |_| {})
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let record_id = TokenKey::new(secrets.clone())
            .record_id(secret)
            .await
            .unwrap();
        let token = tokens::live(&store, &record_id).await.unwrap();
        let all: Vec<Document> = crate::support::documents(&store, "tokens", doc! {}).await;
        assert!(
            token.is_some(),
            "run {run}: the old token still works: {record_id} {all:?}"
        );
        let key = secrets
            .get(&SecretRef::certificate_key("prj_a", "crt_a", "ord_old"))
            .await
            .unwrap();
        assert_eq!(key.as_slice(), b"-----BEGIN PRIVATE KEY-----old");
        let account = secrets
            .get(&SecretRef::acme_account("prj_a", "iss_old"))
            .await
            .unwrap();
        assert_eq!(account.as_slice(), b"{\"account\":1}");
        let eab = secrets
            .get(&SecretRef::eab_key("prj_a", "iss_old"))
            .await
            .unwrap();
        assert_eq!(eab.as_slice(), b"c2VjcmV0LWhtYWM");
        let issuer = store
            .collection("issuers")
            .find_one(doc! { "_id": "iss_old" })
            .await
            .unwrap()
            .unwrap();
        assert!(!issuer.to_string().contains("c2VjcmV0LWhtYWM"), "{issuer}");
        // Bound to their owner: the same record read for another owner fails.
        assert!(secrets
            .get(&SecretRef::certificate_key("prj_b", "crt_a", "ord_old"))
            .await
            .is_err());
        store
            .collection("schema")
            .update_one(
                doc! { "_id": "version" },
                doc! { "$set": { "version": 11i64 } },
            )
            .await
            .unwrap();
    }
}
