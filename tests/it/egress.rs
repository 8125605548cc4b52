//! The egress fence, against real workers: an issuer's directory and a
//! drift endpoint on loopback are refused — before any connection, with the
//! policy's reason in `last_error` — unless `CAP_EGRESS_ALLOW` opens them; a
//! range opened for ACME alone (`CAP_EGRESS_ALLOW_ACME`) stays closed to
//! delivery targets, notification channels (and their test message) and
//! drift endpoints; a CA that never answers is given up on per request; and
//! a job attempt that outlives its deadline is cut off and retried.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::support::api::ApiClient;
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::PebbleOptions;
use crate::support::webhook_receiver::{self, Seen};
use crate::support::{self, Proc, TestDb};
use certautopilot::queue::jobs::{JobQueue, NewJob};

/// A listener on loopback that accepts connections, counts them and never
/// says a word (a "CA" that never answers, and a witness that nothing
/// connected).
struct Silent {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    async fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(tcp);
            }
        });
        Silent {
            port,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A project granted `{name}.example.test` with an issuer at
/// `directory_url`; returns the project's id and the issuer's.
async fn project_with_directory(
    api: &ApiClient,
    name: &str,
    directory_url: &str,
) -> (String, String) {
    let (status, project) = api.post("/projects", json!({ "name": name })).await;
    assert_eq!(status, 201, "{project}");
    let p = project["id"].as_str().unwrap().to_string();
    api.grant(&p, &[&format!("{name}.example.test")]).await;
    let (status, issuer) = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "ca", "directory_url": directory_url,
                    "contact": "ops@example.test", "challenge": "http-01" }),
        )
        .await;
    assert_eq!(status, 201, "{issuer}");
    (p, issuer["id"].as_str().unwrap().to_string())
}

/// Creates a certificate for `dns_name` and waits until its issuance has
/// failed with a `last_error` containing `expected`; returns the certificate.
async fn failed_issuance(
    api: &ApiClient,
    p: &str,
    issuer: &str,
    dns_name: &str,
    expected: &str,
) -> Value {
    let (status, cert) = api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "www", "dns_names": [dns_name], "issuer_id": issuer }),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    let path = format!(
        "/projects/{p}/certificates/{}",
        cert["id"].as_str().unwrap()
    );
    api.wait_for(&path, Duration::from_secs(30), expected, |c| {
        c["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(expected))
    })
    .await
}

/// The `issue-certificate` job of certificate `id`.
async fn issue_job(db: &TestDb, id: &str) -> Document {
    db.store()
        .await
        .collection("jobs")
        .find_one(doc! { "kind": "issue-certificate", "payload.certificate_id": id })
        .await
        .unwrap()
        .expect("the certificate's issue job")
}

#[tokio::test]
async fn an_issuer_directory_on_loopback_is_refused_before_any_connection() {
    let cluster = Cluster::builder("egress_acme")
        .workers(1)
        // Nothing restricted is allowed: what a production worker starts with.
        .env(Role::Worker, "CAP_EGRESS_ALLOW", "")
        .start()
        .await;
    let api = &cluster.api;
    let ca = Silent::start().await;

    // By address: the URL names loopback itself.
    let (p, by_address) = project_with_directory(
        api,
        "by-address",
        &format!("https://127.0.0.1:{}/dir", ca.port),
    )
    .await;
    let refusal =
        "egress to 127.0.0.1 (loopback) refused for host 127.0.0.1: allow it with CAP_EGRESS_ALLOW_ACME";
    let cert = failed_issuance(api, &p, &by_address, "www.by-address.example.test", refusal).await;
    let job = issue_job(&cluster.db, cert["id"].as_str().unwrap()).await;
    assert!(
        job.get_str("last_error").is_ok_and(|e| e.contains(refusal)),
        "the job's last_error: {job}"
    );

    // By name: `localhost` resolves to loopback, and is judged by that.
    let (p, by_name) = project_with_directory(
        api,
        "by-name",
        &format!("https://localhost:{}/dir", ca.port),
    )
    .await;
    failed_issuance(
        api,
        &p,
        &by_name,
        "www.by-name.example.test",
        "(loopback) refused for host localhost",
    )
    .await;

    assert_eq!(ca.accepted(), 0, "the refused CA saw a connection");
}

