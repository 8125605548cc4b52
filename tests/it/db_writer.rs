//! What a database writer without the KEK can no longer do (issue 11,
//! section 3): mint an API token by inserting its record, or read another
//! project's private key by moving a reference; and migration 12, which
//! binds what earlier builds stored so that both hold for old data too.

use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::api::{assert_not_stored, token};
use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use crate::support::TestDb;
use certautopilot::crypto::api_tokens::TokenKey;
use certautopilot::crypto::envelope;
use certautopilot::crypto::reseal::Reseal;
use certautopilot::crypto::secrets::{SecretRef, Secrets};
use certautopilot::store::keys::{self, StoredSecret};
use certautopilot::store::schema::{self, KekMigrations, MigrateError};
use certautopilot::store::tokens;

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A token record as the attacker writes it: the SHA-256 of a secret of
/// their choosing, global admin, marked as keyed like real ones.
fn forged_token(secret: &str) -> Document {
    doc! {
        "_id": sha256_hex(secret),
        "id": "tok_forged",
        "global_admin": true,
        "roles": [],
        "description": "inserted straight into MongoDB",
        "revoked": false,
        "keyed": "hmac-sha256",
        "created_at": mongodb::bson::DateTime::now(),
    }
}

#[tokio::test]
async fn a_token_record_inserted_into_the_database_authenticates_nobody() {
    let cluster = Cluster::builder("forged_token").start().await;
    let store = cluster.db.store().await;
    let secret = "cap_chosen-by-the-attacker";
    store
        .collection("tokens")
        .insert_one(forged_token(secret))
        .await
        .unwrap();
    let got = cluster.api.with_token(secret).get_answer("/projects").await;
    assert_eq!(got.status, 401, "{}", got.text);
    // A real token still works.
    assert_eq!(cluster.api.get_answer("/projects").await.status, 200);

    // Nor can a token's record be edited to grant more: a viewer made a
    // global admin, or an expired token revived, no longer authenticates.
    let (status, p) = cluster
        .api
        .post("/projects", serde_json::json!({ "name": "raised" }))
        .await;
    assert_eq!(status, 201, "{p}");
    let (status, viewer) = cluster
        .api
        .post(
            "/tokens",
            serde_json::json!({ "roles": [{ "project_id": p["id"], "role": "viewer" }] }),
        )
        .await;
    assert_eq!(status, 201, "{viewer}");
    let viewer_api = cluster.api.with_token(viewer["token"].as_str().unwrap());
    assert_eq!(viewer_api.get_answer("/projects").await.status, 200);
    store
        .collection("tokens")
        .update_one(
            doc! { "id": viewer["id"].as_str().unwrap() },
            doc! { "$set": { "global_admin": true }, "$unset": { "expires_at": "" } },
        )
        .await
        .unwrap();
    // The api remembers a checked token for CAP_API_TOKEN_CACHE_SECS (5 s):
    // until then it is let in as what it was checked as, a viewer of its
    // one project; from then on, refused.
    let raised = Instant::now();
    let refused = crate::support::wait_until(Duration::from_secs(7), || async {
        let got = viewer_api.get_answer("/projects").await;
        if got.status == 200 {
            let ids: Vec<&str> = got.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["id"].as_str().unwrap())
                .collect();
            assert_eq!(ids, [p["id"].as_str().unwrap()], "never more than a viewer");
        }
        got.status == 401
    })
    .await;
    assert!(
        refused && raised.elapsed() <= Duration::from_secs(6),
        "a raised token authenticates nobody once its check is due again ({:?})",
        raised.elapsed()
    );
}

