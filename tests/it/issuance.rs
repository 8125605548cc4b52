//! Certificates end to end against a real ACME server (Debian's Pebble):
//! declared through the API, issued by a worker, served HTTP-01 by the api.

use std::time::Duration;

use crate::support;
use crate::support::api::{assert_only_ciphertext, verify_chain};
use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use mongodb::bson::doc;
use serde_json::json;

#[tokio::test]
async fn a_certificate_declared_through_the_api_is_issued_by_pebble() {
    let cluster = Cluster::builder("issuance")
        .pebble(PebbleOptions::default())
        .workers(1)
        .start()
        .await;
    let (api, pebble, db) = (&cluster.api, cluster.pebble(), &cluster.db);
    let (api_proc, worker) = (&cluster.apis[0], &cluster.workers[0]);

    let (p, issuer) = api.project_with_issuer("shop", pebble).await;
    api.grant(&p, &["shop.example.test"]).await;
    let (path, issued) = api
        .issue(
            &p,
            json!({
                "name": "www",
                "dns_names": ["www.shop.example.test", "shop.example.test"],
                "issuer_id": issuer,
                "key_algorithm": "ecdsa-p256",
            }),
            Duration::from_secs(90),
        )
        .await;

    // The chain verifies against Pebble's issuing root.
    let root = pebble.issuing_root_pem().await;
    let chain = issued["chain_pem"].as_str().unwrap();
    verify_chain(&root, chain).unwrap();
    let leaf = certautopilot::domain::certs::inspect_chain(chain).unwrap();
    assert_eq!(issued["fingerprint_sha256"], leaf.fingerprint_sha256);
    assert_eq!(issued["serial"], leaf.serial);
    let mut names = leaf.dns_names.clone();
    names.sort();
    assert_eq!(names, vec!["shop.example.test", "www.shop.example.test"]);

    // Its key matches, and reading it is audited.
    let key = api.get_text(&format!("{path}/private-key")).await;
    assert_eq!(
        certautopilot::domain::certs::public_key_der(&key).unwrap(),
        leaf.public_key_der
    );

    // MongoDB holds only its ciphertext.
    let store = db.store().await;
    assert_only_ciphertext(&store, &key).await;
    // The HTTP-01 key authorizations went once the CA had decided.
    assert_eq!(
        store
            .collection("challenges")
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        0
    );
    // Metrics: certificates by status (counted in the background, shared
    // by every replica: soon, not at once), orders in flight, expiry, ACME
    // requests.
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            api_proc
                .metric("certautopilot_certificates", "status=\"issued\"")
                .await
                == Some(1.0)
        })
        .await,
        "one issued certificate counted"
    );
    assert_eq!(
        api_proc
            .metric("certautopilot_acme_orders_in_flight", "")
            .await,
        Some(0.0)
    );
    let expiry = api_proc
        .metric(
            "certautopilot_certificate_expiry_timestamp_seconds",
            issued["id"].as_str().unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(expiry as i64, leaf.not_after_ms / 1000);
    assert!(
        worker
            .metric(
                "certautopilot_acme_requests_total",
                "endpoint=\"order-plz\""
            )
            .await
            .unwrap()
            >= 1.0
    );

    let (_, orders) = api.get(&format!("{path}/orders")).await;
    assert_eq!(
        orders["items"].as_array().unwrap().len(),
        1,
        "one ACME order: {orders}"
    );
    let actions: Vec<String> = store
        .collection("audit")
        .distinct("action", doc! {})
        .await
        .unwrap()
        .into_iter()
        .filter_map(|b| b.as_str().map(str::to_string))
        .collect();
    for a in [
        "project.created",
        "issuer.created",
        "certificate.created",
        "certificate.issued",
        "key.released",
        "token.created",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}

#[tokio::test]
async fn an_account_that_cannot_be_read_is_not_registered_again() {
    let cluster = Cluster::builder("unreadable_account")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("accounts", cluster.pebble()).await;
    api.grant(&p, &["accounts.example.test"]).await;
    let (path, _) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.accounts.example.test"], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let worker = &cluster.workers[0];
    // Account registrations the CA accepted (Pebble's new-account path).
    let registered = || {
        worker.metric(
            "certautopilot_acme_requests_total",
            "endpoint=\"sign-me-up\",status=\"201\"",
        )
    };
    assert_eq!(
        registered().await,
        Some(1.0),
        "one account, registered once"
    );

    // The stored account no longer opens (as when the KEK is away).
    let store = cluster.db.store().await;
    store
        .collection("keys")
        .update_one(
            doc! { "_id": format!("acme-accounts/{issuer}") },
            doc! { "$set": { "ciphertext": mongodb::bson::Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: vec![0u8; 64] } } },
        )
        .await
        .unwrap();
    let (status, body) = api.post(&format!("{path}/issue"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    api.wait_for(&path, Duration::from_secs(30), "the issue fails", |c| {
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("ACME account cannot be read"))
    })
    .await;
    assert_eq!(
        registered().await,
        Some(1.0),
        "no second account registered"
    );
}

#[tokio::test]
async fn a_private_key_is_served_only_when_its_read_is_audited() {
    let cluster = Cluster::builder("audited_key_read")
        .pebble(PebbleOptions::default())
        .workers(1)
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("keys", cluster.pebble()).await;
    api.grant(&p, &["keys.example.test"]).await;
    let (path, _) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.keys.example.test"], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let reads = || async {
        api.get(&format!("/projects/{p}/audit?action=key.released"))
            .await
            .1["items"]
            .as_array()
            .unwrap()
            .len()
    };

    // The audit log cannot take another record (its head is damaged).
    let store = cluster.db.store().await;
    let heads = store.collection("audit_head");
    let head = heads
        .find_one(doc! { "_id": "head" })
        .await
        .unwrap()
        .unwrap();
    heads
        .update_one(
            doc! { "_id": "head" },
            doc! { "$set": { "seq": "damaged" } },
        )
        .await
        .unwrap();
    let refused = api.get_answer(&format!("{path}/private-key")).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(!refused.text.contains("PRIVATE KEY"), "{}", refused.text);

    heads
        .replace_one(doc! { "_id": "head" }, head)
        .await
        .unwrap();
    assert_eq!(reads().await, 0, "the refused read left no record");
    let served = api.get_answer(&format!("{path}/private-key")).await;
    assert_eq!(served.status, 200, "{}", served.text);
    assert!(served.text.contains("PRIVATE KEY"));
    assert_eq!(reads().await, 1, "the read is on record");
}
