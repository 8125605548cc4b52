//! A receiver of signed webhook posts on loopback, checking them as a
//! customer's would: the signature over the raw body, within the tolerance
//! of its clock. What it took and how often each path was tried are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::Value;

use certautopilot::crypto::webhook_signature::{verify, DEFAULT_TOLERANCE_SECS};

/// What the receiver saw, per path: the attempts made, and the posts taken
/// as (`CertAutoPilot-Delivery`, body).
#[derive(Default)]
pub struct Seen {
    pub attempts: HashMap<String, u32>,
    pub taken: HashMap<String, Vec<(String, Value)>>,
}

impl Seen {
    /// Every post taken, whatever its path.
    pub fn all_taken(&self) -> Vec<(String, Value)> {
        self.taken.values().flatten().cloned().collect()
    }
}

/// Starts the receiver: a post whose signature does not verify with
/// `secret` is 401; one for which `refuse(path, attempt)` is true is 503
/// (attempts count from 1); any other is taken (204). Answers its port.
pub async fn start(
    secret: &'static str,
    seen: Arc<Mutex<Seen>>,
    refuse: fn(&str, u32) -> bool,
) -> (u16, actix_web::dev::ServerHandle) {
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let seen = seen.clone();
            async move {
                let header = |name: &str| {
                    req.headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string()
                };
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                let signed = verify(
                    secret.as_bytes(),
                    &header("CertAutoPilot-Signature"),
                    &body,
                    now,
                    DEFAULT_TOLERANCE_SECS,
                );
                if signed.is_err() {
                    return HttpResponse::Unauthorized().body("bad signature");
                }
                let path = req.path().to_string();
                let mut seen = seen.lock().unwrap();
                let attempt = {
                    let n = seen.attempts.entry(path.clone()).or_default();
                    *n += 1;
                    *n
                };
                if refuse(&path, attempt) {
                    return HttpResponse::ServiceUnavailable().body("busy");
                }
                let body: Value = serde_json::from_slice(&body).unwrap();
                seen.taken
                    .entry(path)
                    .or_default()
                    .push((header("CertAutoPilot-Delivery"), body));
                HttpResponse::NoContent().finish()
            }
        }))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (port, handle)
}
