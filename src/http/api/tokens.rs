//! `/v1/tokens`: creating and revoking API tokens, audited. A global admin
//! may grant anything; a project admin may grant roles on their projects.

use actix_web::{web, HttpResponse};
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{self, Caller, Role};
use super::problem::{ApiResult, Problem};
use super::validate::Reasons;
use super::{audit, ApiState};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::post().to(create))
        .route("/tokens/{id}", web::delete().to(revoke));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    pub global_admin: bool,
    #[serde(default)]
    pub roles: Vec<Grant>,
    #[serde(default)]
    pub description: String,
    /// When the token stops working, RFC 3339, at most
    /// `CAP_API_TOKEN_MAX_LIFETIME_SECS` ahead [default: that long ahead].
    pub expires_at: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub project_id: String,
    /// admin, editor or viewer.
    pub role: String,
}

/// The token itself is shown only here, once.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    pub id: String,
    pub token: String,
    /// RFC 3339.
    pub expires_at: Option<String>,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = TokenCreated), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<NewToken>,
) -> ApiResult<HttpResponse> {
    if body.global_admin {
        caller.require_global_admin()?;
    }
    let mut reasons = Reasons::default();
    let mut grants = Vec::new();
    for (i, g) in body.roles.iter().enumerate() {
        match Role::parse(&g.role) {
            Some(role) => {
                caller.require(&g.project_id, Role::Admin)?;
                grants.push((g.project_id.clone(), role));
            }
            None => reasons.add(
                format!("roles[{i}].role"),
                format!("{:?}: expected admin, editor or viewer", g.role),
            ),
        }
    }
    if !body.global_admin && body.roles.is_empty() {
        reasons.add("roles", "grant at least one role (or global_admin)");
    }
    let now = state.store.server_now().await?;
    let latest = now.timestamp_millis() + state.token_max_lifetime.as_millis() as i64;
    let expires_at = match &body.expires_at {
        None => Some(latest),
        Some(text) => match mongodb::bson::DateTime::parse_rfc3339_str(text) {
            Ok(at) if at.timestamp_millis() <= now.timestamp_millis() => {
                reasons.add("expires_at", format!("{text:?} has passed"));
                None
            }
            Ok(at) if at.timestamp_millis() > latest => {
                reasons.add(
                    "expires_at",
                    format!(
                        "{text:?} is more than {} s ahead (CAP_API_TOKEN_MAX_LIFETIME_SECS)",
                        state.token_max_lifetime.as_secs()
                    ),
                );
                None
            }
            Ok(at) => Some(at.timestamp_millis()),
            Err(_) => {
                reasons.add("expires_at", format!("{text:?} is not an RFC 3339 time"));
                None
            }
        },
    }
    .map(mongodb::bson::DateTime::from_millis);
    if !reasons.is_empty() {
        return Err(Problem::invalid(reasons.0));
    }
    for (project, _) in &grants {
        super::projects::load(&state, project).await?;
    }
    let token = auth::create(
        &state.store,
        body.global_admin,
        &grants,
        &body.description,
        expires_at,
    )
    .await?;
    let roles: Vec<_> = grants
        .iter()
        .map(|(p, r)| doc! { "project_id": p, "role": r.as_str() })
        .collect();
    audit(
        &state,
        caller.actor(),
        "token.created",
        format!("tokens/{}", token.id),
        doc! { "global_admin": body.global_admin, "roles": roles, "expires_at": expires_at },
    )
    .await;
    Ok(HttpResponse::Created().json(TokenCreated {
        id: token.id,
        token: token.secret,
        expires_at: expires_at.and_then(|at| at.try_to_rfc3339_string().ok()),
    }))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn revoke(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    // Revoking needs the power to have granted it: global admins only.
    caller.require_global_admin()?;
    let id = path.into_inner();
    if !auth::revoke(&state.store, &id).await? {
        return Err(Problem::not_found("token"));
    }
    audit(
        &state,
        caller.actor(),
        "token.revoked",
        format!("tokens/{id}"),
        doc! {},
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}
