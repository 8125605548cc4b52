//! Operator-facing behaviour of the binary: configuration errors, migrations,
//! the schema gate, `/readyz` and `certautopilot health`.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{self, bin, OutputWithin, Proc, TestDb};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output_within_limit().expect("run certautopilot")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn an_invalid_setting_exits_2_with_one_line_naming_it() {
    let uri = ("CAP_MONGO_URI", "mongodb://127.0.0.1:1/x");
    for (var, value) in [
        ("CAP_JOB_LEASE_SECS", "sixty"),
        ("CAP_LEADER_LEASE_SECS", "0"),
        ("CAP_WORKER_CONCURRENCY", "-3"),
        ("CAP_HTTP_ADDR", "not-an-address"),
        ("CAP_READYZ_GRACE_SECS", "1.5"),
        ("CAP_LOG_FORMAT", "xml"),
        ("CAP_KEK_PROVIDER", "vault"),
        ("CAP_EGRESS_ALLOW", "10.0.0.0/33"),
        ("CAP_EGRESS_ALLOW", "127.0.0.1,*.example.com"),
        ("CAP_EGRESS_ALLOW_ACME", "10.0.0.0/33"),
        ("CAP_EGRESS_ALLOW_TARGETS", "*.example.com"),
        ("CAP_EGRESS_CLOSED", "webhooks"),
        ("CAP_JOB_ATTEMPT_TIMEOUT_SECS", "0"),
        ("CAP_ACME_REQUEST_TIMEOUT_SECS", "forever"),
        ("CAP_ACME_MAX_RESPONSE_BYTES", "1"),
    ] {
        let out = run(&["worker"], &[uri, (var, value)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {err}");
        assert!(
            err.contains(var),
            "{var}={value}: message does not name it: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    let out = run(&["scheduler"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("CAP_MONGO_URI"));
    let out = run(&["worker"], &[uri]);
    assert_eq!(out.status.code(), Some(2), "a workload needs its KEK");
    assert!(stderr(&out).contains("CAP_KEK_FILE"), "{}", stderr(&out));
    // The flag overrides the variable and is validated the same way.
    let out = run(&["api", "--job-lease-secs", "abc"], &[uri]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("CAP_JOB_LEASE_SECS"));
}

async fn schema_docs(db: &TestDb) -> Vec<Document> {
    db.store()
        .await
        .collection("schema")
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn index_names(db: &TestDb, coll: &str) -> Vec<String> {
    let mut names: Vec<String> = db
        .store()
        .await
        .collection(coll)
        .list_index_names()
        .await
        .unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn migrate_twice_and_concurrently_gives_the_same_schema() {
    let db = TestDb::fresh("migrate");
    let env = [("CAP_MONGO_URI", db.uri.as_str())];
    // Two at once on an empty database.
    let a = Command::new(bin())
        .arg("migrate")
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .output_within_limit();
    let b = std::thread::spawn({
        let uri = db.uri.clone();
        move || {
            Command::new(bin())
                .arg("migrate")
                .env_clear()
                .env("CAP_MONGO_URI", uri)
                .output_within_limit()
                .unwrap()
        }
    });
    let (a, b) = (a.unwrap(), b.join().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    let after_concurrent = (schema_docs(&db).await, index_names(&db, "jobs").await);

    let again = run(&["migrate"], &env);
    assert!(again.status.success());
    assert!(
        stderr(&again).contains("nothing to do"),
        "{}",
        stderr(&again)
    );
    let after_again = (schema_docs(&db).await, index_names(&db, "jobs").await);

    let version = |docs: &Vec<Document>| {
        docs.iter()
            .find(|d| d.get_str("_id") == Ok("version"))
            .unwrap()
            .get_i64("version")
            .unwrap()
    };
    assert_eq!(
        version(&after_concurrent.0),
        certautopilot::store::schema::CURRENT_VERSION
    );
    assert_eq!(
        version(&after_again.0),
        certautopilot::store::schema::CURRENT_VERSION
    );
    assert_eq!(
        after_concurrent.0.len(),
        after_again.0.len(),
        "no migration recorded twice"
    );
    assert_eq!(after_concurrent.1, after_again.1);
    assert!(
        after_again.1.contains(&"key_unique".to_string()),
        "{:?}",
        after_again.1
    );
}

#[tokio::test]
async fn readyz_fails_until_migrated_and_a_newer_schema_refuses_to_start() {
    let db = TestDb::fresh("gate");
    let api = Proc::start("api", &db, "api-gate", &[]);
    api.wait_alive().await;
    let readyz = || async { reqwest::get(api.url("/readyz")).await.unwrap() };
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            readyz().await.status() == 503
        })
        .await,
        "not ready before migrations"
    );
    let body: serde_json::Value = readyz().await.json().await.unwrap();
    assert!(
        body["details"]["schema"]
            .as_str()
            .unwrap_or("")
            .contains("certautopilot migrate"),
        "{body}"
    );

    assert!(run(&["migrate"], &[("CAP_MONGO_URI", &db.uri)])
        .status
        .success());
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            readyz().await.status() == 200
        })
        .await,
        "ready once migrated"
    );
    drop(api);

    // A newer binary migrated this database with a breaking migration (its
    // floor is above what this binary knows): this one must not run on it.
    db.store()
        .await
        .collection("schema")
        .update_one(
            doc! { "_id": "version" },
            doc! { "$set": { "version": 999i64, "floor": 999i64 } },
        )
        .await
        .unwrap();
    let out = run(
        &["worker"],
        &[
            ("CAP_MONGO_URI", &db.uri),
            ("CAP_KEK_FILE", db.kek_file.to_str().unwrap()),
            ("CAP_HTTP_ADDR", &support::free_addr().to_string()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("newer"), "{}", stderr(&out));
}

#[tokio::test]
async fn health_reports_each_check_and_exits_0_only_when_healthy() {
    let db = TestDb::migrated("health").await;
    let env = [
        ("CAP_MONGO_URI", db.uri.as_str()),
        ("CAP_KEK_FILE", db.kek_file.to_str().unwrap()),
    ];

    // No scheduler yet: no live leader, so unhealthy.
    let out = run(&["health", "--json"], &env);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["healthy"], false);
    let leader = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "scheduler leader")
        .unwrap();
    assert_eq!(leader["ok"], false);

    let all = Proc::start("all", &db, "healthy-one", &[]);
    all.wait_alive().await;
    let healthy = support::wait_until(Duration::from_secs(20), || async {
        run(&["health"], &env).status.success()
    })
    .await;
    assert!(healthy, "healthy with a leader; log:\n{}", all.log_text());
    let human = String::from_utf8(run(&["health"], &env).stdout).unwrap();
    assert!(human.starts_with("HEALTHY"), "{human}");
    assert!(human.contains("healthy-one leads"), "{human}");
    assert!(human.contains("can be unwrapped"), "{human}");

    // Without its KEK the installation is not healthy, and says why.
    let out = run(&["health", "--json"], &env[..1]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kek = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kek")
        .unwrap()
        .clone();
    assert_eq!(kek["ok"], false);
    assert!(
        kek["detail"].as_str().unwrap().contains("CAP_KEK_FILE"),
        "{kek}"
    );
    assert!(
        human.contains("PRIMARY"),
        "replica-set members are listed: {human}"
    );

    let out = run(
        &["health"],
        &[(
            "CAP_MONGO_URI",
            "mongodb://127.0.0.1:1/x?serverSelectionTimeoutMS=300",
        )],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable database is unhealthy"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("UNHEALTHY"));
}

#[test]
fn kek_init_creates_a_private_key_ring_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kek.json");
    let path_str = path.to_str().unwrap();
    let out = run(&["kek", "init", "--file", path_str], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "the key never goes to standard output"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    certautopilot::crypto::kek::FileKek::load(&path).unwrap();
    let again = run(&["kek", "init"], &[("CAP_KEK_FILE", path_str)]);
    assert_eq!(again.status.code(), Some(1), "refuses to overwrite");
    assert!(stderr(&again).contains("kek.json"), "{}", stderr(&again));
}

#[test]
fn kek_export_refuses_weak_passphrases_and_import_restores_the_key_ring() {
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("kek.json");
    let ring_s = ring.to_str().unwrap();
    assert!(run(&["kek", "init", "--file", ring_s], &[])
        .status
        .success());
    let bundle = dir.path().join("bundle.json");
    let bundle_s = bundle.to_str().unwrap();
    let export = |pass: &str| {
        run(
            &["kek", "export", "--out", bundle_s],
            &[("CAP_KEK_FILE", ring_s), ("CAP_KEK_PASSPHRASE", pass)],
        )
    };
    for weak in ["", "hunter2", "aaaaaaaaaaaaaaaaaaaaaaaa"] {
        let out = export(weak);
        assert_eq!(out.status.code(), Some(1), "{weak:?}");
        assert!(
            stderr(&out).contains("passphrase refused"),
            "{}",
            stderr(&out)
        );
        assert!(!bundle.exists(), "nothing written for {weak:?}");
    }
    let pass = "correct horse battery staple";
    let out = export(pass);
    assert!(out.status.success(), "{}", stderr(&out));

    let restored = dir.path().join("restored.json");
    let import = |pass: &str| {
        run(
            &[
                "kek",
                "import",
                "--bundle",
                bundle_s,
                "--file",
                restored.to_str().unwrap(),
            ],
            &[("CAP_KEK_PASSPHRASE", pass)],
        )
    };
    let wrong = import("correct horse battery stapler");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).contains("wrong passphrase"),
        "{}",
        stderr(&wrong)
    );
    let out = import(pass);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&restored).unwrap(),
        std::fs::read_to_string(&ring).unwrap(),
        "the same key ring comes back"
    );
}

