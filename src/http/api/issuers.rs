//! `/v1/projects/{project_id}/issuers`: ACME CAs a project issues from.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::{audit, date, new_id, page, projects, seal, string, ApiState, PageQuery};
use crate::crypto::secrets::SecretRef;
use crate::domain::issuer::{TsigAlgorithm, DEFAULT_PROPAGATION_TIMEOUT_SECS, DEFAULT_TTL};
use crate::domain::validate::{self, Reasons};
use crate::store::issuers;

pub const CHALLENGE_TYPES: &[&str] = &["http-01", "dns-01"];

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/projects/{project_id}/issuers", web::post().to(create))
        .route("/projects/{project_id}/issuers", web::get().to(list))
        .route("/projects/{project_id}/issuers/{id}", web::get().to(get));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIssuer {
    pub name: String,
    /// The CA's ACME directory, https://.
    pub directory_url: String,
    /// E-mail address registered with the CA.
    pub contact: String,
    /// `http-01` [default: http-01]
    #[serde(default = "default_challenge")]
    pub challenge: String,
    /// Extra CA certificates (PEM) to trust for a private ACME CA.
    pub ca_bundle_pem: Option<String>,
    pub eab: Option<Eab>,
    /// Required with the dns-01 challenge, refused otherwise.
    pub dns: Option<NewDnsSettings>,
}

/// Where and how DNS-01 records are published (RFC 2136 with TSIG).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDnsSettings {
    /// The zone's primary, host:port, which takes the dynamic updates.
    pub primary: String,
    /// The zone every certificate name of this issuer lies in, e.g. example.com.
    pub zone: String,
    pub tsig_key_name: String,
    /// hmac-sha256 or hmac-sha512 [default: hmac-sha256]
    #[serde(default = "default_tsig_algorithm")]
    pub tsig_algorithm: String,
    /// The TSIG secret, base64 (as in a BIND key file); stored encrypted, never shown again.
    pub tsig_secret: String,
    /// The servers that must all answer the TXT record before the CA is asked
    /// to validate, host:port [default: the zone's NS records, port 53].
    #[serde(default)]
    pub nameservers: Vec<String>,
    /// How long they may take [default: 120].
    #[serde(default, deserialize_with = "crate::domain::whole_number::option")]
    pub propagation_timeout_secs: Option<u64>,
    /// TTL of the challenge records [default: 60].
    #[serde(default, deserialize_with = "crate::domain::whole_number::option")]
    pub ttl: Option<u32>,
}

fn default_tsig_algorithm() -> String {
    "hmac-sha256".into()
}

/// External Account Binding: the CA's key id and base64url HMAC key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Eab {
    pub kid: String,
    pub hmac_key: String,
}

/// Without the TSIG secret.
impl std::fmt::Debug for NewDnsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewDnsSettings")
            .field("primary", &self.primary)
            .field("zone", &self.zone)
            .field("tsig_key_name", &self.tsig_key_name)
            .field("tsig_algorithm", &self.tsig_algorithm)
            .field("tsig_secret", &"<redacted>")
            .field("nameservers", &self.nameservers)
            .field("propagation_timeout_secs", &self.propagation_timeout_secs)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Without the HMAC key.
impl std::fmt::Debug for Eab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Eab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

fn default_challenge() -> String {
    "http-01".into()
}

/// An issuer; never shows the EAB HMAC key.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuerView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub directory_url: String,
    pub contact: String,
    pub challenge: String,
    pub ca_bundle_pem: Option<String>,
    pub eab_kid: Option<String>,
    /// DNS-01 settings (without the TSIG secret).
    pub dns: Option<DnsView>,
    pub created_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DnsView {
    pub primary: String,
    pub zone: String,
    pub tsig_key_name: String,
    pub tsig_algorithm: String,
    pub nameservers: Vec<String>,
    pub propagation_timeout_secs: i64,
    pub ttl: i64,
}

#[derive(Serialize, ToSchema)]
pub struct IssuerPage {
    pub items: Vec<IssuerView>,
    pub next: Option<String>,
}

