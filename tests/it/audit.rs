//! The audit log against a real server: a gapless order across processes,
//! and `audit verify` catching each kind of tampering.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, bin, OutputWithin, Proc, TestDb};
use certautopilot::audit::{self, Audit, Checkpoint, Event, Tampering};
use certautopilot::crypto::secrets::Secrets;
use certautopilot::queue::jobs::{JobQueue, NewJob};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

/// `n` records appended in this process, sealed by a checkpoint at `seal_at`.
async fn chain(db: &TestDb, n: i64, seal_at: i64) -> Vec<u8> {
    sealed_chain(db, n, &[seal_at]).await
}

/// `n` records appended in this process, sealed by checkpoints at `seals`.
async fn sealed_chain(db: &TestDb, n: i64, seals: &[i64]) -> Vec<u8> {
    let store = db.store().await;
    let audit = Audit::new(store.clone());
    let secrets = Secrets::new(store.clone(), db.kek());
    let key = audit::checkpoint::key(&secrets).await.unwrap().to_vec();
    for i in 1..=n {
        let event =
            Event::new("test", "thing.changed", format!("things/{i}")).with(doc! { "i": i });
        assert_eq!(audit.append(&event).await.unwrap(), i);
        if seals.contains(&i) {
            seal(db, &key, i).await;
        }
    }
    key
}

async fn seal(db: &TestDb, key: &[u8], seq: i64) {
    let store = db.store().await;
    let record = records(db)
        .await
        .into_iter()
        .find(|r| r.get_i64("seq") == Ok(seq))
        .unwrap();
    let prev = audit::checkpoint::latest(&store).await.unwrap();
    let mut cp = Checkpoint::seal(
        key,
        seq,
        record.get_str("hash").unwrap(),
        store.server_now().await.unwrap(),
        prev.as_ref(),
    )
    .fields();
    cp.insert("_id", seq);
    store
        .collection(audit::CHECKPOINTS_COLLECTION)
        .insert_one(cp)
        .await
        .unwrap();
}

