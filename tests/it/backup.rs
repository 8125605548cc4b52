//! Backup and disaster recovery: `snapshot save` under writes, `snapshot
//! restore` into a fresh server, damaged snapshots refused before anything
//! is written, `dr drill` end to end against Pebble (and with the wrong KEK,
//! and sending nothing to the restored installation's channels), and
//! `audit verify --witness` against a real rsyslog's file.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::doc;
use serde_json::{json, Value};

use crate::siem::Rsyslog;
use crate::support::api::{bootstrap_token, ApiClient};
use crate::support::cluster::{Cluster, Role};
use crate::support::pebble::{Pebble, PebbleOptions};
use crate::support::webhook_receiver::{self, Seen};
use crate::support::{self, free_addr, wait_until, OutputWithin, Proc, TestDb};
use certautopilot::audit::{Audit, Event, AUDIT_COLLECTION};

const PASSPHRASE: &str = "correct horse battery staple 42";

fn ok(out: &std::process::Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

fn refused(out: &std::process::Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{what} was not refused: {text}");
    text
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The KEK of `db`, exported to a bundle in `dir`.
fn export_kek(db: &TestDb, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let passphrase = dir.join("passphrase");
    std::fs::write(&passphrase, PASSPHRASE).unwrap();
    let bundle = dir.join("kek.bundle");
    ok(
        &db.cli(&[
            "kek",
            "export",
            "--out",
            path(&bundle),
            "--passphrase-file",
            path(&passphrase),
        ]),
        "kek export",
    );
    (bundle, passphrase)
}

#[tokio::test]
async fn a_snapshot_under_writes_restores_into_a_fresh_server_with_every_key_usable() {
    let cluster = Cluster::builder("backup")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .scheduler()
        .env(Role::Scheduler, "CAP_HOUSEKEEPING_SECS", "1")
        .env(Role::Scheduler, "CAP_KEK_ROTATION_CHECK_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("backed-up", cluster.pebble()).await;
    api.grant(&p, &["example.test"]).await;
    let cert = |name: &str| json!({ "name": name, "dns_names": [format!("{name}.example.test")], "issuer_id": issuer });
    let (renewed, first) = api
        .issue(&p, cert("renewed"), Duration::from_secs(60))
        .await;
    let (revoked, _) = api
        .issue(&p, cert("revoked"), Duration::from_secs(60))
        .await;
    let (status, _) = api.post(&format!("{renewed}/issue"), json!({})).await;
    assert_eq!(status, 202);
    let old_serial = first["serial"].as_str().unwrap().to_string();
    api.wait_for(&renewed, Duration::from_secs(60), "renewed", |c| {
        c["status"] == "issued" && c["serial"].as_str().is_some_and(|s| s != old_serial)
    })
    .await;
    let (status, _) = api
        .post(
            &format!("{revoked}/revoke"),
            json!({ "reason": "superseded" }),
        )
        .await;
    assert_eq!(status, 202);
    api.wait_for(&revoked, Duration::from_secs(60), "revoked", |c| {
        c["status"] == "revoked"
    })
    .await;
    ok(&cluster.db.cli(&["kek", "rotate"]), "kek rotate");
    let rewrapped = wait_until(Duration::from_secs(60), || async {
        let out = cluster.db.cli(&["kek", "status", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout).is_ok_and(|s| s["remaining"] == 0)
    })
    .await;
    assert!(rewrapped, "the workers re-wrapped every data key");
    api.issue(&p, cert("after-rotation"), Duration::from_secs(60))
        .await;
    // Checkpoints seal the chain (housekeeping every second).
    let store = cluster.db.store().await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            support::documents(&store, "audit_checkpoints", doc! {})
                .await
                .len()
                >= 2
        })
        .await,
        "the chain is sealed"
    );

    // A client keeps writing through the API while the snapshot is taken.
    let dir = tempfile::tempdir().unwrap();
    let (bundle, passphrase) = export_kek(&cluster.db, dir.path());
    let snap = dir.path().join("installation.snap");
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (api, stop, acknowledged) = (api.clone(), stop.clone(), acknowledged.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let (status, body) = api
                    .post("/projects", json!({ "name": format!("w{i}") }))
                    .await;
                if status == 201 {
                    acknowledged
                        .lock()
                        .unwrap()
                        .push(body["id"].as_str().unwrap().to_string());
                }
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            acknowledged.lock().unwrap().len() >= 20
        })
        .await
    );
    let before_snapshot = acknowledged.lock().unwrap().clone();
    let saved = {
        let (db_uri, kek) = (cluster.db.uri.clone(), cluster.db.kek_file.clone());
        let snap = snap.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(support::bin())
                .args([
                    "snapshot",
                    "save",
                    "--out",
                    snap.to_str().unwrap(),
                    "--json",
                ])
                .env_clear()
                .env("CAP_MONGO_URI", db_uri)
                .env("CAP_KEK_FILE", kek)
                .output_within_limit()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let during = acknowledged.lock().unwrap().len() - before_snapshot.len();
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let manifest: Value = serde_json::from_slice(&saved.stdout).unwrap_or(Value::Null);
    ok(&saved, "snapshot save");
    assert!(during > 0, "writes went on while the snapshot was read");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&snap).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let versions: Vec<i64> = manifest["kek_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert!(
        versions.contains(&2),
        "a data key on the rotated version: {manifest}"
    );
    // Nothing in the file is a private key in the clear.
    let plain = zstd::decode_all(std::fs::File::open(&snap).unwrap()).unwrap();
    assert!(!String::from_utf8_lossy(&plain).contains("PRIVATE KEY"));

    // The disaster: the installation is gone; what follows runs on another
    // server. (The old database is not dropped: secantusd-rs wedges its
    // catalog when a database is dropped under running transactions, and
    // this server is shared by every test. Pebble stays up: the restored
    // ACME accounts live there.)
    let pebble_root = cluster.pebble().issuing_root_pem().await;
    for p in cluster
        .apis
        .iter()
        .chain(&cluster.workers)
        .chain(&cluster.schedulers)
    {
        p.signal(nix::sys::signal::Signal::SIGKILL);
    }

    // A fresh server, the KEK from its bundle, the snapshot.
    let restored = TestDb::empty_on_own_server("restored");
    std::fs::remove_file(&restored.kek_file).unwrap();
    ok(
        &restored.cli(&[
            "kek",
            "import",
            "--bundle",
            path(&bundle),
            "--file",
            path(&restored.kek_file),
            "--passphrase-file",
            path(&passphrase),
        ]),
        "kek import",
    );
    ok(
        &restored.cli(&["snapshot", "restore", "--from", path(&snap)]),
        "snapshot restore",
    );
    ok(&restored.cli(&["migrate"]), "migrate");
    let verified = ok(&restored.cli(&["audit", "verify"]), "audit verify");
    assert!(verified.contains("checkpoints verified"), "{verified}");
    let rstore = restored.store().await;
    let indexes = rstore.collection("jobs").list_index_names().await.unwrap();
    assert!(
        indexes.iter().any(|n| n == "key_unique"),
        "migrate built the indexes: {indexes:?}"
    );

    // One point in time: every project acknowledged before the snapshot
    // began is there, and the projects agree with their audit records.
    let projects: BTreeSet<String> = support::documents(&rstore, "projects", doc! {})
        .await
        .iter()
        .map(|d| d.get_str("_id").unwrap().to_string())
        .collect();
    for id in &before_snapshot {
        assert!(
            projects.contains(id),
            "project {id}, acknowledged before the snapshot, was restored"
        );
    }
    let audited: BTreeSet<String> = support::documents(
        &rstore,
        AUDIT_COLLECTION,
        doc! { "action": "project.created" },
    )
    .await
    .iter()
    .map(|d| {
        d.get_str("target")
            .unwrap()
            .trim_start_matches("projects/")
            .to_string()
    })
    .collect();
    // The API appends a project's audit record just after storing it, so
    // the one request in flight when the snapshot was read may have its
    // project without its record yet; never the other way round.
    assert!(
        audited.is_subset(&projects),
        "every audited project was restored"
    );
    let unaudited: Vec<_> = projects.difference(&audited).collect();
    assert!(
        unaudited.len() <= 1 && unaudited.iter().all(|id| !before_snapshot.contains(*id)),
        "at most the one project in flight lacks its audit record: {unaudited:?}"
    );

    // The restored installation runs: health passes with its scheduler up,
    // and every certificate's key decrypts and matches its chain.
    let scheduler = Proc::start("scheduler", &restored, "restored-scheduler", &[]);
    let api_proc = Proc::start("api", &restored, "restored-api", &[]);
    api_proc.wait_alive().await;
    let healthy = wait_until(Duration::from_secs(30), || async {
        restored.cli(&["health"]).status.success()
    })
    .await;
    assert!(
        healthy,
        "health: {}{}",
        String::from_utf8_lossy(&restored.cli(&["health"]).stdout),
        scheduler.log_text()
    );
    let rapi = ApiClient::new(api_proc.url("/v1"), bootstrap_token(&restored));
    let (_, list) = rapi
        .get(&format!("/projects/{p}/certificates?limit=100"))
        .await;
    let certificates = list["items"].as_array().unwrap();
    assert_eq!(certificates.len(), 3, "{list}");
    for c in certificates {
        let id = c["id"].as_str().unwrap();
        let (_, full) = rapi.get(&format!("/projects/{p}/certificates/{id}")).await;
        let chain = full["chain_pem"].as_str().unwrap();
        support::api::verify_chain(&pebble_root, chain).unwrap();
        let key = rapi
            .get_text(&format!("/projects/{p}/certificates/{id}/private-key"))
            .await;
        let leaf = certautopilot::domain::certs::inspect_chain(chain).unwrap();
        assert_eq!(
            certautopilot::domain::certs::public_key_der(&key).unwrap(),
            leaf.public_key_der,
            "certificate {id}'s restored key matches its chain"
        );
    }
}

