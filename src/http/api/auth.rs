//! Bearer API tokens: 256 random bits, shown once, stored only under a
//! keyed hash only KEK holders can compute (collection `tokens`,
//! [`crate::crypto::api_tokens`]). A token holds either the global admin role
//! or roles per project: `admin` ⊃ `editor` ⊃ `viewer`, and `agent`, which
//! holds none of those: it may only read the certificates and keys of the
//! targets it names, and report their delivery (`certautopilot agent`).
//!
//! A caller without a role on a project gets 404 for everything in it, the
//! same answer as for a project that does not exist: it cannot learn that
//! another project's objects exist.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use futures::future::LocalBoxFuture;
use mongodb::bson::{doc, oid::ObjectId, Bson, Document};
use rand::RngCore;

use super::problem::{ApiResult, Problem};
use super::token_cache::TokenCache;
use super::ApiState;
use crate::crypto::api_tokens::TokenKey;
use crate::crypto::secrets::SecretError;
use crate::store::{tokens, Store};

const TOKEN_PREFIX: &str = "cap_";

pub use crate::domain::roles::Role;

/// Who is calling, from their token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub global_admin: bool,
    pub roles: HashMap<String, Role>,
    /// The targets an `agent` role names, by project.
    pub agent_targets: HashMap<String, Vec<String>>,
    /// The token whose rate budget this one spends: the token at the top
    /// of its `created_by` chain below a global admin (itself, for a token
    /// a global admin or the operator made).
    pub budget: String,
}

impl Caller {
    /// Passes when the caller holds `need` (or more) on `project`. A caller
    /// with no role there gets 404; one with too small a role, 403.
    pub fn require(&self, project: &str, need: Role) -> ApiResult<()> {
        if self.global_admin {
            return Ok(());
        }
        match self.roles.get(project) {
            None => Err(Problem::not_found("project")),
            Some(role) if *role >= need => Ok(()),
            Some(role) => Err(Problem::forbidden(format!(
                "this token is {} on the project; this needs {}",
                role.as_str(),
                need.as_str()
            ))),
        }
    }

    /// Passes for an `agent` role on `project` naming `target`, and for the
    /// project's admins. Anyone else gets the same 404 as for a target that
    /// does not exist.
    pub fn require_agent(&self, project: &str, target: &str) -> ApiResult<()> {
        if self.global_admin || self.roles.get(project) == Some(&Role::Admin) {
            return Ok(());
        }
        let named = self
            .agent_targets
            .get(project)
            .is_some_and(|t| t.iter().any(|t| t == target));
        if self.roles.get(project) == Some(&Role::Agent) && named {
            Ok(())
        } else {
            Err(Problem::not_found("target"))
        }
    }

    pub fn require_global_admin(&self) -> ApiResult<()> {
        if self.global_admin {
            Ok(())
        } else {
            Err(Problem::forbidden("this needs a global admin token"))
        }
    }

    /// This caller as the key-release door sees it on `project`.
    pub fn requester(&self, project: &str) -> crate::services::key_release::Requester<'_> {
        crate::services::key_release::Requester::Token {
            token_id: &self.token_id,
            global_admin: self.global_admin,
            role: self.roles.get(project).copied(),
            agent_targets: self
                .agent_targets
                .get(project)
                .map(Vec::as_slice)
                .unwrap_or_default(),
        }
    }

    /// Whether this caller may decide where `project`'s keys go (read
    /// them, make or confirm a target that receives them, name one on a
    /// certificate): the project's admins and global admins.
    pub fn releases_keys(&self, project: &str) -> bool {
        self.global_admin || self.roles.get(project).is_some_and(|r| r.releases_keys())
    }

    /// The audit log's actor for this caller.
    pub fn actor(&self) -> String {
        format!("token:{}", self.token_id)
    }

    /// Whether this caller may see and revoke `token` (a stored record):
    /// its own, any for a global admin, and for a project admin those it
    /// could have minted — not global, and with roles only on projects it
    /// administers.
    pub fn manages(&self, token: &Document) -> bool {
        if self.global_admin || token.get_str("id") == Ok(self.token_id.as_str()) {
            return true;
        }
        if token.get_bool("global_admin").unwrap_or(false) {
            return false;
        }
        let roles: Vec<&str> = token
            .get_array("roles")
            .map(|a| {
                a.iter()
                    .filter_map(Bson::as_document)
                    .filter_map(|r| r.get_str("project_id").ok())
                    .collect()
            })
            .unwrap_or_default();
        !roles.is_empty()
            && roles
                .iter()
                .all(|p| self.roles.get(*p) == Some(&Role::Admin))
    }

    /// The projects this caller administers.
    pub fn administers(&self) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|(_, r)| **r == Role::Admin)
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// A new token: its id and the secret shown once.
pub struct NewToken {
    pub id: String,
    pub secret: String,
}

