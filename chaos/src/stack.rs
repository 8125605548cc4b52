//! A whole installation on this machine, as [`crate::topology`] lays it out:
//! the database (secantusd-rs, durable: `--sync-on-commit`) on a host of its
//! own; three zones, each an `api` host and worker hosts, with a scheduler in
//! zones 1 and 2; haproxy in front of the apis and Pebble as the CA, both on
//! the harness's own address.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Document};
use serde_json::{json, Value};

use crate::procs::{Proc, Role};
use crate::topology::{self, Host, DB_IP, HOST_IP};

pub const API_PORT: u16 = 8080;
/// The scheduler shares its zone's api host, so its own `/healthz` and
/// `/metrics` listen elsewhere.
const SCHEDULER_PORT: u16 = 8081;
const ACME_PORT: u16 = 14000;
const DNS_PORT: u16 = 8053;
pub const ZONES: usize = 3;
/// The fixture's names: every certificate the run declares is under it.
pub const DOMAIN: &str = "chaos.test";

/// How the installation is made.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The `certautopilot` every process runs.
    pub bin: PathBuf,
    pub workers_per_zone: usize,
    /// Pebble's `certificateValidityPeriod`: short, so that certificates
    /// renew all the time.
    pub validity_secs: u64,
    /// Where the database, logs and reports of this run go.
    pub dir: PathBuf,
}

pub struct Stack {
    pub settings: Settings,
    pub db: Proc,
    pub apis: Vec<Proc>,
    pub workers: Vec<Proc>,
    pub schedulers: Vec<Proc>,
    /// Pebble, its DNS server and haproxy: never faulted.
    _aux: Aux,
    pub pebble_log: PathBuf,
    /// The balancer's address, as a URL.
    pub front: String,
    pub token: String,
    pub mongo_uri: String,
    pub mongo: mongodb::Database,
    pub project: String,
    pub issuer: String,
}

/// Every host, in the order built.
pub fn hosts(workers_per_zone: usize) -> Vec<Host> {
    let mut hosts = vec![Host::db()];
    for zone in 1..=ZONES {
        hosts.push(Host::api(zone));
        for k in 0..workers_per_zone {
            hosts.push(Host::worker(zone, k));
        }
    }
    hosts
}

