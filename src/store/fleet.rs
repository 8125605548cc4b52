//! The fleet registry (collection `workers`): one presence record per
//! running process — api, worker, scheduler, metrics adapter — with its
//! roles, binary version, the schema version it knows, when it started and
//! when it was last seen. A record lives until `expires_at` (the database's
//! time), renewed about every third of its lease; a worker's record is also
//! its presence lease, so its jobs become claimable soon after it dies.

use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::Error as MongoError;
use serde::Serialize;

use super::Store;

pub const FLEET_COLLECTION: &str = "workers";
/// Records expired for longer than this are deleted by housekeeping.
const FORGET_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What a process says about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance_id: String,
    /// `api`, `worker`, `scheduler`, `metrics-adapter`.
    pub roles: Vec<&'static str>,
    /// This binary's version (Cargo's).
    pub version: &'static str,
    /// The schema version this binary knows: it runs against that one and
    /// any newer whose floor is at most it.
    pub schema_known: i64,
}

impl Identity {
    /// This binary, which knows schema version `schema_known`.
    pub fn of_this_binary(
        instance_id: &str,
        roles: Vec<&'static str>,
        schema_known: i64,
    ) -> Identity {
        Identity {
            instance_id: instance_id.to_string(),
            roles,
            version: env!("CARGO_PKG_VERSION"),
            schema_known,
        }
    }
}

/// A live process, as recorded.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Instance {
    pub instance_id: String,
    pub roles: Vec<String>,
    /// `None` for a record written by a build before the registry.
    pub version: Option<String>,
    pub schema_known: Option<i64>,
    pub started_at: Option<String>,
    pub last_seen: Option<String>,
}

impl Instance {
    fn parse(d: &Document) -> Instance {
        let date = |f: &str| {
            d.get_datetime(f)
                .ok()
                .and_then(|t| t.try_to_rfc3339_string().ok())
        };
        Instance {
            instance_id: d.get_str("_id").unwrap_or_default().to_string(),
            // Builds before the registry recorded workers only.
            roles: d
                .get_array("roles")
                .map(|a| {
                    a.iter()
                        .filter_map(|r| r.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_else(|_| vec!["worker".to_string()]),
            version: d.get_str("version").ok().map(str::to_string),
            schema_known: d.get_i64("schema_known").ok(),
            started_at: date("started_at"),
            last_seen: date("renewed_at"),
        }
    }
}

/// Records (or renews) `identity` until the database's now plus `ttl`.
pub async fn announce(store: &Store, identity: &Identity, ttl: Duration) -> Result<(), MongoError> {
    let update = doc! {
        "$set": {
            "expires_at": store.server_after(ttl).await?,
            "pid": std::process::id() as i64,
            "roles": &identity.roles,
            "version": identity.version,
            "schema_known": identity.schema_known,
        },
        "$currentDate": { "renewed_at": true },
        "$setOnInsert": { "started_at": store.server_now().await? },
    };
    let filter = doc! { "_id": &identity.instance_id };
    let fleet = store.collection(FLEET_COLLECTION);
    store
        .ride_through("renew presence", || {
            fleet
                .update_one(filter.clone(), update.clone())
                .upsert(true)
        })
        .await?;
    Ok(())
}

/// Removes a process's record (at a graceful stop).
pub async fn withdraw(store: &Store, instance_id: &str) -> Result<(), MongoError> {
    store
        .collection(FLEET_COLLECTION)
        .delete_one(doc! { "_id": instance_id })
        .await?;
    Ok(())
}

/// Every live process (its record not expired, by the database's clock),
/// by instance id.
pub async fn live(store: &Store) -> Result<Vec<Instance>, MongoError> {
    let found: Vec<Document> = store
        .collection(FLEET_COLLECTION)
        .find(doc! { "$expr": { "$gt": ["$expires_at", "$$NOW"] } })
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    Ok(found.iter().map(Instance::parse).collect())
}

/// Deletes records that expired long ago.
pub async fn forget_departed(store: &Store) -> Result<u64, MongoError> {
    let fleet = store.collection(FLEET_COLLECTION);
    let now = store.server_now().await?;
    let cutoff = DateTime::from_millis(now.timestamp_millis() - FORGET_AFTER.as_millis() as i64);
    let filter = doc! { "expires_at": { "$lt": cutoff } };
    let result = store
        .ride_through("forget departed instances", || {
            fleet.delete_many(filter.clone())
        })
        .await?;
    Ok(result.deleted_count)
}
