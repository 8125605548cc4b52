//! The agent target against a real nginx from Debian on loopback: Pebble
//! issues, `certautopilot agent` (the real binary, with a token of role
//! agent) writes the files nginx serves, reloads it, validates and reports;
//! drift then reads `in_sync`. A second target whose endpoint serves
//! nothing gets its previous files back; with the API away the files stay.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::cluster::{Cluster, Role};
use crate::support::nginx::{comes_to_serve, self_signed_set, served, Nginx};
use crate::support::pebble::PebbleOptions;

const NAME: &str = "www.agent.example.test";

/// Runs `certautopilot agent --once`; its exit code and log.
fn agent_once(config: &Value, token: &str, work: &Path) -> (i32, String) {
    let config_path = work.join("agent.json");
    let token_path = work.join("agent.token");
    std::fs::write(&config_path, config.to_string()).unwrap();
    std::fs::write(&token_path, token).unwrap();
    let out = Command::new(support::bin())
        .args(["agent", "--once", "--config"])
        .arg(&config_path)
        .arg("--token-file")
        .arg(&token_path)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CAP_EGRESS_ALLOW", "127.0.0.0/8")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn record<'a>(page: &'a Value, target: &str) -> Option<&'a Value> {
    page["items"]
        .as_array()?
        .iter()
        .find(|d| d["target"] == target)
}