#[tokio::test]
async fn a_key_reference_moved_to_another_project_does_not_open() {
    let cluster = Cluster::builder("moved_key")
        .pebble(PebbleOptions::default())
        .workers(1)
        .start()
        .await;
    let (admin, pebble) = (&cluster.api, cluster.pebble());
    let mut issued = Vec::new();
    for name in ["alpha", "bravo"] {
        let (p, issuer) = admin.project_with_issuer(name, pebble).await;
        let domain = format!("{name}.example.test");
        admin.grant(&p, &[&domain]).await;
        let (path, cert) = admin
            .issue(
                &p,
                json!({ "name": "www", "dns_names": [domain], "issuer_id": issuer }),
                Duration::from_secs(90),
            )
            .await;
        issued.push((p, path, cert["id"].as_str().unwrap().to_string()));
    }
    let (a, b) = (&issued[0], &issued[1]);
    let a_admin = admin.with_token(&token(&cluster.db, &["--role", "admin", "--project", &a.0]));
    let b_admin = admin.with_token(&token(&cluster.db, &["--role", "admin", "--project", &b.0]));
    let a_key = a_admin.get_text(&format!("{}/private-key", a.1)).await;
    assert!(a_key.contains("PRIVATE KEY"), "{a_key}");

    // The attack: point B's certificate at A's key.
    let store = cluster.db.store().await;
    let certs = store.collection("certificates");
    let a_doc = certs.find_one(doc! { "_id": &a.2 }).await.unwrap().unwrap();
    let a_current = a_doc.get_document("current").unwrap();
    certs
        .update_one(
            doc! { "_id": &b.2 },
            doc! { "$set": {
                "current.key_secret": a_current.get_str("key_secret").unwrap(),
                "current.order_id": a_current.get_str("order_id").unwrap(),
            } },
        )
        .await
        .unwrap();
    let got = b_admin.get_answer(&format!("{}/private-key", b.1)).await;
    assert!(
        !got.text.contains("PRIVATE KEY"),
        "B read A's key: {}",
        got.text
    );
    assert_eq!(got.status, 409, "{}", got.text);
    assert!(got.text.contains("another owner"), "{}", got.text);
    // A still reads its own.
    assert_eq!(
        a_admin.get_text(&format!("{}/private-key", a.1)).await,
        a_key
    );

    // Point B's certificate at A's issuer: the worker looks issuers up in
    // the certificate's own project, so A's ACME account is never used.
    let a_issuer = a_doc.get_str("issuer_id").unwrap();
    certs
        .update_one(
            doc! { "_id": &b.2 },
            doc! { "$set": { "issuer_id": a_issuer } },
        )
        .await
        .unwrap();
    let (status, body) = b_admin.post(&format!("{}/issue", b.1), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let refused = b_admin
        .wait_for(&b.1, Duration::from_secs(60), "refused", |c| {
            c["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("no longer exists in project"))
        })
        .await;
    assert_ne!(
        refused["serial"],
        a_doc
            .get_document("current")
            .unwrap()
            .get_str("serial")
            .unwrap()
    );
}

/// Seals `plaintext` as builds before migration 12 did: under the record
/// id alone, without the `bound` mark.
async fn legacy_secret(db: &TestDb, id: &str, plaintext: &[u8]) {
    let store = db.store().await;
    let sealed = envelope::seal(db.kek().as_ref(), &format!("keys/{id}"), plaintext).unwrap();
    let stored = StoredSecret {
        kek_version: sealed.kek_version,
        wrapped_key: sealed.wrapped_key,
        nonce: sealed.nonce.to_vec(),
        ciphertext: sealed.ciphertext,
    };
    keys::put(&store, id, &stored).await.unwrap();
    store
        .collection("keys")
        .update_one(doc! { "_id": id }, doc! { "$unset": { "bound": "" } })
        .await
        .unwrap();
}

#[tokio::test]
async fn migration_12_rekeys_tokens_and_seals_what_earlier_builds_stored() {
    let db = TestDb::migrated("migration_12").await;
    let store = db.store().await;
    // What a build before migration 12 left: a token keyed by SHA-256, a
    // certificate key and an account sealed under their ids, an EAB key in
    // the clear.
    let secret = "cap_an-old-token";
    let mut old_token = forged_token(secret);
    old_token.remove("keyed");
    store
        .collection("tokens")
        .insert_one(old_token)
        .await
        .unwrap();
    store
        .collection("orders")
        .insert_one(doc! { "_id": "ord_old", "project_id": "prj_a", "certificate_id": "crt_a", "stage": "valid" })
        .await
        .unwrap();
    store
        .collection("issuers")
        .insert_one(doc! { "_id": "iss_old", "project_id": "prj_a", "eab": { "kid": "kid-1", "hmac_key": "c2VjcmV0LWhtYWM" } })
        .await
        .unwrap();
    legacy_secret(&db, "cert-keys/ord_old", b"-----BEGIN PRIVATE KEY-----old").await;
    legacy_secret(&db, "acme-accounts/iss_old", b"{\"account\":1}").await;
    store
        .collection("schema")
        .update_one(
            doc! { "_id": "version" },
            doc! { "$set": { "version": 11i64 } },
        )
        .await
        .unwrap();

    // Without the KEK the migration cannot do its work, and says so.
    let err = schema::migrate(&store, |_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            MigrateError::NeedsKek {
                version: 12,
                pending: 4
            }
        ),
        "{err}"
    );

    let secrets = Secrets::new(store.clone(), db.kek());
    let reseal = Reseal {
        secrets: secrets.clone(),
    };
    for run in 0..2 {
        schema::migrate_with_kek(&store, Some(&reseal as &dyn KekMigrations), false, |_| {})
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
        let record_id = TokenKey::new(secrets.clone())
            .record_id(secret)
            .await
            .unwrap();
        let token = tokens::live(&store, &record_id).await.unwrap();
        let all: Vec<Document> = crate::support::documents(&store, "tokens", doc! {}).await;
        assert!(
            token.is_some(),
            "run {run}: the old token still works: {record_id} {all:?}"
        );
        let key = secrets
            .get(&SecretRef::certificate_key("prj_a", "crt_a", "ord_old"))
            .await
            .unwrap();
        assert_eq!(key.as_slice(), b"-----BEGIN PRIVATE KEY-----old");
        let account = secrets
            .get(&SecretRef::acme_account("prj_a", "iss_old"))
            .await
            .unwrap();
        assert_eq!(account.as_slice(), b"{\"account\":1}");
        let eab = secrets
            .get(&SecretRef::eab_key("prj_a", "iss_old"))
            .await
            .unwrap();
        assert_eq!(eab.as_slice(), b"c2VjcmV0LWhtYWM");
        let issuer = store
            .collection("issuers")
            .find_one(doc! { "_id": "iss_old" })
            .await
            .unwrap()
            .unwrap();
        assert!(!issuer.to_string().contains("c2VjcmV0LWhtYWM"), "{issuer}");
        // Bound to their owner: the same record read for another owner fails.
        assert!(secrets
            .get(&SecretRef::certificate_key("prj_b", "crt_a", "ord_old"))
            .await
            .is_err());
        store
            .collection("schema")
            .update_one(
                doc! { "_id": "version" },
                doc! { "$set": { "version": 11i64 } },
            )
            .await
            .unwrap();
    }
}

/// The attack of issue 26, finding 2, as it was tried on main: with write
/// access to MongoDB alone, an `ssh` target's port, host key and directory
/// pointed at a second sshd (which accepts the project's login key), and a
/// newline in `directory` that added a shell escape (`!`) to the worker's
/// `sftp` batch. Before this change the worker logged in there, uploaded
/// the new serial's `key.pem`, and ran the injected line as root on itself.
/// Now the edited target does not verify and nothing is sent; and even a
/// record whose MAC a writer somehow matched is refused by the settings
/// check at the point of use, before a line reaches `sftp`.
#[actix_web::test]
async fn a_database_writer_cannot_steer_an_ssh_delivery_nor_run_commands_on_the_worker() {
    use crate::support::cluster::Role;
    use crate::support::sshd::Sshd;
    use certautopilot::crypto::binding::BindingKey;
    use certautopilot::store::targets;

    let cluster = Cluster::builder("writer-ssh")
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
    let (p, issuer) = api.project_with_issuer("steered", cluster.pebble()).await;
    api.grant(&p, &["steer.example.test"]).await;
    let work = tempfile::tempdir().unwrap();
    let (legit_dir, attacker_dir) = (work.path().join("legit"), work.path().join("attacker"));
    for dir in [&legit_dir, &attacker_dir] {
        std::fs::create_dir_all(dir.join("files")).unwrap();
    }
    let legit = Sshd::start(&legit_dir);
    // The attacker's host takes the project's login key, as any server can.
    let attacker = Sshd::start(&attacker_dir);
    std::fs::copy(
        legit_dir.join("client.pub"),
        attacker_dir.join("authorized_keys"),
    )
    .unwrap();
    let marker = work.path().join("injected-line-ran");
    let (status, target) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "edge", "kind": "ssh",
                    "ssh": { "host": "127.0.0.1", "port": legit.port, "user": legit.user,
                             "host_key": legit.host_key, "directory": legit_dir.join("files"),
                             "private_key": legit.client_key } }),
        )
        .await;
    assert_eq!(status, 201, "{target}");
    let target_id = target["id"].as_str().unwrap().to_string();
    let (path, issued) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.steer.example.test"], "issuer_id": issuer,
                    "targets": ["edge"] }),
            Duration::from_secs(60),
        )
        .await;
    let cert_id = issued["id"].as_str().unwrap().to_string();
    let delivered = |serial: String| {
        move |d: &serde_json::Value| {
            d["items"].as_array().is_some_and(|items| {
                items.iter().any(|r| {
                    r["serial"] == serial.as_str()
                        && ["validated", "failed", "rolled_back"]
                            .contains(&r["state"].as_str().unwrap_or(""))
                })
            })
        }
    };
    let first = api
        .wait_for(
            &format!("{path}/distributions"),
            Duration::from_secs(60),
            "the first delivery",
            delivered(issued["serial"].as_str().unwrap().to_string()),
        )
        .await;
    assert_eq!(first["items"][0]["state"], "validated", "{first}");
    assert!(legit_dir
        .join("files")
        .join(&cert_id)
        .join("key.pem")
        .exists());

    // The writer points the target at its own host and adds a line.
    let store = cluster.db.store().await;
    let injected = format!(
        "{}\n!touch {}",
        attacker_dir.join("files").display(),
        marker.display()
    );
    store
        .collection("distribution_targets")
        .update_one(
            doc! { "_id": &target_id },
            doc! { "$set": { "settings.port": i32::from(attacker.port),
            "settings.host_key": &attacker.host_key,
            "settings.directory": &injected } },
        )
        .await
        .unwrap();
    let reissue = |expect: &'static str| {
        let path = path.clone();
        async move {
            let before = api.get(&path).await.1["serial"].clone();
            let (status, body) = api.post(&format!("{path}/issue"), json!({})).await;
            assert_eq!(status, 202, "{body}");
            let renewed = api
                .wait_for(&path, Duration::from_secs(60), "a new serial", |c| {
                    c["status"] == "issued" && c["serial"] != before
                })
                .await;
            let done = api
                .wait_for(
                    &format!("{path}/distributions"),
                    Duration::from_secs(60),
                    "the delivery ended",
                    delivered(renewed["serial"].as_str().unwrap().to_string()),
                )
                .await;
            let record = done["items"][0].clone();
            assert_eq!(record["state"], "failed", "{record}");
            assert!(
                record["last_error"].as_str().unwrap_or("").contains(expect),
                "{expect}: {record}"
            );
        }
    };
    reissue("does not verify").await;
    let nothing_there = |dir: &std::path::Path| walk(dir).iter().all(|f| !f.ends_with("key.pem"));
    assert!(
        nothing_there(&attacker_dir.join("files")),
        "no key at the attacker's host"
    );
    assert!(!marker.exists(), "no injected line ran");
    let log = cluster.workers[0].log_text();
    assert!(
        log.contains("does not verify"),
        "the worker names the record"
    );

    // A writer who could match the MAC still meets the settings check.
    let found = targets::in_project(&store, &p, &target_id)
        .await
        .unwrap()
        .unwrap();
    let forged = targets::parse(&found).unwrap();
    let mac = BindingKey::new(TokenKey::new(Secrets::new(store.clone(), cluster.db.kek())))
        .target_mac(&forged)
        .await
        .unwrap();
    store
        .collection("distribution_targets")
        .update_one(
            doc! { "_id": &target_id },
            doc! { "$set": { "binding_mac": mac } },
        )
        .await
        .unwrap();
    reissue("ssh.directory").await;
    assert!(nothing_there(&attacker_dir.join("files")));
    assert!(!marker.exists(), "no injected line ran");
    drop((legit, attacker));
}

