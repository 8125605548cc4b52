//! The ACME HTTP-01 responder: `GET /.well-known/acme-challenge/{token}`
//! answers the key authorization stored in MongoDB by whichever worker runs
//! the order, so any `api` replica behind the load balancer can answer.
//! Unauthenticated by design: the CA is the caller.

use actix_web::{web, HttpResponse};

use super::ApiState;
use crate::store::challenges;

/// ACME tokens are base64url, at least 128 bits.
fn plausible(token: &str) -> bool {
    (16..=256).contains(&token.len())
        && token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

pub async fn respond(state: web::Data<ApiState>, path: web::Path<String>) -> HttpResponse {
    let token = path.into_inner();
    if !plausible(&token) {
        return HttpResponse::NotFound().finish();
    }
    match challenges::key_authorization(&state.store, &token).await {
        Ok(Some(key_authorization)) => {
            state.metrics.acme_challenges_served_total.inc();
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(key_authorization)
        }
        Ok(None) => HttpResponse::NotFound().finish(),
        Err(e) => {
            tracing::warn!(error = %crate::store::short(&e), "challenge lookup failed");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "2"))
                .finish()
        }
    }
}