#[tokio::test]
async fn a_damaged_truncated_or_newer_snapshot_is_refused_before_anything_is_written() {
    let db = TestDb::migrated("snap_damaged").await;
    Audit::new(db.store().await)
        .append(&Event::new("test", "thing.changed", "things/1"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("good.snap");
    ok(
        &db.cli(&["snapshot", "save", "--out", path(&snap)]),
        "snapshot save",
    );
    let again = refused(
        &db.cli(&["snapshot", "save", "--out", path(&snap)]),
        "overwriting a snapshot",
    );
    assert!(again.contains("never overwritten"), "{again}");
    let bytes = std::fs::read(&snap).unwrap();

    let plain = zstd::decode_all(&bytes[..]).unwrap();
    let at = plain.windows(11).position(|w| w == b"thing.chang").unwrap();
    let mut edited = plain.clone();
    edited[at] = b'T';
    let newer = {
        let mut p = plain.clone();
        let at = p.windows(14).position(|w| w == b"format_version").unwrap() + 15;
        p[at] = 9; // int64 1 -> 9
        p
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "one byte changed",
            zstd::encode_all(&edited[..], 3).unwrap(),
            "does not match its manifest",
        ),
        (
            "one compressed byte changed",
            {
                let mut b = bytes.clone();
                let i = b.len() / 2;
                b[i] ^= 0x20;
                b
            },
            "snapshot",
        ),
        ("truncated", bytes[..bytes.len() - 20].to_vec(), "snapshot"),
        (
            "a newer format",
            zstd::encode_all(&newer[..], 3).unwrap(),
            "format version 9",
        ),
    ];
    for (what, content, says) in cases {
        let file = dir.path().join("bad.snap");
        std::fs::write(&file, &content).unwrap();
        let target = db.sibling("snap_target");
        let err = refused(
            &target.cli(&["snapshot", "restore", "--from", path(&file)]),
            what,
        );
        assert!(err.contains(says), "{what}: {err}");
        let store = target.store().await;
        assert!(
            certautopilot::store::snapshot::non_empty(&store)
                .await
                .unwrap()
                .is_empty(),
            "{what}: nothing was written"
        );
        std::fs::remove_file(&file).unwrap();
    }
    // Scheduled snapshots: named by time, the oldest beyond --keep deleted.
    let scheduled = dir.path().join("scheduled");
    std::fs::create_dir(&scheduled).unwrap();
    for _ in 0..3 {
        ok(
            &db.cli(&[
                "snapshot",
                "save",
                "--out-dir",
                path(&scheduled),
                "--keep",
                "2",
            ]),
            "scheduled snapshot",
        );
        std::thread::sleep(Duration::from_millis(1100));
    }
    let mut kept: Vec<String> = std::fs::read_dir(&scheduled)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter()
            .all(|n| n.starts_with("certautopilot-") && n.ends_with("Z.snap")),
        "{kept:?}"
    );
    let zero = refused(
        &db.cli(&[
            "snapshot",
            "save",
            "--out-dir",
            path(&scheduled),
            "--keep",
            "0",
        ]),
        "--keep 0",
    );
    assert!(zero.contains("keep at least 1"), "{zero}");

    // A database that holds anything is refused, and left as it was.
    let err = refused(
        &db.cli(&["snapshot", "restore", "--from", path(&snap)]),
        "restoring into a non-empty database",
    );
    assert!(err.contains("is not empty"), "{err}");
}

