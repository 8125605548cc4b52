//! Versioned schema migrations: collections and indexes live here and only
//! here, and `certautopilot migrate` is the only thing that creates them.
//!
//! Every step is idempotent (creating an existing index or collection is a
//! no-op) and the recorded version only ever moves up (`$max`), so running
//! `migrate` twice, or two runs at once, ends in the same schema without error.

use futures::future::BoxFuture;
use mongodb::bson::{doc, Document};
use mongodb::error::Error as MongoError;
use mongodb::options::IndexOptions;
use mongodb::IndexModel;

use crate::store::{error_code, Store, NAMESPACE_EXISTS};

pub const SCHEMA_COLLECTION: &str = "schema";
const VERSION_DOC: &str = "version";

/// The version this binary writes and needs. A database at a lower version
/// must be migrated before this binary is ready; one at a higher version was
/// migrated by a newer binary, and this one runs against it only while the
/// schema's floor (the oldest version that may still run) is at most this.
pub const CURRENT_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema version this binary knows: [`CURRENT_VERSION`], or less when
/// the test-only `CAP_TEST_KNOWN_SCHEMA_VERSION` says so (a binary one
/// version older, for the tests of the floor).
pub fn known_version() -> i64 {
    static KNOWN: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        std::env::var("CAP_TEST_KNOWN_SCHEMA_VERSION")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|v| (1..=CURRENT_VERSION).contains(v))
            .unwrap_or(CURRENT_VERSION)
    })
}

/// The recorded schema: its version, and its floor, the oldest version a
/// binary may know and still run against it (the version itself for
/// databases migrated before floors were recorded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchemaState {
    pub version: i64,
    pub floor: i64,
}

impl SchemaState {
    fn of(found: Option<Document>) -> SchemaState {
        let version = found
            .as_ref()
            .and_then(|d| d.get_i64("version").ok())
            .unwrap_or(0);
        let floor = found
            .as_ref()
            .and_then(|d| d.get_i64("floor").ok())
            .unwrap_or(version)
            .min(version);
        SchemaState { version, floor }
    }
}

struct Migration {
    version: i64,
    name: &'static str,
    collections: &'static [&'static str],
    indexes: fn() -> Vec<(&'static str, IndexModel)>,
    /// Documents to change, after the collections and indexes (idempotent).
    data: Option<DataStep>,
    /// Whether the migration has KEK work ([`KekMigrations`]) to do.
    needs_kek: bool,
    /// A breaking (contract) migration: binaries that know an older schema
    /// cannot run against it, so it raises the schema's floor to its own
    /// version. An additive (expand) one keeps the floor.
    contract: bool,
}

/// Migration work that needs the KEK (re-sealing secrets, rekeying
/// tokens). This layer holds no KEK, so `migrate`'s caller supplies it;
/// without one, such a migration passes only when it finds nothing to do.
pub trait KekMigrations: Sync {
    /// Runs migration `version`'s KEK work (idempotent), telling `progress`
    /// what it did.
    fn run<'a>(
        &'a self,
        version: i64,
        store: &'a Store,
        progress: &'a mut (dyn FnMut(&str) + Send),
    ) -> BoxFuture<'a, Result<(), String>>;
}

