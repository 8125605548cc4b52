//! RFC 9457 problem details (`application/problem+json`), with field-level
//! reasons. Every error the API gives is one of these; none is a bare 500.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

pub use crate::domain::validate::FieldError;

/// RFC 9457 problem details.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Sent as `Retry-After` (whole seconds, at least 1).
    #[serde(skip)]
    pub retry_after: Option<std::time::Duration>,
}

impl Problem {
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Problem {
        Problem {
            kind: format!("https://certautopilot.dev/problems/{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Problem {
        self.detail = Some(detail.into());
        self
    }

    pub fn retry_after(mut self, after: std::time::Duration) -> Problem {
        self.retry_after = Some(after);
        self
    }

    /// Past the token's rate limit.
    pub fn too_many_requests(after: std::time::Duration) -> Problem {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Too many requests",
        )
        .detail("this token is past its requests per minute, shared with the tokens minted from the same root (CAP_API_RATE_LIMIT); retry after Retry-After seconds")
        .retry_after(after)
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "bad-request", "Bad request").detail(detail)
    }

    /// 422 with one reason per field.
    pub fn invalid(errors: Vec<FieldError>) -> Problem {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-fields",
            "Invalid fields",
        )
        .detail("one or more fields are invalid; see errors");
        p.errors = errors;
        p
    }

    /// 409 with one reason per field: the request is valid in itself but
    /// not with what is stored (an issuer that does not exist, or cannot
    /// issue a wildcard).
    pub fn conflicting(errors: Vec<FieldError>) -> Problem {
        let mut p = Problem::new(
            StatusCode::CONFLICT,
            "conflicting-fields",
            "Fields conflict with what is stored",
        )
        .detail("one or more fields do not fit the project's issuers or grants; see errors");
        p.errors = errors;
        p
    }

    /// Also what a caller gets for another project's objects: their
    /// existence is not revealed.
    pub fn not_found(what: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found")
            .detail(format!("no such {what}"))
    }

    pub fn unauthorized() -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
            .detail("send an API token: Authorization: Bearer <token>")
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "conflict", "Conflict").detail(detail)
    }

    /// The database is away longer than the election window: retry later.
    pub fn unavailable(detail: impl Into<String>) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .detail(detail)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.title)
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self.retry_after {
            // Whole seconds, rounded up: never sooner than the limit allows.
            Some(after) => {
                let secs = after.as_millis().div_ceil(1000).max(1);
                response.insert_header(("Retry-After", secs.to_string()));
            }
            None if self.status == 503 => {
                response.insert_header(("Retry-After", "5"));
            }
            None => {}
        }
        response
            .content_type("application/problem+json")
            .body(serde_json::to_string(self).expect("a problem serializes"))
    }
}

impl From<mongodb::error::Error> for Problem {
    fn from(e: mongodb::error::Error) -> Problem {
        tracing::warn!(error = %crate::store::short(&e), "database error answering a request");
        Problem::unavailable("the database is not reachable right now")
    }
}

pub type ApiResult<T> = Result<T, Problem>;
