//! Certificates per second, end to end (API request to certificate stored),
//! against one local Pebble (`PEBBLE_VA_NOSLEEP=1`, its default 5 % bad
//! nonces): ours with 1, 4 and 8 worker processes, then the same number with
//! `certbot` and with `lego` (Debian packages) one after another, as their
//! users would script them, against the same Pebble in the same run.
//!
//! `cargo bench --bench issuance`. Knobs: CAP_BENCH_CERTS (default 100),
//! CAP_BENCH_PEER_CERTS (certificates for certbot and lego; default the same).

#[path = "../tests/it/support/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Ours: `workers` worker processes, one api on Pebble's HTTP-01 port.
async fn ours(pebble: &Pebble, http: std::net::SocketAddr, workers: usize, certs: usize) -> f64 {
    let db = TestDb::migrated(&format!("bench_issue_{workers}")).await;
    let api_proc = Proc::start(
        "api",
        &db,
        "bench-api",
        &[
            ("CAP_HTTP_ADDR", &http.to_string()),
            ("CAP_LOG_FORMAT", "json"),
        ],
    );
    api_proc.wait_alive().await;
    let _workers: Vec<Proc> = (0..workers)
        .map(|i| {
            Proc::start(
                "worker",
                &db,
                &format!("bench-worker-{i}"),
                &[("CAP_CLAIM_POLL_MS", "50")],
            )
        })
        .collect();
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
                json!({ "name": format!("c{n}"), "dns_names": [format!("c{n}.w{workers}.bench.example.test")], "issuer_id": i["id"] }),
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
    // Stop every process first: this server's drop waits out concurrent writers.
    drop(_workers);
    drop(api_proc);
    store.db().drop().await.unwrap();
    rate
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
    let mut ours_rates = Vec::new();
    for workers in [1, 4, 8] {
        let rate = ours(&pebble, http, workers, certs).await;
        println!("certautopilot, {workers} worker(s): {certs} certificates, {rate:.2}/s");
        ours_rates.push((workers, rate));
    }

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
            format!("certautopilot, {workers} worker(s)"),
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
