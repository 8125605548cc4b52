//! The API's contract: tenant isolation, authentication, roles, bad input
//! answered with problem+json, and a failing challenge reported with the
//! CA's reason.

use std::time::Duration;

use crate::support::api::{assert_not_stored, token};
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use reqwest::Method;
use serde_json::{json, Value};

/// An api (no worker) with a Pebble to name in issuers.
async fn fixture(hint: &str) -> Cluster {
    Cluster::builder(hint)
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .start()
        .await
}

/// A project with an issuer and a certificate; returns their ids.
async fn project(f: &Cluster, name: &str) -> (String, String, String) {
    let p = f
        .api
        .post_answer("/projects", json!({ "name": name }))
        .await;
    assert_eq!(p.status, 201, "{}", p.text);
    let p = p.body["id"].as_str().unwrap().to_string();
    f.api.grant(&p, &[&format!("{name}.example.test")]).await;
    let i = f
        .api
        .post_answer(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "pebble", "directory_url": f.pebble().directory, "contact": "ops@example.test", "ca_bundle_pem": f.pebble().listener_ca_pem }),
        )
        .await;
    assert_eq!(i.status, 201, "{}", i.text);
    let i = i.body["id"].as_str().unwrap().to_string();
    let c = f
        .api
        .post_answer(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "site", "dns_names": [format!("{name}.example.test")], "issuer_id": i }),
        )
        .await;
    assert_eq!(c.status, 201, "{}", c.text);
    (p, i, c.body["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn another_projects_token_can_neither_read_nor_change_nor_learn_anything() {
    let f = fixture("api_isolation").await;
    let (a, _, _) = project(&f, "alpha").await;
    let (b, b_issuer, b_cert) = project(&f, "bravo").await;
    let a_admin = f
        .api
        .with_token(&token(&f.db, &["--role", "admin", "--project", &a]));
    let a_viewer = f
        .api
        .with_token(&token(&f.db, &["--role", "viewer", "--project", &a]));

    let b_paths = [
        format!("/projects/{b}"),
        format!("/projects/{b}/issuers"),
        format!("/projects/{b}/issuers/{b_issuer}"),
        format!("/projects/{b}/certificates"),
        format!("/projects/{b}/certificates/{b_cert}"),
        format!("/projects/{b}/certificates/{b_cert}/private-key"),
        format!("/projects/{b}/certificates/{b_cert}/orders"),
        format!("/projects/{b}/certificates/{b_cert}/jobs"),
        format!("/projects/{b}/audit"),
    ];
    let unknown = "/projects/prj_000000000000000000000000";
    let not_found_text = a_admin.get_answer(unknown).await.text;
    for path in &b_paths {
        let got = a_admin.get_answer(path).await;
        assert_eq!(got.status, 404, "GET {path}: {}", got.text);
        assert_eq!(
            got.text, not_found_text,
            "GET {path} says no more than for a project that does not exist"
        );
        assert!(
            !got.text.contains(&b) && !got.text.contains("bravo"),
            "{}",
            got.text
        );
    }
    for (path, body) in [
        (
            format!("/projects/{b}/issuers"),
            json!({ "name": "x", "directory_url": f.pebble().directory, "contact": "a@example.test" }),
        ),
        (
            format!("/projects/{b}/certificates"),
            json!({ "name": "x", "dns_names": ["x.example.test"], "issuer_id": b_issuer }),
        ),
        (
            format!("/projects/{b}/certificates/{b_cert}/issue"),
            json!({}),
        ),
        (
            "/tokens".to_string(),
            json!({ "roles": [{ "project_id": b, "role": "viewer" }] }),
        ),
    ] {
        let got = a_admin.post_answer(&path, body).await;
        assert_eq!(got.status, 404, "POST {path}: {}", got.text);
    }
    // Its own audit log shows its project's changes and nothing of B's;
    // the whole log is for global admins only.
    let own = a_admin
        .get_answer(&format!("/projects/{a}/audit?action=certificate."))
        .await;
    assert_eq!(own.status, 200, "{}", own.text);
    let actions: Vec<&str> = own.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["certificate.created"], "{}", own.text);
    assert!(!own.text.contains(&b), "{}", own.text);
    let paged = a_admin
        .get_answer(&format!("/projects/{a}/audit?limit=1"))
        .await;
    assert_eq!(paged.body["items"].as_array().unwrap().len(), 1);
    let next = paged.body["next"].as_i64().expect("a next page");
    let second = a_admin
        .get_answer(&format!("/projects/{a}/audit?limit=1&after={next}"))
        .await;
    assert!(
        second.body["items"][0]["seq"].as_i64().unwrap() > next,
        "{}",
        second.text
    );
    assert_eq!(a_admin.get_answer("/audit").await.status, 403);
    assert_eq!(f.api.get_answer("/audit").await.status, 200);
    // Listing projects shows only its own.
    let listed = a_admin.get_answer("/projects").await;
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.as_str()]);

    // No token, or a wrong one: 401.
    for client in [
        f.api.without_token(),
        f.api.with_token("cap_not-a-real-token"),
    ] {
        let got = client.get_answer(&format!("/projects/{a}")).await;
        assert_eq!(got.status, 401, "{}", got.text);
        assert_eq!(got.content_type, "application/problem+json");
    }
    // A viewer reads but cannot change anything, nor read the key.
    assert_eq!(
        a_viewer
            .get_answer(&format!("/projects/{a}/certificates"))
            .await
            .status,
        200
    );
    let (_, a_issuer, a_cert) = {
        let i = a_admin.get_answer(&format!("/projects/{a}/issuers")).await;
        let c = a_admin
            .get_answer(&format!("/projects/{a}/certificates"))
            .await;
        (
            (),
            i.body["items"][0]["id"].as_str().unwrap().to_string(),
            c.body["items"][0]["id"].as_str().unwrap().to_string(),
        )
    };
    for (path, body) in [
        (
            format!("/projects/{a}/certificates"),
            json!({ "name": "x", "dns_names": ["y.example.test"], "issuer_id": a_issuer }),
        ),
        (
            format!("/projects/{a}/certificates/{a_cert}/issue"),
            json!({}),
        ),
    ] {
        let got = a_viewer.post_answer(&path, body).await;
        assert_eq!(got.status, 403, "POST {path}: {}", got.text);
    }
    assert_eq!(
        a_viewer
            .get_answer(&format!("/projects/{a}/certificates/{a_cert}/private-key"))
            .await
            .status,
        403
    );
    // Health and the OpenAPI document stay open.
    let root = f.api.base.trim_end_matches("/v1").to_string();
    assert_eq!(
        reqwest::get(format!("{root}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let doc: Value = reqwest::get(format!("{root}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["paths"]["/v1/projects/{project_id}/certificates"]["post"].is_object(),
        "{doc}"
    );
}

#[tokio::test]
async fn bad_input_gets_a_4xx_problem_with_a_reason_never_a_500() {
    let f = fixture("api_bad_input").await;
    let (p, issuer, _) = project(&f, "inputs").await;
    let certs = format!("/projects/{p}/certificates");
    let send = |body: Vec<u8>| f.api.send(Method::POST, &certs, Some(body));
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed JSON", b"{\"name\": ".to_vec(), 400, "invalid JSON"),
        ("unknown field", json!({ "name": "x", "dns_names": ["a.example.test"], "issuer_id": issuer, "colour": "red" }).to_string().into_bytes(), 400, "unknown field"),
        ("wrong type", json!({ "name": "x", "dns_names": "a.example.test", "issuer_id": issuer }).to_string().into_bytes(), 400, "invalid type"),
        ("invalid DNS name", json!({ "name": "x", "dns_names": ["bad_name.example.test"], "issuer_id": issuer }).to_string().into_bytes(), 422, "dns_names[0]"),
        ("wildcard with http-01", json!({ "name": "x", "dns_names": ["*.example.test"], "issuer_id": issuer }).to_string().into_bytes(), 409, "dns-01"),
        ("IP address", json!({ "name": "x", "dns_names": ["192.0.2.7"], "issuer_id": issuer }).to_string().into_bytes(), 422, "IP address"),
        ("name too long", json!({ "name": "x", "dns_names": [format!("{}.example.test", "a".repeat(250))], "issuer_id": issuer }).to_string().into_bytes(), 422, "at most"),
        ("no names", json!({ "name": "x", "dns_names": [], "issuer_id": issuer }).to_string().into_bytes(), 422, "at least one"),
        ("unknown key algorithm", json!({ "name": "x", "dns_names": ["a.example.test"], "issuer_id": issuer, "key_algorithm": "dsa" }).to_string().into_bytes(), 422, "key_algorithm"),
        ("unknown issuer", json!({ "name": "x", "dns_names": ["a.example.test"], "issuer_id": "iss_000000000000000000000000" }).to_string().into_bytes(), 409, "issuer_id"),
        ("oversized body", vec![b' '; 300 * 1024], 413, "at most"),
    ];
    // 422: the request is invalid in itself; 409: it does not fit what is
    // stored (the issuer, its challenge).
    for (what, body, status, reason) in cases {
        let got = send(body).await;
        assert_eq!(got.status, status, "{what}: {}", got.text);
        assert_eq!(got.content_type, "application/problem+json", "{what}");
        assert!(got.text.contains(reason), "{what}: {}", got.text);
    }
    let bad_issuer = f
        .api
        .post_answer(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "", "directory_url": "http://insecure.example", "contact": "nobody", "challenge": "tls-alpn-01", "ca_bundle_pem": "not a pem" }),
        )
        .await;
    assert_eq!(bad_issuer.status, 422, "{}", bad_issuer.text);
    let fields: Vec<&str> = bad_issuer.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for field in [
        "name",
        "directory_url",
        "contact",
        "challenge",
        "ca_bundle_pem",
    ] {
        assert!(fields.contains(&field), "{field} has a reason: {fields:?}");
    }
    for path in [
        format!("/projects/{p}/certificates/crt_000000000000000000000000"),
        format!("/projects/{p}/issuers/nope"),
        "/no-such-endpoint".to_string(),
    ] {
        let got = f.api.get_answer(&path).await;
        assert_eq!(got.status, 404, "{path}: {}", got.text);
        assert_eq!(got.content_type, "application/problem+json");
    }
    let bad_page = f.api.get_answer(&format!("{certs}?limit=0")).await;
    assert_eq!(bad_page.status, 400, "{}", bad_page.text);
    let listed = f.api.get_answer(&certs).await;
    let cert_id = listed.body["items"][0]["id"].as_str().unwrap();
    let jobs = f
        .api
        .get_answer(&format!("{certs}/{cert_id}/jobs?limit=1"))
        .await;
    assert_eq!(
        jobs.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        jobs.text
    );
    let bad_after = f
        .api
        .get_answer(&format!("{certs}/{cert_id}/jobs?after=nope"))
        .await;
    assert_eq!(bad_after.status, 400, "{}", bad_after.text);

    // An EAB HMAC key is accepted, sealed, and never shown again.
    let hmac_key = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let eab = f
        .api
        .post_answer(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "with-eab", "directory_url": f.pebble().directory, "contact": "ops@example.test",
                    "eab": { "kid": "kid-1", "hmac_key": hmac_key } }),
        )
        .await;
    assert_eq!(eab.status, 201, "{}", eab.text);
    assert_eq!(eab.body["eab_kid"], "kid-1");
    assert!(!eab.text.contains(hmac_key), "{}", eab.text);
    assert_not_stored(&f.db.store().await, hmac_key).await;
}

