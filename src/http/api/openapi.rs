//! The OpenAPI 3 document, generated from the handlers' and types'
//! annotations (utoipa), served at `GET /openapi.json` without a token.

use std::sync::OnceLock;

use actix_web::HttpResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{agent, audit_log, certificates, channels, issuers, projects, targets, tokens};

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
        certificates::set_targets, certificates::distributions,
        certificates::private_key, certificates::orders, certificates::jobs,
        targets::create, targets::list, targets::get, targets::delete, targets::confirm,
        agent::deliveries, agent::bundle, agent::report,
        channels::create, channels::list, channels::get, channels::delete, channels::test, channels::notifications_of,
        channels::create_installation, channels::list_installation, channels::get_installation,
        channels::delete_installation, channels::test_installation, channels::notifications_of_installation,
        tokens::create, tokens::list, tokens::revoke,
        audit_log::all, audit_log::project,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "projects", description = "Tenants"),
        (name = "issuers", description = "ACME CAs a project issues from"),
        (name = "certificates", description = "What to issue, its state, chain and key"),
        (name = "targets", description = "Where certificates are delivered"),
        (name = "notifications", description = "Channels, and the messages sent on them"),
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
        let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
        refine(&mut doc);
        serde_json::to_string_pretty(&doc).expect("the document serializes")
    })
}

/// What the handlers' annotations do not say, added to every operation
/// alike: unique operation ids (`<tag>.<handler>`); on every POST the
/// `Idempotency-Key` header and its answers; on every call with a token the
/// rate limit's 429; and the links from each create to the calls on what it
/// created, so that a client (or schemathesis) can follow them.
fn refine(doc: &mut serde_json::Value) {
    use serde_json::json;
    let Some(paths) = doc["paths"].as_object_mut() else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let tag = op["tags"][0].as_str().unwrap_or("api").to_string();
            if let Some(id) = op["operationId"].as_str() {
                op["operationId"] = json!(format!("{tag}.{id}"));
            }
            if op_needs_token(op) {
                op["responses"]["429"] = json!({
                    "description": "Past the token's requests per minute (CAP_API_RATE_LIMIT)",
                    "headers": { "Retry-After": {
                        "description": "Seconds until a request fits again",
                        "schema": { "type": "integer", "minimum": 1 } } },
                    "content": { "application/problem+json": {
                        "schema": { "$ref": "#/components/schemas/Problem" } } }
                });
            }
            if method == "post" {
                let mut params = op["parameters"].as_array().cloned().unwrap_or_default();
                params.push(json!({
                    "name": super::idempotency::HEADER,
                    "in": "header",
                    "required": false,
                    "description": "Makes a retry safe: the same key and request within 24 hours gets the first answer (with `Idempotent-Replayed: true`) without doing the work again; the same key with another request, 422; while the first is still being answered, 409.",
                    "schema": { "type": "string", "minLength": 1,
                        "maxLength": super::idempotency::MAX_KEY_LEN,
                        "pattern": super::idempotency::KEY_PATTERN }
                }));
                op["parameters"] = json!(params);
            }
        }
    }
    constrain(doc);
    for (create, status, links) in created_links() {
        let response = &mut doc["paths"][create.0][create.1]["responses"][status];
        let mut all = serde_json::Map::new();
        for (name, operation, parameters) in links {
            all.insert(
                name.to_string(),
                json!({ "operationId": operation, "parameters": parameters }),
            );
        }
        response["links"] = serde_json::Value::Object(all);
    }
}

/// Formats of our own, for values no pattern can state; a client (and the
/// test suite's schemathesis hooks) must know them.
pub const FORMAT_PEM_CERTIFICATES: &str = "pem-certificates";
pub const FORMAT_HOST_PORT: &str = "host-port";
/// A kubeconfig in JSON whose current context has a token
/// ([`crate::distribute::kubernetes_secret::Cluster::from_kubeconfig`]).
pub const FORMAT_KUBECONFIG_JSON: &str = "kubeconfig-json";
/// An SSH host's public key as OpenSSH writes it, of a type taken
/// ([`crate::domain::target_settings::parse_host_key`]).
pub const FORMAT_OPENSSH_PUBLIC_KEY: &str = "openssh-public-key";
/// An SSH private key without a passphrase
/// ([`crate::distribute::ssh::private_key_problem`]).
pub const FORMAT_OPENSSH_PRIVATE_KEY: &str = "openssh-private-key";