#[tokio::test]
async fn metrics_move_to_a_listener_of_their_own_when_asked() {
    let db = TestDb::migrated("metrics_listener").await;
    let metrics_addr = support::free_addr();
    let api = Proc::start(
        "api",
        &db,
        "metrics-apart",
        &[("CAP_METRICS_ADDR", &metrics_addr.to_string())],
    );
    api.wait_alive().await;
    let http = reqwest::Client::new();
    let on_api = http.get(api.url("/metrics")).send().await.unwrap();
    assert_eq!(
        on_api.status(),
        404,
        "the API's listener no longer serves them"
    );
    // Ready once the first probe has answered (alive comes first).
    let ready = support::wait_until(Duration::from_secs(10), || async {
        http.get(api.url("/readyz")).send().await.unwrap().status() == 200
    })
    .await;
    assert!(
        ready,
        "/readyz stays on the main listener; log:\n{}",
        api.log_text()
    );
    let apart = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(apart.status(), 200);
    assert!(apart.text().await.unwrap().contains("certautopilot_"));
    let elsewhere = http
        .get(format!("http://{metrics_addr}/v1/projects"))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 404, "nothing but metrics there");

    let out = run(
        &["api"],
        &[
            ("CAP_MONGO_URI", "mongodb://127.0.0.1:1/x"),
            ("CAP_METRICS_ADDR", "nine-thousand"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("CAP_METRICS_ADDR"),
        "{}",
        stderr(&out)
    );
}

/// The `kek` check of `certautopilot health --json` with these settings.
fn health_kek_check(env: &[(&str, &str)]) -> serde_json::Value {
    let out = run(&["health", "--json"], env);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("health --json: {}", stderr(&out)));
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kek")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn another_key_ring_with_the_same_versions_is_refused_naming_the_version() {
    let db = TestDb::migrated("kek_check").await;
    let ours = db.kek_file.to_str().unwrap();
    // A copy of the key ring while it holds version 1 only; then both go
    // their own way to a version 2 of their own.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.json");
    std::fs::copy(&db.kek_file, &other).unwrap();
    let other_s = other.to_str().unwrap();
    let ours_env = [("CAP_MONGO_URI", db.uri.as_str()), ("CAP_KEK_FILE", ours)];
    let other_env = [
        ("CAP_MONGO_URI", db.uri.as_str()),
        ("CAP_KEK_FILE", other_s),
    ];

    let rotated = run(&["kek", "rotate"], &ours_env);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    use certautopilot::crypto::kek::KekProvider;
    certautopilot::crypto::kek::FileKek::load(&other)
        .unwrap()
        .rotate()
        .unwrap();
    let check = health_kek_check(&ours_env);
    assert_eq!(check["ok"], true, "{check}");

    // Versions 1 and 2 both, and 1 the same key: 2 is named.
    let check = health_kek_check(&other_env);
    assert_eq!(check["ok"], false, "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(
        detail.contains("KEK version 2 does not match the key-check value recorded for it"),
        "{detail}"
    );
    let refused = run(&["kek", "rotate"], &other_env);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("KEK version 2"),
        "{}",
        stderr(&refused)
    );

    let api = Proc::start("api", &db, "other-ring", &[("CAP_KEK_FILE", other_s)]);
    api.wait_alive().await;
    let refused = support::wait_until(Duration::from_secs(20), || async {
        let r = reqwest::get(api.url("/readyz")).await.unwrap();
        r.status() == 503
            && r.json::<serde_json::Value>().await.unwrap()["details"]["kek"]
                .as_str()
                .is_some_and(|k| k.contains("KEK version 2"))
    })
    .await;
    assert!(refused, "/readyz refuses it; log:\n{}", api.log_text());
}

