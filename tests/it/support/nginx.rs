//! nginx from Debian on loopback, serving one certificate directory: the
//! server the agent and ssh targets deliver to in the tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use certautopilot::domain::drift::Endpoint;
use certautopilot::net::tls_probe::{probe, Served};

pub const NGINX: &str = "/usr/sbin/nginx";

/// nginx serving `dir`'s fullchain.pem and key.pem on 127.0.0.1:`port`;
/// stopped when dropped.
pub struct Nginx {
    conf: PathBuf,
    child: Child,
}

impl Nginx {
    pub fn start(work: &Path, certs: &Path, port: u16) -> Nginx {
        let conf = work.join("nginx.conf");
        let w = work.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off;\nworker_processes 1;\npid {w}/nginx.pid;\nerror_log {w}/error.log;\n\
                 events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {w}/body;\n\
                 proxy_temp_path {w}/proxy;\n  fastcgi_temp_path {w}/fastcgi;\n  uwsgi_temp_path {w}/uwsgi;\n\
                 scgi_temp_path {w}/scgi;\n  server {{\n    listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {c}/fullchain.pem;\n    ssl_certificate_key {c}/key.pem;\n\
                 return 200 \"ok\";\n  }}\n}}\n",
                c = certs.display()
            ),
        )
        .unwrap();
        let child = Command::new(NGINX)
            .args(["-e", &format!("{w}/error.log"), "-c"])
            .arg(&conf)
            .spawn()
            .expect("start nginx (scripts/setup.sh installs it)");
        Nginx { conf, child }
    }

    pub fn reload_command(&self) -> Vec<String> {
        vec![
            NGINX.into(),
            "-e".into(),
            self.conf.with_file_name("error.log").display().to_string(),
            "-c".into(),
            self.conf.display().to_string(),
            "-s".into(),
            "reload".into(),
        ]
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a server had before CertAutoPilot: a self-signed certificate for
/// `name` in `dir` (the four files an agent or ssh target writes); its PEM.
pub fn self_signed_set(dir: &Path, name: &str) -> String {
    let cert = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("fullchain.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("chain.pem"), "").unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    cert.cert.pem()
}

/// The fingerprint of what 127.0.0.1:`port` serves for `name`, if anything.
pub async fn served(port: u16, name: &str) -> Option<String> {
    let endpoint = Endpoint {
        host: "127.0.0.1".into(),
        port,
        sni: Some(name.into()),
    };
    match probe(&endpoint, Duration::from_secs(5), &super::test_egress()).await {
        Served::Leaf {
            fingerprint_sha256, ..
        } => Some(fingerprint_sha256),
        Served::Unreachable(_) => None,
    }
}

/// Whether 127.0.0.1:`port` comes to serve `fingerprint` for `name` within
/// ten seconds: after a reload, nginx's old worker can still take a
/// connection or two until it has seen its signal.
pub async fn comes_to_serve(port: u16, name: &str, fingerprint: &str) -> bool {
    super::wait_until(Duration::from_secs(10), || async {
        served(port, name).await.as_deref() == Some(fingerprint)
    })
    .await
}
