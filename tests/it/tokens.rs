//! Tokens minted through the API, as an attacker with a project admin's
//! token would use them: minting while being revoked, and minting past the
//! caps on a project's live tokens and on a request's roles.

use std::time::Duration;

use mongodb::bson::doc;
use reqwest::Method;
use serde_json::{json, Value};

use crate::support::api::ApiClient;
use crate::support::cluster::{Cluster, Role};

/// A token minted through the API by `by`: its id and a client using it.
async fn mint(by: &ApiClient, project: &str, role: &str) -> (String, ApiClient) {
    let (status, t) = by.post("/tokens", role_on(project, role)).await;
    assert_eq!(status, 201, "{t}");
    (
        t["id"].as_str().unwrap().to_string(),
        by.with_token(t["token"].as_str().unwrap()),
    )
}

fn role_on(project: &str, role: &str) -> Value {
    json!({ "roles": [{ "project_id": project, "role": role }], "description": role })
}

async fn project(root: &ApiClient, name: &str) -> String {
    let (status, p) = root.post("/projects", json!({ "name": name })).await;
    assert_eq!(status, 201, "{p}");
    p["id"].as_str().unwrap().to_string()
}

/// The attack: a project admin that learns it is about to be revoked mints
/// as fast as it can, hoping one token lands after the revocation's walk
/// has looked for what it minted. Round after round, minting and the
/// revocation race (the revocation at a different moment each round); at
/// the end of each, every token the admin managed to mint is revoked in
/// the database and answers 401.
#[tokio::test]
async fn a_token_minted_while_its_minter_is_revoked_never_outlives_it() {
    const ROUNDS: u64 = 25;
    const MINTERS: usize = 4;
    let cluster = Cluster::builder("mint_revoke_race").start().await;
    let root = &cluster.api;
    let p = project(root, "racing").await;
    let store = cluster.db.store().await;
    let tokens = store.collection("tokens");
    let mut minted_in_all = 0;
    for round in 0..ROUNDS {
        let (admin_id, admin) = mint(root, &p, "admin").await;
        let minters: Vec<_> = (0..MINTERS)
            .map(|_| {
                let (admin, p) = (admin.clone(), p.clone());
                tokio::spawn(async move {
                    let mut minted = Vec::new();
                    loop {
                        let (status, t) = admin.post("/tokens", role_on(&p, "viewer")).await;
                        match status {
                            201 => minted.push(t["token"].as_str().unwrap().to_string()),
                            401 => return minted,
                            other => panic!("a mint answered {other}: {t}"),
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10 + round * 7 % 60)).await;
        let revoked = root
            .call(Method::DELETE, &format!("/tokens/{admin_id}"), None)
            .await;
        assert_eq!(revoked.0, 204, "{}", revoked.1);
        let mut minted = Vec::new();
        for m in minters {
            minted.extend(m.await.unwrap());
        }
        minted_in_all += minted.len();
        let live = tokens
            .count_documents(doc! { "created_by": &admin_id, "revoked": false })
            .await
            .unwrap();
        assert_eq!(
            live, 0,
            "round {round}: a token minted by a revoked admin is live"
        );
        for secret in &minted {
            let status = root
                .with_token(secret)
                .get(&format!("/projects/{p}"))
                .await
                .0;
            assert_eq!(
                status, 401,
                "round {round}: a token of the revoked admin answers"
            );
        }
    }
    println!("{minted_in_all} tokens minted over {ROUNDS} rounds, none outlived its minter");
    assert!(minted_in_all > 0, "the race was never run");
}

/// The attack: a project admin mints token after token (each would have
/// had a rate budget of its own). A project holds at most
/// `CAP_MAX_TOKENS_PER_PROJECT` live tokens: past it, 409 naming the knob,
/// and room again once one is revoked; another project is not held back.
/// A request for more than 100 roles is 422 with the reason.
#[tokio::test]
async fn a_project_holds_at_most_its_cap_of_live_tokens_and_a_token_at_most_100_roles() {
    let cluster = Cluster::builder("token_caps")
        .env(Role::Api, "CAP_MAX_TOKENS_PER_PROJECT", "3")
        .start()
        .await;
    let root = &cluster.api;
    let (p, q) = (project(root, "capped").await, project(root, "other").await);
    let (_, admin) = mint(root, &p, "admin").await;
    let (first, _) = mint(&admin, &p, "viewer").await;
    mint(&admin, &p, "editor").await;
    let (status, refused) = admin.post("/tokens", role_on(&p, "viewer")).await;
    assert_eq!(status, 409, "{refused}");
    let reason = refused["errors"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("CAP_MAX_TOKENS_PER_PROJECT") && reason.contains(&p),
        "{refused}"
    );
    let (status, refused) = root.post("/tokens", role_on(&p, "viewer")).await;
    assert_eq!(status, 409, "a global admin too: {refused}");
    mint(root, &q, "viewer").await;

    let revoked = admin
        .call(Method::DELETE, &format!("/tokens/{first}"), None)
        .await;
    assert_eq!(revoked.0, 204, "{}", revoked.1);
    mint(&admin, &p, "viewer").await;

    let roles: Vec<Value> = (0..101)
        .map(|i| json!({ "project_id": format!("prj_{i}"), "role": "viewer" }))
        .collect();
    let (status, refused) = root.post("/tokens", json!({ "roles": roles })).await;
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["errors"][0]["field"], "roles", "{refused}");
    assert!(
        refused.to_string().contains("at most 100 roles"),
        "{refused}"
    );
}
