//! The Helm chart `deploy/helm/certautopilot`, checked with the real tools
//! that `scripts/setup.sh` puts under `.tools/`: Helm v4 (`helm lint
//! --strict`, `helm template` for Kubernetes 1.29 to 1.33) and
//! `kubernetes-validate --strict` against its bundled schemas of the same
//! versions; then assertions on the rendered objects, parsed as JSON (PyYAML
//! from the same venv turns the YAML stream into JSON). No kube-apiserver
//! runs here: `lookup` finds nothing, so what depends on a live cluster (the
//! APIService ownership check, the kept serving certificate) renders its
//! no-cluster branch.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const KUBE_VERSIONS: [&str; 5] = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"];
/// Kinds of CRDs kubernetes-validate has no schema for (it warns and skips
/// them); any other kind without a schema fails the test.
const CRD_KINDS: [&str; 6] = [
    "ServiceMonitor",
    "PrometheusRule",
    "ScaledObject",
    "TriggerAuthentication",
    "Certificate",
    "Issuer",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("deploy/helm/certautopilot")
}

fn tool(rel: &str) -> PathBuf {
    let path = root().join(".tools").join(rel);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup.sh",
        path.display()
    );
    path
}

/// The value files every render check runs over: the least a render needs
/// (the chart's defaults plus a URI and a key ring) and each example.
fn value_files() -> Vec<PathBuf> {
    let mut files = vec![chart().join("ci/minimal-values.yaml")];
    let mut examples: Vec<PathBuf> = std::fs::read_dir(chart().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 3,
        "the three-zone, KEDA and PKCS#11 examples"
    );
    files.extend(examples);
    files
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` with the given arguments: the YAML stream, or Helm's error.
fn template(args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new(tool("bin/helm"));
    cmd.args([
        "template",
        "rel",
        chart().to_str().unwrap(),
        "--namespace",
        "cap",
    ])
    .args(args);
    let (ok, out, err) = run(&mut cmd, None);
    if ok {
        Ok(out)
    } else {
        Err(err)
    }
}

fn with_values(file: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["-f", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    objects(&template(&args).unwrap_or_else(|e| panic!("helm template failed: {e}")))
}

fn minimal(extra: &[&str]) -> Vec<Value> {
    with_values(&chart().join("ci/minimal-values.yaml"), extra)
}

fn example(name: &str) -> Vec<Value> {
    with_values(&chart().join("examples").join(name), &[])
}

const PARSE_YAML: &str = r#"
import sys, json, yaml
class Strict(yaml.SafeLoader):
    pass
def mapping(loader, node):
    keys = [loader.construct_object(k, deep=True) for k, _ in node.value]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise SystemExit("duplicate keys %s at %s" % (sorted(map(str, dup)), node.start_mark))
    return loader.construct_mapping(node, deep=True)
Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
print(json.dumps([d for d in yaml.load_all(sys.stdin, Loader=Strict) if d]))
"#;

/// The rendered YAML stream as JSON objects (empty documents dropped).
fn objects(yaml: &str) -> Vec<Value> {
    let mut cmd = Command::new(tool("venv/bin/python"));
    // Duplicate keys fail: PyYAML would keep the last silently, and a
    // document glued onto another by a template's whitespace trimming shows
    // up as just that.
    cmd.args(["-c", PARSE_YAML]);
    let (ok, out, err) = run(&mut cmd, Some(yaml));
    assert!(ok, "the rendered chart is not YAML: {err}");
    serde_json::from_str::<Vec<Value>>(&out).unwrap()
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = objs
                .iter()
                .map(|o| format!("{}/{}", o["kind"], o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name}; rendered: {have:?}")
        })
}

fn kinds(objs: &[Value]) -> BTreeSet<String> {
    objs.iter()
        .map(|o| o["kind"].as_str().unwrap().to_string())
        .collect()
}

fn deployment<'a>(objs: &'a [Value], component: &str) -> &'a Value {
    find(
        objs,
        "Deployment",
        &format!("rel-certautopilot-{component}"),
    )
}

fn pod_spec(d: &Value) -> &Value {
    &d["spec"]["template"]["spec"]
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
}

const WORKLOADS: [&str; 4] = ["api", "worker", "scheduler", "metrics-adapter"];

#[test]
fn helm_lint_strict_passes_for_the_defaults_and_every_example() {
    let mut files = vec![None];
    files.extend(value_files().into_iter().map(Some));
    for file in files {
        let mut cmd = Command::new(tool("bin/helm"));
        cmd.args(["lint", "--strict", chart().to_str().unwrap()]);
        if let Some(f) = &file {
            cmd.args(["-f", f.to_str().unwrap()]);
        }
        let (ok, out, err) = run(&mut cmd, None);
        assert!(ok, "helm lint --strict with {file:?} failed:\n{out}{err}");
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

/// One `kubernetes-validate --strict` run over a rendered stream: every
/// object passes, and only the named CRD kinds are skipped.
fn validate(yaml: &str, version: &str, what: &str) {
    let expected = objects(yaml);
    let mut cmd = Command::new(tool("venv/bin/kubernetes-validate"));
    cmd.args(["--strict", "-k", version, "-"]);
    let (ok, out, err) = run(&mut cmd, Some(yaml));
    assert!(ok, "{what} on {version} does not validate:\n{out}{err}");
    let mut passed = 0;
    let mut skipped = 0;
    for line in out.lines() {
        if line.starts_with("INFO") && line.contains(" passed for resource ") {
            passed += 1;
        } else if line.starts_with("WARN") {
            assert!(
                CRD_KINDS
                    .iter()
                    .any(|k| line.contains(&format!("for kind {k} with"))),
                "{what} on {version}: a kind without a schema that is not a known CRD: {line}"
            );
            skipped += 1;
        } else {
            panic!("{what} on {version}: unexpected output: {line}");
        }
    }
    let crds = expected
        .iter()
        .filter(|o| CRD_KINDS.contains(&o["kind"].as_str().unwrap()))
        .count();
    assert_eq!(skipped, crds, "{what} on {version}: skipped only the CRDs");
    assert_eq!(
        passed,
        expected.len() - crds,
        "{what} on {version}: every other object validated"
    );
}

#[test]
fn every_values_file_renders_and_validates_on_kubernetes_1_29_to_1_33() {
    let mut sets: Vec<(String, Vec<String>)> = value_files()
        .iter()
        .map(|f| {
            (
                f.display().to_string(),
                vec!["-f".into(), f.display().to_string()],
            )
        })
        .collect();
    // The optional parts the examples leave off.
    let min = chart().join("ci/minimal-values.yaml").display().to_string();
    sets.push((
        "minimal + monitoring, cert-manager, ingress, API TLS".into(),
        [
            "-f",
            &min,
            "--set",
            "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
            "--set",
            "metricsAdapter.certManager.enabled=true,api.tls.enabled=true,api.tls.secretName=api-tls",
            "--set",
            "api.ingress.enabled=true,api.ingress.hosts[0].host=cap.example.com,api.ingress.hosts[0].paths[0]=/",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ));
    sets.push((
        "minimal + autoscaling none".into(),
        ["-f", &min, "--set", "autoscaling.mode=none"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    ));
    for (what, args) in &sets {
        for version in KUBE_VERSIONS {
            let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
            a.extend(["--kube-version", version]);
            let yaml = template(&a).unwrap_or_else(|e| panic!("{what} on {version}: {e}"));
            validate(&yaml, version, what);
        }
    }
}

#[test]
fn the_validator_fails_a_broken_manifest() {
    // Without this, a validator that passed everything would pass the test above.
    let yaml = template(&[
        "-f",
        chart().join("ci/minimal-values.yaml").to_str().unwrap(),
    ])
    .unwrap()
    .replacen(
        "maxUnavailable: 1",
        "maxUnavailable: 1\n  maxUnavailabel: 1",
        1,
    );
    let mut cmd = Command::new(tool("venv/bin/kubernetes-validate"));
    cmd.args(["--strict", "--quiet", "-k", "1.29.0", "-"]);
    let (ok, out, _) = run(&mut cmd, Some(&yaml));
    assert!(!ok, "an unknown field passed strict validation: {out}");
    assert!(out.contains("maxUnavailabel"), "{out}");
}

#[test]
fn each_workload_has_a_pdb_allowing_one_down_and_its_replicas() {
    let objs = minimal(&[]);
    for w in WORKLOADS {
        let pdb = find(
            &objs,
            "PodDisruptionBudget",
            &format!("rel-certautopilot-{w}"),
        );
        assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{w}");
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"],
            w
        );
    }
    let api = deployment(&objs, "api");
    assert_eq!(api["spec"]["replicas"], 3);
    assert_eq!(
        api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(deployment(&objs, "scheduler")["spec"]["replicas"], 2);
    assert_eq!(deployment(&objs, "metrics-adapter")["spec"]["replicas"], 2);
    // The HPA owns the worker count: no replicas to fight it on upgrade.
    assert!(deployment(&objs, "worker")["spec"]
        .get("replicas")
        .is_none());
    let none = minimal(&[
        "--set",
        "autoscaling.mode=none",
        "--set",
        "worker.replicas=5",
    ]);
    assert_eq!(deployment(&none, "worker")["spec"]["replicas"], 5);
    assert!(!kinds(&none).contains("HorizontalPodAutoscaler"));
}

#[test]
fn the_migration_job_and_what_it_needs_are_pre_install_pre_upgrade_hooks() {
    let objs = minimal(&[]);
    let hook = |o: &Value| -> (String, i64) {
        let a = &o["metadata"]["annotations"];
        (
            a["helm.sh/hook"].as_str().unwrap_or("").to_string(),
            a["helm.sh/hook-weight"]
                .as_str()
                .unwrap_or("none")
                .parse()
                .unwrap(),
        )
    };
    let job = find(&objs, "Job", "rel-certautopilot-migrate");
    let sa = find(&objs, "ServiceAccount", "rel-certautopilot-migrate");
    let secret = find(&objs, "Secret", "rel-certautopilot-migrate");
    let (job_hook, job_weight) = hook(job);
    assert_eq!(job_hook, "pre-install,pre-upgrade");
    for dep in [sa, secret] {
        let (h, w) = hook(dep);
        assert_eq!(h, "pre-install,pre-upgrade");
        assert!(
            w < job_weight,
            "{} weight {w} not below the Job's {job_weight}",
            dep["kind"]
        );
    }
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "rel-certautopilot-migrate");
    let c = &pod["containers"][0];
    assert_eq!(c["args"], serde_json::json!(["migrate"]));
    // Before the release's own Secrets exist, the Job reads the hook's copies.
    assert_eq!(
        env(c, "CAP_MONGO_URI").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "rel-certautopilot-migrate"
    );
    let kek = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "kek")
        .unwrap();
    assert_eq!(kek["secret"]["secretName"], "rel-certautopilot-migrate");
    assert!(secret["data"]["uri"].is_string() && secret["data"]["kek.json"].is_string());
    // With existing Secrets there is nothing to copy: the Job reads them.
    let ha = example("ha-three-zones.yaml");
    let job = find(&ha, "Job", "rel-certautopilot-migrate");
    assert_eq!(
        env(
            &job["spec"]["template"]["spec"]["containers"][0],
            "CAP_MONGO_URI"
        )
        .unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "certautopilot-mongo"
    );
    assert!(!ha
        .iter()
        .any(|o| o["kind"] == "Secret" && o["metadata"]["name"] == "rel-certautopilot-migrate"));
}

#[test]
fn the_hpa_scales_workers_on_queued_jobs_per_worker_concurrency() {
    let objs = minimal(&[]);
    let hpa = find(&objs, "HorizontalPodAutoscaler", "rel-certautopilot-worker");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(
        hpa["spec"]["scaleTargetRef"]["name"],
        "rel-certautopilot-worker"
    );
    assert_eq!(hpa["spec"]["minReplicas"], 2);
    assert_eq!(hpa["spec"]["maxReplicas"], 20);
    let m = &hpa["spec"]["metrics"][0];
    assert_eq!(m["type"], "External");
    assert_eq!(m["external"]["metric"]["name"], "certautopilot_queue_depth");
    assert_eq!(
        m["external"]["metric"]["selector"]["matchLabels"],
        serde_json::json!({"state": "queued"})
    );
    assert_eq!(m["external"]["target"]["type"], "AverageValue");
    assert_eq!(
        m["external"]["target"]["averageValue"], "8",
        "CAP_WORKER_CONCURRENCY's default"
    );
    assert_eq!(
        hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        300
    );
    // The target follows the worker concurrency, unless set on its own.
    let objs = minimal(&["--set", "config.workerConcurrency=12"]);
    let hpa = find(&objs, "HorizontalPodAutoscaler", "rel-certautopilot-worker");
    assert_eq!(
        hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"],
        "12"
    );
    let worker = &pod_spec(deployment(&objs, "worker"))["containers"][0];
    assert_eq!(
        env(worker, "CAP_WORKER_CONCURRENCY").unwrap()["value"],
        "12"
    );
    let objs = minimal(&["--set", "autoscaling.queuedPerWorker=3"]);
    let hpa = find(&objs, "HorizontalPodAutoscaler", "rel-certautopilot-worker");
    assert_eq!(
        hpa["spec"]["metrics"][0]["external"]["target"]["averageValue"],
        "3"
    );
}

#[test]
fn the_apiservice_points_at_the_adapter_with_its_ca_and_rbac() {
    let objs = minimal(&[]);
    let svc = find(&objs, "APIService", "v1beta1.external.metrics.k8s.io");
    let spec = &svc["spec"];
    assert_eq!(spec["group"], "external.metrics.k8s.io");
    assert_eq!(spec["version"], "v1beta1");
    assert_eq!(spec["insecureSkipTLSVerify"], false);
    assert_eq!(spec["service"]["name"], "rel-certautopilot-metrics-adapter");
    assert_eq!(spec["service"]["namespace"], "cap");
    assert_eq!(spec["service"]["port"], 443);
    find(&objs, "Service", "rel-certautopilot-metrics-adapter");
    // The caBundle is the CA in the serving Secret, which signed its cert.
    let tls = find(&objs, "Secret", "rel-certautopilot-metrics-adapter-tls");
    assert_eq!(tls["type"], "kubernetes.io/tls");
    assert_eq!(spec["caBundle"], tls["data"]["ca.crt"]);
    let dir = tempfile::tempdir().unwrap();
    let decode = |v: &Value, name: &str| {
        let mut cmd = Command::new("base64");
        cmd.arg("-d");
        let (ok, pem, _) = run(&mut cmd, Some(v.as_str().unwrap()));
        assert!(ok);
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let ca = decode(&tls["data"]["ca.crt"], "ca.crt");
    let crt = decode(&tls["data"]["tls.crt"], "tls.crt");
    let (ok, out, err) = run(
        Command::new("openssl").args([
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            "-verify_hostname",
            "rel-certautopilot-metrics-adapter.cap.svc",
            crt.to_str().unwrap(),
        ]),
        None,
    );
    assert!(
        ok,
        "serving cert does not verify for the service name: {out}{err}"
    );

    let rb = find(
        &objs,
        "RoleBinding",
        "rel-certautopilot-metrics-adapter-auth-reader",
    );
    assert_eq!(rb["metadata"]["namespace"], "kube-system");
    assert_eq!(rb["roleRef"]["kind"], "Role");
    assert_eq!(
        rb["roleRef"]["name"],
        "extension-apiserver-authentication-reader"
    );
    let crb = find(
        &objs,
        "ClusterRoleBinding",
        "rel-certautopilot-metrics-adapter-auth-delegator",
    );
    assert_eq!(crb["roleRef"]["name"], "system:auth-delegator");
    for b in [rb, crb] {
        assert_eq!(
            b["subjects"][0]["name"],
            "rel-certautopilot-metrics-adapter"
        );
        assert_eq!(b["subjects"][0]["namespace"], "cap");
    }
    let adapter = deployment(&objs, "metrics-adapter");
    assert_eq!(
        pod_spec(adapter)["serviceAccountName"],
        "rel-certautopilot-metrics-adapter"
    );
    let c = &pod_spec(adapter)["containers"][0];
    assert_eq!(c["args"], serde_json::json!(["metrics-adapter"]));
    assert_eq!(env(c, "CAP_ADAPTER_ADDR").unwrap()["value"], "0.0.0.0:6443");
    assert_eq!(
        env(c, "CAP_ADAPTER_ALLOWED_NAMES").unwrap()["value"],
        "front-proxy-client"
    );
    assert_eq!(
        env(c, "CAP_ADAPTER_CLIENT_CA").unwrap()["value"],
        "/etc/certautopilot/requestheader-ca/ca.crt"
    );
    // The adapter never sees the KEK.
    assert!(env(c, "CAP_KEK_FILE").is_none());
    // A request-header CA given as a value lands in the mounted ConfigMap.
    let objs = minimal(&[
        "--set-string",
        "metricsAdapter.requestHeaderClientCA=PEM-HERE",
    ]);
    let cm = find(
        &objs,
        "ConfigMap",
        "rel-certautopilot-metrics-adapter-requestheader-ca",
    );
    assert_eq!(cm["data"]["ca.crt"], "PEM-HERE");
    // cert-manager instead: no generated Secret, the CA injected.
    let objs = minimal(&["--set", "metricsAdapter.certManager.enabled=true"]);
    let svc = find(&objs, "APIService", "v1beta1.external.metrics.k8s.io");
    assert!(svc["spec"].get("caBundle").is_none());
    assert_eq!(
        svc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "cap/rel-certautopilot-metrics-adapter-tls"
    );
    find(
        &objs,
        "Certificate",
        "rel-certautopilot-metrics-adapter-tls",
    );
    assert!(!objs.iter().any(|o| o["kind"] == "Secret"
        && o["metadata"]["name"] == "rel-certautopilot-metrics-adapter-tls"));
}

#[test]
fn keda_mode_gives_a_scaled_object_and_no_adapter_or_apiservice() {
    let objs = example("keda.yaml");
    let k = kinds(&objs);
    assert!(!k.contains("APIService"), "{k:?}");
    assert!(!k.contains("HorizontalPodAutoscaler"), "{k:?}");
    assert!(!objs.iter().any(|o| o["metadata"]["name"]
        .as_str()
        .unwrap()
        .contains("metrics-adapter")));
    let so = find(&objs, "ScaledObject", "rel-certautopilot-worker");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        "rel-certautopilot-worker"
    );
    let t = &so["spec"]["triggers"][0];
    assert_eq!(t["type"], "mongodb");
    assert_eq!(t["metadata"]["collection"], "jobs");
    assert_eq!(t["metadata"]["query"], r#"{"state":"queued"}"#);
    assert_eq!(
        t["metadata"]["queryValue"], "16",
        "the example's worker concurrency"
    );
    let auth = find(&objs, "TriggerAuthentication", "rel-certautopilot-mongo");
    assert_eq!(
        auth["spec"]["secretTargetRef"][0]["name"],
        "certautopilot-mongo"
    );
    assert_eq!(
        auth["spec"]["secretTargetRef"][0]["parameter"],
        "connectionString"
    );
}

#[test]
fn probes_are_readyz_and_healthz_and_grace_outlasts_the_drain() {
    let objs = minimal(&[]);
    for w in ["api", "worker", "scheduler"] {
        let d = deployment(&objs, w);
        let c = &pod_spec(d)["containers"][0];
        assert_eq!(c["args"], serde_json::json!([w]));
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{w}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{w}");
        assert_eq!(c["readinessProbe"]["httpGet"]["port"], "http");
        assert_eq!(env(c, "CAP_HTTP_ADDR").unwrap()["value"], "0.0.0.0:8080");
        assert_eq!(env(c, "CAP_METRICS_ADDR").unwrap()["value"], "0.0.0.0:9090");
        assert_eq!(env(c, "CAP_LOG_FORMAT").unwrap()["value"], "json");
        let drain: i64 = env(c, "CAP_SHUTDOWN_GRACE_SECS").unwrap()["value"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let grace = pod_spec(d)["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap();
        assert!(
            grace > drain,
            "{w}: grace {grace} not above the drain {drain}"
        );
    }
    // The adapter's probes use its plain listener (the kubelet has no
    // front-proxy certificate for the TLS one).
    let adapter = &pod_spec(deployment(&objs, "metrics-adapter"))["containers"][0];
    assert_eq!(adapter["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(adapter["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(adapter["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(
        env(adapter, "CAP_HTTP_ADDR").unwrap()["value"],
        "0.0.0.0:8080"
    );
    // The api's port 80 (HTTP-01) goes to the challenge listener.
    let api = &pod_spec(deployment(&objs, "api"))["containers"][0];
    assert_eq!(
        env(api, "CAP_CHALLENGE_ADDR").unwrap()["value"],
        "0.0.0.0:8081"
    );
    let ch = find(&objs, "Service", "rel-certautopilot-challenge");
    assert_eq!(ch["spec"]["ports"][0]["port"], 80);
    assert_eq!(ch["spec"]["ports"][0]["targetPort"], "challenge");
    // A grace not above the drain is refused.
    let err = template(&[
        "-f",
        chart().join("ci/minimal-values.yaml").to_str().unwrap(),
        "--set",
        "worker.terminationGracePeriodSeconds=20",
    ])
    .unwrap_err();
    assert!(
        err.contains("worker.terminationGracePeriodSeconds (20) must be longer than config.shutdownGraceSecs (25)"),
        "{err}"
    );
}

#[test]
fn the_scheduler_waits_for_api_and_workers_at_the_charts_version() {
    let app_version = std::fs::read_to_string(chart().join("Chart.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("appVersion: "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let objs = minimal(&[]);
    let spec = pod_spec(deployment(&objs, "scheduler"));
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "fleet-wait");
    assert_eq!(init["image"], format!("certautopilot:{app_version}"));
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[..6],
        [
            "fleet",
            "wait",
            "--roles",
            "api,worker",
            "--version",
            &app_version
        ]
    );
    assert_eq!(&args[6..], ["--timeout", "900"]);
    assert!(env(init, "CAP_MONGO_URI").is_some());
    assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
    // Only the scheduler waits.
    for w in ["api", "worker"] {
        assert!(pod_spec(deployment(&objs, w))
            .get("initContainers")
            .is_none());
    }
}

#[test]
fn every_workload_spreads_over_zones() {
    let objs = minimal(&[]);
    for w in WORKLOADS {
        let c = &pod_spec(deployment(&objs, w))["topologySpreadConstraints"][0];
        assert_eq!(c["topologyKey"], "topology.kubernetes.io/zone", "{w}");
        assert_eq!(c["maxSkew"], 1);
        assert_eq!(
            c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"],
            w
        );
    }
    // The three-zone example makes it a requirement.
    let objs = example("ha-three-zones.yaml");
    for w in WORKLOADS {
        let c = &pod_spec(deployment(&objs, w))["topologySpreadConstraints"][0];
        assert_eq!(c["topologyKey"], "topology.kubernetes.io/zone", "{w}");
        assert_eq!(c["whenUnsatisfiable"], "DoNotSchedule", "{w}");
    }
}

#[test]
fn every_pod_runs_non_root_read_only_without_capabilities() {
    for objs in [
        minimal(&[]),
        example("pkcs11.yaml"),
        example("ha-three-zones.yaml"),
    ] {
        for o in objs
            .iter()
            .filter(|o| ["Deployment", "Job", "CronJob"].contains(&o["kind"].as_str().unwrap()))
        {
            let name = o["metadata"]["name"].as_str().unwrap();
            let spec = if o["kind"] == "CronJob" {
                &o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            } else {
                &o["spec"]["template"]["spec"]
            };
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                spec["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            assert_eq!(spec["automountServiceAccountToken"], false, "{name}");
            let mut containers = spec["containers"].as_array().unwrap().clone();
            if let Some(init) = spec["initContainers"].as_array() {
                containers.extend(init.iter().cloned());
            }
            for c in containers {
                let sc = &c["securityContext"];
                assert_eq!(sc["runAsNonRoot"], true, "{name}");
                assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(
                    sc["capabilities"]["drop"],
                    serde_json::json!(["ALL"]),
                    "{name}"
                );
                assert!(sc["capabilities"].get("add").is_none(), "{name}");
                assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
            }
        }
    }
}

#[test]
fn the_backup_cronjob_snapshots_to_the_claim_without_the_kek() {
    // Off by default.
    assert!(!kinds(&minimal(&[])).contains("CronJob"));
    let on = [
        "--set",
        "backup.enabled=true,backup.volume.existingClaim=snaps",
    ];
    let objs = minimal(&on);
    let cron = find(&objs, "CronJob", "rel-certautopilot-backup");
    assert_eq!(cron["apiVersion"], "batch/v1");
    let spec = &cron["spec"];
    assert_eq!(spec["schedule"], "17 3 * * *");
    assert_eq!(spec["concurrencyPolicy"], "Forbid");
    assert_eq!(spec["startingDeadlineSeconds"], 3600);
    assert_eq!(spec["successfulJobsHistoryLimit"], 3);
    assert_eq!(spec["failedJobsHistoryLimit"], 3);
    let job = &spec["jobTemplate"]["spec"];
    assert_eq!(job["backoffLimit"], 2);
    assert_eq!(job["activeDeadlineSeconds"], 3600);
    let pod = &job["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(pod["serviceAccountName"], "rel-certautopilot");
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert!(pod.get("initContainers").is_none());
    let c = &containers[0];
    assert_eq!(
        c["image"],
        pod_spec(deployment(&objs, "api"))["containers"][0]["image"]
    );
    // The image has no shell: the binary names the file and prunes.
    assert_eq!(
        c["args"],
        serde_json::json!(["snapshot", "save", "--out-dir", "/backups", "--keep", "14"])
    );
    assert!(c.get("command").is_none());
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(
        env(c, "CAP_MONGO_URI").unwrap()["valueFrom"]["secretKeyRef"],
        serde_json::json!({"name": "rel-certautopilot-mongo", "key": "uri"})
    );
    assert_eq!(env(c, "CAP_LOG_FORMAT").unwrap()["value"], "json");
    let no_kek = |pod: &Value, what: &str| {
        let c = &pod["containers"][0];
        for e in c["env"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap();
            assert!(
                !name.starts_with("CAP_KEK_") && !name.starts_with("CAP_PKCS11_"),
                "{what}: the backup pod gets {name}"
            );
        }
        let volumes = pod["volumes"].as_array().unwrap();
        let names: BTreeSet<&str> = volumes
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, BTreeSet::from(["backups", "tmp"]), "{what}");
        assert!(volumes.iter().all(|v| v.get("secret").is_none()), "{what}");
        let mounts: BTreeSet<&str> = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(mounts, BTreeSet::from(["/backups", "/tmp"]), "{what}");
    };
    no_kek(pod, "file provider");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "backups")
        .unwrap();
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], "snaps");
    let mount = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "backups")
        .unwrap();
    assert_eq!(mount["mountPath"], "/backups");
    assert!(mount.get("subPath").is_none());
    assert_ne!(mount["readOnly"], true);
    // Nor the HSM's PIN, module or volumes under PKCS#11, nor a KEK setting
    // given as an extra variable.
    let objs = with_values(
        &chart().join("examples/pkcs11.yaml"),
        &[
            on[0],
            on[1],
            "--set",
            "config.extraEnv.CAP_KEK_FILE=/kek.json",
            "--set",
            "config.extraEnv.CAP_ELECTION_RETRY_SECS=60",
        ],
    );
    let cron = find(&objs, "CronJob", "rel-certautopilot-backup");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    no_kek(pod, "pkcs11 provider");
    let c = &pod["containers"][0];
    assert_eq!(
        env(c, "CAP_MONGO_URI").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "certautopilot-mongo"
    );
    assert_eq!(env(c, "CAP_ELECTION_RETRY_SECS").unwrap()["value"], "60");
    // The settings reach the CronJob.
    let objs = minimal(&[
        on[0],
        on[1],
        "--set",
        "backup.keep=30,backup.volume.subPath=cap,backup.schedule=5 1 * * 0",
        "--set",
        "backup.concurrencyPolicy=Replace,backup.activeDeadlineSeconds=600",
    ]);
    let cron = find(&objs, "CronJob", "rel-certautopilot-backup");
    assert_eq!(cron["spec"]["schedule"], "5 1 * * 0");
    assert_eq!(cron["spec"]["concurrencyPolicy"], "Replace");
    let job = &cron["spec"]["jobTemplate"]["spec"];
    assert_eq!(job["activeDeadlineSeconds"], 600);
    let c = &job["template"]["spec"]["containers"][0];
    assert_eq!(
        c["args"],
        serde_json::json!(["snapshot", "save", "--out-dir", "/backups", "--keep", "30"])
    );
    assert_eq!(c["volumeMounts"][0]["subPath"], "cap");
    // Enabled without a claim: refused, saying what is missing.
    let min = chart().join("ci/minimal-values.yaml");
    let err = template(&["-f", min.to_str().unwrap(), "--set", "backup.enabled=true"]).unwrap_err();
    assert!(
        err.contains("backup.enabled needs backup.volume.existingClaim"),
        "{err}"
    );
    // What the schema refuses: keeping none (it would delete the snapshot
    // just taken), an absolute subPath, a policy Kubernetes does not know.
    for (set, expect) in [
        ("backup.keep=0", "/backup/keep"),
        ("backup.volume.subPath=/abs", "/backup/volume/subPath"),
        (
            "backup.concurrencyPolicy=Never",
            "/backup/concurrencyPolicy",
        ),
        ("backup.volume.claim=snaps", "'claim' not allowed"),
    ] {
        let err = template(&["-f", min.to_str().unwrap(), on[0], on[1], "--set", set])
            .expect_err(&format!("{set} was accepted"));
        assert!(err.contains(expect), "{set}: {err}");
    }
    // The production example turns it on (and so is validated against the
    // Kubernetes schemas with the other values files).
    let ha = example("ha-three-zones.yaml");
    let cron = find(&ha, "CronJob", "rel-certautopilot-backup");
    let pod = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "certautopilot-snapshots"
    );
    no_kek(pod, "three-zone example");
}

#[test]
fn the_kek_is_a_secret_mounted_0400_or_the_pkcs11_settings() {
    let objs = minimal(&[]);
    for w in ["api", "worker", "scheduler"] {
        let spec = pod_spec(deployment(&objs, w));
        let vol = spec["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "kek")
            .unwrap();
        // The file provider refuses a key ring readable by group or others.
        let mode = vol["secret"]["defaultMode"].as_i64().unwrap();
        assert_eq!(mode & 0o077, 0, "{w}: mode {mode:o}");
        assert_eq!(vol["secret"]["secretName"], "rel-certautopilot-kek");
        let c = &spec["containers"][0];
        assert_eq!(env(c, "CAP_KEK_PROVIDER").unwrap()["value"], "file");
        assert_eq!(
            env(c, "CAP_KEK_FILE").unwrap()["value"],
            "/etc/certautopilot/kek/kek.json"
        );
        assert_eq!(
            env(c, "CAP_MONGO_URI").unwrap()["valueFrom"]["secretKeyRef"]["name"],
            "rel-certautopilot-mongo"
        );
    }
    let objs = example("pkcs11.yaml");
    let c = &pod_spec(deployment(&objs, "worker"))["containers"][0];
    assert_eq!(env(c, "CAP_KEK_PROVIDER").unwrap()["value"], "pkcs11");
    assert!(env(c, "CAP_KEK_FILE").is_none());
    assert_eq!(
        env(c, "CAP_PKCS11_MODULE").unwrap()["value"],
        "/opt/hsm/lib/libvendorpkcs11.so"
    );
    assert_eq!(
        env(c, "CAP_PKCS11_PIN").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "certautopilot-hsm-pin"
    );
    assert!(c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["mountPath"] == "/opt/hsm"));
    // A mode readable by group is rejected by the schema.
    let err = template(&[
        "-f",
        chart().join("ci/minimal-values.yaml").to_str().unwrap(),
        "--set",
        "kek.file.defaultMode=288",
    ])
    .unwrap_err();
    assert!(err.contains("/kek/file/defaultMode"), "{err}");
}

#[test]
fn monitoring_renders_the_alerts_on_real_metric_names() {
    let objs = minimal(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
    ]);
    find(&objs, "ServiceMonitor", "rel-certautopilot");
    let rule = find(&objs, "PrometheusRule", "rel-certautopilot");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let alerts: BTreeSet<&str> = rules.iter().map(|r| r["alert"].as_str().unwrap()).collect();
    for a in [
        "CertAutoPilotCertificateExpiringSoon",
        "CertAutoPilotRenewalFailing",
        "CertAutoPilotNoSchedulerLeader",
        "CertAutoPilotQueueGrowing",
        "CertAutoPilotQueuedJobTooOld",
        "CertAutoPilotDeadJobs",
        "CertAutoPilotDrift",
        "CertAutoPilotSiemForwardingLagging",
        "CertAutoPilotKekUnreachable",
    ] {
        assert!(alerts.contains(a), "{a} missing from {alerts:?}");
    }
    let leader = rules
        .iter()
        .find(|r| r["alert"] == "CertAutoPilotNoSchedulerLeader")
        .unwrap();
    assert_eq!(leader["for"], "2m");
    let too_old = rules
        .iter()
        .find(|r| r["alert"] == "CertAutoPilotQueuedJobTooOld")
        .unwrap();
    assert!(
        too_old["expr"].as_str().unwrap().ends_with("> 300"),
        "the 5-minute target: {too_old}"
    );
    let expiry = rules
        .iter()
        .find(|r| r["alert"] == "CertAutoPilotCertificateExpiringSoon")
        .unwrap();
    assert!(
        expiry["expr"].as_str().unwrap().ends_with("< 1209600"),
        "14 days"
    );
    // Every metric a rule or the dashboard names is one the binary registers.
    let source = std::fs::read_to_string(root().join("src/observe/metrics.rs")).unwrap();
    let dashboard = find(&objs, "ConfigMap", "rel-certautopilot-dashboard");
    let board = dashboard["data"]["certautopilot.json"].as_str().unwrap();
    serde_json::from_str::<Value>(board).expect("the dashboard is JSON");
    let mut text: String = rules
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string() + " ")
        .collect();
    text.push_str(board);
    let mut seen = 0;
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("certautopilot_") {
            let base = name.strip_suffix("_bucket").unwrap_or(name);
            assert!(
                source.contains(&format!("\"certautopilot_{base}\"")),
                "certautopilot_{base} is not a metric of src/observe/metrics.rs"
            );
            seen += 1;
        }
    }
    assert!(seen > 10);
}

#[test]
fn the_schema_rejects_wrong_types_and_unknown_keys() {
    let min = chart().join("ci/minimal-values.yaml");
    for (set, expect) in [
        ("api.replicas=three", "/api/replicas"),
        ("api.replica=3", "'replica' not allowed"),
        (
            "worker.pdb.maxUnavailabel=1",
            "'maxUnavailabel' not allowed",
        ),
        ("autoscaling.mode=prometheus", "/autoscaling/mode"),
        ("kek.provider=vault", "/kek/provider"),
        ("config.workerConcurrency=0", "/config/workerConcurrency"),
        (
            "scheduler.fleetWait.enabled=maybe",
            "/scheduler/fleetWait/enabled",
        ),
        (
            "metrics.serviceMonitor.interval=often",
            "/metrics/serviceMonitor/interval",
        ),
        ("unknownTopLevel=1", "'unknownTopLevel' not allowed"),
    ] {
        let err = template(&["-f", min.to_str().unwrap(), "--set", set])
            .expect_err(&format!("{set} was accepted"));
        assert!(err.contains(expect), "{set}: {err}");
    }
    // And what no schema can say: the required Secrets' sources.
    let err = template(&[]).unwrap_err();
    assert!(
        err.contains("mongo.uri or mongo.existingSecret is required"),
        "{err}"
    );
    let err = template(&["--set", "mongo.uri=mongodb://m/x"]).unwrap_err();
    assert!(
        err.contains("kek.file.keyRing or kek.file.existingSecret is required"),
        "{err}"
    );
    let err = template(&[
        "--set",
        "mongo.uri=mongodb://m/x",
        "--set",
        "kek.provider=pkcs11",
    ])
    .unwrap_err();
    assert!(
        err.contains("kek.pkcs11.pin or kek.pkcs11.existingSecret is required"),
        "{err}"
    );
}
