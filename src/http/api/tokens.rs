//! `/v1/tokens`: creating, listing and revoking API tokens, audited. A
//! global admin may grant anything; a project admin may grant roles on their
//! projects, and list and revoke the tokens it could have granted. Revoking a
//! token revokes the tokens minted with it too.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Bson, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{self, Caller, Role, RoleGrant};
use super::problem::{ApiResult, Problem};
use super::{audit, date, string, ApiState, PageQuery};
use crate::domain::distribution::TargetKind;
use crate::domain::validate::Reasons;
use crate::store::tokens::MintRefused;
use crate::store::{targets as store_targets, tokens as store_tokens};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/tokens", web::post().to(create))
        .route("/tokens", web::get().to(list))
        .route("/tokens/{id}", web::delete().to(revoke));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    pub global_admin: bool,
    /// At most 100.
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
    /// admin, editor, viewer, or agent (which may only read the
    /// certificates and keys of its `targets` and report their delivery).
    pub role: String,
    /// With role agent, 1 to 20 of the project's agent targets (ids);
    /// refused with any other role.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// Targets an agent token may name at most.
pub const MAX_AGENT_TARGETS: usize = 20;
/// Roles one token may hold at most: every role is checked on every
/// request and kept in every replica's memory of the token.
pub const MAX_ROLES: usize = 100;

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
    if body.roles.len() > MAX_ROLES {
        reasons.add(
            "roles",
            format!(
                "at most {MAX_ROLES} roles; this asks for {}",
                body.roles.len()
            ),
        );
        return Err(Problem::invalid(reasons.0));
    }
    let mut grants = Vec::new();
    for (i, g) in body.roles.iter().enumerate() {
        match Role::parse(&g.role) {
            Some(role) => {
                caller.require(&g.project_id, Role::Admin)?;
                for (j, t) in g.targets.iter().enumerate() {
                    if g.targets[..j].contains(t) {
                        reasons.add(format!("roles[{i}].targets[{j}]"), "is listed twice");
                    }
                }
                match (role, g.targets.len()) {
                    (Role::Agent, 1..=MAX_AGENT_TARGETS) => {}
                    (Role::Agent, _) => reasons.add(
                        format!("roles[{i}].targets"),
                        format!("an agent names 1 to {MAX_AGENT_TARGETS} targets"),
                    ),
                    (_, 0) => {}
                    (_, _) => reasons.add(
                        format!("roles[{i}].targets"),
                        "only an agent role names targets",
                    ),
                }
                grants.push(RoleGrant {
                    project_id: g.project_id.clone(),
                    role,
                    targets: g.targets.clone(),
                });
            }
            None => reasons.add(
                format!("roles[{i}].role"),
                format!("{:?}: expected admin, editor, viewer or agent", g.role),
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
    for grant in &grants {
        super::projects::load(&state, &grant.project_id).await?;
        for (j, target) in grant.targets.iter().enumerate() {
            let kind = store_targets::in_project(&state.store, &grant.project_id, target)
                .await?
                .and_then(|t| t.get_str("kind").ok().map(str::to_string));
            if kind.as_deref() != Some(TargetKind::Agent.as_str()) {
                let mut conflicts = Reasons::default();
                conflicts.add(
                    format!("roles.targets[{j}]"),
                    format!(
                        "{target:?}: no agent target of this id in project {}",
                        grant.project_id
                    ),
                );
                return Err(Problem::conflicting(conflicts.0));
            }
        }
    }
    let spec = auth::TokenSpec {
        global_admin: body.global_admin,
        roles: &grants,
        description: &body.description,
        expires_at,
    };
    let minter = auth::Minter {
        caller: &caller,
        max_tokens_per_project: state.max_tokens_per_project,
    };
    let minted = auth::mint(&state.store, &state.token_key, &spec, minter)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot create an API token");
            Problem::unavailable("the token cannot be created right now (is the KEK available?)")
        })?;
    let token = match minted {
        Ok(token) => token,
        // Revoked (or expired) while this request was on its way.
        Err(MintRefused::MinterNotLive) => {
            state.token_cache.clear();
            return Err(Problem::unauthorized().detail("unknown, revoked or expired API token"));
        }
        Err(MintRefused::ProjectFull { project, live }) => {
            let mut conflicts = Reasons::default();
            conflicts.add(
                "roles",
                format!(
                    "project {project} holds {live} live tokens, the most it may \
                     (CAP_MAX_TOKENS_PER_PROJECT); revoke some first"
                ),
            );
            return Err(Problem::conflicting(conflicts.0));
        }
    };
    let roles: Vec<_> = grants.iter().map(RoleGrant::document).collect();
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

/// A token as listed: never its secret.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub description: String,
    pub global_admin: bool,
    pub roles: Vec<GrantView>,
    /// The token that minted it (none for tokens made by an operator).
    pub created_by: Option<String>,
    pub created_at: Option<String>,
    pub expires_at: Option<String>,
    /// Updated at most once a minute.
    pub last_used_at: Option<String>,
    pub revoked: bool,
}

