//! `OrderActor`: owns the state machine of every ACME order a worker runs,
//! as cert-manager's order controller does.
//!
//! An order moves through [`Stage`]s, one named step per stage:
//!
//! | stage reached          | step that runs next      | its external call           |
//! |------------------------|--------------------------|-----------------------------|
//! | (none)                 | `create_order`       | new-order at the CA |
//! | `created`              | `publish_challenges` | the zone's primary (DNS-01); HTTP-01 goes to `challenges` |
//! | `challenges_published` | `request_validation` | tell the CA to validate |
//! | `validating`           | `await_validation`   | poll the CA's decision |
//! | `finalizing`           | `finalize`, then `store_certificate` | send the CSR, fetch the chain |
//!
//! Each step reads what the journal holds, and saves through the order
//! journal — fenced by the job's claim — *before* the next step, so a worker
//! that re-claims the job continues the same ACME order instead of opening a
//! new one. A new order is opened only when the job has none, or its order is
//! no longer usable at the CA; the old one is then marked `abandoned`.
//!
//! The actor keeps which orders it drives and the stage each has reached.
//! Each order runs in a task of its own: a panic there becomes the order's
//! error, never the actor's death (actix's `Supervisor` does not catch
//! panics), and the ClaimActor cancelling the job (lease lost, hand-back on
//! SIGTERM) aborts the order with it.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use futures::future::BoxFuture;
use instant_acme::{Account, CertificateIdentifier, ChallengeType, Order};
use mongodb::bson::{doc, oid::ObjectId, DateTime};
use zeroize::Zeroizing;

use crate::acme::dns01::Dns01;
use crate::acme::order::{self as steps, Validation};
use crate::acme::{self, ari, RetryAfter};
use crate::audit::{Audit, Event};
use crate::crypto::secrets::{SecretRef, Secrets};
use crate::domain::certificate::Certificate;
use crate::domain::certs::{self, KeyAlgorithm};
use crate::domain::issuer::{record_name, Issuer};
use crate::domain::jobs::IssuePayload;
use crate::domain::order::{OrderRecord, PublishedChallenge, Stage, TxtRecord};
use crate::domain::renewal::{ari_due_ms, renewal_due_ms};
use crate::observe::metrics::Metrics;
use crate::queue::handler::HandlerError;
use crate::queue::jobs::{ClaimedJob, JobLease};
use crate::store::fence::FencedWrite;
use crate::store::{certificates, challenges, orders, Store};
use crate::work::issue::OrderDriver;
use crate::work::outcome;

/// What running an order needs.
#[derive(Clone)]
pub struct OrderSettings {
    pub store: Store,
    pub secrets: Secrets,
    pub metrics: std::sync::Arc<Metrics>,
    /// How the CA is reached: ACME's egress policy and the bounds on each
    /// request.
    pub transport: acme::Transport,
    /// What DNS-01's primaries and name servers pass (`CAP_EGRESS_ALLOW_DNS`).
    pub dns_egress: crate::net::egress::EgressPolicy,
    /// Fault injection for tests (`CAP_FAULT_PAUSE_AFTER_STAGE`): sleep this
    /// long right after this stage, so a test can kill us there.
    pub pause_after: Option<(String, Duration)>,
}

pub struct OrderActor {
    settings: OrderSettings,
    /// The orders being driven, by job, and the stage each has reached.
    in_flight: HashMap<ObjectId, Stage>,
}

impl OrderActor {
    pub fn new(settings: OrderSettings) -> OrderActor {
        OrderActor {
            settings,
            in_flight: HashMap::new(),
        }
    }
}

impl Actor for OrderActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if !self.in_flight.is_empty() {
            tracing::warn!(orders = ?self.in_flight, "order actor stopped with orders in flight");
        }
    }
}

impl Supervised for OrderActor {}

