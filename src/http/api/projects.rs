//! `/v1/projects`: tenants. Creating one needs a global admin token; a
//! project-scoped token sees only its own projects.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::{audit, date, new_id, page, ApiState, PageQuery};
use crate::domain::grants::{base_name, DomainGrant};
use crate::domain::validate::{self, Reasons};
use crate::store::projects;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/projects", web::post().to(create))
        .route("/projects", web::get().to(list))
        .route("/projects/{project_id}", web::get().to(get))
        .route("/projects/{project_id}/domains", web::put().to(set_domains))
        .route("/projects/{project_id}/domains", web::get().to(domains));
}

/// The names a project may certify. An entry grants that name and every
/// name under it; a wildcard certificate needs the entry for its base.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DomainsUpdate {
    /// The whole list (at most 100 names, no wildcards); empty grants nothing.
    pub domains: Vec<String>,
    /// Grant names that overlap another project's grants [default: false:
    /// an overlap is refused].
    #[serde(default)]
    pub shared: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DomainGrantView {
    pub name: String,
    /// Granted although another project may hold an overlapping name.
    pub shared: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DomainsView {
    pub domains: Vec<DomainGrantView>,
}

/// Names a project may grant at most.
const MAX_GRANTS: usize = 100;

fn domains_view(grants: &[DomainGrant]) -> DomainsView {
    DomainsView {
        domains: grants
            .iter()
            .map(|g| DomainGrantView {
                name: g.name.clone(),
                shared: g.shared,
            })
            .collect(),
    }
}

/// Sets the names a project may certify. Global admins only, audited.
#[utoipa::path(put, path = "/v1/projects/{project_id}/domains", tag = "projects", request_body = DomainsUpdate,
    params(("project_id" = String, Path)),
    responses((status = 200, body = DomainsView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn set_domains(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<DomainsUpdate>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    caller.require_global_admin()?;
    let mut reasons = Reasons::default();
    if body.domains.len() > MAX_GRANTS {
        reasons.add(
            "domains",
            format!("lists {} names; at most {MAX_GRANTS}", body.domains.len()),
        );
    }
    let mut grants: Vec<DomainGrant> = Vec::new();
    for (i, name) in body.domains.iter().enumerate() {
        if let Some(p) = validate::dns_name_problem(name, false) {
            reasons.add(format!("domains[{i}]"), format!("{name:?} {p}"));
            continue;
        }
        let name = base_name(name);
        if !grants.iter().any(|g| g.name == name) {
            grants.push(DomainGrant {
                name,
                shared: body.shared,
            });
        }
    }
    if !reasons.is_empty() {
        return Err(Problem::invalid(reasons.0));
    }
    match projects::set_domains(&state.store, &id, &grants).await? {
        Ok(Some(())) => {}
        Ok(None) => return Err(Problem::not_found("project")),
        Err(o) => {
            return Err(Problem::conflict(format!(
                "{} overlaps {}, granted to project {}: mark the grant \"shared\": true to grant it anyway",
                o.asked, o.granted, o.project_id
            )))
        }
    }
    audit(
        &state,
        caller.actor(),
        "project.domains_set",
        format!("projects/{id}"),
        doc! { "domains": grants.iter().map(|g| g.name.clone()).collect::<Vec<_>>(), "shared": body.shared },
    )
    .await;
    Ok(HttpResponse::Ok().json(domains_view(&grants)))
}

/// The names a project may certify. Audited.
#[utoipa::path(get, path = "/v1/projects/{project_id}/domains", tag = "projects", params(("project_id" = String, Path)),
    responses((status = 200, body = DomainsView), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn domains(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    caller.require(&id, Role::Viewer)?;
    let grants = projects::domains(&state.store, &id)
        .await?
        .ok_or_else(|| Problem::not_found("project"))?;
    audit(
        &state,
        caller.actor(),
        "project.domains_read",
        format!("projects/{id}"),
        doc! {},
    )
    .await;
    Ok(HttpResponse::Ok().json(domains_view(&grants)))
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
        // An agent's role reads deliveries only, not even its project.
        let ids: Vec<&String> = caller
            .roles
            .iter()
            .filter(|(_, role)| **role >= Role::Viewer)
            .map(|(project, _)| project)
            .collect();
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
