//! `Idempotency-Key` on POST: a retry gets the first answer and does no
//! work twice; the same key with another body is refused; keys are the
//! token's own; the answer kept for a token's creation is not plaintext;
//! a request without a valid token writes nothing.

use std::time::Duration;

use mongodb::bson::{doc, Bson};
use serde_json::json;

use crate::support::api::raw_documents;
use crate::support::cluster::Cluster;

#[tokio::test]
async fn a_retried_post_gets_the_first_answer_and_does_the_work_once() {
    let cluster = Cluster::builder("idempotency").apis(2).start().await;
    let root = &cluster.api;
    let on = |i: usize| root.with_base(format!("http://{}/v1", cluster.apis[i].http));
    let key = [("Idempotency-Key", "5d1f0e9c-retry-1")];

    // The retry lands on the other replica, as after a failover.
    let (first, h1) = on(0)
        .post_with("/projects", &key, json!({ "name": "idem" }))
        .await;
    assert_eq!(first.status, 201, "{}", first.text);
    assert!(h1.get("idempotent-replayed").is_none());
    let (again, h2) = on(1)
        .post_with("/projects", &key, json!({ "name": "idem" }))
        .await;
    assert_eq!(again.status, 201, "{}", again.text);
    assert_eq!(again.text, first.text, "the same answer, byte for byte");
    assert_eq!(h2.get("idempotent-replayed").unwrap(), "true");
    let (_, listed) = root.get("/projects").await;
    let named: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "idem")
        .collect();
    assert_eq!(named.len(), 1, "one project, not two: {listed}");

    // The same key with another body: 422, and nothing made.
    let (other, _) = on(1)
        .post_with("/projects", &key, json!({ "name": "other" }))
        .await;
    assert_eq!(other.status, 422, "{}", other.text);
    assert!(
        other.text.contains("idempotency-key-reused"),
        "{}",
        other.text
    );
    let (_, listed) = root.get("/projects").await;
    assert!(!listed.to_string().contains("\"other\""), "{listed}");

    // Another token's key of the same name is its own key.
    let (status, token) = root
        .post(
            "/tokens",
            json!({ "global_admin": true, "description": "second" }),
        )
        .await;
    assert_eq!(status, 201, "{token}");
    let second = root.with_token(token["token"].as_str().unwrap());
    let (theirs, h3) = second
        .post_with("/projects", &key, json!({ "name": "other" }))
        .await;
    assert_eq!(theirs.status, 201, "{}", theirs.text);
    assert!(h3.get("idempotent-replayed").is_none());

    // A revoked token is told nothing, not even its own kept answer (asked
    // of the replica that revoked it, which forgets it at once).
    let id = token["id"].as_str().unwrap();
    let (status, body) = on(0)
        .call(reqwest::Method::DELETE, &format!("/tokens/{id}"), None)
        .await;
    assert_eq!(status, 204, "{body}");
    let second_on_a = second.with_base(on(0).base.clone());
    let (replayed, _) = second_on_a
        .post_with("/projects", &key, json!({ "name": "other" }))
        .await;
    assert_eq!(replayed.status, 401, "{}", replayed.text);

    // A refusal of the request itself is an outcome too: told again.
    let bad = [("Idempotency-Key", "bad-body")];
    let (refused, _) = root
        .post_with("/projects", &bad, json!({ "name": "" }))
        .await;
    assert_eq!(refused.status, 422, "{}", refused.text);
    let (refused_again, h4) = root
        .post_with("/projects", &bad, json!({ "name": "" }))
        .await;
    assert_eq!(refused_again.text, refused.text);
    assert_eq!(h4.get("idempotent-replayed").unwrap(), "true");

    // A malformed key: 400 with the rule.
    let (malformed, _) = root
        .post_with(
            "/projects",
            &[("Idempotency-Key", &"k".repeat(256))],
            json!({ "name": "x" }),
        )
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert!(
        malformed.text.contains("Idempotency-Key"),
        "{}",
        malformed.text
    );
}

