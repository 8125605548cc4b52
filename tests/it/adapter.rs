//! The metrics adapter for real on loopback: `certautopilot metrics-adapter`
//! serving `external.metrics.k8s.io/v1beta1` over TLS to a client that
//! presents a certificate from a test request-header CA, as the Kubernetes
//! aggregator does; its values against the jobs in the database, filtered
//! through `labelSelector`; everyone else refused; and the same answers read
//! with `kubectl get --raw` when kubectl is at hand.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mongodb::bson::doc;
use serde_json::{json, Value};

use crate::support::cluster::Cluster;
use crate::support::pebble::PebbleOptions;
use crate::support::{documents, free_addr, Proc, TestDb};
use certautopilot::queue::jobs::{JobQueue, NewJob};

const BASE: &str = "/apis/external.metrics.k8s.io/v1beta1";
const METRIC: &str =
    "/apis/external.metrics.k8s.io/v1beta1/namespaces/certautopilot/certautopilot_queue_depth";
/// Who the aggregator says it acts for (the HPA controller).
const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";

/// A certificate and its key, as PEM files.
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

/// The test's certificates: the adapter's serving certificate (from a CA
/// the clients trust), the request-header CA and client certificates from
/// it, and a client certificate from a CA the adapter does not trust.
struct Pki {
    dir: tempfile::TempDir,
    serving_ca: PathBuf,
    serving: Pair,
    request_header_ca: PathBuf,
    front_proxy: Pair,
    wrong_name: Pair,
    untrusted: Pair,
}

/// A CA: what signs with it, and its certificate in PEM.
fn ca(name: &str) -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    (rcgen::Issuer::new(params, key), pem)
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let leaf = |name: &str,
                    cn: &str,
                    sans: Vec<String>,
                    usage: rcgen::ExtendedKeyUsagePurpose,
                    by: &rcgen::Issuer<'static, rcgen::KeyPair>| {
            let mut params = rcgen::CertificateParams::new(sans).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
            params.extended_key_usages = vec![usage];
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, by).unwrap();
            Pair {
                cert: write(&format!("{name}.crt"), &cert.pem()),
                key: write(&format!("{name}.key"), &key.serialize_pem()),
            }
        };
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let (serving_ca, serving_ca_pem) = ca("test serving CA");
        let (request_header_ca, request_header_ca_pem) = ca("test request-header CA");
        let (rogue_ca, _) = ca("a CA the adapter does not trust");
        let serving = leaf(
            "serving",
            "certautopilot-metrics-adapter",
            vec!["127.0.0.1".into(), "localhost".into()],
            ServerAuth,
            &serving_ca,
        );
        let front_proxy = leaf(
            "front-proxy",
            "front-proxy-client",
            vec![],
            ClientAuth,
            &request_header_ca,
        );
        let wrong_name = leaf(
            "wrong-name",
            "someone-else",
            vec![],
            ClientAuth,
            &request_header_ca,
        );
        let untrusted = leaf(
            "untrusted",
            "front-proxy-client",
            vec![],
            ClientAuth,
            &rogue_ca,
        );
        Pki {
            serving_ca: write("serving-ca.crt", &serving_ca_pem),
            request_header_ca: write("request-header-ca.crt", &request_header_ca_pem),
            serving,
            front_proxy,
            wrong_name,
            untrusted,
            dir,
        }
    }

    /// An HTTPS client trusting the serving CA, presenting `identity`.
    fn client(&self, identity: Option<&Pair>) -> reqwest::Client {
        let ca = std::fs::read(&self.serving_ca).unwrap();
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(10));
        if let Some(pair) = identity {
            let mut pem = std::fs::read(&pair.cert).unwrap();
            pem.extend(std::fs::read(&pair.key).unwrap());
            builder = builder.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        builder.build().unwrap()
    }
}