/// A role granted on a project; an `agent` role names its targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleGrant {
    pub project_id: String,
    pub role: Role,
    pub targets: Vec<String>,
}

impl RoleGrant {
    pub fn on(project_id: &str, role: Role) -> RoleGrant {
        RoleGrant {
            project_id: project_id.to_string(),
            role,
            targets: Vec::new(),
        }
    }

    /// As stored in a token record.
    pub fn document(&self) -> Document {
        let mut d = doc! { "project_id": &self.project_id, "role": self.role.as_str() };
        if !self.targets.is_empty() {
            d.insert("targets", &self.targets);
        }
        d
    }
}

/// Who mints a token through the API, and the cap it must fit under.
pub struct Minter<'a> {
    pub caller: &'a Caller,
    /// Live tokens a project may hold (`CAP_MAX_TOKENS_PER_PROJECT`).
    pub max_tokens_per_project: u64,
}

/// What a new token grants and how long it lives.
pub struct TokenSpec<'a> {
    /// With no `roles`: a global admin.
    pub global_admin: bool,
    pub roles: &'a [RoleGrant],
    pub description: &'a str,
    /// When it stops working (`None`: never, for the operator's tokens).
    pub expires_at: Option<mongodb::bson::DateTime>,
}

/// Stores a new token made by the operator (`certautopilot token create`,
/// the DR drill): minted by no token, held by no cap.
pub async fn create(
    store: &Store,
    token_key: &TokenKey,
    spec: &TokenSpec<'_>,
) -> Result<NewToken, SecretError> {
    let (token, record) = record(store, token_key, spec, None).await?;
    tokens::insert(store, record).await?;
    Ok(token)
}

/// Stores a new token minted through the API by `minter`, which must still
/// be live when it is stored (revoking the minter revokes it too; see
/// [`tokens::insert_minted`]), within the cap on a project's live tokens.
///
/// A token minted by anyone but a global admin spends its minter's rate
/// budget ([`Caller::budget`]), so minting adds no requests per minute.
pub async fn mint(
    store: &Store,
    token_key: &TokenKey,
    spec: &TokenSpec<'_>,
    minter: Minter<'_>,
) -> Result<Result<NewToken, tokens::MintRefused>, SecretError> {
    let (token, record) = record(store, token_key, spec, Some(minter.caller)).await?;
    let stored = tokens::insert_minted(
        store,
        record,
        &minter.caller.token_id,
        minter.max_tokens_per_project,
    )
    .await?;
    Ok(stored.map(|()| token))
}

/// A new token's secret and the record to store for it, its grants under
/// the token key's MAC.
async fn record(
    store: &Store,
    token_key: &TokenKey,
    spec: &TokenSpec<'_>,
    minter: Option<&Caller>,
) -> Result<(NewToken, Document), SecretError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let id = format!("tok_{}", ObjectId::new().to_hex());
    let roles: Vec<Document> = spec.roles.iter().map(RoleGrant::document).collect();
    let mut record = doc! {
        "_id": token_key.record_id(&secret).await?,
        "id": &id,
        "global_admin": spec.global_admin,
        "roles": roles,
        "description": spec.description,
        "revoked": false,
        "created_at": store.server_now().await?,
    };
    if let Some(at) = spec.expires_at {
        record.insert("expires_at", at);
    }
    if let Some(minter) = minter {
        record.insert("created_by", &minter.token_id);
        if !minter.global_admin {
            record.insert("rate_budget", &minter.budget);
        }
    }
    record.insert("grants_mac", token_key.grants_mac(&record).await?);
    Ok((NewToken { id, secret }, record))
}