/// A token's secret is shown once: the answer kept for a retry of its
/// creation holds it only sealed, and the retry is shown the same secret.
#[tokio::test]
async fn the_kept_answer_of_a_token_creation_is_sealed() {
    let cluster = Cluster::builder("idempotent_token").start().await;
    let root = &cluster.api;
    let key = [("Idempotency-Key", "mint-once")];
    let body = json!({ "global_admin": true, "description": "deploys" });
    let (first, _) = root.post_with("/tokens", &key, body.clone()).await;
    assert_eq!(first.status, 201, "{}", first.text);
    let (again, _) = root.post_with("/tokens", &key, body).await;
    assert_eq!(again.text, first.text);
    let secret = first.body["token"].as_str().unwrap();
    assert_eq!(root.with_token(secret).get("/projects").await.0, 200);
    let (_, tokens) = root.get("/tokens").await;
    let minted = tokens["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["description"] == "deploys")
        .count();
    assert_eq!(minted, 1, "{tokens}");
    let store = cluster.db.store().await;
    let kept = raw_documents(&store)
        .await
        .into_iter()
        .filter(|(c, _)| c == "idempotency_keys")
        .count();
    assert_eq!(kept, 1, "the answer is kept");
    for (collection, doc) in raw_documents(&store).await {
        assert!(
            !holds(&Bson::Document(doc), secret.as_bytes()),
            "{collection} holds the token's secret in the clear"
        );
    }
}

/// Whether `value` holds `needle` in any string or binary, however deep.
fn holds(value: &Bson, needle: &[u8]) -> bool {
    match value {
        Bson::String(s) => s.as_bytes().windows(needle.len()).any(|w| w == needle),
        Bson::Binary(b) => b.bytes.windows(needle.len()).any(|w| w == needle),
        Bson::Document(d) => d.values().any(|v| holds(v, needle)),
        Bson::Array(a) => a.iter().any(|v| holds(v, needle)),
        _ => false,
    }
}

/// The attack: requests without a valid token, each with an
/// `Idempotency-Key`, made the database insert a record and delete it
/// again — work for anyone on the network. The token is checked first:
/// each is answered 401, and the collection sees no write until a request
/// with a valid token (the marker) writes its own record.
#[tokio::test]
async fn a_request_without_a_valid_token_writes_no_idempotency_record() {
    use futures::StreamExt;
    use sha2::{Digest, Sha256};

    let cluster = Cluster::builder("idempotency_unauthenticated")
        .start()
        .await;
    let root = &cluster.api;
    let store = cluster.db.store().await;
    let keys = store.collection("idempotency_keys");
    let mut writes = keys.watch().await.unwrap();

    let strangers = [
        root.without_token(),
        root.with_token("cap_not-a-token-at-all"),
    ];
    for (i, stranger) in strangers.iter().enumerate() {
        for (path, body) in [
            ("/projects", json!({ "name": "x" })),
            ("/tokens", json!({ "global_admin": true })),
        ] {
            let key = format!("stranger-{i}{path}");
            let (answer, _) = stranger
                .post_with(path, &[("Idempotency-Key", &key)], body)
                .await;
            assert_eq!(answer.status, 401, "{}", answer.text);
        }
    }

    let marker = json!({ "name": "marker" });
    let (answer, _) = root
        .post_with(
            "/projects",
            &[("Idempotency-Key", "marker")],
            marker.clone(),
        )
        .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(format!("POST /v1/projects\n{marker}"));
        h.finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let first = tokio::time::timeout(Duration::from_secs(10), writes.next())
        .await
        .expect("the marker's record is written")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.operation_type,
        mongodb::change_stream::event::OperationType::Insert,
        "the first write to the collection: {first:?}"
    );
    let written = first.full_document.unwrap();
    assert_eq!(
        written.get_str("fingerprint").unwrap(),
        fingerprint,
        "the first record written is the marker's, not a stranger's: {written}"
    );
    let kept = keys.count_documents(doc! {}).await.unwrap();
    assert_eq!(kept, 1, "only the marker's record");
}
