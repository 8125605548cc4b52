//! A real ACME server for tests: Debian's `pebble` with `pebble-challtestsrv`
//! as its DNS (every name resolves to 127.0.0.1, no AAAA), bound to
//! loopback, `PEBBLE_VA_NOSLEEP=1`. Pebble validates HTTP-01 challenges on
//! the port the test gives, where the test's `api` (or load balancer) listens.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed Pebble's own HTTPS listener (an issuer's
    /// `ca_bundle_pem`).
    pub listener_ca_pem: String,
    /// Pebble's management interface (`/roots/0` is the issuing root).
    pub management: String,
    /// pebble-challtestsrv's management interface (`/add-a`, …).
    pub challtest: String,
    children: Vec<Child>,
    _dir: tempfile::TempDir,
}

/// How a test's Pebble behaves. The default is Pebble's own: 5 % of nonces
/// rejected, 5-year certificates, names resolved by pebble-challtestsrv.
#[derive(Clone, Debug)]
pub struct PebbleOptions {
    /// The percentage of nonces rejected as `badNonce`.
    pub nonce_reject_percent: u32,
    /// How long certificates are valid (Pebble's
    /// `certificateValidityPeriod`), so a test can watch a renewal window
    /// open; `None` for Pebble's default, 5 years.
    pub validity_secs: Option<u64>,
    /// host:port of a DNS server to resolve names through (a test's bind9:
    /// DNS-01 then reads the records it holds) instead of challtestsrv.
    pub dns_server: Option<String>,
    /// External account binding required, with this key id and HMAC key
    /// (base64url, as Pebble's `externalAccountMACKeys` takes it).
    pub eab: Option<(String, String)>,
}

impl Default for PebbleOptions {
    fn default() -> PebbleOptions {
        PebbleOptions {
            nonce_reject_percent: 5,
            validity_secs: None,
            dns_server: None,
            eab: None,
        }
    }
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port`, rejecting that
    /// percentage of nonces as `badNonce` (Pebble's default is 5).
    pub fn start(http_port: u16, nonce_reject_percent: u32) -> Pebble {
        Pebble::start_with(
            http_port,
            &PebbleOptions {
                nonce_reject_percent,
                ..PebbleOptions::default()
            },
        )
    }

    /// Starts Pebble validating HTTP-01 on `http_port`, as `options` say.
    pub fn start_with(http_port: u16, options: &PebbleOptions) -> Pebble {
        // Its ports are picked free and then bound by Pebble: another test
        // can take one in between, and Pebble then exits. Start again on
        // fresh ports.
        for attempt in 1..=3 {
            if let Some(pebble) = Pebble::try_start(http_port, options) {
                return pebble;
            }
            eprintln!("pebble: did not come up (attempt {attempt}); starting again on fresh ports");
        }
        panic!("Pebble did not start in 3 tries");
    }

    fn try_start(http_port: u16, options: &PebbleOptions) -> Option<Pebble> {
        let dir = tempfile::tempdir().unwrap();
        listener_certificate(dir.path());
        let free = || super::free_addr().port();
        let (acme, mgmt, tls, dns, chall_mgmt) = (free(), free(), free(), free(), free());
        std::fs::write(
            dir.path().join("pebble.json"),
            serde_json::json!({
                "pebble": {
                    "listenAddress": format!("127.0.0.1:{acme}"),
                    "managementListenAddress": format!("127.0.0.1:{mgmt}"),
                    "certificate": dir.path().join("cert.pem"),
                    "privateKey": dir.path().join("key.pem"),
                    "httpPort": http_port,
                    "tlsPort": tls,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": options.eab.is_some(),
                    "externalAccountMACKeys": options.eab.iter().map(|(kid, key)| (kid.clone(), serde_json::json!(key))).collect::<serde_json::Map<_, _>>(),
                    "certificateValidityPeriod": options.validity_secs.unwrap_or(157_766_400),
                }
            })
            .to_string(),
        )
        .unwrap();
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-management", &format!("127.0.0.1:{chall_mgmt}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (Debian package pebble; scripts/setup.sh installs it)");
        let pebble = Command::new("pebble")
            .args(["-config", dir.path().join("pebble.json").to_str().unwrap()])
            .args([
                "-dnsserver",
                &options
                    .dns_server
                    .clone()
                    .unwrap_or(format!("127.0.0.1:{dns}")),
            ])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                options.nonce_reject_percent.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble (Debian package pebble; scripts/setup.sh installs it)");
        let mut started = Pebble {
            directory: format!("https://127.0.0.1:{acme}/dir"),
            listener_ca_pem: std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
            management: format!("https://127.0.0.1:{mgmt}"),
            challtest: format!("http://127.0.0.1:{chall_mgmt}"),
            children: vec![challtestsrv, pebble],
            _dir: dir,
        };
        // Dropped (both killed) when it did not come up.
        let listening = [acme, mgmt, chall_mgmt]
            .into_iter()
            .all(|port| wait_listening(port, &mut started.children));
        // challtestsrv opens its UDP DNS listener last; Pebble resolves over
        // UDP, and a validation that found no answer would fail the order.
        (listening && wait_answering_dns(dns)).then_some(started)
    }

    /// The root that issued every certificate, from the management interface.
    pub async fn issuing_root_pem(&self) -> String {
        self.https_client()
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Pebble's own record of a certificate (`Status`: `Valid` or
    /// `Revoked`, with `Reason`), by serial (hex, as the API shows it).
    pub async fn certificate_status(&self, serial_hex: &str) -> serde_json::Value {
        self.https_client()
            .get(format!(
                "{}/cert-status-by-serial/{serial_hex}",
                self.management
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(serde_json::Value::Null)
    }

    /// Makes `host` resolve to `ip` (e.g. an address where nothing listens).
    pub async fn resolve(&self, host: &str, ip: &str) {
        reqwest::Client::new()
            .post(format!("{}/add-a", self.challtest))
            .json(&serde_json::json!({ "host": host, "addresses": [ip] }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.listener_ca_pem.as_bytes()).unwrap(),
            )
            .build()
            .unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `port` listens within 20 s; `false` at once when one of
/// `children` has exited (it could not bind).
fn wait_listening(port: u16, children: &mut [std::process::Child]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let exited = children
            .iter_mut()
            .any(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited || Instant::now() >= deadline {
            eprintln!("pebble: port {port} never listened");
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Waits until something answers a DNS query over UDP on loopback `port`.
fn wait_answering_dns(port: u16) -> bool {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // id 1, RD, one question: "a.test" A IN.
    let query =
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut answer = [0u8; 512];
    loop {
        let _ = socket.send_to(query, ("127.0.0.1", port));
        if socket.recv(&mut answer).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            eprintln!("pebble: DNS on port {port} never answered");
            return false;
        }
    }
}

/// A private CA and a certificate for 127.0.0.1/localhost, signed by it,
/// for Pebble's HTTPS listener (`ca.pem`, `cert.pem`, `key.pem` in `dir`).
pub fn listener_certificate(dir: &Path) -> PathBuf {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let new_key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &new_key,
            &[
                "-subj",
                "/CN=test listener CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req", "-x509"][..],
            &new_key,
            &[
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            &[
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
            ],
            &["-keyout", "key.pem", "-out", "cert.pem"],
        ]
        .concat(),
    );
    dir.join("ca.pem")
}
