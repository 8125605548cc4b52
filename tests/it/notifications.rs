//! Notifications end to end: Pebble issues a certificate valid for six days,
//! so it is both issued and within its 7-day expiry notice. Channels on real
//! receivers on loopback: webhooks checked for their signature (one failing
//! its first two attempts, one always failing), an installation channel
//! routed to the project's events, aiosmtpd requiring STARTTLS and
//! authentication for the expiry mail, and a Slack channel whose route takes
//! critical events only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::api::assert_not_stored;
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use crate::support::smtp;
use crate::support::webhook_receiver::{self, Seen};
use certautopilot::notify::email::message_id;

const HOOK_SECRET: &str = "notification-hook-secret";

/// `/flaky` answers 503 to its first two attempts, `/broken` to every one;
/// any other path takes what is sent.
fn flaky_or_broken(path: &str, attempt: u32) -> bool {
    path == "/broken" || (path == "/flaky" && attempt <= 2)
}

fn webhook_channel(name: &str, url: String, routes: Value) -> Value {
    json!({ "name": name, "kind": "webhook",
            "webhook": { "url": url, "secret": HOOK_SECRET }, "routes": routes })
}

#[actix_web::test]
async fn events_reach_the_channels_that_take_them_retried_or_kept_dead() {
    let mail = smtp::start(0);
    let cluster = Cluster::builder("notifications")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            validity_secs: Some(6 * 86_400),
            ..PebbleOptions::default()
        })
        .workers(1)
        .env(Role::Worker, "CAP_NOTIFY_ATTEMPTS", "3")
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .env(Role::Scheduler, "CAP_HOUSEKEEPING_SECS", "2")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("notified", cluster.pebble()).await;
    api.grant(&p, &["notify.example.test"]).await;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (port, receiver) =
        webhook_receiver::start(HOOK_SECRET, seen.clone(), flaky_or_broken).await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let channels = format!("/projects/{p}/channels");

    // Bad channels are refused, each with its reason.
    let (status, problem) = api
        .post(
            &channels,
            json!({ "name": "bad", "kind": "email",
                    "email": { "host": "localhost", "user": "alerts", "from": "not an address", "to": [] },
                    "routes": [{ "kinds": ["certificate.exploded"] }],
                    "quiet_hours": { "start_minute": 1320, "end_minute": 1440 } }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let text = problem.to_string();
    for field in [
        "email.password",
        "email.from",
        "email.to",
        "routes[0].kinds[0]",
        "quiet_hours",
    ] {
        assert!(text.contains(field), "{field}: {problem}");
    }

    let issued_only = json!([{ "kinds": ["certificate.issued"] }]);
    let (status, hook) = api
        .post(
            &channels,
            webhook_channel("hook", url("/flaky"), issued_only.clone()),
        )
        .await;
    assert_eq!(status, 201, "{hook}");
    assert_eq!(hook["credential_set"], true);
    assert!(!hook.to_string().contains(HOOK_SECRET), "{hook}");
    let (status, broken) = api
        .post(
            &channels,
            webhook_channel("broken", url("/broken"), issued_only),
        )
        .await;
    assert_eq!(status, 201, "{broken}");
    let (status, mailer) = api
        .post(
            &channels,
            json!({ "name": "mail", "kind": "email",
                    "email": { "host": "localhost", "port": mail.port, "user": "alerts", "password": "s3cret",
                               "from": "certautopilot@example.test", "to": ["oncall@example.test"],
                               "ca_bundle_pem": mail.ca_pem },
                    "routes": [{ "kinds": ["certificate.expiring"] }] }),
        )
        .await;
    assert_eq!(status, 201, "{mailer}");
    let (status, pager) = api
        .post(
            &channels,
            json!({ "name": "pager", "kind": "slack",
                    "slack": { "webhook_url": "https://hooks.example.test/services/T0/B0/x" },
                    "routes": [{ "min_severity": "critical" }] }),
        )
        .await;
    assert_eq!(status, 201, "{pager}");
    // An installation channel, routed to this project's issues.
    let (status, ops) = api
        .post(
            "/channels",
            webhook_channel(
                "ops",
                url("/ops"),
                json!([{ "kinds": ["certificate.issued"], "projects": [p] }]),
            ),
        )
        .await;
    assert_eq!(status, 201, "{ops}");
    assert_eq!(ops["project_id"], Value::Null);

    let (_, cert) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.notify.example.test"], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let (cert_id, serial) = (
        cert["id"].as_str().unwrap().to_string(),
        cert["serial"].as_str().unwrap().to_string(),
    );
    let issued_key = format!("certificate.issued:{cert_id}:{serial}");

    // The flaky receiver gets it on the third attempt; the broken one's is
    // kept dead after three, with the last error.
    let notifications = format!("/projects/{p}/notifications");
    let state_of = |page: &Value, channel: &Value| -> Option<Value> {
        page["items"]
            .as_array()?
            .iter()
            .find(|n| n["channel_id"] == channel["id"] && n["kind"] == "certificate.issued")
            .cloned()
    };
    let settled = api
        .wait_for(
            &notifications,
            Duration::from_secs(60),
            "sent and dead",
            |page| {
                state_of(page, &hook).is_some_and(|n| n["state"] == "sent")
                    && state_of(page, &broken).is_some_and(|n| n["state"] == "dead")
            },
        )
        .await;
    let sent = state_of(&settled, &hook).unwrap();
    assert_eq!(sent["attempts"], 3, "{sent}");
    assert_eq!(sent["dedup_key"], issued_key.as_str(), "{sent}");
    let dead = state_of(&settled, &broken).unwrap();
    assert_eq!(dead["attempts"], 3, "{dead}");
    assert!(
        dead["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503")),
        "{dead}"
    );
    let (_, dead_letters) = api.get(&format!("{notifications}?state=dead")).await;
    let dead_ids: Vec<&Value> = dead_letters["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| &n["channel_id"])
        .collect();
    assert_eq!(dead_ids, [&broken["id"]], "{dead_letters}");
    {
        let seen = seen.lock().unwrap();
        let flaky = &seen.taken["/flaky"];
        assert_eq!(flaky.len(), 1, "sent once");
        assert_eq!(flaky[0].0, issued_key, "the delivery carries the key");
        assert_eq!(flaky[0].1["kind"], "certificate.issued");
        assert_eq!(flaky[0].1["project_id"], p.as_str());
        assert_eq!(seen.attempts["/broken"], 3);
    }
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            seen.lock().unwrap().taken.contains_key("/ops")
        })
        .await,
        "the installation channel takes the project's issue"
    );

    // The expiry mail: the 7-day notice, once, over STARTTLS, authenticated.
    let expiring_key = format!("certificate.expiring:{cert_id}:{serial}:7d");
    assert!(
        support::wait_until(Duration::from_secs(30), || async {
            !smtp::received(&mail).is_empty()
        })
        .await,
        "the expiry mail arrives"
    );
    let mails = smtp::received(&mail);
    assert_eq!(mails.len(), 1, "one notice");
    let (text, meta) = &mails[0];
    assert_eq!(meta["tls"], true);
    assert_eq!(meta["login"], "alerts");
    assert!(text.contains("expires in 7 days"), "{text}");
    assert!(
        text.contains(&format!("Message-ID: {}", message_id(&expiring_key))),
        "{text}"
    );
    // Housekeeping keeps running: the notice is not sent again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        smtp::received(&mail).len(),
        1,
        "each notice once per serial"
    );

    // The pager's route takes critical events only: nothing for it.
    let (_, all) = api.get(&format!("{notifications}?limit=200")).await;
    assert!(
        !all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["channel_id"] == pager["id"]),
        "{all}"
    );

    // A test message, at once.
    let hook_path = format!("{channels}/{}", hook["id"].as_str().unwrap());
    let (status, tested) = api.post(&format!("{hook_path}/test"), json!({})).await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["delivered"], true);
    assert!(seen.lock().unwrap().taken["/flaky"]
        .iter()
        .any(|(_, b)| b["kind"] == "channel.test"));
    let (status, refused) = api
        .post(
            &format!("{channels}/{}/test", broken["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{refused}");
    assert_eq!(refused["delivered"], false, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("503"),
        "{refused}"
    );

    // Credentials are only ever ciphertext in the database.
    let store = cluster.db.store().await;
    assert_not_stored(&store, HOOK_SECRET).await;
    assert_not_stored(&store, "hooks.example.test/services").await;
    // A webhook's path is sealed too (the receiver above saw it, by path):
    // the database holds only its origin in the clear.
    assert_not_stored(&store, "/flaky").await;
    assert_not_stored(&store, "/broken").await;

    let (status, _) = api.call(reqwest::Method::DELETE, &hook_path, None).await;
    assert_eq!(status, 204);
    receiver.stop(true).await;
}

/// What an internal service answers when a channel is aimed at it: an
/// editor must not read it through the API.
const INTERNAL_PAGE: &str = "internal-admin-console db_password=hunter2";

/// The attacks: a viewer (or an editor) reads a webhook channel's URL,
/// whose query string holds the receiver's token; an editor aims a channel
/// at an internal service and reads its answer through `…/test`; an editor
/// creates channels without end. Viewers and editors see the URL's origin
/// only (the project's admin, and a global admin, the whole URL); the test
/// answers with the receiver's status and our words, never its body (nor
/// does the audit record a viewer reads); past
/// `CAP_MAX_CHANNELS_PER_PROJECT`, 409 naming the knob.
#[actix_web::test]
async fn viewers_see_a_webhooks_origin_and_a_test_shows_no_answer_and_channels_are_capped() {
    use actix_web::{web, App, HttpResponse, HttpServer};

    let cluster = Cluster::builder("channel_views")
        .env(Role::Api, "CAP_MAX_CHANNELS_PER_PROJECT", "2")
        .start()
        .await;
    let root = &cluster.api;
    let internal = HttpServer::new(|| {
        App::new().default_service(web::to(|| async {
            HttpResponse::NotFound().body(INTERNAL_PAGE)
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = internal.addrs()[0].port();
    let internal = internal.run();
    let stop = internal.handle();
    actix_web::rt::spawn(internal);

    let (status, p) = root.post("/projects", json!({ "name": "viewed" })).await;
    assert_eq!(status, 201, "{p}");
    let p = p["id"].as_str().unwrap().to_string();
    let token = |role: &'static str| {
        let p = p.clone();
        async move {
            let body = json!({ "roles": [{ "project_id": p, "role": role }] });
            let (status, t) = root.post("/tokens", body).await;
            assert_eq!(status, 201, "{t}");
            root.with_token(t["token"].as_str().unwrap())
        }
    };
    let (admin, editor, viewer) = (
        token("admin").await,
        token("editor").await,
        token("viewer").await,
    );
    let channels = format!("/projects/{p}/channels");
    let url = format!("http://127.0.0.1:{port}/hooks/ops?token=receiver-secret-in-query");
    let origin = format!("http://127.0.0.1:{port}");
    let (status, created) = editor
        .post(&channels, webhook_channel("ops", url.clone(), json!([])))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        created["url"],
        origin.as_str(),
        "the editor's answer: {created}"
    );
    let id = created["id"].as_str().unwrap();
    let one = format!("{channels}/{id}");

    for (who, client, expected) in [
        ("viewer", &viewer, &origin),
        ("editor", &editor, &origin),
        ("admin", &admin, &url),
        ("global admin", root, &url),
    ] {
        let (status, got) = client.get(&one).await;
        assert_eq!(status, 200, "{who}: {got}");
        assert_eq!(got["url"], expected.as_str(), "{who} reads it: {got}");
        let (status, listed) = client.get(&channels).await;
        assert_eq!(status, 200, "{who}: {listed}");
        assert_eq!(
            listed["items"][0]["url"],
            expected.as_str(),
            "{who} lists it: {listed}"
        );
    }

    // The token in the query is not in the database in the clear: the
    // admins' whole URL above was opened from its sealed secret.
    assert_not_stored(&cluster.db.store().await, "receiver-secret-in-query").await;

    let (status, tested) = editor.post(&format!("{one}/test"), json!({})).await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["delivered"], false, "{tested}");
    let error = tested["error"].as_str().unwrap();
    assert!(
        error.contains("404"),
        "the receiver's status is told: {tested}"
    );
    assert!(
        !tested.to_string().contains("hunter2") && !tested.to_string().contains("internal-admin"),
        "the receiver's answer reached the caller: {tested}"
    );
    let (status, audit) = viewer.get(&format!("/projects/{p}/audit?limit=200")).await;
    assert_eq!(status, 200, "{audit}");
    assert!(audit.to_string().contains("channel.tested"), "{audit}");
    assert!(!audit.to_string().contains("hunter2"), "{audit}");

    // The cap: two channels, then 409 naming the knob.
    let (status, second) = editor
        .post(&channels, webhook_channel("second", url.clone(), json!([])))
        .await;
    assert_eq!(status, 201, "{second}");
    let (status, refused) = editor
        .post(&channels, webhook_channel("third", url.clone(), json!([])))
        .await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused.to_string().contains("CAP_MAX_CHANNELS_PER_PROJECT"),
        "{refused}"
    );
    let (status, _) = editor.call(reqwest::Method::DELETE, &one, None).await;
    assert_eq!(status, 204);
    let (status, third) = editor
        .post(&channels, webhook_channel("third", url, json!([])))
        .await;
    assert_eq!(status, 201, "room again once one is deleted: {third}");
    stop.stop(true).await;
}
