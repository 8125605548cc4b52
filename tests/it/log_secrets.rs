//! No secret reaches a log line (issue 11, section 5): issuance over DNS-01
//! from a CA that requires external account binding, a private key read, API
//! tokens made and used, and a KEK export and import, every process logging
//! at `debug` — then every line they wrote is searched for every secret
//! they were given or made.

use std::process::Command;
use std::time::Duration;

use crate::support::api::token;
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use crate::support::{bin, OutputWithin};
use serde_json::json;

const ZONE: &str = "logs.example.test";
const EAB_KID: &str = "kid-logs";
const EAB_HMAC: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
const PASSPHRASE: &str = "correct horse battery staple logs";

/// The key material in a `file` key ring: every long string in it.
fn key_ring_secrets(path: &std::path::Path) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.len() >= 32 => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let ring: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    walk(&ring, &mut out);
    assert!(!out.is_empty(), "the key ring holds key material");
    out
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_at_debug() {
    let mut builder = Cluster::builder("log_secrets")
        .bind(ZONE)
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            eab: Some((EAB_KID.into(), EAB_HMAC.into())),
            ..PebbleOptions::default()
        })
        .workers(1)
        .scheduler();
    for role in [Role::Api, Role::Worker, Role::Scheduler] {
        builder = builder.env(role, "RUST_LOG", "debug");
    }
    let cluster = builder.start().await;
    let (api, pebble, bind, db) = (&cluster.api, cluster.pebble(), cluster.bind(), &cluster.db);

    let (_, project) = api.post("/projects", json!({ "name": "logs" })).await;
    let p = project["id"].as_str().unwrap().to_string();
    api.grant(&p, &[ZONE]).await;
    let (status, issuer) = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({
                "name": "pebble-eab-dns", "directory_url": pebble.directory, "contact": "ops@example.test",
                "challenge": "dns-01", "ca_bundle_pem": pebble.listener_ca_pem,
                "eab": { "kid": EAB_KID, "hmac_key": EAB_HMAC },
                "dns": {
                    "primary": bind.addr.to_string(), "zone": ZONE,
                    "tsig_key_name": bind.key_name, "tsig_secret": bind.key_secret,
                    "nameservers": [bind.addr.to_string()], "propagation_timeout_secs": 3,
                },
            }),
        )
        .await;
    assert_eq!(status, 201, "{issuer}");
    let (path, _) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": [format!("www.{ZONE}")], "issuer_id": issuer["id"] }),
            Duration::from_secs(120),
        )
        .await;
    let key_pem = api.get_text(&format!("{path}/private-key")).await;
    assert!(key_pem.contains("PRIVATE KEY"), "{key_pem}");
    let (status, minted) = api
        .post(
            "/tokens",
            json!({ "roles": [{ "project_id": p, "role": "viewer" }] }),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let minted = minted["token"].as_str().unwrap().to_string();
    assert_eq!(
        api.with_token(&minted)
            .get(&format!("/projects/{p}"))
            .await
            .0,
        200
    );
    let cli_token = token(db, &["--role", "admin"]);

    // KEK export and import, at debug.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("kek.bundle");
    let restored = dir.path().join("restored.json");
    let mut cli_logs = String::new();
    for args in [
        vec!["kek", "export", "--out", bundle.to_str().unwrap()],
        vec![
            "kek",
            "import",
            "--bundle",
            bundle.to_str().unwrap(),
            "--file",
            restored.to_str().unwrap(),
        ],
    ] {
        let out = Command::new(bin())
            .args(&args)
            .env_clear()
            .env("CAP_MONGO_URI", &db.uri)
            .env("CAP_KEK_FILE", &db.kek_file)
            .env("CAP_KEK_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", "debug")
            .output_within_limit()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cli_logs.push_str(&String::from_utf8_lossy(&out.stdout));
        cli_logs.push_str(&String::from_utf8_lossy(&out.stderr));
    }

    // Every secret used, and the parts of each long enough to be recognized.
    let mut secrets: Vec<(&str, String)> = vec![
        ("the TSIG secret", bind.key_secret.clone()),
        ("the EAB HMAC key", EAB_HMAC.to_string()),
        ("an API token made through the API", minted),
        ("an API token made by the CLI", cli_token),
        ("the KEK passphrase", PASSPHRASE.to_string()),
    ];
    for line in key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 24)
    {
        secrets.push(("a line of the private key", line.to_string()));
    }
    for k in key_ring_secrets(&db.kek_file) {
        secrets.push(("the KEK's key material", k));
    }

    let mut logs: Vec<(String, String)> = vec![("kek export/import".into(), cli_logs)];
    for proc in cluster
        .apis
        .iter()
        .chain(&cluster.workers)
        .chain(&cluster.schedulers)
    {
        logs.push((proc.id.clone(), proc.log_text()));
    }
    let debug_lines: usize = logs
        .iter()
        .map(|(_, text)| text.lines().filter(|l| l.contains("DEBUG")).count())
        .sum();
    assert!(debug_lines > 0, "debug logging was on");
    // The logs searched are the ones that saw the work.
    let certificate_id = path.rsplit('/').next().unwrap();
    assert!(
        logs.iter()
            .any(|(who, text)| who.contains("worker") && text.contains(certificate_id)),
        "the worker logged the issue of {certificate_id}"
    );
    for (who, text) in &logs {
        for (what, secret) in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} is in the log of {who}: {}",
                text.lines()
                    .find(|l| l.contains(secret.as_str()))
                    .unwrap_or_default()
            );
        }
    }
}
