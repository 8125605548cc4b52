//! The `kubernetes-secret` target: a `kubernetes.io/tls` Secret created or
//! replaced through the Kubernetes API, with optimistic concurrency.
//!
//! Replace is read-modify-write: `GET` the Secret, change only its `type`
//! and `data` (labels, annotations and owner references stay), `PUT` it
//! with the `resourceVersion` read; a 409 means someone wrote in between,
//! so read again and retry. An absent Secret is `POST`ed; a 409 there means
//! it was just created, so the next round replaces it. What the Secret held
//! before is returned, for rollback.
//!
//! No Kubernetes API server runs on these machines: the tests run this
//! exchange against a stand-in of the Secrets endpoints (README).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use serde_json::{json, Value};
use url::Url;

use super::http::{
    body_capped, body_start, pinned_client, refusal, transport_failure, DeliveryError,
};
use crate::net::egress::EgressPolicy;

/// Where a pod finds its service account (the in-cluster credentials).
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How many read-modify-write rounds a replace makes before giving up on
/// a Secret someone keeps writing.
const CONFLICT_ROUNDS: usize = 5;

/// How long one request may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest answer read from an API server. A Secret holds at most
/// 1 MiB of data, which base64 and its metadata make less than 2 MiB; a
/// server that sends more is not one to trust, and an endless body would
/// otherwise take the worker's memory.
pub const MAX_ANSWER_BYTES: usize = 4 << 20;

/// A Secret as the API server answered it, read up to [`MAX_ANSWER_BYTES`].
async fn secret_of(answer: reqwest::Response, what: &str) -> Result<Value, DeliveryError> {
    let body = body_capped(answer, MAX_ANSWER_BYTES, what).await?;
    serde_json::from_slice(&body).map_err(|e| DeliveryError::Transient(format!("{what}: {e}")))
}

/// An API server and how to authenticate to it.
#[derive(Clone)]
pub struct Cluster {
    pub server: Url,
    pub bearer_token: String,
    /// The API server's CA (PEM); `None` trusts the public roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server.as_str())
            .field("bearer_token", &"<redacted>")
            .finish()
    }
}

impl Cluster {
    /// The in-cluster service account: `KUBERNETES_SERVICE_HOST` and
    /// `_PORT`, and the token and CA mounted in `dir`.
    pub fn in_cluster(dir: &Path) -> Result<Cluster, DeliveryError> {
        let env = |name: &str| {
            std::env::var(name).map_err(|_| {
                DeliveryError::Refused(format!("{name} is not set: not running in a pod"))
            })
        };
        Self::service_account(
            dir,
            &env("KUBERNETES_SERVICE_HOST")?,
            &env("KUBERNETES_SERVICE_PORT")?,
        )
    }

    /// The API server at `host`:`port`, with the token and CA in `dir`.
    pub fn service_account(dir: &Path, host: &str, port: &str) -> Result<Cluster, DeliveryError> {
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let server = Url::parse(&format!("https://{host}:{port}"))
            .map_err(|e| DeliveryError::Refused(format!("the API server's address: {e}")))?;
        let read = |name: &str| {
            std::fs::read(dir.join(name))
                .map_err(|e| DeliveryError::Refused(format!("{}: {e}", dir.join(name).display())))
        };
        let token = String::from_utf8(read("token")?)
            .map_err(|_| DeliveryError::Refused("the service account token is not text".into()))?;
        Ok(Cluster {
            server,
            bearer_token: token.trim().to_string(),
            ca_pem: Some(read("ca.crt")?),
        })
    }
}

impl Cluster {
    /// The cluster of a kubeconfig's current context, in JSON as
    /// `kubectl config view --minify --flatten -o json` prints it, with a
    /// bearer token (client certificates and exec plugins are not taken:
    /// the token is what a service account of the target cluster gives).
    pub fn from_kubeconfig(json: &[u8]) -> Result<Cluster, String> {
        let config: Value =
            serde_json::from_slice(json).map_err(|e| format!("the kubeconfig is not JSON: {e}"))?;
        let named = |list: &str, name: &str| -> Result<Value, String> {
            config[list]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == name))
                .cloned()
                .ok_or_else(|| format!("the kubeconfig has no {list} entry {name:?}"))
        };
        let current = config["current-context"]
            .as_str()
            .filter(|c| !c.is_empty())
            .ok_or("the kubeconfig names no current-context")?;
        let context = named("contexts", current)?;
        let cluster_name = context["context"]["cluster"].as_str().unwrap_or_default();
        let user_name = context["context"]["user"].as_str().unwrap_or_default();
        let cluster = named("clusters", cluster_name)?;
        let user = named("users", user_name)?;
        let server = cluster["cluster"]["server"]
            .as_str()
            .ok_or("the kubeconfig's cluster has no server")?;
        let server = Url::parse(server)
            .ok()
            .filter(|u| u.scheme() == "https" && u.host().is_some())
            .ok_or("the kubeconfig's server must be an https:// URL")?;
        let ca_pem = match cluster["cluster"]["certificate-authority-data"].as_str() {
            Some(data) => Some(
                BASE64
                    .decode(data)
                    .map_err(|_| "certificate-authority-data is not base64")?,
            ),
            None if cluster["cluster"].get("certificate-authority").is_some() => {
                return Err(
                    "certificate-authority names a file; flatten the kubeconfig (--flatten)".into(),
                )
            }
            None => None,
        };
        let token = user["user"]["token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or("the kubeconfig's user has no token (client certificates and exec plugins are not supported)")?;
        Ok(Cluster {
            server,
            bearer_token: token.to_string(),
            ca_pem,
        })
    }
}

