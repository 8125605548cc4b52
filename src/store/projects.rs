//! The `projects` collection, and each project's domain grants (the names
//! it may certify, [`crate::domain::grants`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error as MongoError;

use super::certificates::CERTIFICATES;
use super::Store;
use crate::domain::grants::{base_name, overlap, DomainGrant};

pub const PROJECTS: &str = "projects";
/// One document every change of grants updates first, in its transaction:
/// two changes at once conflict there, and the later one, retried, sees the
/// earlier one's grants (so two projects cannot both take a name).
pub const GRANTS_LOCK: &str = "domain_grants";
const LOCK_ID: &str = "lock";

pub async fn insert(store: &Store, record: Document) -> Result<(), MongoError> {
    store.insert("create project", PROJECTS, record).await
}

pub async fn find(store: &Store, id: &str) -> Result<Option<Document>, MongoError> {
    store
        .collection(PROJECTS)
        .find_one(doc! { "_id": id })
        .await
}

/// One page of projects matching `filter` (see [`Store::page`]).
pub async fn page(
    store: &Store,
    filter: Document,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store.page(PROJECTS, filter, after, limit).await
}

/// The names project `id` may certify; `None` when there is no such project.
pub async fn domains(store: &Store, id: &str) -> Result<Option<Vec<DomainGrant>>, MongoError> {
    Ok(find(store, id).await?.map(|d| grants_of(&d)))
}

fn grants_of(project: &Document) -> Vec<DomainGrant> {
    project
        .get_array("domains")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .filter_map(|g| {
                    Some(DomainGrant {
                        name: g.get_str("name").ok()?.to_string(),
                        shared: g.get_bool("shared").unwrap_or(false),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn grant_documents(grants: &[DomainGrant]) -> Vec<Document> {
    grants
        .iter()
        .map(|g| doc! { "name": &g.name, "shared": g.shared })
        .collect()
}

/// A grant asked for that overlaps another project's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub asked: String,
    pub project_id: String,
    pub granted: String,
}

#[derive(Debug)]
struct Overlapping(Overlap);

/// Sets the grants of project `id` (all of them), unless one that is not
/// `shared` overlaps another project's grant. `Ok(None)`: there is no such
/// project.
pub async fn set_domains(
    store: &Store,
    id: &str,
    grants: &[DomainGrant],
) -> Result<Result<Option<()>, Overlap>, MongoError> {
    let result = store
        .ride_through("set domain grants", || async {
            let context = (store.clone(), id.to_string(), grants.to_vec());
            let mut session = store.client().start_session().await?;
            session
                .start_transaction()
                .and_run(context, |session, (store, id, grants)| {
                    async move {
                        store
                            .collection(GRANTS_LOCK)
                            .update_one(
                                doc! { "_id": LOCK_ID },
                                doc! { "$inc": { "changes": 1i64 } },
                            )
                            .upsert(true)
                            .session(&mut *session)
                            .await?;
                        let others: Vec<Document> = store
                            .collection(PROJECTS)
                            .find(doc! { "_id": { "$ne": &*id } })
                            .projection(doc! { "domains": 1 })
                            .session(&mut *session)
                            .await?
                            .stream(&mut *session)
                            .try_collect()
                            .await?;
                        for other in &others {
                            for held in grants_of(other) {
                                if let Some(asked) = grants
                                    .iter()
                                    .find(|g| !g.shared && overlap(&g.name, &held.name))
                                {
                                    return Err(MongoError::custom(Overlapping(Overlap {
                                        asked: asked.name.clone(),
                                        project_id: other.get_str("_id").unwrap_or_default().into(),
                                        granted: held.name.clone(),
                                    })));
                                }
                            }
                        }
                        let updated = store
                            .collection(PROJECTS)
                            .update_one(
                                doc! { "_id": &*id },
                                doc! { "$set": { "domains": grant_documents(grants) } },
                            )
                            .session(&mut *session)
                            .await?;
                        Ok((updated.matched_count > 0).then_some(()))
                    }
                    .boxed()
                })
                .await
        })
        .await;
    match result {
        Ok(found) => Ok(Ok(found)),
        Err(e) => match e.get_custom::<Overlapping>() {
            Some(Overlapping(overlap)) => Ok(Err(overlap.clone())),
            None => Err(e),
        },
    }
}

/// Grants every existing certificate's names to its project (a migration:
/// nothing in service may stop renewing). Names two projects already
/// certify are granted to both as `shared`. Safe to repeat.
pub async fn grant_certified_names(store: &Store) -> Result<(), MongoError> {
    // Which projects certify each name, and which certify a name under each
    // suffix: an overlap is then a few lookups per name, however many
    // certificates there are.
    let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut exact: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut under: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut certs = store
        .collection(CERTIFICATES)
        .find(doc! {})
        .projection(doc! { "project_id": 1, "dns_names": 1 })
        .await?;
    while let Some(cert) = certs.try_next().await? {
        let project = cert.get_str("project_id").unwrap_or_default().to_string();
        let names = cert
            .get_array("dns_names")
            .map(|a| a.to_vec())
            .unwrap_or_default();
        for name in names.iter().filter_map(Bson::as_str).map(base_name) {
            for suffix in suffixes(&name).skip(1) {
                under
                    .entry(suffix.to_string())
                    .or_default()
                    .insert(project.clone());
            }
            exact
                .entry(name.clone())
                .or_default()
                .insert(project.clone());
            wanted.entry(project.clone()).or_default().insert(name);
        }
    }
    let others = |holders: Option<&BTreeSet<String>>, project: &str| {
        holders.is_some_and(|h| h.iter().any(|p| p != project))
    };
    for (project, names) in &wanted {
        let Some(held) = domains(store, project).await? else {
            continue;
        };
        let mut grants: BTreeMap<String, bool> =
            held.into_iter().map(|g| (g.name, g.shared)).collect();
        for name in names {
            // Another project holds this name, one above it, or one under it.
            let shared = suffixes(name).any(|s| others(exact.get(s), project))
                || others(under.get(name.as_str()), project);
            *grants.entry(name.clone()).or_default() |= shared;
        }
        let grants: Vec<DomainGrant> = grants
            .into_iter()
            .map(|(name, shared)| DomainGrant { name, shared })
            .collect();
        store
            .collection(PROJECTS)
            .update_one(
                doc! { "_id": project },
                doc! { "$set": { "domains": grant_documents(&grants) } },
            )
            .await?;
    }
    Ok(())
}

/// A name and every suffix of it: `a.b.c`, `b.c`, `c`.
fn suffixes(name: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(name), |n| n.split_once('.').map(|(_, rest)| rest))
}
