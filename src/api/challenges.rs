//! The ACME HTTP-01 responder: `GET /.well-known/acme-challenge/{token}`
//! answers the key authorization stored in MongoDB by whichever worker runs
//! the order, so any `api` replica behind the load balancer can answer.
//! Unauthenticated by design: the CA is the caller.

use actix_web::{web, HttpResponse};
use mongodb::bson::doc;

use super::ApiState;
use crate::acme::order::CHALLENGES;

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
    match state
        .store
        .collection(CHALLENGES)
        .find_one(doc! { "_id": &token })
        .await
    {
        Ok(Some(d)) => {
            state.metrics.acme_challenges_served_total.inc();
            HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(
                    d.get_str("key_authorization")
                        .unwrap_or_default()
                        .to_string(),
                )
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
