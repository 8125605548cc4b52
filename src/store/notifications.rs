//! The `notifications` collection: the outbox. One record per channel and
//! deduplication key, inserted with that pair as its `_id` (in one
//! transaction with the `notify` job that sends it), so the same event
//! found twice is sent once; the job records the outcome under its fence.

use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;

use super::fence::FencedWrite;
use super::Store;

pub const NOTIFICATIONS: &str = "notifications";

/// Where a notification stands.
pub const PENDING: &str = "pending";
pub const SENT: &str = "sent";
/// Its attempts are spent, or it cannot be sent at all: kept with the
/// last error, for people to look at.
pub const DEAD: &str = "dead";
pub const STATES: [&str; 3] = [PENDING, SENT, DEAD];

/// The record id of `dedup_key` on `channel_id`.
pub fn record_id(channel_id: &str, dedup_key: &str) -> String {
    format!("{channel_id}:{dedup_key}")
}

/// What a notification says.
pub struct NewNotification<'a> {
    pub channel_id: &'a str,
    /// The channel's project (`None`: an installation channel): whose
    /// outbox the record is in.
    pub scope: Option<&'a str>,
    /// The event's project (`None`: installation-wide).
    pub project_id: Option<&'a str>,
    pub kind: &'a str,
    pub severity: &'a str,
    pub dedup_key: &'a str,
    pub summary: &'a str,
    pub release_at: DateTime,
}

/// The write that records `n` unless a record for this channel and key
/// exists (then nothing changes: the same event raised again).
pub fn new_record(n: &NewNotification<'_>, now: DateTime) -> FencedWrite {
    let record = doc! {
        "channel_id": n.channel_id,
        "scope": n.scope.map(Bson::from).unwrap_or(Bson::Null),
        "project_id": n.project_id.map(Bson::from).unwrap_or(Bson::Null),
        "kind": n.kind,
        "severity": n.severity,
        "dedup_key": n.dedup_key,
        "summary": n.summary,
        "state": PENDING,
        "attempts": 0i64,
        "last_error": Bson::Null,
        "release_at": n.release_at,
        "created_at": now,
    };
    FencedWrite::UpdateOne {
        collection: NOTIFICATIONS.into(),
        filter: doc! { "_id": record_id(n.channel_id, n.dedup_key) },
        update: doc! { "$setOnInsert": record },
        upsert: true,
    }
}

pub async fn find(store: &Store, id: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(NOTIFICATIONS)
        .find_one(doc! { "_id": id })
        .await
}

/// One page of the outbox of the channels of `scope` (a project; `None`:
/// the installation's), of `state` when given.
pub async fn page(
    store: &Store,
    scope: Option<&str>,
    state: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    let mut filter = doc! { "scope": scope.map(Bson::from).unwrap_or(Bson::Null) };
    if let Some(state) = state {
        filter.insert("state", state);
    }
    store.page(NOTIFICATIONS, filter, after, limit).await
}

fn update(id: &str, update: Document) -> FencedWrite {
    FencedWrite::UpdateOne {
        collection: NOTIFICATIONS.into(),
        filter: doc! { "_id": id, "state": PENDING },
        update,
        upsert: false,
    }
}

/// Delivered.
pub fn sent(id: &str) -> FencedWrite {
    update(
        id,
        doc! {
            "$set": { "state": SENT, "last_error": Bson::Null },
            "$inc": { "attempts": 1i64 },
            "$currentDate": { "sent_at": true, "updated_at": true },
        },
    )
}

/// An attempt failed; `dead` when no other follows.
pub fn failed(id: &str, error: &str, dead: bool) -> FencedWrite {
    let state = if dead { DEAD } else { PENDING };
    update(
        id,
        doc! {
            "$set": { "state": state, "last_error": error },
            "$inc": { "attempts": 1i64 },
            "$currentDate": { "updated_at": true },
        },
    )
}
