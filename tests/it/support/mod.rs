//! Test harness: a real MongoDB-protocol server and real `certautopilot`
//! processes, and the [`cluster::Cluster`] most API tests start from.
//!
//! The database is `CAP_TEST_MONGO_URI` when set (a real replica set), or
//! else one throw-away `secantusd-rs` shared by every test of the binary, on
//! a free loopback port with a temporary data directory and a small cache.
//! Every test gets its own database; a test that disturbs its server (a
//! step-down) gets a server of its own ([`TestDb::on_own_server`]). Servers
//! are started through a shell guard that kills them when this test process
//! goes away, since statics are never dropped.
//!
//! The benches include this module too (through `tests/common/mod.rs`) and
//! each uses a little of it: hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod api;
pub mod bind;
pub mod cluster;
pub mod haproxy;
pub mod pebble;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mongodb::bson::Document;

use certautopilot::store::schema;
use certautopilot::store::Store;

static SERVER: OnceLock<String> = OnceLock::new();
static DB_SEQ: AtomicU32 = AtomicU32::new(0);

/// `mongodb://host:port` (plus the replica-set option) without a database:
/// the server every test shares.
pub fn server_base() -> String {
    SERVER
        .get_or_init(|| {
            if let Ok(uri) = std::env::var("CAP_TEST_MONGO_URI") {
                return uri;
            }
            // Never stopped: its guard ends it when this process exits.
            let (uri, _guard) = start_secantus();
            shorten_transaction_lifetime(&uri);
            uri
        })
        .clone()
}

/// A `secantusd-rs` that one test has to itself, stopped when dropped.
struct OwnServer {
    guard: Child,
}

impl OwnServer {
    /// Returns the server and its base URI.
    fn start() -> (OwnServer, String) {
        let (uri, guard) = start_secantus();
        shorten_transaction_lifetime(&uri);
        (OwnServer { guard }, uri)
    }
}

impl Drop for OwnServer {
    /// The guard's TERM trap kills the server and removes its data.
    fn drop(&mut self) {
        let guard = nix::unistd::Pid::from_raw(self.guard.id() as i32);
        let _ = nix::sys::signal::kill(guard, nix::sys::signal::Signal::SIGTERM);
        let _ = self.guard.wait();
    }
}

/// Starts `secantusd-rs` under its guard shell; returns the server's base
/// URI and the guard.
#[allow(clippy::zombie_processes)]
fn start_secantus() -> (String, Child) {
    let bin = which("secantusd-rs").unwrap_or_else(|| {
        panic!("secantusd-rs not found: run scripts/setup.sh (or set CAP_TEST_MONGO_URI)")
    });
    let dir = tempfile::Builder::new()
        .prefix("cap-test-db-")
        .tempdir()
        .unwrap()
        .keep();
    // The guard loop ends the server when this test process exits, however it
    // exits, or when the guard is sent SIGTERM; the shared server's guard is
    // deliberately never waited for.
    let script = format!(
        "{bin} --port 0 --host 127.0.0.1 --storage-path {dir}/data --cache-size 256M --log-level WARNING 2>>{dir}/server.log & pid=$!; \
         trap 'kill -9 $pid 2>/dev/null; rm -rf {dir}' EXIT; trap 'exit' TERM; \
         while kill -0 {parent} 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done",
        bin = bin.display(),
        dir = dir.display(),
        parent = std::process::id()
    );
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start secantusd-rs");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(addr) = line.strip_prefix("secantusd-rs listening on ") {
            let addr = addr.trim().to_string();
            std::thread::spawn(move || for _ in lines {});
            return (format!("mongodb://{addr}/?replicaSet=secantus"), child);
        }
    }
    panic!("secantusd-rs did not report its port");
}

/// The setting the README recommends for production: a process killed
/// inside a transaction holds its locks until the server gives up on the
/// transaction, 60 s by default; ours last milliseconds.
fn shorten_transaction_lifetime(uri: &str) {
    let uri = uri.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
            client
                .database("admin")
                .run_command(mongodb::bson::doc! { "setParameter": 1, "transactionLifetimeLimitSeconds": 10 })
                .await
                .expect("setParameter transactionLifetimeLimitSeconds");
        })
    })
    .join()
    .unwrap();
}

fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// A database of its own for one test, with the key ring (KEK version 1)
/// its processes share.
pub struct TestDb {
    pub uri: String,
    pub name: String,
    pub kek_file: PathBuf,
    _kek_dir: tempfile::TempDir,
    /// Its server, when it has one of its own: declared last, so stopped
    /// after everything else here is gone.
    _own_server: Option<OwnServer>,
}

impl TestDb {
    /// A fresh, empty database (not migrated) on the shared server.
    pub fn fresh(hint: &str) -> TestDb {
        TestDb::on(&server_base(), hint, None)
    }

    /// A fresh database with the current schema, on the shared server.
    pub async fn migrated(hint: &str) -> TestDb {
        TestDb::fresh(hint).migrate().await
    }

