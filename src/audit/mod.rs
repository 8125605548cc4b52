//! The audit log (collection `audit`): one record per state change,
//! `{_id: seq, seq, time, actor, action, target, details, prev_hash, hash}`.
//!
//! - `seq` is a strict total order across every process: an append is one
//!   transaction that increments the head document (`audit_head`), inserts
//!   the record under that number and moves the head's hash. Appends that
//!   overlap in one process share that transaction ([`group_commit`]);
//!   those of several processes conflict on the head and are retried by the
//!   driver, so numbers have no gaps and no duplicates.
//! - `hash` is SHA-256 over the record's fields in a fixed order, including
//!   `prev_hash`, so each record commits to all history before it.
//! - Checkpoints ([`checkpoint`]) seal the chain with a chained HMAC under a
//!   key only KEK holders can read. Whoever can write MongoDB but does not
//!   hold the KEK can neither forge a checkpoint nor rewrite the history one
//!   covers without [`verify`] noticing.
//!
//! What no chain in the database can catch: the newest checkpoints removed
//! together with every record after the one left (a rollback), and the
//! removal of every checkpoint together with the records they covered. The
//! SIEM copy ([`crate::audit::siem`]), which receives every checkpoint as an
//! `audit.checkpoint` record, is the outside witness for those; [`witness`]
//! compares its file with the log.

pub mod checkpoint;
pub mod group_commit;
pub mod siem;
pub mod witness;

pub use checkpoint::{Checkpoint, CHECKPOINTS_COLLECTION, CHECKPOINT_KEY_SECRET};

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt, TryStreamExt};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::ReturnDocument;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::observe::metrics::Metrics;
use crate::store::Store;

pub const AUDIT_COLLECTION: &str = "audit";
pub const AUDIT_HEAD_COLLECTION: &str = "audit_head";
/// `prev_hash` of the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One state change, as a caller describes it.
#[derive(Debug, Clone)]
pub struct Event {
    /// Who: an instance id, `operator`, or (later) an API token's id.
    pub actor: String,
    /// What, dotted: `job.completed`, `kek.rotated`, `leader.takeover`.
    pub action: String,
    /// On what: `jobs/<id>`, `kek/2`, `lease/scheduler`.
    pub target: String,
    pub details: Document,
}

impl Event {
    pub fn new(actor: impl Into<String>, action: &str, target: impl Into<String>) -> Event {
        Event {
            actor: actor.into(),
            action: action.to_string(),
            target: target.into(),
            details: Document::new(),
        }
    }

    pub fn with(mut self, details: Document) -> Event {
        self.details = details;
        self
    }
}

/// Appends records; clones share one [`group_commit::GroupCommit`], so the
/// appends of every clone that overlap in time share transactions.
#[derive(Clone)]
pub struct Audit {
    store: Store,
    metrics: Option<Arc<Metrics>>,
    group: Arc<group_commit::GroupCommit>,
}

