//! Riding through an election: `replSetStepDown` for 5 s while 200 jobs run,
//! the health endpoints are polled and the API is read and written. On a
//! server of its own, so that the step-down affects no other test's server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::{self, Proc, TestDb};
use certautopilot::queue::jobs::{JobQueue, NewJob};
use mongodb::bson::doc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_second_step_down_fails_no_job_and_no_request() {
    let db = TestDb::on_own_server("stepdown").await;
    let store = db.store().await;
    let queue = JobQueue::new(store.clone());
    let proc = Proc::start("all", &db, "rider", &[("CAP_WORKER_CONCURRENCY", "16")]);
    proc.wait_alive().await;
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            reqwest::get(proc.url("/readyz"))
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await
    );

    // Without a completion record, a job's first write after its sleep is its
    // completion, so completions land inside the step-down window.
    let mut ids = Vec::new();
    for i in 0..200 {
        ids.push(
            queue
                .enqueue(&NewJob::new(
                    "probe",
                    format!("ride-{i}"),
                    doc! { "sleep_ms": 1000i64, "record": false },
                ))
                .await
                .unwrap()
                .id,
        );
    }

    // Poll the three endpoints throughout, and create and list projects
    // through the API (whose reads and writes are not all wrapped in a
    // retry: they used to fail once the driver gave up looking for a
    // primary after 3 s); count answers and failures.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(AtomicU64::new(0));
    let server_errors = Arc::new(AtomicU64::new(0));
    let api_failures = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, answers, server_errors) = (stop.clone(), answers.clone(), server_errors.clone());
        let urls = ["/healthz", "/readyz", "/metrics"].map(|p| proc.url(p));
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                for url in &urls {
                    match client.get(url).send().await {
                        Ok(r) if r.status().is_server_error() => {
                            eprintln!("{url} answered {}", r.status());
                            server_errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("{url} failed: {e}");
                            server_errors.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    answers.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let api_client = {
        let (stop, api_failures) = (stop.clone(), api_failures.clone());
        let projects = proc.url("/v1/projects");
        let token = support::api::bootstrap_token(&db);
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let mut calls = 0u64;
            while !stop.load(Ordering::SeqCst) {
                calls += 1;
                let create = client
                    .post(&projects)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "name": format!("ride-{calls}") }))
                    .send();
                let list = client
                    .get(format!("{projects}?limit=5"))
                    .bearer_auth(&token)
                    .send();
                for (what, answer) in [("create", create.await), ("list", list.await)] {
                    match answer {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            eprintln!("{what} a project answered {}", r.status());
                            api_failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("{what} a project failed: {e}");
                            api_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            calls
        })
    };

    // Let work get going, then step the primary down.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let admin = store.client().database("admin");
    admin
        .run_command(doc! { "replSetStepDown": 5, "force": true })
        .await
        .expect("replSetStepDown");
    // The step-down is real: a write without our retry policy fails now.
    let impatient = certautopilot::store::Store::connect(&db.uri, Duration::ZERO)
        .await
        .unwrap();
    let refused = impatient
        .collection("scratch")
        .insert_one(doc! { "during": "step-down" })
        .await;
    assert!(refused.is_err(), "writes are refused during the step-down");

    let done = support::wait_until(Duration::from_secs(120), || async {
        store
            .collection("jobs")
            .count_documents(doc! { "kind": "probe", "state": "done" })
            .await
            .unwrap_or(0)
            == 200
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    poller.await.unwrap();
    let api_calls = api_client.await.unwrap();

    let failed = store
        .collection("jobs")
        .count_documents(doc! { "kind": "probe", "$or": [ { "state": "dead" }, { "attempt": { "$gt": 1 } }, { "last_error": { "$ne": null } } ] })
        .await
        .unwrap();
    let retried = proc
        .metric("certautopilot_jobs_total", "outcome=\"retrying\"")
        .await
        .unwrap_or(0.0);
    let dead = proc
        .metric("certautopilot_jobs_total", "outcome=\"dead\"")
        .await
        .unwrap_or(0.0);
    println!(
        "{} endpoint answers, {} 5xx or failed; failed jobs {failed}, retrying {retried}, dead {dead}",
        answers.load(Ordering::SeqCst),
        server_errors.load(Ordering::SeqCst)
    );
    assert!(done, "all 200 jobs done; log:\n{}", proc.log_text());
    assert_eq!(failed, 0, "no job failed or was retried");
    assert_eq!(retried + dead, 0.0);
    assert_eq!(server_errors.load(Ordering::SeqCst), 0, "no 5xx answers");
    assert!(
        api_calls > 20,
        "the API was really called ({api_calls} rounds)"
    );
    assert_eq!(
        api_failures.load(Ordering::SeqCst),
        0,
        "every API call rode through the step-down"
    );
    assert!(
        answers.load(Ordering::SeqCst) > 30,
        "the endpoints were really polled"
    );
}

/// Step-downs back to back for 8 s: the primary is away for longer than the
/// driver's old 3 s wait for one, and every API read and write must still
/// answer 2xx, however long it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_step_downs_fail_no_api_request() {
    let db = TestDb::on_own_server("stepdowns").await;
    let store = db.store().await;
    let api = Proc::start("api", &db, "patient-api", &[]);
    api.wait_alive().await;
    let projects = api.url("/v1/projects");
    let token = support::api::bootstrap_token(&db);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    // The API answers before the storm.
    let before = client
        .get(&projects)
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);

    let storm = {
        let admin = store.client().database("admin");
        tokio::spawn(async move {
            let until = std::time::Instant::now() + Duration::from_secs(8);
            let mut step_downs = 0;
            while std::time::Instant::now() < until {
                // Refused while there is no primary: then again at once.
                if admin
                    .run_command(doc! { "replSetStepDown": 5, "force": true })
                    .await
                    .is_ok()
                {
                    step_downs += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            step_downs
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let create = client
            .post(&projects)
            .bearer_auth(&token)
            .json(&serde_json::json!({ "name": format!("storm-{i}") }))
            .send();
        let list = client
            .get(format!("{projects}?limit=5"))
            .bearer_auth(&token)
            .send();
        calls.push(tokio::spawn(async move {
            let answers = [create.await, list.await];
            answers.map(|a| a.map(|r| r.status().as_u16()).map_err(|e| e.to_string()))
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut failures = Vec::new();
    for call in calls {
        for answer in call.await.unwrap() {
            match answer {
                Ok(200 | 201) => {}
                other => failures.push(format!("{other:?}")),
            }
        }
    }
    let step_downs = storm.await.unwrap();
    assert!(
        step_downs >= 2,
        "the primary stepped down back to back ({step_downs} times)"
    );
    assert!(
        failures.is_empty(),
        "{} of 80 API calls failed during the step-downs: {failures:?}; log:\n{}",
        failures.len(),
        api.log_text()
    );
}
