//! `/v1/projects/{project_id}/targets`: where a project's certificates are
//! delivered (docs/distribution.md). A target's credential is sealed under
//! the KEK before the target is stored, and never shown again.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::validate::{self, Reasons};
use super::{
    audit, date, forget_sealed, new_id, page, projects, seal, string, ApiState, PageQuery,
};
use crate::crypto::secrets::SecretRef;
use crate::distribute::kubernetes_secret::{check_name, Cluster};
use crate::distribute::ssh;
use crate::domain::distribution::TargetKind;
use crate::domain::drift::{endpoint_problems, Endpoint};
use crate::store::{certificates, distributions, is_duplicate_key, targets};

/// The kinds a target may be created with.
pub const TARGET_KINDS: &[&str] = &["agent", "ssh", "webhook", "kubernetes-secret"];
/// The shortest and longest webhook signing secret, in characters.
pub const WEBHOOK_SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=1024;
/// The longest kubeconfig taken, in characters.
pub const MAX_KUBECONFIG_LEN: usize = 64 * 1024;
/// The longest SSH private key and host key taken, in characters.
pub const MAX_SSH_KEY_LEN: usize = 16 * 1024;
/// The longest reload command, in characters.
pub const MAX_RELOAD_COMMAND_LEN: usize = 1024;
/// A user name on the SSH host.
pub const SSH_USER_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$";
/// A remote directory: absolute, nothing that needs quoting.
pub const SSH_DIRECTORY_PATTERN: &str = "^/[A-Za-z0-9._/@+-]{0,1023}$";

pub fn routes(cfg: &mut web::ServiceConfig) {
    let base = "/projects/{project_id}/targets";
    cfg.route(base, web::post().to(create))
        .route(base, web::get().to(list))
        .route(&format!("{base}/{{id}}"), web::get().to(get))
        .route(&format!("{base}/{{id}}"), web::delete().to(delete));
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTarget {
    /// Unique in the project; certificates name their targets by it.
    pub name: String,
    /// agent (`certautopilot agent` beside the server fetches what is new,
    /// with a token of role agent naming this target), webhook or
    /// kubernetes-secret.
    pub kind: String,
    /// Required with kind webhook, refused otherwise.
    pub webhook: Option<WebhookSettings>,
    /// Required with kind kubernetes-secret, refused otherwise.
    pub kubernetes_secret: Option<KubernetesSecretSettings>,
    /// Required with kind ssh, refused otherwise.
    pub ssh: Option<SshSettings>,
    /// Where the certificate must then be served (a TLS handshake compares
    /// fingerprints) [default: none, a delivery counts once made].
    pub validate: Option<Endpoint>,
}

/// Without the credential.
impl std::fmt::Debug for NewTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewTarget")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("webhook", &self.webhook)
            .field("kubernetes_secret", &self.kubernetes_secret)
            .field("ssh", &self.ssh)
            .field("validate", &self.validate)
            .finish()
    }
}

