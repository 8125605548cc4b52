//! Notification channels and their outbox: `/v1/projects/{project_id}/channels`
//! for a project's, `/v1/channels` for the installation's (global admins;
//! they receive the installation-wide events, and a project's events when
//! their routes take them). A channel's credential is sealed under the KEK
//! before the channel is stored, and never shown again.

use actix_web::{web, HttpResponse};
use mongodb::bson::{doc, Bson, Document};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Role};
use super::problem::{ApiResult, Problem};
use super::{audit, date, forget_sealed, new_id, page, projects, seal, string, ApiState};
use crate::crypto::secrets::SecretRef;
use crate::domain::drift::{endpoint_problems, Endpoint};
use crate::domain::notifications::{Channel, ChannelDelivery, QuietHours, Severity, EVENT_KINDS};
use crate::domain::target_settings::origin;
use crate::domain::validate::{self, Reasons};
use crate::notify::message::Notification;
use crate::notify::send::reason_to_show;
use crate::store::{channels, notifications};

pub const CHANNEL_KINDS: &[&str] = &["webhook", "slack", "email"];
pub const SMTP_TLS: &[&str] = &["starttls", "implicit", "none"];
pub const MAX_RECIPIENTS: usize = 20;
pub const MAX_ROUTES: usize = 20;