#[tokio::test]
async fn a_failing_challenge_shows_the_cas_reason_and_backs_off() {
    let cluster = Cluster::builder("api_failing")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .start()
        .await;
    let (api, pebble) = (&cluster.api, cluster.pebble());
    // Resolves to an address where nothing answers HTTP-01.
    pebble.resolve("nowhere.example.test", "127.0.0.2").await;
    let p = api.post("/projects", json!({ "name": "failing" })).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    api.grant(&p, &["nowhere.example.test"]).await;
    let i = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "pebble", "directory_url": pebble.directory, "contact": "ops@example.test", "ca_bundle_pem": pebble.listener_ca_pem }),
        )
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, c) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "nowhere", "dns_names": ["nowhere.example.test"], "issuer_id": i }),
        )
        .await;
    let path = format!("/projects/{p}/certificates/{}", c["id"].as_str().unwrap());
    let cert = api
        .wait_for(
            &path,
            Duration::from_secs(60),
            "an error is reported",
            |c| !c["last_error"].is_null(),
        )
        .await;
    let error = cert["last_error"].as_str().unwrap();
    assert!(
        error.contains("the CA refused nowhere.example.test"),
        "{error}"
    );
    assert!(
        error.contains("127.0.0.2") || error.to_lowercase().contains("connection"),
        "the CA's own reason: {error}"
    );
    assert_ne!(cert["status"], "issued");
    let (_, jobs) = api.get(&format!("{path}/jobs")).await;
    let job = &jobs["items"][0];
    assert_eq!(job["state"], "queued", "{jobs}");
    assert!(job["last_error"]
        .as_str()
        .unwrap()
        .contains("nowhere.example.test"));
    let run_at = chrono_like(job["run_at"].as_str().unwrap());
    assert!(
        run_at > std::time::SystemTime::now(),
        "it backs off before trying again: {job}"
    );
    let (_, orders) = api.get(&format!("{path}/orders")).await;
    assert_eq!(orders["items"][0]["stage"], "invalid", "{orders}");
}

