//! A stand-in of the Kubernetes Secrets endpoints (no API server can be had
//! on these machines), answering as the API server does: resource versions,
//! 409 on a stale `resourceVersion` or a second create, 401 without the
//! token, 404 for what is not there. It answers under any path prefix
//! (`/k8s/clusters/c-1/api/v1/…` as Rancher's proxy does), over HTTP or
//! over HTTPS with a CA of its own. Set to, it answers a Secret's GET with
//! a 200 whose body never ends, as a hostile "cluster" would.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::Engine;
use futures::StreamExt;
use serde_json::{json, Value};
use url::Url;

/// The bearer token it takes.
pub const TOKEN: &str = "deployer-service-account-token";

/// What the stand-in holds. `interfere` writes the Secret that many times
/// between a GET and the next write, as a concurrent writer would.
#[derive(Default)]
pub struct StandIn {
    /// By `<namespace>/<name>`.
    pub secrets: HashMap<String, Value>,
    pub version: u64,
    pub interfere: usize,
    /// Write requests (POST, PUT), refused ones too.
    pub writes: usize,
    /// The `tls.crt` of every write that landed, in order.
    pub written: Vec<String>,
    /// The path of every authorized request.
    pub paths: Vec<String>,
    /// When set, a GET of a Secret answers 200 and a body without end,
    /// counting here the bytes it hands to the connection.
    pub endless: Option<Arc<AtomicUsize>>,
}

/// A 200 whose JSON never closes: `{"data":"AAAA…` for ever, 64 KiB at a
/// time, each counted in `sent` as it is handed over.
fn endless_body(sent: Arc<AtomicUsize>) -> HttpResponse {
    let opening = web::Bytes::from_static(b"{\"data\":\"");
    let block = web::Bytes::from(vec![b'A'; 64 * 1024]);
    let blocks = futures::stream::repeat(block).map(move |b| {
        sent.fetch_add(b.len(), Ordering::Relaxed);
        Ok::<_, actix_web::Error>(b)
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(futures::stream::once(async { Ok(opening) }).chain(blocks))
}

impl StandIn {
    fn bump(&mut self, key: &str) {
        self.version += 1;
        let v = self.version.to_string();
        if let Some(s) = self.secrets.get_mut(key) {
            s["metadata"]["resourceVersion"] = json!(v);
        }
    }

    /// Stores `secret` under `key` with the next resource version.
    fn store(&mut self, key: String, mut secret: Value) -> Value {
        self.version += 1;
        secret["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.written.push(tls_crt(&secret));
        self.secrets.insert(key, secret.clone());
        secret
    }
}

/// A Secret's `tls.crt`, decoded.
pub fn tls_crt(secret: &Value) -> String {
    let data = secret["data"]["tls.crt"].as_str().unwrap_or_default();
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(data)
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

fn answer(s: &mut StandIn, req: &HttpRequest, body: &[u8]) -> HttpResponse {
    let authorized = req
        .headers()
        .get("authorization")
        .is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
    if !authorized {
        return HttpResponse::Unauthorized().json(json!({"kind": "Status", "code": 401}));
    }
    s.paths.push(req.path().to_string());
    let path = req.path().trim_matches('/');
    let path = path.strip_prefix("k8s/clusters/c-1/").unwrap_or(path);
    let parts: Vec<&str> = path.split('/').collect();
    let (ns, name) = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, "secrets"] => (*ns, None),
        ["api", "v1", "namespaces", ns, "secrets", name] => (*ns, Some(*name)),
        _ => return HttpResponse::NotFound().finish(),
    };
    let conflict = || HttpResponse::Conflict().json(json!({"kind": "Status", "code": 409}));
    match (req.method().as_str(), name) {
        ("GET", Some(_)) if s.endless.is_some() => {
            endless_body(s.endless.clone().expect("checked"))
        }
        ("GET", Some(name)) => {
            let key = format!("{ns}/{name}");
            let found = s.secrets.get(&key).cloned();
            if s.interfere > 0 {
                s.interfere -= 1;
                s.bump(&key);
            }
            match found {
                Some(secret) => HttpResponse::Ok().json(secret),
                None => HttpResponse::NotFound().json(json!({"kind": "Status", "code": 404})),
            }
        }
        ("POST", None) => {
            let secret: Value = serde_json::from_slice(body).unwrap();
            let key = format!("{ns}/{}", secret["metadata"]["name"].as_str().unwrap());
            s.writes += 1;
            if s.secrets.contains_key(&key) {
                return conflict();
            }
            HttpResponse::Created().json(s.store(key, secret))
        }
        ("PUT", Some(name)) => {
            let secret: Value = serde_json::from_slice(body).unwrap();
            let key = format!("{ns}/{name}");
            s.writes += 1;
            let stored = s
                .secrets
                .get(&key)
                .map(|c| c["metadata"]["resourceVersion"].clone());
            if stored.as_ref() != Some(&secret["metadata"]["resourceVersion"]) {
                return conflict();
            }
            HttpResponse::Ok().json(s.store(key, secret))
        }
        _ => HttpResponse::MethodNotAllowed().finish(),
    }
}

/// A CA, and a certificate for 127.0.0.1 signed by it.
fn pki() -> (String, rustls::ServerConfig) {
    let (ca_pem, leaf, key) = super::private_ca_and_leaf("test cluster CA", "127.0.0.1");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (ca_pem, config)
}

/// A running stand-in: its base URL, and with `tls` the CA its certificate
/// is signed by.
pub struct Running {
    pub url: Url,
    pub ca_pem: Option<String>,
    pub handle: actix_web::dev::ServerHandle,
}

impl Running {
    /// A kubeconfig in JSON naming it, with [`TOKEN`] (`kubectl config
    /// view --minify --flatten -o json` prints that form).
    pub fn kubeconfig(&self) -> String {
        let mut cluster = json!({ "server": self.url.as_str().trim_end_matches('/') });
        if let Some(ca) = &self.ca_pem {
            cluster["certificate-authority-data"] =
                json!(base64::engine::general_purpose::STANDARD.encode(ca));
        }
        json!({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "contexts": [{ "name": "test", "context": { "cluster": "stand-in", "user": "deployer" } }],
            "clusters": [{ "name": "stand-in", "cluster": cluster }],
            "users": [{ "name": "deployer", "user": { "token": TOKEN } }],
        })
        .to_string()
    }
}

pub async fn serve(state: Arc<Mutex<StandIn>>, tls: bool) -> Running {
    let server = HttpServer::new(move || {
        let state = state.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let state = state.clone();
            async move { answer(&mut state.lock().unwrap(), &req, &body) }
        }))
    })
    .workers(1);
    let (server, ca_pem, scheme) = if tls {
        let (ca_pem, config) = pki();
        (
            server.bind_rustls_0_23(("127.0.0.1", 0), config).unwrap(),
            Some(ca_pem),
            "https",
        )
    } else {
        (server.bind(("127.0.0.1", 0)).unwrap(), None, "http")
    };
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Running {
        url: Url::parse(&format!("{scheme}://127.0.0.1:{port}/")).unwrap(),
        ca_pem,
        handle,
    }
}