#[derive(Serialize, ToSchema)]
pub struct GrantView {
    pub project_id: String,
    pub role: String,
    /// An agent's targets.
    pub targets: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TokenPage {
    pub items: Vec<TokenView>,
    pub next: Option<String>,
}

fn view(d: &Document) -> TokenView {
    TokenView {
        id: string(d, "id").unwrap_or_default(),
        description: string(d, "description").unwrap_or_default(),
        global_admin: d.get_bool("global_admin").unwrap_or(false),
        roles: d
            .get_array("roles")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_document)
                    .map(|r| GrantView {
                        project_id: string(r, "project_id").unwrap_or_default(),
                        role: string(r, "role").unwrap_or_default(),
                        targets: r
                            .get_array("targets")
                            .map(|t| {
                                t.iter()
                                    .filter_map(Bson::as_str)
                                    .map(str::to_string)
                                    .collect()
                            })
                            .unwrap_or_default(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        created_by: string(d, "created_by"),
        created_at: date(d, "created_at"),
        expires_at: date(d, "expires_at"),
        last_used_at: date(d, "last_used_at"),
        revoked: d.get_bool("revoked").unwrap_or(false),
    }
}

/// The tokens the caller manages: all for a global admin; for others, their
/// own and those with roles only on projects they administer.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(PageQuery),
    responses((status = 200, body = TokenPage), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let limit = query.limit()?;
    let filter = if caller.global_admin {
        doc! {}
    } else {
        doc! { "$or": [
            { "id": &caller.token_id },
            { "roles.project_id": { "$in": caller.administers() } },
        ] }
    };
    let (found, next) =
        store_tokens::page(&state.store, filter, query.after.as_deref(), limit).await?;
    let items = found
        .iter()
        .filter(|t| caller.manages(t))
        .map(view)
        .collect();
    Ok(HttpResponse::Ok().json(TokenPage { items, next }))
}

#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens", params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")), security(("bearer" = [])))]
pub async fn revoke(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    let id = path.into_inner();
    // A token the caller could not have granted is as good as absent.
    let token = store_tokens::find(&state.store, &id)
        .await?
        .filter(|t| caller.manages(t))
        .ok_or_else(|| Problem::not_found("token"))?;
    let revoked = store_tokens::revoke_with_minted(&state.store, &id).await?;
    // Here at once; on the other replicas within CAP_API_TOKEN_CACHE_SECS.
    state.token_cache.clear();
    audit(
        &state,
        caller.actor(),
        "token.revoked",
        format!("tokens/{id}"),
        doc! {
            "minted_with_it": revoked.iter().filter(|r| **r != id).cloned().collect::<Vec<_>>(),
            "global_admin": token.get_bool("global_admin").unwrap_or(false),
        },
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}
