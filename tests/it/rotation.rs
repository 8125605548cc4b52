//! KEK rotation end to end: `kek rotate`, re-wrap jobs run by real workers
//! (one SIGKILLed mid-rotation), `kek status`, and `kek retire`.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{self, bin, OutputWithin, Proc, TestDb};
use certautopilot::crypto::kek::{FileKek, KekProvider};
use certautopilot::crypto::secrets::{SecretRef, Secrets};
use certautopilot::store::keys::data_keys_by_version;
use mongodb::bson::doc;
use nix::sys::signal::Signal;

fn cli(db: &TestDb, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .output_within_limit()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn rotation_completes_under_a_killed_worker_and_retire_waits_for_it() {
    let db = TestDb::migrated("rotation").await;
    let store = db.store().await;
    let secrets = Secrets::new(store.clone(), db.kek());
    let count = 400;
    for i in 0..count {
        secrets
            .put(
                &SecretRef::system(&format!("s-{i}")),
                format!("secret number {i}").as_bytes(),
            )
            .await
            .unwrap();
    }
    let fast = [
        ("CAP_KEK_ROTATION_CHECK_SECS", "1"),
        ("CAP_WORKER_PRESENCE_SECS", "3"),
        ("CAP_CLAIM_POLL_MS", "50"),
    ];
    let scheduler = Proc::start("scheduler", &db, "rot-scheduler", &fast);
    scheduler.wait_alive().await;

    let out = cli(&db, &["kek", "rotate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("KEK version 2 is now current"),
        "{}",
        text(&out)
    );

    // Nothing re-wrapped yet (no worker runs): version 1 cannot go.
    let out = cli(&db, &["kek", "retire", "1"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("still wraps {count} data key")),
        "{}",
        text(&out)
    );

    // A worker starts re-wrapping and is SIGKILLed part-way.
    let doomed = Proc::start("worker", &db, "rot-doomed", &fast);
    let started = support::wait_until(Duration::from_secs(60), || async {
        data_keys_by_version(&store)
            .await
            .unwrap()
            .get(&2)
            .copied()
            .unwrap_or(0)
            >= 20
    })
    .await;
    assert!(started, "re-wrap began; log:\n{}", doomed.log_text());
    doomed.signal(Signal::SIGKILL);
    let at_kill = data_keys_by_version(&store).await.unwrap();
    assert!(
        at_kill.get(&1).copied().unwrap_or(0) > 0,
        "killed mid-rotation: {at_kill:?}"
    );
    drop(doomed);

    let _survivor = Proc::start("worker", &db, "rot-survivor", &fast);
    let done = support::wait_until(Duration::from_secs(90), || async {
        data_keys_by_version(&store)
            .await
            .unwrap()
            .keys()
            .copied()
            .collect::<Vec<_>>()
            == vec![2]
    })
    .await;
    assert!(
        done,
        "rotation completed: {:?}",
        data_keys_by_version(&store).await.unwrap()
    );

    let status = cli(&db, &["kek", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["remaining"], 0);
    assert_eq!(status["current"], 2);
    // Ours, plus the audit checkpoint key housekeeping created.
    assert!(status["total"].as_i64().unwrap() >= count, "{status}");

    let out = cli(&db, &["kek", "retire", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(FileKek::load(&db.kek_file).unwrap().versions(), vec![2]);

    // Every secret opens with the key ring that now holds only version 2.
    let after = Secrets::new(store.clone(), db.kek());
    for i in 0..count {
        let plain = after
            .get(&SecretRef::system(&format!("s-{i}")))
            .await
            .unwrap();
        assert_eq!(plain.as_slice(), format!("secret number {i}").as_bytes());
    }

    let actions: Vec<String> = store
        .collection(certautopilot::audit::AUDIT_COLLECTION)
        .distinct("action", doc! { "action": { "$regex": "^kek\\." } })
        .await
        .unwrap()
        .into_iter()
        .filter_map(|b| b.as_str().map(str::to_string))
        .collect();
    for a in ["kek.rotated", "kek.rewrap_completed", "kek.retired"] {
        assert!(actions.iter().any(|x| x == a), "{a} audited: {actions:?}");
    }
    let remaining = support::wait_until(Duration::from_secs(10), || async {
        scheduler
            .metric("certautopilot_kek_rotation_remaining", "")
            .await
            == Some(0.0)
    })
    .await;
    assert!(remaining, "the leader reports the rotation complete");
}