/// Without the secret.
impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("url", &self.url)
            .field("include_key", &self.include_key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Without the kubeconfig.
impl std::fmt::Debug for KubernetesSecretSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSecretSettings")
            .field("namespace", &self.namespace)
            .field("secret_name", &self.secret_name)
            .field("include_ca", &self.include_ca)
            .field(
                "kubeconfig",
                &self.kubeconfig.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Without the private key.
impl std::fmt::Debug for SshSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("host_key", &self.host_key)
            .field("directory", &self.directory)
            .field("reload_command", &self.reload_command)
            .field("private_key", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SshSettings {
    /// The host to upload to (a DNS name or an IPv4 address), reached
    /// through the egress policy.
    pub host: String,
    /// [default: 22]
    pub port: Option<u16>,
    pub user: String,
    /// The host's public key, pinned: as in /etc/ssh/ssh_host_ed25519_key.pub
    /// or what `ssh-keyscan -t ed25519 <host>` prints after the host name. A
    /// host presenting another key is refused before authenticating.
    pub host_key: String,
    /// Each certificate's files go to `<directory>/<certificate id>/`
    /// (created; `directory` must exist): cert.pem, chain.pem,
    /// fullchain.pem, key.pem (0600), the previous set as `*.previous`.
    pub directory: String,
    /// Run on the host over SSH after the files change and after a
    /// rollback, e.g. `sudo systemctl reload nginx` [default: none].
    pub reload_command: Option<String>,
    /// The private key to log in with (OpenSSH or PEM, without a
    /// passphrase); sealed under the KEK and never shown again.
    pub private_key: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSettings {
    /// Where the signed POST goes: https://, or http:// without the key.
    pub url: String,
    /// Send the private key too (https:// only) [default: false].
    #[serde(default)]
    pub include_key: bool,
    /// The signing secret, 16 to 1024 characters; sealed under the KEK and
    /// never shown again.
    pub secret: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSecretSettings {
    pub namespace: String,
    /// The `kubernetes.io/tls` Secret created or replaced.
    pub secret_name: String,
    /// Put the issuer chain in `ca.crt` too [default: false].
    #[serde(default)]
    pub include_ca: bool,
    /// A kubeconfig in JSON (`kubectl config view --minify --flatten -o
    /// json`) whose current context has a token; sealed under the KEK and
    /// never shown again [default: the in-cluster service account, which
    /// only a global admin may choose].
    pub kubeconfig: Option<String>,
}

/// A target; never shows its credential.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub kind: String,
    pub webhook: Option<WebhookView>,
    pub kubernetes_secret: Option<KubernetesSecretView>,
    pub ssh: Option<SshView>,
    /// Whether a credential is sealed for it, and since when.
    pub credential_set: bool,
    pub credential_set_at: Option<String>,
    pub validate: Option<Endpoint>,
    pub created_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub url: String,
    pub include_key: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KubernetesSecretView {
    pub namespace: String,
    pub secret_name: String,
    pub include_ca: bool,
    /// in-cluster, or kubeconfig.
    pub cluster: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SshView {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub host_key: String,
    /// The pinned key's fingerprint, as `ssh-keygen -lf` prints it.
    pub host_key_sha256: Option<String>,
    pub directory: String,
    pub reload_command: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TargetPage {
    pub items: Vec<TargetView>,
    pub next: Option<String>,
}

fn render(d: &Document) -> serde_json::Value {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let settings = d.get_document("settings").ok();
    let setting = |f: &str| settings.and_then(|x| string(x, f)).unwrap_or_default();
    let flag = |f: &str| settings.and_then(|x| x.get_bool(f).ok()).unwrap_or(false);
    let kind = s("kind");
    // Read the way the workers read it, so the two cannot disagree.
    let validate = targets::parse(d).ok().and_then(|t| t.validate);
    serde_json::to_value(TargetView {
        id: s("_id"),
        project_id: s("project_id"),
        name: s("name"),
        webhook: (kind == TargetKind::Webhook.as_str()).then(|| WebhookView {
            url: setting("url"),
            include_key: flag("include_key"),
        }),
        kubernetes_secret: (kind == TargetKind::KubernetesSecret.as_str()).then(|| {
            KubernetesSecretView {
                namespace: setting("namespace"),
                secret_name: setting("secret_name"),
                include_ca: flag("include_ca"),
                cluster: if flag("kubeconfig") {
                    "kubeconfig"
                } else {
                    "in-cluster"
                }
                .into(),
            }
        }),
        ssh: (kind == TargetKind::Ssh.as_str()).then(|| SshView {
            host: setting("host"),
            port: settings
                .and_then(|x| x.get_i32("port").ok())
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(22),
            user: setting("user"),
            host_key_sha256: ssh::fingerprint(&setting("host_key")),
            host_key: setting("host_key"),
            directory: setting("directory"),
            reload_command: settings.and_then(|x| string(x, "reload_command")),
        }),
        kind,
        credential_set: d.get_datetime("credential_set_at").is_ok(),
        credential_set_at: date(d, "credential_set_at"),
        validate,
        created_at: date(d, "created_at"),
    })
    .expect("a view serializes")
}

pub(crate) fn check(body: &NewTarget) -> Result<(), Problem> {
    let mut reasons = Reasons::default();
    validate::name(&mut reasons, "name", &body.name);
    let kind = body.kind.as_str();
    if !TARGET_KINDS.contains(&kind) {
        reasons.add(
            "kind",
            format!("{kind:?}: expected one of {TARGET_KINDS:?}"),
        );
    }
    match (&body.webhook, kind) {
        (Some(w), "webhook") => check_webhook(&mut reasons, w),
        (None, "webhook") => reasons.add("webhook", "is required with kind webhook"),
        (Some(_), _) => reasons.add("webhook", "is only for kind webhook"),
        (None, _) => {}
    }
    match (&body.kubernetes_secret, kind) {
        (Some(k), "kubernetes-secret") => check_kubernetes(&mut reasons, k),
        (None, "kubernetes-secret") => reasons.add(
            "kubernetes_secret",
            "is required with kind kubernetes-secret",
        ),
        (Some(_), _) => reasons.add("kubernetes_secret", "is only for kind kubernetes-secret"),
        (None, _) => {}
    }
    match (&body.ssh, kind) {
        (Some(settings), "ssh") => check_ssh(&mut reasons, settings),
        (None, "ssh") => reasons.add("ssh", "is required with kind ssh"),
        (Some(_), _) => reasons.add("ssh", "is only for kind ssh"),
        (None, _) => {}
    }
    if let Some(endpoint) = &body.validate {
        for (field, reason) in endpoint_problems(std::slice::from_ref(endpoint)) {
            reasons.add(field.replacen("endpoints[0]", "validate", 1), reason);
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(reasons.0))
    }
}

fn check_webhook(reasons: &mut Reasons, w: &WebhookSettings) {
    match url::Url::parse(&w.url) {
        Ok(u) if u.host().is_none() || !["https", "http"].contains(&u.scheme()) => {
            reasons.add("webhook.url", "must be an https:// or http:// URL")
        }
        Ok(u) if w.include_key && u.scheme() != "https" => reasons.add(
            "webhook.include_key",
            "the private key is only sent to an https:// URL",
        ),
        Ok(_) if !validate::matches(&validate::webhook_url_pattern(), &w.url) => reasons.add(
            "webhook.url",
            "must be https:// or http:// then a host name or IPv4 address, an optional port and a path",
        ),
        Ok(_) => {}
        Err(e) => reasons.add("webhook.url", format!("is not a URL: {e}")),
    }
    if !WEBHOOK_SECRET_LEN.contains(&w.secret.chars().count()) {
        reasons.add(
            "webhook.secret",
            format!(
                "must be {} to {} characters",
                WEBHOOK_SECRET_LEN.start(),
                WEBHOOK_SECRET_LEN.end()
            ),
        );
    }
}

fn check_kubernetes(reasons: &mut Reasons, k: &KubernetesSecretSettings) {
    if let Err(e) = check_name("namespace", &k.namespace) {
        reasons.add("kubernetes_secret.namespace", e.to_string());
    }
    if let Err(e) = check_name("Secret name", &k.secret_name) {
        reasons.add("kubernetes_secret.secret_name", e.to_string());
    }
    if let Some(config) = &k.kubeconfig {
        if config.chars().count() > MAX_KUBECONFIG_LEN {
            reasons.add(
                "kubernetes_secret.kubeconfig",
                format!("is longer than {MAX_KUBECONFIG_LEN} characters"),
            );
        } else if let Err(e) = Cluster::from_kubeconfig(config.as_bytes()) {
            reasons.add("kubernetes_secret.kubeconfig", e);
        }
    }
}

fn check_ssh(reasons: &mut Reasons, settings: &SshSettings) {
    if settings.host.len() > validate::MAX_DNS_NAME_LEN
        || !validate::matches(&validate::host_pattern(), &settings.host)
    {
        reasons.add("ssh.host", "must be a DNS name or an IPv4 address");
    }
    if settings.port == Some(0) {
        reasons.add("ssh.port", "must be 1 to 65535");
    }
    if !validate::matches(SSH_USER_PATTERN, &settings.user) {
        reasons.add(
            "ssh.user",
            "must be 1 to 32 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
        );
    }
    if settings.host_key.chars().count() > MAX_SSH_KEY_LEN {
        reasons.add(
            "ssh.host_key",
            format!("is longer than {MAX_SSH_KEY_LEN} characters"),
        );
    } else if let Err(e) = ssh::parse_host_key(&settings.host_key) {
        reasons.add("ssh.host_key", e);
    }
    if let Some(problem) = ssh::directory_problem(&settings.directory) {
        reasons.add("ssh.directory", problem);
    }
    if let Some(command) = &settings.reload_command {
        if command.chars().count() > MAX_RELOAD_COMMAND_LEN {
            reasons.add(
                "ssh.reload_command",
                format!("is longer than {MAX_RELOAD_COMMAND_LEN} characters"),
            );
        } else if !validate::matches(&validate::name_pattern(), command) {
            reasons.add(
                "ssh.reload_command",
                "must not be blank nor contain control characters",
            );
        }
    }
    if settings.private_key.chars().count() > MAX_SSH_KEY_LEN {
        reasons.add(
            "ssh.private_key",
            format!("is longer than {MAX_SSH_KEY_LEN} characters"),
        );
    } else if let Some(problem) = ssh::private_key_problem(&settings.private_key) {
        reasons.add("ssh.private_key", problem);
    }
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/targets", tag = "targets", request_body = NewTarget,
    params(("project_id" = String, Path)),
    responses((status = 201, body = TargetView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<NewTarget>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    projects::load(&state, &project_id).await?;
    check(&body)?;
    if let Some(k) = &body.kubernetes_secret {
        // The in-cluster service account is the installation's, not the
        // project's: it may reach namespaces no tenant should write to.
        if k.kubeconfig.is_none() && !caller.global_admin {
            return Err(Problem::forbidden(
                "only a global admin may deliver with the in-cluster service account; give kubernetes_secret.kubeconfig",
            ));
        }
    }
    let id = new_id("tgt");
    let now = state.store.server_now().await?;
    let (settings, credential) = match (&body.webhook, &body.kubernetes_secret, &body.ssh) {
        (_, _, Some(h)) => {
            let mut settings = doc! {
                "host": &h.host,
                "port": i32::from(h.port.unwrap_or(22)),
                "user": &h.user,
                // One line, without a comment: what the known-hosts file holds.
                "host_key": h.host_key.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
                "directory": h.directory.trim_end_matches('/'),
            };
            if let Some(command) = &h.reload_command {
                settings.insert("reload_command", command);
            }
            (settings, Some(&h.private_key))
        }
        (Some(w), _, _) => (
            doc! { "url": &w.url, "include_key": w.include_key },
            Some(&w.secret),
        ),
        (_, Some(k), _) => (
            doc! {
                "namespace": &k.namespace,
                "secret_name": &k.secret_name,
                "include_ca": k.include_ca,
                "kubeconfig": k.kubeconfig.is_some(),
            },
            k.kubeconfig.as_ref(),
        ),
        (None, None, None) => (doc! {}, None),
    };
    let mut record = doc! {
        "_id": &id,
        "project_id": &project_id,
        "name": body.name.trim(),
        "kind": &body.kind,
        "settings": settings,
        "created_at": now,
    };
    if let Some(e) = &body.validate {
        record.insert("validate", certificates::endpoint_document(e));
    }
    if let Some(credential) = credential {
        // Sealed before the target exists: a target never lacks the
        // credential it says it has.
        let secret = SecretRef::target_credential(&project_id, &id);
        seal(&state, &secret, credential.as_bytes(), "the credential").await?;
        record.insert("credential_set_at", now);
    }
    match targets::insert(&state.store, record.clone()).await {
        Ok(()) => {}
        Err(e) if is_duplicate_key(&e) => {
            // Surely not stored: its credential goes. (After another error
            // the target may have landed, and keeps it.)
            forget_sealed(&state, &[SecretRef::target_credential(&project_id, &id)]).await;
            let mut conflicts = Reasons::default();
            conflicts.add("name", "a target of this project already has this name");
            return Err(Problem::conflicting(conflicts.0));
        }
        Err(e) => return Err(e.into()),
    }
    audit(
        &state,
        caller.actor(),
        "target.created",
        format!("projects/{project_id}/targets/{id}"),
        doc! { "kind": &body.kind, "name": body.name.trim(), "credential_set": credential.is_some() },
    )
    .await;
    Ok(HttpResponse::Created().json(render(&record)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/targets", tag = "targets",
    params(("project_id" = String, Path), PageQuery),
    responses((status = 200, body = TargetPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> ApiResult<HttpResponse> {
    let project_id = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    let found = targets::page(
        &state.store,
        &project_id,
        query.after.as_deref(),
        query.limit()?,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page(found, render)))
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/targets/{id}", tag = "targets",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = TargetView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Viewer)?;
    let found = targets::in_project(&state.store, &project_id, &id)
        .await?
        .ok_or_else(|| Problem::not_found("target"))?;
    Ok(HttpResponse::Ok().json(render(&found)))
}

/// Removes a target no certificate goes to any more (409 otherwise).
#[utoipa::path(delete, path = "/v1/projects/{project_id}/targets/{id}", tag = "targets",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Editor)?;
    targets::in_project(&state.store, &project_id, &id)
        .await?
        .ok_or_else(|| Problem::not_found("target"))?;
    let naming = certificates::count_naming_target(&state.store, &project_id, &id).await?;
    if naming > 0 {
        return Err(Problem::conflict(format!(
            "{naming} certificate(s) still go to this target: take it off them first (PUT …/certificates/{{id}}/targets)"
        )));
    }
    if !targets::delete(&state.store, &project_id, &id).await? {
        return Err(Problem::not_found("target"));
    }
    // Its deliveries' records and what they kept for a rollback go too.
    let certificates = distributions::forget_target(&state.store, &id).await?;
    let mut sealed = vec![SecretRef::target_credential(&project_id, &id)];
    sealed.extend(
        certificates
            .iter()
            .map(|c| SecretRef::distribution_previous(&project_id, c, &id)),
    );
    forget_sealed(&state, &sealed).await;
    audit(
        &state,
        caller.actor(),
        "target.deleted",
        format!("projects/{project_id}/targets/{id}"),
        doc! {},
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}

/// The targets of `project_id` named `names`, as (id, name) in the order
/// given; a name with no target in the project is a 409 (a certificate can
/// never point at another tenant's target).
pub async fn resolve(
    state: &ApiState,
    project_id: &str,
    names: &[String],
    field: &str,
) -> ApiResult<Vec<(String, String)>> {
    // Stored trimmed, as every name is.
    let names: Vec<String> = names.iter().map(|n| n.trim().to_string()).collect();
    let found = targets::named(&state.store, project_id, &names).await?;
    let mut resolved = Vec::new();
    let mut conflicts = Reasons::default();
    for (i, name) in names.iter().enumerate() {
        match found
            .iter()
            .find(|d| d.get_str("name") == Ok(name.as_str()))
        {
            Some(d) => resolved.push((
                d.get_str("_id").unwrap_or_default().to_string(),
                name.clone(),
            )),
            None => conflicts.add(
                format!("{field}[{i}]"),
                format!("{name:?}: no such target in this project"),
            ),
        }
    }
    if conflicts.is_empty() {
        Ok(resolved)
    } else {
        Err(Problem::conflicting(conflicts.0))
    }
}
