//! The `orders` collection: our record of every ACME order, written step by
//! step under the fence of the job that runs it (the order journal of
//! [`crate::actors::order`]).

use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};
use mongodb::error::Error as MongoError;

use super::fence::FencedWrite;
use super::Store;
use crate::domain::order::{OrderRecord, PublishedChallenge, Stage, TxtRecord};

pub const ORDERS: &str = "orders";

fn open_stages() -> Vec<&'static str> {
    Stage::OPEN.iter().map(|s| s.as_str()).collect()
}

/// The open order of job `job_id`, if it has one.
pub async fn open_for_job(
    store: &Store,
    job_id: ObjectId,
) -> Result<Option<OrderRecord>, MongoError> {
    let found = store
        .collection(ORDERS)
        .find_one(doc! { "job_id": job_id, "stage": { "$in": open_stages() } })
        .await?;
    Ok(found.as_ref().map(parse))
}

/// Whether job `job_id` already saw an order through to a stored
/// certificate (a re-run of a finished job then has nothing to do).
pub async fn valid_for_job(store: &Store, job_id: ObjectId) -> Result<bool, MongoError> {
    let found = store
        .collection(ORDERS)
        .find_one(doc! { "job_id": job_id, "stage": Stage::Valid.as_str() })
        .await?;
    Ok(found.is_some())
}

/// The order `id`, if it is recorded.
pub async fn find(store: &Store, id: &str) -> Result<Option<OrderRecord>, MongoError> {
    let found = store
        .collection(ORDERS)
        .find_one(doc! { "_id": id })
        .await?;
    Ok(found.as_ref().map(parse))
}

/// Orders under way, for the metrics.
pub async fn count_open(store: &Store) -> Result<u64, MongoError> {
    store
        .collection(ORDERS)
        .count_documents(doc! { "stage": { "$in": open_stages() } })
        .await
}

/// One page of a certificate's orders, in `_id` order (see [`Store::page`]).
pub async fn page_for_certificate(
    store: &Store,
    certificate_id: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<Document>, Option<String>), MongoError> {
    store
        .page(
            ORDERS,
            doc! { "certificate_id": certificate_id },
            after,
            limit,
        )
        .await
}

/// Records a new order of job `job_id` (idempotent: `$setOnInsert`).
pub fn opened(order: &OrderRecord, job_id: ObjectId, now: DateTime) -> FencedWrite {
    let record = doc! {
        "_id": &order.id,
        "certificate_id": &order.certificate_id,
        "project_id": &order.project_id,
        "job_id": job_id,
        "url": &order.url,
        "dns_names": &order.dns_names,
        "stage": Stage::Created.as_str(),
        "authorizations": [],
        "replaces": order.replaces.clone(),
        "created_at": now,
    };
    FencedWrite::UpdateOne {
        collection: ORDERS.to_string(),
        filter: doc! { "_id": &order.id },
        update: doc! { "$setOnInsert": record },
        upsert: true,
    }
}

fn stage(order_id: &str, stage: Stage, extra: Document) -> FencedWrite {
    let mut set = doc! { "stage": stage.as_str() };
    set.extend(extra);
    FencedWrite::UpdateOne {
        collection: ORDERS.to_string(),
        filter: doc! { "_id": order_id },
        update: doc! { "$set": set, "$currentDate": { "updated_at": true } },
        upsert: false,
    }
}

/// The order can no longer be used at the CA; a new one replaces it.
pub fn abandoned(order_id: &str) -> FencedWrite {
    stage(order_id, Stage::Abandoned, doc! {})
}

/// Every pending authorization's challenge is published.
pub fn challenges_published(order_id: &str, published: &[PublishedChallenge]) -> FencedWrite {
    let authorizations: Vec<Document> = published.iter().map(published_document).collect();
    stage(
        order_id,
        Stage::ChallengesPublished,
        doc! { "authorizations": authorizations },
    )
}

/// The CA is being told to validate.
pub fn validating(order_id: &str) -> FencedWrite {
    stage(order_id, Stage::Validating, doc! {})
}

/// The CA refused the order, for `reason`.
pub fn invalid(order_id: &str, reason: &str) -> FencedWrite {
    stage(order_id, Stage::Invalid, doc! { "error": reason })
}

/// Validated; the certificate's key is stored as `key_secret`.
pub fn finalizing(order_id: &str, key_secret: &str) -> FencedWrite {
    stage(
        order_id,
        Stage::Finalizing,
        doc! { "key_secret": key_secret },
    )
}

/// The certificate `serial` is issued and stored.
pub fn valid(order_id: &str, serial: &str) -> FencedWrite {
    stage(order_id, Stage::Valid, doc! { "serial": serial })
}

fn published_document(p: &PublishedChallenge) -> Document {
    let mut d = doc! { "url": &p.url, "identifier": &p.identifier, "challenge_url": &p.challenge_url, "token": &p.token };
    if let Some(txt) = &p.txt {
        d.insert("txt_name", &txt.name);
        d.insert("txt_value", &txt.value);
    }
    d
}

/// An order document as recorded.
pub fn parse(d: &Document) -> OrderRecord {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let published = d
        .get_array("authorizations")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .map(published_of)
                .collect()
        })
        .unwrap_or_default();
    OrderRecord {
        id: s("_id"),
        certificate_id: s("certificate_id"),
        project_id: s("project_id"),
        url: s("url"),
        dns_names: d
            .get_array("dns_names")
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        stage: d
            .get_str("stage")
            .ok()
            .and_then(Stage::parse)
            .unwrap_or(Stage::Created),
        published,
        key_secret: d.get_str("key_secret").ok().map(str::to_string),
        replaces: d.get_str("replaces").ok().map(str::to_string),
    }
}

fn published_of(d: &Document) -> PublishedChallenge {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let txt = match (d.get_str("txt_name"), d.get_str("txt_value")) {
        (Ok(name), Ok(value)) => Some(TxtRecord {
            name: name.into(),
            value: value.into(),
        }),
        _ => None,
    };
    PublishedChallenge {
        url: s("url"),
        identifier: s("identifier"),
        challenge_url: s("challenge_url"),
        token: s("token"),
        txt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_reads_back_as_it_was_journaled() {
        let published = vec![PublishedChallenge {
            url: "https://ca/authz/1".into(),
            identifier: "a.example".into(),
            challenge_url: "https://ca/chall/1".into(),
            token: "tok".into(),
            txt: Some(TxtRecord {
                name: "_acme-challenge.a.example".into(),
                value: "v".into(),
            }),
        }];
        let FencedWrite::UpdateOne { update, .. } = challenges_published("ord_1", &published)
        else {
            panic!("an update");
        };
        let set = update.get_document("$set").unwrap();
        let mut stored =
            doc! { "_id": "ord_1", "url": "https://ca/order/1", "dns_names": ["a.example"] };
        stored.extend(set.clone());
        let order = parse(&stored);
        assert_eq!(order.stage, Stage::ChallengesPublished);
        assert_eq!(order.published, published);
        assert_eq!(order.txt_records().len(), 1);
    }
}