#[tokio::test]
async fn the_agent_puts_a_renewal_where_nginx_serves_it_and_rolls_back_what_does_not_validate() {
    let cluster = Cluster::builder("agent")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .env(Role::Scheduler, "CAP_DRIFT_SCAN_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("agents", cluster.pebble()).await;
    api.grant(&p, &["agent.example.test"]).await;
    let nginx_port = support::free_addr().port();
    let nobody = support::free_addr().port();

    let target = |name: &str, port: u16| {
        json!({ "name": name, "kind": "agent",
                "validate": { "host": "127.0.0.1", "port": port, "sni": NAME } })
    };
    let (status, edge) = api
        .post(
            &format!("/projects/{p}/targets"),
            target("edge", nginx_port),
        )
        .await;
    assert_eq!(status, 201, "{edge}");
    let (status, broken) = api
        .post(&format!("/projects/{p}/targets"), target("broken", nobody))
        .await;
    assert_eq!(status, 201, "{broken}");
    let (status, fresh) = api
        .post(&format!("/projects/{p}/targets"), target("fresh", nobody))
        .await;
    assert_eq!(status, 201, "{fresh}");
    let (edge_id, broken_id, fresh_id) = (
        edge["id"].as_str().unwrap().to_string(),
        broken["id"].as_str().unwrap().to_string(),
        fresh["id"].as_str().unwrap().to_string(),
    );

    // An agent token names its targets, and they must be the project's
    // agent targets.
    let (status, problem) = api
        .post(
            "/tokens",
            json!({ "roles": [{ "project_id": p, "role": "agent" }] }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let (status, problem) = api
        .post(
            "/tokens",
            json!({ "roles": [{ "project_id": p, "role": "agent", "targets": ["tgt_000000000000000000000000"] }] }),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    let (status, token) = api
        .post(
            "/tokens",
            json!({ "roles": [{ "project_id": p, "role": "agent", "targets": [edge_id, broken_id, fresh_id] }],
                    "description": "agent on edge" }),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let agent_token = token["token"].as_str().unwrap().to_string();
    let as_agent = api.with_token(&agent_token);

    let (path, issued) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": [NAME], "issuer_id": issuer, "targets": ["edge"] }),
            Duration::from_secs(60),
        )
        .await;
    let cert_id = issued["id"].as_str().unwrap().to_string();
    let fingerprint = issued["fingerprint_sha256"].as_str().unwrap().to_string();

    // The agent's token reads its targets' deliveries and nothing else.
    let (status, _) = as_agent.get(&format!("/projects/{p}/certificates")).await;
    assert_eq!(status, 403);
    let (status, _) = as_agent.get(&format!("{path}/private-key")).await;
    assert_eq!(status, 403);
    let (status, projects) = as_agent.get("/projects").await;
    assert_eq!(status, 200);
    assert_eq!(projects["items"], json!([]), "{projects}");
    let (status, _) = as_agent
        .get(&format!(
            "/projects/{p}/targets/{broken_id}/deliveries/{cert_id}"
        ))
        .await;
    assert_eq!(status, 404, "the certificate does not go to that target");

    // The scheduler records the delivery queued; the worker leaves it to the agent.
    api.wait_for(
        &format!("{path}/distributions"),
        Duration::from_secs(30),
        "edge queued",
        |d| record(d, "edge").is_some_and(|r| r["state"] == "queued"),
    )
    .await;

    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs");
    let live = certs.join(&cert_id);
    let old = self_signed_set(&live, NAME);
    let nginx = Nginx::start(work.path(), &live, nginx_port);
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            served(nginx_port, NAME).await.is_some()
        })
        .await,
        "nginx serves"
    );
    assert_ne!(
        served(nginx_port, NAME).await.as_deref(),
        Some(fingerprint.as_str())
    );

    let api_base = api.base.trim_end_matches("/v1").to_string();
    let config = |target: &str, directory: &Path, api_base: &str| {
        json!({ "api": api_base, "project_id": p, "target_id": target,
                "directory": directory, "reload_command": nginx.reload_command(),
                "validate_attempts": 10, "validate_interval_secs": 1 })
    };
    let (code, log) = agent_once(
        &config(&edge_id, &certs, &api_base),
        &agent_token,
        work.path(),
    );
    assert_eq!(code, 0, "{log}");
    assert!(comes_to_serve(nginx_port, NAME, &fingerprint).await);
    let key = std::fs::metadata(live.join("key.pem")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key.permissions()) & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::read_to_string(live.join("fullchain.pem.previous")).unwrap(),
        old,
        "the previous set is kept"
    );
    let (_, distributions) = api.get(&format!("{path}/distributions")).await;
    let edge_record = record(&distributions, "edge").unwrap();
    assert_eq!(edge_record["state"], "validated", "{edge_record}");
    assert_eq!(edge_record["serial"], issued["serial"], "{edge_record}");

    // Drift then finds nginx serving the current certificate.
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/endpoints"),
            Some(
                json!({ "endpoints": [{ "host": "127.0.0.1", "port": nginx_port, "sni": NAME }] }),
            ),
        )
        .await;
    assert_eq!(status, 200);
    api.wait_for(&path, Duration::from_secs(30), "drift in_sync", |c| {
        c["drift_state"] == "in_sync"
    })
    .await;

    // A second pass has nothing to do.
    let (code, log) = agent_once(
        &config(&edge_id, &certs, &api_base),
        &agent_token,
        work.path(),
    );
    assert_eq!(code, 0, "{log}");
    assert!(!log.contains("certificate files written"), "{log}");

    // With the API away the files stay, and nginx serves them.
    let closed = format!("http://127.0.0.1:{}", support::free_addr().port());
    let (code, log) = agent_once(
        &config(&edge_id, &certs, &closed),
        &agent_token,
        work.path(),
    );
    assert_ne!(code, 0, "{log}");
    assert!(comes_to_serve(nginx_port, NAME, &fingerprint).await);

    // A target whose endpoint serves nothing: the previous files come back.
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["edge", "broken"] })),
        )
        .await;
    assert_eq!(status, 200);
    api.wait_for(
        &format!("{path}/distributions"),
        Duration::from_secs(30),
        "broken queued",
        |d| record(d, "broken").is_some_and(|r| r["state"] == "queued"),
    )
    .await;
    let elsewhere = work.path().join("elsewhere");
    let kept = self_signed_set(&elsewhere.join(&cert_id), NAME);
    let mut broken_config = config(&broken_id, &elsewhere, &api_base);
    broken_config["reload_command"] = json!([]);
    broken_config["validate_attempts"] = json!(2);
    let (code, log) = agent_once(&broken_config, &agent_token, work.path());
    assert_ne!(code, 0, "{log}");
    assert_eq!(
        std::fs::read_to_string(elsewhere.join(&cert_id).join("fullchain.pem")).unwrap(),
        kept
    );
    let (_, distributions) = api.get(&format!("{path}/distributions")).await;
    let broken_record = record(&distributions, "broken").unwrap();
    assert_eq!(broken_record["state"], "rolled_back", "{broken_record}");
    assert!(
        broken_record["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{broken_record}"
    );

    // A first delivery that does not validate has nothing to roll back to:
    // it ends failed with the new files on disk, and the agent's next pass
    // does not take those files for a success.
    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["edge", "broken", "fresh"] })),
        )
        .await;
    assert_eq!(status, 200);
    api.wait_for(
        &format!("{path}/distributions"),
        Duration::from_secs(30),
        "fresh queued",
        |d| record(d, "fresh").is_some_and(|r| r["state"] == "queued"),
    )
    .await;
    let mut fresh_config = config(&fresh_id, &work.path().join("fresh"), &api_base);
    fresh_config["reload_command"] = json!([]);
    fresh_config["validate_attempts"] = json!(1);
    for pass in 0..2 {
        let (code, log) = agent_once(&fresh_config, &agent_token, work.path());
        assert_ne!(code, 0, "pass {pass}: {log}");
        let (_, distributions) = api.get(&format!("{path}/distributions")).await;
        let fresh_record = record(&distributions, "fresh").unwrap();
        assert_eq!(
            fresh_record["state"], "failed",
            "pass {pass}: {fresh_record}"
        );
        assert!(
            fresh_record["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("nothing to roll back")),
            "{fresh_record}"
        );
    }
    // The failure's report lost (the record still says running, as the
    // agent reported before writing): the files on disk are settled again
    // (reloaded, checked), not taken for a success.
    cluster
        .db
        .store()
        .await
        .collection("distributions")
        .update_one(
            mongodb::bson::doc! { "_id": format!("{cert_id}:{fresh_id}") },
            mongodb::bson::doc! { "$set": { "state": "running", "last_error": null } },
        )
        .await
        .unwrap();
    let (code, log) = agent_once(&fresh_config, &agent_token, work.path());
    assert_ne!(code, 0, "{log}");
    let (_, distributions) = api.get(&format!("{path}/distributions")).await;
    let fresh_record = record(&distributions, "fresh").unwrap();
    assert_eq!(fresh_record["state"], "failed", "{fresh_record}");
    assert!(
        fresh_record["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable") && e.contains("nothing to roll back")),
        "{fresh_record}"
    );

    // An outcome once recorded stays: a report sent again is taken without
    // a change, a different one is refused.
    let report = format!("/projects/{p}/targets/{fresh_id}/deliveries/{cert_id}/report");
    let serial = issued["serial"].as_str().unwrap();
    let (status, problem) = as_agent
        .post(&report, json!({ "serial": serial, "state": "validated" }))
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem.to_string().contains("already ended failed"),
        "{problem}"
    );
    let (status, _) = as_agent
        .post(
            &report,
            json!({ "serial": serial, "state": "failed", "error": "again" }),
        )
        .await;
    assert_eq!(status, 204);

    // Every key read and both outcomes are in the audit log.
    let actions = api.audit_actions(&p).await;
    for action in [
        "key.released",
        "distribution.validated",
        "distribution.rolled_back",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    drop(nginx);
}
