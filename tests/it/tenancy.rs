//! Tenants cannot take each other's domains: a project certifies only the
//! names a global admin granted it, a name belongs to one project unless its
//! grant is `shared`, and the HTTP-01 responder answers a challenge only for
//! the name it proves.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::{token, ApiClient};
use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use crate::support::TestDb;

/// A project with an issuer (nothing is ever issued: no worker runs).
async fn project(api: &ApiClient, name: &str) -> (String, String) {
    let (status, p) = api.post("/projects", json!({ "name": name })).await;
    assert_eq!(status, 201, "{p}");
    let p = p["id"].as_str().unwrap().to_string();
    let (status, i) = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "ca", "directory_url": "https://ca.example.test/dir", "contact": "ops@example.test" }),
        )
        .await;
    assert_eq!(status, 201, "{i}");
    (p, i["id"].as_str().unwrap().to_string())
}

fn certificate(issuer: &str, name: &str) -> Value {
    json!({ "name": "site", "dns_names": [name], "issuer_id": issuer })
}

#[tokio::test]
async fn a_project_cannot_certify_a_name_granted_to_another() {
    let cluster = Cluster::builder("tenancy").start().await;
    let admin = &cluster.api;
    let (a, a_issuer) = project(admin, "alpha").await;
    let (b, b_issuer) = project(admin, "bravo").await;
    admin.grant(&a, &["a.example", "deep.c.example"]).await;
    let b_editor = admin.with_token(&token(&cluster.db, &["--role", "editor", "--project", &b]));
    let b_admin = admin.with_token(&token(&cluster.db, &["--role", "admin", "--project", &b]));

    // The attack: B asks for a name A holds.
    let (status, refused) = b_editor
        .post(
            &format!("/projects/{b}/certificates"),
            certificate(&b_issuer, "shop.a.example"),
        )
        .await;
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("shop.a.example"),
        "the refusal names the name: {refused}"
    );
    // ...nor can B grant it to itself.
    for caller in [&b_editor, &b_admin] {
        let (status, body) = caller
            .call(
                Method::PUT,
                &format!("/projects/{b}/domains"),
                Some(json!({ "domains": ["a.example"] })),
            )
            .await;
        assert_eq!(status, 403, "{body}");
    }
    // A certifies its own names, and names under them.
    let (status, body) = admin
        .post(
            &format!("/projects/{a}/certificates"),
            certificate(&a_issuer, "shop.a.example"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = admin
        .post(
            &format!("/projects/{a}/certificates"),
            certificate(&a_issuer, "a.example.org"),
        )
        .await;
    assert_eq!(
        status, 403,
        "a suffix is not a name under the grant: {body}"
    );

    // A grant overlapping another project's is refused unless marked shared.
    let b_domains = format!("/projects/{b}/domains");
    let grant_b = |shared: bool| {
        admin.call(
            Method::PUT,
            &b_domains,
            Some(json!({ "domains": ["shop.a.example"], "shared": shared })),
        )
    };
    let (status, body) = grant_b(false).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("a.example"),
        "{body}"
    );
    let (status, body) = admin
        .call(
            Method::PUT,
            &format!("/projects/{b}/domains"),
            Some(json!({ "domains": ["c.example"] })),
        )
        .await;
    assert_eq!(
        status, 409,
        "a grant above another's overlaps it too: {body}"
    );
    let (status, body) = grant_b(true).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "domains": [{ "name": "shop.a.example", "shared": true }] })
    );
    let (status, body) = b_editor
        .post(
            &format!("/projects/{b}/certificates"),
            certificate(&b_issuer, "shop.a.example"),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    // Grants are listed to the project's own callers, and both calls are audited.
    let (status, listed) = b_editor.get(&format!("/projects/{b}/domains")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["domains"][0]["name"], "shop.a.example");
    let (status, _) = b_editor.get(&format!("/projects/{a}/domains")).await;
    assert_eq!(
        status, 404,
        "another project's grants are not even said to exist"
    );
    let (_, set) = admin.get("/audit?action=project.domains_set").await;
    assert_eq!(set["items"].as_array().unwrap().len(), 2, "{set}");
    let (_, read) = admin.get("/audit?action=project.domains_read").await;
    assert_eq!(read["items"].as_array().unwrap().len(), 1, "{read}");

    // Names must be plain DNS names.
    let (status, body) = admin
        .call(
            Method::PUT,
            &format!("/projects/{a}/domains"),
            Some(json!({ "domains": ["*.a.example", "bad name"] })),
        )
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn the_responder_answers_a_challenge_only_for_the_name_it_proves() {
    let cluster = Cluster::builder("responder").start().await;
    let token = "tok_0123456789abcdefghij";
    cluster
        .db
        .store()
        .await
        .collection("challenges")
        .insert_one(doc! { "_id": token, "key_authorization": "tok.thumbprint", "identifier": "shop.a.example", "order_id": "ord_1" })
        .await
        .unwrap();
    let url = cluster.apis[0].url(&format!("/.well-known/acme-challenge/{token}"));
    let http = reqwest::Client::new();
    let ask = |host: &'static str| http.get(&url).header("Host", host).send();
    let answer = ask("shop.a.example").await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "tok.thumbprint");
    assert_eq!(ask("SHOP.a.example:80").await.unwrap().status(), 200);
    for other in ["shop.b.example", "a.example", "127.0.0.1"] {
        assert_eq!(ask(other).await.unwrap().status(), 404, "asked as {other}");
    }
}

