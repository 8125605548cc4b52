//! Distribution end to end: Pebble issues, the scheduler leader enqueues one
//! `distribute` job per target, a worker delivers. A webhook receiver on
//! loopback checks the signature as a customer's would; a stand-in of the
//! Kubernetes Secrets endpoints (no API server runs here) over HTTPS with
//! its own CA, reached through a sealed kubeconfig, holds the Secret. The
//! webhook target validates against a TLS server that starts serving the
//! delivered certificate; the Kubernetes target's endpoint serves nothing,
//! so its delivery is rolled back and the Secret holds what it held before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use serde_json::{json, Value};

use crate::support;
use crate::support::api::assert_not_stored;
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use crate::support::tls_server::TlsServer;
use certautopilot::crypto::webhook_signature::{verify, DEFAULT_TOLERANCE_SECS};

const HOOK_SECRET: &str = "the-hook-signing-secret";
const K8S_TOKEN: &str = "deployer-service-account-token";

/// What the webhook receiver got: (delivery id, body), signature verified.
type Deliveries = Arc<Mutex<Vec<(String, Value)>>>;

async fn webhook_receiver(got: Deliveries) -> (u16, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(move || {
        let got = got.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let got = got.clone();
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let signature = header("CertAutoPilot-Signature");
                if verify(
                    HOOK_SECRET.as_bytes(),
                    &signature,
                    &body,
                    now,
                    DEFAULT_TOLERANCE_SECS,
                )
                .is_err()
                {
                    return HttpResponse::Unauthorized().body("bad signature");
                }
                let body: Value = serde_json::from_slice(&body).unwrap();
                got.lock()
                    .unwrap()
                    .push((header("CertAutoPilot-Delivery"), body));
                HttpResponse::NoContent().finish()
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (port, handle)
}

/// The Secrets endpoints of one namespace, as the API server answers them:
/// resource versions, 409 on a stale one, 401 without the token.
#[derive(Default)]
struct Secrets {
    stored: HashMap<String, Value>,
    version: u64,
    /// The `tls.crt` of every write, in order.
    written: Vec<String>,
}

fn tls_crt(secret: &Value) -> String {
    let data = secret["data"]["tls.crt"].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap(),
    )
    .unwrap()
}

/// Stores `secret` under `key` with the next resource version.
fn write(s: &mut Secrets, mut secret: Value, key: String) -> Value {
    s.version += 1;
    secret["metadata"]["resourceVersion"] = json!(s.version.to_string());
    s.written.push(tls_crt(&secret));
    s.stored.insert(key, secret.clone());
    secret
}

fn answer(s: &mut Secrets, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {K8S_TOKEN}").as_bytes());
    if !authorized {
        return HttpResponse::Unauthorized().json(json!({ "kind": "Status", "code": 401 }));
    }
    let parts: Vec<&str> = req.path().trim_matches('/').split('/').collect();
    let name = match parts.as_slice() {
        ["api", "v1", "namespaces", "web", "secrets"] => None,
        ["api", "v1", "namespaces", "web", "secrets", name] => Some(name.to_string()),
        _ => return HttpResponse::NotFound().finish(),
    };
    match (req.method().as_str(), name) {
        ("GET", Some(name)) => match s.stored.get(&name) {
            Some(secret) => HttpResponse::Ok().json(secret),
            None => HttpResponse::NotFound().json(json!({ "kind": "Status", "code": 404 })),
        },
        ("POST", None) => {
            let secret: Value = serde_json::from_slice(body).unwrap();
            let key = secret["metadata"]["name"].as_str().unwrap().to_string();
            if s.stored.contains_key(&key) {
                return HttpResponse::Conflict().json(json!({ "kind": "Status", "code": 409 }));
            }
            HttpResponse::Created().json(write(s, secret, key))
        }
        ("PUT", Some(name)) => {
            let secret: Value = serde_json::from_slice(body).unwrap();
            let current = s
                .stored
                .get(&name)
                .map(|c| c["metadata"]["resourceVersion"].clone());
            if current.as_ref() != Some(&secret["metadata"]["resourceVersion"]) {
                return HttpResponse::Conflict().json(json!({ "kind": "Status", "code": 409 }));
            }
            HttpResponse::Ok().json(write(s, secret, name))
        }
        _ => HttpResponse::MethodNotAllowed().finish(),
    }
}

/// A CA, and the stand-in's certificate for 127.0.0.1 signed by it.
fn pki() -> (String, rustls::ServerConfig) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test cluster CA");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca_pem, config)
}

async fn kubernetes_stand_in(
    state: Arc<Mutex<Secrets>>,
) -> (String, u16, actix_web::dev::ServerHandle) {
    let (ca_pem, tls) = pki();
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let state = state.clone();
            async move { answer(&mut state.lock().unwrap(), &req, &body) }
        }))
    })
    .workers(1)
    .bind_rustls_0_23(("127.0.0.1", 0), tls)
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (ca_pem, port, handle)
}