type DataStep = for<'a> fn(&'a Store) -> BoxFuture<'a, Result<(), MongoError>>;

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "job queue, leases and worker presence",
        collections: &[
            "jobs",
            "leases",
            "lease_terms",
            "workers",
            "probe_results",
            "schema",
        ],
        indexes: v1_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 2,
        name: "encrypted secrets",
        collections: &["keys"],
        indexes: v2_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 3,
        name: "audit log, checkpoints and SIEM positions",
        collections: &[
            "audit",
            "audit_head",
            "audit_checkpoints",
            "audit_forwarders",
        ],
        indexes: no_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 4,
        name: "projects, issuers, certificates, ACME orders and challenges, API tokens",
        collections: &[
            "projects",
            "issuers",
            "certificates",
            "orders",
            "challenges",
            "tokens",
        ],
        indexes: v4_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 5,
        name: "certificate expiry index",
        collections: &[],
        indexes: v5_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 6,
        name: "renewal scan, renewal due and failing-certificate indexes",
        collections: &[],
        indexes: v6_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 7,
        name: "drift scan indexes",
        collections: &[],
        indexes: v7_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 8,
        name: "ARI refresh index",
        collections: &[],
        indexes: v8_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 9,
        name: "HTTP-01 challenge clean-up indexes",
        collections: &[],
        indexes: v9_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 10,
        name: "audit target index",
        collections: &[],
        indexes: v10_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 11,
        name: "domain grants (every certified name granted to its project)",
        collections: &[super::projects::GRANTS_LOCK],
        indexes: Vec::new,
        data: Some(|store| Box::pin(super::projects::grant_certified_names(store))),
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 12,
        name: "secrets sealed for their owners, API tokens keyed by the KEK, EAB keys sealed",
        collections: &[],
        indexes: Vec::new,
        data: None,
        needs_kek: true,
        contract: true,
    },
    Migration {
        version: 13,
        name: "KEK key-check values",
        collections: &[super::kek_versions::KEK_VERSIONS],
        indexes: Vec::new,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 14,
        name: "the oldest queued job, for the queue-age metric",
        collections: &[],
        indexes: v14_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 15,
        name: "idempotency keys and per-token request counts",
        collections: &[
            super::idempotency::IDEMPOTENCY_KEYS,
            super::rate_limits::RATE_LIMITS,
        ],
        indexes: v15_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 16,
        name: "distribution targets and deliveries, notification channels and their outbox",
        collections: &[
            super::targets::TARGETS,
            super::distributions::DISTRIBUTIONS,
            super::channels::CHANNELS,
            super::notifications::NOTIFICATIONS,
        ],
        indexes: v16_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
    Migration {
        version: 17,
        name: "target and channel settings and certificates' target lists bound to their owners; targets that receive keys and were not made by an admin disabled until an admin confirms them",
        collections: &[],
        indexes: Vec::new,
        data: None,
        needs_kek: true,
        // Additive, so upgrades stay rolling: the previous release's pods
        // run on against it (they neither bind nor verify). What their api
        // pods write while the upgrade rolls is unbound, refused by the new
        // workers, and listed by any later `migrate` (README: Distribution).
        contract: false,
    },
    Migration {
        version: 18,
        name: "one audit checkpoint follows each (no forked checkpoint chain)",
        collections: &[],
        indexes: v18_indexes,
        data: None,
        needs_kek: false,
        contract: false,
    },
];

fn v18_indexes() -> Vec<(&'static str, IndexModel)> {
    // Two housekeeping runs sealing onto the same checkpoint at once: the
    // second insert fails instead of forking the chain. Sparse: checkpoints
    // sealed before carry no `follows`.
    vec![(
        "audit_checkpoints",
        IndexModel::builder()
            .keys(doc! { "follows": 1 })
            .options(
                IndexOptions::builder()
                    .name("follows_unique".to_string())
                    .unique(true)
                    .sparse(true)
                    .build(),
            )
            .build(),
    )]
}

fn v16_indexes() -> Vec<(&'static str, IndexModel)> {
    use super::certificates::DISTRIBUTE_NEXT_AT;
    vec![
        // A target's name is unique in its project: certificates name it.
        (
            super::targets::TARGETS,
            unique(doc! { "project_id": 1, "name": 1 }, "project_name_unique"),
        ),
        (
            super::targets::TARGETS,
            index(doc! { "project_id": 1, "_id": 1 }, "project_id"),
        ),
        (
            super::distributions::DISTRIBUTIONS,
            index(doc! { "certificate_id": 1, "_id": 1 }, "certificate_id"),
        ),
        (
            super::channels::CHANNELS,
            index(doc! { "project_id": 1, "_id": 1 }, "project_id"),
        ),
        // A project's notifications, dead letters first of all.
        (
            super::notifications::NOTIFICATIONS,
            index(doc! { "scope": 1, "state": 1, "_id": 1 }, "scope_state"),
        ),
        // The scheduler's distribution sweep reads only what is marked.
        (
            "certificates",
            index(doc! { DISTRIBUTE_NEXT_AT: 1 }, DISTRIBUTE_NEXT_AT),
        ),
    ]
}

