//! Test harness: a real MongoDB-protocol server and real `certautopilot`
//! processes, and the [`cluster::Cluster`] most API tests start from.
//!
//! The database is `CAP_TEST_MONGO_URI` when set (a real replica set), or
//! else one throw-away `secantusd-rs` shared by every test of the binary, on
//! a free loopback port with a temporary data directory and a small cache.
//! Every test gets its own database; a test that disturbs its server (a
//! step-down) gets a server of its own ([`TestDb::on_own_server`]), and a
//! test that kills its server gets one it can restart on the same
//! data ([`TestDb::on_restartable_server`]). Servers ([`DbServer`]) are started
//! through a shell guard that kills them when this test process goes away,
//! since statics are never dropped.
//!
//! The benches include this module too (through `tests/common/mod.rs`) and
//! each uses a little of it: hence `dead_code` is allowed.
#![allow(dead_code)]

pub mod api;
pub mod bind;
pub mod cluster;
pub mod haproxy;
pub mod kubernetes;
pub mod nginx;
pub mod pebble;
pub mod smtp;
pub mod sshd;
pub mod tls_server;
pub mod webhook_receiver;

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

/// How long a test lets one `certautopilot` command run before it kills it
/// and fails: a wedged server then fails the test that met it, with the
/// command's output, instead of stalling the whole run until CI gives up.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(300);

/// `Command::output`, bounded by [`COMMAND_LIMIT`].
pub trait OutputWithin {
    fn output_within_limit(&mut self) -> std::io::Result<std::process::Output>;
}

impl OutputWithin for Command {
    fn output_within_limit(&mut self) -> std::io::Result<std::process::Output> {
        use std::io::Read;
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        // Read both pipes as they fill (a full pipe would stall the child);
        // the buffers stay readable if the child has to be killed.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            let buffer = Arc::new(Mutex::new(Vec::new()));
            let filling = buffer.clone();
            let reader = std::thread::spawn(move || {
                let Some(mut pipe) = pipe else { return };
                let mut chunk = [0u8; 8192];
                while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                    filling.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
            (buffer, reader)
        };
        let (stdout, out_reader) = drain(child.stdout.take().map(|p| Box::new(p) as _));
        let (stderr, err_reader) = drain(child.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{self:?} did not finish within {COMMAND_LIMIT:?} and was killed\n\
                     stdout:\n{}\nstderr:\n{}",
                    String::from_utf8_lossy(&stdout.lock().unwrap()),
                    String::from_utf8_lossy(&stderr.lock().unwrap())
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // A grandchild that kept the pipes open would keep them from ending:
        // what the command itself wrote has arrived once it has exited.
        for reader in [out_reader, err_reader] {
            let waited = Instant::now();
            while !reader.is_finished() && waited.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| std::mem::take(&mut *b.lock().unwrap());
        Ok(std::process::Output {
            status,
            stdout: take(&stdout),
            stderr: take(&stderr),
        })
    }
}

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
            // Never dropped: its guard ends it and removes its data when this
            // process exits.
            let server = DbServer::start();
            let uri = server.base();
            std::mem::forget(server);
            uri
        })
        .clone()
}

/// A `secantusd-rs` on a free loopback port with a temporary data directory
/// and a small cache, started through a shell guard that kills it when this
/// test process goes away, since statics are never dropped.
///
/// Every server is started with `--sync-on-commit`, as the local stack is:
/// without it a SIGKILL loses the last 20–40 ms of writes acknowledged with
/// `w=majority`. It costs little here: the whole `tests/it` suite took 147 s
/// with it against 138 s without (two runs each, 2 cores), though a test
/// that only writes (500 jobs by 8 claimers) takes about 30 % longer.
///
/// A restartable one can be SIGKILLed ([`DbServer::kill`]) and started again
/// on the same data and port ([`DbServer::restart`]): its data directory
/// outlives the server process, removed when the `DbServer` is dropped or
/// once this test process is gone.
pub struct DbServer {
    dir: PathBuf,
    /// `host:port`, picked by the server on its first start.
    addr: String,
    restartable: bool,
    running: Mutex<Option<Running>>,
}