/// RFC 3339 (as the API writes it: `2026-11-28T04:24:46.123Z`) to a time.
fn chrono_like(s: &str) -> std::time::SystemTime {
    let dt = mongodb::bson::DateTime::parse_rfc3339_str(s).unwrap();
    std::time::UNIX_EPOCH + Duration::from_millis(dt.timestamp_millis() as u64)
}

#[tokio::test]
async fn a_token_made_through_the_api_expires() {
    let f = fixture("api_token_expiry").await;
    let (p, _, _) = project(&f, "expiring").await;
    let rfc3339 = |from_now: i64| {
        mongodb::bson::DateTime::from_millis(
            mongodb::bson::DateTime::now().timestamp_millis() + from_now,
        )
        .try_to_rfc3339_string()
        .unwrap()
    };
    let viewer = json!({ "project_id": p, "role": "viewer" });

    // Without an expiry it gets the longest lifetime (90 days by default).
    let (status, lasting) = f.api.post("/tokens", json!({ "roles": [viewer] })).await;
    assert_eq!(status, 201, "{lasting}");
    let until = mongodb::bson::DateTime::parse_rfc3339_str(lasting["expires_at"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
        - mongodb::bson::DateTime::now().timestamp_millis();
    // The expiry is the database's clock plus 90 days, compared with ours:
    // a few seconds either way is the two clocks, not the lifetime.
    assert!(
        (89 * 86_400_000..=90 * 86_400_000 + 5_000).contains(&until),
        "{lasting}"
    );

    // One that expires in a few seconds works until then, and is 401 after.
    let (status, brief) = f
        .api
        .post(
            "/tokens",
            json!({ "roles": [viewer], "expires_at": rfc3339(5_000) }),
        )
        .await;
    assert_eq!(status, 201, "{brief}");
    let brief_api = f.api.with_token(brief["token"].as_str().unwrap());
    let project_path = format!("/projects/{p}");
    assert_eq!(brief_api.get(&project_path).await.0, 200);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let (status, refused) = brief_api.get(&project_path).await;
    assert_eq!(status, 401, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("expired"),
        "{refused}"
    );

    // Past, too far ahead, or not a time: 422 naming the field.
    for expires_at in [
        rfc3339(-1_000),
        rfc3339(91 * 86_400_000),
        "tomorrow".to_string(),
    ] {
        let (status, body) = f
            .api
            .post(
                "/tokens",
                json!({ "roles": [viewer], "expires_at": expires_at }),
            )
            .await;
        assert_eq!(status, 422, "{expires_at}: {body}");
        assert_eq!(body["errors"][0]["field"], "expires_at", "{body}");
    }
}

/// A token minted through the API by `by`: its id and a client using it.
async fn mint(
    by: &crate::support::api::ApiClient,
    project: &str,
    role: &str,
) -> (String, crate::support::api::ApiClient) {
    let body = json!({ "roles": [{ "project_id": project, "role": role }], "description": role });
    let (status, t) = by.post("/tokens", body).await;
    assert_eq!(status, 201, "{t}");
    (
        t["id"].as_str().unwrap().to_string(),
        by.with_token(t["token"].as_str().unwrap()),
    )
}

/// `GET /v1/tokens` lists the tokens a caller manages, never their
/// secrets, with when each was last used; a project admin revokes the
/// tokens it could have minted (and no others), and revoking a token
/// revokes the tokens minted with it.
#[tokio::test]
async fn tokens_are_listed_without_secrets_and_revoked_with_what_they_minted() {
    let cluster = Cluster::builder("token_admin").start().await;
    let root = &cluster.api;
    let mut projects = Vec::new();
    for name in ["papa", "quebec"] {
        let (status, p) = root.post("/projects", json!({ "name": name })).await;
        assert_eq!(status, 201, "{p}");
        projects.push(p["id"].as_str().unwrap().to_string());
    }
    let (p, q) = (&projects[0], &projects[1]);
    let (p_admin_id, p_admin) = mint(root, p, "admin").await;
    let (p_editor_id, p_editor) = mint(&p_admin, p, "editor").await;
    let (p_viewer_id, p_viewer) = mint(root, p, "viewer").await;
    let (_, q_admin) = mint(root, q, "admin").await;
    assert_eq!(p_editor.get(&format!("/projects/{p}")).await.0, 200);

    let listed = p_admin.get_answer("/tokens").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let ids: Vec<&str> = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    let mut expected = vec![
        p_admin_id.as_str(),
        p_editor_id.as_str(),
        p_viewer_id.as_str(),
    ];
    expected.sort();
    assert_eq!(
        ids, expected,
        "its own and those on its project only: {}",
        listed.text
    );
    assert!(
        !listed.text.contains("cap_"),
        "no secret listed: {}",
        listed.text
    );
    let editor = listed.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == p_editor_id.as_str())
        .unwrap();
    assert!(editor["last_used_at"].is_string(), "{editor}");
    assert_eq!(editor["created_by"], p_admin_id.as_str(), "{editor}");

    // Another project's admin cannot revoke it, nor see it.
    let refused = q_admin
        .call(Method::DELETE, &format!("/tokens/{p_viewer_id}"), None)
        .await;
    assert_eq!(refused.0, 404, "{}", refused.1);
    // An editor cannot revoke the admin that minted it.
    let refused = p_editor
        .call(Method::DELETE, &format!("/tokens/{p_admin_id}"), None)
        .await;
    assert_eq!(refused.0, 404, "{}", refused.1);
    // The project's admin revokes a token it could have minted.
    let revoked = p_admin
        .call(Method::DELETE, &format!("/tokens/{p_viewer_id}"), None)
        .await;
    assert_eq!(revoked.0, 204, "{}", revoked.1);
    assert_eq!(p_viewer.get(&format!("/projects/{p}")).await.0, 401);

    // Revoking the admin token revokes the editor token minted with it.
    let revoked = root
        .call(Method::DELETE, &format!("/tokens/{p_admin_id}"), None)
        .await;
    assert_eq!(revoked.0, 204, "{}", revoked.1);
    assert_eq!(p_admin.get(&format!("/projects/{p}")).await.0, 401);
    assert_eq!(p_editor.get(&format!("/projects/{p}")).await.0, 401);
    assert_eq!(q_admin.get(&format!("/projects/{q}")).await.0, 200);
}

/// Replicas remember a checked token for `CAP_API_TOKEN_CACHE_SECS`: one
/// revoked through another replica stops working there within that time,
/// and at once on the replica that revoked it.
#[tokio::test]
async fn a_token_revoked_through_one_replica_stops_on_the_others_within_the_cache_time() {
    let cache = Duration::from_secs(2);
    let cluster = Cluster::builder("token_cache")
        .apis(2)
        .env(Role::Api, "CAP_API_TOKEN_CACHE_SECS", "2")
        .start()
        .await;
    let root = &cluster.api;
    let (status, p) = root.post("/projects", json!({ "name": "cached" })).await;
    assert_eq!(status, 201, "{p}");
    let p = p["id"].as_str().unwrap().to_string();
    let (viewer_id, viewer) = mint(root, &p, "viewer").await;
    let on = |i: usize, client: &crate::support::api::ApiClient| {
        client.with_base(format!("http://{}/v1", cluster.apis[i].http))
    };
    let (viewer_a, viewer_b) = (on(0, &viewer), on(1, &viewer));
    let project = format!("/projects/{p}");
    // Checked on both, so both remember it.
    assert_eq!(viewer_a.get(&project).await.0, 200, "checked on A");
    assert_eq!(viewer_b.get(&project).await.0, 200, "checked on B");

    let revoked = on(0, root)
        .call(Method::DELETE, &format!("/tokens/{viewer_id}"), None)
        .await;
    assert_eq!(revoked.0, 204, "{}", revoked.1);
    let at = std::time::Instant::now();
    assert_eq!(
        viewer_a.get(&project).await.0,
        401,
        "at once where revoked: the revocation cleared that replica's memory"
    );
    let stopped = crate::support::wait_until(cache + Duration::from_secs(2), || async {
        viewer_b.get(&project).await.0 == 401
    })
    .await;
    let took = at.elapsed();
    println!("the revoked token stopped on the other replica after {took:?}");
    assert!(
        stopped && took <= cache + Duration::from_millis(500),
        "took {took:?}"
    );
    assert_eq!(viewer_b.get(&project).await.0, 401, "and stays stopped");
}

/// A documented path asked with a method it does not answer: 405 naming the
/// methods it does in `Allow`; a path nobody answers: 404.
#[tokio::test]
async fn an_unknown_method_on_a_known_path_is_405_with_allow() {
    let cluster = Cluster::builder("allow").start().await;
    let (status, p) = cluster
        .api
        .post("/projects", json!({ "name": "allow" }))
        .await;
    assert_eq!(status, 201, "{p}");
    let p = p["id"].as_str().unwrap();
    let http = reqwest::Client::new();
    let base = &cluster.api.base;
    for (method, path, allow) in [
        (Method::TRACE, "/projects".to_string(), "GET, POST"),
        (Method::DELETE, format!("/projects/{p}"), "GET"),
        (
            Method::PUT,
            format!("/projects/{p}/certificates"),
            "GET, POST",
        ),
        (Method::POST, "/tokens/tok_x".to_string(), "DELETE"),
    ] {
        let answer = http
            .request(method.clone(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 405, "{method} {path}");
        assert_eq!(answer.headers()["allow"], allow, "{method} {path}");
        let body: Value = answer.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains(allow), "{body}");
    }
    let answer = http
        .request(Method::TRACE, format!("{base}/projects/{p}/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404);
}