fn v15_indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        (
            super::idempotency::IDEMPOTENCY_KEYS,
            expiring(doc! { "expires_at": 1 }, "expires_at_ttl"),
        ),
        (
            super::rate_limits::RATE_LIMITS,
            expiring(doc! { "expires_at": 1 }, "expires_at_ttl"),
        ),
    ]
}

fn v14_indexes() -> Vec<(&'static str, IndexModel)> {
    vec![(
        "jobs",
        index(doc! { "state": 1, "run_at": 1 }, "state_run_at"),
    )]
}

fn v10_indexes() -> Vec<(&'static str, IndexModel)> {
    // A project's audit log: its target, or an anchored prefix of it.
    vec![("audit", index(doc! { "target": 1 }, "target"))]
}

fn v9_indexes() -> Vec<(&'static str, IndexModel)> {
    // An order's challenges go when the CA has decided; housekeeping
    // removes the old ones left behind.
    vec![
        ("challenges", index(doc! { "order_id": 1 }, "order_id")),
        ("challenges", index(doc! { "created_at": 1 }, "created_at")),
    ]
}

fn v8_indexes() -> Vec<(&'static str, IndexModel)> {
    // The scheduler's ARI refresh scan: only certificates with a CA window
    // carry `ari_next_fetch_at`.
    vec![(
        "certificates",
        index(doc! { "ari_next_fetch_at": 1 }, "ari_next_fetch_at"),
    )]
}

fn v7_indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        // The scheduler's drift scan: only certificates with endpoints carry
        // `drift_next_at`, so a tick reads what is due and no more.
        (
            "certificates",
            index(doc! { "drift_next_at": 1 }, "drift_next_at"),
        ),
        // The metric: certificates by drift state.
        (
            "certificates",
            index(doc! { "drift_state": 1 }, "drift_state"),
        ),
    ]
}

fn v6_indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        // The scheduler's renewal scan: only certificates due and not queued
        // carry `renewal_next_at`, so a tick reads what is due and no more.
        (
            "certificates",
            index(doc! { "renewal_next_at": 1 }, "renewal_next_at"),
        ),
        // The metrics: the soonest due, and the most failing.
        (
            "certificates",
            index(doc! { "renewal_due_at": 1 }, "renewal_due_at"),
        ),
        (
            "certificates",
            index(doc! { "consecutive_failures": -1 }, "consecutive_failures"),
        ),
    ]
}

fn v5_indexes() -> Vec<(&'static str, IndexModel)> {
    // The expiry metric reads the soonest-expiring certificates.
    vec![(
        "certificates",
        index(doc! { "current.not_after": 1 }, "not_after"),
    )]
}

fn v4_indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        // Every project-scoped list pages by id within its project.
        (
            "issuers",
            index(doc! { "project_id": 1, "_id": 1 }, "project_id"),
        ),
        (
            "certificates",
            index(doc! { "project_id": 1, "_id": 1 }, "project_id"),
        ),
        (
            "orders",
            index(doc! { "certificate_id": 1, "_id": 1 }, "certificate_id"),
        ),
        // A re-claimed job finds its open order.
        (
            "orders",
            index(doc! { "job_id": 1, "stage": 1 }, "job_stage"),
        ),
        ("orders", index(doc! { "stage": 1 }, "stage")),
        ("tokens", unique(doc! { "id": 1 }, "id_unique")),
        // "Is an issue job for this certificate in progress?"
        (
            "jobs",
            index(
                doc! { "payload.certificate_id": 1, "kind": 1 },
                "certificate_jobs",
            ),
        ),
    ]
}

