//! Three `api` processes behind a real load balancer (Debian's haproxy,
//! health-checking `GET /healthz`) on Pebble's HTTP-01 port, two workers, and
//! Pebble rejecting 5 % of nonces: 50 certificates, every one issued, no job
//! failing; one checked all the way down to its key.

use std::time::Duration;

use crate::support;
use crate::support::api::{assert_only_ciphertext, verify_chain};
use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use mongodb::bson::doc;
use serde_json::json;

#[tokio::test]
async fn fifty_certificates_through_a_load_balancer_with_bad_nonces_all_issue() {
    let cluster = Cluster::builder("lb")
        .pebble(PebbleOptions::default())
        .apis(3)
        .workers(2)
        .start()
        .await;
    let (api, pebble, db) = (&cluster.api, cluster.pebble(), &cluster.db);

    let (_, project) = api.post("/projects", json!({ "name": "fleet" })).await;
    let p = project["id"].as_str().unwrap().to_string();
    api.grant(&p, &["fleet.example.test"]).await;
    let (_, issuer) = api.post(
        &format!("/projects/{p}/issuers"),
        json!({ "name": "pebble", "directory_url": pebble.directory, "contact": "ops@example.test", "ca_bundle_pem": pebble.listener_ca_pem }),
    )
    .await;
    let total = 50;
    let mut ids = Vec::new();
    for i in 0..total {
        let (status, cert) = api.post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": format!("site-{i}"), "dns_names": [format!("site-{i}.fleet.example.test")], "issuer_id": issuer["id"] }),
        )
        .await;
        assert_eq!(status, 201, "{cert}");
        ids.push(cert["id"].as_str().unwrap().to_string());
    }

    let store = db.store().await;
    let all = support::wait_until(Duration::from_secs(300), || async {
        store
            .collection("certificates")
            .count_documents(doc! { "status": "issued" })
            .await
            .unwrap()
            == total
    })
    .await;
    let statuses = support::documents(
        &store,
        "certificates",
        doc! { "status": { "$ne": "issued" } },
    )
    .await;
    assert!(all, "every certificate issued; not yet: {statuses:?}");
    // Zero failures: no job ever failed an attempt.
    let retried = store
        .collection("jobs")
        .count_documents(doc! { "kind": "issue-certificate", "attempt": { "$gt": 1 } })
        .await
        .unwrap();
    assert_eq!(retried, 0, "no issue job needed a second attempt");
    assert_eq!(
        store
            .collection("orders")
            .count_documents(doc! {})
            .await
            .unwrap(),
        total,
        "one order each"
    );
    // Whichever replica the balancer picked answered: all three did.
    for a in &cluster.apis {
        let served = a
            .metric("certautopilot_acme_challenges_served_total", "")
            .await
            .unwrap_or(0.0);
        assert!(served > 0.0, "{} answered challenges", a.id);
    }

    // One of them, all the way down: chain to Pebble's root, key, ciphertext.
    let path = format!("/projects/{p}/certificates/{}", ids[0]);
    let (_, cert) = api.get(&path).await;
    let chain = cert["chain_pem"].as_str().unwrap();
    verify_chain(&pebble.issuing_root_pem().await, chain).unwrap();
    let key = api.get_text(&format!("{path}/private-key")).await;
    let leaf = certautopilot::domain::certs::inspect_chain(chain).unwrap();
    assert_eq!(
        certautopilot::domain::certs::public_key_der(&key).unwrap(),
        leaf.public_key_der
    );
    assert_only_ciphertext(&store, &key).await;
}