/// Every rule the handlers check of a field on its own, stated in the
/// document: lengths, ranges, patterns, enums, counts. What a request asks
/// of stored state (an issuer that exists, granted names) is answered 409
/// and cannot be stated here.
fn constrain(doc: &mut serde_json::Value) {
    use crate::domain::validate::*;
    use serde_json::json;
    let name = json!({ "minLength": 1, "maxLength": MAX_NAME_LEN, "pattern": name_pattern() });
    let dns_name = |wildcard: bool| json!({ "minLength": 1, "maxLength": MAX_DNS_NAME_LEN, "pattern": dns_name_pattern(wildcard) });
    let host = json!({ "minLength": 1, "maxLength": MAX_DNS_NAME_LEN, "pattern": host_pattern() });
    let host_port = json!({ "format": FORMAT_HOST_PORT, "minLength": 3 });
    let rules: Vec<(&str, &str, serde_json::Value)> = vec![
        ("NewProject", "name", name.clone()),
        (
            "DomainsUpdate",
            "domains",
            json!({ "maxItems": 100, "items": dns_name(false) }),
        ),
        ("NewIssuer", "name", name.clone()),
        (
            "NewIssuer",
            "directory_url",
            json!({ "pattern": https_url_pattern() }),
        ),
        (
            "NewIssuer",
            "contact",
            json!({ "pattern": email_pattern() }),
        ),
        (
            "NewIssuer",
            "challenge",
            json!({ "enum": super::issuers::CHALLENGE_TYPES }),
        ),
        (
            "NewIssuer",
            "ca_bundle_pem",
            json!({ "format": FORMAT_PEM_CERTIFICATES }),
        ),
        ("Eab", "kid", json!({ "pattern": EAB_KID_PATTERN })),
        (
            "Eab",
            "hmac_key",
            json!({ "pattern": BASE64URL_KEY_PATTERN }),
        ),
        ("NewDnsSettings", "primary", host_port.clone()),
        (
            "NewDnsSettings",
            "zone",
            json!({ "minLength": 1, "maxLength": MAX_DNS_NAME_LEN + 1,
            "pattern": format!("{}\\.?$", dns_name_pattern(false).trim_end_matches('$')) }),
        ),
        (
            "NewDnsSettings",
            "tsig_key_name",
            json!({ "pattern": "^[A-Za-z0-9._-]{1,253}$" }),
        ),
        (
            "NewDnsSettings",
            "tsig_algorithm",
            json!({ "enum": crate::domain::issuer::TsigAlgorithm::NAMES }),
        ),
        (
            "NewDnsSettings",
            "tsig_secret",
            json!({ "pattern": TSIG_SECRET_PATTERN }),
        ),
        (
            "NewDnsSettings",
            "nameservers",
            json!({ "maxItems": 10, "items": host_port }),
        ),
        (
            "NewDnsSettings",
            "propagation_timeout_secs",
            json!({ "minimum": 1, "maximum": 3600 }),
        ),
        (
            "NewDnsSettings",
            "ttl",
            json!({ "minimum": 1, "maximum": 86_400 }),
        ),
        ("NewCertificate", "name", name.clone()),
        (
            "NewCertificate",
            "targets",
            json!({ "maxItems": super::certificates::MAX_TARGETS, "uniqueItems": true, "items": name.clone() }),
        ),
        (
            "TargetsUpdate",
            "targets",
            json!({ "maxItems": super::certificates::MAX_TARGETS, "uniqueItems": true, "items": name.clone() }),
        ),
        ("NewChannel", "name", name.clone()),
        (
            "NewChannel",
            "kind",
            json!({ "enum": super::channels::CHANNEL_KINDS }),
        ),
        (
            "NewChannel",
            "routes",
            json!({ "maxItems": super::channels::MAX_ROUTES }),
        ),
        (
            "NewToken",
            "roles",
            json!({ "maxItems": super::tokens::MAX_ROLES }),
        ),
        (
            "ChannelWebhook",
            "url",
            json!({ "pattern": webhook_url_pattern() }),
        ),
        (
            "ChannelWebhook",
            "secret",
            json!({ "minLength": *super::targets::WEBHOOK_SECRET_LEN.start(),
            "maxLength": *super::targets::WEBHOOK_SECRET_LEN.end() }),
        ),
        (
            "ChannelSlack",
            "webhook_url",
            json!({ "pattern": https_url_pattern() }),
        ),
        (
            "ChannelEmail",
            "host",
            json!({ "anyOf": [host.clone(), { "format": "ipv6" }] }),
        ),
        (
            "ChannelEmail",
            "port",
            json!({ "minimum": 1, "maximum": 65_535 }),
        ),
        (
            "ChannelEmail",
            "tls",
            json!({ "enum": super::channels::SMTP_TLS }),
        ),
        (
            "ChannelEmail",
            "user",
            json!({ "type": "string", "minLength": 1, "maxLength": 256 }),
        ),
        (
            "ChannelEmail",
            "password",
            json!({ "type": "string", "minLength": 1, "maxLength": 1024 }),
        ),
        (
            "ChannelEmail",
            "from",
            json!({ "pattern": email_pattern() }),
        ),
        (
            "ChannelEmail",
            "to",
            json!({ "minItems": 1, "maxItems": super::channels::MAX_RECIPIENTS,
            "items": { "pattern": email_pattern() } }),
        ),
        (
            "ChannelEmail",
            "ca_bundle_pem",
            json!({ "format": FORMAT_PEM_CERTIFICATES }),
        ),
        (
            "NewRoute",
            "kinds",
            json!({ "items": { "enum": crate::domain::notifications::EVENT_KINDS } }),
        ),
        (
            "NewRoute",
            "projects",
            json!({ "items": { "pattern": ID_PATTERN } }),
        ),
        (
            "NewRoute",
            "min_severity",
            json!({ "enum": ["info", "warning", "critical"] }),
        ),
        (
            "QuietHoursBody",
            "start_minute",
            json!({ "minimum": 0, "maximum": 1439 }),
        ),
        (
            "QuietHoursBody",
            "end_minute",
            json!({ "minimum": 0, "maximum": 1439 }),
        ),
        (
            "DeliveryReport",
            "state",
            json!({ "enum": super::agent::REPORTED_STATES }),
        ),
        (
            "DeliveryReport",
            "error",
            json!({ "maxLength": super::agent::MAX_ERROR_LEN }),
        ),
        ("NewTarget", "name", name.clone()),
        (
            "NewTarget",
            "kind",
            json!({ "enum": super::targets::TARGET_KINDS }),
        ),
        (
            "WebhookSettings",
            "secret",
            json!({ "minLength": *super::targets::WEBHOOK_SECRET_LEN.start(),
            "maxLength": *super::targets::WEBHOOK_SECRET_LEN.end() }),
        ),
        (
            "KubernetesSecretSettings",
            "kubeconfig",
            json!({ "format": FORMAT_KUBECONFIG_JSON, "maxLength": super::targets::MAX_KUBECONFIG_LEN }),
        ),
        (
            "WebhookSettings",
            "url",
            json!({ "pattern": webhook_url_pattern() }),
        ),
        (
            "KubernetesSecretSettings",
            "namespace",
            json!({ "minLength": 1, "maxLength": 253, "pattern": KUBERNETES_NAME_PATTERN }),
        ),
        (
            "KubernetesSecretSettings",
            "secret_name",
            json!({ "minLength": 1, "maxLength": 253, "pattern": KUBERNETES_NAME_PATTERN }),
        ),
        ("SshSettings", "host", host.clone()),
        (
            "SshSettings",
            "port",
            json!({ "minimum": 1, "maximum": 65_535 }),
        ),
        (
            "SshSettings",
            "user",
            json!({ "pattern": super::targets::SSH_USER_PATTERN }),
        ),
        (
            "SshSettings",
            "host_key",
            json!({ "format": FORMAT_OPENSSH_PUBLIC_KEY, "maxLength": super::targets::MAX_SSH_KEY_LEN }),
        ),
        (
            "SshSettings",
            "private_key",
            json!({ "format": FORMAT_OPENSSH_PRIVATE_KEY, "maxLength": super::targets::MAX_SSH_KEY_LEN }),
        ),
        (
            "SshSettings",
            "directory",
            json!({ "pattern": super::targets::SSH_DIRECTORY_PATTERN }),
        ),
        (
            "SshSettings",
            "reload_command",
            json!({ "minLength": 1, "maxLength": super::targets::MAX_RELOAD_COMMAND_LEN,
                    "pattern": name_pattern() }),
        ),
        (
            "NewCertificate",
            "dns_names",
            json!({ "minItems": 1, "maxItems": MAX_DNS_NAMES,
            "uniqueItems": true, "items": dns_name(true) }),
        ),
        (
            "NewCertificate",
            "key_algorithm",
            json!({ "enum": crate::domain::certs::KEY_ALGORITHMS }),
        ),
        (
            "NewCertificate",
            "renew_before_secs",
            json!({ "minimum": 3600, "maximum": 365 * 86_400 }),
        ),
        (
            "NewCertificate",
            "endpoints",
            json!({ "maxItems": crate::domain::drift::MAX_ENDPOINTS,
            "uniqueItems": true }),
        ),
        (
            "EndpointsUpdate",
            "endpoints",
            json!({ "maxItems": crate::domain::drift::MAX_ENDPOINTS,
            "uniqueItems": true }),
        ),
        (
            "Endpoint",
            "host",
            json!({ "anyOf": [host.clone(), { "format": "ipv6" }] }),
        ),
        (
            "Endpoint",
            "port",
            json!({ "minimum": 1, "maximum": 65_535 }),
        ),
        ("Endpoint", "sni", host),
        (
            "RevokeRequest",
            "reason",
            json!({ "enum": crate::domain::certificate::REVOCATION_REASONS }),
        ),
        (
            "Grant",
            "role",
            json!({ "enum": ["admin", "editor", "viewer", "agent"] }),
        ),
        (
            "Grant",
            "targets",
            json!({ "uniqueItems": true, "items": { "pattern": ID_PATTERN } }),
        ),
        ("NewToken", "expires_at", json!({ "format": "date-time" })),
    ];
    let schemas = &mut doc["components"]["schemas"];
    for (schema, property, rule) in rules {
        let target = &mut schemas[schema]["properties"][property];
        assert!(target.is_object(), "{schema}.{property} is in the document");
        merge(target, rule);
    }
    // Cross-field rules, in the schema of the whole body.
    merge(
        &mut schemas["NewToken"],
        json!({ "anyOf": [
            { "required": ["global_admin"], "properties": { "global_admin": { "const": true } } },
            { "required": ["roles"], "properties": { "roles": { "minItems": 1 } } },
        ] }),
    );
    merge(
        &mut schemas["NewIssuer"],
        json!({
            "if": { "required": ["challenge"], "properties": { "challenge": { "const": "dns-01" } } },
            "then": { "required": ["dns"], "properties": { "dns": { "type": "object" } } },
            "else": { "properties": { "dns": { "type": "null" } } },
        }),
    );
    // A target's settings object is its kind's (an agent's settings are
    // the agent's own).
    let settings = |kind: &str, object: Option<&str>| {
        let mut properties = serde_json::Map::new();
        for field in ["webhook", "kubernetes_secret", "ssh"] {
            let t = if Some(field) == object {
                "object"
            } else {
                "null"
            };
            properties.insert(field.to_string(), json!({ "type": t }));
        }
        let required: Vec<&str> = object.into_iter().collect();
        json!({ "if": { "properties": { "kind": { "const": kind } } },
               "then": { "required": required, "properties": properties } })
    };
    merge(
        &mut schemas["NewTarget"],
        json!({ "allOf": [
            settings("agent", None),
            settings("webhook", Some("webhook")),
            settings("kubernetes-secret", Some("kubernetes_secret")),
            settings("ssh", Some("ssh")),
        ] }),
    );
    // Only an agent names targets, and it names 1 to 20.
    merge(
        &mut schemas["Grant"],
        json!({
            "if": { "required": ["role"], "properties": { "role": { "const": "agent" } } },
            "then": { "required": ["targets"], "properties": { "targets": {
                "minItems": 1, "maxItems": super::tokens::MAX_AGENT_TARGETS } } },
            "else": { "properties": { "targets": { "maxItems": 0 } } },
        }),
    );
    // One settings object, the kind's.
    let only = |kind: &str| {
        let mut properties = serde_json::Map::new();
        for other in super::channels::CHANNEL_KINDS {
            let t = if *other == kind { "object" } else { "null" };
            properties.insert(other.to_string(), json!({ "type": t }));
        }
        json!({ "if": { "properties": { "kind": { "const": kind } } },
               "then": { "required": [kind], "properties": properties } })
    };
    merge(
        &mut schemas["NewChannel"],
        json!({ "allOf": super::channels::CHANNEL_KINDS.iter().map(|k| only(k)).collect::<Vec<_>>() }),
    );
    // A user and a password, or neither.
    merge(
        &mut schemas["ChannelEmail"],
        json!({ "dependentRequired": { "user": ["password"], "password": ["user"] } }),
    );
    // The key goes only over TLS.
    merge(
        &mut schemas["WebhookSettings"],
        json!({
            "if": { "required": ["include_key"], "properties": { "include_key": { "const": true } } },
            "then": { "properties": { "url": { "pattern": https_url_pattern() } } },
        }),
    );
    // An example of each body: what a client starts from.
    for (schema, example) in [
        ("NewProject", json!({ "name": "payments" })),
        (
            "DomainsUpdate",
            json!({ "domains": ["example.com"], "shared": false }),
        ),
        (
            "NewIssuer",
            json!({ "name": "letsencrypt",
            "directory_url": "https://acme-v02.api.letsencrypt.org/directory",
            "contact": "ops@example.com", "challenge": "http-01" }),
        ),
        (
            "NewCertificate",
            json!({ "name": "www", "dns_names": ["www.example.com"],
            "issuer_id": "iss_000000000000000000000000", "key_algorithm": "ecdsa-p256" }),
        ),
        (
            "EndpointsUpdate",
            json!({ "endpoints": [{ "host": "www.example.com", "port": 443 }] }),
        ),
        ("RevokeRequest", json!({ "reason": "superseded" })),
        (
            "NewTarget",
            json!({ "name": "deploy-hook", "kind": "webhook",
            "webhook": { "url": "https://deploy.example.com/certificates", "secret": "at-least-16-characters" },
            "validate": { "host": "www.example.com", "port": 443 } }),
        ),
        ("TargetsUpdate", json!({ "targets": ["deploy-hook"] })),
        (
            "NewChannel",
            json!({ "name": "on-call", "kind": "email",
            "email": { "host": "smtp.example.com", "user": "certautopilot", "password": "app-password",
                       "from": "certautopilot@example.com", "to": ["oncall@example.com"] },
            "routes": [{ "min_severity": "warning" }],
            "quiet_hours": { "start_minute": 1320, "end_minute": 420 } }),
        ),
        (
            "NewToken",
            json!({ "roles": [{ "project_id": "prj_000000000000000000000000", "role": "viewer" }],
            "description": "ci deploys" }),
        ),
    ] {
        schemas[schema]["examples"] = json!([example]);
    }
    // Job pages go by job id (an ObjectId), not by a name.
    let jobs = &mut doc["paths"]["/v1/projects/{project_id}/certificates/{id}/jobs"]["get"];
    for param in jobs["parameters"].as_array_mut().into_iter().flatten() {
        if param["name"] == "after" {
            merge(&mut param["schema"], json!({ "pattern": "^[0-9a-f]{24}$" }));
        }
    }
    // Every page size.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths
            .values_mut()
            .filter_map(|i| i.as_object_mut())
            .flat_map(|i| i.values_mut())
        {
            for param in op["parameters"].as_array_mut().into_iter().flatten() {
                if param["name"] == "limit" {
                    merge(
                        &mut param["schema"],
                        json!({ "minimum": 1, "maximum": super::MAX_PAGE }),
                    );
                }
                if param["name"] == "state" {
                    merge(
                        &mut param["schema"],
                        json!({ "enum": crate::store::notifications::STATES }),
                    );
                }
            }
        }
    }
}

