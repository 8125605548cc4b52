//! `distribute`: one serial of a certificate to one target
//! (docs/distribution.md). The steps run in the order
//! [`distribution::next`] gives — execute, validate, rollback — and each is
//! saved in the target's record before the next starts, so a job claimed
//! again after its worker died resumes where that worker was.
//!
//! Also the scheduler leader's sweep ([`enqueue_due`]) that enqueues one
//! job per target for every certificate whose serial may not have reached
//! them all.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use futures::future::BoxFuture;
use mongodb::bson::{doc, DateTime};
use serde::{Deserialize, Serialize};
use url::Url;
use zeroize::Zeroizing;

use super::certificate_of;
use crate::audit::{Audit, Event};
use crate::crypto::binding::{BindingError, BindingKey};
use crate::crypto::secrets::{SecretError, SecretRef, Secrets};
use crate::distribute::http::DeliveryError;
use crate::distribute::kubernetes_secret::{self, Cluster, TlsData};
use crate::distribute::ssh;
use crate::distribute::validate::{self, Checks};
use crate::distribute::webhook;
use crate::domain::backoff::Backoff;
use crate::domain::certificate::{Certificate, Current};
use crate::domain::certs::split_chain;
use crate::domain::distribution::{self, Delivery, DistributionState, Step, StepResult, Target};
use crate::domain::jobs::{self, DistributePayload};
use crate::domain::notifications;
use crate::domain::target_settings;
use crate::net::egress::EgressPolicy;
use crate::notify::outbox::Outbox;
use crate::observe::metrics::Metrics;
use crate::queue::handler::{HandlerError, JobHandler};
use crate::queue::jobs::{ClaimedJob, NewJob};
use crate::queue::lease::{LeaseError, Leases, Term};
use crate::services::key_release::{
    self, Destination, KeyRelease, ReleaseError, Requester, Serial,
};
use crate::store::certificates::{self, DISTRIBUTE_NEXT_AT};
use crate::store::distributions::{self, Queued};
use crate::store::fence::FencedWrite;
use crate::store::{targets, Store};
use crate::work::periodic::{enqueue_in_groups, TickReport};

/// How long one request to a target may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub struct Distribute {
    pub secrets: Secrets,
    /// Checks that targets and certificates' target lists are as bound.
    pub binding: BindingKey,
    /// The one door keys leave by.
    pub keys: KeyRelease,
    pub metrics: Arc<Metrics>,
    /// Where targets may be reached (`CAP_EGRESS_ALLOW_TARGETS`).
    pub egress: EgressPolicy,
    /// Delay after each failed attempt (the issuance back-off).
    pub backoff: Backoff,
    /// How the `validate` step checks (`CAP_DISTRIBUTE_VALIDATE_*`).
    pub checks: Checks,
    /// Told of a failed delivery.
    pub outbox: Outbox,
}

impl JobHandler for Distribute {
    fn run(&self, job: ClaimedJob) -> BoxFuture<'static, Result<(), HandlerError>> {
        let this = self.clone();
        Box::pin(async move { this.deliver(job).await })
    }
}

/// How a step went, when not well.
enum StepError {
    /// The step is over, and failed: the next step (or the final state) follows.
    Failed(String),
    /// Worth trying again later, from this step.
    Transient(String),
}

impl From<DeliveryError> for StepError {
    fn from(e: DeliveryError) -> Self {
        if e.is_transient() {
            StepError::Transient(e.to_string())
        } else {
            StepError::Failed(e.to_string())
        }
    }
}

impl From<SecretError> for StepError {
    fn from(e: SecretError) -> Self {
        if e.is_transient() {
            StepError::Transient(e.to_string())
        } else {
            StepError::Failed(e.to_string())
        }
    }
}

impl From<ReleaseError> for StepError {
    fn from(e: ReleaseError) -> Self {
        if e.is_transient() {
            StepError::Transient(e.to_string())
        } else {
            StepError::Failed(e.to_string())
        }
    }
}

