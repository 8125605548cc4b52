//! The `distributions` collection: one record per certificate and target,
//! holding the newest serial sent there and how far its delivery got
//! (docs/distribution.md). Workers write it under their job's fence, and
//! every write names the serial, so a job for an older serial never
//! changes the record of a newer one.

use futures::TryStreamExt;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use mongodb::error::Error as MongoError;

use super::fence::FencedWrite;
use super::Store;
use crate::domain::distribution::{DistributionState, Step, TargetKind};

pub const DISTRIBUTIONS: &str = "distributions";

/// The record id of `certificate_id` at `target_id`.
pub fn record_id(certificate_id: &str, target_id: &str) -> String {
    format!("{certificate_id}:{target_id}")
}

/// The record of `certificate_id` at `target_id`.
pub async fn find(
    store: &Store,
    certificate_id: &str,
    target_id: &str,
) -> Result<Option<Document>, MongoError> {
    store
        .collection(DISTRIBUTIONS)
        .find_one(doc! { "_id": record_id(certificate_id, target_id) })
        .await
}

/// One page of a certificate's records, by target (see [`Store::page`]).
pub async fn page_for_certificate(
    store: &Store,
    certificate_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(
            DISTRIBUTIONS,
            doc! { "certificate_id": certificate_id },
            after,
            limit,
        )
        .await
}

/// Removes the records of `target_id` (a target deleted); answers the
/// certificates they were of.
pub async fn forget_target(store: &Store, target_id: &str) -> Result<Vec<String>, MongoError> {
    let records = store.collection(DISTRIBUTIONS);
    let filter = doc! { "target_id": target_id };
    let found: Vec<Document> = records
        .find(filter.clone())
        .projection(doc! { "certificate_id": 1 })
        .await?
        .try_collect()
        .await?;
    records.delete_many(filter).await?;
    Ok(found
        .iter()
        .filter_map(|d| d.get_str("certificate_id").ok().map(str::to_string))
        .collect())
}

/// What a queued delivery is of.
pub struct Queued<'a> {
    pub project_id: &'a str,
    pub certificate_id: &'a str,
    pub target_id: &'a str,
    pub target_name: &'a str,
    pub kind: TargetKind,
    pub serial: &'a str,
    pub job_id: ObjectId,
}

/// Records `q.serial` as queued for its target: a record of an older serial
/// starts over, a missing one is created, and one already of this serial
/// (a repeated enqueue) is left as it is.
pub fn queued(q: &Queued<'_>) -> [FencedWrite; 2] {
    let id = record_id(q.certificate_id, q.target_id);
    let fresh = doc! {
        "serial": q.serial,
        "state": DistributionState::Queued.as_str(),
        "step": Step::Execute.as_str(),
        "job_id": q.job_id,
        "attempts": 0i64,
        "last_error": Bson::Null,
        "previous_kept_for": Bson::Null,
    };
    let mut inserted = fresh.clone();
    inserted.extend(doc! {
        "project_id": q.project_id,
        "certificate_id": q.certificate_id,
        "target_id": q.target_id,
        "target_name": q.target_name,
        "kind": q.kind.as_str(),
    });
    [
        FencedWrite::UpdateOne {
            collection: DISTRIBUTIONS.into(),
            filter: doc! { "_id": &id, "serial": { "$ne": q.serial } },
            update: doc! { "$set": fresh, "$currentDate": { "updated_at": true } },
            upsert: false,
        },
        FencedWrite::UpdateOne {
            collection: DISTRIBUTIONS.into(),
            filter: doc! { "_id": &id },
            update: doc! { "$setOnInsert": inserted, "$currentDate": { "updated_at": true } },
            upsert: true,
        },
    ]
}

/// The step a record says comes next (`execute` when it says nothing).
pub fn step_of(record: &Document) -> Step {
    record
        .get_str("step")
        .ok()
        .and_then(Step::parse)
        .unwrap_or(Step::Execute)
}

/// The state a record shows.
pub fn state_of(record: &Document) -> Option<DistributionState> {
    DistributionState::parse(record.get_str("state").ok()?)
}

fn update(id: &str, serial: &str, update: Document) -> FencedWrite {
    FencedWrite::UpdateOne {
        collection: DISTRIBUTIONS.into(),
        filter: doc! { "_id": id, "serial": serial },
        update,
        upsert: false,
    }
}

/// A job started (or resumed) the delivery of `serial`.
pub fn started(id: &str, serial: &str, job_id: ObjectId) -> FencedWrite {
    update(
        id,
        serial,
        doc! {
            "$set": { "state": DistributionState::Running.as_str(), "job_id": job_id },
            "$inc": { "attempts": 1i64 },
            "$currentDate": { "updated_at": true },
        },
    )
}