impl Audit {
    pub fn new(store: Store) -> Audit {
        Audit {
            store,
            metrics: None,
            group: Arc::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Audit {
        self.metrics = Some(metrics);
        self
    }

    /// Appends `event` as the next record; returns its `seq`. Appends that
    /// overlap in time go out together ([`group_commit`]).
    pub async fn append(&self, event: &Event) -> Result<i64, MongoError> {
        let (store, metrics) = (self.store.clone(), self.metrics.clone());
        self.group
            .append(event, move |events| {
                let (store, metrics) = (store.clone(), metrics.clone());
                async move {
                    let first = commit_group(&store, events.clone()).await?;
                    if let Some(m) = &metrics {
                        m.audit_appends_total.inc_by(events.len() as u64);
                    }
                    Ok(first)
                }
            })
            .await
    }

    /// Appends, logging instead of failing: for events reported after the
    /// change itself has been made (a job outcome, a takeover).
    pub async fn record(&self, event: Event) {
        if let Err(e) = self.append(&event).await {
            tracing::error!(action = %event.action, target = %event.target, error = %crate::store::short(&e), "audit record not written");
        }
    }

    /// The head: the last `seq` and its hash (`0` and the genesis hash when empty).
    pub async fn head(&self) -> Result<(i64, String), MongoError> {
        let head = self
            .store
            .collection(AUDIT_HEAD_COLLECTION)
            .find_one(doc! { "_id": "head" })
            .await?;
        Ok(match head {
            Some(h) => (
                h.get_i64("seq").unwrap_or(0),
                h.get_str("hash").unwrap_or(GENESIS_HASH).to_string(),
            ),
            None => (0, GENESIS_HASH.to_string()),
        })
    }
}

/// Appends `events` as consecutive records in one transaction; returns the
/// first one's `seq`. All carry the database's time as the group went out.
async fn commit_group(store: &Store, events: Vec<Event>) -> Result<i64, MongoError> {
    let time = store.server_now().await?;
    let count = events.len() as i64;
    store
        .ride_through("append audit records", || async {
            let context = (store.clone(), events.clone(), time);
            let mut session = store.client().start_session().await?;
            session
                .start_transaction()
                .and_run(context, |session, (store, events, time)| {
                    async move {
                        // Taking the head first makes concurrent appends
                        // conflict at once; the driver retries the loser.
                        let head = store
                            .collection(AUDIT_HEAD_COLLECTION)
                            .find_one_and_update(
                                doc! { "_id": "head" },
                                doc! { "$inc": { "seq": count } },
                            )
                            .upsert(true)
                            .return_document(ReturnDocument::After)
                            .session(&mut *session)
                            .await?
                            .expect("an upsert returns the document");
                        let first = head.get_i64("seq").unwrap_or(count) - count + 1;
                        let mut prev_hash =
                            head.get_str("hash").unwrap_or(GENESIS_HASH).to_string();
                        let mut records = Vec::with_capacity(events.len());
                        for (i, event) in events.iter().enumerate() {
                            let record = record(first + i as i64, *time, event, &prev_hash);
                            prev_hash = record.get_str("hash").expect("hashed").to_string();
                            records.push(record);
                        }
                        store
                            .collection(AUDIT_COLLECTION)
                            .insert_many(records)
                            .session(&mut *session)
                            .await?;
                        store
                            .collection(AUDIT_HEAD_COLLECTION)
                            .update_one(
                                doc! { "_id": "head" },
                                doc! { "$set": { "hash": &prev_hash } },
                            )
                            .session(&mut *session)
                            .await?;
                        Ok(first)
                    }
                    .boxed()
                })
                .await
        })
        .await
}

/// A record as stored, its hash computed.
pub fn record(seq: i64, time: DateTime, event: &Event, prev_hash: &str) -> Document {
    let mut d = doc! {
        "seq": seq,
        "time": time,
        "actor": &event.actor,
        "action": &event.action,
        "target": &event.target,
        "details": &event.details,
        "prev_hash": prev_hash,
    };
    let hash = content_hash(&d);
    d.insert("hash", hash);
    let mut stored = doc! { "_id": seq };
    stored.extend(d);
    stored
}

/// SHA-256 over the hashed fields, in their fixed order, as BSON.
fn content_hash(fields: &Document) -> String {
    let bytes = mongodb::bson::to_vec(fields).expect("a document serializes");
    hex(&Sha256::digest(bytes))
}

/// The hash a stored record should carry, from its own fields.
pub(crate) fn recompute(stored: &Document) -> Option<String> {
    let mut d = Document::new();
    for field in [
        "seq",
        "time",
        "actor",
        "action",
        "target",
        "details",
        "prev_hash",
    ] {
        d.insert(field, stored.get(field)?.clone());
    }
    Some(content_hash(&d))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum Tampering {
    /// A record's contents no longer match its hash.
    Edited { seq: i64, detail: String },
    /// A sequence number is missing.
    Deleted { seq: i64 },
    /// Records are out of order.
    Reordered { seq: i64, detail: String },
    /// A record that was never appended sits in the chain.
    Inserted { seq: i64, detail: String },
    /// The chain ends before the last checkpoint (or its head).
    Truncated {
        last_seq: i64,
        expected_at_least: i64,
    },
    /// The chain was rewritten consistently up to a checkpoint, but the
    /// checkpoint (which cannot be forged without the KEK) disagrees.
    Rewritten { checkpoint_seq: i64 },
    /// A checkpoint's MAC is wrong, or it was made under another key.
    BadCheckpoint { checkpoint_seq: i64, detail: String },
    /// A checkpoint does not follow the one before it: checkpoints between
    /// them were removed.
    CheckpointGap { checkpoint_seq: i64, detail: String },
    /// The head does not match the last record.
    BadHead { detail: String },
}

impl std::fmt::Display for Tampering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tampering::Edited { seq, detail } => write!(f, "record {seq} was edited: {detail}"),
            Tampering::Deleted { seq } => write!(f, "record {seq} is missing: it was deleted"),
            Tampering::Reordered { seq, detail } => {
                write!(f, "record {seq} is out of order: {detail}")
            }
            Tampering::Inserted { seq, detail } => write!(f, "record {seq} was inserted: {detail}"),
            Tampering::Truncated {
                last_seq,
                expected_at_least,
            } => write!(
                f,
                "the chain was truncated: it ends at record {last_seq}, but was sealed up to record {expected_at_least}"
            ),
            Tampering::Rewritten { checkpoint_seq } => write!(
                f,
                "history up to record {checkpoint_seq} was rewritten: it no longer matches the checkpoint sealing it"
            ),
            Tampering::BadCheckpoint {
                checkpoint_seq,
                detail,
            } => write!(f, "checkpoint at record {checkpoint_seq} is not authentic: {detail}"),
            Tampering::CheckpointGap {
                checkpoint_seq,
                detail,
            } => write!(f, "the checkpoint chain is broken at record {checkpoint_seq}: {detail}"),
            Tampering::BadHead { detail } => write!(f, "the head does not match the chain: {detail}"),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub records: i64,
    pub checkpoints: i64,
    pub last_seq: i64,
    pub problem: Option<Tampering>,
}

/// Walks the whole chain and every checkpoint, in `seq` order, holding only
/// the current record, the one before it and the one after it: memory stays
/// flat however long the log is. Stops at the first problem.
/// `progress(done)` is called every few thousand records.
pub async fn verify(
    store: &Store,
    checkpoint_key: Option<&[u8]>,
    mut progress: impl FnMut(i64),
) -> Result<VerifyReport, MongoError> {
    // Everything the head counted at the start must be there at the end,
    // and the record it names must carry its hash.
    let head_at_start = Audit::new(store.clone()).head().await?;
    let records = store
        .collection(AUDIT_COLLECTION)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(2000)
        .await?;
    let mut records = std::pin::pin!(records.peekable());
    let mut checkpoints = std::pin::pin!(store
        .collection(CHECKPOINTS_COLLECTION)
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .batch_size(2000)
        .await?
        .peekable());

    let mut report = VerifyReport {
        records: 0,
        checkpoints: 0,
        last_seq: 0,
        problem: None,
    };
    let mut prev_hash = GENESIS_HASH.to_string();
    let mut prev_prev_hash: Option<String> = None;
    let mut last_checkpoint: Option<Checkpoint> = None;
    let fail = |mut report: VerifyReport, t: Tampering| {
        report.problem = Some(t);
        Ok(report)
    };

    while let Some(r) = records.next().await {
        let r = r?;
        let expected = report.last_seq + 1;
        let Some(Bson::Int64(id)) = r.get("_id").cloned() else {
            return fail(
                report,
                Tampering::Inserted {
                    seq: expected,
                    detail: format!(
                        "a record with id {} that no append gives",
                        r.get("_id").map(|b| b.to_string()).unwrap_or_default()
                    ),
                },
            );
        };
        if id > expected {
            return fail(report, Tampering::Deleted { seq: expected });
        }
        let hash = r.get_str("hash").unwrap_or_default().to_string();
        let own_prev = r.get_str("prev_hash").unwrap_or_default().to_string();
        let self_ok = recompute(&r).as_deref() == Some(hash.as_str());
        let seq_ok = r.get_i64("seq").ok() == Some(id);
        let links = own_prev == prev_hash;
        if !(self_ok && seq_ok && links) {
            let next_hash = match records.as_mut().peek().await {
                Some(Ok(n)) => n.get_str("hash").ok().map(str::to_string),
                _ => None,
            };
            let problem = if prev_prev_hash.as_deref() == Some(own_prev.as_str()) {
                Tampering::Inserted {
                    seq: id - 1,
                    detail: format!("record {id} links past it, to record {}", id - 2),
                }
            } else if next_hash.as_deref() == Some(own_prev.as_str()) {
                Tampering::Reordered {
                    seq: id,
                    detail: format!("it links to record {} that follows it", id + 1),
                }
            } else if self_ok && !seq_ok {
                Tampering::Reordered {
                    seq: id,
                    detail: format!(
                        "it carries seq {}",
                        r.get("seq").map(|b| b.to_string()).unwrap_or_default()
                    ),
                }
            } else if !self_ok {
                Tampering::Edited {
                    seq: id,
                    detail: "its contents do not match its hash".into(),
                }
            } else {
                Tampering::Edited {
                    seq: id - 1,
                    detail: format!("record {id} does not link to it (it was rehashed)"),
                }
            };
            return fail(report, problem);
        }
        // Checkpoints at this seq: authentic, following the one before, and
        // agreeing with the record.
        while let Some(Ok(cp)) = checkpoints.as_mut().peek().await {
            let cp = Checkpoint::parse(cp);
            if cp.seq > id {
                break;
            }
            checkpoints.next().await.expect("peeked")?;
            report.checkpoints += 1;
            let Some(key) = checkpoint_key else {
                return fail(
                    report,
                    Tampering::BadCheckpoint {
                        checkpoint_seq: cp.seq,
                        detail: format!(
                            "the checkpoint key (secret {CHECKPOINT_KEY_SECRET}) is missing"
                        ),
                    },
                );
            };
            if let Err(detail) = cp.authenticate(key) {
                return fail(
                    report,
                    Tampering::BadCheckpoint {
                        checkpoint_seq: cp.seq,
                        detail,
                    },
                );
            }
            if let Err(detail) = cp.follows(last_checkpoint.as_ref()) {
                return fail(
                    report,
                    Tampering::CheckpointGap {
                        checkpoint_seq: cp.seq,
                        detail,
                    },
                );
            }
            if cp.seq != id || cp.hash != hash {
                return fail(
                    report,
                    Tampering::Rewritten {
                        checkpoint_seq: cp.seq,
                    },
                );
            }
            last_checkpoint = Some(cp);
        }
        if id == head_at_start.0 && hash != head_at_start.1 {
            return fail(
                report,
                Tampering::BadHead {
                    detail: format!("it names record {id} with another hash than the record's"),
                },
            );
        }
        prev_prev_hash = Some(std::mem::replace(&mut prev_hash, hash));
        report.records += 1;
        report.last_seq = id;
        if report.records % 5000 == 0 {
            progress(report.records);
        }
    }
    // Anything sealed beyond where the chain ends was cut off (unless it was
    // appended and sealed while we walked: then its record exists now).
    if let Some(cp) = checkpoints.next().await {
        let checkpoint_seq = cp?.get_i64("_id").unwrap_or(0);
        let appended_since = store
            .collection(AUDIT_COLLECTION)
            .find_one(doc! { "_id": checkpoint_seq })
            .await?
            .is_some();
        if !appended_since {
            return fail(
                report.clone(),
                Tampering::Truncated {
                    last_seq: report.last_seq,
                    expected_at_least: checkpoint_seq,
                },
            );
        }
    }
    if report.last_seq < head_at_start.0 {
        return fail(
            report.clone(),
            Tampering::Truncated {
                last_seq: report.last_seq,
                expected_at_least: head_at_start.0,
            },
        );
    }
    // Records the head does not count: it was moved back (or removed).
    let (head_now, _) = Audit::new(store.clone()).head().await?;
    if head_now < report.last_seq {
        return fail(
            report.clone(),
            Tampering::BadHead {
                detail: format!(
                    "it is at record {head_now}, but the records run to {}",
                    report.last_seq
                ),
            },
        );
    }
    // Checkpoints were made (the log copies them) but none is left.
    if report.checkpoints == 0 && checkpoint::copied(store).await? {
        return fail(
            report.clone(),
            Tampering::CheckpointGap {
                checkpoint_seq: 0,
                detail: "every checkpoint is gone, but the log holds copies of them".into(),
            },
        );
    }
    progress(report.records);
    Ok(report)
}

/// Prints verification progress on a terminal: records done of the total
/// and the rate, rewritten in place at most every 200 ms.
pub fn terminal_progress(total: u64) -> impl FnMut(i64) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut shown = Instant::now() - Duration::from_secs(1);
    move |done| {
        if !tty || shown.elapsed() < Duration::from_millis(200) {
            return;
        }
        shown = Instant::now();
        let rate = done as f64 / started.elapsed().as_secs_f64().max(0.001);
        eprint!("\rverified {done} of ~{total} records ({rate:.0}/s)   ");
    }
}

/// Up to `limit` records after `after`, in `seq` order.
pub async fn read_range(
    store: &Store,
    after: i64,
    limit: i64,
) -> Result<Vec<Document>, MongoError> {
    store
        .collection(AUDIT_COLLECTION)
        .find(doc! { "_id": { "$gt": after } })
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await
}
/// About how many records the log holds (for a progress bar).
pub async fn estimated_count(store: &Store) -> Result<u64, MongoError> {
    store
        .collection(AUDIT_COLLECTION)
        .estimated_document_count()
        .await
}

/// Up to `limit` records matching `filter`, in `seq` order (the API's
/// audit log pages).
pub async fn find(
    store: &Store,
    filter: Document,
    limit: i64,
) -> Result<Vec<Document>, MongoError> {
    store
        .collection(AUDIT_COLLECTION)
        .find(filter)
        .sort(doc! { "_id": 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await
}