async fn records(db: &TestDb) -> Vec<Document> {
    db.store()
        .await
        .collection(audit::AUDIT_COLLECTION)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn verify(db: &TestDb, key: &[u8]) -> Option<Tampering> {
    audit::verify(&db.store().await, Some(key), |_| {})
        .await
        .unwrap()
        .problem
}

fn audit_coll(store: &certautopilot::store::Store) -> mongodb::Collection<Document> {
    store.collection(audit::AUDIT_COLLECTION)
}

#[tokio::test]
async fn an_untouched_chain_verifies_and_the_cli_says_so() {
    let db = TestDb::migrated("audit_intact").await;
    let key = chain(&db, 30, 20).await;
    assert_eq!(verify(&db, &key).await, None);
    let out = db.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("intact: 30 records") && stdout.contains("1 checkpoints"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_edited_record_is_named() {
    let db = TestDb::migrated("audit_edited").await;
    let key = chain(&db, 30, 20).await;
    let store = db.store().await;
    audit_coll(&store)
        .update_one(
            doc! { "_id": 12i64 },
            doc! { "$set": { "details.i": 99i64 } },
        )
        .await
        .unwrap();
    assert!(matches!(
        verify(&db, &key).await,
        Some(Tampering::Edited { seq: 12, .. })
    ));

    // The CLI exits non-zero and names the record.
    let out = db.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("record 12 was edited"), "{stdout}");
}

#[tokio::test]
async fn an_edit_rehashed_through_the_chain_is_caught_by_the_checkpoint() {
    let db = TestDb::migrated("audit_rewritten").await;
    let key = chain(&db, 30, 20).await;
    let store = db.store().await;
    // Rewrite record 5 and every later hash consistently: only the
    // checkpoint, which needs the KEK, can tell.
    let mut prev = records(&db).await[3].get_str("hash").unwrap().to_string();
    for mut r in records(&db).await.into_iter().skip(4) {
        let seq = r.get_i64("seq").unwrap();
        if seq == 5 {
            r.insert("details", doc! { "i": 500i64 });
        }
        let event = Event::new(
            r.get_str("actor").unwrap(),
            r.get_str("action").unwrap(),
            r.get_str("target").unwrap(),
        )
        .with(r.get_document("details").unwrap().clone());
        let forged = audit::record(seq, *r.get_datetime("time").unwrap(), &event, &prev);
        prev = forged.get_str("hash").unwrap().to_string();
        audit_coll(&store)
            .replace_one(doc! { "_id": seq }, forged)
            .await
            .unwrap();
    }
    assert_eq!(
        verify(&db, &key).await,
        Some(Tampering::Rewritten { checkpoint_seq: 20 })
    );
    // A checkpoint forged without the KEK's key does not pass either.
    let forged_key = vec![7u8; 32];
    store
        .collection(audit::CHECKPOINTS_COLLECTION)
        .delete_many(doc! {})
        .await
        .unwrap();
    seal(&db, &forged_key, 30).await;
    assert!(matches!(
        verify(&db, &key).await,
        Some(Tampering::BadCheckpoint {
            checkpoint_seq: 30,
            ..
        })
    ));
}

#[tokio::test]
async fn a_deleted_record_is_named() {
    let db = TestDb::migrated("audit_deleted").await;
    let key = chain(&db, 30, 20).await;
    audit_coll(&db.store().await)
        .delete_one(doc! { "_id": 17i64 })
        .await
        .unwrap();
    assert_eq!(
        verify(&db, &key).await,
        Some(Tampering::Deleted { seq: 17 })
    );
}

#[tokio::test]
async fn reordered_records_are_named() {
    let db = TestDb::migrated("audit_reordered").await;
    let key = chain(&db, 30, 20).await;
    let store = db.store().await;
    // Swap the contents of records 8 and 9 (ids stay in place).
    let all = records(&db).await;
    let (eight, nine) = (all[7].clone(), all[8].clone());
    let body = |d: &Document| {
        let mut d = d.clone();
        d.remove("_id");
        d
    };
    audit_coll(&store)
        .replace_one(doc! { "_id": 8i64 }, body(&nine))
        .await
        .unwrap();
    audit_coll(&store)
        .replace_one(doc! { "_id": 9i64 }, body(&eight))
        .await
        .unwrap();
    assert!(
        matches!(
            verify(&db, &key).await,
            Some(Tampering::Reordered { seq: 8, .. })
        ),
        "{:?}",
        verify(&db, &key).await
    );
}

#[tokio::test]
async fn an_inserted_record_is_named() {
    let db = TestDb::migrated("audit_inserted").await;
    let key = chain(&db, 30, 20).await;
    let store = db.store().await;
    // Shift records 10.. up by one and slip a well-formed record in at 10.
    let all = records(&db).await;
    for r in all.iter().skip(9).rev() {
        let seq = r.get_i64("seq").unwrap();
        let mut moved = r.clone();
        moved.insert("_id", seq + 1);
        moved.insert("seq", seq + 1);
        audit_coll(&store)
            .delete_one(doc! { "_id": seq })
            .await
            .unwrap();
        audit_coll(&store).insert_one(moved).await.unwrap();
    }
    let event = Event::new("intruder", "thing.changed", "things/x");
    let forged = audit::record(
        10,
        *all[9].get_datetime("time").unwrap(),
        &event,
        all[8].get_str("hash").unwrap(),
    );
    audit_coll(&store).insert_one(forged).await.unwrap();
    assert!(
        matches!(
            verify(&db, &key).await,
            Some(Tampering::Inserted { seq: 10, .. })
        ),
        "{:?}",
        verify(&db, &key).await
    );
}

#[tokio::test]
async fn a_tail_truncated_before_the_last_checkpoint_is_caught() {
    let db = TestDb::migrated("audit_truncated").await;
    let key = chain(&db, 30, 25).await;
    let store = db.store().await;
    audit_coll(&store)
        .delete_many(doc! { "_id": { "$gt": 21i64 } })
        .await
        .unwrap();
    // Even with the head moved back to match, the checkpoint at 25 remains.
    let last = records(&db).await.pop().unwrap();
    store
        .collection(audit::AUDIT_HEAD_COLLECTION)
        .update_one(
            doc! { "_id": "head" },
            doc! { "$set": { "seq": 21i64, "hash": last.get_str("hash").unwrap() } },
        )
        .await
        .unwrap();
    assert_eq!(
        verify(&db, &key).await,
        Some(Tampering::Truncated {
            last_seq: 21,
            expected_at_least: 25
        })
    );
}

#[tokio::test]
async fn a_checkpoint_removed_from_the_middle_breaks_the_checkpoint_chain() {
    let db = TestDb::migrated("audit_checkpoint_gap").await;
    let key = sealed_chain(&db, 30, &[10, 20, 30]).await;
    assert_eq!(verify(&db, &key).await, None);
    db.store()
        .await
        .collection(audit::CHECKPOINTS_COLLECTION)
        .delete_one(doc! { "_id": 20i64 })
        .await
        .unwrap();
    match verify(&db, &key).await {
        Some(Tampering::CheckpointGap {
            checkpoint_seq: 30,
            detail,
        }) => assert!(detail.contains("record 20"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_checkpoint_made_under_another_key_is_named() {
    let db = TestDb::migrated("audit_checkpoint_other_key").await;
    let key = sealed_chain(&db, 30, &[10, 20]).await;
    // Chained onto the real checkpoints, but sealed with a key of its own.
    seal(&db, &[7u8; 32], 30).await;
    match verify(&db, &key).await {
        Some(Tampering::BadCheckpoint {
            checkpoint_seq: 30,
            detail,
        }) => assert!(detail.contains("another key"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_head_that_does_not_match_the_last_record_is_caught() {
    let db = TestDb::migrated("audit_bad_head").await;
    let key = chain(&db, 30, 20).await;
    let store = db.store().await;
    let head = store.collection(audit::AUDIT_HEAD_COLLECTION);
    let set_head = |seq: i64, hash: String| {
        let head = head.clone();
        async move {
            head.update_one(
                doc! { "_id": "head" },
                doc! { "$set": { "seq": seq, "hash": hash } },
            )
            .await
            .unwrap();
        }
    };
    set_head(30, "ab".repeat(32)).await;
    assert!(
        matches!(verify(&db, &key).await, Some(Tampering::BadHead { .. })),
        "{:?}",
        verify(&db, &key).await
    );
    // Moved back behind records that are still there.
    let record_25 = records(&db).await[24].get_str("hash").unwrap().to_string();
    set_head(25, record_25).await;
    match verify(&db, &key).await {
        Some(Tampering::BadHead { detail }) => assert!(detail.contains("run to 30"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

/// Rewrites every record from `from` on consistently (record `from`'s
/// details edited, every later hash and the head recomputed), as a
/// database writer without the KEK can.
async fn rewrite_from(db: &TestDb, from: i64) {
    let store = db.store().await;
    let all = records(db).await;
    let mut prev = all[(from - 2) as usize]
        .get_str("hash")
        .unwrap()
        .to_string();
    for mut r in all.into_iter().skip((from - 1) as usize) {
        let seq = r.get_i64("seq").unwrap();
        if seq == from {
            r.insert("details", doc! { "forged": true });
        }
        let event = Event::new(
            r.get_str("actor").unwrap(),
            r.get_str("action").unwrap(),
            r.get_str("target").unwrap(),
        )
        .with(r.get_document("details").unwrap().clone());
        let forged = audit::record(seq, *r.get_datetime("time").unwrap(), &event, &prev);
        prev = forged.get_str("hash").unwrap().to_string();
        audit_coll(&store)
            .replace_one(doc! { "_id": seq }, forged)
            .await
            .unwrap();
    }
    store
        .collection(audit::AUDIT_HEAD_COLLECTION)
        .update_one(doc! { "_id": "head" }, doc! { "$set": { "hash": prev } })
        .await
        .unwrap();
}

fn housekeeping_procs(db: &TestDb, tag: &str) -> (Proc, Proc) {
    let env = [("CAP_HOUSEKEEPING_SECS", "1"), ("CAP_CLAIM_POLL_MS", "50")];
    (
        Proc::start("scheduler", db, &format!("{tag}-scheduler"), &env),
        Proc::start("worker", db, &format!("{tag}-worker"), &env),
    )
}

async fn latest_checkpoint(db: &TestDb) -> Option<Checkpoint> {
    audit::checkpoint::latest(&db.store().await).await.unwrap()
}

/// Appends `n` records and waits until housekeeping has sealed them.
async fn append_and_wait_for_seal(db: &TestDb, n: i64) -> Checkpoint {
    let audit = Audit::new(db.store().await);
    let mut last = 0;
    for i in 0..n {
        last = audit
            .append(&Event::new("test", "thing.changed", format!("things/{i}")))
            .await
            .unwrap();
    }
    let sealed = support::wait_until(Duration::from_secs(30), || async {
        latest_checkpoint(db).await.is_some_and(|c| c.seq >= last)
    })
    .await;
    assert!(sealed, "housekeeping sealed record {last}");
    latest_checkpoint(db).await.unwrap()
}

/// Waits until `worker` reports that it refuses to seal the chain.
async fn wait_for_seal_refused(worker: &Proc) {
    let refused = support::wait_until(Duration::from_secs(60), || async {
        worker
            .metric("certautopilot_audit_seal_refused", "")
            .await
            .unwrap_or(0.0)
            == 1.0
    })
    .await;
    assert!(refused, "the seal refused; log:\n{}", worker.log_text());
}

/// `certautopilot health --json`: whether it exited 0, and its `audit` check.
fn audit_health(db: &TestDb) -> (bool, serde_json::Value) {
    let out = db.cli(&["health", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let audit_check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "audit")
        .unwrap_or_else(|| panic!("an audit check: {report}"))
        .clone();
    (out.status.success(), audit_check)
}

/// The review's attack (issue 11, section 2): with write access to MongoDB
/// and no KEK, a record sealed by a checkpoint is edited, every later hash
/// and the head recomputed, and the checkpoints from it on and the
/// checkpoint key deleted. Housekeeping used to make a new key and seal the
/// forged history, and `audit verify` then called it intact.
#[tokio::test]
async fn a_rewrite_that_deletes_the_checkpoint_key_is_not_sealed_and_is_caught() {
    let db = TestDb::migrated("audit_review_rewrite").await;
    let store = db.store().await;
    let procs = housekeeping_procs(&db, "before");
    let first = append_and_wait_for_seal(&db, 4).await;
    let edited = first.seq + 1;
    let second = append_and_wait_for_seal(&db, 6).await;
    assert!(second.seq > edited, "record {edited} is sealed");
    drop(procs);

    rewrite_from(&db, edited).await;
    store
        .collection(audit::CHECKPOINTS_COLLECTION)
        .delete_many(doc! { "_id": { "$gte": edited } })
        .await
        .unwrap();
    store
        .collection("keys")
        .delete_one(doc! { "_id": audit::CHECKPOINT_KEY_SECRET })
        .await
        .unwrap();

    let (_scheduler, worker) = housekeeping_procs(&db, "after");
    wait_for_seal_refused(&worker).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        latest_checkpoint(&db).await.map(|c| c.seq),
        Some(first.seq),
        "nothing sealed over the forged records"
    );
    let key = store
        .collection("keys")
        .find_one(doc! { "_id": audit::CHECKPOINT_KEY_SECRET })
        .await
        .unwrap();
    assert!(key.is_none(), "no new checkpoint key was made");

    let cli = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .env_clear()
            .env("CAP_MONGO_URI", &db.uri)
            .env("CAP_KEK_FILE", &db.kek_file)
            .output_within_limit()
            .unwrap()
    };
    let out = cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("checkpoint key"), "{stdout}");

    let (healthy, audit_check) = audit_health(&db);
    assert_eq!(audit_check["ok"], false, "{audit_check}");
    assert!(!healthy);
}

/// The same rewrite keeping the key: the remaining checkpoints are all
/// authentic, but the worker saw a later one sealed and refuses to seal
/// over its removal; `health` reports the refusal.
#[tokio::test]
async fn checkpoints_cut_back_behind_what_a_worker_saw_are_not_sealed_over() {
    let db = TestDb::migrated("audit_cut_back").await;
    let store = db.store().await;
    let (scheduler, worker) = housekeeping_procs(&db, "cut");
    let first = append_and_wait_for_seal(&db, 4).await;
    let edited = first.seq + 1;
    let second = append_and_wait_for_seal(&db, 6).await;
    assert!(second.seq > edited);
    // No housekeeping is enqueued while the records are rewritten.
    drop(scheduler);
    tokio::time::sleep(Duration::from_secs(2)).await;
    rewrite_from(&db, edited).await;
    store
        .collection(audit::CHECKPOINTS_COLLECTION)
        .delete_many(doc! { "_id": { "$gte": edited } })
        .await
        .unwrap();

    let _scheduler = Proc::start(
        "scheduler",
        &db,
        "cut-scheduler-2",
        &[("CAP_HOUSEKEEPING_SECS", "1")],
    );
    wait_for_seal_refused(&worker).await;
    assert!(
        latest_checkpoint(&db).await.unwrap().seq < edited,
        "nothing sealed over the forged records"
    );
    let (_, audit_check) = audit_health(&db);
    assert_eq!(audit_check["ok"], false, "{audit_check}");
    assert!(
        audit_check["detail"].as_str().unwrap().contains("cut back"),
        "{audit_check}"
    );
}

/// Housekeeping copies each checkpoint into the log (and so to the SIEM
/// sinks): one `audit.checkpoint` record per checkpoint, with its MAC.
#[tokio::test]
async fn each_checkpoint_is_copied_into_the_log_once() {
    let db = TestDb::migrated("audit_checkpoint_copies").await;
    let store = db.store().await;
    let procs = housekeeping_procs(&db, "copies");
    // Something to seal each time: an idle log is not sealed anew.
    let audit = Audit::new(store.clone());
    let sealed = support::wait_until(Duration::from_secs(60), || async {
        audit
            .append(&Event::new("test", "thing.changed", "things/1"))
            .await
            .unwrap();
        store
            .collection(audit::AUDIT_COLLECTION)
            .count_documents(doc! { "action": "audit.checkpoint" })
            .await
            .unwrap()
            >= 3
    })
    .await;
    assert!(sealed, "three checkpoints sealed and copied");
    drop(procs);
    let checkpoints = support::documents(&store, audit::CHECKPOINTS_COLLECTION, doc! {}).await;
    let copies = support::documents(
        &store,
        audit::AUDIT_COLLECTION,
        doc! { "action": "audit.checkpoint" },
    )
    .await;
    // The processes are killed at some moment: the newest checkpoint may
    // have been sealed just before, its copy not yet appended.
    let newest = checkpoints
        .iter()
        .map(Checkpoint::parse)
        .map(|cp| cp.seq)
        .max();
    for cp in checkpoints.iter().map(Checkpoint::parse) {
        let of_it: Vec<&Document> = copies
            .iter()
            .filter(|r| r.get_document("details").unwrap().get_i64("seq") == Ok(cp.seq))
            .collect();
        if of_it.is_empty() && Some(cp.seq) == newest {
            continue;
        }
        assert_eq!(of_it.len(), 1, "one copy of the checkpoint at {}", cp.seq);
        assert_eq!(
            of_it[0].get_document("details").unwrap().get_str("mac"),
            Ok(cp.mac.as_str())
        );
        assert!(of_it[0].get_i64("seq").unwrap() > cp.seq);
    }
    let key = audit::checkpoint::key(&Secrets::new(store.clone(), db.kek()))
        .await
        .unwrap();
    assert_eq!(verify(&db, &key).await, None);
}

/// Issue 26, section 4: housekeeping in several worker processes sealing
/// at once used to chain two checkpoints onto the same one, and `audit
/// verify` then reported a gap in the checkpoint chain (a false tamper
/// alarm). Four workers run 120 housekeeping jobs at once while records
/// keep coming; the chain of checkpoints has no fork and verifies.
#[tokio::test]
async fn housekeeping_in_several_processes_at_once_does_not_fork_the_checkpoint_chain() {
    let db = TestDb::migrated("audit_seal_race").await;
    let store = db.store().await;
    let queue = JobQueue::new(store.clone());
    let jobs = 120;
    for i in 0..jobs {
        queue
            .enqueue(&NewJob::new(
                "housekeeping",
                format!("seal-race-{i}"),
                doc! { "term": 1_i64 },
            ))
            .await
            .unwrap();
    }
    let appending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let appender = {
        let (audit, appending) = (Audit::new(store.clone()), appending.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while appending.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let event = Event::new("test", "thing.changed", format!("things/{i}"));
                audit.append(&event).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let workers: Vec<Proc> = (0..4)
        .map(|i| {
            Proc::start(
                "worker",
                &db,
                &format!("sealer-{i}"),
                &[("CAP_WORKER_CONCURRENCY", "2"), ("CAP_CLAIM_POLL_MS", "20")],
            )
        })
        .collect();
    let done = support::wait_until(Duration::from_secs(180), || async {
        audit_coll(&store)
            .count_documents(doc! { "action": "job.completed", "details.kind": "housekeeping" })
            .await
            .unwrap()
            == jobs
    })
    .await;
    appending.store(false, std::sync::atomic::Ordering::Relaxed);
    appender.await.unwrap();
    assert!(done, "every run completed; log:\n{}", workers[0].log_text());
    drop(workers);

    let checkpoints: Vec<Checkpoint> =
        support::documents(&store, audit::CHECKPOINTS_COLLECTION, doc! {})
            .await
            .iter()
            .map(Checkpoint::parse)
            .collect();
    assert!(checkpoints.len() >= 2, "{} checkpoints", checkpoints.len());
    let followed: std::collections::BTreeSet<i64> = checkpoints
        .iter()
        .map(|c| c.prev.as_ref().unwrap().0)
        .collect();
    assert_eq!(
        followed.len(),
        checkpoints.len(),
        "one checkpoint follows each"
    );
    let out = db.cli(&["audit", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
}

/// An idle installation: housekeeping runs every second, but after the
/// last record anyone else appended it seals once; its own records (the
/// checkpoint's copy, its job's outcome) do not call for a new checkpoint
/// at every run.
#[tokio::test]
async fn an_idle_installation_is_not_sealed_anew_at_every_run() {
    let db = TestDb::migrated("audit_idle").await;
    let store = db.store().await;
    let procs = housekeeping_procs(&db, "idle");
    let sealed = append_and_wait_for_seal(&db, 3).await;
    let runs_after = || async {
        audit_coll(&store)
            .count_documents(doc! {
                "_id": { "$gt": sealed.seq },
                "action": "job.completed",
                "details.kind": "housekeeping",
            })
            .await
            .unwrap()
    };
    assert!(
        support::wait_until(Duration::from_secs(30), || async {
            runs_after().await >= 4
        })
        .await,
        "housekeeping kept running"
    );
    drop(procs);
    assert_eq!(
        latest_checkpoint(&db).await.map(|c| c.seq),
        Some(sealed.seq),
        "no checkpoint after {} runs with nothing new",
        runs_after().await
    );
    let (_, audit_check) = audit_health(&db);
    assert_eq!(audit_check["ok"], true, "{audit_check}");
    let out = db.cli(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Four worker processes append job outcomes at once, alongside the
/// leader's takeover record: seq runs 1..=N without a gap or duplicate and
/// the chain verifies.
#[tokio::test]
async fn concurrent_appends_from_several_processes_form_one_gapless_chain() {
    let db = TestDb::migrated("audit_concurrent").await;
    let queue = JobQueue::new(db.store().await);
    let jobs = 120;
    for i in 0..jobs {
        queue
            .enqueue(&NewJob::new(
                "probe",
                format!("audit-{i}"),
                doc! { "record": false },
            ))
            .await
            .unwrap();
    }
    let workers: Vec<Proc> = (0..4)
        .map(|i| {
            Proc::start(
                "worker",
                &db,
                &format!("appender-{i}"),
                &[("CAP_WORKER_CONCURRENCY", "4"), ("CAP_CLAIM_POLL_MS", "20")],
            )
        })
        .collect();
    let store = db.store().await;
    let done = support::wait_until(Duration::from_secs(120), || async {
        audit_coll(&store)
            .count_documents(doc! { "action": "job.completed" })
            .await
            .unwrap()
            == jobs
    })
    .await;
    assert!(
        done,
        "every outcome recorded; log:\n{}",
        workers[0].log_text()
    );
    drop(workers);

    let all = records(&db).await;
    let seqs: Vec<i64> = all.iter().map(|r| r.get_i64("seq").unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=all.len() as i64).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    let actors: std::collections::BTreeSet<&str> =
        all.iter().map(|r| r.get_str("actor").unwrap()).collect();
    assert_eq!(actors.len(), 4, "every process appended: {actors:?}");
    let key = audit::checkpoint::key(&Secrets::new(store.clone(), db.kek()))
        .await
        .unwrap();
    seal(&db, &key, all.len() as i64).await;
    assert_eq!(verify(&db, &key).await, None);
}

/// Group commit inside one process: appends from many tasks of one `Audit`
/// (sharing transactions) and of a second, separate `Audit` (whose groups
/// conflict with the first's on the head) form one gapless chain, and each
/// caller is answered with the `seq` of its own record.
#[tokio::test]
async fn overlapping_appends_of_one_process_share_transactions_and_each_gets_its_own_seq() {
    let db = TestDb::migrated("audit_groups").await;
    let store = db.store().await;
    let (shared, separate) = (Audit::new(store.clone()), Audit::new(store.clone()));
    let mut tasks = Vec::new();
    for task in 0..12 {
        let audit = if task < 8 {
            shared.clone()
        } else {
            separate.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            for i in 0..40 {
                let target = format!("things/{task}-{i}");
                let seq = audit
                    .append(&Event::new("grouped", "thing.changed", target.clone()))
                    .await
                    .unwrap();
                answered.push((seq, target));
            }
            answered
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.extend(task.await.unwrap());
    }
    let all = records(&db).await;
    let seqs: Vec<i64> = all.iter().map(|r| r.get_i64("seq").unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=480).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );
    for (seq, target) in &answered {
        assert_eq!(
            all[*seq as usize - 1].get_str("target").unwrap(),
            target,
            "seq {seq} answered to the caller that appended it"
        );
    }
    // Each task's own records are in the order it appended them.
    for task in 0..12 {
        let mine: Vec<i64> = answered
            .iter()
            .filter(|(_, t)| t.starts_with(&format!("things/{task}-")))
            .map(|(s, _)| *s)
            .collect();
        assert!(
            mine.windows(2).all(|w| w[0] < w[1]),
            "task {task}: {mine:?}"
        );
    }
    let key = audit::checkpoint::key(&Secrets::new(store.clone(), db.kek()))
        .await
        .unwrap();
    seal(&db, &key, 480).await;
    assert_eq!(verify(&db, &key).await, None);
}