/// The audit collections are read by `_id` (the seq) only.
fn no_indexes() -> Vec<(&'static str, IndexModel)> {
    Vec::new()
}

fn index(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(IndexOptions::builder().name(name.to_string()).build())
        .build()
}

/// A TTL index: the server deletes a document once its date in `keys` has
/// passed.
fn expiring(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_string())
                .expire_after(std::time::Duration::ZERO)
                .build(),
        )
        .build()
}

fn unique(keys: Document, name: &str) -> IndexModel {
    IndexModel::builder()
        .keys(keys)
        .options(
            IndexOptions::builder()
                .name(name.to_string())
                .unique(true)
                .build(),
        )
        .build()
}

fn v1_indexes() -> Vec<(&'static str, IndexModel)> {
    vec![
        // Idempotent enqueue: the same key twice gives one job.
        ("jobs", unique(doc! { "key": 1 }, "key_unique")),
        // Claiming runnable jobs in order; counting queue depth by state and kind.
        (
            "jobs",
            index(
                doc! { "state": 1, "slot": 1, "run_at": 1 },
                "state_slot_run_at",
            ),
        ),
        (
            "jobs",
            index(
                doc! { "state": 1, "lease_expires_at": 1 },
                "state_lease_expires_at",
            ),
        ),
        ("jobs", index(doc! { "state": 1, "kind": 1 }, "state_kind")),
        (
            "jobs",
            index(doc! { "holder": 1, "state": 1 }, "holder_state"),
        ),
        ("jobs", index(doc! { "claim_id": 1 }, "claim_id")),
        (
            "jobs",
            index(doc! { "state": 1, "finished_at": 1 }, "state_finished_at"),
        ),
        ("workers", index(doc! { "expires_at": 1 }, "expires_at")),
        (
            "lease_terms",
            unique(doc! { "lease": 1, "term": 1 }, "lease_term_unique"),
        ),
    ]
}

fn v2_indexes() -> Vec<(&'static str, IndexModel)> {
    // Counting and re-wrapping data keys per KEK version (rotation).
    vec![("keys", index(doc! { "kek_version": 1 }, "kek_version"))]
}

/// Where the database stands relative to this binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaFit {
    Current,
    /// Migrated by a newer binary through additive migrations only: this
    /// one still runs against it.
    Newer(SchemaState),
    /// Needs `certautopilot migrate` (0 = never migrated).
    TooOld(i64),
    /// Its floor is above what this binary knows: it must not run against it.
    TooNew(SchemaState),
}

impl SchemaFit {
    pub fn of(state: SchemaState) -> SchemaFit {
        let known = known_version();
        use std::cmp::Ordering::*;
        match state.version.cmp(&known) {
            Equal => SchemaFit::Current,
            Less => SchemaFit::TooOld(state.version),
            Greater if state.floor <= known => SchemaFit::Newer(state),
            Greater => SchemaFit::TooNew(state),
        }
    }

    /// Whether this binary does its work against the schema.
    pub fn runs(&self) -> bool {
        matches!(self, SchemaFit::Current | SchemaFit::Newer(_))
    }

    pub fn describe(&self) -> String {
        let known = known_version();
        match self {
            SchemaFit::Current => format!("schema version {known}"),
            SchemaFit::Newer(s) => format!(
                "schema version {} (this binary knows {known}; every binary from version {} runs against it)",
                s.version, s.floor
            ),
            SchemaFit::TooOld(v) => format!(
                "schema version {v} is older than the {known} this binary needs: run `certautopilot migrate`"
            ),
            SchemaFit::TooNew(s) => format!(
                "schema version {} is newer than the {known} this binary knows, and only binaries that know schema version {} or later may run against it: upgrade certautopilot",
                s.version, s.floor
            ),
        }
    }
}

/// The recorded schema, asked once (the readiness probe, which has a
/// deadline of its own, does not ride through an election).
pub async fn probe_state(store: &Store) -> Result<SchemaState, MongoError> {
    let found = store
        .collection(SCHEMA_COLLECTION)
        .find_one(doc! { "_id": VERSION_DOC })
        .await?;
    Ok(SchemaState::of(found))
}

