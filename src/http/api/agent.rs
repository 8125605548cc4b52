//! What `certautopilot agent` calls: the certificates an `agent` target
//! gets, each one's chain and key (audited, and not served when the read
//! cannot be audited), and the report of its delivery. A token of role
//! `agent` reaches these for the targets it names and nothing else.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::problem::{ApiResult, Problem};
use super::{date, string, ApiState, PageQuery};
use crate::crypto::binding::BindingError;
use crate::domain::distribution::{DistributionState, TargetKind};
use crate::domain::drift::Endpoint;
use crate::domain::notifications;
use crate::services::key_release::{self, Destination};
use crate::store::distributions::{self, Reported};
use crate::store::{certificates, targets};

pub fn routes(cfg: &mut web::ServiceConfig) {
    let base = "/projects/{project_id}/targets/{target_id}/deliveries";
    cfg.route(base, web::get().to(deliveries))
        .route(&format!("{base}/{{certificate_id}}"), web::get().to(bundle))
        .route(
            &format!("{base}/{{certificate_id}}/report"),
            web::post().to(report),
        );
}

/// A certificate an agent target gets: its newest serial, and where that
/// serial's delivery stands.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub certificate_id: String,
    pub name: String,
    pub dns_names: Vec<String>,
    /// None until first issued.
    pub serial: Option<String>,
    pub fingerprint_sha256: Option<String>,
    pub not_after: Option<String>,
    /// queued, running, validated, rolled_back or failed, for `serial`.
    pub state: Option<String>,
    /// Where the agent checks that the server serves the new certificate.
    pub validate: Option<Endpoint>,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next: Option<String>,
}

