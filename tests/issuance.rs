//! Certificates end to end against a real ACME server (Debian's Pebble):
//! declared through the API, issued by a worker, served HTTP-01 by the api.

mod common;

use std::time::Duration;

use common::api::{assert_only_ciphertext, bootstrap_token, verify_chain, ApiClient};
use common::pebble::Pebble;
use common::{Proc, TestDb};
use mongodb::bson::doc;
use serde_json::{json, Value};

async fn wait_issued(api: &ApiClient, path: &str, timeout: Duration) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (_, body) = api.get(path).await;
        if body["status"] == "issued" {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not issued in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_certificate_declared_through_the_api_is_issued_by_pebble() {
    let http = common::free_addr();
    let pebble = Pebble::start(http.port(), 5);
    let db = TestDb::migrated("issuance").await;
    let api_proc = Proc::start(
        "api",
        &db,
        "issue-api",
        &[("CAP_HTTP_ADDR", &http.to_string())],
    );
    let worker = Proc::start(
        "worker",
        &db,
        "issue-worker",
        &[("CAP_CLAIM_POLL_MS", "100")],
    );
    api_proc.wait_alive().await;
    let api = ApiClient::new(format!("http://{http}/v1"), bootstrap_token(&db));

    let (status, project) = api.post("/projects", json!({ "name": "shop" })).await;
    assert_eq!(status, 201, "{project}");
    let p = project["id"].as_str().unwrap();
    let (status, issuer) = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({
                "name": "pebble",
                "directory_url": pebble.directory,
                "contact": "ops@example.test",
                "challenge": "http-01",
                "ca_bundle_pem": pebble.listener_ca_pem,
            }),
        )
        .await;
    assert_eq!(status, 201, "{issuer}");
    let (status, cert) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({
                "name": "www",
                "dns_names": ["www.shop.example.test", "shop.example.test"],
                "issuer_id": issuer["id"],
                "key_algorithm": "ecdsa-p256",
            }),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    let path = format!(
        "/projects/{p}/certificates/{}",
        cert["id"].as_str().unwrap()
    );
    let issued = wait_issued(&api, &path, Duration::from_secs(90)).await;

    // The chain verifies against Pebble's issuing root.
    let root = pebble.issuing_root_pem().await;
    let chain = issued["chain_pem"].as_str().unwrap();
    verify_chain(&root, chain).unwrap();
    let leaf = certautopilot::certs::inspect_chain(chain).unwrap();
    assert_eq!(issued["fingerprint_sha256"], leaf.fingerprint_sha256);
    assert_eq!(issued["serial"], leaf.serial);
    let mut names = leaf.dns_names.clone();
    names.sort();
    assert_eq!(names, vec!["shop.example.test", "www.shop.example.test"]);

    // Its key matches, and reading it is audited.
    let key = api.get_text(&format!("{path}/private-key")).await;
    assert_eq!(
        certautopilot::certs::public_key_der(&key).unwrap(),
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
        common::wait_until(Duration::from_secs(20), || async {
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
            cert["id"].as_str().unwrap(),
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
        "certificate.private_key_read",
        "token.created",
    ] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
}