pub async fn read_state(store: &Store) -> Result<SchemaState, MongoError> {
    let coll = store.collection(SCHEMA_COLLECTION);
    let found = store
        .ride_through("read schema version", || {
            coll.find_one(doc! { "_id": VERSION_DOC })
        })
        .await?;
    Ok(SchemaState::of(found))
}

pub async fn read_version(store: &Store) -> Result<i64, MongoError> {
    Ok(read_state(store).await?.version)
}

/// What one `migrate` run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    pub from: i64,
    pub to: i64,
    pub applied: Vec<i64>,
}

/// Applies every migration above the recorded version, without the KEK.
/// `progress` is told each step as it starts.
pub async fn migrate(
    store: &Store,
    progress: impl FnMut(&str) + Send,
) -> Result<MigrateReport, MigrateError> {
    migrate_with_kek(store, None, false, progress).await
}

/// Applies every migration above the recorded version; `kek` does the work
/// that needs the KEK (without it, a migration with such work fails when it
/// finds any). A contract migration is refused while a live instance knows
/// an older schema, unless `force`. `progress` is told each step as it starts.
pub async fn migrate_with_kek(
    store: &Store,
    kek: Option<&dyn KekMigrations>,
    force: bool,
    mut progress: impl FnMut(&str) + Send,
) -> Result<MigrateReport, MigrateError> {
    let state = read_state(store).await?;
    let from = state.version;
    if from > known_version() {
        // A binary the floor still lets run (a rollback's migration hook)
        // has nothing to do; one below the floor must not touch the schema.
        if state.floor <= known_version() {
            return Ok(MigrateReport {
                from,
                to: from,
                applied: Vec::new(),
            });
        }
        return Err(MigrateError::TooNew(from));
    }
    // The collections and indexes of the migrations already applied, made
    // again where they are missing: a restored snapshot carries data, not
    // indexes, and its schema version says nothing is left to apply.
    if from > 0 {
        progress(&format!(
            "the indexes of migrations 1 to {from}, where missing"
        ));
        for m in MIGRATIONS.iter().filter(|m| m.version <= from) {
            create_collections_and_indexes(store, m).await?;
        }
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > from && m.version <= known_version())
    {
        progress(&format!("migration {}: {}", m.version, m.name));
        if m.contract {
            let older = older_instances(store, m.version).await?;
            if !older.is_empty() {
                if !force {
                    return Err(MigrateError::OlderInstancesAlive {
                        version: m.version,
                        instances: older,
                    });
                }
                progress(&format!(
                    "  --force: applying although {} still run(s) an older schema",
                    older.join(", ")
                ));
            }
        }
        if m.needs_kek {
            match kek {
                Some(kek) => kek
                    .run(m.version, store, &mut progress)
                    .await
                    .map_err(|detail| MigrateError::Kek {
                        version: m.version,
                        detail,
                    })?,
                None => {
                    let pending = kek_work_pending(store, m.version).await?;
                    if pending > 0 {
                        return Err(MigrateError::NeedsKek {
                            version: m.version,
                            pending,
                        });
                    }
                }
            }
        }
        apply(store, m).await?;
        applied.push(m.version);
    }
    Ok(MigrateReport {
        from,
        to: read_version(store).await?,
        applied,
    })
}

/// Records migration `version` must handle with the KEK: for 12, secrets
/// sealed under their id alone, tokens keyed by a plain hash, EAB keys in
/// the clear; for 17, unbound targets, channels and target lists.
async fn kek_work_pending(store: &Store, version: i64) -> Result<usize, MongoError> {
    match version {
        12 => Ok(super::keys::unbound(store).await?.len()
            + super::tokens::legacy(store).await?.len()
            + super::issuers::clear_eab_keys(store).await?.len()),
        // Anything stored by earlier builds: a fresh installation has none.
        17 => {
            let unbound = |docs: Vec<Document>, field: &str| {
                docs.iter().filter(|d| !d.contains_key(field)).count()
            };
            Ok(
                unbound(super::targets::all(store).await?, super::BINDING_MAC)
                    + unbound(super::channels::all(store).await?, super::BINDING_MAC)
                    + unbound(
                        super::certificates::with_targets(store).await?,
                        super::certificates::TARGETS_MAC,
                    ),
            )
        }
        _ => Ok(0),
    }
}

