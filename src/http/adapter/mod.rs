//! The queue-depth metrics adapter: `external.metrics.k8s.io/v1beta1`, as
//! the Kubernetes aggregator calls it for an HPA on an External metric.
//!
//! - `GET /apis/external.metrics.k8s.io/v1beta1`: discovery, an
//!   `APIResourceList` naming [`METRIC`].
//! - `GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/certautopilot_queue_depth?labelSelector=…`:
//!   an `ExternalMetricValueList`, one item per job kind and state
//!   (`queued`, `running`, `dead`) the selector ([`selector`]) matches, the
//!   count read as the Prometheus gauge `certautopilot_queue_depth` reads
//!   it ([`JobQueue::depth`]); a kind with no jobs reads 0, so an HPA never
//!   sees an empty answer. The namespace is not a filter: the queue is one
//!   for the whole installation.
//!
//! Every request must come from the aggregator ([`tls`]): a client
//! certificate signed by the request-header CA whose common name is an
//! allowed name; the user it forwards in `X-Remote-User` is logged. Every
//! error is a Kubernetes `Status`. Probes and `/metrics` are served apart,
//! on a plain listener (see `cli::metrics_adapter`), since the kubelet has
//! no front-proxy certificate.

pub mod selector;
pub mod tls;

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Extensions;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use rustls::server::danger::ClientCertVerifier;
use serde_json::{json, Value};

use crate::queue::jobs::{JobQueue, JobState};
use selector::Selector;
use tls::Peer;

pub const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";
pub const METRIC: &str = "certautopilot_queue_depth";
/// The states the depth counts (finished jobs are not depth).
pub const STATES: [JobState; 3] = [JobState::Queued, JobState::Running, JobState::Dead];
/// How long one request waits for the count before answering 503.
const DEPTH_DEADLINE: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Clone)]
pub struct AdapterState {
    pub queue: JobQueue,
    /// Common names of the front-proxy certificates we accept.
    pub allowed_names: Arc<Vec<String>>,
    /// Job kinds always answered, with 0 when none is queued.
    pub kinds: Vec<String>,
}

/// The routes of the TLS listener.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let base = format!("/apis/{GROUP_VERSION}");
    cfg.service(
        web::resource(base.clone())
            .route(web::get().to(discovery))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource(format!("{base}/namespaces/{{namespace}}/{{metric}}"))
            .route(web::get().to(metric))
            .default_service(web::to(method_not_allowed)),
    )
    .default_service(web::to(not_found));
}

/// For `HttpServer::on_connect`: judges each connection's client
/// certificate once, for every request on it to read.
pub fn on_connect(
    ca: Arc<dyn ClientCertVerifier>,
) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + 'static {
    move |conn, ext| {
        type Tls = actix_tls::accept::rustls_0_23::TlsStream<actix_web::rt::net::TcpStream>;
        let peer = match conn.downcast_ref::<Tls>() {
            Some(tls) => Peer::of(tls.get_ref().1.peer_certificates(), ca.as_ref()),
            None => Peer::Anonymous,
        };
        ext.insert(peer);
    }
}

/// The aggregator, and the user it acts for.
#[derive(Debug)]
struct Caller {
    proxy: String,
    user: Option<String>,
    groups: Vec<String>,
}

/// Why a request was refused, before anything was read for it.
struct Refusal {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Refusal {
    fn response(self) -> HttpResponse {
        status(self.code, self.reason, self.message)
    }
}

fn authenticate(req: &HttpRequest, state: &AdapterState) -> Result<Caller, Refusal> {
    let peer = req.conn_data::<Peer>().cloned().unwrap_or(Peer::Anonymous);
    let refuse = |code: StatusCode, reason: &'static str, message: String| {
        tracing::warn!(
            peer = %req.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            path = req.path(),
            reason = %message,
            "metrics request refused"
        );
        Err(Refusal {
            code,
            reason,
            message,
        })
    };
    match peer {
        Peer::Anonymous => refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a client certificate signed by the request-header CA is required".into(),
        ),
        Peer::Untrusted(why) => refuse(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            format!("the client certificate is not trusted: {why}"),
        ),
        Peer::Verified { common_name } if !state.allowed_names.contains(&common_name) => refuse(
            StatusCode::FORBIDDEN,
            "Forbidden",
            format!("client certificate common name {common_name:?} is not an allowed name"),
        ),
        Peer::Verified { common_name } => {
            let header = |name: &str| {
                req.headers()
                    .get_all(name)
                    .filter_map(|v| v.to_str().ok())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            };
            Ok(Caller {
                proxy: common_name,
                user: header("X-Remote-User").into_iter().next(),
                groups: header("X-Remote-Group"),
            })
        }
    }
}

