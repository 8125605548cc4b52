//! `/v1/projects/{project_id}/targets`: where a project's certificates are
//! delivered (docs/distribution.md). A target's credential is sealed under
//! the KEK before the target is stored, and never shown again.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Document};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::{audit, date, forget_sealed, new_id, projects, seal, ApiState, PageQuery};
use crate::crypto::secrets::SecretRef;
use crate::distribute::kubernetes_secret::Cluster;
use crate::distribute::ssh;
use crate::domain::distribution::{Delivery, Target};
use crate::domain::drift::{endpoint_problems, Endpoint};
use crate::domain::target_settings::{self, fingerprint};
use crate::domain::validate::{self, Reasons};
use crate::services::key_release;
use crate::store::{certificates, distributions, is_duplicate_key, targets, BINDING_MAC};

/// The kinds a target may be created with.
pub const TARGET_KINDS: &[&str] = &["agent", "ssh", "webhook", "kubernetes-secret"];
/// The shortest and longest webhook signing secret, in characters.
pub const WEBHOOK_SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=1024;
/// The longest kubeconfig taken, in characters.
pub const MAX_KUBECONFIG_LEN: usize = 64 * 1024;
pub use crate::domain::target_settings::{
    MAX_RELOAD_COMMAND_LEN, MAX_SSH_KEY_LEN, SSH_DIRECTORY_PATTERN, SSH_USER_PATTERN,
};
/// Targets a project may hold at most.
pub const MAX_TARGETS_PER_PROJECT: u64 = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    let base = "/projects/{project_id}/targets";
    cfg.route(base, web::post().to(create))
        .route(base, web::get().to(list))
        .route(&format!("{base}/{{id}}"), web::get().to(get))
        .route(&format!("{base}/{{id}}"), web::delete().to(delete))
        .route(&format!("{base}/{{id}}/confirm"), web::post().to(confirm));
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
    #[serde(default, deserialize_with = "crate::domain::whole_number::option")]
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
    /// Whether deliveries to it send the private key (every kind but a
    /// webhook without `include_key`): such a target is an admin's to make.
    pub receives_keys: bool,
    /// Why nothing is delivered to it until a project admin confirms it
    /// (`POST …/targets/{id}/confirm`); absent when it is in use.
    pub disabled: Option<String>,
    pub created_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    /// The whole URL for the project's admins; its origin
    /// (`https://host:port`) for everyone else, since a query string often
    /// carries a token.
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

/// A stored target as `caller` may see it on `project_id`: a webhook's
/// whole URL, opened from its sealed secret, for the project's admins.
async fn view(
    state: &ApiState,
    d: &Document,
    caller: &Caller,
    project_id: &str,
) -> serde_json::Value {
    let whole_url = match targets::parse(d) {
        Ok(target) if caller.releases_keys(project_id) => whole_url(state, &target).await,
        _ => None,
    };
    render(d, whole_url)
}

/// Webhook `target`'s sealed whole URL; `None` (its origin is shown) when
/// it is not a webhook or the URL cannot be opened, which is logged.
async fn whole_url(state: &ApiState, target: &Target) -> Option<String> {
    let Delivery::Webhook { url: origin, .. } = &target.delivery else {
        return None;
    };
    let sealed = SecretRef::target_url(&target.project_id, &target.id);
    match state.secrets.open_url(&sealed, origin).await {
        Ok(url) => Some(url),
        Err(e) => {
            tracing::warn!(target = %target.id, error = %e, "a webhook target's whole URL cannot be opened: its origin is shown");
            None
        }
    }
}

/// A stored target, a webhook's URL shown whole when `whole_url` is given,
/// else only its origin (a query string or path often holds a token).
fn render(d: &Document, whole_url: Option<String>) -> serde_json::Value {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    let created_at = date(d, "created_at");
    let credential_set_at = date(d, "credential_set_at");
    let parsed = match targets::parse(d) {
        Ok(target) => target,
        // Shown as stored, settings aside: what the workers would refuse.
        Err(_) => {
            return serde_json::json!({
                "id": s("_id"), "project_id": s("project_id"), "name": s("name"),
                "kind": s("kind"), "credential_set": credential_set_at.is_some(),
                "credential_set_at": credential_set_at, "created_at": created_at,
            })
        }
    };
    // Read the way the workers read it, so the two cannot disagree.
    let mut view = TargetView {
        id: parsed.id.clone(),
        project_id: parsed.project_id.clone(),
        name: parsed.name.clone(),
        kind: parsed.kind().as_str().to_string(),
        webhook: None,
        kubernetes_secret: None,
        ssh: None,
        credential_set: credential_set_at.is_some(),
        credential_set_at,
        validate: parsed.validate.clone(),
        receives_keys: parsed.receives_keys(),
        disabled: parsed.disabled.clone(),
        created_at,
    };
    match &parsed.delivery {
        Delivery::Agent => {}
        Delivery::Webhook { url, include_key } => {
            view.webhook = Some(WebhookView {
                url: whole_url.unwrap_or_else(|| key_release::origin(url)),
                include_key: *include_key,
            })
        }
        Delivery::KubernetesSecret {
            namespace,
            secret_name,
            include_ca,
            kubeconfig,
        } => {
            view.kubernetes_secret = Some(KubernetesSecretView {
                namespace: namespace.clone(),
                secret_name: secret_name.clone(),
                include_ca: *include_ca,
                cluster: if *kubeconfig {
                    "kubeconfig"
                } else {
                    "in-cluster"
                }
                .into(),
            })
        }
        Delivery::Ssh {
            host,
            port,
            user,
            host_key,
            directory,
            reload_command,
        } => {
            view.ssh = Some(SshView {
                host: host.clone(),
                port: *port,
                user: user.clone(),
                host_key_sha256: fingerprint(host_key),
                host_key: host_key.clone(),
                directory: directory.clone(),
                reload_command: reload_command.clone(),
            })
        }
    }
    serde_json::to_value(view).expect("a view serializes")
}

