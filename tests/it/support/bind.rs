//! A real authoritative DNS server for DNS-01 tests: Debian's `named`
//! (bind9) on a free loopback port, primary for one zone, taking dynamic
//! updates (RFC 2136) signed with one TSIG key.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Bind {
    /// host:port, TCP and UDP.
    pub addr: SocketAddr,
    pub zone: String,
    pub key_name: String,
    /// Base64, as in a BIND key file.
    pub key_secret: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Bind {
    pub fn start(zone: &str) -> Bind {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let addr = super::free_addr();
        let key_name = "certautopilot-test";
        let key_secret =
            base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("named.conf"),
            format!(
                r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
key "{key_name}" {{ algorithm hmac-sha256; secret "{key_secret}"; }};
zone "{zone}" {{
    type primary;
    file "{d}/zone.db";
    allow-update {{ key "{key_name}"; }};
}};
"#,
                port = addr.port()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("zone.db"),
            format!(
                "$TTL 60\n\
                 @ IN SOA ns1.{zone}. hostmaster.{zone}. 1 60 60 3600 60\n\
                 @ IN NS ns1.{zone}.\n\
                 ns1 IN A 127.0.0.1\n"
            ),
        )
        .unwrap();
        let child = Command::new("named")
            .args(["-g", "-n", "1", "-4", "-c"])
            .arg(dir.path().join("named.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("named.log")).unwrap())
            .spawn()
            .expect("named (Debian package bind9; scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "named never listened: {}",
                std::fs::read_to_string(dir.path().join("named.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Bind {
            addr,
            zone: zone.to_string(),
            key_name: key_name.to_string(),
            key_secret,
            child,
            _dir: dir,
        }
    }

    /// The TXT values `name` has, as `dig` sees them over TCP.
    pub fn txt(&self, name: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args(["+tcp", "+short", "-p", &self.addr.port().to_string()])
            .arg(format!("@{}", self.addr.ip()))
            .args([name, "TXT"])
            .output()
            .expect("dig (Debian package bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
