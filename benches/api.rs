//! The API's throughput under `wrk` beside two bare actix-web baselines in
//! the same run, on the same database server: one answering static JSON,
//! one making the indexed `find` our certificate listing makes (same driver,
//! same query), neither checking a token. Prints requests/s, p50 and p99
//! latency, the ratios, and the api's resident memory after the run.
//!
//! `cargo bench --bench api` (needs `wrk`: Debian's package; CAP_TEST_MONGO_URI
//! for a real replica set, otherwise a throw-away secantusd-rs). Knobs:
//! CAP_BENCH_CONNECTIONS (default 64), CAP_BENCH_SECONDS per run (default
//! 10), CAP_BENCH_TOKEN_CACHE_SECS (the api's CAP_API_TOKEN_CACHE_SECS,
//! default its own default: 5; 0 to measure without the cache).

#[path = "../tests/it/support/mod.rs"]
mod common;

use std::process::Command;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use common::api::{bootstrap_token, ApiClient};
use common::{free_addr, Proc, TestDb};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use serde_json::json;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

struct Run {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `wrk` against `url` (two threads: the machine has two cores).
fn wrk(url: &str, token: Option<&str>, connections: &str, seconds: &str) -> Run {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        "-c",
        connections,
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd
        .arg(url)
        .output()
        .expect("wrk (Debian package wrk: apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "wrk failed: {text}");
    assert!(
        !text.contains("Non-2xx"),
        "{url} answered errors under load:\n{text}"
    );
    let field = |prefix: &str| -> &str {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output:\n{text}"))
            .trim()
    };
    Run {
        requests_per_sec: field("Requests/sec:").parse().unwrap(),
        p50_ms: millis(field("50%")),
        p99_ms: millis(field("99%")),
    }
}

/// wrk's `1.23ms`, `456.00us`, `1.02s` in milliseconds.
fn millis(s: &str) -> f64 {
    let (number, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

/// The two baselines on one actix-web server of their own thread and
/// System, with as many workers as the api runs (one per core).
fn start_baselines(uri: String) -> std::net::SocketAddr {
    let addr = free_addr();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
            let db = client.default_database().expect("a database in the URI");
            let certificates = db.collection::<Document>("certificates");
            HttpServer::new(move || {
                let certificates = certificates.clone();
                App::new()
                    .route(
                        "/static",
                        web::get().to(|| async {
                            HttpResponse::Ok().json(json!({ "items": [], "next": null }))
                        }),
                    )
                    .route(
                        "/find/{project}",
                        web::get().to(move |project: web::Path<String>| {
                            let certificates = certificates.clone();
                            async move {
                                let found: Vec<Document> = certificates
                                    .find(doc! { "project_id": project.as_str() })
                                    .sort(doc! { "_id": 1 })
                                    .limit(51)
                                    .await
                                    .unwrap()
                                    .try_collect()
                                    .await
                                    .unwrap();
                                HttpResponse::Ok()
                                    .json(json!({ "items": found.len(), "next": null }))
                            }
                        }),
                    )
            })
            .bind(addr)
            .unwrap()
            .run()
            .await
            .unwrap()
        })
    });
    addr
}

fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

#[tokio::main]
async fn main() {
    let connections = env_or("CAP_BENCH_CONNECTIONS", "64");
    let seconds = env_or("CAP_BENCH_SECONDS", "10");
    let db = TestDb::migrated("bench_api").await;
    let mut env = vec![];
    let cache = std::env::var("CAP_BENCH_TOKEN_CACHE_SECS").ok();
    if let Some(cache) = &cache {
        env.push(("CAP_API_TOKEN_CACHE_SECS", cache.as_str()));
    }
    let api_proc = Proc::start("api", &db, "bench-api", &env);
    api_proc.wait_alive().await;
    let token = bootstrap_token(&db);
    let api = ApiClient::new(format!("http://{}/v1", api_proc.http), token.clone());
    let (_, p) = api.post("/projects", json!({ "name": "bench" })).await;
    let p = p["id"].as_str().unwrap().to_string();
    let baselines = start_baselines(db.uri.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    println!(
        "wrk, {connections} connections, {seconds} s per run; server {}; token cache {}",
        db.uri,
        cache
            .as_deref()
            .map_or("default (5 s)".to_string(), |c| format!("{c} s"))
    );
    let rss_before = rss_mib(api_proc.pid());
    let runs = [
        (
            "bare actix-web: static JSON",
            wrk(
                &format!("http://{baselines}/static"),
                None,
                &connections,
                &seconds,
            ),
        ),
        (
            "bare actix-web: one indexed find",
            wrk(
                &format!("http://{baselines}/find/{p}"),
                None,
                &connections,
                &seconds,
            ),
        ),
        (
            "ours: GET /v1/projects/{p}/certificates",
            wrk(
                &format!("http://{}/v1/projects/{p}/certificates", api_proc.http),
                Some(&token),
                &connections,
                &seconds,
            ),
        ),
        (
            "ours: GET /healthz",
            wrk(
                &format!("http://{}/healthz", api_proc.http),
                None,
                &connections,
                &seconds,
            ),
        ),
    ];
    let (static_rate, find_rate) = (runs[0].1.requests_per_sec, runs[1].1.requests_per_sec);
    println!(
        "{:<42} {:>10} {:>9} {:>9} {:>10} {:>9}",
        "what", "req/s", "p50 ms", "p99 ms", "vs static", "vs find"
    );
    for (what, run) in &runs {
        println!(
            "{what:<42} {:>10.0} {:>9.2} {:>9.2} {:>9.2}x {:>8.2}x",
            run.requests_per_sec,
            run.p50_ms,
            run.p99_ms,
            run.requests_per_sec / static_rate,
            run.requests_per_sec / find_rate
        );
    }
    println!(
        "api resident memory: {rss_before:.0} MiB before the runs, {:.0} MiB after",
        rss_mib(api_proc.pid())
    );
}
