//! Revocation against a real ACME server (Pebble): the CA records the
//! revocation with its reason, the API and the audit log show it, and a
//! certificate whose policy asks for it is replaced.

use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use serde_json::json;

#[tokio::test]
async fn a_revocation_reaches_the_ca_shows_in_the_api_and_audit_and_replaces_when_asked() {
    let cluster = Cluster::builder("revocation")
        .pebble(PebbleOptions::default())
        .workers(1)
        .start()
        .await;
    let (api, pebble) = (&cluster.api, cluster.pebble());
    let (p, issuer) = api.project_with_issuer("revoking", pebble).await;
    api.grant(&p, &["revoke.example.test"]).await;
    let create = |name: &str, replace: bool| {
        json!({ "name": name, "dns_names": [format!("{name}.revoke.example.test")],
                "issuer_id": issuer, "replace_on_revoke": replace })
    };

    // Kept revoked: its policy does not ask for a replacement.
    let (path, issued) = api
        .issue(&p, create("kept", false), Duration::from_secs(60))
        .await;
    let serial = issued["serial"].as_str().unwrap().to_string();
    assert_eq!(pebble.certificate_status(&serial).await["Status"], "Valid");

    // Bad input first: an unknown reason, and a field that does not exist.
    let (status, problem) = api
        .post(&format!("{path}/revoke"), json!({ "reason": "boredom" }))
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("keyCompromise"), "{problem}");
    let (status, _) = api
        .post(&format!("{path}/revoke"), json!({ "why": "x" }))
        .await;
    assert!((400..500).contains(&status));

    let (status, accepted) = api
        .post(
            &format!("{path}/revoke"),
            json!({ "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    let revoked = api
        .wait_for(&path, Duration::from_secs(60), "revoked", |c| {
            c["status"] == "revoked"
        })
        .await;
    assert_eq!(revoked["revocation_reason"], "keyCompromise");
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(revoked["serial"], serial.as_str(), "not replaced");
    let at_ca = pebble.certificate_status(&serial).await;
    assert_eq!(at_ca["Status"], "Revoked", "{at_ca}");
    assert_eq!(at_ca["Reason"], 1, "keyCompromise is reason 1: {at_ca}");
    // Asking again changes nothing.
    let (status, again) = api
        .post(
            &format!("{path}/revoke"),
            json!({ "reason": "keyCompromise" }),
        )
        .await;
    assert_eq!(status, 202);
    assert_eq!(again["job_id"], accepted["job_id"]);
    let (_, audit) = api
        .get(&format!("/projects/{p}/audit?action=certificate.revoked"))
        .await;
    let records = audit["items"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["details"]["serial"], serial.as_str());
    assert_eq!(records[0]["details"]["reason"], "keyCompromise");

    // Replaced: the default policy.
    let (path, issued) = api
        .issue(&p, create("replaced", true), Duration::from_secs(60))
        .await;
    let old = issued["serial"].as_str().unwrap().to_string();
    let (status, _) = api
        .post(&format!("{path}/revoke"), json!({ "reason": "superseded" }))
        .await;
    assert_eq!(status, 202);
    let replaced = api
        .wait_for(&path, Duration::from_secs(60), "replaced", |c| {
            c["status"] == "issued" && c["serial"].as_str().is_some_and(|s| s != old)
        })
        .await;
    assert!(
        replaced["revoked_at"].is_null(),
        "the new certificate is not revoked: {replaced}"
    );
    assert_eq!(pebble.certificate_status(&old).await["Status"], "Revoked");
}
