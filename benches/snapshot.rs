//! `snapshot save` and `snapshot restore` throughput and peak memory at
//! growing installation sizes, beside a plain dump of the same collections
//! with the driver (read every document, write its BSON to a file; no
//! transaction, no digests, no compression) on the same server in the same
//! run. Each runs as a process of its own, its peak RSS (VmHWM) sampled.
//!
//! `cargo bench --bench snapshot` (CAP_TEST_MONGO_URI for a real replica
//! set; otherwise a throw-away secantusd-rs). Knob: CAP_BENCH_SNAPSHOT_SIZES
//! (certificates, default "10000,100000"; add 1000000 for the million run:
//! about 3 GB of documents, give it the time and the disk).

#[path = "../tests/it/support/mod.rs"]
mod common;
#[path = "shared/peak_rss.rs"]
mod peak_rss;

use std::io::Write;
use std::time::{Duration, Instant};

use common::TestDb;
use futures::TryStreamExt;
use mongodb::bson::{doc, spec::BinarySubtype, Binary, Document, RawDocumentBuf};

/// Set in the child that does the plain dump: `URI FILE`.
const PLAIN_DUMP: &str = "CAP_BENCH_PLAIN_DUMP";

fn random_text(len: usize) -> String {
    use rand::Rng;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    (0..len)
        .map(|i| {
            if i % 65 == 64 {
                '\n'
            } else {
                B64[rng.random_range(0..64)] as char
            }
        })
        .collect()
}

/// `n` certificates shaped like ours (a 2-certificate PEM chain of random
/// base64, names, dates) and one sealed key each.
async fn populate(db: &TestDb, n: usize) {
    let store = db.store().await;
    let certs = store.collection("certificates");
    let keys = store.collection("keys");
    let batch = 1000;
    for start in (0..n).step_by(batch) {
        let end = (start + batch).min(n);
        let c: Vec<Document> = (start..end)
            .map(|i| {
                doc! {
                    "_id": format!("crt_{i:08}"), "project_id": format!("prj_{}", i % 100),
                    "name": format!("cert-{i}"), "dns_names": [format!("host{i}.example.test")],
                    "status": "issued", "serial": format!("{i:032x}"),
                    "chain_pem": format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", random_text(1800)),
                    "not_after": mongodb::bson::DateTime::now(),
                }
            })
            .collect();
        let k: Vec<Document> = (start..end)
            .map(|i| {
                doc! {
                    "_id": format!("key_{i:08}"), "kek_version": 1i64, "bound": true,
                    "wrapped_key": Binary { subtype: BinarySubtype::Generic, bytes: rand::random::<[u8; 32]>().to_vec() },
                    "nonce": Binary { subtype: BinarySubtype::Generic, bytes: rand::random::<[u8; 12]>().to_vec() },
                    "ciphertext": Binary { subtype: BinarySubtype::Generic, bytes: (0..260).map(|_| rand::random::<u8>()).collect() },
                }
            })
            .collect();
        certs.insert_many(c).await.unwrap();
        keys.insert_many(k).await.unwrap();
    }
}

/// Runs a command to its end; its wall time and peak resident memory.
fn measured(mut command: std::process::Command) -> (Duration, u64) {
    let started = Instant::now();
    let child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (peak_kib, out) = peak_rss::wait_sampling_peak(child);
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (elapsed, peak_kib)
}

fn certautopilot(db: &TestDb, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(common::bin());
    c.args(args)
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file);
    c
}

/// The baseline, in a child process: every collection, every document's
/// BSON appended to FILE.
async fn plain_dump(uri: &str, file: &str) {
    let store = certautopilot::store::Store::connect(uri, Duration::from_secs(30))
        .await
        .unwrap();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(file).unwrap());
    for name in store.db().list_collection_names().await.unwrap() {
        let mut cursor = store
            .db()
            .collection::<RawDocumentBuf>(&name)
            .find(doc! {})
            .batch_size(1000)
            .await
            .unwrap();
        while let Some(d) = cursor.try_next().await.unwrap() {
            out.write_all(d.as_bytes()).unwrap();
        }
    }
    out.into_inner().unwrap().sync_all().unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if let Ok(args) = std::env::var(PLAIN_DUMP) {
        let (uri, file) = args.split_once(' ').unwrap();
        plain_dump(uri, file).await;
        std::process::exit(0);
    }
    let sizes: Vec<usize> = std::env::var("CAP_BENCH_SNAPSHOT_SIZES")
        .unwrap_or_else(|_| "10000,100000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "snapshot save / restore against a plain driver dump; server {}",
        common::server_base()
    );
    println!(
        "{:>9} {:>10} {:<16} {:>9} {:>11} {:>10} {:>9} {:>7}",
        "certs", "documents", "what", "seconds", "docs/s", "peak RSS", "MiB out", "ratio"
    );
    let dir = tempfile::tempdir().unwrap();
    for n in sizes {
        let db = TestDb::fresh(&format!("bench_snap_{n}"));
        populate(&db, n).await;
        let documents = 2 * n;
        let plain = dir.path().join(format!("plain-{n}.bson"));
        let mut dump = std::process::Command::new(std::env::current_exe().unwrap());
        dump.env(PLAIN_DUMP, format!("{} {}", db.uri, plain.display()));
        let (plain_time, plain_peak) = measured(dump);
        let snap = dir.path().join(format!("bench-{n}.snap"));
        let (save_time, save_peak) = measured(certautopilot(
            &db,
            &["snapshot", "save", "--out", snap.to_str().unwrap()],
        ));
        let target = db.sibling(&format!("bench_restore_{n}"));
        // The restore needs the installation's KEK.
        std::fs::copy(&db.kek_file, &target.kek_file).unwrap();
        let (restore_time, restore_peak) = measured(certautopilot(
            &target,
            &["snapshot", "restore", "--from", snap.to_str().unwrap()],
        ));
        let mib = |p: &std::path::Path| std::fs::metadata(p).unwrap().len() as f64 / 1048576.0;
        let row = |what: &str, t: Duration, peak: u64, out: f64, ratio: f64| {
            println!(
                "{n:>9} {documents:>10} {what:<16} {:>9.2} {:>11.0} {:>6} MiB {:>9.1} {:>7.2}",
                t.as_secs_f64(),
                documents as f64 / t.as_secs_f64(),
                peak / 1024,
                out,
                ratio
            );
        };
        row("plain dump", plain_time, plain_peak, mib(&plain), 1.0);
        row(
            "snapshot save",
            save_time,
            save_peak,
            mib(&snap),
            plain_time.as_secs_f64() / save_time.as_secs_f64(),
        );
        row(
            "snapshot restore",
            restore_time,
            restore_peak,
            0.0,
            plain_time.as_secs_f64() / restore_time.as_secs_f64(),
        );
        std::fs::remove_file(&plain).unwrap();
        std::fs::remove_file(&snap).unwrap();
        db.store().await.db().drop().await.unwrap();
        target.store().await.db().drop().await.unwrap();
    }
    println!(
        "ratio: the plain dump's time over this row's (1.00 = as fast as reading with the driver)"
    );
    std::process::exit(0);
}