#[tokio::test]
async fn the_api_serves_https_and_picks_up_a_replaced_certificate() {
    let db = TestDb::migrated("https").await;
    let dir = tempfile::tempdir().unwrap();
    let (one, two, live) = (
        dir.path().join("one"),
        dir.path().join("two"),
        dir.path().join("live"),
    );
    for d in [&one, &two, &live] {
        std::fs::create_dir(d).unwrap();
    }
    let (ca_one, ca_two) = (
        support::pebble::listener_certificate(&one),
        support::pebble::listener_certificate(&two),
    );
    let install = |from: &std::path::Path| {
        // As a renewal tool would: each file replaced whole, by a rename.
        for name in ["key.pem", "cert.pem"] {
            let tmp = live.join(format!("{name}.tmp"));
            std::fs::copy(from.join(name), &tmp).unwrap();
            std::fs::rename(&tmp, live.join(name)).unwrap();
        }
    };
    install(&one);
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    let api = Proc::start(
        "api",
        &db,
        "https-api",
        &[
            ("CAP_HTTP_TLS_CERT", cert.to_str().unwrap()),
            ("CAP_HTTP_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    // A fresh client each time (no pooled connection): trusting one CA only.
    let answers = |ca: &std::path::Path| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap();
        let url = format!("https://{}/healthz", api.http);
        async move {
            client
                .get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    };
    let up = support::wait_until(Duration::from_secs(20), || answers(&ca_one)).await;
    assert!(up, "/healthz over TLS; log:\n{}", api.log_text());
    assert!(
        !answers(&ca_two).await,
        "the second certificate is not served yet"
    );
    let plain = reqwest::get(api.url("/healthz")).await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "no plain HTTP on the TLS listener"
    );

    install(&two);
    let reloaded = support::wait_until(Duration::from_secs(20), || answers(&ca_two)).await;
    assert!(
        reloaded,
        "the new certificate is served; log:\n{}",
        api.log_text()
    );
    assert!(!answers(&ca_one).await, "and the old one no longer");
    assert!(
        !api.log_lines_with(&["TLS certificate reloaded"]).is_empty(),
        "{}",
        api.log_text()
    );

    // Both or neither.
    let out = run(
        &["api"],
        &[
            ("CAP_MONGO_URI", "mongodb://127.0.0.1:1/x"),
            ("CAP_HTTP_TLS_CERT", cert.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("CAP_HTTP_TLS_CERT") && stderr(&out).contains("CAP_HTTP_TLS_KEY"),
        "{}",
        stderr(&out)
    );
}