/// What was there before is sealed away: a retried execute must not take
/// the new certificate for it.
pub fn previous_kept(id: &str, serial: &str) -> FencedWrite {
    update(
        id,
        serial,
        doc! { "$set": { "previous_kept_for": serial }, "$currentDate": { "updated_at": true } },
    )
}

/// Whether the record has the previous contents sealed for this serial.
pub fn has_previous(record: &Document, serial: &str) -> bool {
    record.get_str("previous_kept_for") == Ok(serial)
}

/// `step` comes next.
pub fn stepped(id: &str, serial: &str, step: Step) -> FencedWrite {
    update(
        id,
        serial,
        doc! { "$set": { "step": step.as_str() }, "$currentDate": { "updated_at": true } },
    )
}

/// An attempt failed and the job tries again later from the same step.
pub fn will_retry(id: &str, serial: &str, error: &str) -> FencedWrite {
    update(
        id,
        serial,
        doc! {
            "$set": { "state": DistributionState::Queued.as_str(), "last_error": error },
            "$currentDate": { "updated_at": true },
        },
    )
}

/// The delivery of `serial` ended in `state` (with the error that ended it).
pub fn finished(
    id: &str,
    serial: &str,
    state: DistributionState,
    error: Option<&str>,
) -> FencedWrite {
    let error = error.map(Bson::from).unwrap_or(Bson::Null);
    update(
        id,
        serial,
        doc! {
            "$set": { "state": state.as_str(), "last_error": error },
            "$currentDate": { "updated_at": true, "finished_at": true },
        },
    )
}

/// The delivery of `serial` cannot be made at all (its target is gone, the
/// serial revoked): `failed` with `error`, unless it has already ended, so
/// a job claimed again after its delivery ended never rewrites it.
pub fn abandoned(id: &str, serial: &str, error: &str) -> FencedWrite {
    FencedWrite::UpdateOne {
        collection: DISTRIBUTIONS.into(),
        filter: doc! { "_id": id, "serial": serial, "state": { "$in": OPEN.to_vec() } },
        update: doc! {
            "$set": { "state": DistributionState::Failed.as_str(), "last_error": error },
            "$currentDate": { "updated_at": true, "finished_at": true },
        },
        upsert: false,
    }
}

/// The states of a delivery not ended yet.
const OPEN: [&str; 2] = [
    DistributionState::Queued.as_str(),
    DistributionState::Running.as_str(),
];

/// What became of an agent's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reported {
    Applied,
    /// The delivery of this serial had already ended in this state (a
    /// report sent again after its answer was lost).
    AlreadyEnded,
    /// It had already ended in this other state, which stays.
    EndedOtherwise(DistributionState),
    /// The record holds another serial.
    NotNewest,
}

/// What an agent reports of the delivery of `serial` (the API's own write,
/// not a job's): applied only while the record holds that serial, so a
/// report of an older one never changes a newer one's, and only while it
/// has not ended, so an outcome once recorded is never rewritten.
pub async fn report(
    store: &Store,
    certificate_id: &str,
    target_id: &str,
    serial: &str,
    state: DistributionState,
    error: Option<&str>,
) -> Result<Reported, MongoError> {
    let id = record_id(certificate_id, target_id);
    let mut set = doc! {
        "state": state.as_str(),
        "last_error": error.map(Bson::from).unwrap_or(Bson::Null),
    };
    let mut dates = doc! { "updated_at": true };
    if state.is_final() {
        dates.insert("finished_at", true);
    } else {
        set.insert("step", Step::Execute.as_str());
    }
    let updated = store
        .collection(DISTRIBUTIONS)
        .update_one(
            doc! { "_id": &id, "serial": serial, "state": { "$in": OPEN.to_vec() } },
            doc! { "$set": set, "$inc": { "attempts": i64::from(state == DistributionState::Running) }, "$currentDate": dates },
        )
        .await?;
    if updated.matched_count == 1 {
        return Ok(Reported::Applied);
    }
    let record = store
        .collection(DISTRIBUTIONS)
        .find_one(doc! { "_id": &id })
        .await?;
    Ok(match record {
        Some(r) if r.get_str("serial") == Ok(serial) => match state_of(&r) {
            Some(ended) if ended == state => Reported::AlreadyEnded,
            Some(ended) if ended.is_final() => Reported::EndedOtherwise(ended),
            // Moved back to open between the two reads: ask again.
            _ => Reported::NotNewest,
        },
        _ => Reported::NotNewest,
    })
}