/// Start driving this job's order; answers with the running order's task.
#[derive(Message)]
#[rtype(result = "OrderTask")]
pub struct DriveOrder {
    pub job: ClaimedJob,
    pub certificate: Certificate,
    pub issuer: Issuer,
    pub payload: IssuePayload,
}

/// An order reached `stage` (recorded in its journal).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StageReached {
    pub job_id: ObjectId,
    pub stage: Stage,
}

/// An order's task ended, however it ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct OrderEnded(pub ObjectId);

/// A running order. Dropping it aborts the order.
pub struct OrderTask(tokio::task::JoinHandle<Result<(), HandlerError>>);

impl Drop for OrderTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Handler<DriveOrder> for OrderActor {
    type Result = MessageResult<DriveOrder>;

    fn handle(&mut self, msg: DriveOrder, ctx: &mut Context<Self>) -> Self::Result {
        let job_id = msg.job.lease.job_id;
        let settings = self.settings.clone();
        let actor = ctx.address();
        MessageResult(OrderTask(actix::spawn(async move {
            // Tells the actor the order ended even when the task is aborted.
            let _ended = EndGuard(job_id, actor.clone());
            OrderMachine::start(settings, msg, actor).await?.run().await
        })))
    }
}

impl Handler<StageReached> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: StageReached, _ctx: &mut Context<Self>) {
        self.in_flight.insert(msg.job_id, msg.stage);
    }
}

impl Handler<OrderEnded> for OrderActor {
    type Result = ();

    fn handle(&mut self, msg: OrderEnded, _ctx: &mut Context<Self>) {
        self.in_flight.remove(&msg.0);
    }
}

struct EndGuard(ObjectId, Addr<OrderActor>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.1.do_send(OrderEnded(self.0));
    }
}

/// The `issue-certificate` jobs' way to the OrderActor.
pub struct Orders(pub Addr<OrderActor>);

impl OrderDriver for Orders {
    fn drive(
        &self,
        job: ClaimedJob,
        certificate: Certificate,
        issuer: Issuer,
        payload: IssuePayload,
    ) -> BoxFuture<'static, Result<Result<(), HandlerError>, HandlerError>> {
        let actor = self.0.clone();
        Box::pin(async move {
            let message = DriveOrder {
                job,
                certificate,
                issuer,
                payload,
            };
            let mut task = actor.send(message).await.map_err(|e| {
                HandlerError::Retryable(format!("the order actor is unavailable: {e}"))
            })?;
            match (&mut task.0).await {
                Ok(result) => Ok(result),
                Err(e) if e.is_panic() => {
                    Err(HandlerError::Retryable("the ACME order panicked".into()))
                }
                Err(_) => Err(HandlerError::LeaseLost),
            }
        })
    }
}

/// The order journal: every write an order makes — its record in `orders`,
/// its HTTP-01 key authorizations, the certificate it stores — under the
/// fence of the job that drives it.
struct OrderJournal {
    lease: JobLease,
}

impl OrderJournal {
    async fn save(&self, write: FencedWrite) -> Result<(), HandlerError> {
        Ok(self.lease.fenced(write).await?)
    }
}

/// One order, from its journal to a stored certificate.
struct OrderMachine {
    settings: OrderSettings,
    journal: OrderJournal,
    job_id: ObjectId,
    holder: String,
    cert: Certificate,
    payload: IssuePayload,
    account: Account,
    dns01: Option<Dns01>,
    retry: RetryAfter,
    actor: Addr<OrderActor>,
}