fn render(d: &Document) -> serde_json::Value {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    serde_json::to_value(IssuerView {
        id: s("_id"),
        project_id: s("project_id"),
        name: s("name"),
        directory_url: s("directory_url"),
        contact: s("contact"),
        challenge: s("challenge"),
        ca_bundle_pem: string(d, "ca_bundle_pem"),
        eab_kid: d.get_document("eab").ok().and_then(|e| string(e, "kid")),
        // Read the way the workers read it, so the two cannot disagree.
        dns: d
            .get_document("dns")
            .ok()
            .and_then(|n| issuers::dns_settings(n).ok())
            .map(|s| DnsView {
                primary: s.primary,
                zone: s.zone,
                tsig_key_name: s.tsig_name,
                tsig_algorithm: s.tsig_algorithm.name().into(),
                nameservers: s.nameservers,
                propagation_timeout_secs: s.propagation_timeout.as_secs() as i64,
                ttl: s.ttl as i64,
            }),
        created_at: date(d, "created_at"),
    })
    .expect("a view serializes")
}

pub(crate) fn check(body: &NewIssuer) -> Result<(), Problem> {
    let mut reasons = Reasons::default();
    validate::name(&mut reasons, "name", &body.name);
    match url::Url::parse(&body.directory_url) {
        Ok(u) if u.scheme() != "https" || u.host().is_none() => {
            reasons.add("directory_url", "must be an https:// URL")
        }
        Ok(_) if !validate::matches(&validate::https_url_pattern(), &body.directory_url) => reasons
            .add(
                "directory_url",
                "must be https:// then a host name or IPv4 address, an optional port and a path",
            ),
        Ok(_) => {}
        Err(e) => reasons.add("directory_url", format!("is not a URL: {e}")),
    }
    validate::email(&mut reasons, "contact", &body.contact);
    if !CHALLENGE_TYPES.contains(&body.challenge.as_str()) {
        reasons.add(
            "challenge",
            format!("{:?}: expected one of {CHALLENGE_TYPES:?}", body.challenge),
        );
    }
    match (&body.dns, body.challenge.as_str()) {
        (Some(dns), "dns-01") => check_dns(&mut reasons, dns),
        (None, "dns-01") => reasons.add("dns", "is required with the dns-01 challenge"),
        (Some(_), _) => reasons.add("dns", "is only for the dns-01 challenge"),
        (None, _) => {}
    }
    if let Some(pem) = &body.ca_bundle_pem {
        if let Err(e) = crate::acme::check_ca_bundle(pem) {
            reasons.add("ca_bundle_pem", e);
        }
    }
    if let Some(eab) = &body.eab {
        if !validate::matches(validate::EAB_KID_PATTERN, &eab.kid) {
            reasons.add(
                "eab.kid",
                "must be 1 to 255 printable ASCII characters, no spaces",
            );
        }
        use base64::Engine;
        if base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(eab.hmac_key.trim_end_matches('='))
            .map(|k| k.is_empty())
            .unwrap_or(true)
        {
            reasons.add("eab.hmac_key", "must be a non-empty base64url key");
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(reasons.0))
    }
}

