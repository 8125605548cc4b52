//! SIEM forwarding to a real rsyslog (Debian's `rsyslog`) on loopback, and
//! to a webhook: every record arrives, in order, across a forwarder crash.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{self, OutputWithin, Proc, TestDb};
use certautopilot::audit::{Audit, Event, AUDIT_COLLECTION};
use mongodb::bson::doc;
use nix::sys::signal::Signal;

/// rsyslogd in the foreground, receiving RFC 6587 octet-counted TCP on a
/// loopback port and writing each message, raw, as one line of `out`.
pub struct Rsyslog {
    child: Child,
    pub port: u16,
    pub out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Rsyslog {
    pub fn start() -> Rsyslog {
        let dir = tempfile::tempdir().unwrap();
        let port = support::free_addr().port();
        let out = dir.path().join("received.log");
        let conf = dir.path().join("rsyslog.conf");
        std::fs::write(
            &conf,
            format!(
                r#"global(workDirectory="{dir}")
module(load="imtcp")
input(type="imtcp" port="{port}" address="127.0.0.1")
template(name="raw" type="string" string="%rawmsg%\n")
*.* action(type="omfile" file="{out}" template="raw")
"#,
                dir = dir.path().display(),
                out = out.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/rsyslogd")
            .args([
                "-n",
                "-i",
                &dir.path().join("pid").display().to_string(),
                "-f",
            ])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("rsyslogd (Debian package rsyslog; scripts/setup.sh installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "rsyslogd did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Rsyslog {
            child,
            port,
            out,
            _dir: dir,
        }
    }

    /// The `seq` of every message received so far, in arrival order.
    pub fn received(&self) -> Vec<i64> {
        seqs(&std::fs::read_to_string(&self.out).unwrap_or_default())
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seqs(text: &str) -> Vec<i64> {
    text.lines()
        .filter_map(|l| l.split("seq=\"").nth(1))
        .filter_map(|s| s.split('"').next())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// What a receiver that drops duplicates by `seq` keeps: it must be every
/// record, each first seen in order.
fn assert_complete_in_order(arrived: &[i64], total: i64) {
    let mut seen = BTreeSet::new();
    let mut firsts = Vec::new();
    for s in arrived {
        if seen.insert(*s) {
            firsts.push(*s);
        }
    }
    assert_eq!(
        firsts,
        (1..=total).collect::<Vec<_>>(),
        "every record, in order"
    );
}

async fn append(audit: &Audit, from: i64, to: i64) {
    for i in from..=to {
        let event =
            Event::new("test", "thing.changed", format!("things/{i}")).with(doc! { "i": i });
        audit.append(&event).await.unwrap();
    }
}

async fn total(db: &TestDb) -> i64 {
    Audit::new(db.store().await).head().await.unwrap().0
}

/// Whether `instance` has recorded its `leader.takeover`. The scheduler
/// appends that record itself, possibly after forwarding began, so a test
/// compares what arrived with the log's total only once it is there:
/// before, the total can still grow by one.
async fn took_over(db: &TestDb, instance: &str) -> bool {
    let filter = doc! { "action": "leader.takeover", "actor": instance };
    let audit = db.store().await.collection(AUDIT_COLLECTION);
    audit.count_documents(filter).await.unwrap() > 0
}

#[tokio::test]
async fn syslog_receives_every_record_in_order_across_a_forwarder_crash() {
    let rsyslog = Rsyslog::start();
    let db = TestDb::migrated("siem_syslog").await;
    let audit = Audit::new(db.store().await);
    append(&audit, 1, 400).await;

    let addr = format!("127.0.0.1:{}", rsyslog.port);
    let env = [
        ("CAP_SIEM_SYSLOG_ADDR", addr.as_str()),
        ("CAP_SIEM_BATCH", "20"),
        ("CAP_SIEM_POLL_MS", "50"),
        ("CAP_LEADER_LEASE_SECS", "3"),
    ];
    let first = Proc::start("scheduler", &db, "forwarder-1", &env);
    let midway = support::wait_until(Duration::from_secs(30), || async {
        rsyslog.received().len() >= 100
    })
    .await;
    assert!(midway, "forwarding began; log:\n{}", first.log_text());
    first.signal(Signal::SIGKILL);
    drop(first);
    let at_crash = rsyslog.received().len();
    // More history while no forwarder runs.
    append(&audit, 401, 500).await;

    let second = Proc::start("scheduler", &db, "forwarder-2", &env);
    let all = support::wait_until(Duration::from_secs(60), || async {
        if !took_over(&db, "forwarder-2").await {
            return false;
        }
        let n = total(&db).await;
        rsyslog.received().iter().collect::<BTreeSet<_>>().len() as i64 == n
    })
    .await;
    assert!(all, "every record arrived; log:\n{}", second.log_text());
    assert!(
        at_crash < 500,
        "the crash came mid-stream ({at_crash} received)"
    );
    assert_complete_in_order(&rsyslog.received(), total(&db).await);

    // Each message is RFC 5424 with the record's seq and hash.
    let text = std::fs::read_to_string(&rsyslog.out).unwrap();
    let line = text.lines().next().unwrap();
    assert!(line.starts_with("<110>1 "), "{line}");
    assert!(line.contains("[audit@32473 seq=\"1\" hash=\""), "{line}");
}

/// A minimal HTTPS receiver (rustls, a certificate for 127.0.0.1 signed by
/// a private CA): answers 200 to each POST and keeps the bodies. Returns
/// its URL, the CA and the bodies.
async fn webhook_receiver(
    dir: &std::path::Path,
) -> (String, PathBuf, Arc<Mutex<Vec<serde_json::Value>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

    let (acceptor, ca) = tls_acceptor(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/audit", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let sink = bodies.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut stream = tokio::io::BufReader::new(tls);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        stream.read_line(&mut line).await.unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                    stream.flush().await.unwrap();
                }
            });
        }
    });
    (url, ca, bodies)
}

#[tokio::test]
async fn the_webhook_receives_json_batches_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (url, ca, bodies) = webhook_receiver(dir.path()).await;
    let db = TestDb::migrated("siem_webhook").await;
    append(&Audit::new(db.store().await), 1, 120).await;
    let env = [
        ("CAP_SIEM_WEBHOOK_URL", url.as_str()),
        ("CAP_SIEM_WEBHOOK_CA_FILE", ca.to_str().unwrap()),
        ("CAP_SIEM_BATCH", "50"),
        ("CAP_SIEM_POLL_MS", "50"),
    ];
    let forwarder = Proc::start("scheduler", &db, "webhook-forwarder", &env);
    let arrived = || -> Vec<i64> {
        bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["records"].as_array().unwrap().clone())
            .map(|r| r["seq"].as_i64().unwrap())
            .collect()
    };
    let done = support::wait_until(Duration::from_secs(30), || async {
        took_over(&db, "webhook-forwarder").await
            && arrived().iter().collect::<BTreeSet<_>>().len() as i64 == total(&db).await
    })
    .await;
    assert!(done, "log:\n{}", forwarder.log_text());
    assert_complete_in_order(&arrived(), total(&db).await);
    let first = bodies.lock().unwrap()[0]["records"][0].clone();
    assert!(first["hash"].as_str().unwrap().len() == 64, "{first}");
}

