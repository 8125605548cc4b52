//! The resumable ACME order behind an `issue-certificate` job.
//!
//! Every step is recorded in the `orders` document, under the job's fencing
//! token, *before* the next external step, so a worker that re-claims the job
//! continues the same order:
//!
//! ```text
//! created ──► challenges_published ──► validating ──► finalizing ──► valid
//!    │ (the CA's order URL)  │ (key authorizations     │ (the CA was    │ (key stored
//!    │                       │  in `challenges`)        │  told)         │  encrypted, CSR sent)
//!    └────────────── invalid: the CA's reason on the certificate; the job backs off
//! ```
//!
//! A new order is opened only when this job has none, or its order is no
//! longer usable at the CA (invalid or expired); the old one is then marked
//! `abandoned`. The certificate's private key is generated here, stored only
//! encrypted, and bound to the order before the CSR goes out.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, Order, OrderStatus, RetryPolicy,
};
use mongodb::bson::{doc, oid::ObjectId, Bson, DateTime, Document};

use super::ari::{self, AriWindow};
use super::dns01::{self, Dns01, DnsSettings, TxtRecord};
use super::{account, IssuerAcme, RetryAfter};
use crate::audit::{Audit, Event};
use crate::backoff::Backoff;
use crate::certs::{self, KeyAlgorithm};
use crate::handlers::HandlerError;
use crate::jobs::ClaimedJob;
use crate::metrics::Metrics;
use crate::renewal::{self, ari_due_ms, renewal_due_ms};
use crate::secrets::Secrets;
use crate::store::{short, Store};

pub const ISSUE_CERTIFICATE: &str = "issue-certificate";
pub const CERTIFICATES: &str = "certificates";
pub const ISSUERS: &str = "issuers";
pub const ORDERS: &str = "orders";
pub const CHALLENGES: &str = "challenges";

/// Our record of an order's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Created,
    ChallengesPublished,
    Validating,
    Finalizing,
    Valid,
    Invalid,
    Abandoned,
}

