//! A worker SIGKILLed at each stage of an ACME order: a peer finishes the
//! *same* order, and across the run orders opened = certificates issued.

use std::time::Duration;

use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use crate::support::{self, Proc};
use mongodb::bson::doc;
use nix::sys::signal::Signal;
use serde_json::json;

const STAGES: [&str; 4] = [
    "created",
    "challenges_published",
    "validating",
    "finalizing",
];

#[tokio::test]
async fn a_peer_finishes_the_same_order_after_a_kill_at_every_stage() {
    let cluster = Cluster::builder("orders")
        .pebble(PebbleOptions::default())
        .start()
        .await;
    let (api, pebble, db) = (&cluster.api, cluster.pebble(), &cluster.db);

    // One worker per stage, each pausing right after recording its stage.
    let fast = [
        ("CAP_WORKER_PRESENCE_SECS", "3"),
        ("CAP_CLAIM_POLL_MS", "100"),
        ("CAP_WORKER_CONCURRENCY", "1"),
    ];
    let doomed: Vec<Proc> = STAGES
        .iter()
        .map(|stage| {
            let mut env = fast.to_vec();
            env.push(("CAP_FAULT_PAUSE_AFTER_STAGE", stage));
            Proc::start("worker", db, &format!("doomed-{stage}"), &env)
        })
        .collect();

    let (_, project) = api.post("/projects", json!({ "name": "kills" })).await;
    let p = project["id"].as_str().unwrap().to_string();
    api.grant(&p, &["kills.example.test"]).await;
    let (_, issuer) = api.post(
        &format!("/projects/{p}/issuers"),
        json!({ "name": "pebble", "directory_url": pebble.directory, "contact": "ops@example.test", "ca_bundle_pem": pebble.listener_ca_pem }),
    )
    .await;
    let mut certs = Vec::new();
    for i in 0..STAGES.len() {
        let (status, cert) = api.post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": format!("c{i}"), "dns_names": [format!("c{i}.kills.example.test")], "issuer_id": issuer["id"] }),
        )
        .await;
        assert_eq!(status, 201, "{cert}");
        certs.push(cert["id"].as_str().unwrap().to_string());
    }

    // Each doomed worker holds one job, paused at its stage: kill them all there.
    for w in &doomed {
        let paused = support::wait_until(Duration::from_secs(60), || async {
            !w.log_lines_with(&["fault injection: pausing"]).is_empty()
        })
        .await;
        assert!(paused, "{} reached its stage; log:\n{}", w.id, w.log_text());
    }
    let store = db.store().await;
    let at_kill = support::documents(&store, "orders", doc! {}).await;
    let orders_at_kill: Vec<(String, String)> = at_kill
        .iter()
        .map(|o| {
            (
                o.get_str("certificate_id").unwrap().to_string(),
                o.get_str("url").unwrap().to_string(),
            )
        })
        .collect();
    let stages_at_kill: Vec<&str> = at_kill
        .iter()
        .map(|o| o.get_str("stage").unwrap())
        .collect();
    for stage in STAGES {
        assert!(
            stages_at_kill.contains(&stage),
            "an order stopped at {stage}: {stages_at_kill:?}"
        );
    }
    for w in &doomed {
        w.signal(Signal::SIGKILL);
    }
    drop(doomed);

    let survivor = Proc::start("worker", db, "survivor", &fast);
    for id in &certs {
        let path = format!("/projects/{p}/certificates/{id}");
        let issued = support::wait_until(Duration::from_secs(90), || async {
            api.get(&path).await.1["status"] == "issued"
        })
        .await;
        assert!(issued, "{id} issued; log:\n{}", survivor.log_text());
    }

    // The same orders, and no others: orders opened = certificates issued.
    let after = support::documents(&store, "orders", doc! {}).await;
    assert_eq!(after.len(), certs.len(), "one order per certificate");
    for o in &after {
        assert_eq!(o.get_str("stage").unwrap(), "valid");
        let key = (
            o.get_str("certificate_id").unwrap().to_string(),
            o.get_str("url").unwrap().to_string(),
        );
        assert!(
            orders_at_kill.contains(&key),
            "the order finished is the one begun: {key:?}"
        );
    }
    assert!(
        survivor
            .log_lines_with(&["opened an ACME order"])
            .is_empty(),
        "the survivor opened no order of its own"
    );
    assert_eq!(
        survivor.log_lines_with(&["resuming the ACME order"]).len(),
        certs.len()
    );
}
