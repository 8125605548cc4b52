//! Certificates per second, end to end, against one local Pebble
//! (`PEBBLE_VA_NOSLEEP=1`, its default 5 % bad nonces), all in one run:
//!
//! - ours: two-name certificates requested through the API, issued by one
//!   worker process running 1, 4 or 8 orders at once
//!   (`CAP_WORKER_CONCURRENCY`), each stage written (fenced) before the
//!   next call to the CA;
//! - the protocol's own cost: a bare instant-acme loop with as many tasks,
//!   one account, HTTP-01 answered from memory, no persistence, no fencing —
//!   the baseline the ratios are taken against;
//! - `certbot` and `lego` (Debian packages), one certificate after another,
//!   as their users would script them.
//!
//! Then a worker's memory: resident idle, and its peak with 100 orders in
//! flight (`CAP_WORKER_CONCURRENCY=100`).
//!
//! `cargo bench --bench issuance`. Knobs: CAP_BENCH_CERTS (default 100),
//! CAP_BENCH_PEER_CERTS (certificates for certbot and lego; default the
//! same), CAP_BENCH_PEERS=0 (skip certbot and lego).

#[path = "../tests/it/support/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use certautopilot::domain::certs as certs_mod;
use common::api::{bootstrap_token, ApiClient};
use common::pebble::Pebble;
use common::{Proc, TestDb};
use mongodb::bson::doc;
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one run of ours measured.
struct Ours {
    rate: f64,
    /// The worker's resident memory before the first request, and its peak.
    idle_rss_kib: u64,
    peak_rss_kib: u64,
}

