//! The audit log against a real server: a gapless order across processes,
//! and `audit verify` catching each kind of tampering.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, bin, Proc, TestDb};
use certautopilot::audit::{self, Audit, Event, Tampering};
use certautopilot::crypto::secrets::Secrets;
use certautopilot::queue::jobs::{JobQueue, NewJob};
use futures::TryStreamExt;
use mongodb::bson::{doc, Document};

/// `n` records appended in this process, sealed by a checkpoint at `seal_at`.
async fn chain(db: &TestDb, n: i64, seal_at: i64) -> Vec<u8> {
    let store = db.store().await;
    let audit = Audit::new(store.clone());
    let secrets = Secrets::new(store.clone(), db.kek());
    let key = audit::checkpoint_key(&secrets).await.unwrap().to_vec();
    for i in 1..=n {
        let event =
            Event::new("test", "thing.changed", format!("things/{i}")).with(doc! { "i": i });
        assert_eq!(audit.append(&event).await.unwrap(), i);
        if i == seal_at {
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
    let mut cp = audit::checkpoint_fields(
        key,
        seq,
        record.get_str("hash").unwrap(),
        store.server_now().await.unwrap(),
    );
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
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .output()
        .unwrap();
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
    let out = Command::new(bin())
        .args(["audit", "verify"])
        .env_clear()
        .env("CAP_MONGO_URI", &db.uri)
        .env("CAP_KEK_FILE", &db.kek_file)
        .output()
        .unwrap();
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
    let key = audit::checkpoint_key(&Secrets::new(store.clone(), db.kek()))
        .await
        .unwrap();
    seal(&db, &key, all.len() as i64).await;
    assert_eq!(verify(&db, &key).await, None);
}
