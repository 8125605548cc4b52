//! `/v1/projects/{project_id}/certificates`: what to issue, its state, the
//! chain, and (explicitly, for admins, audited) the private key.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::{audit, date, issuers, new_id, page, projects, string, targets, ApiState, PageQuery};
use crate::crypto::envelope::EnvelopeError;
use crate::crypto::secrets::SecretError;
use crate::domain::certificate::REVOCATION_REASONS;
use crate::domain::certs::{KeyAlgorithm, KEY_ALGORITHMS};
use crate::domain::drift::{endpoint_problems, Endpoint};
use crate::domain::grants::uncovered;
use crate::domain::issuer::in_zone;
use crate::domain::jobs::{self, JobKind};
use crate::domain::order::Stage;
use crate::domain::validate::{self, Reasons};
use crate::queue::jobs::NewJob;
use crate::services::key_release::{Destination, KeyRelease, ReleaseError, Serial};
use crate::store::{
    certificates, distributions as store_distributions, issuers as store_issuers, orders,
    projects as projects_store,
};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let base = "/projects/{project_id}/certificates";
    cfg.route(base, web::post().to(create))
        .route(base, web::get().to(list))
        .route(&format!("{base}/{{id}}"), web::get().to(get))
        .route(&format!("{base}/{{id}}/issue"), web::post().to(issue))
        .route(&format!("{base}/{{id}}/revoke"), web::post().to(revoke))
        .route(
            &format!("{base}/{{id}}/endpoints"),
            web::put().to(set_endpoints),
        )
        .route(
            &format!("{base}/{{id}}/targets"),
            web::put().to(set_targets),
        )
        .route(
            &format!("{base}/{{id}}/distributions"),
            web::get().to(distributions),
        )
        .route(
            &format!("{base}/{{id}}/private-key"),
            web::get().to(private_key),
        )
        .route(&format!("{base}/{{id}}/orders"), web::get().to(orders))
        .route(&format!("{base}/{{id}}/jobs"), web::get().to(jobs));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCertificate {
    pub name: String,
    /// 1 to 100 DNS names; a wildcard only with a dns-01 issuer.
    pub dns_names: Vec<String>,
    pub issuer_id: String,
    /// ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072 or rsa-4096 [default: ecdsa-p256]
    #[serde(default = "default_algorithm")]
    pub key_algorithm: String,
    /// Renew this long before expiry [default: two thirds into the lifetime,
    /// or the CA's ARI window].
    #[serde(default, deserialize_with = "crate::domain::whole_number::option")]
    pub renew_before_secs: Option<u64>,
    /// Issue a replacement at once when the certificate is revoked [default: true].
    #[serde(default = "yes")]
    pub replace_on_revoke: bool,
    /// Where the certificate is served, to be scanned for drift (at most 20)
    /// [default: none].
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Names of the project's distribution targets each issued serial is
    /// delivered to (at most 20) [default: none].
    #[serde(default)]
    pub targets: Vec<String>,
}

/// Distribution targets a certificate may go to at most.
pub const MAX_TARGETS: usize = 20;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetsUpdate {
    /// The whole list of target names (at most 20); the current serial goes
    /// to those it has not reached yet.
    pub targets: Vec<String>,
}

