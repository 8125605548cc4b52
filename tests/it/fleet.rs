//! The fleet registry and the schema floor: every process records its
//! roles, version and the schema it knows; `fleet status` lists them and
//! the leader, `fleet wait` waits out older versions; a binary runs against
//! a newer schema as long as its floor allows, and `migrate` refuses a
//! breaking migration while an older instance is alive.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{self, bin, OutputWithin, Proc, TestDb};
use certautopilot::store::schema::CURRENT_VERSION;
use mongodb::bson::{doc, DateTime};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn cli(db: &TestDb, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .output_within_limit()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn status(db: &TestDb) -> serde_json::Value {
    let out = cli(db, &["fleet", "status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn every_process_is_registered_and_fleet_wait_waits_out_older_versions() {
    let db = TestDb::migrated("fleet").await;
    let api = Proc::start("api", &db, "fleet-api", &[]);
    let worker = Proc::start("worker", &db, "fleet-worker", &[]);
    let scheduler = Proc::start("scheduler", &db, "fleet-scheduler", &[]);
    for p in [&api, &worker, &scheduler] {
        p.wait_alive().await;
    }
    let led = support::wait_until(Duration::from_secs(30), || async {
        let s = status(&db).await;
        s["instances"].as_array().unwrap().len() == 3 && s["scheduler_leader"] == "fleet-scheduler"
    })
    .await;
    assert!(led, "{}", status(&db).await);
    let s = status(&db).await;
    for (id, role) in [
        ("fleet-api", "api"),
        ("fleet-worker", "worker"),
        ("fleet-scheduler", "scheduler"),
    ] {
        let i = s["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["instance_id"] == id)
            .unwrap_or_else(|| panic!("{id} listed: {s}"));
        assert_eq!(i["roles"], serde_json::json!([role]), "{i}");
        assert_eq!(i["version"], VERSION, "{i}");
        assert_eq!(i["schema_known"], CURRENT_VERSION, "{i}");
        assert!(
            i["started_at"].is_string() && i["last_seen"].is_string(),
            "{i}"
        );
    }
    let text = cli(&db, &["fleet", "status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("3 live instance(s); scheduler leader: fleet-scheduler"),
        "{text}"
    );

    // Everything runs this version: nothing to wait for.
    let out = cli(
        &db,
        &[
            "fleet",
            "wait",
            "--roles",
            "api,worker",
            "--version",
            VERSION,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // A version nobody runs yet: a clear line on timeout, naming who is behind.
    let out = cli(
        &db,
        &[
            "fleet",
            "wait",
            "--roles",
            "api,worker",
            "--version",
            "99.0.0",
            "--timeout",
            "2",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = stderr(&out);
    assert!(
        said.contains("timed out after 2 s")
            && said.contains("fleet-api")
            && said.contains("fleet-worker"),
        "{said}"
    );
    assert!(
        !said.contains("fleet-scheduler ("),
        "only the roles asked: {said}"
    );
    // An old worker, alive for a few more seconds: waited out.
    let store = db.store().await;
    let expires =
        DateTime::from_millis(store.server_now().await.unwrap().timestamp_millis() + 4_000);
    store
        .collection(certautopilot::store::fleet::FLEET_COLLECTION)
        .insert_one(doc! { "_id": "old-worker", "roles": ["worker"], "version": "0.0.1", "schema_known": CURRENT_VERSION - 1, "expires_at": expires })
        .await
        .unwrap();
    let out = cli(
        &db,
        &[
            "fleet",
            "wait",
            "--roles",
            "worker",
            "--version",
            VERSION,
            "--timeout",
            "30",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("old-worker (worker, 0.0.1)"),
        "{}",
        stderr(&out)
    );
    // Bad input: exit 2 naming it.
    for args in [["--version", "soon"], ["--roles", "cook"]] {
        let mut all = vec!["fleet", "wait", "--roles", "api", "--version", VERSION];
        all.extend(args);
        let out = cli(&db, &all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // A process that stops leaves the registry at once.
    api.signal(nix::sys::signal::Signal::SIGTERM);
    let gone = support::wait_until(Duration::from_secs(20), || async {
        !status(&db).await.to_string().contains("fleet-api")
    })
    .await;
    assert!(gone, "{}", status(&db).await);
}

async fn set_schema(db: &TestDb, version: i64, floor: i64) {
    db.store()
        .await
        .collection("schema")
        .update_one(
            doc! { "_id": "version" },
            doc! { "$set": { "version": version, "floor": floor } },
        )
        .await
        .unwrap();
}

async fn ready(p: &Proc) -> bool {
    reqwest::get(p.url("/readyz"))
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

/// Migration 12 is the last breaking one (floor 12); 13 is additive.
const FLOOR: i64 = 12;

#[tokio::test]
async fn a_binary_older_than_the_floor_refuses_to_start_and_migrate_waits_for_old_instances() {
    const { assert!(CURRENT_VERSION > FLOOR, "the newest migration is additive") };
    let db = TestDb::migrated("schema_floor").await;

    // One schema version behind, above the floor: it runs against the
    // migrated schema, as the previous release's pods do during an upgrade.
    let behind = (CURRENT_VERSION - 1).to_string();
    let previous = Proc::start(
        "worker",
        &db,
        "floor-previous",
        &[("CAP_TEST_KNOWN_SCHEMA_VERSION", behind.as_str())],
    );
    previous.wait_alive().await;
    assert!(
        support::wait_until(Duration::from_secs(20), || ready(&previous)).await,
        "{}",
        previous.log_text()
    );
    drop(previous);

    // Below the floor: it refuses to start, naming both versions.
    let below = (FLOOR - 1).to_string();
    let old_env = [("CAP_TEST_KNOWN_SCHEMA_VERSION", below.as_str())];
    let mut refused = Proc::start("worker", &db, "floor-old-refused", &old_env);
    assert_eq!(refused.wait_exit(Duration::from_secs(20)).await, Some(1));
    let log = refused.log_text();
    assert!(
        log.contains(&format!(
            "schema version {CURRENT_VERSION} is newer than the {below}"
        )) && log.contains(&format!("schema version {FLOOR} or later")),
        "{log}"
    );

    // Back before the breaking migration, with that old binary alive on it:
    // `migrate` refuses migration 12, naming the instance; --force applies
    // it, and the old instance stops being ready.
    set_schema(&db, FLOOR - 1, FLOOR - 1).await;
    let old = Proc::start("worker", &db, "floor-old", &old_env);
    old.wait_alive().await;
    assert!(
        support::wait_until(Duration::from_secs(20), || ready(&old)).await,
        "{}",
        old.log_text()
    );
    let out = cli(&db, &["migrate"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("floor-old (worker") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    let out = cli(&db, &["migrate", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let unready =
        support::wait_until(Duration::from_secs(20), || async { !ready(&old).await }).await;
    assert!(
        unready,
        "the old instance is not ready against the raised floor"
    );
}
