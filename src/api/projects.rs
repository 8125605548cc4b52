//! `/v1/projects`: tenants. Creating one needs a global admin token; a
//! project-scoped token sees only its own projects.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::Deserialize;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::validate::{self, Reasons};
use super::{audit, date, new_id, page, ApiState, PageQuery};

pub const PROJECTS: &str = "projects";

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/projects", web::post().to(create))
        .route("/projects", web::get().to(list))
        .route("/projects/{project_id}", web::get().to(get));
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewProject {
    pub name: String,
}

fn render(d: &Document) -> serde_json::Value {
    serde_json::json!({
        "id": d.get_str("_id").unwrap_or_default(),
        "name": d.get_str("name").unwrap_or_default(),
        "created_at": date(d, "created_at"),
    })
}

async fn create(
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
    state
        .store
        .insert("create project", PROJECTS, record.clone())
        .await?;
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

async fn list(
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
    Ok(HttpResponse::Ok().json(page(&state.store, PROJECTS, filter, &query, render).await?))
}

async fn get(
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
    state
        .store
        .collection(PROJECTS)
        .find_one(doc! { "_id": id })
        .await?
        .ok_or_else(|| Problem::not_found("project"))
}
