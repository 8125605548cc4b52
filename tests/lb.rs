//! Three `api` processes behind a real load balancer (Debian's haproxy,
//! health-checking `GET /healthz`) on Pebble's HTTP-01 port, two workers, and
//! Pebble rejecting 5 % of nonces: 50 certificates, every one issued, no job
//! failing; one checked all the way down to its key.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::api::{assert_only_ciphertext, bootstrap_token, verify_chain, ApiClient};
use common::pebble::Pebble;
use common::{Proc, TestDb};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::json;

struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(front: std::net::SocketAddr, backends: &[std::net::SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server api{i} {b} check inter 500 fall 2 rise 1\n"))
            .collect();
        let conf = format!(
            "global\n    maxconn 1000\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             frontend web\n    bind {front}\n    default_backend apis\n\
             backend apis\n    balance roundrobin\n    option httpchk GET /healthz\n    http-check expect status 200\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; scripts/setup.sh installs it)");
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn fifty_certificates_through_a_load_balancer_with_bad_nonces_all_issue() {
    let front = common::free_addr();
    let pebble = Pebble::start(front.port(), 5);
    let db = TestDb::migrated("lb").await;
    let apis: Vec<Proc> = (0..3)
        .map(|i| Proc::start("api", &db, &format!("lb-api-{i}"), &[]))
        .collect();
    for a in &apis {
        a.wait_alive().await;
    }
    let _haproxy = Haproxy::start(front, &apis.iter().map(|a| a.http).collect::<Vec<_>>());
    let workers: Vec<Proc> = (0..2)
        .map(|i| {
            Proc::start(
                "worker",
                &db,
                &format!("lb-worker-{i}"),
                &[("CAP_CLAIM_POLL_MS", "100")],
            )
        })
        .collect();
    let api = ApiClient::new(format!("http://{front}/v1"), bootstrap_token(&db));
    let up = common::wait_until(Duration::from_secs(20), || async {
        reqwest::get(format!("http://{front}/healthz"))
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
    })
    .await;
    assert!(up, "haproxy forwards to the apis");

    let (_, project) = api.post("/projects", json!({ "name": "fleet" })).await;
    let p = project["id"].as_str().unwrap().to_string();
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
    let all = common::wait_until(Duration::from_secs(300), || async {
        store
            .collection("certificates")
            .count_documents(doc! { "status": "issued" })
            .await
            .unwrap()
            == total
    })
    .await;
    let statuses: Vec<Document> = store
        .collection("certificates")
        .find(doc! { "status": { "$ne": "issued" } })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
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
    for a in &apis {
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
    let leaf = certautopilot::certs::inspect_chain(chain).unwrap();
    assert_eq!(
        certautopilot::certs::public_key_der(&key).unwrap(),
        leaf.public_key_der
    );
    assert_only_ciphertext(&store, &key).await;
    drop(workers);
}