impl Stack {
    /// Builds the network, starts every process, declares the fixture
    /// (project, domain grant, issuer) and returns once the balancer answers.
    pub async fn start(settings: Settings) -> Result<Stack, String> {
        let logs = settings.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        topology::build(&hosts(settings.workers_per_zone))?;

        let pebble_dir = settings.dir.join("pebble");
        std::fs::create_dir_all(&pebble_dir).map_err(|e| e.to_string())?;
        listener_certificate(&pebble_dir)?;
        let mut aux = Aux(Vec::new());
        aux.0.push(spawn_logged(
            Command::new("pebble-challtestsrv")
                .args(["-defaultIPv4", &HOST_IP.to_string(), "-defaultIPv6", ""])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-dns01", &format!("{HOST_IP}:{DNS_PORT}")])
                .args(["-management", &format!("{HOST_IP}:8055")]),
            &pebble_dir.join("challtestsrv.log"),
        )?);
        std::fs::write(
            pebble_dir.join("pebble.json"),
            json!({"pebble": {
                "listenAddress": format!("{HOST_IP}:{ACME_PORT}"),
                "managementListenAddress": format!("{HOST_IP}:15000"),
                "certificate": pebble_dir.join("cert.pem"),
                "privateKey": pebble_dir.join("key.pem"),
                "httpPort": API_PORT,
                "tlsPort": 5001,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": settings.validity_secs,
            }})
            .to_string(),
        )
        .map_err(|e| e.to_string())?;
        let pebble_log = pebble_dir.join("pebble.log");
        aux.0.push(spawn_logged(
            Command::new("pebble")
                .args([
                    "-config",
                    &pebble_dir.join("pebble.json").display().to_string(),
                ])
                .args(["-dnsserver", &format!("{HOST_IP}:{DNS_PORT}")])
                .env("PEBBLE_VA_NOSLEEP", "1"),
            &pebble_log,
        )?);

        let mut db = Proc::new(
            "db",
            Role::Db,
            &Host::db(),
            Path::new("secantusd-rs"),
            &[
                "--host",
                &DB_IP.to_string(),
                "--port",
                "27017",
                "--storage-path",
                &settings.dir.join("db").display().to_string(),
                "--cache-size",
                "512M",
                "--log-level",
                "WARNING",
                // Durable: a SIGKILL must not lose a write it acknowledged.
                "--sync-on-commit",
            ],
            &logs,
        );
        db.start()?;
        let mongo_uri = format!("mongodb://{DB_IP}:27017/certautopilot?replicaSet=secantus");
        let kek = settings.dir.join("kek.json");
        cli(
            &settings.bin,
            &mongo_uri,
            &kek,
            &["kek", "init", "--file", &kek.display().to_string()],
        )?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while cli(&settings.bin, &mongo_uri, &kek, &["migrate"]).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "the database never came up; see {}",
                    db.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let token = cli(
            &settings.bin,
            &mongo_uri,
            &kek,
            &[
                "token",
                "create",
                "--role",
                "admin",
                "--description",
                "chaos",
            ],
        )?
        .trim()
        .to_string();
        let mongo = mongodb::Client::with_uri_str(&mongo_uri)
            .await
            .map_err(|e| e.to_string())?
            .database("certautopilot");
        let mongo_admin = mongo.client().database("admin");
        // A process killed inside a transaction holds its locks until the
        // server gives up on it: the README's recommended 10 s.
        mongo_admin
            .run_command(doc! { "setParameter": 1, "transactionLifetimeLimitSeconds": 10 })
            .await
            .map_err(|e| format!("setParameter: {e}"))?;

        let common = |p: Proc, id: &str| -> Proc {
            p.env("CAP_MONGO_URI", &mongo_uri)
                .env("CAP_KEK_FILE", &kek.display().to_string())
                .env("CAP_INSTANCE_ID", id)
                .env("CAP_LOG_FORMAT", "json")
                .env("RUST_LOG", "info")
                .env("CAP_EGRESS_ALLOW", "10.231.0.0/24")
                .env("CAP_CLAIM_POLL_MS", "200")
                .env("CAP_RENEWAL_SCAN_SECS", "2")
                // The load client is one token at hundreds of requests a
                // second; the limit is not what is measured here, but its
                // shared counts are written through every fault.
                .env("CAP_API_RATE_LIMIT", "1000000")
        };
        let make = |role: Role, id: &str, host: &Host, port: u16| -> Proc {
            let p = Proc::new(id, role, host, &settings.bin, &[role.name()], &logs);
            common(p, id).env("CAP_HTTP_ADDR", &format!("0.0.0.0:{port}"))
        };
        let mut apis = Vec::new();
        let mut workers = Vec::new();
        let mut schedulers = Vec::new();
        for zone in 1..=ZONES {
            apis.push(make(
                Role::Api,
                &format!("z{zone}-api"),
                &Host::api(zone),
                API_PORT,
            ));
            for k in 0..settings.workers_per_zone {
                workers.push(make(
                    Role::Worker,
                    &format!("z{zone}-worker{k}"),
                    &Host::worker(zone, k),
                    API_PORT,
                ));
            }
            if zone <= 2 {
                schedulers.push(make(
                    Role::Scheduler,
                    &format!("z{zone}-scheduler"),
                    &Host::api(zone),
                    SCHEDULER_PORT,
                ));
            }
        }
        for p in apis.iter_mut().chain(&mut workers).chain(&mut schedulers) {
            p.start()?;
        }

        let haproxy_cfg = settings.dir.join("haproxy.cfg");
        let servers: String = (1..=ZONES)
            .map(|z| {
                format!(
                    "    server z{z}-api {}:{API_PORT} check inter 500 fall 2 rise 1\n",
                    Host::api(z).ip
                )
            })
            .collect();
        // Health-checks /healthz every 500 ms, down after two misses. A
        // request that found no server, or no answer from one within 8 s (an
        // api in a zone that just vanished, reached over a kept-alive
        // connection), is sent to another, POSTs included: a retried write
        // may then exist twice; none answered is lost.
        std::fs::write(
            &haproxy_cfg,
            format!(
                "global\n    maxconn 2000\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 8s\n\
                 \x20   retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response response-timeout\n\
                 frontend web\n    bind {HOST_IP}:{API_PORT}\n    default_backend apis\n\
                 backend apis\n    balance roundrobin\n    option httpchk GET /healthz\n    http-check expect status 200\n{servers}"
            ),
        )
        .map_err(|e| e.to_string())?;
        aux.0.push(spawn_logged(
            Command::new("haproxy").args(["-db", "-f", &haproxy_cfg.display().to_string()]),
            &settings.dir.join("haproxy.log"),
        )?);

        let mut stack = Stack {
            front: format!("http://{HOST_IP}:{API_PORT}"),
            settings,
            db,
            apis,
            workers,
            schedulers,
            _aux: aux,
            pebble_log,
            token,
            mongo_uri,
            mongo,
            project: String::new(),
            issuer: String::new(),
        };
        for i in 0..stack.apis.len() {
            stack
                .wait_ready(Role::Api, i, Duration::from_secs(60))
                .await?;
        }
        stack.declare_fixture().await?;
        Ok(stack)
    }