#[test]
fn a_plain_http_webhook_is_refused_at_configuration() {
    let secret_url = "http://127.0.0.1:9/audit?token=s3cr3t";
    let out = std::process::Command::new(support::bin())
        .arg("scheduler")
        .env_clear()
        .env("CAP_MONGO_URI", "mongodb://127.0.0.1:1/x")
        .env("CAP_KEK_FILE", "/nonexistent/kek.json")
        .env("CAP_SIEM_WEBHOOK_URL", secret_url)
        .output_within_limit()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("CAP_SIEM_WEBHOOK_URL") && stderr.contains("https://"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cr3t"),
        "the URL is not echoed: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// A rustls acceptor for `cert.pem`/`key.pem` made in `dir` by a private CA;
/// returns it and the CA.
fn tls_acceptor(dir: &std::path::Path) -> (tokio_rustls::TlsAcceptor, PathBuf) {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let ca = support::pebble::listener_certificate(dir);
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from_pem_file(&cert).unwrap()],
        PrivateKeyDer::from_pem_file(&key).unwrap(),
    )
    .unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca)
}

/// A TLS syslog receiver (rustls, a certificate made by `openssl` for
/// 127.0.0.1): parses RFC 6587 octet-counted frames and keeps each message.
async fn tls_receiver(dir: &std::path::Path) -> (u16, PathBuf, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};

    let (acceptor, ca) = tls_acceptor(dir);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let sink = messages.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, sink) = (acceptor.clone(), sink.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut reader = tokio::io::BufReader::new(tls);
                loop {
                    let mut len = Vec::new();
                    if reader.read_until(b' ', &mut len).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let len: usize = String::from_utf8_lossy(&len).trim().parse().unwrap();
                    let mut message = vec![0; len];
                    reader.read_exact(&mut message).await.unwrap();
                    sink.lock()
                        .unwrap()
                        .push(String::from_utf8(message).unwrap());
                }
            });
        }
    });
    (port, ca, messages)
}

#[tokio::test]
async fn syslog_over_tls_trusts_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (port, ca, messages) = tls_receiver(dir.path()).await;
    let db = TestDb::migrated("siem_tls").await;
    append(&Audit::new(db.store().await), 1, 50).await;
    let addr = format!("127.0.0.1:{port}");
    let env = [
        ("CAP_SIEM_SYSLOG_ADDR", addr.as_str()),
        ("CAP_SIEM_SYSLOG_TLS", "true"),
        ("CAP_SIEM_SYSLOG_CA_FILE", ca.to_str().unwrap()),
        ("CAP_SIEM_POLL_MS", "50"),
    ];
    let forwarder = Proc::start("scheduler", &db, "tls-forwarder", &env);
    let done = support::wait_until(Duration::from_secs(30), || async {
        if !took_over(&db, "tls-forwarder").await {
            return false;
        }
        let n = total(&db).await;
        seqs(&messages.lock().unwrap().join("\n"))
            .iter()
            .collect::<BTreeSet<_>>()
            .len() as i64
            == n
    })
    .await;
    assert!(done, "log:\n{}", forwarder.log_text());
    let arrived = seqs(&messages.lock().unwrap().join("\n"));
    assert_complete_in_order(&arrived, total(&db).await);
    drop(forwarder);

    // Without the CA the receiver is not trusted, and nothing is sent.
    let db = TestDb::migrated("siem_tls_untrusted").await;
    append(&Audit::new(db.store().await), 1, 5).await;
    let before = messages.lock().unwrap().len();
    let untrusting = Proc::start("scheduler", &db, "tls-untrusting", &env[..2]);
    let refused = support::wait_until(Duration::from_secs(20), || async {
        !untrusting
            .log_lines_with(&["forwarding audit records failed", "certificate"])
            .is_empty()
    })
    .await;
    assert!(refused, "log:\n{}", untrusting.log_text());
    assert_eq!(messages.lock().unwrap().len(), before);
}