/// Besides the drill's steps, the attack of a drill that notifies the real
/// world: the installation has a channel taking every issue, on a receiver
/// of the test's on loopback — the drill's CA on loopback too, which the
/// drill's worker must reach. The restored copy's fixture issue must not
/// reach that channel: the receiver sees nothing, and the notification is
/// kept dead with the reason (the drill's egress for channels is closed).
#[actix_web::test]
async fn the_drill_issues_from_pebble_and_fails_at_the_kek_step_with_the_wrong_kek() {
    const HOOK_SECRET: &str = "installation-hook-secret";
    let db = TestDb::migrated("drill_src").await;
    let token = bootstrap_token(&db); // a data key on KEK version 1
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let (hook_port, receiver) =
        webhook_receiver::start(HOOK_SECRET, seen.clone(), |_, _| false).await;
    {
        let api = Proc::start("api", &db, "drill_src-api", &[]);
        api.wait_alive().await;
        let client = ApiClient::new(api.url("/v1"), token);
        let (status, channel) = client
            .post(
                "/channels",
                json!({ "name": "ops", "kind": "webhook",
                        "webhook": { "url": format!("http://127.0.0.1:{hook_port}/ops"),
                                     "secret": HOOK_SECRET },
                        "routes": [{ "kinds": ["certificate.issued"] }] }),
            )
            .await;
        assert_eq!(status, 201, "{channel}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (bundle, passphrase) = export_kek(&db, dir.path());
    let snap = dir.path().join("drill.snap");
    ok(
        &db.cli(&["snapshot", "save", "--out", path(&snap)]),
        "snapshot save",
    );

    let challenge = free_addr();
    let pebble = Pebble::start(challenge.port(), 0);
    let ca = dir.path().join("pebble-listener-ca.pem");
    std::fs::write(&ca, &pebble.listener_ca_pem).unwrap();
    let drill = |target: &TestDb, bundle: &Path, report: &Path| {
        target.cli(&[
            "dr",
            "drill",
            "--snapshot",
            path(&snap),
            "--target-uri",
            &target.uri,
            "--kek-bundle",
            path(bundle),
            "--passphrase-file",
            path(&passphrase),
            "--acme-directory",
            &pebble.directory,
            "--acme-ca-bundle",
            path(&ca),
            "--challenge-addr",
            &challenge.to_string(),
            "--domain",
            "drill.example.test",
            "--contact",
            "ops@example.test",
            "--issue-timeout-secs",
            "90",
            "--report",
            path(report),
        ])
    };
    let target = TestDb::empty_on_own_server("drill_target");
    let report_file = dir.path().join("report.json");
    let out = drill(&target, &bundle, &report_file);
    let text = ok(&out, "dr drill");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    eprintln!("{text}");
    assert_eq!(report["passed"], true, "{report}");
    let steps: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "target is empty",
            "snapshot is whole",
            "restore",
            "kek",
            "migrate",
            "audit verify",
            "health",
            "restored jobs held",
            "issue a certificate"
        ]
    );
    assert!(report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["outcome"] == "passed" && s["seconds"].is_number()));

    // The fixture's issue was kept from the installation's channel.
    let restored = target.store().await;
    let kept = support::documents(
        &restored,
        "notifications",
        doc! { "kind": "certificate.issued" },
    )
    .await;
    assert_eq!(
        kept.len(),
        1,
        "the fixture's issue, for the channel: {kept:?}"
    );
    assert_eq!(kept[0].get_str("state").unwrap(), "dead", "{:?}", kept[0]);
    let error = kept[0].get_str("last_error").unwrap();
    assert!(
        error.contains("notification channels are closed on this process (CAP_EGRESS_CLOSED)"),
        "{error}"
    );
    assert!(
        seen.lock().unwrap().attempts.is_empty(),
        "the installation's channel was reached from the drill"
    );
    receiver.stop(true).await;

    // The same target again: not empty, refused at the first step.
    let again = drill(&target, &bundle, &dir.path().join("again.json"));
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("is not empty"));

    // Another installation's KEK: the drill fails at the kek step, naming
    // the version the data keys need, and runs nothing after it.
    let stranger = TestDb::fresh("drill_stranger");
    let (wrong, _) = export_kek(&stranger, &tempfile::tempdir().unwrap().keep());
    let wrong_target = target.sibling("drill_wrong");
    let wrong_report = dir.path().join("wrong.json");
    let out = drill(&wrong_target, &wrong, &wrong_report);
    assert!(!out.status.success());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&wrong_report).unwrap()).unwrap();
    let kek = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "kek")
        .unwrap();
    assert_eq!(kek["outcome"], "failed", "{report}");
    assert!(
        kek["detail"].as_str().unwrap().contains("KEK version 1"),
        "{kek}"
    );
    assert!(report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .skip_while(|s| s["name"] != "kek")
        .skip(1)
        .all(|s| s["outcome"] == "skipped"));
}

