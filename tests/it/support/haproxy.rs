//! A real load balancer in front of several `api` processes: Debian's
//! haproxy, round robin, health-checking `GET /healthz`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

pub struct Haproxy {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Listens on `front` and forwards to `backends`.
    pub fn start(front: SocketAddr, backends: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let servers: String = backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("    server api{i} {b} check inter 500 fall 2 rise 1\n"))
            .collect();
        let conf = format!(
            "global\n    maxconn 1000\ndefaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
             frontend web\n    bind {front}\n    default_backend apis\n\
             backend apis\n    balance roundrobin\n    option httpchk GET /healthz\n    http-check expect status 200\n{servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (Debian package haproxy; scripts/setup.sh installs it)");
        Haproxy { child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
