//! Secrets stored per second and audit records appended per second, each
//! beside plain inserts of documents of the same size on the same server in
//! the same run; then `audit verify` records per second and its peak memory
//! at growing chain lengths (flat memory = bounded).
//!
//! `cargo bench --bench secrets_audit` (CAP_TEST_MONGO_URI for a real
//! replica set; otherwise a throw-away secantusd-rs). Knobs:
//! CAP_BENCH_OPS (writes per configuration, default 2000) and
//! CAP_BENCH_VERIFY_SIZES (chain lengths, default "10000,100000"; add
//! 1000000 for the million-record run).

#[path = "../tests/it/support/mod.rs"]
mod common;
#[path = "shared/peak_rss.rs"]
mod peak_rss;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use certautopilot::audit::{self, Audit, Event};
use certautopilot::crypto::secrets::{SecretRef, Secrets};
use common::TestDb;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, DateTime, Document};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `op(i)` for i in 0..ops across `writers` tasks; returns ops/s.
async fn rate<F, Fut>(writers: usize, ops: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (next, op) = (next.clone(), op.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= ops {
                        break;
                    }
                    op(i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

fn blob(len: usize) -> Binary {
    Binary {
        subtype: BinarySubtype::Generic,
        bytes: vec![0x42; len],
    }
}

fn doc_len(d: &Document) -> usize {
    mongodb::bson::to_vec(d).unwrap().len()
}

/// A P-256 private key in PKCS#8 PEM is about this long.
const SECRET_LEN: usize = 241;

async fn secrets_row(writers: usize, ops: usize) {
    let db = TestDb::migrated(&format!("bench_secrets_{writers}")).await;
    let store = db.store().await;
    let secrets = Secrets::new(store.clone(), db.kek());
    secrets
        .put(&SecretRef::system("probe"), &[0u8; SECRET_LEN])
        .await
        .unwrap();
    let stored = store
        .collection("keys")
        .find_one(doc! { "_id": "probe" })
        .await
        .unwrap()
        .unwrap();
    let size = doc_len(&stored);

    let plain = store.collection("plain");
    let filler = size.saturating_sub(doc_len(&doc! { "_id": "plain-000000", "b": blob(0) }));
    let baseline = rate(writers, ops, move |i| {
        let plain = plain.clone();
        async move {
            plain
                .insert_one(doc! { "_id": format!("plain-{i:06}"), "b": blob(filler) })
                .await
                .unwrap();
        }
    })
    .await;
    let ours = rate(writers, ops, move |i| {
        let secrets = secrets.clone();
        async move {
            secrets
                .put(&SecretRef::system(&format!("s-{i:06}")), &[7u8; SECRET_LEN])
                .await
                .unwrap();
        }
    })
    .await;
    println!(
        "{:<28} {writers:>7} {size:>6} B {baseline:>12.0} {ours:>12.0} {:>6.2}x",
        "secrets stored",
        ours / baseline
    );
    store.db().drop().await.unwrap();
}

async fn audit_row(writers: usize, ops: usize) {
    let db = TestDb::migrated(&format!("bench_audit_{writers}")).await;
    let store = db.store().await;
    let event = |i: usize| {
        Event::new(
            "bench-worker-0001",
            "job.completed",
            format!("jobs/{i:024}"),
        )
        .with(doc! { "kind": "probe", "attempt": 1i64, "token": 1i64 })
    };
    let sample = audit::record(1, DateTime::now(), &event(0), audit::GENESIS_HASH);
    let size = doc_len(&sample);

    let plain = store.collection("plain");
    let baseline = rate(writers, ops, move |i| {
        let plain = plain.clone();
        let mut d = audit::record(
            i as i64 + 1,
            DateTime::now(),
            &event(i),
            audit::GENESIS_HASH,
        );
        d.insert("_id", i as i64 + 1);
        async move {
            plain.insert_one(d).await.unwrap();
        }
    })
    .await;
    let appender = Audit::new(store.clone());
    let ours = rate(writers, ops, move |i| {
        let appender = appender.clone();
        async move {
            appender.append(&event(i)).await.unwrap();
        }
    })
    .await;
    println!(
        "{:<28} {writers:>7} {size:>6} B {baseline:>12.0} {ours:>12.0} {:>6.2}x",
        "audit records appended",
        ours / baseline
    );
    store.db().drop().await.unwrap();
}

/// Loads a valid chain of `n` records straight into the database.
async fn load_chain(db: &TestDb, n: i64) {
    let store = db.store().await;
    let now = store.server_now().await.unwrap();
    let mut prev = audit::GENESIS_HASH.to_string();
    let mut batch = Vec::with_capacity(1000);
    for seq in 1..=n {
        let event = Event::new(
            "bench-worker-0001",
            "job.completed",
            format!("jobs/{seq:024}"),
        )
        .with(doc! { "kind": "probe", "attempt": 1i64 });
        let r = audit::record(seq, now, &event, &prev);
        prev = r.get_str("hash").unwrap().to_string();
        batch.push(r);
        if batch.len() == 1000 || seq == n {
            store
                .collection(audit::AUDIT_COLLECTION)
                .insert_many(std::mem::take(&mut batch))
                .await
                .unwrap();
        }
    }
    store
        .collection(audit::AUDIT_HEAD_COLLECTION)
        .insert_one(doc! { "_id": "head", "seq": n, "hash": prev })
        .await
        .unwrap();
}

/// Runs `certautopilot audit verify` as its own process; returns its
/// wall time and its peak resident memory (VmHWM, sampled until it exits).
fn verify_process(db: &TestDb) -> (Duration, u64) {
    let started = Instant::now();
    let child = std::process::Command::new(common::bin())
        .args(["audit", "verify", "--json"])
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (peak_kib, out) = peak_rss::wait_sampling_peak(child);
    let elapsed = started.elapsed();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["problem"].is_null(), "{report}");
    (elapsed, peak_kib)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let ops = env_usize("CAP_BENCH_OPS", 2000);
    println!(
        "writes per second, {ops} per configuration; server {}",
        common::server_base()
    );
    println!(
        "{:<28} {:>7} {:>8} {:>12} {:>12} {:>7}",
        "what", "writers", "size", "plain/s", "ours/s", "ratio"
    );
    for writers in [1, 8] {
        secrets_row(writers, ops).await;
    }
    for writers in [1, 8] {
        audit_row(writers, ops).await;
    }

    let sizes: Vec<i64> = std::env::var("CAP_BENCH_VERIFY_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!("\naudit verify (its own process, whole chain)");
    println!(
        "{:>10} {:>10} {:>12} {:>12}",
        "records", "seconds", "records/s", "peak RSS"
    );
    for n in sizes {
        let db = TestDb::migrated(&format!("bench_verify_{n}")).await;
        load_chain(&db, n).await;
        let (elapsed, peak_kib) = verify_process(&db);
        println!(
            "{n:>10} {:>10.2} {:>12.0} {:>9} MiB",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            peak_kib / 1024
        );
        db.store().await.db().drop().await.unwrap();
    }
    // The driver may panic if its runtime is torn down under a background
    // task; the figures are printed, so leave now.
    std::process::exit(0);
}