/// The target `body` asks for, as the workers will read it (`id` and
/// `project_id` given), its settings normalized as they are stored.
fn requested(body: &NewTarget, project_id: &str, id: &str) -> Option<Target> {
    let delivery = match (
        body.kind.as_str(),
        &body.webhook,
        &body.kubernetes_secret,
        &body.ssh,
    ) {
        ("agent", None, None, None) => Delivery::Agent,
        ("ssh", None, None, Some(h)) => Delivery::Ssh {
            host: h.host.clone(),
            port: h.port.unwrap_or(22),
            user: h.user.clone(),
            // One line, without a comment: what the known-hosts file holds.
            host_key: h
                .host_key
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
            directory: match h.directory.trim_end_matches('/') {
                "" => "/".to_string(),
                dir => dir.to_string(),
            },
            reload_command: h.reload_command.clone(),
        },
        ("webhook", Some(w), None, None) => Delivery::Webhook {
            url: w.url.clone(),
            include_key: w.include_key,
        },
        ("kubernetes-secret", None, Some(k), None) => Delivery::KubernetesSecret {
            namespace: k.namespace.clone(),
            secret_name: k.secret_name.clone(),
            include_ca: k.include_ca,
            kubeconfig: k.kubeconfig.is_some(),
        },
        _ => return None,
    };
    Some(Target {
        id: id.to_string(),
        project_id: project_id.to_string(),
        name: body.name.trim().to_string(),
        delivery,
        validate: body.validate.clone(),
        disabled: None,
    })
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
    if let Some(target) = requested(body, "", "") {
        // The rules a worker checks again before it uses the target.
        reasons.0.extend(target_settings::problems(&target));
    } else if let Some(endpoint) = &body.validate {
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

/// The webhook's own fields; its URL is a setting ([`target_settings`]).
fn check_webhook(reasons: &mut Reasons, w: &WebhookSettings) {
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

/// The kubeconfig; the names are settings ([`target_settings`]).
fn check_kubernetes(reasons: &mut Reasons, k: &KubernetesSecretSettings) {
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

/// The login key; the rest are settings ([`target_settings`]).
fn check_ssh(reasons: &mut Reasons, settings: &SshSettings) {
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
    let id = new_id("tgt");
    let target = requested(&body, &project_id, &id)
        .ok_or_else(|| Problem::bad_request("the kind's settings do not match the kind"))?;
    if target.receives_keys() && !caller.releases_keys(&project_id) {
        return Err(Problem::forbidden(format!(
            "a {} target receives the certificates' private keys: making one needs the project's admin role (the role that may read keys)",
            describe_kind(&target)
        )));
    }
    if let Some(k) = &body.kubernetes_secret {
        // The in-cluster service account is the installation's, not the
        // project's: it may reach namespaces no tenant should write to.
        if k.kubeconfig.is_none() && !caller.global_admin {
            return Err(Problem::forbidden(
                "only a global admin may deliver with the in-cluster service account; give kubernetes_secret.kubeconfig",
            ));
        }
    }
    let held = targets::count_in_project(&state.store, &project_id).await?;
    if held >= MAX_TARGETS_PER_PROJECT {
        return Err(Problem::conflict(format!(
            "the project holds {held} targets, the most it may (delete one first)"
        )));
    }
    let credential = match (&body.webhook, &body.kubernetes_secret, &body.ssh) {
        (_, _, Some(h)) => Some(&h.private_key),
        (Some(w), _, _) => Some(&w.secret),
        (_, Some(k), _) => k.kubeconfig.as_ref(),
        (None, None, None) => None,
    };
    let now = state.store.server_now().await?;
    let mut record = targets::document(&target);
    // Bound as the workers read it from the store (a webhook's origin).
    let stored = targets::parse(&record).map_err(Problem::conflict)?;
    record.insert(BINDING_MAC, bind(&state, &stored).await?);
    record.insert("created_at", now);
    record.insert("created_by", caller.actor());
    if let Some(w) = &body.webhook {
        // Its path or query may hold a token: only the origin is stored in
        // the clear. Sealed before the target exists, as the credential.
        let secret = SecretRef::target_url(&project_id, &id);
        seal(&state, &secret, w.url.as_bytes(), "the URL").await?;
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
            // Surely not stored: its sealed secrets go. (After another
            // error the target may have landed, and keeps them.)
            forget_sealed(
                &state,
                &[
                    SecretRef::target_credential(&project_id, &id),
                    SecretRef::target_url(&project_id, &id),
                ],
            )
            .await;
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
        doc! {
            "kind": &body.kind,
            "name": body.name.trim(),
            "credential_set": credential.is_some(),
            "receives_keys": target.receives_keys(),
        },
    )
    .await;
    Ok(HttpResponse::Created().json(view(&state, &record, &caller, &project_id).await))
}

/// "ssh", "webhook (include_key)", …: what a refusal names.
fn describe_kind(target: &Target) -> String {
    match &target.delivery {
        Delivery::Webhook { .. } => "webhook (include_key)".into(),
        delivery => delivery.kind().as_str().into(),
    }
}

/// `target`'s binding MAC; 503 when the KEK is away.
async fn bind(state: &ApiState, target: &Target) -> ApiResult<String> {
    state.binding().target_mac(target).await.map_err(|e| {
        tracing::error!(target = %target.id, error = %e, "cannot bind a target's settings");
        Problem::unavailable("the target cannot be bound right now (is the KEK available?)")
    })
}

/// Puts a target disabled by migration 17 (one that receives keys and was
/// not made by an admin) back in use. Project admins only; the stored
/// settings must still verify, so a record changed in the database is not
/// confirmed with its changes.
#[utoipa::path(post, path = "/v1/projects/{project_id}/targets/{id}/confirm", tag = "targets",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = TargetView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn confirm(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    caller.require(&project_id, Role::Admin)?;
    let found = targets::in_project(&state.store, &project_id, &id)
        .await?
        .ok_or_else(|| Problem::not_found("target"))?;
    let mut target = targets::parse(&found).map_err(Problem::conflict)?;
    match state
        .binding()
        .verify_target(&target, targets::binding_mac(&found))
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_transient() => {
            return Err(Problem::unavailable(
                "the target cannot be checked right now (is the KEK available?)",
            ))
        }
        Err(e) => {
            e.report(&state.metrics);
            return Err(Problem::conflict(format!(
                "{e}: delete the target and make it again"
            )));
        }
    }
    let was = target.disabled.take();
    let updated = targets::set_disabled(&state.store, &target, &bind(&state, &target).await?)
        .await?
        .ok_or_else(|| Problem::not_found("target"))?;
    if let Some(was) = was {
        audit(
            &state,
            caller.actor(),
            "target.confirmed",
            format!("projects/{project_id}/targets/{id}"),
            doc! { "was_disabled": was },
        )
        .await;
    }
    Ok(HttpResponse::Ok().json(view(&state, &updated, &caller, &project_id).await))
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
    let (docs, next) = found;
    let mut items = Vec::with_capacity(docs.len());
    for d in &docs {
        items.push(view(&state, d, &caller, &project_id).await);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next": next })))
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
    Ok(HttpResponse::Ok().json(view(&state, &found, &caller, &project_id).await))
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
    let mut sealed = vec![
        SecretRef::target_credential(&project_id, &id),
        SecretRef::target_url(&project_id, &id),
    ];
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
/// never point at another tenant's target). Naming a target that receives
/// keys, when `already` (the ids the certificate goes to now) lacks it,
/// needs the project's admin role: 403 otherwise.
pub async fn resolve(
    state: &ApiState,
    caller: &Caller,
    project_id: &str,
    names: &[String],
    field: &str,
    already: &[String],
) -> ApiResult<Vec<(String, String)>> {
    // Stored trimmed, as every name is.
    let names: Vec<String> = names.iter().map(|n| n.trim().to_string()).collect();
    let found = targets::named(&state.store, project_id, &names).await?;
    let mut resolved = Vec::new();
    let mut conflicts = Reasons::default();
    let mut key_receiving = Vec::new();
    for (i, name) in names.iter().enumerate() {
        match found
            .iter()
            .find(|d| d.get_str("name") == Ok(name.as_str()))
        {
            Some(d) => {
                let id = d.get_str("_id").unwrap_or_default().to_string();
                // A target that does not parse receives nothing; its kind
                // alone says whether it would receive keys.
                let receives_keys = targets::parse(d).map_or(true, |t| t.receives_keys());
                if receives_keys && !already.contains(&id) {
                    key_receiving.push(name.clone());
                }
                resolved.push((id, name.clone()));
            }
            None => conflicts.add(
                format!("{field}[{i}]"),
                format!("{name:?}: no such target in this project"),
            ),
        }
    }
    if !conflicts.is_empty() {
        return Err(Problem::conflicting(conflicts.0));
    }
    if !key_receiving.is_empty() && !caller.releases_keys(project_id) {
        return Err(Problem::forbidden(format!(
            "{key_receiving:?} receive(s) the certificate's private key: sending a certificate there needs the project's admin role (the role that may read keys)"
        )));
    }
    Ok(resolved)
}