impl OrderMachine {
    /// The issuer's account (and DNS-01 key) for this order.
    async fn start(
        settings: OrderSettings,
        msg: DriveOrder,
        actor: Addr<OrderActor>,
    ) -> Result<OrderMachine, HandlerError> {
        let retry = RetryAfter::default();
        let account = acme::account(
            &msg.issuer,
            &settings.secrets,
            settings.metrics.clone(),
            retry.clone(),
            &settings.transport,
        )
        .await
        .map_err(outcome::of_order)?;
        let dns01 = match &msg.issuer.dns {
            Some(dns) => Some(
                Dns01::load(
                    &msg.issuer,
                    dns.clone(),
                    &settings.secrets,
                    settings.dns_egress.clone(),
                )
                .await
                .map_err(outcome::of_order)?,
            ),
            None => None,
        };
        Ok(OrderMachine {
            job_id: msg.job.lease.job_id,
            holder: msg.job.lease.holder.clone(),
            journal: OrderJournal {
                lease: msg.job.lease.clone(),
            },
            settings,
            cert: msg.certificate,
            payload: msg.payload,
            account,
            dns01,
            retry,
            actor,
        })
    }

    /// Runs the step of each stage until the certificate is stored.
    async fn run(self) -> Result<(), HandlerError> {
        // A job handed back between storing its certificate and being marked
        // done (a SIGTERM just then) must not order a second one.
        if orders::valid_for_job(&self.settings.store, self.job_id).await? {
            tracing::info!(job = %self.job_id, "this job's certificate is stored already");
            return Ok(());
        }
        // A certificate in service keeps its status while it renews.
        if self.cert.current.is_none() {
            self.journal
                .save(certificates::mark_issuing(&self.cert.id))
                .await?;
        }
        let (mut record, mut order) = self.open_or_resume().await?;
        let resumed_at = record.stage;
        loop {
            self.actor.do_send(StageReached {
                job_id: self.job_id,
                stage: record.stage,
            });
            record.stage = match record.stage {
                Stage::Created => self.publish_challenges(&mut record, &mut order).await?,
                Stage::ChallengesPublished => {
                    self.request_validation(&record, &mut order, resumed_at)
                        .await?
                }
                Stage::Validating => self.await_validation(&mut record, &mut order).await?,
                Stage::Finalizing => {
                    let (chain, key_pem) = self.finalize(&record, &mut order).await?;
                    self.store_certificate(&record, &chain, &key_pem).await?
                }
                Stage::Valid => return Ok(()),
                // Open orders only come back from the journal.
                stage @ (Stage::Invalid | Stage::Abandoned) => {
                    return Err(HandlerError::Retryable(format!(
                        "the order is {}",
                        stage.as_str()
                    )))
                }
            };
        }
    }

    fn challenge_type(&self) -> ChallengeType {
        match self.dns01 {
            Some(_) => ChallengeType::Dns01,
            None => ChallengeType::Http01,
        }
    }

    async fn pause_after(&self, stage: Stage) {
        if let Some((at, pause)) = &self.settings.pause_after {
            if at == stage.as_str() {
                tracing::warn!(
                    stage = at,
                    pause_secs = pause.as_secs(),
                    "fault injection: pausing after this stage"
                );
                tokio::time::sleep(*pause).await;
            }
        }
    }

    /// This job's open order, resumed at the CA, or a new one.
    async fn open_or_resume(&self) -> Result<(OrderRecord, Order), HandlerError> {
        let store = &self.settings.store;
        if let Some(record) = orders::open_for_job(store, self.job_id).await? {
            let resumed = steps::resume(&self.account, &record.url, &self.retry)
                .await
                .map_err(outcome::of_order)?;
            match resumed {
                Some(order) => {
                    tracing::info!(order = %record.id, stage = record.stage.as_str(), "resuming the ACME order");
                    return Ok((record, order));
                }
                None => self.journal.save(orders::abandoned(&record.id)).await?,
            }
        }
        self.create_order().await
    }

