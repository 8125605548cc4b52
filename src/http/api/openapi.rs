//! The OpenAPI 3 document, generated from the handlers' and types'
//! annotations (utoipa), served at `GET /openapi.json` without a token.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{audit_log, certificates, issuers, projects, tokens};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CertAutoPilot API",
        description = "Projects, ACME issuers and certificates. Every call needs `Authorization: Bearer <token>`; errors are RFC 9457 problem+json."
    ),
    paths(
        projects::create, projects::list, projects::get, projects::set_domains, projects::domains,
        issuers::create, issuers::list, issuers::get,
        certificates::create, certificates::list, certificates::get, certificates::issue, certificates::revoke, certificates::set_endpoints,
        certificates::private_key, certificates::orders, certificates::jobs,
        tokens::create, tokens::list, tokens::revoke,
        audit_log::all, audit_log::project,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "projects", description = "Tenants"),
        (name = "issuers", description = "ACME CAs a project issues from"),
        (name = "certificates", description = "What to issue, its state, chain and key"),
        (name = "tokens", description = "API tokens"),
        (name = "audit", description = "The audit log"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
    }
}

/// The document, built once.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the OpenAPI document serializes")
    })
}

/// The methods the document gives for the path that `path` (a request's)
/// falls under, upper case; `None` when no documented path matches it.
pub fn methods_at(path: &str) -> Option<&'static [String]> {
    type Template = (Vec<Option<String>>, Vec<String>);
    static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        let doc: serde_json::Value =
            serde_json::from_str(document()).expect("the document is JSON");
        let paths = doc["paths"].as_object().cloned().unwrap_or_default();
        paths
            .into_iter()
            .map(|(template, item)| {
                // `{name}` matches any one segment; the rest must be equal.
                let segments = template
                    .split('/')
                    .map(|s| (!s.starts_with('{')).then(|| s.to_string()))
                    .collect();
                let methods = item
                    .as_object()
                    .map(|ops| ops.keys().map(|m| m.to_uppercase()).collect())
                    .unwrap_or_default();
                (segments, methods)
            })
            .collect()
    });
    let asked: Vec<&str> = path.split('/').collect();
    templates
        .iter()
        .find(|(segments, _)| {
            segments.len() == asked.len()
                && segments.iter().zip(&asked).all(|(want, got)| match want {
                    Some(literal) => literal == got,
                    None => !got.is_empty(),
                })
        })
        .map(|(_, methods)| methods.as_slice())
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_names_every_public_path() {
        let doc: serde_json::Value = serde_json::from_str(super::document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/projects",
            "/v1/projects/{project_id}/issuers",
            "/v1/projects/{project_id}/certificates",
            "/v1/projects/{project_id}/certificates/{id}",
            "/v1/projects/{project_id}/certificates/{id}/private-key",
            "/v1/tokens",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} documented");
        }
        assert_eq!(
            super::methods_at("/v1/projects/prj_1/certificates").unwrap(),
            ["GET", "POST"]
        );
        assert_eq!(super::methods_at("/v1/tokens/tok_1").unwrap(), ["DELETE"]);
        assert!(super::methods_at("/v1/projects/prj_1/nothing").is_none());
        assert!(super::methods_at("/v1/projects//certificates").is_none());
        let schemas = &doc["components"]["schemas"];
        for s in ["NewCertificate", "CertificateView", "Problem", "FieldError"] {
            assert!(schemas[s].is_object(), "{s} documented");
        }
    }
}