async fn discovery(req: HttpRequest, state: web::Data<AdapterState>) -> HttpResponse {
    let caller = match authenticate(&req, &state) {
        Ok(c) => c,
        Err(refused) => return refused.response(),
    };
    log_served(&req, &caller);
    HttpResponse::Ok().json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [{
            "name": METRIC,
            "singularName": "",
            "namespaced": true,
            "kind": "ExternalMetricValueList",
            "verbs": ["get"],
        }],
    }))
}

async fn metric(
    req: HttpRequest,
    state: web::Data<AdapterState>,
    path: web::Path<(String, String)>,
) -> HttpResponse {
    let caller = match authenticate(&req, &state) {
        Ok(c) => c,
        Err(refused) => return refused.response(),
    };
    let (_namespace, name) = path.into_inner();
    if name != METRIC {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("the server could not find the metric {name:?}; it serves {METRIC}"),
        );
    }
    let raw = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "labelSelector")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let selector = match Selector::parse(&raw) {
        Ok(s) => s,
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", e.to_string()),
    };
    let rows = match tokio::time::timeout(DEPTH_DEADLINE, state.queue.depth()).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(e)) => return unavailable(crate::store::short(&e)),
        Err(_) => return unavailable("timed out".into()),
    };
    log_served(&req, &caller);
    let timestamp = mongodb::bson::DateTime::now()
        .try_to_rfc3339_string()
        .unwrap_or_default();
    let items: Vec<Value> = depth_by_label(&state.kinds, rows)
        .into_iter()
        .filter(|((kind, job_state), _)| {
            selector.matches(&[("kind", kind.as_str()), ("state", job_state.as_str())])
        })
        .map(|((kind, job_state), n)| {
            json!({
                "metricName": METRIC,
                "metricLabels": { "kind": kind, "state": job_state },
                "timestamp": timestamp,
                "value": n.to_string(),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    }))
}

/// Every known kind in every counted state (0 when empty), and whatever
/// else the database counted.
fn depth_by_label(
    kinds: &[String],
    rows: Vec<(String, String, i64)>,
) -> BTreeMap<(String, String), i64> {
    let mut depth = BTreeMap::new();
    for kind in kinds {
        for s in STATES {
            depth.insert((kind.clone(), s.as_str().to_string()), 0);
        }
    }
    for (kind, job_state, n) in rows {
        depth.insert((kind, job_state), n);
    }
    depth
}

fn log_served(req: &HttpRequest, caller: &Caller) {
    tracing::info!(
        proxy = %caller.proxy,
        user = caller.user.as_deref().unwrap_or("-"),
        groups = %caller.groups.join(","),
        path = req.path(),
        query = req.query_string(),
        "metrics request"
    );
}

async fn not_found(req: HttpRequest, state: web::Data<AdapterState>) -> HttpResponse {
    if let Err(refused) = authenticate(&req, &state) {
        return refused.response();
    }
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!(
            "the server could not find the requested resource {}",
            req.path()
        ),
    )
}

async fn method_not_allowed(req: HttpRequest, state: web::Data<AdapterState>) -> HttpResponse {
    if let Err(refused) = authenticate(&req, &state) {
        return refused.response();
    }
    status(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("{} is not supported here; only get is", req.method()),
    )
}

fn unavailable(why: String) -> HttpResponse {
    tracing::warn!(error = %why, "queue depth unavailable");
    status(
        StatusCode::SERVICE_UNAVAILABLE,
        "ServiceUnavailable",
        format!("the queue depth cannot be read from the database: {why}"),
    )
}

/// A Kubernetes `Status` error.
pub fn status(code: StatusCode, reason: &str, message: String) -> HttpResponse {
    HttpResponse::build(code).json(json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_kind_and_state_is_answered() {
        let kinds = vec!["issue-certificate".to_string(), "probe".to_string()];
        let depth = depth_by_label(
            &kinds,
            vec![
                ("issue-certificate".into(), "queued".into(), 12),
                ("retired-kind".into(), "dead".into(), 1),
            ],
        );
        assert_eq!(depth.len(), 7);
        assert_eq!(depth[&("issue-certificate".into(), "queued".into())], 12);
        assert_eq!(depth[&("issue-certificate".into(), "running".into())], 0);
        assert_eq!(depth[&("probe".into(), "dead".into())], 0);
        assert_eq!(depth[&("retired-kind".into(), "dead".into())], 1);
    }
}