/// A `metrics-adapter` on loopback; returns it and its `https://` base.
async fn start_adapter(db: &TestDb, pki: &Pki, id: &str) -> (Proc, String) {
    let addr = free_addr().to_string();
    let p = Proc::start(
        "metrics-adapter",
        db,
        id,
        &[
            ("CAP_ADAPTER_ADDR", &addr),
            ("CAP_ADAPTER_TLS_CERT", pki.serving.cert.to_str().unwrap()),
            ("CAP_ADAPTER_TLS_KEY", pki.serving.key.to_str().unwrap()),
            (
                "CAP_ADAPTER_CLIENT_CA",
                pki.request_header_ca.to_str().unwrap(),
            ),
        ],
    );
    p.wait_alive().await;
    (p, format!("https://{addr}"))
}

/// GET `path` as the aggregator would: its client certificate and the user
/// it forwards. Returns the status and the JSON body.
async fn get(client: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let r = client
        .get(format!("{base}{path}"))
        .header("X-Remote-User", HPA_USER)
        .header("X-Remote-Group", "system:serviceaccounts")
        .header("X-Remote-Group", "system:authenticated")
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:?}"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, body)
}

fn selector_path(selector: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(selector.as_bytes()).collect();
    format!("{METRIC}?labelSelector={encoded}")
}

/// (kind, state) → value, from an `ExternalMetricValueList`.
fn values(list: &Value) -> Vec<(String, String, i64)> {
    assert_eq!(list["kind"], "ExternalMetricValueList", "{list}");
    assert_eq!(
        list["apiVersion"], "external.metrics.k8s.io/v1beta1",
        "{list}"
    );
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {list}"))
        .iter()
        .map(|item| {
            assert_eq!(item["metricName"], "certautopilot_queue_depth", "{item}");
            let t = item["timestamp"].as_str().unwrap();
            assert!(
                t.len() >= 20 && t.as_bytes()[10] == b'T' && t.ends_with('Z'),
                "an RFC 3339 timestamp: {t}"
            );
            let value = item["value"]
                .as_str()
                .unwrap_or_else(|| panic!("a quantity string: {item}"));
            (
                item["metricLabels"]["kind"].as_str().unwrap().to_string(),
                item["metricLabels"]["state"].as_str().unwrap().to_string(),
                value
                    .parse()
                    .unwrap_or_else(|_| panic!("a whole quantity: {value}")),
            )
        })
        .collect()
}

fn total(values: &[(String, String, i64)]) -> i64 {
    values.iter().map(|(_, _, n)| n).sum()
}

/// Jobs in the database of `kind` (any when None) in one of `states`.
async fn jobs_in_db(db: &TestDb, kind: Option<&str>, states: &[&str]) -> i64 {
    let mut filter = doc! { "state": { "$in": states } };
    if let Some(kind) = kind {
        filter.insert("kind", kind);
    }
    documents(&db.store().await, "jobs", filter).await.len() as i64
}