impl From<mongodb::error::Error> for StepError {
    fn from(e: mongodb::error::Error) -> Self {
        StepError::Transient(format!("database error: {}", crate::store::short(&e)))
    }
}

/// What a `kubernetes-secret` target held before, sealed for the rollback.
#[derive(Serialize, Deserialize)]
struct Previous {
    /// The serial whose delivery replaced it.
    serial: String,
    /// `None`: there was no such Secret (or it held no TLS data).
    secret: Option<PreviousSecret>,
}

/// The Secret's TLS data as it was, byte for byte (base64, as the
/// Kubernetes API itself carries it): what is put back must be what was
/// there, even if it was not UTF-8.
#[derive(Serialize, Deserialize)]
struct PreviousSecret {
    tls_crt: String,
    tls_key: String,
    ca_crt: Option<String>,
}

impl Drop for PreviousSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.tls_key);
    }
}

impl PreviousSecret {
    fn of(data: &TlsData) -> PreviousSecret {
        let encode = |b: &[u8]| BASE64.encode(b);
        PreviousSecret {
            tls_crt: encode(&data.certificate_pem),
            tls_key: encode(&data.key_pem),
            ca_crt: data.ca_pem.as_deref().map(encode),
        }
    }

    fn data(&self) -> Result<TlsData, StepError> {
        let decode = |field: &str, text: &str| {
            BASE64
                .decode(text)
                .map_err(|e| StepError::Failed(format!("the kept Secret's {field}: {e}")))
        };
        Ok(TlsData {
            certificate_pem: decode("tls.crt", &self.tls_crt)?,
            key_pem: decode("tls.key", &self.tls_key)?,
            ca_pem: self
                .ca_crt
                .as_deref()
                .map(|c| decode("ca.crt", c))
                .transpose()?,
        })
    }
}

impl Distribute {
    /// Whether `target` (stored as `found`) and `cert`'s list of targets
    /// are as an API replica bound them.
    async fn check_bound(
        &self,
        found: &mongodb::bson::Document,
        target: &Target,
        cert: &Certificate,
    ) -> Result<(), BindingError> {
        self.binding
            .verify_target(target, targets::binding_mac(found))
            .await?;
        self.binding
            .verify_certificate_targets(
                &cert.project_id,
                &cert.id,
                &cert.target_ids,
                cert.targets_mac.as_deref(),
            )
            .await
    }