    /// A migrated database on a server of its own, for a test that disturbs
    /// its server (a step-down): the other tests of this binary share theirs
    /// and must not notice. With `CAP_TEST_MONGO_URI` set, that server, as
    /// for every test.
    pub async fn on_own_server(hint: &str) -> TestDb {
        let db = if std::env::var_os("CAP_TEST_MONGO_URI").is_some() {
            TestDb::fresh(hint)
        } else {
            let (server, base) = OwnServer::start();
            TestDb::on(&base, hint, Some(server))
        };
        db.migrate().await
    }

    fn on(base: &str, hint: &str, own_server: Option<OwnServer>) -> TestDb {
        let name = format!(
            "cap_{}_{}_{}",
            hint,
            std::process::id(),
            DB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let uri = with_database(base, &name);
        let kek_dir = tempfile::tempdir().unwrap();
        let kek_file = kek_dir.path().join("kek.json");
        certautopilot::crypto::kek::FileKek::init(&kek_file).unwrap();
        TestDb {
            uri,
            name,
            kek_file,
            _kek_dir: kek_dir,
            _own_server: own_server,
        }
    }

    async fn migrate(self) -> TestDb {
        let store = self.store().await;
        schema::migrate(&store, |_| {}).await.expect("migrate");
        self
    }

    /// The key ring's provider, as a process of this test would load it.
    pub fn kek(&self) -> std::sync::Arc<dyn certautopilot::crypto::kek::KekProvider> {
        std::sync::Arc::new(certautopilot::crypto::kek::FileKek::load(&self.kek_file).unwrap())
    }

    pub async fn store(&self) -> Store {
        Store::connect(&self.uri, Duration::from_secs(30))
            .await
            .expect("connect")
    }
}

/// Puts `db` into the path of a MongoDB URI, keeping its options.
pub fn with_database(base: &str, db: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let rest = head.strip_prefix("mongodb://").expect("mongodb:// URI");
    let hosts = rest.split('/').next().unwrap();
    match query {
        Some(q) => format!("mongodb://{hosts}/{db}?{q}"),
        None => format!("mongodb://{hosts}/{db}"),
    }
}

pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Every document of `collection` that matches `filter`, in no set order.
pub async fn documents(store: &Store, collection: &str, filter: Document) -> Vec<Document> {
    store
        .collection(collection)
        .find(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

/// Polls `check` every 20 ms until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the test processes may reach that the egress policy refuses by
/// default: the servers tests run (Pebble, bind9, rsyslog, TLS endpoints)
/// listen on loopback. A test of the policy itself passes its own
/// `CAP_EGRESS_ALLOW`.
pub const TEST_EGRESS_ALLOW: &str = "127.0.0.0/8,::1";

/// The egress policy in-process calls of tests pass (see [`TEST_EGRESS_ALLOW`]).
pub fn test_egress() -> certautopilot::net::egress::EgressPolicy {
    certautopilot::net::egress::EgressPolicy::parse(TEST_EGRESS_ALLOW).unwrap()
}

/// A running `certautopilot` process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub http: SocketAddr,
    pub id: String,
    log: Arc<Mutex<Vec<String>>>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_certautopilot")
}

impl Proc {
    /// Starts `certautopilot <command>` against `db` with extra `CAP_*` settings.
    pub fn start(command: &str, db: &TestDb, id: &str, env: &[(&str, &str)]) -> Proc {
        // A test may pick the address (an ACME HTTP-01 port, say).
        let http = env
            .iter()
            .find(|(k, _)| *k == "CAP_HTTP_ADDR")
            .map(|(_, v)| v.parse().expect("CAP_HTTP_ADDR"))
            .unwrap_or_else(free_addr);
        let mut cmd = Command::new(bin());
        cmd.arg(command)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CAP_MONGO_URI", &db.uri)
            .env("CAP_KEK_FILE", &db.kek_file)
            .env("CAP_HTTP_ADDR", http.to_string())
            .env("CAP_INSTANCE_ID", id)
            .env("CAP_LOG_FORMAT", "json")
            .env("CAP_EGRESS_ALLOW", TEST_EGRESS_ALLOW)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start certautopilot");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let tag = id.to_string();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("CAP_TEST_SHOW_LOGS").is_some() {
                    eprintln!("[{tag}] {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            http,
            id: id.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).expect("signal");
    }

    /// Log lines so far that contain every one of `needles`.
    pub fn log_lines_with(&self, needles: &[&str]) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .cloned()
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_alive(&self) {
        let client = reqwest::Client::new();
        let ok = wait_until(Duration::from_secs(20), || {
            let req = client.get(self.url("/healthz")).send();
            async move { req.await.map(|r| r.status().is_success()).unwrap_or(false) }
        })
        .await;
        assert!(
            ok,
            "{} never answered /healthz; log:\n{}",
            self.id,
            self.log_text()
        );
    }

    /// Waits for the process to exit, returning its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// The value of an unlabelled metric (or the first series with `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| {
                l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']) && l.contains(labels)
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