fn assert_status(body: &Value, code: u16, reason: &str) {
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// Queued, running and dead jobs of three kinds, with no worker running:
/// 2 probes queued and 1 running, 1 refresh-ari dead, 1 housekeeping queued.
async fn enqueue_mixed(db: &TestDb) {
    let queue = JobQueue::new(db.store().await);
    for key in ["p1", "p2", "p3"] {
        queue
            .enqueue(&NewJob::new("probe", key, doc! {}))
            .await
            .unwrap();
    }
    let claimed = queue
        .claim(
            "test-holder",
            &["probe".into()],
            1,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let mut doomed = NewJob::new("refresh-ari", "r1", doc! {});
    doomed.max_attempts = 1;
    queue.enqueue(&doomed).await.unwrap();
    let claimed = queue
        .claim(
            "test-holder",
            &["refresh-ari".into()],
            1,
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    queue.fail(&claimed[0], "given up", true).await.unwrap();
    queue
        .enqueue(&NewJob::new("housekeeping", "h1", doc! {}))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_value_is_the_queued_jobs_in_the_database_filtered_by_kind_and_state() {
    // Certificates declared through the API with no worker running: each
    // queues an issue-certificate job that nobody claims.
    let cluster = Cluster::builder("adapter_depth")
        .pebble(PebbleOptions::default())
        .start()
        .await;
    let (p, issuer) = cluster
        .api
        .project_with_issuer("depth", cluster.pebble())
        .await;
    cluster.api.grant(&p, &["depth.example.test"]).await;
    for i in 0..3 {
        let (status, body) = cluster
            .api
            .post(
                &format!("/projects/{p}/certificates"),
                json!({ "name": format!("site-{i}"), "dns_names": [format!("s{i}.depth.example.test")], "issuer_id": issuer }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    enqueue_mixed(&cluster.db).await;
    let db = &cluster.db;
    assert_eq!(
        jobs_in_db(db, Some("issue-certificate"), &["queued"]).await,
        3
    );

    let pki = Pki::new();
    let (adapter, base) = start_adapter(db, &pki, "adapter-depth").await;
    let client = pki.client(Some(&pki.front_proxy));
    // The api's gauge of the oldest runnable queued job: nobody claims, so
    // it keeps waiting.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let waited = crate::support::wait_until(std::time::Duration::from_secs(15), || async {
        cluster.apis[0]
            .metric("certautopilot_queue_oldest_queued_seconds", "")
            .await
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert!(waited, "the oldest queued job's wait is reported");
    // In the fleet registry, as every process is.
    let store = db.store().await;
    let registered = crate::support::wait_until(std::time::Duration::from_secs(10), || async {
        certautopilot::store::fleet::live(&store)
            .await
            .unwrap()
            .iter()
            .any(|i| i.instance_id == "adapter-depth" && i.roles == ["metrics-adapter"])
    })
    .await;
    assert!(registered, "the adapter is in the fleet registry");

    // Discovery.
    let (status, list) = get(&client, &base, BASE).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list,
        json!({
            "kind": "APIResourceList", "apiVersion": "v1",
            "groupVersion": "external.metrics.k8s.io/v1beta1",
            "resources": [{
                "name": "certautopilot_queue_depth", "singularName": "", "namespaced": true,
                "kind": "ExternalMetricValueList", "verbs": ["get"],
            }],
        })
    );

    // What the chart's HPA asks for: every kind, queued.
    let (status, list) = get(&client, &base, &selector_path("state=queued")).await;
    assert_eq!(status, 200, "{list}");
    let queued = values(&list);
    assert_eq!(
        queued.len(),
        certautopilot::domain::jobs::JobKind::ALL.len(),
        "every kind, with 0 when empty: {list}"
    );
    assert!(queued.iter().all(|(_, s, _)| s == "queued"), "{list}");
    assert_eq!(total(&queued), jobs_in_db(db, None, &["queued"]).await);
    assert_eq!(total(&queued), 3 + 2 + 1);

    // One kind and state.
    for (kind, state) in [
        ("issue-certificate", "queued"),
        ("probe", "queued"),
        ("probe", "running"),
        ("refresh-ari", "dead"),
        ("scan-drift", "queued"),
    ] {
        for selector in [
            format!("kind={kind},state={state}"),
            format!("kind == {kind} , state in ({state})"),
        ] {
            let (status, list) = get(&client, &base, &selector_path(&selector)).await;
            assert_eq!(status, 200, "{list}");
            let got = values(&list);
            assert_eq!(got.len(), 1, "{selector}: {list}");
            assert_eq!(
                got[0].2,
                jobs_in_db(db, Some(kind), &[state]).await,
                "{selector}: {list}"
            );
        }
    }
    let (_, list) = get(
        &client,
        &base,
        &selector_path("kind=issue-certificate,state=queued"),
    )
    .await;
    assert_eq!(list["items"][0]["value"], "3", "a quantity string: {list}");

    // Inequality and set-based requirements.
    let (_, list) = get(
        &client,
        &base,
        &selector_path("state!=queued,kind in (probe, refresh-ari)"),
    )
    .await;
    let mut got = values(&list);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("probe".into(), "dead".into(), 0),
            ("probe".into(), "running".into(), 1),
            ("refresh-ari".into(), "dead".into(), 1),
            ("refresh-ari".into(), "running".into(), 0),
        ]
    );
    let (_, list) = get(
        &client,
        &base,
        &selector_path("state notin (queued,running)"),
    )
    .await;
    let dead = values(&list);
    assert_eq!(dead.len(), certautopilot::domain::jobs::JobKind::ALL.len());
    assert_eq!(total(&dead), jobs_in_db(db, None, &["dead"]).await);
    // No selector: everything but finished jobs; a label the items lack
    // matches nothing.
    let (_, list) = get(&client, &base, METRIC).await;
    let all = values(&list);
    assert_eq!(
        all.len(),
        3 * certautopilot::domain::jobs::JobKind::ALL.len()
    );
    assert_eq!(
        total(&all),
        jobs_in_db(db, None, &["queued", "running", "dead"]).await
    );
    let (_, list) = get(&client, &base, &selector_path("zone=a")).await;
    assert_eq!(values(&list), vec![]);

    // The same count the Prometheus gauge reports, on the plain listener.
    let gauge = adapter
        .metric(
            "certautopilot_queue_depth",
            r#"kind="issue-certificate",state="queued""#,
        )
        .await;
    assert_eq!(gauge, Some(3.0));

    // A declared certificate more shows at once (nothing is cached).
    let (status, body) = cluster
        .api
        .post(
            &format!("/projects/{p}/certificates"),
            json!({ "name": "site-3", "dns_names": ["s3.depth.example.test"], "issuer_id": issuer }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, list) = get(
        &client,
        &base,
        &selector_path("kind=issue-certificate,state=queued"),
    )
    .await;
    assert_eq!(values(&list)[0].2, 4);

    // The user the aggregator forwards is logged.
    let lines = adapter.log_lines_with(&["metrics request", HPA_USER, "front-proxy-client"]);
    assert!(!lines.is_empty(), "{}", adapter.log_text());
    assert!(lines[0].contains("system:authenticated"), "{}", lines[0]);
}

#[tokio::test]
async fn anyone_but_the_front_proxy_is_refused_and_bad_requests_get_a_status() {
    let db = TestDb::migrated("adapter_auth").await;
    let pki = Pki::new();
    let (mut adapter, base) = start_adapter(&db, &pki, "adapter-auth").await;
    let queued = selector_path("state=queued");

    for path in [BASE, queued.as_str(), "/apis", "/nothing/here"] {
        let (status, body) = get(&pki.client(None), &base, path).await;
        assert_eq!(status, 401, "no client certificate, {path}: {body}");
        assert_status(&body, 401, "Unauthorized");

        let (status, body) = get(&pki.client(Some(&pki.untrusted)), &base, path).await;
        assert_eq!(status, 401, "a CA it does not trust, {path}: {body}");
        assert_status(&body, 401, "Unauthorized");
        assert!(
            body["message"].as_str().unwrap().contains("not trusted"),
            "{body}"
        );

        let (status, body) = get(&pki.client(Some(&pki.wrong_name)), &base, path).await;
        assert_eq!(status, 403, "a wrong common name, {path}: {body}");
        assert_status(&body, 403, "Forbidden");
        assert!(
            body["message"].as_str().unwrap().contains("someone-else"),
            "{body}"
        );
    }
    assert!(
        !adapter
            .log_lines_with(&["metrics request refused", "not an allowed name"])
            .is_empty(),
        "{}",
        adapter.log_text()
    );

    let client = pki.client(Some(&pki.front_proxy));
    let (status, _) = get(&client, &base, &queued).await;
    assert_eq!(status, 200);
    for bad in [
        "state=",
        "state==queued,",
        "state in (queued",
        "state in ()",
        "state gt 3",
        "=queued",
        "state=a/b",
    ] {
        let (status, body) = get(&client, &base, &selector_path(bad)).await;
        if bad == "state=" {
            // Valid: the label equals "" (and none does).
            assert_eq!(status, 200, "{body}");
            assert_eq!(values(&body), vec![]);
            continue;
        }
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_status(&body, 400, "BadRequest");
        assert!(
            body["message"].as_str().unwrap().contains("labelSelector"),
            "{body}"
        );
    }
    let (status, body) = get(
        &client,
        &base,
        &format!("{BASE}/namespaces/default/certautopilot_queue_age"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_status(&body, 404, "NotFound");
    let (status, body) = get(&client, &base, "/apis").await;
    assert_eq!(status, 404, "{body}");
    assert_status(&body, 404, "NotFound");
    let r = client.post(format!("{base}{BASE}")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_status(&r.json().await.unwrap(), 405, "MethodNotAllowed");

    // Probes need no certificate: they are on the plain listener.
    let r = reqwest::get(adapter.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // SIGTERM: drained and gone, exit 0.
    adapter.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        adapter.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        adapter.log_text()
    );
}

#[tokio::test]
async fn bad_settings_stop_it_at_start_naming_the_variable() {
    let db = TestDb::migrated("adapter_settings").await;
    let pki = Pki::new();
    let garbage = pki.dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let (cert, key, ca) = (
        pki.serving.cert.to_str().unwrap(),
        pki.serving.key.to_str().unwrap(),
        pki.request_header_ca.to_str().unwrap(),
    );
    let other_key = pki.front_proxy.key.to_str().unwrap();
    let garbage = garbage.to_str().unwrap();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("CAP_ADAPTER_TLS_KEY", key), ("CAP_ADAPTER_CLIENT_CA", ca)],
            "CAP_ADAPTER_TLS_CERT is not set",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_CLIENT_CA", ca),
            ],
            "CAP_ADAPTER_TLS_KEY is not set",
        ),
        (
            vec![("CAP_ADAPTER_TLS_CERT", cert), ("CAP_ADAPTER_TLS_KEY", key)],
            "CAP_ADAPTER_CLIENT_CA is not set",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", garbage),
                ("CAP_ADAPTER_TLS_KEY", key),
                ("CAP_ADAPTER_CLIENT_CA", ca),
            ],
            "invalid CAP_ADAPTER_TLS_CERT",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_TLS_KEY", cert),
                ("CAP_ADAPTER_CLIENT_CA", ca),
            ],
            "invalid CAP_ADAPTER_TLS_KEY",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_TLS_KEY", other_key),
                ("CAP_ADAPTER_CLIENT_CA", ca),
            ],
            "CAP_ADAPTER_TLS_KEY does not go with CAP_ADAPTER_TLS_CERT",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_TLS_KEY", key),
                ("CAP_ADAPTER_CLIENT_CA", "/nonexistent/ca.pem"),
            ],
            "invalid CAP_ADAPTER_CLIENT_CA",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_TLS_KEY", key),
                ("CAP_ADAPTER_CLIENT_CA", garbage),
            ],
            "invalid CAP_ADAPTER_CLIENT_CA",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_TLS_KEY", key),
                ("CAP_ADAPTER_CLIENT_CA", ca),
                ("CAP_ADAPTER_ADDR", "localhost:6443"),
            ],
            "invalid CAP_ADAPTER_ADDR",
        ),
        (
            vec![
                ("CAP_ADAPTER_TLS_CERT", cert),
                ("CAP_ADAPTER_TLS_KEY", key),
                ("CAP_ADAPTER_CLIENT_CA", ca),
                ("CAP_ADAPTER_ALLOWED_NAMES", " , "),
            ],
            "CAP_ADAPTER_ALLOWED_NAMES names no common name",
        ),
    ];
    for (env, expected) in cases {
        let mut p = Proc::start("metrics-adapter", &db, "adapter-settings", &env);
        let code = p.wait_exit(Duration::from_secs(60)).await;
        assert_eq!(code, Some(2), "{expected}: {}", p.log_text());
        assert!(
            p.log_text().contains(expected),
            "{expected}: {}",
            p.log_text()
        );
    }

    // A CN other than the default is let in only when named.
    let addr = free_addr().to_string();
    let p = Proc::start(
        "metrics-adapter",
        &db,
        "adapter-names",
        &[
            ("CAP_ADAPTER_ADDR", &addr),
            ("CAP_ADAPTER_TLS_CERT", cert),
            ("CAP_ADAPTER_TLS_KEY", key),
            ("CAP_ADAPTER_CLIENT_CA", ca),
            ("CAP_ADAPTER_ALLOWED_NAMES", "aggregator, someone-else"),
        ],
    );
    p.wait_alive().await;
    let base = format!("https://{addr}");
    let (status, body) = get(&pki.client(Some(&pki.wrong_name)), &base, BASE).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&pki.client(Some(&pki.front_proxy)), &base, BASE).await;
    assert_eq!(status, 403, "{body}");
}