/// One run of the server: its guard shell and the server's own pid.
struct Running {
    guard: Child,
    pid: i32,
}

impl DbServer {
    /// A server whose data goes with it.
    pub fn start() -> DbServer {
        DbServer::launch(false)
    }

    /// A server that can be killed and restarted on its data.
    pub fn start_restartable() -> DbServer {
        DbServer::launch(true)
    }

    fn launch(restartable: bool) -> DbServer {
        let dir = tempfile::Builder::new()
            .prefix("cap-test-db-")
            .tempdir()
            .unwrap()
            .keep();
        let (addr, running) = spawn_secantus(&dir, "127.0.0.1:0", restartable);
        shorten_transaction_lifetime(&base_uri(&addr));
        DbServer {
            dir,
            addr,
            restartable,
            running: Mutex::new(Some(running)),
        }
    }

    /// `mongodb://host:port/?replicaSet=secantus`.
    pub fn base(&self) -> String {
        base_uri(&self.addr)
    }

    /// The server process itself (not its guard shell), while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.running.lock().unwrap().as_ref().map(|r| r.pid)
    }

    /// SIGKILLs the server process itself and returns once it is dead (its
    /// sockets and files released); its data stays for [`DbServer::restart`].
    pub fn kill(&self) {
        assert!(
            self.restartable,
            "only a restartable server may be killed: its guard removes the data of any other"
        );
        let running = self.running.lock().unwrap().take();
        let Some(mut running) = running else {
            panic!("the server is not running")
        };
        let pid = nix::unistd::Pid::from_raw(running.pid);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).expect("SIGKILL the server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !process_gone(running.pid) {
            assert!(Instant::now() < deadline, "secantusd-rs survived SIGKILL");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop_guard(&mut running.guard);
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&self) {
        let mut slot = self.running.lock().unwrap();
        assert!(slot.is_none(), "the server is still running");
        let (addr, running) = spawn_secantus(&self.dir, &self.addr, self.restartable);
        assert_eq!(addr, self.addr, "restarted on another address");
        *slot = Some(running);
        drop(slot);
        shorten_transaction_lifetime(&self.base());
    }
}

impl Drop for DbServer {
    /// The guard's TERM trap kills the server; then the data goes.
    fn drop(&mut self) {
        if let Some(mut running) = self.running.lock().unwrap().take() {
            stop_guard(&mut running.guard);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base_uri(addr: &str) -> String {
    format!("mongodb://{addr}/?replicaSet=secantus")
}

fn stop_guard(guard: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(guard.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = guard.wait();
}

/// Whether `pid` has exited: no such process, or only its zombie left.
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('Z' | 'X')))
            .unwrap_or(true),
    }
}

