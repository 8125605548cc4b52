//! Talking to a running `api` as a user would, and checking what it issued.

use std::process::Command;

use mongodb::bson::{doc, Document};
use serde_json::Value;

use super::{OutputWithin, TestDb};
use certautopilot::store::Store;

/// A global admin token, made the way an operator bootstraps one.
pub fn bootstrap_token(db: &TestDb) -> String {
    token(db, &["--role", "admin"])
}

/// `certautopilot token create ARGS`: the token it prints.
pub fn token(db: &TestDb, args: &[&str]) -> String {
    let out = Command::new(super::bin())
        .args(["token", "create"])
        .args(args)
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .output_within_limit()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// JSON calls to `base` (`http://host:port/v1`) with a bearer token.
#[derive(Clone)]
pub struct ApiClient {
    pub base: String,
    token: Option<String>,
    pub http: reqwest::Client,
}

/// An answer whole: for tests about its form (status, content type, the
/// exact bytes), not only its JSON.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    /// The JSON body, or the text as a JSON string when it is not JSON.
    pub body: Value,
    pub text: String,
}

impl ApiClient {
    pub fn new(base: String, token: String) -> ApiClient {
        ApiClient {
            base,
            token: Some(token),
            http: reqwest::Client::new(),
        }
    }

    /// The same token against another base URL (one replica, say).
    pub fn with_base(&self, base: String) -> ApiClient {
        ApiClient {
            base,
            ..self.clone()
        }
    }

    /// The same API, called with another bearer token.
    pub fn with_token(&self, token: &str) -> ApiClient {
        ApiClient {
            base: self.base.clone(),
            token: Some(token.to_string()),
            http: self.http.clone(),
        }
    }

    /// The bearer token it calls with.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A POST of `body` with `headers`, answered whole (with its headers).
    pub async fn post_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: Value,
    ) -> (Answer, reqwest::header::HeaderMap) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let content_type = headers
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let answer = Answer {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone())),
            text,
        };
        (answer, headers)
    }

    /// The same API, called with no token at all.
    pub fn without_token(&self) -> ApiClient {
        ApiClient {
            base: self.base.clone(),
            token: None,
            http: self.http.clone(),
        }
    }

    /// Sends `body` as JSON exactly as given (malformed, oversized, …).
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Vec<u8>>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        Answer {
            status,
            content_type,
            body: serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone())),
            text,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let answer = self
            .send(method, path, body.map(|b| b.to_string().into_bytes()))
            .await;
        (answer.status, answer.body)
    }

    /// A GET, answered whole.
    pub async fn get_answer(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, None).await
    }

    /// A POST of `body`, answered whole.
    pub async fn post_answer(&self, path: &str, body: Value) -> Answer {
        self.send(
            reqwest::Method::POST,
            path,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// GETs `path` every 200 ms until `done` holds of its body (which it
    /// returns); panics with `what` and the last body after `timeout`.
    pub async fn wait_for(
        &self,
        path: &str,
        timeout: std::time::Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let (_, body) = self.get(path).await;
            if done(&body) {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: not in time: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Creates a certificate in project `p` from `body` and waits until it
    /// is issued; returns its path and the issued certificate.
    pub async fn issue(
        &self,
        p: &str,
        body: Value,
        timeout: std::time::Duration,
    ) -> (String, Value) {
        let (status, cert) = self
            .post(&format!("/projects/{p}/certificates"), body)
            .await;
        assert_eq!(status, 201, "{cert}");
        let path = format!(
            "/projects/{p}/certificates/{}",
            cert["id"].as_str().unwrap()
        );
        let issued = self
            .wait_for(&path, timeout, "issued", |c| c["status"] == "issued")
            .await;
        (path, issued)
    }

    /// Grants project `p` the names it may certify (each with every name
    /// under it), as a global admin does.
    pub async fn grant(&self, p: &str, domains: &[&str]) {
        let (status, body) = self
            .call(
                reqwest::Method::PUT,
                &format!("/projects/{p}/domains"),
                Some(serde_json::json!({ "domains": domains })),
            )
            .await;
        assert_eq!(status, 200, "granting {domains:?}: {body}");
    }

    /// A new project with a Pebble issuer (HTTP-01); returns their ids.
    pub async fn project_with_issuer(
        &self,
        name: &str,
        pebble: &super::pebble::Pebble,
    ) -> (String, String) {
        let (status, project) = self
            .post("/projects", serde_json::json!({ "name": name }))
            .await;
        assert_eq!(status, 201, "{project}");
        let p = project["id"].as_str().unwrap().to_string();
        let (status, issuer) = self
            .post(
                &format!("/projects/{p}/issuers"),
                serde_json::json!({
                    "name": "pebble", "directory_url": pebble.directory,
                    "contact": "ops@example.test", "challenge": "http-01",
                    "ca_bundle_pem": pebble.listener_ca_pem,
                }),
            )
            .await;
        assert_eq!(status, 201, "{issuer}");
        (p, issuer["id"].as_str().unwrap().to_string())
    }

    /// The body of a GET, as text (a PEM key, say).
    /// The actions of project `p`'s newest 200 audit records.
    pub async fn audit_actions(&self, p: &str) -> Vec<String> {
        let (status, audit) = self.get(&format!("/projects/{p}/audit?limit=200")).await;
        assert_eq!(status, 200, "{audit}");
        audit["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["action"].as_str().map(str::to_string))
            .collect()
    }

    pub async fn get_text(&self, path: &str) -> String {
        self.get_answer(path).await.text
    }
}

/// `openssl verify` of a PEM chain (leaf first) against `root`.
pub fn verify_chain(root: &str, chain: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let certs: Vec<&str> = chain
        .split_inclusive("-----END CERTIFICATE-----")
        .filter(|c| c.contains("BEGIN"))
        .collect();
    std::fs::write(dir.path().join("root.pem"), root).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), certs[0].trim()).unwrap();
    std::fs::write(dir.path().join("rest.pem"), certs[1..].concat()).unwrap();
    let out = Command::new("openssl")
        .args([
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "rest.pem",
            "leaf.pem",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// Every document of every collection, with its collection's name: the
/// scan behind every check that a secret is stored nowhere in the clear.
pub async fn raw_documents(store: &Store) -> Vec<(String, Document)> {
    let mut all = Vec::new();
    for name in store.db().list_collection_names().await.unwrap() {
        for d in super::documents(store, &name, doc! {}).await {
            all.push((name.clone(), d));
        }
    }
    all
}

/// A raw scan of every collection: no PEM private-key marker anywhere, and
/// not the first 40 base64 characters of `key_pem`'s body either.
pub async fn assert_only_ciphertext(store: &Store, key_pem: &str) {
    let body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for (name, d) in raw_documents(store).await {
        let raw = mongodb::bson::to_vec(&d).unwrap();
        assert!(
            !raw.windows(11).any(|w| w == b"PRIVATE KEY"),
            "PEM key marker in {name}"
        );
        assert!(
            !String::from_utf8_lossy(&raw).contains(&body[..40]),
            "key bytes in {name}"
        );
    }
}

/// A raw scan of every collection: `secret` appears nowhere.
pub async fn assert_not_stored(store: &Store, secret: &str) {
    for (name, d) in raw_documents(store).await {
        let raw = mongodb::bson::to_vec(&d).unwrap();
        assert!(
            !String::from_utf8_lossy(&raw).contains(secret),
            "the secret is stored in the clear in {name}"
        );
    }
}