    /// Step one: a new order at the CA, recorded as `created`.
    async fn create_order(&self) -> Result<(OrderRecord, Order), HandlerError> {
        let replaces = replaced_certificate(&self.payload, &self.cert);
        let order = steps::open(
            &self.account,
            &self.cert.dns_names,
            replaces.clone(),
            &self.retry,
        )
        .await
        .map_err(outcome::of_order)?;
        let record = OrderRecord {
            id: format!("ord_{}", ObjectId::new().to_hex()),
            certificate_id: self.cert.id.clone(),
            project_id: self.cert.project_id.clone(),
            url: order.url().to_string(),
            dns_names: self.cert.dns_names.clone(),
            stage: Stage::Created,
            published: Vec::new(),
            key_secret: None,
            replaces: replaces.map(|r| r.to_string()),
        };
        let now = self.settings.store.server_now().await?;
        self.journal
            .save(orders::opened(&record, self.job_id, now))
            .await?;
        tracing::info!(order = %record.id, url = %record.url, "opened an ACME order");
        self.pause_after(Stage::Created).await;
        Ok((record, order))
    }

    /// Publishes every pending authorization's key authorization — in
    /// `challenges`, where each api replica can serve it (HTTP-01), or in the
    /// zone (DNS-01) — then records that.
    async fn publish_challenges(
        &self,
        record: &mut OrderRecord,
        order: &mut Order,
    ) -> Result<Stage, HandlerError> {
        let pending = steps::pending_challenges(order, self.challenge_type(), &self.retry)
            .await
            .map_err(outcome::of_order)?;
        let mut published = Vec::with_capacity(pending.len());
        for p in pending {
            let txt = self.dns01.as_ref().map(|_| TxtRecord {
                name: record_name(&p.identifier),
                value: p.dns_value.clone(),
            });
            if txt.is_none() {
                self.journal
                    .save(challenges::publish(
                        &p.token,
                        &p.key_authorization,
                        &record.id,
                        &p.identifier,
                    ))
                    .await?;
            }
            published.push(PublishedChallenge {
                url: p.authorization_url,
                identifier: p.identifier,
                challenge_url: p.challenge_url,
                token: p.token,
                txt,
            });
        }
        let txt: Vec<TxtRecord> = published.iter().filter_map(|p| p.txt.clone()).collect();
        if let (Some(dns01), false) = (&self.dns01, txt.is_empty()) {
            dns01.publish(&txt).await.map_err(outcome::of_order)?;
        }
        self.journal
            .save(orders::challenges_published(&record.id, &published))
            .await?;
        record.published = published;
        self.pause_after(Stage::ChallengesPublished).await;
        Ok(Stage::ChallengesPublished)
    }

    /// Tells the CA to validate, once every authoritative server answers the
    /// DNS-01 records (the CA may ask any of them). Recorded first: on a
    /// resume we only ask again for challenges still pending, which is
    /// harmless.
    async fn request_validation(
        &self,
        record: &OrderRecord,
        order: &mut Order,
        resumed_at: Stage,
    ) -> Result<Stage, HandlerError> {
        let txt = record.txt_records();
        if let (Some(dns01), false) = (&self.dns01, txt.is_empty()) {
            // Published again first on a resume: a failed wait of an earlier
            // attempt (below) removed them.
            if resumed_at == Stage::ChallengesPublished {
                dns01.publish(&txt).await.map_err(outcome::of_order)?;
            }
            if let Err(e) = dns01.wait_visible(&txt).await {
                dns01.clean_up(&txt).await;
                return Err(outcome::of_order(e));
            }
        }
        self.journal.save(orders::validating(&record.id)).await?;
        steps::request_validation(order, self.challenge_type(), &self.retry)
            .await
            .map_err(outcome::of_order)?;
        self.pause_after(Stage::Validating).await;
        Ok(Stage::Validating)
    }

