//! Per-token rate limits (`CAP_API_RATE_LIMIT`), shared by every api
//! replica through the database: past the limit, 429 with `Retry-After`;
//! another token is not held back; health, readiness, metrics, the OpenAPI
//! document and the HTTP-01 responder never are.

use std::time::Duration;

use serde_json::json;

use crate::support::cluster::{Cluster, Role};

const LIMIT: usize = 30;
/// Requests the sliding minute may let in as older ones lose weight over
/// the test's few seconds.
const DECAY: usize = 3;

#[tokio::test]
async fn a_token_past_its_limit_gets_429_on_every_replica_and_others_do_not() {
    let cluster = Cluster::builder("rate_limits")
        .apis(2)
        .env(Role::Api, "CAP_API_RATE_LIMIT", &LIMIT.to_string())
        .start()
        .await;
    let root = &cluster.api;
    let on = |i: usize, c: &crate::support::api::ApiClient| {
        c.with_base(format!("http://{}/v1", cluster.apis[i].http))
    };
    let (status, token) = root
        .post(
            "/tokens",
            json!({ "global_admin": true, "description": "limited" }),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let limited = root.with_token(token["token"].as_str().unwrap());
    let (a, b) = (on(0, &limited), on(1, &limited));

    // Two thirds of the limit on A, then a flush interval for the counts
    // to be shared.
    for i in 0..LIMIT * 2 / 3 {
        assert_eq!(a.get("/projects").await.0, 200, "request {i} on A");
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // B knows of A's 20: it admits about 10 more, then refuses.
    let mut admitted_on_b = 0;
    let mut refusal = None;
    for _ in 0..LIMIT {
        let answer = b.get_answer("/projects").await;
        match answer.status {
            200 => admitted_on_b += 1,
            429 => {
                refusal = Some(answer);
                break;
            }
            other => panic!("{other}: {}", answer.text),
        }
    }
    println!("B admitted {admitted_on_b} after A's {}", LIMIT * 2 / 3);
    let refusal = refusal.expect("B refused the token before another full limit");
    // Unshared, B would admit a whole limit. Shared, it admits what is
    // left, plus what the sliding minute lets fall off meanwhile: if the
    // minute turns during the test, A's 20 lose a sixtieth of their weight
    // a second (at most 2 over its span).
    assert!(
        admitted_on_b <= LIMIT - LIMIT * 2 / 3 + DECAY,
        "B admitted {admitted_on_b}: the counts were not shared"
    );
    assert_eq!(refusal.content_type, "application/problem+json");
    assert!(refusal.text.contains("rate-limited"), "{}", refusal.text);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut admitted_on_a = 0;
    loop {
        let answer = a.get_answer("/projects").await;
        if answer.status == 429 {
            break;
        }
        admitted_on_a += 1;
        assert!(
            admitted_on_a <= DECAY,
            "A admitted {admitted_on_a} more: it did not learn B's counts"
        );
    }

    // Retry-After: whole seconds, within the sliding minute.
    let answer = reqwest::Client::new()
        .get(format!("{}/projects", b.base))
        .bearer_auth(limited.token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 429);
    let secs: u64 = answer.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=120).contains(&secs), "Retry-After {secs}");

    // Another token is its own count.
    assert_eq!(on(1, root).get("/projects").await.0, 200);
    // What takes no token is never limited.
    let http = reqwest::Client::new();
    for i in 0..2 {
        let base = format!("http://{}", cluster.apis[i].http);
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            for _ in 0..LIMIT {
                let status = http
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_ne!(status.as_u16(), 429, "{path}");
            }
        }
        let challenge = http
            .get(format!("{base}/.well-known/acme-challenge/none"))
            .send()
            .await
            .unwrap();
        assert_eq!(challenge.status(), 404, "the responder answers, unlimited");
    }
    let metrics = http
        .get(format!("http://{}/metrics", cluster.apis[1].http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("certautopilot_api_rate_limited_total "))
        .expect("the refusals are counted")
        .parse()
        .unwrap();
    assert!(refused >= 2.0, "{refused}");
}

/// The attack: a project admin mints tokens to multiply its budget. Every
/// token it mints spends its budget (the root of the `created_by` chain
/// below a global admin): a burst spread over five minted tokens is
/// limited as one budget, the admin itself is then refused too, and
/// another admin a global admin made keeps a budget of its own.
#[tokio::test]
async fn tokens_minted_by_a_project_admin_spend_its_budget() {
    const MINTED: usize = 5;
    let cluster = Cluster::builder("rate_budget")
        .env(Role::Api, "CAP_API_RATE_LIMIT", &LIMIT.to_string())
        .start()
        .await;
    let root = &cluster.api;
    let (status, p) = root.post("/projects", json!({ "name": "budget" })).await;
    assert_eq!(status, 201, "{p}");
    let p = p["id"].as_str().unwrap().to_string();
    let admin_of = |by: &crate::support::api::ApiClient| {
        let by = by.clone();
        let p = p.clone();
        async move {
            let body = json!({ "roles": [{ "project_id": p, "role": "admin" }] });
            let (status, t) = by.post("/tokens", body).await;
            assert_eq!(status, 201, "{t}");
            by.with_token(t["token"].as_str().unwrap())
        }
    };
    let admin = admin_of(root).await;
    let other_admin = admin_of(root).await;
    let mut minted = Vec::new();
    for _ in 0..MINTED {
        let body = json!({ "roles": [{ "project_id": &p, "role": "viewer" }] });
        let (status, t) = admin.post("/tokens", body).await;
        assert_eq!(status, 201, "{t}");
        minted.push(admin.with_token(t["token"].as_str().unwrap()));
    }

    // Round robin over the minted tokens until one is refused.
    let project = format!("/projects/{p}");
    let mut admitted = 0;
    'burst: for _ in 0..LIMIT {
        for token in &minted {
            match token.get_answer(&project).await.status {
                200 => admitted += 1,
                429 => break 'burst,
                other => panic!("{other}"),
            }
        }
    }
    println!("{admitted} requests admitted over {MINTED} minted tokens");
    // The admin's own mints came out of the same budget.
    assert!(
        admitted + MINTED <= LIMIT + DECAY,
        "{admitted} admitted: each minted token had a budget of its own"
    );
    for token in &minted {
        assert_eq!(token.get_answer(&project).await.status, 429);
    }
    assert_eq!(admin.get_answer(&project).await.status, 429, "the root too");
    assert_eq!(
        other_admin.get(&project).await.0,
        200,
        "another admin a global admin made is its own budget"
    );
}
