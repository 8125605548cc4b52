//! The audit log through the API: `GET /v1/projects/{project_id}/audit`
//! (a project's records, for its viewers) and `GET /v1/audit` (everything,
//! for global admins), filterable by action and actor, paged by `seq`.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Bson, Document};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::{date, ApiState, DEFAULT_PAGE, MAX_PAGE};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/audit", web::get().to(all))
        .route("/projects/{project_id}/audit", web::get().to(project));
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Records after this seq.
    pub after: Option<i64>,
    /// 1 to 200 [default: 50]
    pub limit: Option<i64>,
    /// An action (`certificate.issued`), or a prefix ending in a dot (`certificate.`).
    pub action: Option<String>,
    /// An actor, e.g. `token:tok_…` or a worker's instance id.
    pub actor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AuditRecordView {
    pub seq: i64,
    pub time: Option<String>,
    pub actor: String,
    pub action: String,
    pub target: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditRecordView>,
    /// Pass as `after` for the next page; null on the last.
    pub next: Option<i64>,
}

#[utoipa::path(get, path = "/v1/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn all(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    caller.require_global_admin()?;
    Ok(HttpResponse::Ok().json(page(&state, Document::new(), &query).await?))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/audit", tag = "audit",
    params(("project_id" = String, Path), AuditQuery),
    responses((status = 200, body = AuditPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn project(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<AuditQuery>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    super::projects::load(&state, &project_id).await?;
    // Every record about a project's objects names it in its target: the
    // project itself, or a path below it — an exact match and an anchored
    // literal prefix, both answered from the `target` index.
    let scope = doc! { "$or": [
        { "target": format!("projects/{project_id}") },
        { "target": { "$regex": format!("^projects/{}/", regex_escape(&project_id)) } },
    ] };
    Ok(HttpResponse::Ok().json(page(&state, scope, &query).await?))
}

async fn page(state: &ApiState, mut filter: Document, query: &AuditQuery) -> ApiResult<AuditPage> {
    let limit = match query.limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(n) => {
            return Err(Problem::bad_request(format!(
                "limit {n}: expected 1 to {MAX_PAGE}"
            )))
        }
    };
    if let Some(after) = query.after {
        filter.insert("_id", doc! { "$gt": after });
    }
    match query.action.as_deref() {
        Some(prefix) if prefix.ends_with('.') => {
            filter.insert(
                "action",
                doc! { "$regex": format!("^{}", regex_escape(prefix)) },
            );
        }
        Some(action) => {
            filter.insert("action", action);
        }
        None => {}
    }
    if let Some(actor) = &query.actor {
        filter.insert("actor", actor);
    }
    let records = crate::audit::find(&state.store, filter, limit + 1).await?;
    let next = (records.len() as i64 > limit)
        .then(|| records[limit as usize - 1].get_i64("seq").unwrap_or(0));
    let items = records
        .iter()
        .take(limit as usize)
        .map(|r| AuditRecordView {
            seq: r.get_i64("seq").unwrap_or(0),
            time: date(r, "time"),
            actor: r.get_str("actor").unwrap_or_default().into(),
            action: r.get_str("action").unwrap_or_default().into(),
            target: r.get_str("target").unwrap_or_default().into(),
            details: r
                .get_document("details")
                .map(|d| Bson::Document(d.clone()).into_relaxed_extjson())
                .unwrap_or(serde_json::Value::Null),
            prev_hash: r.get_str("prev_hash").unwrap_or_default().into(),
            hash: r.get_str("hash").unwrap_or_default().into(),
        })
        .collect();
    Ok(AuditPage { items, next })
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