/// A process's `VmRSS` and `VmHWM` (peak), in KiB.
fn rss_kib(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// How ours runs.
#[derive(Clone, Copy)]
enum Layout {
    /// One api on Pebble's HTTP-01 port and one worker claiming every 50 ms.
    ApiAndWorker,
    /// One `all` process (api, worker and scheduler), every setting at its
    /// default: the single-machine setup.
    AllInOne,
}

/// Ours: `concurrency` orders at once; two names per certificate.
async fn ours(
    pebble: &Pebble,
    http: std::net::SocketAddr,
    layout: Layout,
    concurrency: usize,
    certs: usize,
) -> Ours {
    let db = TestDb::migrated(&format!("bench_issue_{concurrency}_{}", layout as u8)).await;
    let http_text = http.to_string();
    let concurrency_text = concurrency.to_string();
    let (api_proc, worker) = match layout {
        Layout::ApiAndWorker => {
            let api_proc = Proc::start("api", &db, "bench-api", &[("CAP_HTTP_ADDR", &http_text)]);
            api_proc.wait_alive().await;
            let worker = Proc::start(
                "worker",
                &db,
                "bench-worker",
                &[
                    ("CAP_CLAIM_POLL_MS", "50"),
                    ("CAP_WORKER_CONCURRENCY", &concurrency_text),
                ],
            );
            (Some(api_proc), worker)
        }
        Layout::AllInOne => {
            let all = Proc::start(
                "all",
                &db,
                "bench-all",
                &[
                    ("CAP_HTTP_ADDR", &http_text),
                    ("CAP_WORKER_CONCURRENCY", &concurrency_text),
                ],
            );
            (None, all)
        }
    };
    worker.wait_alive().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (idle_rss_kib, _) = rss_kib(worker.pid());
    let api = ApiClient::new(format!("http://{http}/v1"), bootstrap_token(&db));
    let (_, p) = api.post("/projects", json!({ "name": "bench" })).await;
    let p = p["id"].as_str().unwrap();
    api.grant(p, &["bench.example.test"]).await;
    let (_, i) = api
        .post(
            &format!("/projects/{p}/issuers"),
            json!({ "name": "pebble", "directory_url": pebble.directory, "contact": "ops@example.test", "ca_bundle_pem": pebble.listener_ca_pem }),
        )
        .await;
    let store = db.store().await;
    let started = Instant::now();
    for n in 0..certs {
        let (status, body) = api
            .post(
                &format!("/projects/{p}/certificates"),
                json!({ "name": format!("c{n}"), "issuer_id": i["id"], "dns_names": [
                    format!("c{n}.w{concurrency}.bench.example.test"),
                    format!("www.c{n}.w{concurrency}.bench.example.test"),
                ] }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    loop {
        let issued = store
            .collection("certificates")
            .count_documents(doc! { "status": "issued" })
            .await
            .unwrap();
        if issued as usize >= certs {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(1800),
            "stuck at {issued}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rate = certs as f64 / started.elapsed().as_secs_f64();
    let (_, peak_rss_kib) = rss_kib(worker.pid());
    // Stop every process first: this server's drop waits out concurrent writers.
    drop(worker);
    drop(api_proc);
    store.db().drop().await.unwrap();
    Ours {
        rate,
        idle_rss_kib,
        peak_rss_kib,
    }
}

/// The protocol's own cost: `tasks` tasks issuing `certs` two-name
/// certificates through instant-acme with one account, HTTP-01 answered
/// from memory on Pebble's HTTP-01 port; nothing stored, nothing fenced.
async fn bare_loop(pebble: &Pebble, http: std::net::SocketAddr, tasks: usize, certs: usize) -> f64 {
    use instant_acme::{
        Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
        RetryPolicy,
    };
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let answers: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let responder = tokio::spawn(respond_http01(http, answers.clone()));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pebble-listener-ca.pem");
    std::fs::write(&ca, &pebble.listener_ca_pem).unwrap();
    let (account, _) = Account::builder_with_root(&ca)
        .unwrap()
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            pebble.directory.clone(),
            None,
        )
        .await
        .unwrap();
    let account = Arc::new(account);
    let next = Arc::new(AtomicUsize::new(0));
    // Time in each stage, summed over orders.
    let stages: Arc<Mutex<[Duration; 5]>> = Arc::default();
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (account, next, answers) = (account.clone(), next.clone(), answers.clone());
            let stages = stages.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= certs {
                        break;
                    }
                    let names = vec![
                        format!("c{n}.bare{tasks}.bench.example.test"),
                        format!("www.c{n}.bare{tasks}.bench.example.test"),
                    ];
                    let ids: Vec<Identifier> =
                        names.iter().map(|d| Identifier::Dns(d.clone())).collect();
                    let mut at = Instant::now();
                    let mut lap = |stage: usize| {
                        let now = Instant::now();
                        stages.lock().unwrap()[stage] += now - at;
                        at = now;
                    };
                    let mut order = account.new_order(&NewOrder::new(&ids)).await.unwrap();
                    let mut authorizations = order.authorizations();
                    while let Some(authz) = authorizations.next().await {
                        let mut authz = authz.unwrap();
                        if authz.status == AuthorizationStatus::Valid {
                            continue;
                        }
                        let mut challenge = authz.challenge(ChallengeType::Http01).unwrap();
                        answers.lock().unwrap().insert(
                            challenge.token.clone(),
                            challenge.key_authorization().as_str().to_string(),
                        );
                        challenge.set_ready().await.unwrap();
                    }
                    lap(0);
                    let status = order.poll_ready(&RetryPolicy::default()).await.unwrap();
                    assert_eq!(status, OrderStatus::Ready);
                    lap(1);
                    let algorithm = certs_mod::KeyAlgorithm::EcdsaP256;
                    let key = certs_mod::generate_key(algorithm).unwrap();
                    let csr = certs_mod::csr_der(&key, algorithm, &names).unwrap();
                    lap(2);
                    order.finalize_csr(&csr).await.unwrap();
                    lap(3);
                    order
                        .poll_certificate(&RetryPolicy::default())
                        .await
                        .unwrap();
                    lap(4);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let rate = certs as f64 / started.elapsed().as_secs_f64();
    responder.abort();
    let stages = *stages.lock().unwrap();
    let names = [
        "order, authorizations, challenges ready",
        "poll until ready",
        "key and CSR",
        "finalize",
        "poll for the certificate",
    ];
    let per: Vec<String> = names
        .iter()
        .zip(stages)
        .map(|(n, d)| format!("{n} {:.0} ms", d.as_secs_f64() * 1000.0 / certs as f64))
        .collect();
    println!(
        "  bare loop, {tasks} task(s), per order: {}",
        per.join(", ")
    );
    rate
}

/// A minimal HTTP-01 responder: `GET /.well-known/acme-challenge/{token}`
/// answered from `answers`, one request per connection.
async fn respond_http01(
    addr: std::net::SocketAddr,
    answers: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let answers = answers.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut len = 0;
            while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") && len < buf.len() {
                match conn.read(&mut buf[len..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => len += n,
                }
            }
            let request = String::from_utf8_lossy(&buf[..len]);
            let token = request
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.strip_prefix("/.well-known/acme-challenge/"))
                .unwrap_or_default()
                .to_string();
            let found = answers.lock().unwrap().get(&token).cloned();
            let reply = match found {
                Some(body) => format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                ),
                None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .into(),
            };
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

/// A peer client run once per certificate, sequentially, retried up to
/// three times when it fails (as a script around it would); returns certs/s
/// and the number of failed runs.
fn peer(name: &str, certs: usize, command: impl Fn(usize) -> Command) -> (f64, usize) {
    let started = Instant::now();
    let mut failures = 0;
    for n in 0..certs {
        let mut tries = 0;
        loop {
            tries += 1;
            let out = command(n)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .output()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if out.status.success() {
                break;
            }
            failures += 1;
            let why = String::from_utf8_lossy(&out.stderr);
            eprintln!(
                "{name} #{n} failed (try {tries}): {}",
                why.lines().find(|l| l.contains("rror")).unwrap_or("?")
            );
            assert!(tries < 3, "{name} #{n} failed three times: {why}");
        }
    }
    (certs as f64 / started.elapsed().as_secs_f64(), failures)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let certs = env_usize("CAP_BENCH_CERTS", 100);
    let peer_certs = env_usize("CAP_BENCH_PEER_CERTS", certs);
    let http = common::free_addr();
    let pebble = Pebble::start(http.port(), 5);
    println!("certificates per second, end to end, one local Pebble (VA no-sleep, 5 % bad nonces)");
    let mut rows = Vec::new();
    let levels: Vec<usize> = std::env::var("CAP_BENCH_CONCURRENCY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 4, 8]);
    for concurrency in levels {
        let bare = bare_loop(&pebble, http, concurrency, certs).await;
        println!(
            "bare instant-acme loop, {concurrency} task(s): {certs} certificates, {bare:.2}/s"
        );
        let run = ours(&pebble, http, Layout::ApiAndWorker, concurrency, certs).await;
        println!(
            "certautopilot, {concurrency} order(s) at once: {certs} certificates, {:.2}/s ({:.2}x the bare loop)",
            run.rate,
            run.rate / bare
        );
        rows.push((concurrency, run.rate, bare));
    }
    let all = ours(&pebble, http, Layout::AllInOne, 8, certs).await;
    let bare8 = rows
        .iter()
        .find(|(c, ..)| *c == 8)
        .map_or(f64::NAN, |r| r.2);
    println!(
        "certautopilot all (one process, default settings), 8 at once: {certs} certificates, {:.2}/s ({:.2}x the bare loop)",
        all.rate,
        all.rate / bare8
    );
    let memory = ours(&pebble, http, Layout::ApiAndWorker, 100, certs).await;
    println!(
        "\nworker memory: {:.1} MiB resident idle (goal <= 64), {:.1} MiB peak with {certs} orders in flight (goal <= 256)",
        memory.idle_rss_kib as f64 / 1024.0,
        memory.peak_rss_kib as f64 / 1024.0
    );
    println!(
        "\n{:<34} {:>10} {:>10} {:>12}",
        "orders at once", "ours/s", "bare/s", "ours / bare"
    );
    for (concurrency, rate, bare) in &rows {
        println!(
            "{:<34} {rate:>10.2} {bare:>10.2} {:>11.2}x",
            concurrency,
            rate / bare
        );
    }
    if std::env::var("CAP_BENCH_PEERS").as_deref() == Ok("0") {
        drop(pebble);
        std::process::exit(0);
    }
    let ours_rates: Vec<(usize, f64)> = rows.iter().map(|(c, r, _)| (*c, *r)).collect();

    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("pebble-listener-ca.pem");
    std::fs::write(&ca, &pebble.listener_ca_pem).unwrap();
    let port = http.port().to_string();
    let certbot = peer("certbot", peer_certs, |n| {
        let mut c = Command::new("certbot");
        let d = dir.path().join("certbot");
        c.args([
            "certonly",
            "--standalone",
            "--non-interactive",
            "--agree-tos",
            "-m",
            "ops@example.test",
        ])
        .args([
            "--server",
            &pebble.directory,
            "--http-01-address",
            "127.0.0.1",
            "--http-01-port",
            &port,
        ])
        .args(["--config-dir", d.join("config").to_str().unwrap()])
        .args(["--work-dir", d.join("work").to_str().unwrap()])
        .args(["--logs-dir", d.join("logs").to_str().unwrap()])
        .args(["-d", &format!("c{n}.certbot.bench.example.test")])
        .env("REQUESTS_CA_BUNDLE", &ca);
        c
    });
    let (certbot, certbot_failures) = certbot;
    println!("certbot (sequential): {peer_certs} certificates, {certbot:.2}/s, {certbot_failures} failed run(s) retried");
    let lego = peer("lego", peer_certs, |n| {
        let mut c = Command::new("lego");
        c.args([
            "--server",
            &pebble.directory,
            "--email",
            "ops@example.test",
            "--accept-tos",
        ])
        .args(["--path", dir.path().join("lego").to_str().unwrap()])
        .args(["--http", "--http.port", &format!("127.0.0.1:{port}")])
        .args(["--domains", &format!("c{n}.lego.bench.example.test"), "run"])
        .env("LEGO_CA_CERTIFICATES", &ca);
        c
    });
    let (lego, lego_failures) = lego;
    println!("lego (sequential): {peer_certs} certificates, {lego:.2}/s, {lego_failures} failed run(s) retried");

    println!(
        "\n{:<28} {:>10} {:>12} {:>10}",
        "", "certs/s", "vs certbot", "vs lego"
    );
    for (workers, rate) in ours_rates {
        println!(
            "{:<28} {rate:>10.2} {:>11.1}x {:>9.1}x",
            format!("certautopilot, {workers} at once"),
            rate / certbot,
            rate / lego
        );
    }
    println!("{:<28} {certbot:>10.2}", "certbot");
    println!("{:<28} {lego:>10.2}", "lego");
    // Stop Pebble before the hard exit below (which runs no destructors).
    drop(pebble);
    std::process::exit(0);
}