/// One target of a certificate: where its newest serial stands there.
#[derive(Debug, Serialize, ToSchema)]
pub struct DistributionView {
    pub target_id: String,
    pub target: String,
    pub kind: String,
    /// queued, running, validated, rolled_back or failed.
    pub state: String,
    pub serial: String,
    /// execute, validate or rollback: the step running or next.
    pub step: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub job_id: Option<String>,
    pub updated_at: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct DistributionPage {
    pub items: Vec<DistributionView>,
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointsUpdate {
    /// The whole list (at most 20); an empty list stops drift scans.
    pub endpoints: Vec<Endpoint>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// RFC 5280 reason: unspecified, keyCompromise, affiliationChanged,
    /// superseded, cessationOfOperation, privilegeWithdrawn or caCompromise
    /// [default: unspecified].
    #[serde(default = "unspecified")]
    pub reason: String,
    /// Issue a replacement [default: the certificate's `replace_on_revoke`].
    pub replace: Option<bool>,
}

fn unspecified() -> String {
    "unspecified".into()
}

fn default_algorithm() -> String {
    "ecdsa-p256".into()
}

/// A certificate: what was asked for, its state, and the current issue.
#[derive(Debug, Serialize, ToSchema)]
pub struct CertificateView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub dns_names: Vec<String>,
    pub issuer_id: String,
    pub key_algorithm: String,
    pub renew_before_secs: Option<i64>,
    /// pending, issuing, issued, failed or revoked.
    pub status: String,
    pub replace_on_revoke: bool,
    /// When the current certificate was revoked, and why.
    pub revoked_at: Option<String>,
    pub revocation_reason: Option<String>,
    pub last_error: Option<String>,
    /// Hex, lower case.
    pub serial: Option<String>,
    pub fingerprint_sha256: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// Leaf first.
    pub chain_pem: Option<String>,
    pub issued_count: i64,
    pub issued_at: Option<String>,
    /// When the current certificate is due for renewal: two thirds into its
    /// lifetime, `renew_before_secs` before expiry, or inside the CA's ARI window.
    pub renewal_due_at: Option<String>,
    /// Renewals so far (issues after the first that the schedule asked for).
    pub renewal_count: i64,
    /// The CA's suggested renewal window (RFC 9773), when it offers one.
    pub ari_window: Option<AriWindowView>,
    /// Failed issuance or renewal attempts in a row (0 after a success).
    pub consecutive_failures: i64,
    /// No new attempt before this time (the failure back-off).
    pub retry_at: Option<String>,
    /// Where the certificate is served.
    pub endpoints: Vec<Endpoint>,
    /// The distribution targets it goes to, by name.
    pub targets: Vec<String>,
    /// What each endpoint served at the last scan (empty until scanned).
    pub drift: Vec<DriftView>,
    /// The worst state over all endpoints: in_sync, unreachable, stale or foreign.
    pub drift_state: Option<String>,
    pub drift_checked_at: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
    /// Only when just created: the issue job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// One endpoint at the last drift scan.
#[derive(Debug, Serialize, ToSchema)]
pub struct DriftView {
    pub host: String,
    pub port: u16,
    pub sni: Option<String>,
    /// in_sync (serves the current certificate), stale (an older one of
    /// ours), foreign (someone else's) or unreachable.
    pub state: String,
    pub checked_at: Option<String>,
    /// Since when the endpoint has been in this state.
    pub since: Option<String>,
    pub served_serial: Option<String>,
    pub served_fingerprint_sha256: Option<String>,
    pub served_not_after: Option<String>,
    /// Why the endpoint was unreachable.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AriWindowView {
    pub start: Option<String>,
    pub end: Option<String>,
    pub explanation_url: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CertificatePage {
    pub items: Vec<CertificateView>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct IssueAccepted {
    pub job_id: String,
    pub already_in_progress: bool,
}

#[derive(Serialize, ToSchema)]
pub struct OrderView {
    pub id: String,
    pub url: String,
    /// created, challenges_published, validating, finalizing, valid, invalid or abandoned.
    pub stage: String,
    pub in_flight: bool,
    pub error: Option<String>,
    pub job_id: Option<String>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    pub items: Vec<OrderView>,
    pub next: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobView {
    pub id: String,
    /// queued, running, done or dead.
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    pub last_error: Option<String>,
    pub run_at: Option<String>,
    pub created_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct JobPage {
    pub items: Vec<JobView>,
    pub next: Option<String>,
}

fn view(d: &Document) -> CertificateView {
    let current = d.get_document("current").ok();
    let field = |f: &str| current.and_then(|c| string(c, f));
    let when = |f: &str| current.and_then(|c| date(c, f));
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    CertificateView {
        id: s("_id"),
        project_id: s("project_id"),
        name: s("name"),
        dns_names: d
            .get_array("dns_names")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        issuer_id: s("issuer_id"),
        key_algorithm: s("key_algorithm"),
        renew_before_secs: d.get_i64("renew_before_secs").ok(),
        status: s("status"),
        replace_on_revoke: d.get_bool("replace_on_revoke").unwrap_or(true),
        revoked_at: when("revoked_at"),
        revocation_reason: field("revocation_reason"),
        last_error: string(d, "last_error"),
        serial: field("serial"),
        fingerprint_sha256: field("fingerprint_sha256"),
        not_before: when("not_before"),
        not_after: when("not_after"),
        chain_pem: field("chain_pem"),
        issued_count: d.get_i64("issued_count").unwrap_or(0),
        issued_at: date(d, "issued_at"),
        renewal_due_at: date(d, "renewal_due_at"),
        renewal_count: d.get_i64("renewal_count").unwrap_or(0),
        ari_window: d.get_document("ari").ok().map(|a| AriWindowView {
            start: date(a, "window_start"),
            end: date(a, "window_end"),
            explanation_url: string(a, "explanation_url"),
        }),
        consecutive_failures: d.get_i64("consecutive_failures").unwrap_or(0),
        retry_at: date(d, "retry_at"),
        endpoints: certificates::endpoints(d),
        targets: certificates::targets(d)
            .into_iter()
            .map(|(_, name)| name)
            .collect(),
        drift: documents(d, "drift")
            .map(|e| DriftView {
                host: e.get_str("host").unwrap_or_default().to_string(),
                port: e.get_i32("port").unwrap_or(0) as u16,
                sni: string(e, "sni"),
                state: e.get_str("state").unwrap_or_default().to_string(),
                checked_at: date(e, "checked_at"),
                since: date(e, "since"),
                served_serial: string(e, "served_serial"),
                served_fingerprint_sha256: string(e, "served_fingerprint_sha256"),
                served_not_after: date(e, "served_not_after"),
                error: string(e, "error"),
            })
            .collect(),
        drift_state: string(d, "drift_state"),
        drift_checked_at: date(d, "drift_checked_at"),
        created_at: date(d, "created_at"),
        updated_at: date(d, "updated_at"),
        job_id: None,
    }
}

fn documents<'a>(d: &'a Document, field: &str) -> impl Iterator<Item = &'a Document> {
    d.get_array(field)
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter_map(Bson::as_document)
}

fn render(d: &Document) -> serde_json::Value {
    serde_json::to_value(view(d)).expect("a view serializes")
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/certificates", tag = "certificates", request_body = NewCertificate,
    params(("project_id" = String, Path)),
    responses((status = 201, body = CertificateView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<NewCertificate>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    projects::load(&state, &project_id).await?;
    let mut reasons = Reasons::default();
    validate::name(&mut reasons, "name", &body.name);
    if KeyAlgorithm::parse(&body.key_algorithm).is_none() {
        reasons.add(
            "key_algorithm",
            format!(
                "{:?}: expected one of {KEY_ALGORITHMS:?}",
                body.key_algorithm
            ),
        );
    }
    if let Some(secs) = body.renew_before_secs {
        if !(3600..=365 * 86_400).contains(&secs) {
            reasons.add(
                "renew_before_secs",
                "expected 3600 (an hour) to 31536000 (a year)",
            );
        }
    }
    validate::dns_names(&mut reasons, &body.dns_names, true);
    for (field, reason) in endpoint_problems(&body.endpoints) {
        reasons.add(field, reason);
    }
    target_name_problems(&mut reasons, &body.targets);
    if !reasons.is_empty() {
        return Err(Problem::invalid(reasons.0));
    }
    let targets =
        targets::resolve(&state, &caller, &project_id, &body.targets, "targets", &[]).await?;
    // What the request asks of what is stored (the issuer, the project's
    // grants): 409, the request being valid in itself.
    let mut conflicts = Reasons::default();
    // Read as the workers read it (one parse), so the two cannot disagree.
    let issuer = match issuers::load(&state, &project_id, &body.issuer_id).await {
        Ok(stored) => match store_issuers::parse(&stored) {
            Ok(issuer) => Some(issuer),
            Err(e) => {
                conflicts.add("issuer_id", format!("the issuer cannot be used: {e}"));
                None
            }
        },
        Err(p) if p.status == 404 => {
            conflicts.add("issuer_id", "no such issuer in this project");
            None
        }
        Err(p) => return Err(p),
    };
    if let Some(issuer) = &issuer {
        for (i, name) in body.dns_names.iter().enumerate() {
            if name.starts_with("*.") && !issuer.allows_wildcards() {
                conflicts.add(
                    format!("dns_names[{i}]"),
                    format!("{name:?} is a wildcard; wildcards need an issuer with the dns-01 challenge"),
                );
            }
            if let Some(zone) = issuer.dns.as_ref().map(|d| &d.zone) {
                if !in_zone(name, zone) {
                    conflicts.add(
                        format!("dns_names[{i}]"),
                        format!("{name:?} is outside the issuer's DNS zone {zone}"),
                    );
                }
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(Problem::conflicting(conflicts.0));
    }
    // A project certifies only the names a global admin granted it.
    let grants = projects_store::domains(&state.store, &project_id)
        .await?
        .unwrap_or_default();
    let outside = uncovered(&grants, &body.dns_names);
    if !outside.is_empty() {
        return Err(Problem::forbidden(format!(
            "{} not granted to this project (a global admin grants names: PUT /v1/projects/{project_id}/domains)",
            outside.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
        )));
    }
    let id = new_id("crt");
    let targets_mac = bind_targets(&state, &project_id, &id, &targets).await?;
    let now = state.store.server_now().await?;
    let new = certificates::NewCertificate {
        id: &id,
        project_id: &project_id,
        name: body.name.trim(),
        dns_names: &body.dns_names,
        issuer_id: &body.issuer_id,
        key_algorithm: &body.key_algorithm,
        renew_before_secs: body.renew_before_secs.map(|s| s as i64),
        replace_on_revoke: body.replace_on_revoke,
        endpoints: &body.endpoints,
        targets: &targets,
        targets_mac: &targets_mac,
    };
    let record = certificates::insert(&state.store, new, now).await?;
    let job = enqueue_issue(&state, &id, 1).await?;
    audit(
        &state,
        caller.actor(),
        "certificate.created",
        format!("projects/{project_id}/certificates/{id}"),
        doc! { "dns_names": &body.dns_names, "issuer_id": &body.issuer_id, "job_id": &job },
    )
    .await;
    let mut out = view(&record);
    out.job_id = Some(job);
    Ok(HttpResponse::Created().json(out))
}

/// Enqueues issue request number `generation` (idempotent per number).
async fn enqueue_issue(
    state: &ApiState,
    certificate_id: &str,
    generation: i64,
) -> ApiResult<String> {
    let job = NewJob::from_spec(jobs::issue_requested(certificate_id, generation));
    Ok(state.queue.enqueue(&job).await?.id.to_hex())
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/certificates", tag = "certificates",
    params(("project_id" = String, Path), PageQuery),
    responses((status = 200, body = CertificatePage), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    let found = certificates::page(
        &state.store,
        &project_id,
        query.after.as_deref(),
        query.limit()?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page(found, render)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/certificates/{id}", tag = "certificates", params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = CertificateView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    Ok(HttpResponse::Ok().json(render(&load(&state, &project_id, &id).await?)))
}

/// (Re)issue now: a new issue request, unless one is already in progress.
#[utoipa::path(post, path = "/v1/projects/{project_id}/certificates/{id}/issue", tag = "certificates", params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = IssueAccepted), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn issue(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    load(&state, &project_id, &id).await?;
    let active = state
        .queue
        .active_for_certificate(JobKind::IssueCertificate, &id)
        .await?;
    if let Some(job_id) = active {
        return Ok(HttpResponse::Accepted()
            .json(serde_json::json!({ "job_id": job_id.to_hex(), "already_in_progress": true })));
    }
    let generation = certificates::count_issue_request(&state.store, &project_id, &id)
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?;
    let job = enqueue_issue(&state, &id, generation).await?;
    audit(
        &state,
        caller.actor(),
        "certificate.issue_requested",
        format!("projects/{project_id}/certificates/{id}"),
        doc! { "job_id": &job },
    )
    .await;
    Ok(HttpResponse::Accepted()
        .json(serde_json::json!({ "job_id": job, "already_in_progress": false })))
}

/// Revokes the current certificate at its CA (RFC 8555 `revokeCert`), and
/// replaces it when asked (or when its policy says so). Admins only, audited.
#[utoipa::path(post, path = "/v1/projects/{project_id}/certificates/{id}/revoke", tag = "certificates", request_body = RevokeRequest,
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 202, body = IssueAccepted), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn revoke(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<RevokeRequest>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Admin)?;
    let cert = load(&state, &project_id, &id).await?;
    if !REVOCATION_REASONS.contains(&body.reason.as_str()) {
        let mut reasons = Reasons::default();
        reasons.add(
            "reason",
            format!("{:?}: expected one of {REVOCATION_REASONS:?}", body.reason),
        );
        return Err(Problem::invalid(reasons.0));
    }
    let serial = cert
        .get_document("current")
        .ok()
        .and_then(|c| c.get_str("serial").ok())
        .ok_or_else(|| Problem::conflict("the certificate has not been issued yet"))?
        .to_string();
    let replace = body
        .replace
        .unwrap_or_else(|| cert.get_bool("replace_on_revoke").unwrap_or(true));
    let job = NewJob::from_spec(jobs::revocation(&id, &serial, &body.reason, replace));
    let enqueued = state.queue.enqueue(&job).await?;
    if enqueued.created {
        audit(
            &state,
            caller.actor(),
            "certificate.revoke_requested",
            format!("projects/{project_id}/certificates/{id}"),
            doc! { "serial": &serial, "reason": &body.reason, "replace": replace, "job_id": enqueued.id.to_hex() },
        )
        .await;
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({
        "job_id": enqueued.id.to_hex(),
        "already_in_progress": !enqueued.created,
    })))
}

/// Replaces the endpoints scanned for drift and scans them at the
/// scheduler's next tick. Drift recorded for endpoints no longer listed is
/// dropped.
#[utoipa::path(put, path = "/v1/projects/{project_id}/certificates/{id}/endpoints", tag = "certificates", request_body = EndpointsUpdate,
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = CertificateView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn set_endpoints(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<EndpointsUpdate>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    load(&state, &project_id, &id).await?;
    let mut reasons = Reasons::default();
    for (field, reason) in endpoint_problems(&body.endpoints) {
        reasons.add(field, reason);
    }
    if !reasons.is_empty() {
        return Err(Problem::invalid(reasons.0));
    }
    let now = state.store.server_now().await?;
    let updated = certificates::set_endpoints(&state.store, &project_id, &id, &body.endpoints, now)
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))?;
    let endpoints: Vec<Document> = body
        .endpoints
        .iter()
        .map(certificates::endpoint_document)
        .collect();
    audit(
        &state,
        caller.actor(),
        "certificate.endpoints_changed",
        format!("projects/{project_id}/certificates/{id}"),
        doc! { "endpoints": endpoints },
    )
    .await;
    Ok(HttpResponse::Ok().json(render(&updated)))
}

/// The binding MAC of certificate `id`'s `targets`; 503 when the KEK is away.
async fn bind_targets(
    state: &ApiState,
    project_id: &str,
    id: &str,
    targets: &[(String, String)],
) -> ApiResult<String> {
    let ids: Vec<String> = targets.iter().map(|(id, _)| id.clone()).collect();
    state
        .binding()
        .certificate_targets_mac(project_id, id, &ids)
        .await
        .map_err(|e| {
            tracing::error!(certificate = %id, error = %e, "cannot bind a certificate's targets");
            Problem::unavailable("the targets cannot be bound right now (is the KEK available?)")
        })
}

fn target_name_problems(reasons: &mut Reasons, names: &[String]) {
    if names.len() > MAX_TARGETS {
        reasons.add(
            "targets",
            format!("lists {} targets; at most {MAX_TARGETS}", names.len()),
        );
        return;
    }
    for (i, name) in names.iter().enumerate() {
        validate::name(reasons, &format!("targets[{i}]"), name);
        if names[..i].contains(name) {
            reasons.add(format!("targets[{i}]"), "is listed twice");
        }
    }
}

/// Replaces the distribution targets; the current serial is delivered to
/// those it has not reached at the scheduler's next tick.
#[utoipa::path(put, path = "/v1/projects/{project_id}/certificates/{id}/targets", tag = "certificates", request_body = TargetsUpdate,
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = CertificateView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn set_targets(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: web::Json<TargetsUpdate>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    let cert = load(&state, &project_id, &id).await?;
    let mut reasons = Reasons::default();
    target_name_problems(&mut reasons, &body.targets);
    if !reasons.is_empty() {
        return Err(Problem::invalid(reasons.0));
    }
    // What it goes to now counts as already named only when the stored
    // list is as an API replica bound it: a target a database writer added
    // must be named by an admin.
    let stored: Vec<String> = certificates::targets(&cert)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let already = match state
        .binding()
        .verify_certificate_targets(
            &project_id,
            &id,
            &stored,
            cert.get_str(certificates::TARGETS_MAC).ok(),
        )
        .await
    {
        Ok(()) => stored,
        Err(e) if e.is_transient() => {
            return Err(Problem::unavailable(
                "the targets cannot be checked right now (is the KEK available?)",
            ))
        }
        Err(_) => Vec::new(),
    };
    let targets = targets::resolve(
        &state,
        &caller,
        &project_id,
        &body.targets,
        "targets",
        &already,
    )
    .await?;
    let targets_mac = bind_targets(&state, &project_id, &id, &targets).await?;
    let now = state.store.server_now().await?;
    let updated =
        certificates::set_targets(&state.store, &project_id, &id, &targets, &targets_mac, now)
            .await?
            .ok_or_else(|| Problem::not_found("certificate"))?;
    audit(
        &state,
        caller.actor(),
        "certificate.targets_changed",
        format!("projects/{project_id}/certificates/{id}"),
        doc! { "targets": &body.targets },
    )
    .await;
    Ok(HttpResponse::Ok().json(render(&updated)))
}

/// Where the newest serial stands at each target.
#[utoipa::path(get, path = "/v1/projects/{project_id}/certificates/{id}/distributions", tag = "certificates",
    params(("project_id" = String, Path), ("id" = String, Path), PageQuery),
    responses((status = 200, body = DistributionPage), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn distributions(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    load(&state, &project_id, &id).await?;
    let found = store_distributions::page_for_certificate(
        &state.store,
        &id,
        query.after.as_deref(),
        query.limit()?,
    )
    .await?;
    let render = |d: &Document| {
        let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
        serde_json::to_value(DistributionView {
            target_id: s("target_id"),
            target: s("target_name"),
            kind: s("kind"),
            state: s("state"),
            serial: s("serial"),
            step: s("step"),
            attempts: d.get_i64("attempts").unwrap_or(0),
            last_error: string(d, "last_error"),
            job_id: d.get_object_id("job_id").map(|j| j.to_hex()).ok(),
            updated_at: date(d, "updated_at"),
            finished_at: date(d, "finished_at"),
        })
        .expect("a view serializes")
    };
    Ok(HttpResponse::Ok().json(page(found, render)))
}

/// The current private key, PEM. Admins only, and audited every time.
#[utoipa::path(get, path = "/v1/projects/{project_id}/certificates/{id}/private-key", tag = "certificates", params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = String, content_type = "application/x-pem-file"), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn private_key(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Admin)?;
    let cert = load(&state, &project_id, &id).await?;
    let current = cert
        .get_document("current")
        .map_err(|_| Problem::conflict("the certificate has not been issued yet"))?;
    let key = release_key(
        &state,
        &caller,
        &project_id,
        &id,
        current,
        &Destination::Caller,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-pem-file")
        .insert_header(("Cache-Control", "no-store"))
        .body(key.to_vec()))
}

/// The private key of `current` (a certificate's current serial), sent by
/// `caller` to `destination` through the key-release door: permitted,
/// audited as `key.released`, then opened; not served when the release
/// cannot be audited.
pub(crate) async fn release_key(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    certificate_id: &str,
    current: &Document,
    destination: &Destination<'_>,
) -> ApiResult<zeroize::Zeroizing<Vec<u8>>> {
    // The key is named by this certificate and its order; the record is
    // sealed for that owner, so an order id moved here from another
    // project's certificate names a key that does not open.
    let order_id = current
        .get_str("order_id")
        .map_err(|_| Problem::conflict("the certificate has not been issued yet"))?;
    let serial = Serial {
        project_id,
        certificate_id,
        serial: current.get_str("serial").unwrap_or_default(),
        order_id,
    };
    let keys = KeyRelease::new(state.secrets.clone(), state.audit.clone());
    keys.release(&serial, destination, &caller.requester(project_id))
        .await
        .map_err(|e| {
            tracing::error!(certificate = %certificate_id, error = %e, "a private key was not released");
            match e {
                ReleaseError::Refused(why) => Problem::forbidden(why),
                ReleaseError::NotAudited(_) => Problem::unavailable(
                    "the read cannot be audited right now, so the key is not served",
                ),
                ReleaseError::Key(SecretError::Envelope(EnvelopeError::WrongRecord { .. })) => {
                    Problem::conflict(
                        "the stored private key is not this certificate's: it was sealed for another owner (the database was altered)",
                    )
                }
                ReleaseError::Key(SecretError::NotFound(_)) => Problem::conflict(
                    "no private key is stored for this certificate's current order",
                ),
                ReleaseError::Key(_) => Problem::unavailable(
                    "the private key cannot be decrypted right now (is the KEK available?)",
                ),
            }
        })
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/certificates/{id}/orders", tag = "certificates",
    params(("project_id" = String, Path), ("id" = String, Path), PageQuery),
    responses((status = 200, body = OrderPage), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn orders(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    load(&state, &project_id, &id).await?;
    let render = |o: &Document| {
        let stage = o.get_str("stage").unwrap_or_default();
        serde_json::to_value(OrderView {
            id: o.get_str("_id").unwrap_or_default().into(),
            url: o.get_str("url").unwrap_or_default().into(),
            stage: stage.into(),
            in_flight: Stage::parse(stage).is_some_and(Stage::is_open),
            error: string(o, "error"),
            job_id: o.get_object_id("job_id").map(|j| j.to_hex()).ok(),
            created_at: date(o, "created_at"),
            updated_at: date(o, "updated_at"),
        })
        .expect("a view serializes")
    };
    let found =
        orders::page_for_certificate(&state.store, &id, query.after.as_deref(), query.limit()?)
            .await?;
    Ok(HttpResponse::Ok().json(page(found, render)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/certificates/{id}/jobs", tag = "certificates",
    params(("project_id" = String, Path), ("id" = String, Path), PageQuery),
    responses((status = 200, body = JobPage), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn jobs(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    load(&state, &project_id, &id).await?;
    let limit = query.limit()?;
    // Job ids are ObjectIds: in creation order, like the pages.
    let after = match &query.after {
        Some(after) => Some(
            ObjectId::parse_str(after)
                .map_err(|_| Problem::bad_request(format!("after {after:?}: not a job id")))?,
        ),
        None => None,
    };
    let (found, more) = state
        .queue
        .page_for_certificate(JobKind::IssueCertificate, &id, after, limit)
        .await?;
    let id_of = |j: &Document| {
        j.get_object_id("_id")
            .map(|o| o.to_hex())
            .unwrap_or_default()
    };
    let next = more.then(|| found.last().map(id_of)).flatten();
    let items: Vec<JobView> = found
        .iter()
        .map(|j| JobView {
            id: id_of(j),
            state: j.get_str("state").unwrap_or_default().into(),
            attempt: j.get_i32("attempt").unwrap_or(0),
            max_attempts: j.get_i32("max_attempts").unwrap_or(0),
            last_error: string(j, "last_error"),
            run_at: date(j, "run_at"),
            created_at: date(j, "created_at"),
        })
        .collect();
    Ok(HttpResponse::Ok().json(JobPage { items, next }))
}

/// The certificate of this project, or 404.
pub async fn load(state: &ApiState, project_id: &str, id: &str) -> ApiResult<Document> {
    certificates::in_project(&state.store, project_id, id)
        .await?
        .ok_or_else(|| Problem::not_found("certificate"))
}
