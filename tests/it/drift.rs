//! Drift scans against real TLS servers on loopback: one serving the
//! certificate Pebble issued last, one serving the one before it, one serving
//! a self-signed certificate, and a port nobody listens on. The scheduler
//! leader schedules the scans and a worker runs them; the API, the metric and
//! the audit log show the result and each change.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support;
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use crate::support::tls_server::TlsServer;
use serde_json::{json, Value};

fn endpoint(addr: SocketAddr) -> Value {
    json!({ "host": "127.0.0.1", "port": addr.port(), "sni": "www.drift.example.test" })
}

fn state_of(cert: &Value, addr: SocketAddr) -> Option<String> {
    cert["drift"]
        .as_array()?
        .iter()
        .find(|d| d["port"] == addr.port())
        .and_then(|d| d["state"].as_str())
        .map(str::to_string)
}

#[tokio::test]
async fn endpoints_serving_current_older_foreign_or_nothing_are_told_apart() {
    let cluster = Cluster::builder("drift")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        // A first attempt that fails for any reason retries soon: this test
        // is about drift, not issuance.
        .env(Role::Worker, "CAP_ISSUE_BACKOFF_BASE_SECS", "2")
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .env(Role::Scheduler, "CAP_DRIFT_SCAN_SECS", "2")
        .start()
        .await;
    let (api, api_proc) = (&cluster.api, &cluster.apis[0]);
    let (p, issuer) = api.project_with_issuer("drifting", cluster.pebble()).await;
    api.grant(&p, &["drift.example.test"]).await;

    // Bad endpoints are refused, each with its reason.
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "bad", "dns_names": ["www.drift.example.test"], "issuer_id": issuer,
                    "endpoints": [{ "host": "not a host", "port": 443 }, { "host": "ok.example.test", "port": 0 }] }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let text = problem.to_string();
    assert!(
        text.contains("endpoints[0].host") && text.contains("endpoints[1].port"),
        "{problem}"
    );

    // Issued twice: the first certificate becomes an older one of ours.
    let (path, first) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.drift.example.test"], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let first_key = api.get_text(&format!("{path}/private-key")).await;
    let (status, _) = api.post(&format!("{path}/issue"), json!({})).await;
    assert_eq!(status, 202);
    let current = api
        .wait_for(&path, Duration::from_secs(60), "reissued", |c| {
            c["issued_count"] == 2 && c["status"] == "issued"
        })
        .await;
    let current_key = api.get_text(&format!("{path}/private-key")).await;
    assert_ne!(first["serial"], current["serial"]);

    let foreign =
        rcgen::generate_simple_self_signed(vec!["www.drift.example.test".into()]).unwrap();
    let serving_current =
        TlsServer::start(current["chain_pem"].as_str().unwrap(), &current_key).await;
    let serving_older = TlsServer::start(first["chain_pem"].as_str().unwrap(), &first_key).await;
    let serving_foreign =
        TlsServer::start(&foreign.cert.pem(), &foreign.signing_key.serialize_pem()).await;
    let foreign_addr = serving_foreign.addr;
    let nobody = support::free_addr();

    let endpoints = json!([
        endpoint(serving_current.addr),
        endpoint(serving_older.addr),
        endpoint(serving_foreign.addr),
        endpoint(nobody),
    ]);
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/endpoints"),
            Some(json!({ "endpoints": endpoints })),
        )
        .await;
    assert_eq!(status, 200);
    let scanned = api
        .wait_for(
            &path,
            Duration::from_secs(30),
            "all four endpoints scanned",
            |c| {
                c["drift"]
                    .as_array()
                    .is_some_and(|d| d.len() == 4 && d.iter().all(|e| e["state"].is_string()))
            },
        )
        .await;
    assert_eq!(
        state_of(&scanned, serving_current.addr).as_deref(),
        Some("in_sync"),
        "{scanned}"
    );
    assert_eq!(
        state_of(&scanned, serving_older.addr).as_deref(),
        Some("stale"),
        "{scanned}"
    );
    assert_eq!(
        state_of(&scanned, serving_foreign.addr).as_deref(),
        Some("foreign"),
        "{scanned}"
    );
    assert_eq!(
        state_of(&scanned, nobody).as_deref(),
        Some("unreachable"),
        "{scanned}"
    );
    assert_eq!(
        scanned["drift_state"], "foreign",
        "the worst endpoint: {scanned}"
    );
    let older = scanned["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["port"] == serving_older.addr.port())
        .unwrap();
    assert_eq!(older["served_serial"], first["serial"], "{older}");
    assert!(
        older["checked_at"].is_string() && older["since"].is_string(),
        "{older}"
    );
    let unreachable = scanned["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["port"] == nobody.port())
        .unwrap();
    assert!(
        unreachable["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{unreachable}"
    );

    assert!(
        support::wait_until(Duration::from_secs(15), || async {
            api_proc
                .metric("certautopilot_certificates_by_drift", "state=\"foreign\"")
                .await
                == Some(1.0)
        })
        .await,
        "the metric counts the certificate as foreign"
    );

    // The foreign server goes away: the change is recorded and audited.
    drop(serving_foreign);
    let changed = api
        .wait_for(
            &path,
            Duration::from_secs(30),
            "the foreign endpoint unreachable",
            |c| state_of(c, serving_older.addr).is_some() && c["drift_state"] == "stale",
        )
        .await;
    assert_eq!(changed["drift"].as_array().unwrap().len(), 4, "{changed}");
    let in_sync = changed["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["port"] == serving_current.addr.port())
        .unwrap();
    assert_eq!(
        in_sync["since"],
        scanned["drift"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["port"] == serving_current.addr.port())
            .unwrap()["since"],
        "an unchanged endpoint keeps its since: {in_sync}"
    );

    let (_, audit) = api
        .get(&format!(
            "/projects/{p}/audit?action=certificate.drift_changed&limit=100"
        ))
        .await;
    let records = audit["items"].as_array().unwrap();
    let to = |port: u16| -> Vec<(Value, Value)> {
        records
            .iter()
            .filter(|r| r["details"]["endpoint"]["port"] == port)
            .map(|r| (r["details"]["from"].clone(), r["details"]["to"].clone()))
            .collect()
    };
    assert_eq!(
        to(serving_current.addr.port()),
        [(Value::Null, json!("in_sync"))],
        "{audit}"
    );
    assert_eq!(
        to(foreign_addr.port()),
        [
            (Value::Null, json!("foreign")),
            (json!("foreign"), json!("unreachable"))
        ],
        "{audit}"
    );

    // Only the endpoint in sync stays: what was seen of it is kept, and the
    // summary says so at once.
    let (status, narrowed) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/endpoints"),
            Some(json!({ "endpoints": [endpoint(serving_current.addr)] })),
        )
        .await;
    assert_eq!(status, 200, "{narrowed}");
    assert_eq!(narrowed["drift"].as_array().unwrap().len(), 1, "{narrowed}");
    assert_eq!(narrowed["drift_state"], "in_sync", "{narrowed}");

    // No endpoints: no more scans, no drift.
    let (status, cleared) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/endpoints"),
            Some(json!({ "endpoints": [] })),
        )
        .await;
    assert_eq!(status, 200, "{cleared}");
    assert!(
        cleared["drift"].as_array().unwrap().is_empty() && cleared["drift_state"].is_null(),
        "{cleared}"
    );
}