    /// The fixture project, its grant of [`DOMAIN`] and the Pebble issuer.
    async fn declare_fixture(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let project = loop {
            match self
                .call(
                    &client,
                    "POST",
                    "/v1/projects",
                    Some(json!({"name": "chaos"})),
                )
                .await
            {
                Ok((201, body)) => break body["id"].as_str().unwrap_or_default().to_string(),
                other if Instant::now() > deadline => {
                    return Err(format!("creating the fixture project: {other:?}"))
                }
                _ => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        };
        let (status, body) = self
            .call(
                &client,
                "PUT",
                &format!("/v1/projects/{project}/domains"),
                Some(json!({"domains": [DOMAIN]})),
            )
            .await?;
        if status != 200 {
            return Err(format!("granting {DOMAIN}: {status} {body}"));
        }
        let ca = std::fs::read_to_string(self.settings.dir.join("pebble/ca.pem"))
            .map_err(|e| e.to_string())?;
        let (status, body) = self
            .call(
                &client,
                "POST",
                &format!("/v1/projects/{project}/issuers"),
                Some(json!({"name": "pebble", "directory_url": format!("https://{HOST_IP}:{ACME_PORT}/dir"),
                            "contact": "ops@chaos.test", "challenge": "http-01", "ca_bundle_pem": ca})),
            )
            .await?;
        if status != 201 {
            return Err(format!("declaring the issuer: {status} {body}"));
        }
        self.issuer = body["id"].as_str().unwrap_or_default().to_string();
        self.project = project;
        Ok(())
    }

    /// One API call through the balancer as the admin.
    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = client
            .request(method, format!("{}{path}", self.front))
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(10));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    pub fn procs_mut(&mut self, role: Role) -> &mut Vec<Proc> {
        match role {
            Role::Api => &mut self.apis,
            Role::Worker => &mut self.workers,
            Role::Scheduler => &mut self.schedulers,
            Role::Db => panic!("the database is stack.db"),
        }
    }

    /// Every certautopilot process.
    pub fn app_procs(&self) -> impl Iterator<Item = &Proc> {
        self.apis
            .iter()
            .chain(&self.workers)
            .chain(&self.schedulers)
    }

    /// Waits until process `i` of `role` answers `/readyz` from inside its host.
    pub async fn wait_ready(
        &mut self,
        role: Role,
        i: usize,
        timeout: Duration,
    ) -> Result<(), String> {
        let p = &mut self.procs_mut(role)[i];
        let port = if role == Role::Scheduler {
            SCHEDULER_PORT
        } else {
            API_PORT
        };
        let url = format!("http://{}:{port}/readyz", p.host.ip);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        loop {
            let ok = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if !p.running() {
                return Err(format!("{} exited; see {}", p.id, p.log.display()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready after {timeout:?}; see {}",
                    p.id,
                    p.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The scheduler lease as the database holds it: (holder, term).
    pub async fn leader(&self) -> Option<(String, i64)> {
        let lease = self
            .mongo
            .collection::<Document>("leases")
            .find_one(doc! { "_id": "scheduler", "$expr": { "$gt": ["$expires_at", "$$NOW"] } })
            .await
            .ok()??;
        Some((
            lease.get_str("holder").ok()?.to_string(),
            lease.get_i64("term").ok()?,
        ))
    }

    /// `certautopilot` run to completion from the harness's own namespace.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        cli(
            &self.settings.bin,
            &self.mongo_uri,
            &self.settings.dir.join("kek.json"),
            args,
        )
    }

    /// Stops everything; the network is removed by [`topology::clean`].
    pub async fn stop(mut self) {
        for p in self
            .apis
            .iter_mut()
            .chain(&mut self.workers)
            .chain(&mut self.schedulers)
        {
            p.kill();
        }
        self.db.kill();
        // The helper servers go with `self._aux`.
    }
}

/// Pebble, its DNS server and haproxy, killed when dropped: also when the
/// installation fails to start halfway, so no later run finds their ports
/// taken.
struct Aux(Vec<Child>);

impl Drop for Aux {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `certautopilot` of another build (the release being upgraded to) against
/// this installation.
pub fn cli_with(bin: &Path, stack: &Stack, args: &[&str]) -> Result<String, String> {
    cli(
        bin,
        &stack.mongo_uri,
        &stack.settings.dir.join("kek.json"),
        args,
    )
}

fn cli(bin: &Path, uri: &str, kek: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .args(args)
        .env("CAP_MONGO_URI", uri)
        .env("CAP_KEK_FILE", kek)
        .env("CAP_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "certautopilot {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A helper server in the harness's namespace, killed with the harness.
fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null()).stdout(file).stderr(err);
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    cmd.spawn()
        .map_err(|e| format!("{cmd:?}: {e} (scripts/setup.sh installs it)"))
}

/// Pebble's own HTTPS listener needs a certificate for the harness's address.
fn listener_certificate(dir: &Path) -> Result<(), String> {
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "30",
    ];
    let run = |args: Vec<String>| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .output()
            .map_err(|e| e.to_string())?;
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| format!("openssl: {}", String::from_utf8_lossy(&out.stderr)))
    };
    let mut ca: Vec<String> = ["req", "-x509"]
        .iter()
        .chain(&key)
        .map(|s| s.to_string())
        .collect();
    ca.extend(
        [
            "-subj",
            "/CN=chaos ACME listener CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]
        .map(String::from),
    );
    run(ca)?;
    let mut leaf: Vec<String> = ["req", "-x509"]
        .iter()
        .chain(&key)
        .map(|s| s.to_string())
        .collect();
    leaf.extend(
        [
            "-subj",
            "/CN=chaos-acme",
            "-addext",
            &format!("subjectAltName=IP:{HOST_IP}"),
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
        ]
        .map(String::from),
    );
    run(leaf)
}