    async fn deliver(&self, job: ClaimedJob) -> Result<(), HandlerError> {
        let store = self.secrets.store().clone();
        let p: DistributePayload = job.payload_as()?;
        let cert = certificate_of(&store, &p.certificate_id).await?;
        let current = match &cert.current {
            Some(current) if current.serial == p.serial => current.clone(),
            _ => {
                tracing::info!(certificate = %cert.id, serial = %p.serial, target = %p.target_id, "not delivered: the certificate has a newer serial");
                return Ok(());
            }
        };
        if !cert.target_ids.contains(&p.target_id) {
            tracing::info!(certificate = %cert.id, target = %p.target_id, "not delivered: the certificate no longer goes to this target");
            return Ok(());
        }
        let id = distributions::record_id(&cert.id, &p.target_id);
        // Ends the record too: a job that stops here must not leave it
        // `queued` for ever.
        let give_up = |why: String| async {
            job.lease
                .fenced(distributions::abandoned(&id, &p.serial, &why))
                .await?;
            tracing::warn!(certificate = %cert.id, target = %p.target_id, serial = %p.serial, error = %why, "not delivered");
            Err(HandlerError::Permanent(why))
        };
        if current.revoked {
            return give_up("the serial was revoked before it was delivered".into()).await;
        }
        // Looked up in the certificate's own project: a target id moved
        // onto another project's certificate names nothing.
        let Some(found) = targets::in_project(&store, &cert.project_id, &p.target_id).await? else {
            return give_up(format!(
                "target {} no longer exists in project {}",
                p.target_id, cert.project_id
            ))
            .await;
        };
        let target = match targets::parse(&found) {
            Ok(target) => target,
            Err(why) => return give_up(why).await,
        };
        // Nothing a database writer changed steers the delivery: the
        // target and the certificate's list of targets are as an API
        // replica bound them, and every setting passes the API's rules again.
        let bound = self.check_bound(&found, &target, &cert).await;
        match bound {
            Ok(()) => {}
            Err(e) if e.is_transient() => return Err(HandlerError::Retryable(e.to_string())),
            Err(e) => {
                e.report(&self.metrics);
                return give_up(e.to_string()).await;
            }
        }
        let problems = target_settings::problems(&target);
        if !problems.is_empty() {
            let listed: Vec<String> = problems
                .iter()
                .map(|p| format!("{} {}", p.field, p.reason))
                .collect();
            return give_up(format!(
                "the stored target's settings break the API's rules: {}",
                listed.join("; ")
            ))
            .await;
        }
        if let Some(why) = &target.disabled {
            return give_up(format!(
                "target {} receives nothing until a project admin confirms it: {why}",
                target.name
            ))
            .await;
        }
        if target.kind() == distribution::TargetKind::Agent {
            // The agent fetches and reports itself; the record waits,
            // `queued`, with the serial it is to fetch.
            return Ok(());
        }
        let Some(record) = distributions::find(&store, &cert.id, &target.id)
            .await?
            .filter(|r| r.get_str("serial") == Ok(p.serial.as_str()))
        else {
            // The sweep records a delivery in the transaction after its
            // enqueue: a moment, or a leader's successor, away.
            return Err(HandlerError::Retryable(
                "the delivery is not recorded yet".into(),
            ));
        };
        if distributions::state_of(&record).is_some_and(DistributionState::is_final) {
            return Ok(());
        }
        let run = Run {
            this: self,
            id,
            previous_kept: distributions::has_previous(&record, &p.serial),
            store,
            cert,
            current,
            target,
            job,
        };
        run.job
            .lease
            .fenced(distributions::started(
                &run.id,
                &run.current.serial,
                run.job.lease.job_id,
            ))
            .await?;
        run.steps(distributions::step_of(&record)).await
    }
}

/// One claim of one delivery.
struct Run<'a> {
    this: &'a Distribute,
    store: Store,
    cert: Certificate,
    current: Current,
    target: Target,
    job: ClaimedJob,
    /// The record's id.
    id: String,
    /// What the target held is sealed already (a resumed execute).
    previous_kept: bool,
}

