//! The `distributions` collection: one record per certificate and target,
//! holding the newest serial sent there and how far its delivery got
//! (docs/distribution.md). Workers write it under their job's fence, and
//! every write names the serial, so a job for an older serial never
//! changes the record of a newer one.

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
        "step": step_name(Step::Execute),
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

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Execute => "execute",
        Step::Validate => "validate",
        Step::Rollback => "rollback",
    }
}

/// The step a record says comes next (`execute` when it says nothing).
pub fn step_of(record: &Document) -> Step {
    match record.get_str("step") {
        Ok("validate") => Step::Validate,
        Ok("rollback") => Step::Rollback,
        _ => Step::Execute,
    }
}

/// The state a record shows.
pub fn state_of(record: &Document) -> Option<DistributionState> {
    let state = record.get_str("state").ok()?;
    [
        DistributionState::Queued,
        DistributionState::Running,
        DistributionState::Validated,
        DistributionState::RolledBack,
        DistributionState::Failed,
    ]
    .into_iter()
    .find(|s| s.as_str() == state)
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
        doc! { "$set": { "step": step_name(step) }, "$currentDate": { "updated_at": true } },
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

/// What an agent reports of the delivery of `serial` (the API's own write,
/// not a job's): applied only while the record holds that serial, so a
/// report of an older one never changes a newer one's. Whether it did.
pub async fn report(
    store: &Store,
    certificate_id: &str,
    target_id: &str,
    serial: &str,
    state: DistributionState,
    error: Option<&str>,
) -> Result<bool, MongoError> {
    let mut set = doc! {
        "state": state.as_str(),
        "last_error": error.map(Bson::from).unwrap_or(Bson::Null),
    };
    let mut dates = doc! { "updated_at": true };
    if state.is_final() {
        dates.insert("finished_at", true);
    } else {
        set.insert("step", step_name(Step::Execute));
    }
    let updated = store
        .collection(DISTRIBUTIONS)
        .update_one(
            doc! { "_id": record_id(certificate_id, target_id), "serial": serial },
            doc! { "$set": set, "$inc": { "attempts": i64::from(state == DistributionState::Running) }, "$currentDate": dates },
        )
        .await?;
    Ok(updated.matched_count == 1)
}
