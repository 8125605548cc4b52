//! Renewals against a real ACME server (Pebble issuing short-lived
//! certificates): the leader enqueues each renewal once, whoever leads and
//! whatever is killed; failures back off, and the back-off is kept with the
//! certificate across worker restarts.

use std::time::Duration;

use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use crate::support::{self, Proc, TestDb};
use mongodb::bson::{doc, Document};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

async fn find(db: &TestDb, collection: &str, filter: Document) -> Vec<Document> {
    support::documents(&db.store().await, collection, filter).await
}

#[tokio::test]
async fn a_due_certificate_is_renewed_exactly_once_though_the_leader_dies_mid_tick() {
    let mut cluster = Cluster::builder("renewal_once")
        // 40-second certificates: the renewal window opens about 26 s in.
        .pebble(PebbleOptions {
            validity_secs: Some(40),
            ..PebbleOptions::default()
        })
        .workers(1)
        .start()
        .await;
    let (api, pebble, db) = (&cluster.api, cluster.pebble(), &cluster.db);
    let scheduler_env = [
        ("CAP_RENEWAL_SCAN_SECS", "1"),
        ("CAP_LEADER_LEASE_SECS", "3"),
    ];
    // The first leader pauses between a renewal's enqueue and its mark.
    let mut leader_env = scheduler_env.to_vec();
    leader_env.push(("CAP_FAULT_PAUSE_AFTER_STAGE", "renewal_enqueued"));
    let leader = Proc::start("scheduler", db, "renew-sched-a", &leader_env);
    leader.wait_alive().await;
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            leader.metric("certautopilot_scheduler_is_leader", "").await == Some(1.0)
        })
        .await,
        "the first scheduler leads"
    );
    let standby = Proc::start("scheduler", db, "renew-sched-b", &scheduler_env);
    standby.wait_alive().await;

    let (p, issuer) = api.project_with_issuer("renewals", pebble).await;
    api.grant(&p, &["renew.example.test", "down.example.test"])
        .await;
    let (path, issued) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.renew.example.test"], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let id = issued["id"].as_str().unwrap().to_string();
    let first_serial = issued["serial"].as_str().unwrap().to_string();
    assert_eq!(issued["renewal_count"], 0);
    let due =
        mongodb::bson::DateTime::parse_rfc3339_str(issued["renewal_due_at"].as_str().unwrap())
            .unwrap();
    let not_after =
        mongodb::bson::DateTime::parse_rfc3339_str(issued["not_after"].as_str().unwrap()).unwrap();
    let left = not_after.timestamp_millis() - due.timestamp_millis();
    assert!(
        (12_000..=16_000).contains(&left),
        "due a third of 40 s before expiry (less jitter): {left} ms"
    );

    // No worker while the leaders change hands, so the renewal cannot finish
    // before the standby's scan has met it.
    let first_worker = &mut cluster.workers[0];
    first_worker.signal(Signal::SIGTERM);
    first_worker.wait_exit(Duration::from_secs(30)).await;

    let renewal_jobs = doc! { "key": { "$regex": format!("^renew:{id}:") } };
    assert!(
        support::wait_until(Duration::from_secs(60), || async {
            !find(db, "jobs", renewal_jobs.clone()).await.is_empty()
        })
        .await,
        "the leader enqueues the renewal when the window opens"
    );
    let cert_doc = find(db, "certificates", doc! { "_id": &id })
        .await
        .remove(0);
    assert!(
        cert_doc.get_datetime("renewal_next_at").is_ok(),
        "the leader is paused mid-tick: enqueued, not yet marked"
    );
    leader.signal(Signal::SIGKILL);

    assert!(
        support::wait_until(Duration::from_secs(30), || async {
            !standby
                .log_lines_with(&["\"kind\":\"renewal\"", "\"already_queued\":1"])
                .is_empty()
        })
        .await,
        "the standby takes over, finds the certificate still due, and enqueues nothing new"
    );
    let cert_doc = find(db, "certificates", doc! { "_id": &id })
        .await
        .remove(0);
    assert!(
        cert_doc.get_datetime("renewal_next_at").is_err(),
        "now marked: {cert_doc}"
    );

    let worker = cluster.spawn(Role::Worker, "renew-worker-2");
    let renewed = api
        .wait_for(&path, Duration::from_secs(60), "renewed", |c| {
            c["serial"].as_str().is_some_and(|s| s != first_serial)
        })
        .await;
    assert_eq!(renewed["renewal_count"], 1, "{renewed}");
    assert_eq!(renewed["issued_count"], 2, "{renewed}");
    assert_eq!(
        find(db, "jobs", renewal_jobs.clone()).await.len(),
        1,
        "one renewal job"
    );
    let orders = find(db, "orders", doc! { "certificate_id": &id }).await;
    assert_eq!(
        orders.len(),
        2,
        "one ACME order to issue, one to renew: {orders:?}"
    );
    assert!(orders.iter().all(|o| o.get_str("stage") == Ok("valid")));
    let next_due =
        mongodb::bson::DateTime::parse_rfc3339_str(renewed["renewal_due_at"].as_str().unwrap())
            .unwrap();
    assert!(next_due > due, "the next window is the new certificate's");
    assert_eq!(
        worker
            .metric("certautopilot_renewals_total", "outcome=\"succeeded\"")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn a_failing_certificate_backs_off_and_keeps_its_back_off_across_a_worker_restart() {
    let mut cluster = Cluster::builder("renewal_backoff")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .env(Role::Worker, "CAP_ISSUE_BACKOFF_BASE_SECS", "3")
        .env(Role::Worker, "CAP_ISSUE_BACKOFF_MAX_SECS", "60")
        .env(Role::Worker, "CAP_JOB_MAX_ATTEMPTS", "20")
        .start()
        .await;
    let worker = cluster.workers.remove(0);
    let (api, pebble, db) = (&cluster.api, cluster.pebble(), &cluster.db);
    // Resolves to an address where nothing answers HTTP-01.
    pebble.resolve("down.example.test", "127.0.0.2").await;
    let (p, issuer) = api.project_with_issuer("renewals", pebble).await;
    api.grant(&p, &["renew.example.test", "down.example.test"])
        .await;
    let (_, cert) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "down", "dns_names": ["down.example.test"], "issuer_id": issuer }),
        )
        .await;
    let path = format!(
        "/projects/{p}/certificates/{}",
        cert["id"].as_str().unwrap()
    );
    let time = |v: &Value, f: &str| {
        mongodb::bson::DateTime::parse_rfc3339_str(
            v[f].as_str().unwrap_or_else(|| panic!("{f}: {v}")),
        )
        .unwrap()
        .timestamp_millis()
    };

    let first = api
        .wait_for(&path, Duration::from_secs(60), "first failure", |c| {
            c["consecutive_failures"] == 1
        })
        .await;
    assert!(
        first["last_error"]
            .as_str()
            .unwrap()
            .contains("down.example.test"),
        "{first}"
    );
    assert_eq!(first["status"], "pending");
    // The worker dies; its successor starts with nothing in memory.
    worker.signal(Signal::SIGKILL);
    drop(worker);
    let worker = cluster.spawn(Role::Worker, "backoff-worker-2");

    let mut previous = first;
    for failures in 2..=3 {
        let now = api
            .wait_for(&path, Duration::from_secs(60), "next failure", |c| {
                c["consecutive_failures"].as_i64().unwrap_or(0) >= failures
            })
            .await;
        assert_eq!(
            now["consecutive_failures"], failures,
            "counted on, not reset: {now}"
        );
        // The certificate's own record (the database) carries the failure time.
        let doc = find(
            db,
            "certificates",
            doc! { "_id": cert["id"].as_str().unwrap() },
        )
        .await
        .remove(0);
        let failed_at = doc
            .get_datetime("last_failure_at")
            .unwrap()
            .timestamp_millis();
        assert!(
            failed_at >= time(&previous, "retry_at"),
            "attempt {failures} waited for the recorded back-off ({} ms early)",
            time(&previous, "retry_at") - failed_at
        );
        // Equal jitter: at least half of 3 s · 2^(n-1).
        let wait = time(&now, "retry_at") - failed_at;
        let floor = 1500 * (1 << (failures - 1));
        assert!(
            wait >= floor - 100,
            "back-off after failure {failures}: {wait} ms, expected ≥ {floor}"
        );
        previous = now;
    }
    assert_ne!(previous["status"], "issued");
    let api_metric = cluster.apis[0]
        .metric(
            "certautopilot_certificate_consecutive_failures",
            &format!("certificate=\"{}\"", cert["id"].as_str().unwrap()),
        )
        .await;
    assert!(
        api_metric.is_some_and(|n| n >= 3.0),
        "alert-worthy metric: {api_metric:?}"
    );
    drop(worker);
}