impl Stage {
    pub fn as_str(&self) -> &'static str {
        match self {
            Stage::Created => "created",
            Stage::ChallengesPublished => "challenges_published",
            Stage::Validating => "validating",
            Stage::Finalizing => "finalizing",
            Stage::Valid => "valid",
            Stage::Invalid => "invalid",
            Stage::Abandoned => "abandoned",
        }
    }

    fn parse(s: &str) -> Option<Stage> {
        [
            Stage::Created,
            Stage::ChallengesPublished,
            Stage::Validating,
            Stage::Finalizing,
            Stage::Valid,
            Stage::Invalid,
            Stage::Abandoned,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// The unfinished stages, for queries.
pub const OPEN_STAGES: [&str; 4] = [
    "created",
    "challenges_published",
    "validating",
    "finalizing",
];

/// What running an order needs; the worker's [`crate::actors::order::OrderActor`]
/// holds one and starts each order with it.
#[derive(Clone)]
pub struct OrderSettings {
    pub store: Store,
    pub secrets: Secrets,
    pub metrics: Arc<Metrics>,
    /// Delay after each consecutive failure of a certificate
    /// (`CAP_ISSUE_BACKOFF_BASE_SECS`, `CAP_ISSUE_BACKOFF_MAX_SECS`).
    pub backoff: Backoff,
    /// Fault injection for tests (`CAP_FAULT_PAUSE_AFTER_STAGE`): sleep this
    /// long right after recording this stage, so a test can kill us there.
    pub pause_after: Option<(String, Duration)>,
}

/// Drives the order behind one claim of an `issue-certificate` job.
pub async fn issue(settings: OrderSettings, job: ClaimedJob) -> Result<(), HandlerError> {
    let run = OrderRun {
        store: settings.store,
        secrets: settings.secrets,
        metrics: settings.metrics,
        backoff: settings.backoff,
        pause_after: settings.pause_after,
        retry_after: RetryAfter::default(),
    };
    run.issue(job).await
}

struct OrderRun {
    store: Store,
    secrets: Secrets,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    pause_after: Option<(String, Duration)>,
    retry_after: RetryAfter,
}

/// instant-acme retries a `badNonce` answer three times; past that (one
/// request in 8,000 at Pebble's 5 %), the whole request is sent again here,
/// up to five times. A rejected nonce means the CA did nothing, so a retry is
/// safe even for a new order.
macro_rules! nonce_retry {
    ($call:expr) => {{
        let mut attempt = 0;
        loop {
            attempt += 1;
            match $call {
                Err(instant_acme::Error::Api(ref p))
                    if p.r#type.as_deref() == Some("urn:ietf:params:acme:error:badNonce")
                        && attempt < 5 =>
                {
                    tracing::debug!(attempt, "badNonce again; sending the request again");
                    continue;
                }
                other => break other,
            }
        }
    }};
}

pub(super) fn db(e: mongodb::error::Error) -> HandlerError {
    HandlerError::Retryable(format!("database error: {}", short(&e)))
}

const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

impl OrderRun {
    /// An ACME failure as a job outcome: `rateLimited` waits for the CA's
    /// `Retry-After`; anything else retries with back-off.
    fn acme(&self, e: instant_acme::Error) -> HandlerError {
        match &e {
            instant_acme::Error::Api(p) if p.r#type.as_deref() == Some(RATE_LIMITED) => {
                HandlerError::RetryAfter {
                    reason: format!("ACME: {e}"),
                    after: self.retry_after.last().unwrap_or(Duration::from_secs(60)),
                }
            }
            _ => HandlerError::Retryable(format!("ACME: {e}")),
        }
    }

    async fn issue(&self, job: ClaimedJob) -> Result<(), HandlerError> {
        let certificate_id = job
            .payload
            .get_str("certificate_id")
            .map_err(|_| HandlerError::Permanent("job has no certificate_id".into()))?
            .to_string();
        let cert = certificate_of(&self.store, &certificate_id).await?;
        let result = self.account_and_drive(&job, &cert).await;
        let renewal = job.payload.get_str("renews").is_ok();
        match result {
            Ok(()) => {
                if renewal {
                    self.metrics
                        .renewals_total
                        .with_label_values(&["succeeded"])
                        .inc();
                }
                Ok(())
            }
            Err(HandlerError::LeaseLost) => Err(HandlerError::LeaseLost),
            Err(e) => {
                if renewal {
                    self.metrics
                        .renewals_total
                        .with_label_values(&["failed"])
                        .inc();
                }
                self.record_failure(&job, &cert, e).await
            }
        }
    }

    async fn issuer_of_cert(&self, cert: &Document) -> Result<IssuerAcme, HandlerError> {
        issuer_of(&self.store, cert.get_str("issuer_id").unwrap_or_default()).await
    }

    async fn account_and_drive(
        &self,
        job: &ClaimedJob,
        cert: &Document,
    ) -> Result<(), HandlerError> {
        let issuer = self.issuer_of_cert(cert).await?;
        let account = account(
            &issuer,
            &self.secrets,
            self.metrics.clone(),
            self.retry_after.clone(),
        )
        .await?;
        let dns01 = match &issuer.dns {
            Some(settings) => Some(Dns01::load(&issuer.id, settings.clone(), &self.secrets).await?),
            None => None,
        };
        self.drive(job, cert, &account, dns01.as_ref()).await
    }

    /// A failed attempt, persisted with the certificate so that it survives
    /// restarts and re-claims: one more consecutive failure, and no new
    /// attempt before `retry_at` (exponential, capped). The job retries then;
    /// once its attempts are spent, a certificate that has a current
    /// certificate is handed back to the renewal scan at `retry_at`, under a
    /// new job key (the failure count is part of it).
    async fn record_failure(
        &self,
        job: &ClaimedJob,
        cert: &Document,
        error: HandlerError,
    ) -> Result<(), HandlerError> {
        let (reason, hint, permanent) = match &error {
            HandlerError::Retryable(r) => (r.clone(), Duration::ZERO, false),
            HandlerError::RetryAfter { reason, after } => (reason.clone(), *after, false),
            HandlerError::Permanent(r) => (r.clone(), Duration::ZERO, true),
            HandlerError::LeaseLost => return Err(HandlerError::LeaseLost),
        };
        let last_attempt = permanent || job.attempt >= job.max_attempts;
        let failures = count(cert, "consecutive_failures") + 1;
        let delay = self.backoff.delay(failures as u32).max(hint);
        let retry_at = self.store.server_after(delay).await.map_err(db)?;
        let has_current = cert.get_document("current").is_ok();
        // A certificate in service stays `issued` while its renewal retries.
        let status = match (has_current, last_attempt) {
            (true, _) => cert
                .get_str("status")
                .ok()
                .filter(|s| *s == "revoked")
                .unwrap_or("issued"),
            (false, true) => "failed",
            (false, false) => "pending",
        };
        let mut set = doc! {
            "last_error": &reason,
            "status": status,
            "consecutive_failures": failures,
            "retry_at": retry_at,
        };
        if last_attempt && has_current && !permanent {
            set.insert("renewal_next_at", retry_at);
        }
        let _ = job
            .lease
            .fenced_update(
                CERTIFICATES,
                doc! { "_id": cert.get_str("_id").unwrap_or_default() },
                doc! { "$set": set, "$currentDate": { "updated_at": true, "last_failure_at": true } },
                false,
            )
            .await;
        tracing::warn!(certificate = cert.get_str("_id").unwrap_or_default(), failures, retry_in_secs = delay.as_secs(), error = %reason, "issuance failed");
        if permanent {
            Err(HandlerError::Permanent(reason))
        } else {
            Err(HandlerError::RetryAfter {
                reason,
                after: delay,
            })
        }
    }

    /// Finds this job's open order (resuming it at the CA) or opens one.
    async fn open_order(
        &self,
        job: &ClaimedJob,
        cert: &Document,
        account: &Account,
    ) -> Result<(Document, Order), HandlerError> {
        let orders = self.store.collection(ORDERS);
        let existing = orders
            .find_one(doc! { "job_id": job.lease.job_id, "stage": { "$in": OPEN_STAGES.to_vec() } })
            .await
            .map_err(db)?;
        if let Some(record) = existing {
            let url = record.get_str("url").unwrap_or_default().to_string();
            match nonce_retry!(account.order(url.clone()).await) {
                Ok(mut order) => {
                    let status = nonce_retry!(order.refresh().await.map(|s| s.status))
                        .map_err(|e| self.acme(e))?;
                    if status != OrderStatus::Invalid {
                        tracing::info!(order = %record.get_str("_id").unwrap_or_default(), ?status, "resuming the ACME order");
                        return Ok((record, order));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the recorded ACME order cannot be fetched; opening a new one")
                }
            }
            self.set_stage(job, &record, Stage::Abandoned, doc! {})
                .await?;
        }
        let names: Vec<String> = cert
            .get_array("dns_names")
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let identifiers: Vec<Identifier> = names.iter().cloned().map(Identifier::Dns).collect();
        let replaces = replaced_certificate(job, cert);
        let order = nonce_retry!(
            account
                .new_order(&ari::new_order(&identifiers, replaces.clone()))
                .await
        )
        .map_err(|e| self.acme(e))?;
        let id = format!("ord_{}", ObjectId::new().to_hex());
        let record = doc! {
            "_id": &id,
            "certificate_id": cert.get_str("_id").unwrap_or_default(),
            "project_id": cert.get_str("project_id").unwrap_or_default(),
            "job_id": job.lease.job_id,
            "url": order.url(),
            "dns_names": &names,
            "stage": Stage::Created.as_str(),
            "authorizations": [],
            "replaces": replaces.map(|r| r.to_string()),
            "created_at": self.store.server_now().await.map_err(db)?,
        };
        job.lease
            .fenced_update(
                ORDERS,
                doc! { "_id": &id },
                doc! { "$setOnInsert": record.clone() },
                true,
            )
            .await?;
        tracing::info!(order = %id, url = %order.url(), "opened an ACME order");
        self.pause_if_asked(Stage::Created).await;
        Ok((record, order))
    }

    async fn set_stage(
        &self,
        job: &ClaimedJob,
        record: &Document,
        stage: Stage,
        extra: Document,
    ) -> Result<(), HandlerError> {
        let mut set = doc! { "stage": stage.as_str() };
        set.extend(extra);
        job.lease
            .fenced_update(
                ORDERS,
                doc! { "_id": record.get_str("_id").unwrap_or_default() },
                doc! { "$set": set, "$currentDate": { "updated_at": true } },
                false,
            )
            .await?;
        Ok(())
    }

    async fn pause_if_asked(&self, stage: Stage) {
        if let Some((at, pause)) = &self.pause_after {
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

    async fn drive(
        &self,
        job: &ClaimedJob,
        cert: &Document,
        account: &Account,
        dns01: Option<&Dns01>,
    ) -> Result<(), HandlerError> {
        let certificate_id = cert.get_str("_id").unwrap_or_default().to_string();
        let challenge_type = match dns01 {
            Some(_) => ChallengeType::Dns01,
            None => ChallengeType::Http01,
        };
        // A certificate in service keeps its status while it renews.
        if cert.get_document("current").is_err() {
            job.lease
                .fenced_update(
                    CERTIFICATES,
                    doc! { "_id": &certificate_id },
                    doc! { "$set": { "status": "issuing" }, "$currentDate": { "updated_at": true } },
                    false,
                )
                .await?;
        }
        let (mut record, mut order) = self.open_order(job, cert, account).await?;
        let mut stage =
            Stage::parse(record.get_str("stage").unwrap_or("created")).unwrap_or(Stage::Created);
        let resumed_at = stage;

        if stage == Stage::Created {
            // Publish every pending authorization's key authorization — in
            // `challenges`, where each api replica can serve it (HTTP-01), or
            // in the zone (DNS-01) — then record that.
            let mut published = Vec::new();
            let mut records = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| self.acme(e))?;
                let identifier = authz.identifier().to_string();
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                let url = authz.url().to_string();
                let challenge = authz.challenge(challenge_type.clone()).ok_or_else(|| {
                    HandlerError::Permanent(format!(
                        "the CA offers no {challenge_type:?} challenge for {identifier}"
                    ))
                })?;
                let token = challenge.token.clone();
                let key_authorization = challenge.key_authorization();
                let mut entry = doc! { "url": url, "identifier": &identifier, "challenge_url": &challenge.url, "token": &token };
                if dns01.is_some() {
                    let record = TxtRecord {
                        name: dns01::record_name(&identifier),
                        value: key_authorization.dns_value(),
                    };
                    entry.extend(dns01::record_document(&record));
                    records.push(record);
                } else {
                    job.lease
                        .fenced_update(
                            CHALLENGES,
                            doc! { "_id": &token },
                            doc! { "$set": {
                                "key_authorization": key_authorization.as_str(),
                                "order_id": record.get_str("_id").unwrap_or_default(),
                                "identifier": &identifier,
                            }, "$currentDate": { "created_at": true } },
                            true,
                        )
                        .await?;
                }
                published.push(entry);
            }
            if let (Some(dns01), false) = (dns01, records.is_empty()) {
                dns01.publish(&records).await?;
            }
            self.set_stage(
                job,
                &record,
                Stage::ChallengesPublished,
                doc! { "authorizations": &published },
            )
            .await?;
            record.insert("authorizations", published);
            stage = Stage::ChallengesPublished;
            self.pause_if_asked(stage).await;
        }

        let txt_records = dns01::published_records(&authorizations_of(&record));
        if stage == Stage::ChallengesPublished {
            // The CA may look at any authoritative server: all must answer.
            // (Published again first: a resumed order may find them removed
            // by a failed wait of an earlier attempt, below.)
            if let (Some(dns01), false) = (dns01, txt_records.is_empty()) {
                if resumed_at == Stage::ChallengesPublished {
                    dns01.publish(&txt_records).await?;
                }
                if let Err(e) = dns01.wait_visible(&txt_records).await {
                    dns01.clean_up(&txt_records).await;
                    return Err(e);
                }
            }
            // Recorded first: on a resume we only ask again for challenges
            // still pending, which is harmless.
            self.set_stage(job, &record, Stage::Validating, doc! {})
                .await?;
            stage = Stage::Validating;
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz.map_err(|e| self.acme(e))?;
                if authz.status != AuthorizationStatus::Pending {
                    continue;
                }
                if let Some(mut challenge) = authz.challenge(challenge_type.clone()) {
                    if challenge.status == instant_acme::ChallengeStatus::Pending {
                        nonce_retry!(challenge.set_ready().await).map_err(|e| self.acme(e))?;
                    }
                }
            }
            self.pause_if_asked(stage).await;
        }

        if stage == Stage::Validating {
            let polled = nonce_retry!(
                order
                    .poll_ready(&RetryPolicy::new().timeout(Duration::from_secs(90)))
                    .await
            );
            let refused = match polled {
                Ok(OrderStatus::Ready | OrderStatus::Processing | OrderStatus::Valid) => None,
                Ok(OrderStatus::Pending) => {
                    return Err(HandlerError::Retryable(
                        "the CA has not validated yet".into(),
                    ))
                }
                Ok(OrderStatus::Invalid) => Some(None),
                // The CA answers a failed validation with the order's problem.
                Err(instant_acme::Error::Api(problem)) => Some(Some(problem)),
                Err(e) => return Err(self.acme(e)),
            };
            // The CA has decided: the challenge records have served.
            match dns01 {
                Some(dns01) if !txt_records.is_empty() => dns01.clean_up(&txt_records).await,
                Some(_) => {}
                None => self.forget_http01_challenges(&record).await,
            }
            if let Some(problem) = refused {
                let reason = self.invalid_reason(&mut order, problem).await;
                self.set_stage(job, &record, Stage::Invalid, doc! { "error": &reason })
                    .await?;
                return Err(HandlerError::Retryable(reason));
            }
            // Generate and store the key (encrypted) before the CSR leaves.
            let algorithm =
                KeyAlgorithm::parse(cert.get_str("key_algorithm").unwrap_or("ecdsa-p256"))
                    .ok_or_else(|| HandlerError::Permanent("unknown key algorithm".into()))?;
            let key_secret = format!("cert-keys/{}", record.get_str("_id").unwrap_or_default());
            let key = certs::generate_key(algorithm)
                .map_err(|e| HandlerError::Retryable(e.to_string()))?;
            self.secrets
                .get_or_create(&key_secret, || key.as_bytes().to_vec())
                .await
                .map_err(|e| HandlerError::Retryable(e.to_string()))?;
            self.set_stage(
                job,
                &record,
                Stage::Finalizing,
                doc! { "key_secret": &key_secret },
            )
            .await?;
            record.insert("key_secret", &key_secret);
            stage = Stage::Finalizing;
        }

        if stage == Stage::Finalizing {
            let key_secret = record.get_str("key_secret").unwrap_or_default().to_string();
            let key = self
                .secrets
                .get(&key_secret)
                .await
                .map_err(|e| HandlerError::Retryable(e.to_string()))?;
            let key_pem = String::from_utf8(key.to_vec())
                .map_err(|_| HandlerError::Permanent("stored key is not PEM".into()))?;
            let status =
                nonce_retry!(order.refresh().await.map(|s| s.status)).map_err(|e| self.acme(e))?;
            if status == OrderStatus::Ready {
                let algorithm =
                    KeyAlgorithm::parse(cert.get_str("key_algorithm").unwrap_or("ecdsa-p256"))
                        .ok_or_else(|| HandlerError::Permanent("unknown key algorithm".into()))?;
                let names: Vec<String> = record
                    .get_array("dns_names")
                    .map(|a| {
                        a.iter()
                            .filter_map(|b| b.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let csr = certs::csr_der(&key_pem, algorithm, &names)
                    .map_err(|e| HandlerError::Permanent(e.to_string()))?;
                nonce_retry!(order.finalize_csr(&csr).await).map_err(|e| self.acme(e))?;
                self.pause_if_asked(Stage::Finalizing).await;
            }
            let chain = nonce_retry!(
                order
                    .poll_certificate(&RetryPolicy::new().timeout(Duration::from_secs(90)))
                    .await
            )
            .map_err(|e| self.acme(e))?;
            self.store_issued(job, cert, &record, &chain, &key_pem, account)
                .await?;
        }
        Ok(())
    }

    /// Deletes an order's HTTP-01 key authorizations once the CA has
    /// decided (housekeeping removes any left behind by a crash here).
    async fn forget_http01_challenges(&self, order: &Document) {
        let order_id = order.get_str("_id").unwrap_or_default();
        let challenges = self.store.collection(CHALLENGES);
        if let Err(e) = challenges.delete_many(doc! { "order_id": order_id }).await {
            tracing::warn!(order = order_id, error = %short(&e), "HTTP-01 challenges not removed");
        }
    }

    /// The CA's suggested renewal window, when its directory offers ARI.
    /// Any failure leaves the default window in force (and is logged).
    async fn renewal_window(&self, account: &Account, issued: &certs::Issued) -> Option<AriWindow> {
        let id = ari::certificate_id(&issued.leaf_der)
            .map_err(|e| tracing::warn!(error = %e, "no ARI identifier for the certificate"))
            .ok()?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => AriWindow::from_response(&info, retry_after)
                .map_err(|e| tracing::warn!(error = %e, "ARI window refused"))
                .ok(),
            Err(instant_acme::Error::Unsupported(_)) => None,
            Err(e) => {
                tracing::warn!(error = %e, "fetching the ARI window failed; using the default window");
                None
            }
        }
    }

    /// The CA's reason an order failed: the first failed challenge's error,
    /// else the order's own problem.
    async fn invalid_reason(
        &self,
        order: &mut Order,
        problem: Option<instant_acme::Problem>,
    ) -> String {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            let identifier = authz.identifier().to_string();
            let Ok(state) = authz.refresh().await else {
                continue;
            };
            if state.status != AuthorizationStatus::Invalid {
                continue;
            }
            let detail = state
                .challenges
                .iter()
                .find_map(|c| c.error.as_ref())
                .or(problem.as_ref())
                .map(|e| {
                    e.detail
                        .clone()
                        .unwrap_or_else(|| e.r#type.clone().unwrap_or_default())
                })
                .unwrap_or_default();
            return format!("the CA refused {identifier}: {detail}");
        }
        match problem {
            Some(p) => format!("the CA refused the order: {}", p.detail.unwrap_or_default()),
            None => "the CA marked the order invalid".into(),
        }
    }

    async fn store_issued(
        &self,
        job: &ClaimedJob,
        cert: &Document,
        record: &Document,
        chain: &str,
        key_pem: &str,
        account: &Account,
    ) -> Result<(), HandlerError> {
        let issued =
            certs::inspect_chain(chain).map_err(|e| HandlerError::Retryable(e.to_string()))?;
        let key_public =
            certs::public_key_der(key_pem).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        if key_public != issued.public_key_der {
            return Err(HandlerError::Permanent(
                "the issued certificate does not match our key".into(),
            ));
        }
        let certificate_id = cert.get_str("_id").unwrap_or_default();
        let order_id = record.get_str("_id").unwrap_or_default();
        let renewal = job.payload.get_str("renews").is_ok();
        let ari = self.renewal_window(account, &issued).await;
        let due = match &ari {
            Some(w) => ari_due_ms(certificate_id, &issued.serial, w.start_ms, w.end_ms),
            None => renewal_due_ms(
                certificate_id,
                &issued.serial,
                issued.not_before_ms,
                issued.not_after_ms,
                cert.get_i64("renew_before_secs").ok(),
            ),
        };
        let mut set = renewal::schedule_fields(DateTime::from_millis(due));
        let mut unset = doc! { "retry_at": "", "renewal_job_id": "" };
        match &ari {
            Some(w) => {
                let next_fetch = self.store.server_after(w.refresh_after).await.map_err(db)?;
                set.insert("ari_next_fetch_at", next_fetch);
            }
            None => {
                unset.insert("ari_next_fetch_at", "");
            }
        }
        set.extend(doc! {
            "ari": ari.as_ref().map(|w| Bson::Document(ari::window_document(w))).unwrap_or(Bson::Null),
            "status": "issued",
            "last_error": Bson::Null,
            "consecutive_failures": 0i64,
            "current": {
                "serial": &issued.serial,
                "fingerprint_sha256": &issued.fingerprint_sha256,
                "not_before": DateTime::from_millis(issued.not_before_ms),
                "not_after": DateTime::from_millis(issued.not_after_ms),
                "chain_pem": chain,
                "key_secret": record.get_str("key_secret").unwrap_or_default(),
                "order_id": order_id,
            },
        });
        // One update, and none at all when a resumed run stored this serial
        // already: the counters move once per certificate issued.
        job.lease
            .fenced_update(
                CERTIFICATES,
                doc! { "_id": certificate_id, "current.serial": { "$ne": &issued.serial } },
                doc! {
                    "$set": set,
                    "$unset": unset,
                    "$push": { "issued_fingerprints": { "$each": [&issued.fingerprint_sha256], "$slice": -50 } },
                    "$inc": { "issued_count": 1i64, "renewal_count": if renewal { 1i64 } else { 0 } },
                    "$currentDate": { "updated_at": true, "issued_at": true },
                },
                false,
            )
            .await?;
        self.set_stage(job, record, Stage::Valid, doc! { "serial": &issued.serial })
            .await?;
        let event = Event::new(
            &job.lease.holder,
            "certificate.issued",
            format!(
                "projects/{}/certificates/{certificate_id}",
                cert.get_str("project_id").unwrap_or_default()
            ),
        )
        .with(doc! {
            "project_id": cert.get_str("project_id").unwrap_or_default(),
            "order_id": order_id,
            "serial": &issued.serial,
            "not_after": DateTime::from_millis(issued.not_after_ms),
        });
        Audit::new(self.store.clone()).record(event).await;
        tracing::info!(certificate = certificate_id, order = order_id, serial = %issued.serial, "certificate issued");
        Ok(())
    }
}

/// The certificate a renewal replaces, named for the CA (RFC 9773
/// `replaces`) when the CA gave it an ARI window: a CA without ARI refuses
/// the field.
fn replaced_certificate(
    job: &ClaimedJob,
    cert: &Document,
) -> Option<instant_acme::CertificateIdentifier<'static>> {
    job.payload.get_str("renews").ok()?;
    if !matches!(cert.get("ari"), Some(Bson::Document(_))) {
        return None;
    }
    let chain = cert
        .get_document("current")
        .ok()?
        .get_str("chain_pem")
        .ok()?;
    let leaf = certs::inspect_chain(chain).ok()?;
    ari::certificate_id(&leaf.leaf_der).ok()
}

fn count(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(Bson::Int64(n)) => *n,
        Some(Bson::Int32(n)) => *n as i64,
        _ => 0,
    }
}

fn authorizations_of(order: &Document) -> Vec<Document> {
    order
        .get_array("authorizations")
        .map(|a| a.iter().filter_map(|b| b.as_document().cloned()).collect())
        .unwrap_or_default()
}

/// A job's certificate; gone is permanent (the job cannot succeed).
pub async fn certificate_of(store: &Store, id: &str) -> Result<Document, HandlerError> {
    find_certificate(store, id)
        .await?
        .ok_or_else(|| HandlerError::Permanent(format!("certificate {id} no longer exists")))
}

/// The certificate `id`, or `None` once it has been deleted: for periodic
/// work, which has nothing left to do then.
pub async fn find_certificate(store: &Store, id: &str) -> Result<Option<Document>, HandlerError> {
    store
        .collection(CERTIFICATES)
        .find_one(doc! { "_id": id })
        .await
        .map_err(db)
}

/// An issuer's ACME settings, as orders and revocations need them.
pub async fn issuer_of(store: &Store, id: &str) -> Result<IssuerAcme, HandlerError> {
    let d = store
        .collection(ISSUERS)
        .find_one(doc! { "_id": id })
        .await
        .map_err(db)?
        .ok_or_else(|| HandlerError::Permanent(format!("issuer {id} no longer exists")))?;
    let eab = d.get_document("eab").ok();
    let eab_field = |f: &str| eab.and_then(|e| e.get_str(f).ok()).map(str::to_string);
    let dns = match d.get_document("dns") {
        Ok(settings) if d.get_str("challenge") == Ok("dns-01") => {
            Some(DnsSettings::from_document(settings).map_err(HandlerError::Permanent)?)
        }
        _ => None,
    };
    Ok(IssuerAcme {
        dns,
        id: id.to_string(),
        directory_url: d.get_str("directory_url").unwrap_or_default().to_string(),
        contact: d.get_str("contact").unwrap_or_default().to_string(),
        ca_bundle_pem: d.get_str("ca_bundle_pem").ok().map(str::to_string),
        eab_kid: eab_field("kid"),
        eab_legacy_hmac: eab_field("hmac_key"),
    })
}