async fn caller(
    store: Store,
    token_key: TokenKey,
    cache: Arc<TokenCache<Caller>>,
    header: Option<String>,
) -> ApiResult<Caller> {
    let Some(header) = header else {
        return Err(Problem::unauthorized());
    };
    let Some(secret) = header.strip_prefix("Bearer ").map(str::trim) else {
        return Err(Problem::unauthorized());
    };
    let record_id = token_key.record_id(secret).await.map_err(|e| {
        tracing::error!(error = %e, "the API token key cannot be read");
        Problem::unavailable("tokens cannot be checked right now (is the KEK available?)")
    })?;
    if let Some(known) = cache.get(&record_id) {
        return Ok(known);
    }
    let found = tokens::live(&store, &record_id).await?;
    let Some(token) = found else {
        return Err(Problem::unauthorized().detail("unknown, revoked or expired API token"));
    };
    let expected = token_key.grants_mac(&token).await.map_err(|e| {
        tracing::error!(error = %e, "the API token key cannot be read");
        Problem::unavailable("tokens cannot be checked right now (is the KEK available?)")
    })?;
    if token.get_str("grants_mac") != Ok(expected.as_str()) {
        tracing::error!(token = %token.get_str("id").unwrap_or_default(), "an API token record was altered in the database: refused");
        return Err(Problem::unauthorized().detail("unknown, revoked or expired API token"));
    }
    let seen = token.get_datetime("last_used_at").ok().copied();
    let now = store.server_now().await?;
    if let Err(e) = tokens::touch(&store, &record_id, seen, now).await {
        tracing::warn!(error = %crate::store::short(&e), "a token's last use was not recorded");
    }
    let grants: Vec<(String, Role, Vec<String>)> = token
        .get_array("roles")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .filter_map(|r| {
                    let targets = r
                        .get_array("targets")
                        .map(|t| {
                            t.iter()
                                .filter_map(Bson::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    Some((
                        r.get_str("project_id").ok()?.to_string(),
                        Role::parse(r.get_str("role").ok()?)?,
                        targets,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let token_id = token.get_str("id").unwrap_or_default().to_string();
    let caller = Caller {
        budget: token
            .get_str("rate_budget")
            .map_or_else(|_| token_id.clone(), str::to_string),
        token_id,
        global_admin: token.get_bool("global_admin").unwrap_or(false),
        roles: grants.iter().map(|(p, r, _)| (p.clone(), *r)).collect(),
        agent_targets: grants
            .into_iter()
            .filter(|(_, r, _)| *r == Role::Agent)
            .map(|(p, _, t)| (p, t))
            .collect(),
    };
    let left = token.get_datetime("expires_at").ok().map(|at| {
        Duration::from_millis((at.timestamp_millis() - now.timestamp_millis()).max(0) as u64)
    });
    cache.put(&record_id, &caller, left);
    Ok(caller)
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = LocalBoxFuture<'static, Result<Caller, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        // Already checked (and counted) for this request, by the
        // idempotency guard.
        if let Some(known) = req.extensions().get::<Caller>() {
            let known = known.clone();
            return Box::pin(async move { Ok(known) });
        }
        let state = req.app_data::<web::Data<ApiState>>().map(|s| {
            (
                s.store.clone(),
                s.token_key.clone(),
                s.token_cache.clone(),
                s.rate_limiter.clone(),
                s.metrics.clone(),
            )
        });
        let header = req
            .headers()
            .get("Authorization")
            .and_then(|h| h.to_str().ok())
            .map(str::to_string);
        Box::pin(async move {
            let (store, token_key, cache, limiter, metrics) =
                state.ok_or_else(|| Problem::unavailable("the API is not configured"))?;
            let caller = caller(store, token_key, cache, header).await?;
            if let Err(limited) = limiter.admit(&caller.budget).await {
                metrics.api_rate_limited_total.inc();
                return Err(Problem::too_many_requests(limited.retry_after));
            }
            Ok(caller)
        })
    }
}