/// A certificate's newest serial with its private key: what an agent
/// writes.
#[derive(Serialize, ToSchema)]
pub struct Bundle {
    pub certificate_id: String,
    pub serial: String,
    pub fingerprint_sha256: String,
    /// Leaf first.
    pub chain_pem: String,
    pub key_pem: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryReport {
    /// The serial the report is of: a report of one that is no longer the
    /// newest is 409.
    pub serial: String,
    /// running, validated, rolled_back or failed.
    pub state: String,
    /// Why it failed or was rolled back.
    pub error: Option<String>,
}

/// The states an agent reports.
pub const REPORTED_STATES: &[&str] = &["running", "validated", "rolled_back", "failed"];
/// The longest error an agent reports, in characters.
pub const MAX_ERROR_LEN: usize = 2000;

/// The agent target `target_id` of `project_id`, for this caller.
async fn agent_target(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    target_id: &str,
) -> ApiResult<crate::domain::distribution::Target> {
    caller.require_agent(project_id, target_id)?;
    let found = targets::in_project(&state.store, project_id, target_id)
        .await?
        .ok_or_else(|| Problem::not_found("target"))?;
    let target = targets::parse(&found).map_err(Problem::conflict)?;
    state
        .binding()
        .verify_target(&target, targets::binding_mac(&found))
        .await
        .map_err(|e| refused_binding(state, e))?;
    if target.kind() != TargetKind::Agent {
        return Err(Problem::conflict(format!(
            "target {target_id} is a {} target, not an agent's",
            target.kind().as_str()
        )));
    }
    Ok(target)
}

/// A certificate of the project that goes to the target.
async fn delivered_certificate(
    state: &ApiState,
    project_id: &str,
    target_id: &str,
    certificate_id: &str,
) -> ApiResult<Document> {
    let found = certificates::in_project(&state.store, project_id, certificate_id)
        .await?
        .filter(|d| {
            certificates::targets(d)
                .iter()
                .any(|(id, _)| id == target_id)
        })
        .ok_or_else(|| Problem::not_found("certificate"))?;
    let ids: Vec<String> = certificates::targets(&found)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    state
        .binding()
        .verify_certificate_targets(
            project_id,
            certificate_id,
            &ids,
            found.get_str(certificates::TARGETS_MAC).ok(),
        )
        .await
        .map_err(|e| refused_binding(state, e))?;
    Ok(found)
}

/// A record that does not verify, as an answer: counted and logged, and
/// 409 naming it (503 when the key cannot be read now).
fn refused_binding(state: &ApiState, e: BindingError) -> Problem {
    if e.is_transient() {
        return Problem::unavailable(
            "the binding key cannot be read right now (is the KEK available?)",
        );
    }
    e.report(&state.metrics);
    Problem::conflict(e.to_string())
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/targets/{target_id}/deliveries", tag = "targets",
    params(("project_id" = String, Path), ("target_id" = String, Path), PageQuery),
    responses((status = 200, body = DeliveryPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn deliveries(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let (project_id, target_id) = path.into_inner();
    let target = agent_target(&state, &caller, &project_id, &target_id).await?;
    let (found, next) = certificates::page_naming_target(
        &state.store,
        &project_id,
        &target_id,
        query.after.as_deref(),
        query.limit()?,
    )
    .await?;
    let mut items = Vec::with_capacity(found.len());
    for d in &found {
        // A revoked serial is not to be served anywhere: nothing to fetch.
        let current = d
            .get_document("current")
            .ok()
            .filter(|c| !c.contains_key("revoked_at"));
        let serial = current.and_then(|c| string(c, "serial"));
        let id = d.get_str("_id").unwrap_or_default();
        let record = distributions::find(&state.store, id, &target_id).await?;
        let record_state = record
            .filter(|r| {
                serial
                    .as_deref()
                    .is_some_and(|s| r.get_str("serial") == Ok(s))
            })
            .and_then(|r| string(&r, "state"));
        items.push(DeliveryView {
            certificate_id: id.to_string(),
            name: d.get_str("name").unwrap_or_default().to_string(),
            dns_names: certificates::parse(d).dns_names,
            fingerprint_sha256: current.and_then(|c| string(c, "fingerprint_sha256")),
            not_after: current.and_then(|c| date(c, "not_after")),
            serial,
            state: record_state,
            validate: target.validate.clone(),
        });
    }
    Ok(HttpResponse::Ok().json(DeliveryPage { items, next }))
}

/// The chain and key of the newest serial; audited before it is read, and
/// not served when the read cannot be audited.
#[utoipa::path(get, path = "/v1/projects/{project_id}/targets/{target_id}/deliveries/{certificate_id}", tag = "targets",
    params(("project_id" = String, Path), ("target_id" = String, Path), ("certificate_id" = String, Path)),
    responses((status = 200, body = Bundle), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn bundle(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, target_id, certificate_id) = path.into_inner();
    let target = agent_target(&state, &caller, &project_id, &target_id).await?;
    let cert = delivered_certificate(&state, &project_id, &target_id, &certificate_id).await?;
    let current = cert
        .get_document("current")
        .map_err(|_| Problem::conflict("the certificate has not been issued yet"))?;
    if current.contains_key("revoked_at") {
        return Err(Problem::conflict(
            "the certificate's current serial is revoked: it is not delivered",
        ));
    }
    let s = |f: &str| current.get_str(f).unwrap_or_default().to_string();
    let destination = Destination::Target {
        target: &target,
        endpoint: key_release::endpoint_of(&target, None),
    };
    let key = super::certificates::release_key(
        &state,
        &caller,
        &project_id,
        &certificate_id,
        current,
        &destination,
    )
    .await?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(Bundle {
            certificate_id,
            serial: s("serial"),
            fingerprint_sha256: s("fingerprint_sha256"),
            chain_pem: s("chain_pem"),
            key_pem: String::from_utf8_lossy(&key).into_owned(),
        }))
}

/// Records where the delivery of a serial stands on the agent's server;
/// the final states are audited and counted, and a failure notified.
#[utoipa::path(post, path = "/v1/projects/{project_id}/targets/{target_id}/deliveries/{certificate_id}/report", tag = "targets",
    request_body = DeliveryReport,
    params(("project_id" = String, Path), ("target_id" = String, Path), ("certificate_id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn report(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String, String)>,
    body: web::Json<DeliveryReport>,
) -> ApiResult<HttpResponse> {
    let (project_id, target_id, certificate_id) = path.into_inner();
    agent_target(&state, &caller, &project_id, &target_id).await?;
    let reported = match DistributionState::parse(&body.state) {
        Some(s) if REPORTED_STATES.contains(&s.as_str()) => s,
        _ => {
            return Err(Problem::invalid(vec![super::problem::FieldError {
                field: "state".into(),
                reason: format!("{:?}: expected one of {REPORTED_STATES:?}", body.state),
            }]))
        }
    };
    if body
        .error
        .as_ref()
        .is_some_and(|e| e.chars().count() > MAX_ERROR_LEN)
    {
        return Err(Problem::invalid(vec![super::problem::FieldError {
            field: "error".into(),
            reason: format!("at most {MAX_ERROR_LEN} characters"),
        }]));
    }
    delivered_certificate(&state, &project_id, &target_id, &certificate_id).await?;
    let recorded = distributions::report(
        &state.store,
        &certificate_id,
        &target_id,
        &body.serial,
        reported,
        body.error.as_deref(),
    )
    .await?;
    match recorded {
        Reported::Applied => {}
        Reported::AlreadyEnded => return Ok(HttpResponse::NoContent().finish()),
        Reported::EndedOtherwise(ended) => {
            return Err(Problem::conflict(format!(
                "the delivery of serial {} already ended {}; an outcome is not rewritten",
                body.serial,
                ended.as_str()
            )))
        }
        Reported::NotNewest => {
            return Err(Problem::conflict(format!(
                "serial {} is not the newest one sent to this target",
                body.serial
            )))
        }
    }
    if reported.is_final() {
        let mut details = doc! {
            "project_id": &project_id, "serial": &body.serial, "target_id": &target_id,
            "kind": TargetKind::Agent.as_str(),
        };
        if let Some(e) = &body.error {
            details.insert("error", e);
        }
        super::audit(
            &state,
            caller.actor(),
            &format!("distribution.{}", reported.as_str()),
            format!("projects/{project_id}/certificates/{certificate_id}"),
            details,
        )
        .await;
        state
            .metrics
            .distributions_total
            .with_label_values(&[TargetKind::Agent.as_str(), reported.as_str()])
            .inc();
    }
    if reported == DistributionState::Failed {
        let event = notifications::Event::DistributionFailed {
            certificate_id: certificate_id.clone(),
            serial: body.serial.clone(),
            target_id: target_id.clone(),
        };
        state.outbox.raise(&event, Some(&project_id)).await;
    }
    Ok(HttpResponse::NoContent().finish())
}