#[tokio::test]
async fn a_ca_that_never_answers_fails_the_attempt_within_the_request_timeout() {
    let cluster = Cluster::builder("egress_silent_ca")
        .workers(1)
        .env(Role::Worker, "CAP_ACME_REQUEST_TIMEOUT_SECS", "2")
        .start()
        .await;
    let api = &cluster.api;
    let ca = Silent::start().await;
    let (p, issuer) =
        project_with_directory(api, "silent", &format!("https://127.0.0.1:{}/dir", ca.port)).await;
    let started = Instant::now();
    failed_issuance(
        api,
        &p,
        &issuer,
        "www.silent.example.test",
        "the CA did not answer within 2s",
    )
    .await;
    assert!(
        ca.accepted() >= 1,
        "loopback is allowed in tests: the worker connected"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

/// A TLS server on loopback with a self-signed certificate, counting
/// handshakes begun.
struct TlsEndpoint {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsEndpoint {
    async fn start() -> TlsEndpoint {
        use rustls_pki_types::pem::PemObject;
        let cert = rcgen::generate_simple_self_signed(vec!["www.example.test".into()]).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::from_pem_slice(
                cert.signing_key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        TlsEndpoint {
            port,
            accepted,
            task,
        }
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn drift_of<'a>(cert: &'a Value, host: &str) -> Option<&'a Value> {
    cert["drift"].as_array()?.iter().find(|d| d["host"] == host)
}

#[tokio::test]
async fn a_drift_endpoint_on_loopback_is_refused_unless_allowed() {
    let mut cluster = Cluster::builder("egress_drift")
        .workers(1)
        .env(Role::Worker, "CAP_EGRESS_ALLOW", "")
        .scheduler()
        // Scans are enqueued on the renewal scan's timer.
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .env(Role::Scheduler, "CAP_DRIFT_SCAN_SECS", "1")
        .start()
        .await;
    let server = TlsEndpoint::start().await;
    // Never issued (the CA is nowhere): drift is scanned all the same.
    let (p, issuer) = project_with_directory(&cluster.api, "drift", "https://ca.invalid/dir").await;
    let (status, cert) = cluster
        .api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "www", "dns_names": ["www.drift.example.test"], "issuer_id": issuer,
                    "endpoints": [
                        { "host": "127.0.0.1", "port": server.port, "sni": "www.example.test" },
                        { "host": "localhost", "port": server.port, "sni": "www.example.test" },
                    ] }),
        )
        .await;
    assert_eq!(status, 201, "{cert}");
    let path = format!(
        "/projects/{p}/certificates/{}",
        cert["id"].as_str().unwrap()
    );
    let scanned = cluster
        .api
        .wait_for(
            &path,
            Duration::from_secs(30),
            "both endpoints refused",
            |c| {
                ["127.0.0.1", "localhost"].iter().all(|h| {
                    drift_of(c, h).is_some_and(|d| {
                        d["state"] == "unreachable"
                            && d["error"].as_str().is_some_and(|e| {
                                e.contains(&format!(
                                "(loopback) refused for host {h}: allow it with CAP_EGRESS_ALLOW_DRIFT"
                            ))
                            })
                    })
                })
            },
        )
        .await;
    assert_eq!(
        server.accepted.load(Ordering::SeqCst),
        0,
        "the endpoint saw a connection: {scanned}"
    );

    // A worker whose policy opens loopback reaches it (the deprecated
    // shared list still opens every purpose).
    cluster.workers[0].signal(Signal::SIGTERM);
    assert!(cluster.workers[0]
        .wait_exit(Duration::from_secs(30))
        .await
        .is_some());
    let allowing = Proc::start(
        "worker",
        &cluster.db,
        "egress_drift-allowing",
        &[
            ("CAP_EGRESS_ALLOW", "127.0.0.0/8,::1"),
            ("CAP_CLAIM_POLL_MS", "100"),
        ],
    );
    let seen = cluster
        .api
        .wait_for(
            &path,
            Duration::from_secs(30),
            "both endpoints reached",
            |c| {
                ["127.0.0.1", "localhost"]
                    .iter()
                    .all(|h| drift_of(c, h).is_some_and(|d| d["state"] == "foreign"))
            },
        )
        .await;
    assert!(server.accepted.load(Ordering::SeqCst) >= 2, "{seen}");
    // The shared list is deprecated: its process says so, naming the lists
    // to use; one without it says nothing.
    let deprecated = ["CAP_EGRESS_ALLOW is deprecated", "CAP_EGRESS_ALLOW_ACME"];
    assert_eq!(
        allowing.log_lines_with(&deprecated).len(),
        1,
        "{}",
        allowing.log_text()
    );
    assert!(cluster.workers[0].log_lines_with(&deprecated).is_empty());
}

/// The attack of one egress list for every purpose: the operator opens a
/// range for its private CA (loopback stands for it here, where Pebble
/// listens), and an editor aims a webhook target, a webhook channel and a
/// drift endpoint into that same range, hoping to read the services there.
/// The CA is reached (the certificate issues); each of the others is
/// refused naming its own list, and nothing of theirs sees a connection.
#[actix_web::test]
async fn a_range_opened_for_acme_is_refused_to_targets_channels_and_drift() {
    const SECRET: &str = "egress-purposes-hook-secret";
    const LOOPBACK: &str = "127.0.0.0/8,::1";
    let cluster = Cluster::builder("egress_purposes")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .env(Role::Worker, "CAP_EGRESS_ALLOW", "")
        .env(Role::Worker, "CAP_EGRESS_ALLOW_ACME", LOOPBACK)
        .env(Role::Api, "CAP_EGRESS_ALLOW", "")
        .env(Role::Api, "CAP_EGRESS_ALLOW_ACME", LOOPBACK)
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .env(Role::Scheduler, "CAP_DRIFT_SCAN_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("purposes", cluster.pebble()).await;
    api.grant(&p, &["purposes.example.test"]).await;
    let seen: Arc<std::sync::Mutex<Seen>> = Arc::default();
    let (hook_port, receiver) = webhook_receiver::start(SECRET, seen.clone(), |_, _| false).await;
    let endpoint = TlsEndpoint::start().await;

    let (status, target) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "inside", "kind": "webhook",
                    "webhook": { "url": format!("http://127.0.0.1:{hook_port}/target"), "secret": SECRET } }),
        )
        .await;
    assert_eq!(status, 201, "{target}");
    let channels = format!("/projects/{p}/channels");
    let (status, channel) = api
        .post(
            &channels,
            json!({ "name": "inside", "kind": "webhook",
                    "webhook": { "url": format!("http://127.0.0.1:{hook_port}/channel"), "secret": SECRET },
                    "routes": [{ "kinds": ["certificate.issued"] }] }),
        )
        .await;
    assert_eq!(status, 201, "{channel}");

    // The CA, in the opened range, is reached.
    let (path, _) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": ["www.purposes.example.test"], "issuer_id": issuer,
                    "targets": ["inside"],
                    "endpoints": [{ "host": "127.0.0.1", "port": endpoint.port, "sni": "www.example.test" }] }),
            Duration::from_secs(60),
        )
        .await;
    let refused_with = |variable: &str| {
        format!(
            "egress to 127.0.0.1 (loopback) refused for host 127.0.0.1: allow it with {variable}"
        )
    };

    // The delivery target is refused, naming its own list.
    let targets_refusal = refused_with("CAP_EGRESS_ALLOW_TARGETS");
    api.wait_for(
        &format!("{path}/distributions"),
        Duration::from_secs(30),
        "the delivery refused",
        |d| {
            d["items"].as_array().is_some_and(|items| {
                items.iter().any(|r| {
                    r["state"] == "failed"
                        && r["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(&targets_refusal))
                })
            })
        },
    )
    .await;

    // So is the channel, for the issue and for a test message.
    let notify_refusal = refused_with("CAP_EGRESS_ALLOW_NOTIFY");
    api.wait_for(
        &format!("/projects/{p}/notifications"),
        Duration::from_secs(30),
        "the notification refused",
        |page| {
            page["items"].as_array().is_some_and(|items| {
                items.iter().any(|n| {
                    n["state"] == "dead"
                        && n["last_error"]
                            .as_str()
                            .is_some_and(|e| e.contains(&notify_refusal))
                })
            })
        },
    )
    .await;
    let (status, tested) = api
        .post(
            &format!("{channels}/{}/test", channel["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["delivered"], false, "{tested}");
    assert!(
        tested["error"]
            .as_str()
            .is_some_and(|e| e.contains(&notify_refusal)),
        "{tested}"
    );

    // And the drift endpoint.
    let drift_refusal = refused_with("CAP_EGRESS_ALLOW_DRIFT");
    api.wait_for(
        &path,
        Duration::from_secs(30),
        "the drift scan refused",
        |c| {
            drift_of(c, "127.0.0.1").is_some_and(|d| {
                d["state"] == "unreachable"
                    && d["error"]
                        .as_str()
                        .is_some_and(|e| e.contains(&drift_refusal))
            })
        },
    )
    .await;

    assert!(
        seen.lock().unwrap().attempts.is_empty(),
        "the receiver in the ACME range was reached"
    );
    assert_eq!(
        endpoint.accepted.load(Ordering::SeqCst),
        0,
        "the endpoint in the ACME range was reached"
    );
    receiver.stop(true).await;
}

#[tokio::test]
async fn an_attempt_past_its_deadline_is_cut_off_and_retried() {
    let db = TestDb::migrated("attempt_deadline").await;
    let _worker = Proc::start(
        "worker",
        &db,
        "deadline-worker",
        &[
            ("CAP_JOB_ATTEMPT_TIMEOUT_SECS", "1"),
            ("CAP_CLAIM_POLL_MS", "100"),
        ],
    );
    let mut job = NewJob::new("probe", "sleeps-too-long", doc! { "sleep_ms": 30_000i64 });
    job.max_attempts = 2;
    let queue = JobQueue::new(db.store().await);
    let id = queue.enqueue(&job).await.unwrap().id;
    let started = Instant::now();
    let jobs = db.store().await.collection("jobs");
    let find = || async { jobs.find_one(doc! { "_id": id }).await.unwrap().unwrap() };

    // The first attempt is cut off after 1 s and the job queued again.
    let retried = support::wait_until(Duration::from_secs(20), || async {
        let j = find().await;
        j.get_str("state").ok() == Some("queued") && j.get_i32("attempt").ok() == Some(1)
    })
    .await;
    let j = find().await;
    assert!(retried, "the first attempt was not cut off: {j}");
    assert_eq!(
        j.get_str("last_error").unwrap(),
        "attempt exceeded its deadline of 1s",
        "{j}"
    );
    // The second, its last, is cut off the same way: the job is dead well
    // before a single attempt could have finished its 30 s.
    let dead = support::wait_until(Duration::from_secs(25), || async {
        find().await.get_str("state").ok() == Some("dead")
    })
    .await;
    let j = find().await;
    assert!(dead, "{j}");
    assert_eq!(j.get_i32("attempt").unwrap(), 2, "{j}");
    assert_eq!(
        j.get_str("last_error").unwrap(),
        "attempt exceeded its deadline of 1s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let completed = db
        .store()
        .await
        .collection(certautopilot::work::probe::PROBE_RESULTS_COLLECTION)
        .count_documents(doc! { "_id": id })
        .await
        .unwrap();
    assert_eq!(completed, 0, "a cut-off attempt recorded nothing");
}