fn check_dns(reasons: &mut Reasons, dns: &NewDnsSettings) {
    use crate::acme::dns::server_address_problem;
    if let Some(p) = server_address_problem(&dns.primary) {
        reasons.add("dns.primary", p);
    }
    if let Some(p) =
        validate::dns_name_problem(dns.zone.strip_suffix('.').unwrap_or(&dns.zone), false)
    {
        reasons.add("dns.zone", format!("{:?} {p}", dns.zone));
    }
    if dns.tsig_key_name.is_empty()
        || dns.tsig_key_name.len() > 253
        || !dns
            .tsig_key_name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        reasons.add(
            "dns.tsig_key_name",
            "must be a key name of letters, digits, '-', '_' and '.'",
        );
    }
    if TsigAlgorithm::parse(&dns.tsig_algorithm).is_none() {
        reasons.add(
            "dns.tsig_algorithm",
            format!(
                "{:?}: expected one of {:?}",
                dns.tsig_algorithm,
                TsigAlgorithm::NAMES
            ),
        );
    }
    use base64::Engine;
    if base64::engine::general_purpose::STANDARD
        .decode(&dns.tsig_secret)
        .map(|k| k.len() < 16)
        .unwrap_or(true)
    {
        reasons.add(
            "dns.tsig_secret",
            "must be base64 of at least 16 bytes (tsig-keygen makes one)",
        );
    }
    if dns.nameservers.len() > 10 {
        reasons.add("dns.nameservers", "at most 10");
    }
    for (i, ns) in dns.nameservers.iter().enumerate() {
        if let Some(p) = server_address_problem(ns) {
            reasons.add(format!("dns.nameservers[{i}]"), p);
        }
    }
    if let Some(t) = dns.propagation_timeout_secs {
        if !(1..=3600).contains(&t) {
            reasons.add("dns.propagation_timeout_secs", "expected 1 to 3600");
        }
    }
    if let Some(t) = dns.ttl {
        if !(1..=86_400).contains(&t) {
            reasons.add("dns.ttl", "expected 1 to 86400");
        }
    }
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/issuers", tag = "issuers", request_body = NewIssuer,
    params(("project_id" = String, Path)),
    responses((status = 201, body = IssuerView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<NewIssuer>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    projects::load(&state, &project_id).await?;
    check(&body)?;
    let id = new_id("iss");
    let mut record = doc! {
        "_id": &id,
        "project_id": &project_id,
        "name": body.name.trim(),
        "directory_url": &body.directory_url,
        "contact": &body.contact,
        "challenge": &body.challenge,
        "created_at": state.store.server_now().await?,
    };
    if let Some(pem) = &body.ca_bundle_pem {
        record.insert("ca_bundle_pem", pem);
    }
    if let Some(eab) = &body.eab {
        // The HMAC key binds the account once; it is sealed like every key
        // and never shown again.
        seal(
            &state,
            &SecretRef::eab_key(&project_id, &id),
            eab.hmac_key.as_bytes(),
            "the EAB key",
        )
        .await?;
        record.insert("eab", doc! { "kid": &eab.kid });
    }
    if let Some(dns) = &body.dns {
        seal(
            &state,
            &SecretRef::tsig_key(&project_id, &id),
            dns.tsig_secret.as_bytes(),
            "the TSIG key",
        )
        .await?;
        record.insert(
            "dns",
            doc! {
                "primary": &dns.primary,
                "zone": dns.zone.trim_end_matches('.'),
                "tsig_key_name": &dns.tsig_key_name,
                "tsig_algorithm": &dns.tsig_algorithm,
                "nameservers": &dns.nameservers,
                "propagation_timeout_secs": dns.propagation_timeout_secs.map(|t| t as i64).unwrap_or(DEFAULT_PROPAGATION_TIMEOUT_SECS),
                "ttl": dns.ttl.unwrap_or(DEFAULT_TTL) as i64,
            },
        );
    }
    issuers::insert(&state.store, record.clone()).await?;
    audit(
        &state,
        caller.actor(),
        "issuer.created",
        format!("projects/{project_id}/issuers/{id}"),
        doc! { "directory_url": &body.directory_url },
    )
    .await;
    Ok(HttpResponse::Created().json(render(&record)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/issuers", tag = "issuers",
    params(("project_id" = String, Path), PageQuery),
    responses((status = 200, body = IssuerPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    let found = issuers::page(
        &state.store,
        &project_id,
        query.after.as_deref(),
        query.limit()?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page(found, render)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/issuers/{id}", tag = "issuers",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = IssuerView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    Ok(HttpResponse::Ok().json(render(&load(&state, &project_id, &id).await?)))
}

/// The issuer of this project, or 404.
pub async fn load(state: &ApiState, project_id: &str, id: &str) -> ApiResult<Document> {
    issuers::in_project(&state.store, project_id, id)
        .await?
        .ok_or_else(|| Problem::not_found("issuer"))
}
