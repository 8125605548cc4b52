//! The HTTP API under `/v1`, JSON in and out, errors as problem+json
//! ([`problem`]); every endpoint authorizes its caller ([`auth`]). The ACME
//! HTTP-01 responder ([`challenges`]), the OpenAPI document ([`openapi`],
//! at `/openapi.json`) and the health endpoints stay open.

pub mod agent;
pub mod audit_log;
pub mod auth;
pub mod certificates;
pub mod challenges;
pub mod channels;
pub mod idempotency;
pub mod issuers;
pub mod openapi;
pub mod problem;
pub mod projects;
pub mod rate_limit;
pub mod targets;
pub mod token_cache;
pub mod tokens;

use actix_web::{error::JsonPayloadError, web, HttpRequest};
use mongodb::bson::{doc, oid::ObjectId, Document};
use serde::Deserialize;

use crate::audit::{Audit, Event};
use crate::crypto::api_tokens::TokenKey;
use crate::crypto::secrets::{SecretRef, Secrets};
use crate::queue::jobs::JobQueue;
use crate::store::Store;
use problem::{ApiResult, Problem};

/// Largest request body accepted (a CA bundle fits many times over).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub const DEFAULT_PAGE: i64 = 50;
pub const MAX_PAGE: i64 = 200;

#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub secrets: Secrets,
    /// Keys token records ([`crate::crypto::api_tokens`]).
    pub token_key: TokenKey,
    /// Tokens checked in the last few seconds (`CAP_API_TOKEN_CACHE_SECS`).
    pub token_cache: std::sync::Arc<token_cache::TokenCache<auth::Caller>>,
    /// Requests per minute per token, over every replica (`CAP_API_RATE_LIMIT`).
    pub rate_limiter: std::sync::Arc<rate_limit::RateLimiter>,
    pub queue: JobQueue,
    pub audit: Audit,
    pub metrics: std::sync::Arc<crate::observe::metrics::Metrics>,
    /// Where failures agents report are told (`CAP_NOTIFY_ATTEMPTS`).
    pub outbox: crate::notify::outbox::Outbox,
    /// Where a channel's test message may lead (`CAP_EGRESS_ALLOW_NOTIFY`).
    pub egress: crate::net::egress::EgressPolicy,
    /// The longest a token made through the API lives (`CAP_API_TOKEN_MAX_LIFETIME_SECS`).
    pub token_max_lifetime: std::time::Duration,
    /// Live tokens a project may hold (`CAP_MAX_TOKENS_PER_PROJECT`).
    pub max_tokens_per_project: u64,
    /// Notification channels a project (or the installation) may hold
    /// (`CAP_MAX_CHANNELS_PER_PROJECT`).
    pub max_channels_per_project: u64,
}

impl ApiState {
    /// The key that binds target and channel settings and certificates'
    /// target lists ([`crate::crypto::binding`]).
    pub fn binding(&self) -> crate::crypto::binding::BindingKey {
        crate::crypto::binding::BindingKey::new(self.token_key.clone())
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(
        web::JsonConfig::default()
            .limit(MAX_BODY_BYTES)
            .content_type_required(false)
            .error_handler(json_error),
    )
    .app_data(
        web::PathConfig::default().error_handler(|e, _| Problem::bad_request(e.to_string()).into()),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| Problem::bad_request(e.to_string()).into()),
    )
    .route(
        "/.well-known/acme-challenge/{token}",
        web::get().to(challenges::respond),
    )
    .route("/openapi.json", web::get().to(openapi::serve))
    .service(
        web::scope("/v1")
            .configure(projects::routes)
            .configure(issuers::routes)
            .configure(certificates::routes)
            .configure(targets::routes)
            .configure(agent::routes)
            .configure(channels::routes)
            .configure(tokens::routes)
            .configure(audit_log::routes)
            .default_service(web::to(unmatched))
            .wrap(actix_web::middleware::from_fn(idempotency::guard)),
    );
}