/// Every file under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// A certificate's list of targets is bound too: a writer who adds a
/// target an admin made for another certificate gets no delivery there.
#[actix_web::test]
async fn a_database_writer_cannot_add_a_target_to_a_certificate() {
    use crate::support::cluster::Role;
    use crate::support::kubernetes::{self, StandIn};
    use std::sync::{Arc, Mutex};

    let cluster = Cluster::builder("writer-list")
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
    let (p, issuer) = api.project_with_issuer("listed", cluster.pebble()).await;
    api.grant(&p, &["list.example.test"]).await;
    let state = Arc::new(Mutex::new(StandIn::default()));
    let k8s = kubernetes::serve(state.clone(), true).await;
    let (status, target) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "cluster", "kind": "kubernetes-secret",
                    "kubernetes_secret": { "namespace": "web", "secret_name": "other-tls",
                                           "kubeconfig": k8s.kubeconfig() } }),
        )
        .await;
    assert_eq!(status, 201, "{target}");
    let (path, _) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.list.example.test"], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let cert_id = path.rsplit('/').next().unwrap().to_string();
    let store = cluster.db.store().await;
    store
        .collection("certificates")
        .update_one(
            doc! { "_id": &cert_id },
            doc! { "$set": { "targets": [{ "id": target["id"].as_str().unwrap(), "name": "cluster" }],
                             "distribute_next_at": mongodb::bson::DateTime::now() } },
        )
        .await
        .unwrap();
    let done = api
        .wait_for(
            &format!("{path}/distributions"),
            Duration::from_secs(60),
            "the delivery ended",
            |d| d["items"][0]["state"] == "failed",
        )
        .await;
    assert!(
        done["items"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("target list") && e.contains("does not verify")),
        "{done}"
    );
    assert!(
        state.lock().unwrap().secrets.is_empty(),
        "nothing was written"
    );
}

