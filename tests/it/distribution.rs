//! Distribution end to end: Pebble issues, the scheduler leader enqueues one
//! `distribute` job per target, a worker delivers. A webhook receiver on
//! loopback checks the signature as a customer's would; a stand-in of the
//! Kubernetes Secrets endpoints (no API server runs here) over HTTPS with
//! its own CA, reached through a sealed kubeconfig, holds the Secret. The
//! webhook target validates against a TLS server that starts serving the
//! delivered certificate; the Kubernetes target's endpoint serves nothing,
//! so its delivery is rolled back and the Secret holds what it held before.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{json, Value};

use crate::support;
use crate::support::api::assert_not_stored;
use crate::support::cluster::{Cluster, Role};
use crate::support::kubernetes::{self, tls_crt, StandIn, TOKEN as K8S_TOKEN};
use crate::support::pebble::PebbleOptions;
use crate::support::tls_server::TlsServer;
use crate::support::webhook_receiver::{self, Seen};

const HOOK_SECRET: &str = "the-hook-signing-secret";
/// In the webhook target's path and query: never stored in the clear.
const HOOK_PATH_TOKEN: &str = "hook-path-token-7f3a";

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

    let got: Arc<Mutex<Seen>> = Arc::default();
    let (hook_port, hook) = webhook_receiver::start(HOOK_SECRET, got.clone(), |_, _| false).await;
    let secrets = Arc::new(Mutex::new(StandIn::default()));
    let k8s = kubernetes::serve(secrets.clone(), true).await;
    // What the Secret held before CertAutoPilot: put back on rollback.
    let before = "-----BEGIN CERTIFICATE-----\nbefore\n-----END CERTIFICATE-----\n";
    {
        let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let mut s = secrets.lock().unwrap();
        s.version = 41;
        s.secrets.insert(
            "web/www-tls".into(),
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
                    "webhook": { "url": format!("http://127.0.0.1:{hook_port}/certificates/{HOOK_PATH_TOKEN}?t={HOOK_PATH_TOKEN}"), "secret": HOOK_SECRET },
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
                                           "kubeconfig": k8s.kubeconfig() },
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
            !got.lock().unwrap().taken.is_empty()
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
        let deliveries = got.lock().unwrap().all_taken();
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
        let secret = &s.secrets["web/www-tls"];
        assert_eq!(tls_crt(secret), before);
        assert_eq!(secret["metadata"]["labels"]["team"], "web");
    }

    // Audited and counted.
    let actions = api.audit_actions(&p).await;
    for action in [
        "target.created",
        "distribution.validated",
        "distribution.rolled_back",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
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
    // The webhook's path and query (a token often lives there) are sealed:
    // the receiver was posted at the whole URL, the database holds only
    // its origin in the clear.
    assert!(
        got.lock()
            .unwrap()
            .taken
            .contains_key(&format!("/certificates/{HOOK_PATH_TOKEN}")),
        "the webhook is posted at its whole URL"
    );
    assert_not_stored(&store, HOOK_PATH_TOKEN).await;

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
    k8s.handle.stop(true).await;
}
