//! Certificates end to end against a real ACME server (Debian's Pebble):
//! declared through the API, issued by a worker, served HTTP-01 by the api.

mod common;

use std::process::Command;
use std::time::Duration;

use common::pebble::Pebble;
use common::{Proc, TestDb};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

/// An API client with a bearer token.
pub struct Api {
    pub base: String,
    pub token: String,
    http: reqwest::Client,
}

impl Api {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

/// A global admin token, made the way an operator bootstraps one.
fn bootstrap_token(db: &TestDb) -> String {
    let out = Command::new(common::bin())
        .args(["token", "create", "--role", "admin"])
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn wait_issued(api: &Api, path: &str, timeout: Duration) -> Value {
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

fn openssl_verify(root: &str, chain: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let certs: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("BEGIN"))
        .collect();
    std::fs::write(dir.path().join("root.pem"), root).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), certs[0].trim()).unwrap();
    std::fs::write(dir.path().join("untrusted.pem"), certs[1..].concat()).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "untrusted.pem",
            "leaf.pem",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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
    let api = Api {
        base: format!("http://{http}/v1"),
        token: bootstrap_token(&db),
        http: reqwest::Client::new(),
    };

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
    let verdict = openssl_verify(&root, chain);
    assert!(verdict.contains("leaf.pem: OK"), "{verdict}");
    let leaf = certautopilot::certs::inspect_chain(chain).unwrap();
    assert_eq!(issued["fingerprint_sha256"], leaf.fingerprint_sha256);
    assert_eq!(issued["serial"], leaf.serial);
    let mut names = leaf.dns_names.clone();
    names.sort();
    assert_eq!(names, vec!["shop.example.test", "www.shop.example.test"]);

    // Its key matches, and reading it is audited.
    let key = api
        .http
        .get(format!("{}{path}/private-key", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        certautopilot::certs::public_key_der(&key).unwrap(),
        leaf.public_key_der
    );

    // MongoDB holds only its ciphertext.
    let store = db.store().await;
    for name in store.db().list_collection_names().await.unwrap() {
        let docs: Vec<Document> = store
            .collection(&name)
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for d in docs {
            let raw = mongodb::bson::to_vec(&d).unwrap();
            assert!(
                !raw.windows(11).any(|w| w == b"PRIVATE KEY"),
                "PEM key marker in {name}"
            );
            let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(
                !String::from_utf8_lossy(&raw).contains(&body[..40]),
                "key bytes in {name}"
            );
        }
    }
    // Metrics: certificates by status, orders in flight, expiry, ACME requests.
    assert_eq!(
        api_proc
            .metric("certautopilot_certificates", "status=\"issued\"")
            .await,
        Some(1.0)
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