/// Starts `secantusd-rs` on `addr` (port 0: a free one) under its guard
/// shell; returns the address it listens on and the run.
#[allow(clippy::zombie_processes)]
fn spawn_secantus(dir: &std::path::Path, addr: &str, restartable: bool) -> (String, Running) {
    let bin = which("secantusd-rs").unwrap_or_else(|| {
        panic!("secantusd-rs not found: run scripts/setup.sh (or set CAP_TEST_MONGO_URI)")
    });
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    // The guard ends the server when this test process exits, however it
    // exits, or when the guard is sent SIGTERM; the shared server's guard is
    // deliberately never waited for. A restartable server's data is removed
    // only once this test process is gone (else by `DbServer`'s drop).
    let remove = if restartable {
        format!(
            "kill -0 {} 2>/dev/null || rm -rf {}",
            std::process::id(),
            dir.display()
        )
    } else {
        format!("rm -rf {}", dir.display())
    };
    let script = format!(
        "{bin} --port {port} --host {host} --storage-path {dir}/data --cache-size 256M --log-level WARNING --sync-on-commit 2>>{dir}/server.log & pid=$!; \
         echo \"server-pid $pid\"; \
         trap 'kill -9 $pid 2>/dev/null; {remove}' EXIT; trap 'exit' TERM; \
         while kill -0 {parent} 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.5; done",
        bin = bin.display(),
        dir = dir.display(),
        parent = std::process::id()
    );
    let mut guard = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start secantusd-rs");
    let stdout = guard.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    // The guard names the server's pid; the server, where it listens.
    let (mut pid, mut listening) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(p) = line.strip_prefix("server-pid ") {
            pid = Some(p.trim().parse().expect("a pid"));
        } else if let Some(addr) = line.strip_prefix("secantusd-rs listening on ") {
            listening = Some(addr.trim().to_string());
        }
        if let (Some(pid), Some(addr)) = (pid, &listening) {
            std::thread::spawn(move || for _ in lines {});
            return (addr.clone(), Running { guard, pid });
        }
    }
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    panic!("secantusd-rs did not report its port; its log:\n{log}");
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
    own_server: Option<DbServer>,
}

impl TestDb {
    /// `certautopilot ARGS` run to completion as an operator would, against
    /// this database and its key ring, with nothing else in its environment.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin())
            .args(args)
            .env_clear()
            .env("CAP_MONGO_URI", &self.uri)
            .env("CAP_KEK_FILE", &self.kek_file)
            .output_within_limit()
            .expect("run certautopilot")
    }

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
            let server = DbServer::start();
            TestDb::on(&server.base(), hint, Some(server))
        };
        db.migrate().await
    }

    /// An empty database (not migrated) on a server of its own: a clean
    /// cluster to restore into. With `CAP_TEST_MONGO_URI` set, a fresh
    /// database on that server.
    pub fn empty_on_own_server(hint: &str) -> TestDb {
        if std::env::var_os("CAP_TEST_MONGO_URI").is_some() {
            return TestDb::fresh(hint);
        }
        let server = DbServer::start();
        TestDb::on(&server.base(), hint, Some(server))
    }

    /// Another empty database on this one's server.
    pub fn sibling(&self, hint: &str) -> TestDb {
        TestDb::on(&self.uri, hint, None)
    }

    /// A migrated database on a `secantusd-rs` of its own that the test may
    /// SIGKILL and restart on the same data ([`TestDb::server`]). Always a
    /// local server, `CAP_TEST_MONGO_URI` or not: the test must own the
    /// process.
    pub async fn on_restartable_server(hint: &str) -> TestDb {
        let server = DbServer::start_restartable();
        TestDb::on(&server.base(), hint, Some(server))
            .migrate()
            .await
    }

    /// The server of its own ([`TestDb::on_restartable_server`], …).
    pub fn server(&self) -> &DbServer {
        self.own_server
            .as_ref()
            .expect("this database is on the shared server")
    }

    fn on(base: &str, hint: &str, own_server: Option<DbServer>) -> TestDb {
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
            own_server,
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
    /// The thread collecting its stderr into `log`: done once the process
    /// has exited and its last line is in.
    log_reader: std::thread::JoinHandle<()>,
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
            // Tests call far faster than any client should; the rate-limit
            // tests set their own.
            .env("CAP_API_RATE_LIMIT", "1000000")
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
        let log_reader = std::thread::spawn(move || {
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
            log_reader,
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

    /// Waits for the process to exit, returning its exit code, with every
    /// line it wrote to stderr in its log (else a test reading the log right
    /// after could miss the last ones, its reason to exit among them).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                while !self.log_reader.is_finished() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
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

/// A CA named `ca_name`, and a certificate for `host` signed by it: (the
/// CA's PEM, the certificate, its key). For servers with a private CA.
pub fn private_ca_and_leaf(
    ca_name: &str,
    host: &str,
) -> (String, rcgen::Certificate, rcgen::KeyPair) {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec![host.into()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_pem, leaf, key)
}
