//! `Idempotency-Key` on POST: a retry of a POST cut off by a failover gets
//! the first answer instead of creating a second certificate or token.
//!
//! The key is the caller's, scoped to its token: the same key from another
//! token is another key. Within [`KEPT`], the same key with the same
//! request (method, path, query and body) is answered with the stored
//! answer and `Idempotent-Replayed: true`, without running the handler; with
//! another request, 422. While the first request is still being answered,
//! a retry gets 409 with `Retry-After`.
//!
//! Answers are kept sealed ([`crate::crypto::api_tokens::TokenKey::seal_answer`]):
//! a token's secret in one is never stored in the clear.
//!
//! The token is checked first: a request without a valid one gets 401 and
//! writes nothing.
//!
//! Answers a retry must not be told again (5xx, 429, 401) are not kept, so
//! the next try does the work. If a process dies between doing the work and
//! storing its answer, the key's record is taken over after [`STALE_AFTER`]
//! and the work is done again: the handlers' own uniqueness (a certificate's
//! name in its project) still stops a duplicate there.

use std::time::Duration;

use actix_web::body::{self, BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::problem::Problem;
use super::ApiState;
use crate::domain::certs::hex;
use crate::store::idempotency::{self, Answer, Begun};

pub const HEADER: &str = "Idempotency-Key";
pub const REPLAYED: &str = "Idempotent-Replayed";
/// How long an answer is kept for retries.
pub const KEPT: Duration = Duration::from_secs(24 * 3600);
/// How long a first request may take before a retry takes its key over
/// (a request that long has died with its process).
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// The longest key: a UUID fits many times over.
pub const MAX_KEY_LEN: usize = 255;

/// The middleware, around `/v1`.
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let key = req
        .headers()
        .get(HEADER)
        .map(|v| v.to_str().map(str::to_string));
    let (Method::POST, Some(key)) = (req.method().clone(), key) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let key = match key {
        Ok(k) if valid_key(&k) => k,
        _ => {
            let problem = Problem::bad_request(format!(
                "{HEADER} must be 1 to {MAX_KEY_LEN} printable ASCII characters"
            ));
            return Ok(req.into_response(problem.error_response()));
        }
    };
    let Some(state) = req.app_data::<web::Data<ApiState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    // Authenticated (and counted against its rate budget) before anything
    // is written: a request without a valid token leaves no record. The
    // handler is handed the same caller, so the request counts once.
    let caller = match req.extract::<Caller>().await {
        Ok(caller) => caller,
        Err(problem) => return Ok(req.into_response(problem.error_response())),
    };
    req.extensions_mut().insert(caller);
    // Scoped to the token: the keyed hash of its secret, which the check
    // above has just read.
    let secret = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|s| s.trim().to_string());
    let Some(secret) = secret else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Ok(token_record) = state.token_key.record_id(&secret).await else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };

    let body = match req.extract::<web::Bytes>().await {
        Ok(b) => b,
        Err(e) => {
            let problem = Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            )
            .detail(format!("{e}; at most {} bytes", super::MAX_BODY_BYTES));
            let problem = if e.as_response_error().status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                problem
            } else {
                Problem::bad_request(format!("unreadable body: {e}"))
            };
            return Ok(req.into_response(problem.error_response()));
        }
    };
    req.set_payload(Payload::from(body.clone()));
    let id = hex(&Sha256::digest(format!("{token_record}\n{key}")));
    let fingerprint = {
        let mut h = Sha256::new();
        h.update(req.method().as_str());
        h.update(b" ");
        h.update(req.uri().path_and_query().map_or("", |p| p.as_str()));
        h.update(b"\n");
        h.update(&body);
        hex(&h.finalize())
    };

    let store = &state.store;
    let times = async {
        Ok::<_, mongodb::error::Error>((
            store.server_after(STALE_AFTER).await?,
            store.server_after(KEPT).await?,
        ))
    };
    let begun = match times.await {
        Ok((stale_at, expires_at)) => {
            idempotency::begin(store, &id, &fingerprint, stale_at, expires_at).await
        }
        Err(e) => Err(e),
    };
    match begun {
        Ok(Begun::First) => {}
        Ok(Begun::Replay(answer)) => {
            let response = match state
                .token_key
                .open_answer(&record_name(&id), &answer.body)
                .await
            {
                Ok(body) => replay(Answer { body, ..answer }),
                Err(e) => {
                    tracing::error!(error = %e, "a kept idempotent answer does not open");
                    Problem::unavailable("the first answer to this key cannot be read")
                        .error_response()
                }
            };
            return Ok(req.into_response(response));
        }
        Ok(Begun::OtherRequest) => {
            let problem = Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            )
            .detail(format!(
                "this {HEADER} was used for another request in the last 24 hours; use a new key"
            ));
            return Ok(req.into_response(problem.error_response()));
        }
        Ok(Begun::InFlight) => {
            let problem = Problem::conflict(format!(
                "a request with this {HEADER} is still being answered; retry shortly"
            ))
            .retry_after(Duration::from_secs(1));
            return Ok(req.into_response(problem.error_response()));
        }
        Err(e) => return Ok(req.into_response(Problem::from(e).error_response())),
    }

    let response = next.call(req).await?;
    let status = response.status();
    let (request, response) = response.into_parts();
    let (head, body) = response.into_parts();
    let bytes = match body::to_bytes(body).await {
        Ok(b) => b,
        Err(_) => {
            let _ = idempotency::abandon(store, &id).await;
            let problem = Problem::unavailable("the answer could not be read; retry");
            return Ok(ServiceResponse::new(request, problem.error_response()));
        }
    };
    let kept = if kept(status) {
        match state.token_key.seal_answer(&record_name(&id), &bytes).await {
            Ok(sealed) => {
                let answer = Answer {
                    status: status.as_u16(),
                    content_type: header_str(head.headers(), header::CONTENT_TYPE),
                    location: header_str(head.headers(), header::LOCATION),
                    body: sealed,
                };
                idempotency::finish(store, &id, &answer).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "an idempotent answer cannot be sealed; not kept");
                idempotency::abandon(store, &id).await
            }
        }
    } else {
        idempotency::abandon(store, &id).await
    };
    if let Err(e) = kept {
        // The work is done and answered; a retry within STALE_AFTER gets
        // 409, after it the work again.
        tracing::warn!(error = %crate::store::short(&e), "an idempotent answer was not stored");
    }
    let response = head.set_body(bytes).map_into_boxed_body();
    Ok(ServiceResponse::new(request, response))
}