/// Migration 17 binds what builds before it stored unbound, and disables
/// the targets that receive keys but that no admin is known to have made
/// (their `target.created` record names an editor's token, or nobody).
/// It binds once: a later run leaves a record whose MAC was stripped
/// unbound, so a writer who also rolls the schema back launders nothing.
/// A webhook's whole URL (its path or query may hold a token) is sealed
/// first: the settings keep only its origin in the clear, under the MAC.
#[tokio::test]
async fn migration_17_binds_stored_settings_and_disables_targets_no_admin_made() {
    use certautopilot::audit::{Audit, Event};
    use certautopilot::crypto::binding::BindingKey;
    use certautopilot::services::migration::KekWork;
    use certautopilot::store::{channels, targets};

    let db = TestDb::migrated("migration_17").await;
    let store = db.store().await;
    let secrets = Secrets::new(store.clone(), db.kek());
    let token_key = TokenKey::new(secrets.clone());
    for (id, role) in [("tok_admin", "admin"), ("tok_editor", "editor")] {
        let mut record = doc! {
            "_id": format!("keyed-{id}"), "id": id, "global_admin": false,
            "roles": [{ "project_id": "prj_a", "role": role }], "revoked": false,
            "keyed": "hmac-sha256",
        };
        let mac = token_key.grants_mac(&record).await.unwrap();
        record.insert("grants_mac", mac);
        store.collection("tokens").insert_one(record).await.unwrap();
    }
    let ssh = doc! { "host": "edge.example.test", "port": 22, "user": "deploy",
    "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPNVuX+imp58Tmi8TOMHWdBamWSZB+EPgi033VJry3Og",
    "directory": "/srv/certs" };
    let made = [
        ("tgt_by_admin", "ssh", ssh.clone(), Some("tok_admin")),
        (
            "tgt_by_editor",
            "kubernetes-secret",
            doc! { "namespace": "web", "secret_name": "tls", "include_ca": false, "kubeconfig": true },
            Some("tok_editor"),
        ),
        ("tgt_by_nobody", "agent", doc! {}, None),
        (
            "tgt_hook",
            "webhook",
            doc! { "url": "https://hooks.example.test/x?token=t-hook", "include_key": false },
            Some("tok_editor"),
        ),
    ];
    let audit = Audit::new(store.clone());
    for (id, kind, settings, by) in &made {
        store
            .collection("distribution_targets")
            .insert_one(
                doc! { "_id": id, "project_id": "prj_a", "name": id, "kind": kind,
                "settings": settings },
            )
            .await
            .unwrap();
        if let Some(by) = by {
            audit
                .append(&Event::new(
                    format!("token:{by}"),
                    "target.created",
                    format!("projects/prj_a/targets/{id}"),
                ))
                .await
                .unwrap();
        }
    }
    store
        .collection("notification_channels")
        .insert_one(
            doc! { "_id": "chn_1", "project_id": "prj_a", "name": "ops", "kind": "webhook",
            "settings": { "url": "https://ops.example.test/hook?token=t-ops" } },
        )
        .await
        .unwrap();
    store
        .collection("certificates")
        .insert_one(doc! { "_id": "crt_1", "project_id": "prj_a", "name": "www",
        "targets": [{ "id": "tgt_by_admin", "name": "tgt_by_admin" }] })
        .await
        .unwrap();
    let back_to_16 = || async {
        store
            .collection("schema")
            .update_one(
                doc! { "_id": "version" },
                doc! { "$set": { "version": 16i64 } },
            )
            .await
            .unwrap();
    };
    back_to_16().await;

    let err = schema::migrate(&store, |_| {}).await.unwrap_err();
    assert!(
        matches!(
            err,
            MigrateError::NeedsKek {
                version: 17,
                pending: 6
            }
        ),
        "{err}"
    );
    let work = KekWork {
        secrets: secrets.clone(),
    };
    let mut said = Vec::new();
    schema::migrate_with_kek(&store, Some(&work as &dyn KekMigrations), false, |step| {
        said.push(step.to_string())
    })
    .await
    .unwrap();
    assert!(said.iter().any(|s| s.contains("migration 17")), "{said:?}");

    let binding = BindingKey::new(token_key.clone());
    for (id, _, _, _) in &made {
        let found = targets::in_project(&store, "prj_a", id)
            .await
            .unwrap()
            .unwrap();
        let target = targets::parse(&found).unwrap();
        binding
            .verify_target(&target, targets::binding_mac(&found))
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        let disabled = target.disabled.is_some();
        let expected = matches!(*id, "tgt_by_editor" | "tgt_by_nobody");
        assert_eq!(disabled, expected, "{id}: {:?}", target.disabled);
    }
    let channel = store
        .collection("notification_channels")
        .find_one(doc! { "_id": "chn_1" })
        .await
        .unwrap()
        .unwrap();
    binding
        .verify_channel(
            &channels::parse(&channel).unwrap(),
            channels::binding_mac(&channel),
        )
        .await
        .unwrap();
    let cert = store
        .collection("certificates")
        .find_one(doc! { "_id": "crt_1" })
        .await
        .unwrap()
        .unwrap();
    binding
        .verify_certificate_targets(
            "prj_a",
            "crt_1",
            &["tgt_by_admin".to_string()],
            cert.get_str("targets_mac").ok(),
        )
        .await
        .unwrap();

    // The webhooks' whole URLs are sealed; their origins stay in the clear.
    let hook = targets::in_project(&store, "prj_a", "tgt_hook")
        .await
        .unwrap()
        .unwrap();
    for (what, d, origin, sealed, url) in [
        (
            "target",
            &hook,
            "https://hooks.example.test",
            SecretRef::target_url("prj_a", "tgt_hook"),
            "https://hooks.example.test/x?token=t-hook",
        ),
        (
            "channel",
            &channel,
            "https://ops.example.test",
            SecretRef::channel_url(Some("prj_a"), "chn_1"),
            "https://ops.example.test/hook?token=t-ops",
        ),
    ] {
        let settings = d.get_document("settings").unwrap();
        assert_eq!(settings.get_str("origin"), Ok(origin), "{what}: {d}");
        assert!(!settings.contains_key("url"), "{what}: {d}");
        assert_eq!(
            secrets.open_url(&sealed, origin).await.unwrap(),
            url,
            "{what}"
        );
        // Checked against the bound origin: a URL elsewhere does not open.
        let elsewhere = secrets.open_url(&sealed, "https://elsewhere.test").await;
        assert!(
            elsewhere
                .as_ref()
                .is_err_and(|e| e.to_string().contains("not at the bound origin")),
            "{what}: {elsewhere:?}"
        );
    }
    assert_not_stored(&store, "t-hook").await;
    assert_not_stored(&store, "t-ops").await;

    // A writer strips a MAC and rolls the schema back: not bound again.
    store
        .collection("distribution_targets")
        .update_one(
            doc! { "_id": "tgt_by_editor" },
            doc! { "$unset": { "binding_mac": "", "disabled": "" } },
        )
        .await
        .unwrap();
    back_to_16().await;
    schema::migrate_with_kek(&store, Some(&work as &dyn KekMigrations), false, |_| {})
        .await
        .unwrap();
    let found = targets::in_project(&store, "prj_a", "tgt_by_editor")
        .await
        .unwrap()
        .unwrap();
    assert!(targets::binding_mac(&found).is_none(), "{found}");
}

