//! The `certificates` collection: the only code that writes a certificate
//! document.
//!
//! Reads for the workers come back as [`Certificate`]; the API renders the
//! stored document itself. Writes made on behalf of a job or a leader are
//! handed back as a [`FencedWrite`] for the caller to make under its fence
//! ([`crate::queue::jobs::JobLease::fenced`],
//! [`crate::queue::lease::Leases::write_as_leader`]); the API's own writes
//! are made here directly.

use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::ReturnDocument;

use super::fence::FencedWrite;
use super::Store;
use crate::domain::certificate::{Certificate, CertificateStatus, Current};
use crate::domain::drift::{DriftState, Endpoint};
use crate::domain::renewal::{ari_due_ms, AriWindow};

pub const CERTIFICATES: &str = "certificates";

/// How many fingerprints of earlier issues a certificate keeps, to tell a
/// stale endpoint from a foreign one.
const FINGERPRINTS_KEPT: i32 = 50;

/// The certificate `id`, or `None` once it has been deleted.
pub async fn find(store: &Store, id: &str) -> Result<Option<Certificate>, MongoError> {
    Ok(find_document(store, id).await?.map(|d| parse(&d)))
}

/// The stored document of certificate `id`.
pub async fn find_document(store: &Store, id: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(CERTIFICATES)
        .find_one(doc! { "_id": id })
        .await
}

/// The stored document of certificate `id` of `project_id`.
pub async fn in_project(
    store: &Store,
    project_id: &str,
    id: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(CERTIFICATES)
        .find_one(doc! { "_id": id, "project_id": project_id })
        .await
}

/// One page of a project's certificates (see [`Store::page`]).
pub async fn page(
    store: &Store,
    project_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(
            CERTIFICATES,
            doc! { "project_id": project_id },
            after,
            limit,
        )
        .await
}

/// What the workers read of a certificate document.
pub fn parse(d: &Document) -> Certificate {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let current = d.get_document("current").ok().map(|c| Current {
        serial: c.get_str("serial").unwrap_or_default().to_string(),
        fingerprint_sha256: c
            .get_str("fingerprint_sha256")
            .unwrap_or_default()
            .to_string(),
        chain_pem: c.get_str("chain_pem").unwrap_or_default().to_string(),
        revoked: c.get_datetime("revoked_at").is_ok(),
        order_id: c.get_str("order_id").unwrap_or_default().to_string(),
        not_after_ms: c
            .get_datetime("not_after")
            .map(|t| t.timestamp_millis())
            .unwrap_or(0),
    });
    Certificate {
        id: s("_id"),
        project_id: s("project_id"),
        dns_names: strings(d, "dns_names"),
        issuer_id: s("issuer_id"),
        key_algorithm: d
            .get_str("key_algorithm")
            .unwrap_or("ecdsa-p256")
            .to_string(),
        renew_before_secs: d.get_i64("renew_before_secs").ok(),
        status: d.get_str("status").ok().and_then(CertificateStatus::parse),
        current,
        consecutive_failures: int(d, "consecutive_failures"),
        has_ari_window: matches!(d.get("ari"), Some(Bson::Document(_))),
        issued_fingerprints: strings(d, "issued_fingerprints"),
        target_ids: targets(d).into_iter().map(|(id, _)| id).collect(),
        targets_mac: d.get_str(TARGETS_MAC).ok().map(str::to_string),
    }
}

/// The field holding the binding MAC of a certificate's targets.
pub const TARGETS_MAC: &str = "targets_mac";