/// What a kept answer is sealed for: its record.
fn record_name(id: &str) -> String {
    format!("{}/{id}", idempotency::IDEMPOTENCY_KEYS)
}

/// Printable ASCII, as the IETF draft's sf-string allows, beginning and
/// ending with a non-space (HTTP trims a header value's spaces).
pub const KEY_PATTERN: &str = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$";

fn valid_key(key: &str) -> bool {
    key.len() <= MAX_KEY_LEN && crate::domain::validate::matches(KEY_PATTERN, key)
}

/// Whether a retry should get this answer again: the outcome of the work,
/// success or a refusal of the request itself, yes; a failure to get to it
/// (the database away, the token unknown, the rate limit), no.
fn kept(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && !matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::TOO_MANY_REQUESTS
            ))
}

fn header_str(headers: &header::HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn replay(answer: Answer) -> HttpResponse {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    response.insert_header((REPLAYED, HeaderValue::from_static("true")));
    if let Some(t) = answer.content_type {
        response.insert_header((header::CONTENT_TYPE, t));
    }
    if let Some(l) = answer.location {
        response.insert_header((header::LOCATION, l));
    }
    response.body(answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_printable_ascii() {
        assert!(valid_key("8e03978e-40d5-43e8-bc93-6894a57f9324"));
        assert!(!valid_key(""));
        assert!(!valid_key(&"k".repeat(MAX_KEY_LEN + 1)));
        assert!(!valid_key("tab\there"));
        assert!(valid_key("a b"));
        assert!(!valid_key(" a"));
        assert!(!valid_key("naïve"));
    }

    #[test]
    fn outcomes_are_kept_and_failures_to_reach_the_work_are_not() {
        for kept_status in [200, 201, 202, 400, 403, 404, 409, 413, 422] {
            assert!(
                kept(StatusCode::from_u16(kept_status).unwrap()),
                "{kept_status}"
            );
        }
        for retried in [401, 408, 429, 500, 503] {
            assert!(!kept(StatusCode::from_u16(retried).unwrap()), "{retried}");
        }
    }
}