    /// Waits for the CA's decision; once validated, generates the
    /// certificate's key and stores it (encrypted) before any CSR leaves.
    async fn await_validation(
        &self,
        record: &mut OrderRecord,
        order: &mut Order,
    ) -> Result<Stage, HandlerError> {
        let decided = steps::await_validation(order, &self.retry)
            .await
            .map_err(outcome::of_order)?;
        // The CA has decided: the challenge records have served.
        self.forget_challenges(record).await;
        if let Validation::Refused(reason) = decided {
            self.journal
                .save(orders::invalid(&record.id, &reason))
                .await?;
            return Err(HandlerError::Retryable(reason));
        }
        let algorithm = self.key_algorithm()?;
        let secret = certificate_key(record);
        let key_secret = secret.id().to_string();
        let key =
            certs::generate_key(algorithm).map_err(|e| HandlerError::Retryable(e.to_string()))?;
        self.settings
            .secrets
            .get_or_create(&secret, || key.as_bytes().to_vec())
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))?;
        self.journal
            .save(orders::finalizing(&record.id, &key_secret))
            .await?;
        record.key_secret = Some(key_secret);
        Ok(Stage::Finalizing)
    }

    /// Removes what answered the challenges (housekeeping removes any
    /// HTTP-01 key authorizations left behind by a crash here).
    async fn forget_challenges(&self, record: &OrderRecord) {
        match &self.dns01 {
            Some(dns01) => {
                let txt = record.txt_records();
                if !txt.is_empty() {
                    dns01.clean_up(&txt).await;
                }
            }
            None => {
                if let Err(e) = challenges::forget_order(&self.settings.store, &record.id).await {
                    tracing::warn!(order = %record.id, error = %crate::store::short(&e), "HTTP-01 challenges not removed");
                }
            }
        }
    }

    fn key_algorithm(&self) -> Result<KeyAlgorithm, HandlerError> {
        KeyAlgorithm::parse(&self.cert.key_algorithm)
            .ok_or_else(|| HandlerError::Permanent("unknown key algorithm".into()))
    }

    /// Sends the CSR for the stored key (unless the CA has it already) and
    /// fetches the chain. Returns the chain and the key.
    async fn finalize(
        &self,
        record: &OrderRecord,
        order: &mut Order,
    ) -> Result<(String, Zeroizing<String>), HandlerError> {
        let key = self
            .settings
            .secrets
            .get(&certificate_key(record))
            .await
            .map_err(|e| HandlerError::Retryable(e.to_string()))?;
        let key_pem = Zeroizing::new(
            std::str::from_utf8(&key)
                .map_err(|_| HandlerError::Permanent("stored key is not PEM".into()))?
                .to_owned(),
        );
        if steps::awaits_csr(order, &self.retry)
            .await
            .map_err(outcome::of_order)?
        {
            let csr = certs::csr_der(&key_pem, self.key_algorithm()?, &record.dns_names)
                .map_err(|e| HandlerError::Permanent(e.to_string()))?;
            steps::finalize(order, &csr, &self.retry)
                .await
                .map_err(outcome::of_order)?;
            self.pause_after(Stage::Finalizing).await;
        }
        let chain = steps::certificate_chain(order, &self.retry)
            .await
            .map_err(outcome::of_order)?;
        Ok((chain, key_pem))
    }

    /// Stores the issued certificate as the current one, with its renewal
    /// window, and the order as `valid`; audits the issue.
    async fn store_certificate(
        &self,
        record: &OrderRecord,
        chain: &str,
        key_pem: &str,
    ) -> Result<Stage, HandlerError> {
        let issued =
            certs::inspect_chain(chain).map_err(|e| HandlerError::Retryable(e.to_string()))?;
        let key_public =
            certs::public_key_der(key_pem).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        if key_public != issued.public_key_der {
            return Err(HandlerError::Permanent(
                "the issued certificate does not match our key".into(),
            ));
        }
        let cert = &self.cert;
        let window = steps::renewal_window(&self.account, &issued.leaf_der).await;
        let due = match &window {
            Some(w) => ari_due_ms(&cert.id, &issued.serial, w.start_ms, w.end_ms),
            None => renewal_due_ms(
                &cert.id,
                &issued.serial,
                issued.not_before_ms,
                issued.not_after_ms,
                cert.renew_before_secs,
            ),
        };
        let ari = match &window {
            Some(w) => Some((w, self.settings.store.server_after(w.refresh_after).await?)),
            None => None,
        };
        let stored = certificates::Issued {
            serial: &issued.serial,
            fingerprint_sha256: &issued.fingerprint_sha256,
            not_before_ms: issued.not_before_ms,
            not_after_ms: issued.not_after_ms,
            chain_pem: chain,
            key_secret: record.key_secret.as_deref().unwrap_or_default(),
            order_id: &record.id,
            renewal_due: DateTime::from_millis(due),
            ari,
            renewal: self.payload.is_renewal(),
        };
        self.journal
            .save(certificates::record_issued(&cert.id, &stored))
            .await?;
        self.journal
            .save(orders::valid(&record.id, &issued.serial))
            .await?;
        let event =
            Event::new(&self.holder, "certificate.issued", cert.audit_target()).with(doc! {
                "project_id": &cert.project_id,
                "order_id": &record.id,
                "serial": &issued.serial,
                "not_after": DateTime::from_millis(issued.not_after_ms),
            });
        Audit::new(self.settings.store.clone()).record(event).await;
        tracing::info!(certificate = %cert.id, order = %record.id, serial = %issued.serial, "certificate issued");
        Ok(Stage::Valid)
    }
}