pub fn routes(cfg: &mut web::ServiceConfig) {
    let base = "/projects/{project_id}/channels";
    cfg.route(base, web::post().to(create))
        .route(base, web::get().to(list))
        .route(&format!("{base}/{{id}}"), web::get().to(get))
        .route(&format!("{base}/{{id}}"), web::delete().to(delete))
        .route(&format!("{base}/{{id}}/test"), web::post().to(test))
        .route(
            "/projects/{project_id}/notifications",
            web::get().to(notifications_of),
        )
        .route("/channels", web::post().to(create_installation))
        .route("/channels", web::get().to(list_installation))
        .route("/channels/{id}", web::get().to(get_installation))
        .route("/channels/{id}", web::delete().to(delete_installation))
        .route("/channels/{id}/test", web::post().to(test_installation))
        .route(
            "/notifications",
            web::get().to(notifications_of_installation),
        );
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    /// webhook, slack or email.
    pub kind: String,
    /// Required with kind webhook, refused otherwise.
    pub webhook: Option<ChannelWebhook>,
    /// Required with kind slack, refused otherwise.
    pub slack: Option<ChannelSlack>,
    /// Required with kind email, refused otherwise.
    pub email: Option<ChannelEmail>,
    /// Which events it takes (any route) [default: every event].
    #[serde(default)]
    pub routes: Vec<NewRoute>,
    /// A daily window (UTC) when only critical events go; the rest wait for
    /// its end [default: none].
    pub quiet_hours: Option<QuietHoursBody>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelWebhook {
    /// https://, or http://.
    pub url: String,
    /// The signing secret, 16 to 1024 characters; sealed, never shown again.
    pub secret: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSlack {
    /// The incoming webhook's URL (https://); it is the credential: sealed,
    /// never shown again.
    pub webhook_url: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelEmail {
    /// The SMTP server.
    pub host: String,
    /// [default: 587]
    #[serde(default, deserialize_with = "crate::domain::whole_number::option")]
    pub port: Option<u16>,
    /// starttls (required of the server), implicit (TLS from the first
    /// byte, port 465) or none (a relay on a trusted network) [default: starttls]
    #[serde(default = "starttls")]
    pub tls: String,
    /// With `password`: authenticate [default: send unauthenticated].
    pub user: Option<String>,
    /// Sealed, never shown again.
    pub password: Option<String>,
    pub from: String,
    /// 1 to 20 addresses.
    pub to: Vec<String>,
    /// The server's CA (PEM), for a private one [default: the public roots].
    pub ca_bundle_pem: Option<String>,
}

fn starttls() -> String {
    "starttls".into()
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRoute {
    /// Event kinds [default: all].
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Project ids (for an installation channel: whose events) [default: all].
    #[serde(default)]
    pub projects: Vec<String>,
    /// info, warning or critical: this and more severe [default: info].
    #[serde(default = "info")]
    pub min_severity: String,
}

fn info() -> String {
    "info".into()
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursBody {
    /// Minutes after midnight UTC, 0 to 1439.
    #[serde(deserialize_with = "crate::domain::whole_number::deserialize")]
    pub start_minute: u32,
    /// Minutes after midnight UTC, 0 to 1439; before the start wraps midnight.
    #[serde(deserialize_with = "crate::domain::whole_number::deserialize")]
    pub end_minute: u32,
}

/// Without the secrets.
impl std::fmt::Debug for NewChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewChannel")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("routes", &self.routes)
            .field("quiet_hours", &self.quiet_hours)
            .finish_non_exhaustive()
    }
}

/// A channel; never shows its credential.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelView {
    pub id: String,
    /// None for an installation channel.
    pub project_id: Option<String>,
    pub name: String,
    pub kind: String,
    /// The webhook's URL: whole to the project's admins (global admins for
    /// an installation channel), its origin (`https://host:port`) only to
    /// everyone else, since a query string or path often holds a token. A
    /// Slack URL is the credential: never shown.
    pub url: Option<String>,
    pub email: Option<EmailView>,
    pub routes: Vec<NewRoute>,
    pub quiet_hours: Option<QuietHoursBody>,
    pub credential_set: bool,
    pub created_at: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EmailView {
    pub host: String,
    pub port: u16,
    pub tls: String,
    pub user: Option<String>,
    pub from: String,
    pub to: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelPage {
    pub items: Vec<ChannelView>,
    pub next: Option<String>,
}

/// A record of the outbox.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    pub channel_id: String,
    pub kind: String,
    pub severity: String,
    pub dedup_key: String,
    pub summary: String,
    /// pending, sent or dead.
    pub state: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Not sent before (quiet hours).
    pub release_at: Option<String>,
    pub created_at: Option<String>,
    pub sent_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct NotificationPage {
    pub items: Vec<NotificationView>,
    pub next: Option<String>,
}

/// What became of a test message.
#[derive(Serialize, ToSchema)]
pub struct TestSent {
    /// Whether the channel's server took it.
    pub delivered: bool,
    /// Why not: the receiver's status when it answered, and a reason in
    /// CertAutoPilot's words (never the receiver's answer; the server's log
    /// has the whole error).
    pub error: Option<String>,
    /// The deduplication key the test message carried.
    pub dedup_key: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct NotificationQuery {
    /// pending, sent or dead [default: all].
    pub state: Option<String>,
    /// 1 to 200 [default: 50]
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

/// How much of a channel's URL a caller is shown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UrlShown {
    Whole,
    OriginOnly,
}

impl UrlShown {
    /// Whole to whoever administers the channel's scope.
    fn to(caller: &Caller, scope: Scope<'_>) -> UrlShown {
        let admin = match scope {
            Scope::Project(p) => caller.require(p, Role::Admin).is_ok(),
            Scope::Installation => caller.global_admin,
        };
        if admin {
            UrlShown::Whole
        } else {
            UrlShown::OriginOnly
        }
    }
}

/// Stored channel `d` as shown: a webhook's whole URL, opened from its
/// sealed secret, when `shown` is whole.
async fn view(state: &ApiState, d: &Document, shown: UrlShown) -> serde_json::Value {
    let whole_url = match channels::parse(d) {
        Ok(channel) if shown == UrlShown::Whole => whole_url(state, &channel).await,
        _ => None,
    };
    render(d, whole_url)
}

/// Webhook `channel`'s sealed whole URL; `None` (its origin is shown) when
/// it is not a webhook or the URL cannot be opened, which is logged.
async fn whole_url(state: &ApiState, channel: &Channel) -> Option<String> {
    let ChannelDelivery::Webhook { url: origin } = &channel.delivery else {
        return None;
    };
    let sealed = SecretRef::channel_url(channel.project_id.as_deref(), &channel.id);
    match state.secrets.open_url(&sealed, origin).await {
        Ok(url) => Some(url),
        Err(e) => {
            tracing::warn!(channel = %channel.id, error = %e, "a webhook channel's whole URL cannot be opened: its origin is shown");
            None
        }
    }
}

/// A stored channel, a webhook's URL shown whole when `whole_url` is
/// given, else only its origin.
fn render(d: &Document, whole_url: Option<String>) -> serde_json::Value {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    // Read the way the senders read it, so the two cannot disagree.
    let parsed = channels::parse(d).ok();
    let email = parsed.as_ref().and_then(|c| match &c.delivery {
        ChannelDelivery::Email(e) => Some(EmailView {
            host: e.host.clone(),
            port: e.port,
            tls: e.tls.clone(),
            user: e.user.clone(),
            from: e.from.clone(),
            to: e.to.clone(),
        }),
        _ => None,
    });
    let url = parsed.as_ref().and_then(|c| match &c.delivery {
        ChannelDelivery::Webhook { url } => Some(whole_url.clone().unwrap_or_else(|| origin(url))),
        _ => None,
    });
    let routes = parsed
        .as_ref()
        .map(|c| {
            c.routes
                .iter()
                .map(|r| NewRoute {
                    kinds: r.kinds.clone(),
                    projects: r.projects.clone(),
                    min_severity: r.min_severity.as_str().into(),
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::to_value(ChannelView {
        id: s("_id"),
        project_id: string(d, "project_id"),
        name: s("name"),
        kind: s("kind"),
        url,
        email,
        routes,
        quiet_hours: d.get_document("quiet_hours").ok().map(|q| QuietHoursBody {
            start_minute: q.get_i32("start_minute").unwrap_or(0) as u32,
            end_minute: q.get_i32("end_minute").unwrap_or(0) as u32,
        }),
        credential_set: d.get_datetime("credential_set_at").is_ok(),
        created_at: date(d, "created_at"),
    })
    .expect("a view serializes")
}

fn render_notification(d: &Document) -> serde_json::Value {
    let s = |f: &str| d.get_str(f).unwrap_or_default().to_string();
    serde_json::to_value(NotificationView {
        id: s("_id"),
        channel_id: s("channel_id"),
        kind: s("kind"),
        severity: s("severity"),
        dedup_key: s("dedup_key"),
        summary: s("summary"),
        state: s("state"),
        attempts: d.get_i64("attempts").unwrap_or(0),
        last_error: string(d, "last_error"),
        release_at: date(d, "release_at"),
        created_at: date(d, "created_at"),
        sent_at: date(d, "sent_at"),
    })
    .expect("a view serializes")
}

pub(crate) fn check(body: &NewChannel) -> Result<(), Problem> {
    let mut reasons = Reasons::default();
    validate::name(&mut reasons, "name", &body.name);
    let kind = body.kind.as_str();
    if !CHANNEL_KINDS.contains(&kind) {
        reasons.add(
            "kind",
            format!("{kind:?}: expected one of {CHANNEL_KINDS:?}"),
        );
    }
    let mut settings = |field: &str, given: bool, wanted: &str| match (given, kind == wanted) {
        (false, true) => reasons.add(field, format!("is required with kind {wanted}")),
        (true, false) => reasons.add(field, format!("is only for kind {wanted}")),
        _ => {}
    };
    settings("webhook", body.webhook.is_some(), "webhook");
    settings("slack", body.slack.is_some(), "slack");
    settings("email", body.email.is_some(), "email");
    if let Some(w) = &body.webhook {
        if !validate::matches(&validate::webhook_url_pattern(), &w.url)
            || url::Url::parse(&w.url).is_err()
        {
            reasons.add(
                "webhook.url",
                "must be https:// or http:// then a host name or IPv4 address, an optional port and a path",
            );
        }
        if !super::targets::WEBHOOK_SECRET_LEN.contains(&w.secret.chars().count()) {
            reasons.add("webhook.secret", "must be 16 to 1024 characters");
        }
    }
    if let Some(s) = &body.slack {
        if !validate::matches(&validate::https_url_pattern(), &s.webhook_url)
            || url::Url::parse(&s.webhook_url).is_err()
        {
            reasons.add(
                "slack.webhook_url",
                "must be https:// then a host name or IPv4 address, an optional port and a path",
            );
        }
    }
    if let Some(e) = &body.email {
        check_email(&mut reasons, e);
    }
    if body.routes.len() > MAX_ROUTES {
        reasons.add("routes", format!("at most {MAX_ROUTES}"));
    }
    for (i, route) in body.routes.iter().enumerate() {
        for (j, k) in route.kinds.iter().enumerate() {
            if !EVENT_KINDS.contains(&k.as_str()) {
                reasons.add(
                    format!("routes[{i}].kinds[{j}]"),
                    format!("{k:?}: expected one of {EVENT_KINDS:?}"),
                );
            }
        }
        for (j, p) in route.projects.iter().enumerate() {
            if !validate::matches(validate::ID_PATTERN, p) {
                reasons.add(format!("routes[{i}].projects[{j}]"), "is not a project id");
            }
        }
        if Severity::parse(&route.min_severity).is_none() {
            reasons.add(
                format!("routes[{i}].min_severity"),
                "expected info, warning or critical",
            );
        }
    }
    if let Some(q) = &body.quiet_hours {
        if let Err(e) = QuietHours::new(q.start_minute, q.end_minute) {
            reasons.add("quiet_hours", e);
        }
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(Problem::invalid(reasons.0))
    }
}

fn check_email(reasons: &mut Reasons, e: &ChannelEmail) {
    let server = Endpoint {
        host: e.host.clone(),
        port: e.port.unwrap_or(587),
        sni: None,
    };
    for (field, reason) in endpoint_problems(std::slice::from_ref(&server)) {
        let field = field.replacen("endpoints[0]", "email", 1);
        reasons.add(field, reason);
    }
    if !SMTP_TLS.contains(&e.tls.as_str()) {
        reasons.add(
            "email.tls",
            format!("{:?}: expected one of {SMTP_TLS:?}", e.tls),
        );
    }
    match (&e.user, &e.password) {
        (Some(_), None) => reasons.add("email.password", "is required with a user"),
        (None, Some(_)) => reasons.add("email.user", "is required with a password"),
        _ => {}
    }
    if let Some(user) = &e.user {
        if user.is_empty() || user.chars().count() > 256 {
            reasons.add("email.user", "must be 1 to 256 characters");
        }
    }
    if let Some(password) = &e.password {
        if password.is_empty() || password.chars().count() > 1024 {
            reasons.add("email.password", "must be 1 to 1024 characters");
        }
    }
    validate::email(reasons, "email.from", &e.from);
    if e.to.is_empty() || e.to.len() > MAX_RECIPIENTS {
        reasons.add("email.to", format!("1 to {MAX_RECIPIENTS} addresses"));
    }
    for (i, to) in e.to.iter().enumerate() {
        validate::email(reasons, &format!("email.to[{i}]"), to);
    }
    if let Some(pem) = &e.ca_bundle_pem {
        if let Err(why) = crate::acme::check_ca_bundle(pem) {
            reasons.add("email.ca_bundle_pem", why);
        }
    }
}

/// Where a channel lives: a project, or the installation.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Project(&'a str),
    Installation,
}

impl<'a> Scope<'a> {
    fn project(self) -> Option<&'a str> {
        match self {
            Scope::Project(p) => Some(p),
            Scope::Installation => None,
        }
    }

    fn path(self, id: &str) -> String {
        match self {
            Scope::Project(p) => format!("projects/{p}/channels/{id}"),
            Scope::Installation => format!("channels/{id}"),
        }
    }

    async fn authorize(self, state: &ApiState, caller: &Caller, need: Role) -> ApiResult<()> {
        match self {
            Scope::Project(p) => {
                caller.require(p, need)?;
                if need >= Role::Editor {
                    projects::load(state, p).await?;
                }
                Ok(())
            }
            Scope::Installation => caller.require_global_admin(),
        }
    }
}

async fn create_in(
    state: &ApiState,
    caller: &Caller,
    scope: Scope<'_>,
    body: &NewChannel,
) -> ApiResult<HttpResponse> {
    scope.authorize(state, caller, Role::Editor).await?;
    check(body)?;
    let held = channels::count_in_scope(&state.store, scope.project()).await?;
    if held >= state.max_channels_per_project {
        let mut conflicts = Reasons::default();
        conflicts.add(
            "name",
            format!(
                "{} holds {held} channels, the most it may (CAP_MAX_CHANNELS_PER_PROJECT); \
                 delete one first",
                scope
                    .project()
                    .map_or("the installation".to_string(), |p| format!("project {p}"))
            ),
        );
        return Err(Problem::conflicting(conflicts.0));
    }
    let id = new_id("chn");
    let now = state.store.server_now().await?;
    let (settings, credential) = match (&body.webhook, &body.slack, &body.email) {
        // Only the origin in the clear (and no `url`, which a sender of the
        // previous release would post to): the whole URL is sealed below.
        (Some(w), _, _) => (doc! { "origin": origin(&w.url) }, Some(w.secret.as_str())),
        (_, Some(s), _) => (doc! {}, Some(s.webhook_url.as_str())),
        (_, _, Some(e)) => {
            let mut settings = doc! {
                "host": &e.host,
                "port": e.port.unwrap_or(587) as i32,
                "tls": &e.tls,
                "from": &e.from,
                "to": &e.to,
            };
            if let Some(user) = &e.user {
                settings.insert("user", user);
            }
            if let Some(pem) = &e.ca_bundle_pem {
                settings.insert("ca_bundle_pem", pem);
            }
            (settings, e.password.as_deref())
        }
        _ => (doc! {}, None),
    };
    let routes: Vec<Bson> = body
        .routes
        .iter()
        .map(|r| {
            Bson::Document(doc! {
                "kinds": &r.kinds, "projects": &r.projects, "min_severity": &r.min_severity,
            })
        })
        .collect();
    let mut record = doc! {
        "_id": &id,
        "project_id": scope.project().map(Bson::from).unwrap_or(Bson::Null),
        "name": body.name.trim(),
        "kind": &body.kind,
        "settings": settings,
        "routes": routes,
        "created_at": now,
    };
    if let Some(q) = &body.quiet_hours {
        record.insert(
            "quiet_hours",
            doc! { "start_minute": q.start_minute as i32, "end_minute": q.end_minute as i32 },
        );
    }
    if let Some(w) = &body.webhook {
        let secret = SecretRef::channel_url(scope.project(), &id);
        seal(state, &secret, w.url.as_bytes(), "the URL").await?;
    }
    if let Some(credential) = credential {
        let secret = SecretRef::channel_credential(scope.project(), &id);
        seal(state, &secret, credential.as_bytes(), "the credential").await?;
        record.insert("credential_set_at", now);
    }
    // Bound as the senders read it: where it sends is the API's to say.
    let parsed = channels::parse(&record).map_err(Problem::conflict)?;
    let mac = state.binding().channel_mac(&parsed).await.map_err(|e| {
        tracing::error!(channel = %id, error = %e, "cannot bind a channel's settings");
        Problem::unavailable("the channel cannot be bound right now (is the KEK available?)")
    })?;
    record.insert(crate::store::BINDING_MAC, mac);
    channels::insert(&state.store, record.clone()).await?;
    audit(
        state,
        caller.actor(),
        "channel.created",
        scope.path(&id),
        doc! { "kind": &body.kind, "name": body.name.trim() },
    )
    .await;
    let shown = UrlShown::to(caller, scope);
    Ok(HttpResponse::Created().json(view(state, &record, shown).await))
}

async fn load(state: &ApiState, scope: Scope<'_>, id: &str) -> ApiResult<Document> {
    channels::in_scope(&state.store, scope.project(), id)
        .await?
        .ok_or_else(|| Problem::not_found("channel"))
}

async fn delete_in(
    state: &ApiState,
    caller: &Caller,
    scope: Scope<'_>,
    id: &str,
) -> ApiResult<HttpResponse> {
    scope.authorize(state, caller, Role::Editor).await?;
    if !channels::delete(&state.store, scope.project(), id).await? {
        return Err(Problem::not_found("channel"));
    }
    forget_sealed(
        state,
        &[
            SecretRef::channel_credential(scope.project(), id),
            SecretRef::channel_url(scope.project(), id),
        ],
    )
    .await;
    audit(
        state,
        caller.actor(),
        "channel.deleted",
        scope.path(id),
        doc! {},
    )
    .await;
    Ok(HttpResponse::NoContent().finish())
}

/// Sends a test message now and answers with the outcome (`delivered`,
/// and the error when not): the request itself succeeded either way.
async fn test_in(
    state: &ApiState,
    caller: &Caller,
    scope: Scope<'_>,
    id: &str,
) -> ApiResult<HttpResponse> {
    scope.authorize(state, caller, Role::Editor).await?;
    let found = load(state, scope, id).await?;
    let channel = channels::parse(&found).map_err(Problem::conflict)?;
    match state
        .binding()
        .verify_channel(&channel, channels::binding_mac(&found))
        .await
    {
        Ok(()) => {}
        Err(e) if e.is_transient() => {
            return Err(Problem::unavailable(
                "the channel cannot be checked right now (is the KEK available?)",
            ))
        }
        Err(e) => {
            e.report(&state.metrics);
            return Err(Problem::conflict(e.to_string()));
        }
    }
    let now = state.store.server_now().await?;
    let notification = Notification {
        kind: "channel.test".into(),
        severity: Severity::Info,
        dedup_key: format!("channel.test:{id}:{}", now.timestamp_millis()),
        summary: format!(
            "Test message from CertAutoPilot for channel {}",
            channel.name
        ),
        project_id: scope.project().map(str::to_string),
    };
    let sent = crate::notify::send::send(
        &state.secrets,
        &state.egress,
        &channel,
        &notification,
        now.timestamp_millis() / 1000,
    )
    .await;
    // The caller and the audit log (which viewers read) get our words and
    // the receiver's status, never its answer: a channel aimed at an
    // internal service would otherwise let an editor read that service.
    let shown = sent.as_ref().err().map(reason_to_show);
    if let Err(e) = &sent {
        tracing::warn!(channel = %id, error = %e, "test message not sent");
    }
    audit(
        state,
        caller.actor(),
        "channel.tested",
        scope.path(id),
        doc! { "delivered": sent.is_ok(), "error": shown.clone() },
    )
    .await;
    Ok(HttpResponse::Ok().json(TestSent {
        delivered: sent.is_ok(),
        error: shown,
        dedup_key: notification.dedup_key,
    }))
}

async fn notifications_in(
    state: &ApiState,
    caller: &Caller,
    scope: Scope<'_>,
    query: &NotificationQuery,
) -> ApiResult<HttpResponse> {
    scope.authorize(state, caller, Role::Viewer).await?;
    if let Some(s) = &query.state {
        if !notifications::STATES.contains(&s.as_str()) {
            return Err(Problem::bad_request(format!(
                "state {s:?}: expected one of {:?}",
                notifications::STATES
            )));
        }
    }
    let limit = super::PageQuery {
        limit: query.limit,
        after: None,
    }
    .limit()?;
    let found = notifications::page(
        &state.store,
        scope.project(),
        query.state.as_deref(),
        query.after.as_deref(),
        limit,
    )
    .await?;
    Ok(HttpResponse::Ok().json(page(found, render_notification)))
}

async fn list_in(
    state: &ApiState,
    caller: &Caller,
    scope: Scope<'_>,
    query: &super::PageQuery,
) -> ApiResult<HttpResponse> {
    scope.authorize(state, caller, Role::Viewer).await?;
    let found = channels::page(
        &state.store,
        scope.project(),
        query.after.as_deref(),
        query.limit()?,
    )
    .await?;
    let shown = UrlShown::to(caller, scope);
    let (docs, next) = found;
    let mut items = Vec::with_capacity(docs.len());
    for d in &docs {
        items.push(view(state, d, shown).await);
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "items": items, "next": next })))
}

async fn get_in(
    state: &ApiState,
    caller: &Caller,
    scope: Scope<'_>,
    id: &str,
) -> ApiResult<HttpResponse> {
    scope.authorize(state, caller, Role::Viewer).await?;
    let shown = UrlShown::to(caller, scope);
    Ok(HttpResponse::Ok().json(view(state, &load(state, scope, id).await?, shown).await))
}

#[utoipa::path(post, path = "/v1/projects/{project_id}/channels", tag = "notifications", request_body = NewChannel,
    params(("project_id" = String, Path)),
    responses((status = 201, body = ChannelView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<NewChannel>,
) -> ApiResult<HttpResponse> {
    create_in(&state, &caller, Scope::Project(&path), &body).await
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/channels", tag = "notifications",
    params(("project_id" = String, Path), super::PageQuery),
    responses((status = 200, body = ChannelPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<super::PageQuery>,
) -> ApiResult<HttpResponse> {
    list_in(&state, &caller, Scope::Project(&path), &query).await
}

#[utoipa::path(get, path = "/v1/projects/{project_id}/channels/{id}", tag = "notifications",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = ChannelView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    get_in(&state, &caller, Scope::Project(&project_id), &id).await
}

#[utoipa::path(delete, path = "/v1/projects/{project_id}/channels/{id}", tag = "notifications",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    delete_in(&state, &caller, Scope::Project(&project_id), &id).await
}

/// Sends a test message at once and answers whether it was taken.
#[utoipa::path(post, path = "/v1/projects/{project_id}/channels/{id}/test", tag = "notifications",
    params(("project_id" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = TestSent), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn test(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> ApiResult<HttpResponse> {
    let (project_id, id) = path.into_inner();
    test_in(&state, &caller, Scope::Project(&project_id), &id).await
}

/// The project's outbox; `?state=dead` for the dead letters.
#[utoipa::path(get, path = "/v1/projects/{project_id}/notifications", tag = "notifications",
    params(("project_id" = String, Path), NotificationQuery),
    responses((status = 200, body = NotificationPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn notifications_of(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<NotificationQuery>,
) -> ApiResult<HttpResponse> {
    notifications_in(&state, &caller, Scope::Project(&path), &query).await
}

#[utoipa::path(post, path = "/v1/channels", tag = "notifications", request_body = NewChannel,
    responses((status = 201, body = ChannelView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn create_installation(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<NewChannel>,
) -> ApiResult<HttpResponse> {
    create_in(&state, &caller, Scope::Installation, &body).await
}

#[utoipa::path(get, path = "/v1/channels", tag = "notifications", params(super::PageQuery),
    responses((status = 200, body = ChannelPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn list_installation(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<super::PageQuery>,
) -> ApiResult<HttpResponse> {
    list_in(&state, &caller, Scope::Installation, &query).await
}

#[utoipa::path(get, path = "/v1/channels/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = ChannelView), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get_installation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    get_in(&state, &caller, Scope::Installation, &path).await
}

#[utoipa::path(delete, path = "/v1/channels/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 204), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn delete_installation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    delete_in(&state, &caller, Scope::Installation, &path).await
}

/// Sends a test message at once and answers whether it was taken.
#[utoipa::path(post, path = "/v1/channels/{id}/test", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = TestSent), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn test_installation(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> ApiResult<HttpResponse> {
    test_in(&state, &caller, Scope::Installation, &path).await
}

/// The installation channels' outbox; `?state=dead` for the dead letters.
#[utoipa::path(get, path = "/v1/notifications", tag = "notifications", params(NotificationQuery),
    responses((status = 200, body = NotificationPage), (status = "4XX", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn notifications_of_installation(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<NotificationQuery>,
) -> ApiResult<HttpResponse> {
    notifications_in(&state, &caller, Scope::Installation, &query).await
}