/// What a TLS Secret holds: `tls.crt`, `tls.key` and, optionally, `ca.crt`.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsData {
    pub certificate_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsData")
            .field(
                "certificate_pem",
                &String::from_utf8_lossy(&self.certificate_pem),
            )
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsData {
    fn to_data(&self) -> Value {
        let mut data = BTreeMap::new();
        data.insert("tls.crt", BASE64.encode(&self.certificate_pem));
        data.insert("tls.key", BASE64.encode(&self.key_pem));
        if let Some(ca) = &self.ca_pem {
            data.insert("ca.crt", BASE64.encode(ca));
        }
        json!(data)
    }

    pub fn from_data(data: &Value) -> Option<TlsData> {
        let field = |name: &str| BASE64.decode(data.get(name)?.as_str()?).ok();
        Some(TlsData {
            certificate_pem: field("tls.crt")?,
            key_pem: field("tls.key")?,
            ca_pem: field("ca.crt"),
        })
    }
}

/// What a replace did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// What the Secret held before; `None` when it was created, or already
    /// held `data` (a retried delivery: its caller saves the previous data
    /// read on the first attempt, before writing).
    pub previous: Option<TlsData>,
    /// The Secret's `resourceVersion` after the write.
    pub resource_version: String,
}

/// Puts `data` into Secret `namespace/name`, creating it when absent.
pub async fn replace(
    policy: &EgressPolicy,
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    data: &TlsData,
    timeout: Duration,
) -> Result<Replaced, DeliveryError> {
    check_name("namespace", namespace)?;
    check_name("Secret name", name)?;
    let (collection, one) = urls(cluster, namespace, name)?;
    let client = pinned_client(policy, &one, timeout, cluster.ca_pem.as_deref()).await?;
    let auth = format!("Bearer {}", cluster.bearer_token);
    let mut last_conflict = String::new();
    for _ in 0..CONFLICT_ROUNDS {
        let found = client
            .get(one.clone())
            .header(http::header::AUTHORIZATION, &auth)
            .send()
            .await
            .map_err(|e| transport_failure("GET", &one, e))?;
        let (previous, write) = match found.status().as_u16() {
            404 => {
                let secret = json!({
                    "apiVersion": "v1",
                    "kind": "Secret",
                    "metadata": { "name": name, "namespace": namespace },
                    "type": "kubernetes.io/tls",
                    "data": data.to_data(),
                });
                (None, client.post(collection.clone()).json(&secret))
            }
            200 => {
                let mut secret = secret_of(found, "the Secret as read").await?;
                let kind = secret
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or("Opaque");
                if kind != "kubernetes.io/tls" {
                    return Err(DeliveryError::Refused(format!(
                        "Secret {namespace}/{name} has type {kind}; a Secret's type cannot change, \
                         so it is left alone"
                    )));
                }
                let previous = secret.get("data").and_then(TlsData::from_data);
                if previous.as_ref() == Some(data) {
                    // A retry whose first write landed: nothing to write,
                    // and what was there before is what the caller saved
                    // before that first write.
                    return Ok(Replaced {
                        previous: None,
                        resource_version: secret["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    });
                }
                secret["data"] = data.to_data();
                (previous, client.put(one.clone()).json(&secret))
            }
            _ => return Err(refusal(found).await),
        };
        let written = write
            .header(http::header::AUTHORIZATION, &auth)
            .send()
            .await
            .map_err(|e| transport_failure("write", &one, e))?;
        match written.status().as_u16() {
            200 | 201 => {
                let secret = secret_of(written, "the Secret as written").await?;
                let resource_version = secret["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                return Ok(Replaced {
                    previous,
                    resource_version,
                });
            }
            409 => last_conflict = body_start(written).await,
            _ => return Err(refusal(written).await),
        }
    }
    Err(DeliveryError::Transient(format!(
        "Secret {namespace}/{name} changed under every one of {CONFLICT_ROUNDS} writes: {}",
        last_conflict.chars().take(200).collect::<String>()
    )))
}

/// What Secret `namespace/name` holds now, `None` when it does not exist.
pub async fn read(
    policy: &EgressPolicy,
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<Option<TlsData>, DeliveryError> {
    check_name("namespace", namespace)?;
    check_name("Secret name", name)?;
    let (_, one) = urls(cluster, namespace, name)?;
    let client = pinned_client(policy, &one, timeout, cluster.ca_pem.as_deref()).await?;
    let found = client
        .get(one.clone())
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", cluster.bearer_token),
        )
        .send()
        .await
        .map_err(|e| transport_failure("GET", &one, e))?;
    match found.status().as_u16() {
        404 => Ok(None),
        200 => {
            let secret = secret_of(found, "the Secret as read").await?;
            Ok(secret.get("data").and_then(TlsData::from_data))
        }
        _ => Err(refusal(found).await),
    }
}

/// The Secrets of `namespace`, and Secret `name` in it.
fn urls(cluster: &Cluster, namespace: &str, name: &str) -> Result<(Url, Url), DeliveryError> {
    // The server may have a path (Rancher: https://r/k8s/clusters/c-1);
    // join would drop its last segment without a trailing slash.
    let mut base = cluster.server.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let collection = base
        .join(&format!("api/v1/namespaces/{namespace}/secrets"))
        .map_err(|e| DeliveryError::Refused(format!("the API server's URL: {e}")))?;
    let one = Url::parse(&format!("{collection}/{name}")).expect("a URL plus a checked name");
    Ok((collection, one))
}

/// A DNS-1123 label or subdomain, as Kubernetes names are: nothing that
/// could change the request's path (checked where the path is built).
pub fn check_name(what: &str, name: &str) -> Result<(), DeliveryError> {
    match crate::domain::target_settings::kubernetes_name_problem(name) {
        None => Ok(()),
        Some(problem) => Err(DeliveryError::Refused(format!("{what} {problem}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_account_is_read_from_its_mount() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc\n").unwrap();
        std::fs::write(dir.path().join("ca.crt"), "pem").unwrap();
        let c = Cluster::service_account(dir.path(), "10.96.0.1", "443").unwrap();
        assert_eq!(c.server.as_str(), "https://10.96.0.1/");
        assert_eq!(c.bearer_token, "abc");
        assert_eq!(c.ca_pem.as_deref(), Some(&b"pem"[..]));
        assert!(
            !format!("{c:?}").contains("abc"),
            "the token is never printed"
        );
        let v6 = Cluster::service_account(dir.path(), "fd00::1", "6443").unwrap();
        assert_eq!(v6.server.as_str(), "https://[fd00::1]:6443/");
        std::fs::remove_file(dir.path().join("token")).unwrap();
        assert!(Cluster::service_account(dir.path(), "10.96.0.1", "443").is_err());
    }

    fn kubeconfig(cluster: Value, user: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "current-context": "prod",
            "contexts": [
                { "name": "dev", "context": { "cluster": "dev", "user": "dev" } },
                { "name": "prod", "context": { "cluster": "prod", "user": "deployer" } },
            ],
            "clusters": [{ "name": "prod", "cluster": cluster }],
            "users": [{ "name": "deployer", "user": user }],
        }))
        .unwrap()
    }

    #[test]
    fn a_kubeconfig_gives_its_current_context_and_refuses_what_it_cannot_use() {
        let ca = BASE64.encode("CA PEM");
        let cluster = Cluster::from_kubeconfig(&kubeconfig(
            json!({ "server": "https://k8s.example.test:6443", "certificate-authority-data": ca }),
            json!({ "token": "t0ken" }),
        ))
        .unwrap();
        assert_eq!(cluster.server.as_str(), "https://k8s.example.test:6443/");
        assert_eq!(cluster.bearer_token, "t0ken");
        assert_eq!(cluster.ca_pem.as_deref(), Some(b"CA PEM".as_slice()));
        assert!(!format!("{cluster:?}").contains("t0ken"));

        let refused = |cluster: Value, user: Value| {
            Cluster::from_kubeconfig(&kubeconfig(cluster, user)).unwrap_err()
        };
        let server = json!({ "server": "https://k8s.example.test" });
        let e = refused(server.clone(), json!({ "client-certificate-data": "x" }));
        assert!(e.contains("no token"), "{e}");
        let e = refused(
            json!({ "server": "http://k8s.example.test" }),
            json!({ "token": "t" }),
        );
        assert!(e.contains("https://"), "{e}");
        let e = refused(
            json!({ "server": "https://k8s.example.test", "certificate-authority": "/etc/ca.crt" }),
            json!({ "token": "t" }),
        );
        assert!(e.contains("--flatten"), "{e}");
        let e = Cluster::from_kubeconfig(b"apiVersion: v1").unwrap_err();
        assert!(e.contains("not JSON"), "{e}");
        let e = Cluster::from_kubeconfig(br#"{"current-context":"x","contexts":[]}"#).unwrap_err();
        assert!(e.contains("no contexts entry \"x\""), "{e}");
    }
}