#[tokio::test]
async fn the_siem_witness_lists_what_was_written_after_the_snapshot_and_flags_a_changed_hash() {
    let rsyslog = Rsyslog::start();
    let db = TestDb::migrated("witness").await;
    let audit = Audit::new(db.store().await);
    let append = |from: i64, to: i64| {
        let audit = audit.clone();
        async move {
            for i in from..=to {
                audit
                    .append(&Event::new("test", "thing.changed", format!("things/{i}")))
                    .await
                    .unwrap();
            }
        }
    };
    append(1, 30).await;
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("w.snap");
    ok(
        &db.cli(&["snapshot", "save", "--out", path(&snap)]),
        "snapshot save",
    );
    let at_snapshot = audit.head().await.unwrap().0;
    append(31, 40).await;
    let head = audit.head().await.unwrap().0;
    let addr = format!("127.0.0.1:{}", rsyslog.port);
    let forwarder = Proc::start(
        "scheduler",
        &db,
        "witness-forwarder",
        &[
            ("CAP_SIEM_SYSLOG_ADDR", addr.as_str()),
            ("CAP_SIEM_POLL_MS", "50"),
        ],
    );
    assert!(
        wait_until(Duration::from_secs(30), || async {
            (1..=head).all(|s| rsyslog.received().contains(&s))
        })
        .await,
        "the SIEM received every record; log:\n{}",
        forwarder.log_text()
    );
    drop(forwarder);

    let restored = db.sibling("witness_restored");
    std::fs::copy(&db.kek_file, &restored.kek_file).unwrap();
    ok(
        &restored.cli(&["snapshot", "restore", "--from", path(&snap)]),
        "snapshot restore",
    );
    ok(&restored.cli(&["migrate"]), "migrate");
    let out = restored.cli(&["audit", "verify", "--json", "--witness", path(&rsyslog.out)]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    let restores = report["witness"]["restores"].as_array().unwrap();
    assert_eq!(restores.len(), 1, "{report}");
    assert_eq!(restores[0]["authenticated"], true, "{report}");
    let lacking: Vec<i64> = report["witness"]["written_after_snapshot"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .filter(|s| *s <= head)
        .collect();
    assert_eq!(
        lacking,
        ((at_snapshot + 1)..=head).collect::<Vec<_>>(),
        "{report}"
    );
    assert_eq!(
        report["witness"]["missing_from_database_total"], 0,
        "{report}"
    );
    assert!(
        report["witness"]["disagreements"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{report}"
    );

    // A record before the snapshot with another hash in the SIEM: flagged.
    let text = std::fs::read_to_string(&rsyslog.out).unwrap();
    let victim = text.lines().find(|l| l.contains("seq=\"5\"")).unwrap();
    let hash = victim
        .split("hash=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let forged = text.replace(hash, &"0".repeat(64));
    let forged_file = dir.path().join("forged.log");
    std::fs::write(&forged_file, forged).unwrap();
    let out = restored.cli(&["audit", "verify", "--json", "--witness", path(&forged_file)]);
    assert_eq!(out.status.code(), Some(3));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let flagged: Vec<i64> = report["witness"]["disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(flagged, [5], "{report}");
}

/// The review's attack (issue 26, section 3), with database access alone
/// against a real rsyslog SIEM: the records after the last checkpoint
/// (the SIEM's copy of that checkpoint among them) deleted, the head moved
/// back, and one plain-hashed `snapshot.restored` record appended. Plain
/// `audit verify` still calls the chain intact (every checkpoint left is
/// authentic); the witness used to take the record for a restore, list
/// the deleted records as "written after the snapshot" and confirm the
/// database. The record carries no MAC under the checkpoint key, so it
/// explains nothing: every deleted record is missing, exit 3.
#[tokio::test]
async fn a_cut_back_disguised_as_a_restore_is_not_confirmed_by_the_siem() {
    let rsyslog = Rsyslog::start();
    let db = TestDb::migrated("witness_cut_back").await;
    let store = db.store().await;
    let audit = Audit::new(store.clone());
    let append = |n: i64| {
        let audit = audit.clone();
        async move {
            for i in 0..n {
                audit
                    .append(&Event::new("test", "thing.changed", format!("things/{i}")))
                    .await
                    .unwrap();
            }
            audit.head().await.unwrap().0
        }
    };
    let addr = format!("127.0.0.1:{}", rsyslog.port);
    let env = [
        ("CAP_SIEM_SYSLOG_ADDR", addr.as_str()),
        ("CAP_SIEM_POLL_MS", "50"),
        ("CAP_HOUSEKEEPING_SECS", "1"),
        ("CAP_CLAIM_POLL_MS", "50"),
    ];
    let scheduler = Proc::start("scheduler", &db, "cut-back-scheduler", &env);
    let worker = Proc::start("worker", &db, "cut-back-worker", &env);
    let first = append(10).await;
    // Sealed, and the checkpoint copied into the log (and so to the SIEM).
    let sealed = wait_until(Duration::from_secs(30), || async {
        let Some(c) = certautopilot::audit::checkpoint::latest(&store)
            .await
            .unwrap()
        else {
            return false;
        };
        c.seq >= first
            && store
                .collection(AUDIT_COLLECTION)
                .count_documents(doc! { "action": "audit.checkpoint", "details.seq": c.seq })
                .await
                .unwrap()
                > 0
    })
    .await;
    assert!(sealed, "housekeeping sealed; log:\n{}", worker.log_text());
    drop(worker);
    let head = append(10).await;
    assert!(
        wait_until(Duration::from_secs(30), || async {
            (1..=head).all(|s| rsyslog.received().contains(&s))
        })
        .await,
        "the SIEM received every record; log:\n{}",
        scheduler.log_text()
    );
    drop(scheduler);
    let last = certautopilot::audit::checkpoint::latest(&store)
        .await
        .unwrap()
        .unwrap();
    let audit_coll = store.collection(AUDIT_COLLECTION);
    let copies_after = audit_coll
        .count_documents(doc! { "_id": { "$gt": last.seq }, "action": "audit.checkpoint" })
        .await
        .unwrap();
    assert!(
        copies_after >= 1,
        "the SIEM's copy of the checkpoint is among the records cut"
    );

    // The attacker: MongoDB access, no KEK.
    audit_coll
        .delete_many(doc! { "_id": { "$gt": last.seq } })
        .await
        .unwrap();
    store
        .collection(certautopilot::audit::AUDIT_HEAD_COLLECTION)
        .update_one(
            doc! { "_id": "head" },
            doc! { "$set": { "seq": last.seq, "hash": &last.hash } },
        )
        .await
        .unwrap();
    let forged = Audit::new(store.clone())
        .append(
            &Event::new("operator", "snapshot.restored", "snapshot").with(doc! {
                "taken_at": "2026-12-02T03:17:00Z",
                "audit_head_seq": last.seq,
                "audit_head_hash": &last.hash,
            }),
        )
        .await
        .unwrap();
    assert_eq!(forged, last.seq + 1);

    let out = db.cli(&["audit", "verify", "--json", "--witness", path(&rsyslog.out)]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["chain"]["problem"].is_null(),
        "the chain alone looks intact: {report}"
    );
    assert_eq!(out.status.code(), Some(3), "{report}");
    let witness = &report["witness"];
    assert_eq!(witness["confirmed"], false, "{report}");
    assert_eq!(witness["restores"][0]["authenticated"], false, "{report}");
    assert!(
        witness["restores"][0]["not_authenticated"]
            .as_str()
            .unwrap()
            .contains("no MAC"),
        "{report}"
    );
    let missing: BTreeSet<i64> = witness["missing_from_database"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_i64().unwrap())
        .collect();
    let deleted: BTreeSet<i64> = ((last.seq + 1)..=head).collect();
    assert!(
        deleted.is_subset(&missing),
        "every deleted record is missing: {report}"
    );
    assert!(
        witness["written_after_snapshot"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{report}"
    );
    let text = db.cli(&["audit", "verify", "--witness", path(&rsyslog.out)]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("NOT AUTHENTICATED") && text.contains("CONTRADICTS"),
        "{text}"
    );
}