/// The certificate a renewal replaces, named for the CA (RFC 9773
/// `replaces`) when the CA gave it an ARI window: a CA without ARI refuses
/// the field.
fn replaced_certificate(
    payload: &IssuePayload,
    cert: &Certificate,
) -> Option<CertificateIdentifier<'static>> {
    if !payload.is_renewal() || !cert.has_ari_window {
        return None;
    }
    let leaf = certs::inspect_chain(&cert.current.as_ref()?.chain_pem).ok()?;
    ari::certificate_id(&leaf.leaf_der).ok()
}

/// The secret holding the private key `record` obtains: named by the order
/// itself, never by a pointer read back from the database.
fn certificate_key(record: &OrderRecord) -> SecretRef {
    SecretRef::certificate_key(&record.project_id, &record.certificate_id, &record.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::certificate::Current;

    fn certificate(has_ari_window: bool, chain_pem: &str) -> Certificate {
        Certificate {
            id: "crt_1".into(),
            project_id: "prj_1".into(),
            dns_names: vec!["a.example".into()],
            issuer_id: "iss_1".into(),
            key_algorithm: "ecdsa-p256".into(),
            renew_before_secs: None,
            status: None,
            current: Some(Current {
                serial: "0a".into(),
                fingerprint_sha256: "ff".into(),
                chain_pem: chain_pem.into(),
                revoked: false,
                order_id: "ord_1".into(),
                not_after_ms: 0,
            }),
            consecutive_failures: 0,
            has_ari_window,
            issued_fingerprints: vec![],
            target_ids: vec![],
            targets_mac: None,
        }
    }

    fn leaf_pem() -> String {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_identifier_method = rcgen::KeyIdMethod::Sha256;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let mut leaf = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        leaf.signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
            .unwrap()
            .pem()
    }

    #[test]
    fn only_a_renewal_of_a_certificate_with_an_ari_window_names_what_it_replaces() {
        let renewal = IssuePayload {
            certificate_id: "crt_1".into(),
            renews: Some("0a".into()),
            replaces_revoked: None,
        };
        let first = IssuePayload {
            renews: None,
            ..renewal.clone()
        };
        let pem = leaf_pem();
        assert!(replaced_certificate(&renewal, &certificate(true, &pem)).is_some());
        assert!(replaced_certificate(&renewal, &certificate(false, &pem)).is_none());
        assert!(replaced_certificate(&first, &certificate(true, &pem)).is_none());
    }
}