impl Run<'_> {
    /// Runs from `step` to the end, saving each next step before it starts.
    async fn steps(&self, mut step: Step) -> Result<(), HandlerError> {
        let kind = self.target.kind();
        let has_validation = self.target.validate.is_some();
        let mut errors: Vec<String> = Vec::new();
        loop {
            if self.superseded().await? {
                return Ok(());
            }
            let outcome = match step {
                Step::Execute => self.execute().await,
                Step::Validate => self.validate().await,
                Step::Rollback => self.roll_back().await,
            };
            let result = match outcome {
                Ok(()) => StepResult::Succeeded,
                Err(StepError::Failed(reason)) => {
                    errors.push(format!("{}: {reason}", step.as_str()));
                    StepResult::Failed
                }
                Err(StepError::Transient(reason)) => {
                    errors.push(format!("{}: {reason}", step.as_str()));
                    return self.retry_later(errors.join("; ")).await;
                }
            };
            match distribution::next(kind, step, result, has_validation) {
                Ok(next) => {
                    self.fenced(distributions::stepped(&self.id, &self.current.serial, next))
                        .await?;
                    step = next;
                }
                Err(state) => {
                    let error = (!errors.is_empty()).then(|| errors.join("; "));
                    return self.finish(state, error).await;
                }
            }
        }
    }

    async fn fenced(&self, write: FencedWrite) -> Result<(), HandlerError> {
        Ok(self.job.lease.fenced(write).await?)
    }

    /// Whether a newer serial's delivery took the record over since this
    /// run began: then this one stops, and its writes (which name its
    /// serial) would change nothing.
    async fn superseded(&self) -> Result<bool, HandlerError> {
        let record = distributions::find(&self.store, &self.cert.id, &self.target.id).await?;
        let superseded =
            record.is_none_or(|r| r.get_str("serial") != Ok(self.current.serial.as_str()));
        if superseded {
            tracing::info!(certificate = %self.cert.id, target = %self.target.name, serial = %self.current.serial, "delivery stopped: a newer serial is being delivered");
        }
        Ok(superseded)
    }

    /// A transient failure: back off like an issuance, or end as `failed`
    /// once the job's attempts are spent.
    async fn retry_later(&self, reason: String) -> Result<(), HandlerError> {
        if self.job.attempt >= self.job.max_attempts {
            // An upload cut off part-way may have left some new files
            // beside old ones: the kept set goes back if it can.
            let reason = match self.target.kind() {
                distribution::TargetKind::Ssh if self.previous_kept => {
                    match self.roll_back().await {
                        Ok(()) => format!("{reason}; the previous files were put back"),
                        Err(StepError::Failed(e) | StepError::Transient(e)) => {
                            format!("{reason}; and the previous files are not back: {e}")
                        }
                    }
                }
                _ => reason,
            };
            return self.finish(DistributionState::Failed, Some(reason)).await;
        }
        self.fenced(distributions::will_retry(
            &self.id,
            &self.current.serial,
            &reason,
        ))
        .await?;
        tracing::warn!(certificate = %self.cert.id, target = %self.target.name, attempt = self.job.attempt, error = %reason, "delivery failed; retrying");
        Err(HandlerError::RetryAfter {
            reason,
            after: self.this.backoff.delay(self.job.attempt),
        })
    }

    /// Records the end, audits and counts it.
    async fn finish(
        &self,
        state: DistributionState,
        error: Option<String>,
    ) -> Result<(), HandlerError> {
        let serial = &self.current.serial;
        self.fenced(distributions::finished(
            &self.id,
            serial,
            state,
            error.as_deref(),
        ))
        .await?;
        if self.superseded().await? {
            return Ok(());
        }
        let kind = self.target.kind().as_str();
        let mut details = doc! {
            "project_id": &self.cert.project_id,
            "serial": serial,
            "target_id": &self.target.id,
            "target": &self.target.name,
            "kind": kind,
        };
        if let Some(error) = &error {
            details.insert("error", error);
        }
        let action = format!("distribution.{}", state.as_str());
        Audit::new(self.store.clone())
            .record(
                Event::new(&self.job.lease.holder, &action, self.cert.audit_target()).with(details),
            )
            .await;
        self.this
            .metrics
            .distributions_total
            .with_label_values(&[kind, state.as_str()])
            .inc();
        match (state, error) {
            (DistributionState::Failed, error) => {
                let error = error.unwrap_or_else(|| "failed".into());
                tracing::warn!(certificate = %self.cert.id, target = %self.target.name, serial = %serial, error = %error, "delivery failed");
                let event = notifications::Event::DistributionFailed {
                    certificate_id: self.cert.id.clone(),
                    serial: serial.clone(),
                    target_id: self.target.id.clone(),
                };
                self.this
                    .outbox
                    .raise(&event, Some(&self.cert.project_id))
                    .await;
                Err(HandlerError::Permanent(error))
            }
            (state, error) => {
                tracing::info!(certificate = %self.cert.id, target = %self.target.name, serial = %serial, outcome = state.as_str(), error = ?error, "delivery finished");
                Ok(())
            }
        }
    }

    async fn execute(&self) -> Result<(), StepError> {
        match &self.target.delivery {
            Delivery::Webhook { url, include_key } => self.post_webhook(url, *include_key).await,
            Delivery::KubernetesSecret {
                namespace,
                secret_name,
                include_ca,
                kubeconfig,
            } => {
                let cluster = self.cluster(*kubeconfig).await?;
                if !self.previous_kept {
                    self.keep_previous(&cluster, namespace, secret_name).await?;
                }
                let key = self.private_key(Some(cluster.server.as_str())).await?;
                let data = TlsData {
                    certificate_pem: self.current.chain_pem.clone().into_bytes(),
                    key_pem: key.to_vec(),
                    ca_pem: include_ca.then(|| split_chain(&self.current.chain_pem).1.into_bytes()),
                };
                kubernetes_secret::replace(
                    &self.this.egress,
                    &cluster,
                    namespace,
                    secret_name,
                    &data,
                    REQUEST_TIMEOUT,
                )
                .await?;
                Ok(())
            }
            Delivery::Ssh {
                directory,
                reload_command,
                ..
            } => {
                let client = self.ssh_client().await?;
                let dir = ssh::certificate_dir(directory, &self.cert.id);
                if !self.previous_kept {
                    client.keep_previous(&dir).await?;
                    self.fenced(distributions::previous_kept(&self.id, &self.current.serial))
                        .await
                        .map_err(|e| StepError::Transient(e.to_string()))?;
                }
                let key = self.private_key(None).await?;
                let (leaf, issuers) = split_chain(&self.current.chain_pem);
                let files = [
                    ssh::Upload {
                        name: "cert.pem",
                        contents: leaf.as_bytes(),
                    },
                    ssh::Upload {
                        name: "chain.pem",
                        contents: issuers.as_bytes(),
                    },
                    ssh::Upload {
                        name: "fullchain.pem",
                        contents: self.current.chain_pem.as_bytes(),
                    },
                    ssh::Upload {
                        name: "key.pem",
                        contents: &key,
                    },
                ];
                client
                    .install(&dir, &files, reload_command.as_deref())
                    .await?;
                Ok(())
            }
            Delivery::Agent => Err(StepError::Failed(
                "agent targets are delivered by their agent".into(),
            )),
        }
    }

    /// An SSH client for the target, with its sealed private key.
    async fn ssh_client(&self) -> Result<ssh::SshClient, StepError> {
        let Delivery::Ssh {
            host,
            port,
            user,
            host_key,
            ..
        } = &self.target.delivery
        else {
            return Err(StepError::Failed("not an ssh target".into()));
        };
        let key = self.credential().await?;
        let host = ssh::SshHost {
            host: host.clone(),
            port: *port,
            user: user.clone(),
            host_key: host_key.clone(),
        };
        Ok(ssh::SshClient::new(&self.this.egress, &host, &key, ssh::DEFAULT_TIMEOUT).await?)
    }

    /// `origin`: the bound one the target's settings hold; the whole URL,
    /// whose path or query may hold a token, is sealed.
    async fn post_webhook(&self, origin: &str, include_key: bool) -> Result<(), StepError> {
        let sealed = SecretRef::target_url(&self.cert.project_id, &self.target.id);
        let url = match self.this.secrets.open_url(&sealed, origin).await {
            Ok(url) => url,
            Err(SecretError::NotFound(_)) => {
                return Err(StepError::Failed(
                    "the target's URL is not sealed: delete the target and make it again".into(),
                ))
            }
            Err(e) => return Err(e.into()),
        };
        let url = Url::parse(&url).map_err(|e| StepError::Failed(format!("the URL: {e}")))?;
        let secret = self.credential().await?;
        let mut body = serde_json::json!({
            "event": "certificate.distributed",
            "project_id": &self.cert.project_id,
            "certificate_id": &self.cert.id,
            "target": &self.target.name,
            "serial": &self.current.serial,
            "fingerprint_sha256": &self.current.fingerprint_sha256,
            "not_after": DateTime::from_millis(self.current.not_after_ms)
                .try_to_rfc3339_string()
                .unwrap_or_default(),
            "chain_pem": &self.current.chain_pem,
        });
        let key = if include_key {
            Some(self.private_key(None).await?)
        } else {
            None
        };
        if let Some(key) = &key {
            body["key_pem"] = serde_json::Value::String(String::from_utf8_lossy(key).into_owned());
        }
        let body = Zeroizing::new(serde_json::to_vec(&body).expect("JSON serializes"));
        let now = self.store.server_now().await?.timestamp_millis() / 1000;
        webhook::post(
            &self.this.egress,
            &url,
            &secret,
            &self.job.key,
            &body,
            now,
            webhook::DEFAULT_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    /// Seals what the Secret holds now, before it is replaced.
    async fn keep_previous(
        &self,
        cluster: &Cluster,
        namespace: &str,
        name: &str,
    ) -> Result<(), StepError> {
        let before =
            kubernetes_secret::read(&self.this.egress, cluster, namespace, name, REQUEST_TIMEOUT)
                .await?;
        let previous = Previous {
            serial: self.current.serial.clone(),
            secret: before.as_ref().map(PreviousSecret::of),
        };
        let sealed = Zeroizing::new(serde_json::to_vec(&previous).expect("JSON serializes"));
        self.this.secrets.put(&self.previous_ref(), &sealed).await?;
        self.fenced(distributions::previous_kept(&self.id, &self.current.serial))
            .await
            .map_err(|e| StepError::Transient(e.to_string()))
    }

    async fn validate(&self) -> Result<(), StepError> {
        let Some(endpoint) = &self.target.validate else {
            return Ok(());
        };
        validate::serves(
            &self.this.egress,
            endpoint,
            &self.current.fingerprint_sha256,
            self.this.checks,
        )
        .await
        .map_err(StepError::Failed)
    }

    async fn roll_back(&self) -> Result<(), StepError> {
        if let Delivery::Ssh {
            directory,
            reload_command,
            ..
        } = &self.target.delivery
        {
            let client = self.ssh_client().await?;
            let dir = ssh::certificate_dir(directory, &self.cert.id);
            client.roll_back(&dir, reload_command.as_deref()).await?;
            return Ok(());
        }
        let Delivery::KubernetesSecret {
            namespace,
            secret_name,
            kubeconfig,
            ..
        } = &self.target.delivery
        else {
            return Err(StepError::Failed(format!(
                "{} targets cannot be rolled back by workers",
                self.target.kind().as_str()
            )));
        };
        let sealed = self.this.secrets.get(&self.previous_ref()).await?;
        let previous: Previous = serde_json::from_slice(&sealed)
            .map_err(|e| StepError::Failed(format!("the kept Secret does not read: {e}")))?;
        let Some(secret) = previous
            .secret
            .filter(|_| previous.serial == self.current.serial)
        else {
            return Err(StepError::Failed(
                "there was no TLS Secret before this delivery: nothing to put back".into(),
            ));
        };
        let cluster = self.cluster(*kubeconfig).await?;
        kubernetes_secret::replace(
            &self.this.egress,
            &cluster,
            namespace,
            secret_name,
            &secret.data()?,
            REQUEST_TIMEOUT,
        )
        .await?;
        Ok(())
    }

    fn previous_ref(&self) -> SecretRef {
        SecretRef::distribution_previous(&self.cert.project_id, &self.cert.id, &self.target.id)
    }

    /// The target's sealed credential.
    async fn credential(&self) -> Result<Zeroizing<Vec<u8>>, StepError> {
        let secret = SecretRef::target_credential(&self.cert.project_id, &self.target.id);
        Ok(self.this.secrets.get(&secret).await?)
    }

    /// The private key of the current serial, through the key-release
    /// door: audited as sent to this target before it is opened.
    /// `cluster_server`: a Kubernetes target's API server.
    async fn private_key(
        &self,
        cluster_server: Option<&str>,
    ) -> Result<Zeroizing<Vec<u8>>, StepError> {
        let serial = Serial {
            project_id: &self.cert.project_id,
            certificate_id: &self.cert.id,
            serial: &self.current.serial,
            order_id: &self.current.order_id,
        };
        let destination = Destination::Target {
            target: &self.target,
            endpoint: key_release::endpoint_of(&self.target, cluster_server),
        };
        let requester = Requester::Job {
            key: &self.job.key,
            holder: &self.job.lease.holder,
        };
        Ok(self
            .this
            .keys
            .release(&serial, &destination, &requester)
            .await?)
    }

    /// The sealed kubeconfig's cluster, or the in-cluster service account.
    async fn cluster(&self, kubeconfig: bool) -> Result<Cluster, StepError> {
        if !kubeconfig {
            return Ok(Cluster::in_cluster(std::path::Path::new(
                kubernetes_secret::SERVICE_ACCOUNT_DIR,
            ))?);
        }
        let config = self.credential().await?;
        Cluster::from_kubeconfig(&config).map_err(StepError::Failed)
    }
}

/// Enqueues, as the leader of `term`, one `distribute` job per target for
/// up to `batch` certificates marked by an issuance or a change of targets
/// ([`DISTRIBUTE_NEXT_AT`]), records each delivery as queued, and clears
/// the marks. A leader that dies part-way leaves the marks for its
/// successor, whose enqueues meet the same keys.
pub async fn enqueue_due(
    leases: &Leases,
    term: &Term,
    batch: i64,
) -> Result<TickReport, LeaseError> {
    let store = leases.store();
    let (_, due) = certificates::due(
        store,
        DISTRIBUTE_NEXT_AT,
        batch,
        doc! { "_id": 1, "project_id": 1, "current.serial": 1, "targets": 1, DISTRIBUTE_NEXT_AT: 1 },
    )
    .await?;
    let mut deliveries = Vec::new();
    let mut marks = Vec::new();
    for cert in &due {
        let id = cert.get_str("_id").unwrap_or_default();
        let serial = cert
            .get_document("current")
            .ok()
            .and_then(|c| c.get_str("serial").ok());
        if let Some(serial) = serial {
            for (target_id, target_name) in certificates::targets(cert) {
                deliveries.push(Due {
                    project_id: cert.get_str("project_id").unwrap_or_default().to_string(),
                    certificate_id: id.to_string(),
                    serial: serial.to_string(),
                    target_id,
                    target_name,
                });
            }
        }
        if let Ok(seen) = cert.get_datetime(DISTRIBUTE_NEXT_AT) {
            marks.push(certificates::distribution_swept(id, *seen));
        }
    }
    let kinds = target_kinds(store, &deliveries).await?;
    let enqueued = enqueue_in_groups(
        leases,
        term,
        &deliveries,
        |d| {
            NewJob::from_spec(jobs::distribution(
                &d.certificate_id,
                &d.serial,
                &d.target_id,
            ))
        },
        |d, job_id| {
            distributions::queued(&Queued {
                project_id: &d.project_id,
                certificate_id: &d.certificate_id,
                target_id: &d.target_id,
                target_name: &d.target_name,
                kind: kinds
                    .get(&d.target_id)
                    .copied()
                    .unwrap_or(distribution::TargetKind::Webhook),
                serial: &d.serial,
                job_id,
            })
        },
        None,
    )
    .await?;
    leases.write_all_as_leader(term, marks).await?;
    Ok(TickReport::of(&enqueued))
}

/// One (certificate, serial, target) the sweep found.
struct Due {
    project_id: String,
    certificate_id: String,
    serial: String,
    target_id: String,
    target_name: String,
}

/// The kinds of the targets of `deliveries`, by target id.
async fn target_kinds(
    store: &Store,
    deliveries: &[Due],
) -> Result<std::collections::HashMap<String, distribution::TargetKind>, LeaseError> {
    let mut kinds = std::collections::HashMap::new();
    for d in deliveries {
        if kinds.contains_key(&d.target_id) {
            continue;
        }
        if let Some(t) = targets::in_project(store, &d.project_id, &d.target_id).await? {
            if let Ok(t) = targets::parse(&t) {
                kinds.insert(d.target_id.clone(), t.kind());
            }
        }
    }
    Ok(kinds)
}
