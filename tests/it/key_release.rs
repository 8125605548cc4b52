//! One door for keys (issue 26, finding 1): a private key leaves only
//! through the key-release service, which only a project admin (or the
//! delivery an admin set up) opens, and every key that leaves leaves one
//! `key.released` audit record naming where it went.
//!
//! The attack as it was tried on main before this change: a project
//! **editor** made a `kubernetes-secret` target whose kubeconfig named its
//! own HTTPS server (here the Kubernetes stand-in), named it on the
//! project's certificate, and received `tls.key` — with no key release in
//! the audit log. Now the editor is refused at both steps, and the keys an
//! admin sends out (the key endpoint, an agent's bundle, a Kubernetes
//! Secret, SSH) are each recorded once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

use crate::support::cluster::{Cluster, Role};
use crate::support::kubernetes::{self, StandIn};
use crate::support::pebble::PebbleOptions;
use crate::support::sshd::Sshd;

const NAME: &str = "www.door.example.test";

fn state_of<'a>(distributions: &'a Value, target: &str) -> Option<&'a str> {
    distributions["items"]
        .as_array()?
        .iter()
        .find(|d| d["target"] == target)?["state"]
        .as_str()
}

/// The `key.released` records of certificate `cert_id`.
async fn releases(cluster: &Cluster, p: &str, cert_id: &str) -> Vec<Document> {
    use futures::TryStreamExt;
    cluster
        .db
        .store()
        .await
        .collection("audit")
        .find(doc! {
            "action": "key.released",
            "target": format!("projects/{p}/certificates/{cert_id}"),
        })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

#[actix_web::test]
async fn keys_leave_only_through_the_audited_door_an_admin_opens() {
    let cluster = Cluster::builder("key-door")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("door", cluster.pebble()).await;
    api.grant(&p, &["door.example.test"]).await;
    let mint = |role: &'static str| {
        let p = p.clone();
        async move {
            let (status, minted) = api
                .post(
                    "/tokens",
                    json!({ "roles": [{ "project_id": p, "role": role }] }),
                )
                .await;
            assert_eq!(status, 201, "{minted}");
            api.with_token(minted["token"].as_str().unwrap())
        }
    };
    let admin = mint("admin").await;
    let editor = mint("editor").await;
    let viewer = mint("viewer").await;

    // The editor's own "cluster": an HTTPS server it controls.
    let editors_cluster = kubernetes::serve(Arc::new(Mutex::new(StandIn::default())), true).await;
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(work.path());
    let served = work.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let ssh_settings = json!({ "host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                               "host_key": sshd.host_key, "directory": served,
                               "private_key": sshd.client_key });
    let key_receiving = [
        json!({ "name": "editors-cluster", "kind": "kubernetes-secret",
                "kubernetes_secret": { "namespace": "web", "secret_name": "www-tls",
                                       "kubeconfig": editors_cluster.kubeconfig() } }),
        json!({ "name": "editors-hook", "kind": "webhook",
                "webhook": { "url": "https://hooks.example.test/x", "include_key": true,
                             "secret": "a-secret-of-sixteen-chars" } }),
        json!({ "name": "editors-host", "kind": "ssh", "ssh": ssh_settings }),
        json!({ "name": "editors-agent", "kind": "agent" }),
    ];
    for body in &key_receiving {
        let (status, problem) = editor
            .post(&format!("/projects/{p}/targets"), body.clone())
            .await;
        assert_eq!(status, 403, "{body}: {problem}");
        assert!(
            problem.to_string().contains("admin role"),
            "the refusal names the reason: {problem}"
        );
    }
    // A webhook without the key stays an editor's to make; its URL's
    // query is for admins' eyes only.
    let (status, hook) = editor
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "notify-deploys", "kind": "webhook",
                    "webhook": { "url": "https://hooks.example.test/deploys?token=s3cr3t",
                                 "secret": "a-secret-of-sixteen-chars" } }),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    let hook_path = format!("/projects/{p}/targets/{}", hook["id"].as_str().unwrap());
    for (who, client) in [("viewer", &viewer), ("editor", &editor)] {
        let (_, seen) = client.get(&hook_path).await;
        assert_eq!(
            seen["webhook"]["url"], "https://hooks.example.test",
            "{who} sees the origin only: {seen}"
        );
    }
    let (_, seen) = admin.get(&hook_path).await;
    assert_eq!(
        seen["webhook"]["url"],
        "https://hooks.example.test/deploys?token=s3cr3t"
    );
    // Nor does a database reader see the token: the whole URL is sealed,
    // only the origin is stored in the clear (the admin's view above opens
    // the sealed URL).
    crate::support::api::assert_not_stored(&cluster.db.store().await, "s3cr3t").await;
    crate::support::api::assert_not_stored(&cluster.db.store().await, "/deploys").await;

    // The admin makes the targets that receive keys.
    let mut ids = std::collections::HashMap::new();
    let k8s_state = Arc::new(Mutex::new(StandIn::default()));
    let k8s = kubernetes::serve(k8s_state.clone(), true).await;
    for body in [
        json!({ "name": "cluster", "kind": "kubernetes-secret",
                "kubernetes_secret": { "namespace": "web", "secret_name": "www-tls",
                                       "kubeconfig": k8s.kubeconfig() } }),
        json!({ "name": "host", "kind": "ssh", "ssh": ssh_settings }),
        json!({ "name": "agent", "kind": "agent" }),
        // HTTPS with a CA no webhook trusts (the stand-in's): the key goes
        // through the door and the handshake then fails, so the door's
        // record is all that shows the webhook path asks it too.
        json!({ "name": "hook", "kind": "webhook",
                "webhook": { "url": format!("{}hook?token=x", k8s.url), "include_key": true,
                             "secret": "a-secret-of-sixteen-chars" } }),
    ] {
        let (status, target) = admin.post(&format!("/projects/{p}/targets"), body).await;
        assert_eq!(status, 201, "{target}");
        assert_eq!(target["receives_keys"], true, "{target}");
        ids.insert(
            target["name"].as_str().unwrap().to_string(),
            target["id"].as_str().unwrap().to_string(),
        );
    }

    // The editor may not send a certificate there, at declaration or later.
    let (status, problem) = editor
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "www", "dns_names": [NAME], "issuer_id": issuer, "targets": ["cluster"] }),
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    let (path, issued) = editor
        .issue(
            &p,
            json!({ "name": "www", "dns_names": [NAME], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let cert_id = issued["id"].as_str().unwrap().to_string();
    let (status, problem) = editor
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["cluster", "host", "agent"] })),
        )
        .await;
    assert_eq!(status, 403, "{problem}");
    assert!(problem.to_string().contains("admin role"), "{problem}");
    assert!(
        releases(&cluster, &p, &cert_id).await.is_empty(),
        "no key has left"
    );

    // The admin names them: the worker pushes to the cluster and the host.
    let (status, body) = admin
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["cluster", "host", "agent", "hook"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // An editor may keep them when changing the list.
    let (status, body) = editor
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["cluster", "host", "agent", "hook", "notify-deploys"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    api.wait_for(
        &format!("{path}/distributions"),
        Duration::from_secs(90),
        "the pushes finished",
        |d| state_of(d, "cluster") == Some("validated") && state_of(d, "host") == Some("validated"),
    )
    .await;
    assert!(k8s_state
        .lock()
        .unwrap()
        .secrets
        .contains_key("web/www-tls"));
    assert!(served.join(&cert_id).join("key.pem").exists());

    // The agent fetches its bundle; the admin reads the key.
    let (status, minted) = admin
        .post(
            "/tokens",
            json!({ "roles": [{ "project_id": p, "role": "agent", "targets": [ids["agent"]] }] }),
        )
        .await;
    assert_eq!(status, 201, "{minted}");
    let agent = api.with_token(minted["token"].as_str().unwrap());
    let (status, bundle) = agent
        .get(&format!(
            "/projects/{p}/targets/{}/deliveries/{cert_id}",
            ids["agent"]
        ))
        .await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(
        editor
            .get_answer(&format!("{path}/private-key"))
            .await
            .status,
        403
    );
    let key = admin.get_answer(&format!("{path}/private-key")).await;
    assert_eq!(key.status, 200);
    assert_eq!(bundle["key_pem"].as_str().unwrap(), key.text);

    // One record per key that left, each naming where it went and who
    // asked; the webhook's attempts are retried (its receiver is never
    // trusted), each one a release.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let records = loop {
        let records = releases(&cluster, &p, &cert_id).await;
        if records
            .iter()
            .any(|r| r.to_string().contains("\"webhook\""))
        {
            break records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no webhook release: {records:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let serial = issued["serial"].as_str().unwrap();
    let kind = |r: &Document| {
        r.get_document("details")
            .and_then(|d| d.get_document("destination"))
            .and_then(|d| d.get_str("kind"))
            .unwrap_or_default()
            .to_string()
    };
    let mut kinds: Vec<String> = records
        .iter()
        .map(kind)
        .filter(|k| k != "webhook")
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["agent", "api", "kubernetes-secret", "ssh"],
        "{records:?}"
    );
    for r in &records {
        let details = r.get_document("details").unwrap();
        assert_eq!(details.get_str("serial").unwrap(), serial, "{r}");
        let destination = details.get_document("destination").unwrap();
        let requested_by = details.get_str("requested_by").unwrap();
        match kind(r).as_str() {
            "api" => assert!(requested_by.starts_with("token:"), "{r}"),
            "agent" => assert!(requested_by.starts_with("token:"), "{r}"),
            "kubernetes-secret" => {
                assert!(requested_by.starts_with("job:distribute:"), "{r}");
                assert_eq!(destination.get_str("target_id").unwrap(), ids["cluster"]);
                assert!(
                    destination
                        .get_str("endpoint")
                        .unwrap()
                        .starts_with(k8s.url.origin().ascii_serialization().as_str()),
                    "{r}"
                );
            }
            "ssh" => {
                assert!(requested_by.starts_with("job:distribute:"), "{r}");
                assert_eq!(
                    destination.get_str("endpoint").unwrap(),
                    format!("{}@127.0.0.1:{}", sshd.user, sshd.port)
                );
            }
            "webhook" => {
                assert!(requested_by.starts_with("job:distribute:"), "{r}");
                assert_eq!(
                    destination.get_str("endpoint").unwrap(),
                    k8s.url.origin().ascii_serialization(),
                    "the origin, never the query: {r}"
                );
            }
            other => panic!("a release to {other}: {r}"),
        }
    }
    drop(sshd);
}