#[tokio::test]
async fn migrating_grants_every_certified_name_to_its_project() {
    let db = TestDb::migrated("grants_migration").await;
    let store = db.store().await;
    let insert = |collection: &'static str, d: Document| {
        let store = store.clone();
        async move { store.collection(collection).insert_one(d).await.unwrap() }
    };
    insert("projects", doc! { "_id": "prj_one", "name": "one" }).await;
    insert("projects", doc! { "_id": "prj_two", "name": "two" }).await;
    insert("certificates", doc! { "_id": "crt_1", "project_id": "prj_one", "dns_names": ["www.one.example", "*.one.example"] }).await;
    insert(
        "certificates",
        doc! { "_id": "crt_2", "project_id": "prj_one", "dns_names": ["both.example"] },
    )
    .await;
    insert(
        "certificates",
        doc! { "_id": "crt_3", "project_id": "prj_two", "dns_names": ["shop.both.example"] },
    )
    .await;
    // As a database of the version before grants.
    store
        .collection("schema")
        .update_one(
            doc! { "_id": "version" },
            doc! { "$set": { "version": 10i64 } },
        )
        .await
        .unwrap();

    let grants = || async {
        let mut all = Vec::new();
        for p in ["prj_one", "prj_two"] {
            let mut g: Vec<(String, bool)> = certautopilot::store::projects::domains(&store, p)
                .await
                .unwrap()
                .unwrap()
                .into_iter()
                .map(|g| (g.name, g.shared))
                .collect();
            g.sort();
            all.push(g);
        }
        all
    };
    for run in 0..2 {
        certautopilot::store::schema::migrate(&store, |_| {})
            .await
            .unwrap();
        let s = |n: &str, shared: bool| (n.to_string(), shared);
        assert_eq!(
            grants().await,
            [
                vec![s("both.example", true), s("one.example", false), s("www.one.example", false)],
                vec![s("shop.both.example", true)],
            ],
            "run {run}: each certified name granted to its project; names two projects certify, shared"
        );
        store
            .collection("schema")
            .update_one(
                doc! { "_id": "version" },
                doc! { "$set": { "version": 10i64 } },
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_certificate_whose_grant_was_taken_back_is_not_issued_again() {
    let cluster = Cluster::builder("grant_taken_back")
        .pebble(PebbleOptions::default())
        .workers(1)
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api
        .project_with_issuer("revoked-grant", cluster.pebble())
        .await;
    api.grant(&p, &["taken.example.test"]).await;
    let (path, issued) = api
        .issue(
            &p,
            certificate(&issuer, "www.taken.example.test"),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(issued["issued_count"], 1);

    let (status, body) = api
        .call(
            Method::PUT,
            &format!("/projects/{p}/domains"),
            Some(json!({ "domains": [] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.post(&format!("{path}/issue"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let refused = api
        .wait_for(&path, Duration::from_secs(30), "the worker refuses", |c| {
            c["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("www.taken.example.test not granted"))
        })
        .await;
    assert_eq!(refused["issued_count"], 1, "nothing issued: {refused}");
    assert_eq!(
        refused["status"], "issued",
        "the certificate in service stays so"
    );
}
