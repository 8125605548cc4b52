//! The ACME HTTP-01 responder: `GET /.well-known/acme-challenge/{token}`
//! answers the key authorization stored in MongoDB by whichever worker runs
//! the order, so any `api` replica behind the load balancer can answer.
//! Unauthenticated by design: the CA is the caller.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use super::ApiState;
use crate::store::challenges;

/// ACME tokens are base64url, at least 128 bits.
fn plausible(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The host a request names, without its port, lower case.
fn requested_host(req: &HttpRequest) -> String {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

pub async fn respond(
    state: web::Data<ApiState>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    let token = path.into_inner();
    if !plausible(&token) {
        return HttpResponse::NotFound().finish();
    }
    match challenges::key_authorization(&state.store, &token).await {
        // Only for the name the challenge proves: the CA asks that name's
        // server; anyone else asking learns nothing of another's order.
        Ok(Some((key_authorization, identifier)))
            if identifier.to_ascii_lowercase() == requested_host(&req) =>
        {
            state.metrics.acme_challenges_served_total.inc();
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(key_authorization)
        }
        Ok(_) => HttpResponse::NotFound().finish(),
        Err(e) => {
            tracing::warn!(error = %crate::store::short(&e), "challenge lookup failed");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "2"))
                .finish()
        }
    }
}