/// No route took the request: 405 with `Allow` for a documented path asked
/// with another method, else 404.
async fn unmatched(req: HttpRequest) -> actix_web::HttpResponse {
    use actix_web::ResponseError;
    let Some(methods) = openapi::methods_at(req.path()) else {
        return Problem::not_found("endpoint").error_response();
    };
    let allow = methods.join(", ");
    let mut response = Problem::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
    )
    .detail(format!("{} is not answered here; {allow} is", req.method()))
    .error_response();
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

/// The separate challenge listener (`CAP_CHALLENGE_ADDR`): challenges only.
pub fn configure_challenges_only(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/.well-known/acme-challenge/{token}",
        web::get().to(challenges::respond),
    );
}

/// Malformed JSON, unknown fields, wrong types, oversized bodies: 4xx with
/// the parser's reason.
fn json_error(e: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let problem = match &e {
        JsonPayloadError::OverflowKnownLength { length, limit } => Problem::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
        )
        .detail(format!("the body is {length} bytes; at most {limit}")),
        JsonPayloadError::Overflow { limit } => Problem::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
        )
        .detail(format!("the body is larger than {limit} bytes")),
        JsonPayloadError::Deserialize(d) => Problem::bad_request(format!("invalid JSON body: {d}")),
        JsonPayloadError::ContentType => Problem::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("send Content-Type: application/json"),
        other => Problem::bad_request(format!("unreadable body: {other}")),
    };
    problem.into()
}

/// A new id: `prefix_` and 24 hex digits.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", ObjectId::new().to_hex())
}

/// `?limit=&after=`: pages ordered by id.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 200 [default: 50]
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

impl PageQuery {
    pub fn limit(&self) -> ApiResult<i64> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(n) => Err(Problem::bad_request(format!(
                "limit {n}: expected 1 to {MAX_PAGE}"
            ))),
        }
    }
}

/// One page, as read from the store, rendered by `render`:
/// `{"items": [...], "next": "<id to pass as after>" | null}`.
pub fn page(
    (docs, next): (Vec<Document>, Option<String>),
    render: impl Fn(&Document) -> serde_json::Value,
) -> serde_json::Value {
    let items: Vec<serde_json::Value> = docs.iter().map(render).collect();
    serde_json::json!({ "items": items, "next": next })
}

/// Records an API mutation in the audit log; the mutation has happened, so a
/// failure here is logged rather than turned into an error answer.
pub async fn audit(
    state: &ApiState,
    actor: String,
    action: &str,
    target: String,
    details: Document,
) {
    state
        .audit
        .record(Event::new(actor, action, target).with(details))
        .await;
}

/// Seals `value` as `secret` under the KEK, before what owns it is stored:
/// nothing is ever stored without the credential it says it has. `what`
/// names it in the 503 answered when the KEK is away.
pub async fn seal(state: &ApiState, secret: &SecretRef, value: &[u8], what: &str) -> ApiResult<()> {
    state.secrets.put(secret, value).await.map_err(|e| {
        tracing::error!(secret = %secret.id(), error = %e, "cannot seal {what}");
        Problem::unavailable(format!(
            "{what} cannot be sealed right now (is the KEK available?)"
        ))
    })
}

/// Removes sealed secrets whose owner is gone (or was never stored). A
/// failure only leaves ciphertext nothing names, so it is logged, not
/// answered.
pub async fn forget_sealed(state: &ApiState, secrets: &[SecretRef]) {
    if let Err(e) = state.secrets.delete(secrets).await {
        let ids: Vec<&str> = secrets.iter().map(SecretRef::id).collect();
        tracing::warn!(secrets = ?ids, error = %e, "sealed secrets of something removed are left behind");
    }
}

/// A date as RFC 3339.
pub fn date(d: &Document, field: &str) -> Option<String> {
    d.get_datetime(field)
        .ok()
        .and_then(|t| t.try_to_rfc3339_string().ok())
}

pub fn string(d: &Document, field: &str) -> Option<String> {
    d.get_str(field).ok().map(str::to_string)
}