/// A notification channel's settings are bound too: a writer who points a
/// webhook channel at its own receiver (to collect signed messages, or an
/// email channel's SMTP host to capture its password) gets nothing, from
/// the worker or from a test message.
#[actix_web::test]
async fn a_database_writer_cannot_point_a_channel_elsewhere() {
    use crate::support::cluster::Role;
    use crate::support::webhook_receiver::{self, Seen};
    use std::sync::{Arc, Mutex};

    const SECRET: &str = "channel-signing-secret";
    let cluster = Cluster::builder("writer-channel")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .env(Role::Worker, "CAP_NOTIFY_ATTEMPTS", "2")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("told", cluster.pebble()).await;
    api.grant(&p, &["told.example.test"]).await;
    let ours: Arc<Mutex<Seen>> = Arc::default();
    let theirs: Arc<Mutex<Seen>> = Arc::default();
    let (our_port, _ours) = webhook_receiver::start(SECRET, ours.clone(), |_, _| false).await;
    let (their_port, _theirs) = webhook_receiver::start(SECRET, theirs.clone(), |_, _| false).await;
    let (status, channel) = api
        .post(
            &format!("/projects/{p}/channels"),
            json!({ "name": "ops", "kind": "webhook",
                    "webhook": { "url": format!("http://127.0.0.1:{our_port}/ops"), "secret": SECRET } }),
        )
        .await;
    assert_eq!(status, 201, "{channel}");
    let channel_id = channel["id"].as_str().unwrap().to_string();
    cluster
        .db
        .store()
        .await
        .collection("notification_channels")
        .update_one(
            doc! { "_id": &channel_id },
            doc! { "$set": { "settings.origin": format!("http://127.0.0.1:{their_port}") } },
        )
        .await
        .unwrap();

    let (status, problem) = api
        .post(
            &format!("/projects/{p}/channels/{channel_id}/test"),
            json!({}),
        )
        .await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem.to_string().contains("does not verify"), "{problem}");
    api.issue(
        &p,
        json!({ "name": "www", "dns_names": ["www.told.example.test"], "issuer_id": issuer }),
        Duration::from_secs(60),
    )
    .await;
    let dead = api
        .wait_for(
            &format!("/projects/{p}/notifications?state=dead"),
            Duration::from_secs(60),
            "the issued notice refused",
            |page| page["items"].as_array().is_some_and(|i| !i.is_empty()),
        )
        .await;
    assert!(
        dead["items"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("does not verify")),
        "{dead}"
    );
    assert!(
        theirs.lock().unwrap().attempts.is_empty(),
        "nothing reached the writer's receiver"
    );
    assert!(ours.lock().unwrap().attempts.is_empty());
}