/// Sets `rule`'s keys on `target`, an object; an `items` rule goes into the
/// items' schema.
fn merge(target: &mut serde_json::Value, rule: serde_json::Value) {
    let serde_json::Value::Object(rule) = rule else {
        return;
    };
    for (key, value) in rule {
        if key == "items" && target["items"].is_object() {
            merge(&mut target["items"], value);
        } else {
            target[key] = value;
        }
    }
}

fn op_needs_token(op: &serde_json::Value) -> bool {
    op["security"].as_array().is_some_and(|s| !s.is_empty())
}

type Link = (&'static str, &'static str, serde_json::Value);

/// Each create's answer, and the calls its id feeds.
fn created_links() -> Vec<((&'static str, &'static str), &'static str, Vec<Link>)> {
    use serde_json::json;
    let project = json!({ "project_id": "$response.body#/id" });
    let in_project = |id: &str| json!({ "project_id": "$request.path.project_id", "id": id });
    let certificate = in_project("$response.body#/id");
    vec![
        (
            ("/v1/projects", "post"),
            "201",
            vec![
                ("GetProject", "projects.get", project.clone()),
                ("GetDomains", "projects.domains", project.clone()),
                ("SetDomains", "projects.set_domains", project.clone()),
                ("CreateIssuer", "issuers.create", project.clone()),
                ("ListIssuers", "issuers.list", project.clone()),
                ("CreateCertificate", "certificates.create", project.clone()),
                ("ListCertificates", "certificates.list", project.clone()),
                ("CreateTarget", "targets.create", project.clone()),
                ("CreateChannel", "notifications.create", project.clone()),
                (
                    "Notifications",
                    "notifications.notifications_of",
                    project.clone(),
                ),
                ("ListTargets", "targets.list", project.clone()),
                ("ProjectAudit", "audit.project", project),
            ],
        ),
        (
            ("/v1/projects/{project_id}/issuers", "post"),
            "201",
            vec![("GetIssuer", "issuers.get", in_project("$response.body#/id"))],
        ),
        (
            ("/v1/projects/{project_id}/targets", "post"),
            "201",
            vec![
                ("GetTarget", "targets.get", in_project("$response.body#/id")),
                (
                    "DeleteTarget",
                    "targets.delete",
                    in_project("$response.body#/id"),
                ),
            ],
        ),
        (
            ("/v1/projects/{project_id}/certificates", "post"),
            "201",
            vec![
                ("GetCertificate", "certificates.get", certificate.clone()),
                ("Issue", "certificates.issue", certificate.clone()),
                ("Revoke", "certificates.revoke", certificate.clone()),
                (
                    "SetEndpoints",
                    "certificates.set_endpoints",
                    certificate.clone(),
                ),
                (
                    "PrivateKey",
                    "certificates.private_key",
                    certificate.clone(),
                ),
                (
                    "SetTargets",
                    "certificates.set_targets",
                    certificate.clone(),
                ),
                (
                    "Distributions",
                    "certificates.distributions",
                    certificate.clone(),
                ),
                ("Orders", "certificates.orders", certificate.clone()),
                ("Jobs", "certificates.jobs", certificate),
            ],
        ),
        (
            ("/v1/projects/{project_id}/channels", "post"),
            "201",
            vec![
                (
                    "GetChannel",
                    "notifications.get",
                    in_project("$response.body#/id"),
                ),
                (
                    "TestChannel",
                    "notifications.test",
                    in_project("$response.body#/id"),
                ),
                (
                    "DeleteChannel",
                    "notifications.delete",
                    in_project("$response.body#/id"),
                ),
            ],
        ),
        (
            ("/v1/channels", "post"),
            "201",
            vec![
                (
                    "GetInstallationChannel",
                    "notifications.get_installation",
                    json!({ "id": "$response.body#/id" }),
                ),
                (
                    "DeleteInstallationChannel",
                    "notifications.delete_installation",
                    json!({ "id": "$response.body#/id" }),
                ),
            ],
        ),
        (
            ("/v1/tokens", "post"),
            "201",
            vec![(
                "RevokeToken",
                "tokens.revoke",
                json!({ "id": "$response.body#/id" }),
            )],
        ),
    ]
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