/// kubectl, from the repository's tools (scripts/setup.sh) or the PATH.
fn kubectl() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    if local.is_file() {
        return Some(local);
    }
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("kubectl"))
                .find(|p| p.is_file())
        })
        .unwrap_or_default()
}

/// `kubectl get --raw PATH` with a kubeconfig presenting `identity`; the
/// exit status, stdout and stderr.
fn kubectl_raw(
    kubectl: &Path,
    pki: &Pki,
    base: &str,
    identity: &Pair,
    path: &str,
) -> (bool, String, String) {
    let home = pki.dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = pki.dir.path().join(format!(
        "kubeconfig-{}",
        identity.cert.file_stem().unwrap().to_string_lossy()
    ));
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: adapter\n  cluster:\n    server: {base}\n    certificate-authority: {ca}\nusers:\n- name: aggregator\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: adapter\n  context:\n    cluster: adapter\n    user: aggregator\ncurrent-context: adapter\n",
        ca = pki.serving_ca.display(),
        cert = identity.cert.display(),
        key = identity.key.display(),
    );
    std::fs::write(&config, text).unwrap();
    let out = Command::new(kubectl)
        .args([
            "--kubeconfig",
            config.to_str().unwrap(),
            "get",
            "--raw",
            path,
        ])
        .env("HOME", &home)
        .env("KUBECACHEDIR", home.join("cache"))
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn kubectl_get_raw_reads_discovery_and_the_metric() {
    let Some(kubectl) = kubectl() else {
        eprintln!("SKIPPED: kubectl is neither at .tools/bin/kubectl nor on PATH (scripts/setup.sh installs it)");
        return;
    };
    let db = TestDb::migrated("adapter_kubectl").await;
    enqueue_mixed(&db).await;
    let pki = Pki::new();
    let (adapter, base) = start_adapter(&db, &pki, "adapter-kubectl").await;

    // kubectl has no flag for a request header, so it cannot send
    // X-Remote-User as the aggregator does; the reqwest tests above do.
    let (ok, out, err) = kubectl_raw(&kubectl, &pki, &base, &pki.front_proxy, BASE);
    assert!(ok, "kubectl get --raw {BASE}: {err}");
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["kind"], "APIResourceList", "{list}");
    assert_eq!(
        list["resources"][0]["name"], "certautopilot_queue_depth",
        "{list}"
    );

    let path = selector_path("kind=probe,state in (queued,running)");
    let (ok, out, err) = kubectl_raw(&kubectl, &pki, &base, &pki.front_proxy, &path);
    assert!(ok, "kubectl get --raw {path}: {err}");
    let mut got = values(&serde_json::from_str(&out).unwrap());
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "probe".into(),
                "queued".into(),
                jobs_in_db(&db, Some("probe"), &["queued"]).await
            ),
            (
                "probe".into(),
                "running".into(),
                jobs_in_db(&db, Some("probe"), &["running"]).await
            )
        ]
    );
    assert_eq!(got[0].2, 2);

    let (ok, _, err) = kubectl_raw(&kubectl, &pki, &base, &pki.wrong_name, BASE);
    assert!(
        !ok && err.contains("Forbidden"),
        "a wrong common name: {err}"
    );
    let (ok, _, err) = kubectl_raw(&kubectl, &pki, &base, &pki.untrusted, BASE);
    assert!(
        // kubectl's words for a 401.
        !ok && err.contains("You must be logged in") && err.contains("not trusted"),
        "a CA it does not trust: {err}"
    );
    let (ok, _, err) = kubectl_raw(
        &kubectl,
        &pki,
        &base,
        &pki.front_proxy,
        &selector_path("state in (queued"),
    );
    assert!(
        !ok && (err.contains("BadRequest") || err.contains("labelSelector")),
        "{err}"
    );
    drop(adapter);
}