/// Live instances that know a schema older than `version` (records from
/// builds before the fleet registry know none: they count as older).
async fn older_instances(store: &Store, version: i64) -> Result<Vec<String>, MongoError> {
    Ok(super::fleet::live(store)
        .await?
        .into_iter()
        .filter(|i| i.schema_known.is_none_or(|known| known < version))
        .map(|i| {
            format!(
                "{} ({}, version {}, schema {})",
                i.instance_id,
                i.roles.join("+"),
                i.version.as_deref().unwrap_or("unknown"),
                i.schema_known
                    .map(|k| k.to_string())
                    .unwrap_or("unknown".into())
            )
        })
        .collect())
}

async fn apply(store: &Store, m: &Migration) -> Result<(), MongoError> {
    create_collections_and_indexes(store, m).await?;
    if let Some(data) = m.data {
        data(store).await?;
    }
    record_applied(store, m).await
}

/// The collections and indexes of every migration up to `version` (a
/// restored snapshot's), where missing; records nothing.
pub async fn create_indexes_up_to(store: &Store, version: i64) -> Result<(), MongoError> {
    for m in MIGRATIONS.iter().filter(|m| m.version <= version) {
        create_collections_and_indexes(store, m).await?;
    }
    Ok(())
}

/// Idempotent: what exists is left as it is.
async fn create_collections_and_indexes(store: &Store, m: &Migration) -> Result<(), MongoError> {
    let db = store.db();
    for name in m.collections {
        let result = store
            .ride_through("create collection", || db.create_collection(*name))
            .await;
        match result {
            Ok(()) => {}
            Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => {}
            Err(e) => return Err(e),
        }
    }
    for (coll, model) in (m.indexes)() {
        let c = store.collection(coll);
        store
            .ride_through("create index", || c.create_index(model.clone()))
            .await?;
    }
    Ok(())
}

async fn record_applied(store: &Store, m: &Migration) -> Result<(), MongoError> {
    let schema = store.collection(SCHEMA_COLLECTION);
    store
        .ride_through("record migration", || {
            schema
                .update_one(
                    doc! { "_id": format!("migration:{}", m.version) },
                    doc! { "$setOnInsert": { "version": m.version, "name": m.name },
                    "$currentDate": { "applied_at": true } },
                )
                .upsert(true)
        })
        .await?;
    // `$max` only raises the version: a concurrent run that finished a later
    // migration first is never rolled back.
    store
        .ride_through("record schema version", || {
            schema
                .update_one(
                    doc! { "_id": VERSION_DOC },
                    if m.contract {
                        doc! { "$max": { "version": m.version, "floor": m.version }, "$currentDate": { "updated_at": true } }
                    } else {
                        doc! { "$max": { "version": m.version }, "$currentDate": { "updated_at": true } }
                    },
                )
                .upsert(true)
        })
        .await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {0} is newer than the {known} this binary knows: upgrade certautopilot", known = known_version())]
    TooNew(i64),
    #[error("migration {version} is breaking (contract) and these instances still run an older schema: {}; upgrade or stop them first, or pass --force", instances.join("; "))]
    OlderInstancesAlive {
        version: i64,
        instances: Vec<String>,
    },
    #[error("database error: {}", crate::store::short(.0))]
    Db(#[from] MongoError),
    #[error("migration {version} must re-seal or bind {pending} record(s) of earlier builds under the KEK: run `certautopilot migrate` with the KEK configured (CAP_KEK_PROVIDER and its settings)")]
    NeedsKek { version: i64, pending: usize },
    #[error("migration {version}: {detail}")]
    Kek { version: i64, detail: String },
}