fn kubeconfig(port: u16, ca_pem: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "contexts": [{ "name": "test", "context": { "cluster": "stand-in", "user": "deployer" } }],
        "clusters": [{ "name": "stand-in", "cluster": {
            "server": format!("https://127.0.0.1:{port}"), "certificate-authority-data": ca } }],
        "users": [{ "name": "deployer", "user": { "token": K8S_TOKEN } }],
    })
    .to_string()
}

fn target_state<'a>(distributions: &'a Value, target: &str) -> Option<&'a Value> {
    distributions["items"]
        .as_array()?
        .iter()
        .find(|d| d["target"] == target)
}

#[actix_web::test]
async fn a_new_serial_reaches_its_targets_and_a_failed_validation_is_rolled_back() {
    let cluster = Cluster::builder("distribution")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .env(Role::Worker, "CAP_ISSUE_BACKOFF_BASE_SECS", "1")
        .env(Role::Worker, "CAP_DISTRIBUTE_VALIDATE_ATTEMPTS", "10")
        .env(Role::Worker, "CAP_DISTRIBUTE_VALIDATE_INTERVAL_SECS", "1")
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api
        .project_with_issuer("delivering", cluster.pebble())
        .await;
    api.grant(&p, &["dist.example.test"]).await;

    let got: Deliveries = Arc::default();
    let (hook_port, hook) = webhook_receiver(got.clone()).await;
    let secrets = Arc::new(Mutex::new(Secrets::default()));
    let (ca_pem, k8s_port, k8s) = kubernetes_stand_in(secrets.clone()).await;
    // What the Secret held before CertAutoPilot: put back on rollback.
    let before = "-----BEGIN CERTIFICATE-----\nbefore\n-----END CERTIFICATE-----\n";
    {
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut s = secrets.lock().unwrap();
        s.version = 41;
        s.stored.insert(
            "www-tls".into(),
            json!({ "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                    "metadata": { "name": "www-tls", "namespace": "web", "resourceVersion": "41",
                                  "labels": { "team": "web" } },
                    "data": { "tls.crt": encode(before), "tls.key": encode("old key") } }),
        );
    }
    // The webhook's endpoint starts serving once the certificate arrives;
    // the Kubernetes target's never serves.
    let hook_serves = support::free_addr();
    let k8s_serves = support::free_addr();

    // Bad targets are refused, each with its reason.
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "bad", "kind": "webhook",
                    "webhook": { "url": "http://127.0.0.1/hook", "include_key": true, "secret": "short" } }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let text = problem.to_string();
    assert!(
        text.contains("webhook.include_key") && text.contains("webhook.secret"),
        "{problem}"
    );
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "bad", "kind": "kubernetes-secret",
                    "kubernetes_secret": { "namespace": "Web", "secret_name": "x", "kubeconfig": "{}" } }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let text = problem.to_string();
    assert!(
        text.contains("kubernetes_secret.namespace") && text.contains("current-context"),
        "{problem}"
    );
    // The in-cluster service account is the installation's: a project's
    // own admin cannot deliver with it.
    let (status, minted) = api
        .post(
            "/tokens",
            json!({ "roles": [{ "project_id": p, "role": "admin" }] }),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let project_admin = api.with_token(minted["token"].as_str().unwrap());
    let (status, problem) = project_admin
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "in-cluster", "kind": "kubernetes-secret",
                    "kubernetes_secret": { "namespace": "kube-system", "secret_name": "x" } }),
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem.to_string().contains("global admin"), "{problem}");
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "bad", "kind": "ftp" }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("expected one of"), "{problem}");

    let (status, hook_target) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "deploy-hook", "kind": "webhook",
                    "webhook": { "url": format!("http://127.0.0.1:{hook_port}/certificates"), "secret": HOOK_SECRET },
                    "validate": { "host": "127.0.0.1", "port": hook_serves.port(), "sni": "www.dist.example.test" } }),
        )
        .await;
    assert_eq!(status, 201, "{hook_target}");
    assert_eq!(hook_target["credential_set"], true, "{hook_target}");
    assert!(
        !hook_target.to_string().contains(HOOK_SECRET),
        "{hook_target}"
    );
    let (status, k8s_target) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "k8s-web", "kind": "kubernetes-secret",
                    "kubernetes_secret": { "namespace": "web", "secret_name": "www-tls", "include_ca": true,
                                           "kubeconfig": kubeconfig(k8s_port, &ca_pem) },
                    "validate": { "host": "127.0.0.1", "port": k8s_serves.port(), "sni": "www.dist.example.test" } }),
        )
        .await;
    assert_eq!(status, 201, "{k8s_target}");
    assert_eq!(k8s_target["kubernetes_secret"]["cluster"], "kubeconfig");
    let (status, taken) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "deploy-hook", "kind": "webhook",
                    "webhook": { "url": "https://example.test/", "secret": HOOK_SECRET } }),
        )
        .await;
    assert_eq!(status, 409, "a name is unique in its project: {taken}");

    // A certificate names targets of its own project only.
    let (status, other) = api.post("/projects", json!({ "name": "other" })).await;
    assert_eq!(status, 201);
    let other = other["id"].as_str().unwrap();
    let (status, problem) = api
        .post(
            &format!("/projects/{other}/certificates"),
            json!({ "name": "www", "dns_names": ["www.dist.example.test"], "issuer_id": issuer,
                    "targets": ["deploy-hook"] }),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "www", "dns_names": ["www.dist.example.test"], "issuer_id": issuer,
                    "targets": ["deploy-hook", "nowhere"] }),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem.to_string().contains("targets[1]"), "{problem}");

    let (path, issued) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.dist.example.test"], "issuer_id": issuer,
                    "targets": ["deploy-hook", "k8s-web"] }),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(issued["targets"], json!(["deploy-hook", "k8s-web"]));
    let serial = issued["serial"].as_str().unwrap().to_string();
    let chain = issued["chain_pem"].as_str().unwrap().to_string();

    // The webhook gets the certificate, signed, once, without the key.
    assert!(
        support::wait_until(Duration::from_secs(30), || async {
            !got.lock().unwrap().is_empty()
        })
        .await,
        "the webhook receives the certificate"
    );
    let key = api.get_text(&format!("{path}/private-key")).await;
    let _serving = TlsServer::start_on(hook_serves, &chain, &key).await;
    let done = api
        .wait_for(
            &format!("{path}/distributions"),
            Duration::from_secs(60),
            "both deliveries finished",
            |d| {
                target_state(d, "deploy-hook").is_some_and(|t| t["state"] == "validated")
                    && target_state(d, "k8s-web")
                        .is_some_and(|t| t["state"] != "running" && t["state"] != "queued")
            },
        )
        .await;
    let hook_state = target_state(&done, "deploy-hook").unwrap();
    assert_eq!(hook_state["serial"], serial.as_str(), "{hook_state}");
    assert_eq!(hook_state["kind"], "webhook", "{hook_state}");
    let k8s_state = target_state(&done, "k8s-web").unwrap();
    assert_eq!(k8s_state["state"], "rolled_back", "{k8s_state}");
    assert!(
        k8s_state["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("validate") && e.contains("unreachable")),
        "{k8s_state}"
    );
    {
        let deliveries = got.lock().unwrap();
        assert_eq!(deliveries.len(), 1, "delivered once");
        let (delivery, body) = &deliveries[0];
        let hook_id = hook_target["id"].as_str().unwrap();
        let cert_id = issued["id"].as_str().unwrap();
        assert_eq!(
            delivery,
            &format!("distribute:{cert_id}:{serial}:{hook_id}")
        );
        assert_eq!(body["serial"], serial.as_str());
        assert_eq!(body["chain_pem"], chain.as_str());
        assert!(body.get("key_pem").is_none(), "no key unless asked: {body}");
    }
    {
        // The new certificate was written, then what was there put back,
        // with the Secret's other metadata kept.
        let s = secrets.lock().unwrap();
        assert_eq!(s.written, [chain.clone(), before.to_string()]);
        let secret = &s.stored["www-tls"];
        assert_eq!(tls_crt(secret), before);
        assert_eq!(secret["metadata"]["labels"]["team"], "web");
    }

    // Audited and counted.
    let (_, audit) = api.get(&format!("/projects/{p}/audit?limit=200")).await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["action"].as_str())
        .collect();
    for action in [
        "target.created",
        "distribution.validated",
        "distribution.rolled_back",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let worker = &cluster.workers[0];
    assert_eq!(
        worker
            .metric(
                "certautopilot_distributions_total",
                "kind=\"kubernetes-secret\",outcome=\"rolled_back\""
            )
            .await,
        Some(1.0)
    );

    // Credentials and keys are only ever ciphertext in the database.
    let store = cluster.db.store().await;
    assert_not_stored(&store, HOOK_SECRET).await;
    assert_not_stored(&store, K8S_TOKEN).await;

    // A target in use is not deleted; once off the certificate, it is.
    let hook_path = format!(
        "/projects/{p}/targets/{}",
        hook_target["id"].as_str().unwrap()
    );
    let (status, _) = api.call(reqwest::Method::DELETE, &hook_path, None).await;
    assert_eq!(status, 409);
    let (status, updated) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["k8s-web"] })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    let (status, _) = api.call(reqwest::Method::DELETE, &hook_path, None).await;
    assert_eq!(status, 204);

    hook.stop(true).await;
    k8s.stop(true).await;
}
