//! `/v1/projects`: tenants. Creating one needs a global admin token; a
//! project-scoped token sees only its own projects.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::validate::{self, Reasons};
use super::{audit, date, new_id, page, ApiState, PageQuery};
use crate::store::projects;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/projects", web::post().to(create))
        .route("/projects", web::get().to(list))
        .route("/projects/{project_id}", web::get().to(get));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    /// 1 to 100 characters.
    pub name: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    /// RFC 3339.
    pub created_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectPage {
    pub items: Vec<ProjectView>,
    /// Pass as `after` for the next page; null on the last.
    pub next: Option<String>,
}

fn render(d: &Document) -> serde_json::Value {
    serde_json::to_value(ProjectView {
        id: d.get_str("_id").unwrap_or_default().into(),
        name: d.get_str("name").unwrap_or_default().into(),
        created_at: date(d, "created_at"),
    })
    .expect("a view serializes")
}

#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = NewProject,
    responses((status = 201, body = ProjectView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<NewProject>,
) -> ApiResult<HttpResponse> {
    caller.require_global_admin()?;
    let mut reasons = Reasons::default();
    validate::name(&mut reasons, "name", &body.name);
    if !reasons.is_empty() {
        return Err(Problem::invalid(reasons.0));
    }
    let id = new_id("prj");
    let record = doc! {
        "_id": &id,
        "name": body.name.trim(),
        "created_at": state.store.server_now().await?,
    };
    projects::insert(&state.store, record.clone()).await?;
    audit(
        &state,
        caller.actor(),
        "project.created",
        format!("projects/{id}"),
        doc! { "name": body.name.trim() },
    )
    .await;
    Ok(HttpResponse::Created().json(render(&record)))
}

#[utoipa::path(get, path = "/v1/projects", tag = "projects", params(PageQuery),
    responses((status = 200, body = ProjectPage), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let filter = if caller.global_admin {
        doc! {}
    } else {
        let ids: Vec<&String> = caller.roles.keys().collect();
        doc! { "_id": { "$in": ids } }
    };
    let found =
        projects::page(&state.store, filter, query.after.as_deref(), query.limit()?).await?;
    Ok(HttpResponse::Ok().json(page(found, render)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}", tag = "projects", params(("project_id" = String, Path)),
    responses((status = 200, body = ProjectView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    caller.require(&id, Role::Viewer)?;
    let found = load(&state, &id).await?;
    Ok(HttpResponse::Ok().json(render(&found)))
}

/// The project, or 404.
pub async fn load(state: &ApiState, id: &str) -> ApiResult<Document> {
    projects::find(&state.store, id)
        .await?
        .ok_or_else(|| Problem::not_found("project"))
}