/// The targets a certificate goes to, as (id, name).
pub fn targets(d: &Document) -> Vec<(String, String)> {
    d.get_array("targets")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(|t| {
                    let s = |f: &str| t.get_str(f).unwrap_or_default().to_string();
                    (s("id"), s("name"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every certificate that names targets, with its project (migration 17
/// binds their lists).
pub async fn with_targets(store: &Store) -> Result<Vec<Document>, MongoError> {
    store
        .collection(CERTIFICATES)
        .find(doc! { "targets": { "$exists": true, "$ne": [] } })
        .projection(doc! { "_id": 1, "project_id": 1, "targets": 1, TARGETS_MAC: 1 })
        .await?
        .try_collect()
        .await
}

/// Stores the binding MAC of certificate `id`'s targets as they are
/// (migration 17).
pub async fn bind_targets(store: &Store, id: &str, targets_mac: &str) -> Result<(), MongoError> {
    store
        .collection(CERTIFICATES)
        .update_one(
            doc! { "_id": id },
            doc! { "$set": { TARGETS_MAC: targets_mac } },
        )
        .await?;
    Ok(())
}

fn target_documents(targets: &[(String, String)]) -> Vec<Document> {
    targets
        .iter()
        .map(|(id, name)| doc! { "id": id, "name": name })
        .collect()
}

fn strings(d: &Document, field: &str) -> Vec<String> {
    d.get_array(field)
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn int(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => *n as i64,
        _ => 0,
    }
}

/// A certificate as declared through the API.
pub struct NewCertificate<'a> {
    pub id: &'a str,
    pub project_id: &'a str,
    pub name: &'a str,
    pub dns_names: &'a [String],
    pub issuer_id: &'a str,
    pub key_algorithm: &'a str,
    pub renew_before_secs: Option<i64>,
    pub replace_on_revoke: bool,
    pub endpoints: &'a [Endpoint],
    /// Distribution targets, as (id, name).
    pub targets: &'a [(String, String)],
    /// Their binding MAC ([`crate::crypto::binding`]).
    pub targets_mac: &'a str,
}

/// Stores a new certificate at `now`, `pending` with its first issue
/// request counted; returns the stored document.
pub async fn insert(
    store: &Store,
    new: NewCertificate<'_>,
    now: DateTime,
) -> Result<Document, MongoError> {
    let mut record = doc! {
        "_id": new.id,
        "project_id": new.project_id,
        "name": new.name,
        "dns_names": new.dns_names,
        "issuer_id": new.issuer_id,
        "key_algorithm": new.key_algorithm,
        "status": CertificateStatus::Pending.as_str(),
        "last_error": Bson::Null,
        "issue_requests": 1i64,
        "issued_count": 0i64,
        "replace_on_revoke": new.replace_on_revoke,
        "endpoints": endpoint_documents(new.endpoints),
        "targets": target_documents(new.targets),
        TARGETS_MAC: new.targets_mac,
        "created_at": now,
    };
    if !new.endpoints.is_empty() {
        // The first scan at the scheduler's next tick.
        record.insert("drift_next_at", now);
    }
    if let Some(secs) = new.renew_before_secs {
        record.insert("renew_before_secs", secs);
    }
    store
        .insert("create certificate", CERTIFICATES, record.clone())
        .await?;
    Ok(record)
}

/// Counts one more issue request of certificate `id` of `project_id`;
/// returns its number, or `None` when there is no such certificate.
pub async fn count_issue_request(
    store: &Store,
    project_id: &str,
    id: &str,
) -> Result<Option<i64>, MongoError> {
    let updated = store
        .collection(CERTIFICATES)
        .find_one_and_update(
            doc! { "_id": id, "project_id": project_id },
            doc! { "$inc": { "issue_requests": 1i64 }, "$currentDate": { "updated_at": true } },
        )
        .return_document(ReturnDocument::After)
        .await?;
    Ok(updated.map(|d| d.get_i64("issue_requests").unwrap_or(1)))
}

/// Replaces the endpoints scanned for drift and has them scanned at the
/// scheduler's next tick (at `now`); what was seen of endpoints still listed
/// is kept, with its summary, until the scan says more. Returns the updated
/// document, or `None` when there is no such certificate.
pub async fn set_endpoints(
    store: &Store,
    project_id: &str,
    id: &str,
    endpoints: &[Endpoint],
    now: DateTime,
) -> Result<Option<Document>, MongoError> {
    let Some(cert) = in_project(store, project_id, id).await? else {
        return Ok(None);
    };
    let update = if endpoints.is_empty() {
        doc! {
            "$set": { "endpoints": [] },
            "$unset": { "drift": "", "drift_state": "", "drift_next_at": "", "drift_checked_at": "" },
            "$currentDate": { "updated_at": true },
        }
    } else {
        let kept: Vec<Document> = drift_entries(&cert)
            .filter(|d| endpoint_of(d).is_some_and(|e| endpoints.contains(&e)))
            .cloned()
            .collect();
        let summary = kept
            .iter()
            .filter_map(|d| d.get_str("state").ok().and_then(DriftState::parse))
            .max();
        let mut set = doc! { "endpoints": endpoint_documents(endpoints), "drift": &kept, "drift_next_at": now };
        match summary {
            Some(s) => {
                set.insert("drift_state", s.as_str());
                doc! { "$set": set, "$currentDate": { "updated_at": true } }
            }
            None => doc! {
                "$set": set,
                "$unset": { "drift_state": "" },
                "$currentDate": { "updated_at": true },
            },
        }
    };
    store
        .collection(CERTIFICATES)
        .find_one_and_update(doc! { "_id": id, "project_id": project_id }, update)
        .return_document(ReturnDocument::After)
        .await
}

/// Replaces the distribution targets of certificate `id` of `project_id`
/// (as (id, name)); an issued certificate is then delivered to the ones it
/// has not reached at the scheduler's next tick (at `now`). The updated
/// document, or `None` when there is no such certificate.
pub async fn set_targets(
    store: &Store,
    project_id: &str,
    id: &str,
    targets: &[(String, String)],
    targets_mac: &str,
    now: DateTime,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(CERTIFICATES)
        .find_one_and_update(
            doc! { "_id": id, "project_id": project_id },
            doc! {
                "$set": {
                    "targets": target_documents(targets),
                    TARGETS_MAC: targets_mac,
                    DISTRIBUTE_NEXT_AT: now,
                },
                "$currentDate": { "updated_at": true },
            },
        )
        .return_document(ReturnDocument::After)
        .await
}

/// One page of the certificates of `project_id` that go to `target_id`.
pub async fn page_naming_target(
    store: &Store,
    project_id: &str,
    target_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(
            CERTIFICATES,
            doc! { "project_id": project_id, "targets.id": target_id },
            after,
            limit,
        )
        .await
}

/// How many certificates of `project_id` go to target `target_id`.
pub async fn count_naming_target(
    store: &Store,
    project_id: &str,
    target_id: &str,
) -> Result<u64, MongoError> {
    store
        .collection(CERTIFICATES)
        .count_documents(doc! { "project_id": project_id, "targets.id": target_id })
        .await
}

/// The expiry notice last raised for the current serial, in days before
/// its end (0: expired); cleared when a new serial is stored.
pub const EXPIRY_NOTICE: &str = "expiry_notice_days";

/// A certificate near or past its end, as the expiry notices read it.
#[derive(Debug, Clone)]
pub struct Expiring {
    pub id: String,
    pub project_id: String,
    pub serial: String,
    pub not_after_ms: i64,
    /// The notice already raised for this serial.
    pub noticed_days: Option<u32>,
}

/// Up to `batch` certificates owed an expiry notice at `now`, the soonest
/// expiring first: not revoked, and within one of `thresholds_days` (0:
/// expired) of their end without a notice of that threshold or a nearer
/// one. Only those owed one are read, so the ones already told never
/// crowd out the rest.
pub async fn owed_expiry_notice(
    store: &Store,
    now: DateTime,
    thresholds_days: &[u32],
    batch: i64,
) -> Result<Vec<Expiring>, MongoError> {
    let reached: Vec<Document> = thresholds_days
        .iter()
        .map(|days| {
            let at = DateTime::from_millis(now.timestamp_millis() + i64::from(*days) * 86_400_000);
            doc! {
                "current.not_after": { "$lte": at },
                EXPIRY_NOTICE: { "$not": { "$lte": *days as i32 } },
            }
        })
        .collect();
    let found: Vec<Document> = store
        .collection(CERTIFICATES)
        .find(doc! {
            "current.revoked_at": { "$exists": false },
            "$or": reached,
        })
        .sort(doc! { "current.not_after": 1 })
        .limit(batch)
        .projection(doc! { "_id": 1, "project_id": 1, "current.serial": 1, "current.not_after": 1, EXPIRY_NOTICE: 1 })
        .await?
        .try_collect()
        .await?;
    Ok(found
        .iter()
        .filter_map(|d| {
            let current = d.get_document("current").ok()?;
            Some(Expiring {
                id: d.get_str("_id").ok()?.to_string(),
                project_id: d.get_str("project_id").unwrap_or_default().to_string(),
                serial: current.get_str("serial").ok()?.to_string(),
                not_after_ms: current.get_datetime("not_after").ok()?.timestamp_millis(),
                noticed_days: match d.get(EXPIRY_NOTICE) {
                    Some(Bson::Int32(n)) => Some(*n as u32),
                    Some(Bson::Int64(n)) => Some(*n as u32),
                    _ => None,
                },
            })
        })
        .collect())
}

/// The notice of `days` (0: expired) was raised for `serial`.
pub fn expiry_noticed(id: &str, serial: &str, days: u32) -> FencedWrite {
    update(
        doc! { "_id": id, "current.serial": serial },
        doc! { "$set": { EXPIRY_NOTICE: days as i32 } },
    )
}

/// Set when a certificate's current serial may not have reached all its
/// targets (just issued, or its targets changed); the scheduler leader's
/// distribution sweep enqueues what is missing and clears it.
pub const DISTRIBUTE_NEXT_AT: &str = "distribute_next_at";

/// The sweep's mark is cleared, unless it was set again since `seen`.
pub fn distribution_swept(id: &str, seen: DateTime) -> FencedWrite {
    update(
        doc! { "_id": id, DISTRIBUTE_NEXT_AT: seen },
        doc! { "$unset": { DISTRIBUTE_NEXT_AT: "" } },
    )
}

/// Up to `batch` certificates whose `field` (an indexed time) has passed by
/// the database's clock, the longest due first, with `projection`; and that
/// clock's now.
pub async fn due(
    store: &Store,
    field: &str,
    batch: i64,
    projection: Document,
) -> Result<(DateTime, Vec<Document>), MongoError> {
    let now = store.server_now().await?;
    let due = store
        .collection(CERTIFICATES)
        .find(doc! { field: { "$lte": now } })
        .sort(doc! { field: 1 })
        .limit(batch)
        .projection(projection)
        .await?
        .try_collect()
        .await?;
    Ok((now, due))
}

/// The first `limit` certificates by `field` ascending (or descending), with
/// `projection`, among those that have it: for the metrics' bounded series.
pub async fn first_by(
    store: &Store,
    filter: Document,
    sort: Document,
    limit: i64,
    projection: Document,
) -> Result<Vec<Document>, MongoError> {
    store
        .collection(CERTIFICATES)
        .find(filter)
        .sort(sort)
        .limit(limit)
        .projection(projection)
        .await?
        .try_collect()
        .await
}

fn update(filter: Document, update: Document) -> FencedWrite {
    FencedWrite::UpdateOne {
        collection: CERTIFICATES.to_string(),
        filter,
        update,
        upsert: false,
    }
}

/// A first issue is under way (a certificate in service keeps its status
/// while it renews: the caller asks only for one without a current one).
pub fn mark_issuing(id: &str) -> FencedWrite {
    update(
        doc! { "_id": id },
        doc! { "$set": { "status": CertificateStatus::Issuing.as_str() }, "$currentDate": { "updated_at": true } },
    )
}

/// A failed issue attempt, as stored with the certificate so that it
/// survives restarts and re-claims.
pub struct Failure<'a> {
    pub reason: &'a str,
    pub status: CertificateStatus,
    pub consecutive_failures: i64,
    pub retry_at: DateTime,
    /// Hand the certificate back to the renewal scan at `retry_at` (its job
    /// gave up, and it has a certificate in service to renew).
    pub rescan: bool,
}

pub fn record_failure(id: &str, failure: &Failure<'_>) -> FencedWrite {
    let mut set = doc! {
        "last_error": failure.reason,
        "status": failure.status.as_str(),
        "consecutive_failures": failure.consecutive_failures,
        "retry_at": failure.retry_at,
    };
    if failure.rescan {
        set.insert("renewal_next_at", failure.retry_at);
    }
    update(
        doc! { "_id": id },
        doc! { "$set": set, "$currentDate": { "updated_at": true, "last_failure_at": true } },
    )
}

/// A certificate the CA issued, and when to renew it.
pub struct Issued<'a> {
    pub serial: &'a str,
    pub fingerprint_sha256: &'a str,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub chain_pem: &'a str,
    pub key_secret: &'a str,
    pub order_id: &'a str,
    pub renewal_due: DateTime,
    /// The CA's window (ARI) and when to ask for it again.
    pub ari: Option<(&'a AriWindow, DateTime)>,
    pub renewal: bool,
}

/// Stores an issued certificate as the current one: one update, and none
/// at all when a resumed run stored this serial already, so the counters
/// move once per certificate issued.
pub fn record_issued(id: &str, issued: &Issued<'_>) -> FencedWrite {
    let mut set = schedule_fields(issued.renewal_due);
    // A new serial has had no expiry notice yet.
    let mut unset = doc! { "retry_at": "", "renewal_job_id": "", EXPIRY_NOTICE: "" };
    let ari = match &issued.ari {
        Some((window, next_fetch)) => {
            set.insert("ari_next_fetch_at", *next_fetch);
            Bson::Document(window_document(window))
        }
        None => {
            unset.insert("ari_next_fetch_at", "");
            Bson::Null
        }
    };
    set.extend(doc! {
        "ari": ari,
        "status": CertificateStatus::Issued.as_str(),
        "last_error": Bson::Null,
        "consecutive_failures": 0i64,
        "current": {
            "serial": issued.serial,
            "fingerprint_sha256": issued.fingerprint_sha256,
            "not_before": DateTime::from_millis(issued.not_before_ms),
            "not_after": DateTime::from_millis(issued.not_after_ms),
            "chain_pem": issued.chain_pem,
            "key_secret": issued.key_secret,
            "order_id": issued.order_id,
        },
    });
    update(
        doc! { "_id": id, "current.serial": { "$ne": issued.serial } },
        doc! {
            "$set": set,
            "$unset": unset,
            "$push": { "issued_fingerprints": { "$each": [issued.fingerprint_sha256], "$slice": -FINGERPRINTS_KEPT } },
            "$inc": { "issued_count": 1i64, "renewal_count": if issued.renewal { 1i64 } else { 0 } },
            // The new serial goes to the certificate's targets at the
            // scheduler's next tick.
            "$currentDate": { "updated_at": true, "issued_at": true, DISTRIBUTE_NEXT_AT: true },
        },
    )
}

/// The fields that schedule a certificate's next renewal at `due`.
pub fn schedule_fields(due: DateTime) -> Document {
    doc! { "renewal_due_at": due, "renewal_next_at": due }
}

/// The current certificate `serial` was revoked for `reason`: no renewal of it.
pub fn record_revoked(id: &str, serial: &str, reason: &str) -> FencedWrite {
    update(
        doc! { "_id": id, "current.serial": serial },
        doc! {
            "$set": { "status": CertificateStatus::Revoked.as_str(), "current.revocation_reason": reason },
            "$unset": { "renewal_next_at": "" },
            "$currentDate": { "current.revoked_at": true, "updated_at": true },
        },
    )
}

/// The job that issues a revoked certificate's replacement.
pub fn record_replacement_job(id: &str, job_id: ObjectId) -> FencedWrite {
    update(
        doc! { "_id": id },
        doc! { "$set": { "replacement_job_id": job_id } },
    )
}

/// A renewal of `serial` is queued as `job_id`: the scan stops finding the
/// certificate. Only if it still holds that serial: a renewal that finished
/// in between has set the next window already.
pub fn renewal_enqueued(id: &str, serial: &str, job_id: ObjectId) -> FencedWrite {
    update(
        doc! { "_id": id, "current.serial": serial },
        doc! {
            "$unset": { "renewal_next_at": "" },
            "$set": { "renewal_job_id": job_id },
        },
    )
}

/// Moves periodic work's next time `field` from `due_at` to `next`, only
/// while it is still `due_at` (a job may have set it itself meanwhile).
pub fn move_next(id: &str, field: &str, due_at: DateTime, next: DateTime) -> FencedWrite {
    update(
        doc! { "_id": id, field: due_at },
        doc! { "$set": { field: next } },
    )
}

/// The CA no longer offers ARI for `serial`: the window last given stands,
/// and nobody asks again.
pub fn stop_ari_refresh(id: &str, serial: &str) -> FencedWrite {
    update(
        doc! { "_id": id, "current.serial": serial },
        doc! { "$unset": { "ari_next_fetch_at": "" } },
    )
}

/// What a certificate records of its CA's window.
pub fn window_document(w: &AriWindow) -> Document {
    doc! {
        "window_start": DateTime::from_millis(w.start_ms),
        "window_end": DateTime::from_millis(w.end_ms),
        "explanation_url": w.explanation_url.clone(),
        "refresh_after_secs": w.refresh_after.as_secs() as i64,
    }
}

/// The certificate fields a (re)fetched window sets at `now`: always (the
/// window, the due time shown, the next fetch), and only while the renewal
/// is not queued yet (the scan's mark).
pub fn refreshed_fields(
    certificate_id: &str,
    serial: &str,
    w: &AriWindow,
    now: DateTime,
) -> (Document, Document) {
    let due = DateTime::from_millis(ari_due_ms(certificate_id, serial, w.start_ms, w.end_ms));
    let next_fetch =
        DateTime::from_millis(now.timestamp_millis() + w.refresh_after.as_millis() as i64);
    (
        doc! { "ari": window_document(w), "renewal_due_at": due, "ari_next_fetch_at": next_fetch },
        doc! { "renewal_next_at": due },
    )
}

/// A refreshed ARI window of `serial` at `now` ([`refreshed_fields`]): the
/// second write lands only while no renewal is queued yet.
pub fn ari_refreshed(id: &str, serial: &str, w: &AriWindow, now: DateTime) -> [FencedWrite; 2] {
    let (always, unless_queued) = refreshed_fields(id, serial, w, now);
    [
        update(
            doc! { "_id": id, "current.serial": serial },
            doc! { "$set": always },
        ),
        update(
            doc! { "_id": id, "current.serial": serial, "renewal_next_at": { "$exists": true } },
            doc! { "$set": unless_queued },
        ),
    ]
}

/// One endpoint's state at a drift scan.
pub struct DriftEntry<'a> {
    pub endpoint: &'a Endpoint,
    pub state: DriftState,
    pub served_fingerprint_sha256: Option<&'a str>,
    pub served_serial: Option<&'a str>,
    pub served_not_after: Option<DateTime>,
    pub error: Option<&'a str>,
    pub checked_at: DateTime,
    pub since: DateTime,
}

/// Records a drift scan of the certificate as it was read before the scan
/// (`scanned`): only while its endpoints are still those, so a scan that
/// raced with a change of them writes nothing (the change scans again).
pub fn record_drift(
    scanned: &Document,
    entries: &[DriftEntry<'_>],
    checked_at: DateTime,
) -> FencedWrite {
    let drift: Vec<Document> = entries.iter().map(drift_document).collect();
    let summary = entries.iter().map(|e| e.state).max();
    let mut set = doc! { "drift": drift, "drift_checked_at": checked_at };
    let changes = match summary {
        Some(s) => {
            set.insert("drift_state", s.as_str());
            doc! { "$set": set }
        }
        None => doc! { "$set": set, "$unset": { "drift_state": "" } },
    };
    let id = scanned.get_str("_id").unwrap_or_default();
    let endpoints = scanned.get("endpoints").cloned().unwrap_or(Bson::Null);
    update(doc! { "_id": id, "endpoints": endpoints }, changes)
}

fn drift_document(e: &DriftEntry<'_>) -> Document {
    let mut d = endpoint_document(e.endpoint);
    if let Some(f) = e.served_fingerprint_sha256 {
        d.insert("served_fingerprint_sha256", f);
    }
    if let Some(s) = e.served_serial {
        d.insert("served_serial", s);
    }
    if let Some(t) = e.served_not_after {
        d.insert("served_not_after", t);
    }
    if let Some(why) = e.error {
        d.insert("error", why);
    }
    d.insert("state", e.state.as_str());
    d.insert("checked_at", e.checked_at);
    d.insert("since", e.since);
    d
}

/// What the last scan recorded of each endpoint: its state and since when.
pub fn last_drift(cert: &Document) -> Vec<(Endpoint, Option<DriftState>, Option<DateTime>)> {
    drift_entries(cert)
        .filter_map(|d| {
            Some((
                endpoint_of(d)?,
                d.get_str("state").ok().and_then(DriftState::parse),
                d.get_datetime("since").ok().copied(),
            ))
        })
        .collect()
}

fn drift_entries(cert: &Document) -> impl Iterator<Item = &Document> {
    cert.get_array("drift")
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(Bson::as_document)
}

/// The endpoints a certificate document declares.
pub fn endpoints(cert: &Document) -> Vec<Endpoint> {
    cert.get_array("endpoints")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .filter_map(endpoint_of)
                .collect()
        })
        .unwrap_or_default()
}

pub fn endpoint_document(e: &Endpoint) -> Document {
    let mut d = doc! { "host": &e.host, "port": e.port as i32 };
    if let Some(sni) = &e.sni {
        d.insert("sni", sni);
    }
    d
}

fn endpoint_documents(endpoints: &[Endpoint]) -> Vec<Document> {
    endpoints.iter().map(endpoint_document).collect()
}

fn endpoint_of(d: &Document) -> Option<Endpoint> {
    Some(Endpoint {
        host: d.get_str("host").ok()?.to_string(),
        port: u16::try_from(d.get_i32("port").ok()?).ok()?,
        sni: d.get_str("sni").ok().map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter_and_update(w: &FencedWrite) -> (&Document, &Document) {
        match w {
            FencedWrite::UpdateOne { filter, update, .. } => (filter, update),
            other => panic!("not an update: {other:?}"),
        }
    }

    #[test]
    fn an_issue_is_stored_once_per_serial() {
        let issued = Issued {
            serial: "0a",
            fingerprint_sha256: "ff",
            not_before_ms: 0,
            not_after_ms: 1000,
            chain_pem: "PEM",
            key_secret: "cert-keys/ord_1",
            order_id: "ord_1",
            renewal_due: DateTime::from_millis(600),
            ari: None,
            renewal: true,
        };
        let w = record_issued("crt_1", &issued);
        let (filter, update) = filter_and_update(&w);
        assert_eq!(
            filter,
            &doc! { "_id": "crt_1", "current.serial": { "$ne": "0a" } }
        );
        let set = update.get_document("$set").unwrap();
        assert_eq!(set.get_str("status"), Ok("issued"));
        assert_eq!(
            set.get_datetime("renewal_next_at").unwrap(),
            &DateTime::from_millis(600)
        );
        assert_eq!(
            update.get_document("$inc").unwrap(),
            &doc! { "issued_count": 1i64, "renewal_count": 1i64 }
        );
    }

    #[test]
    fn endpoints_round_trip_through_their_documents() {
        let e = Endpoint {
            host: "localhost".into(),
            port: 8443,
            sni: Some("www.example.com".into()),
        };
        let cert = doc! { "endpoints": [endpoint_document(&e)] };
        assert_eq!(endpoints(&cert), vec![e]);
    }
}
