//! A real SMTP server on loopback for tests: aiosmtpd
//! (tests/smtp/receiver.py, installed by scripts/setup.sh) requiring
//! STARTTLS, then authentication, with a CA of the test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The receiver process; killed when dropped.
pub struct Receiver {
    child: Child,
    pub port: u16,
    out: tempfile::TempDir,
    _pki: tempfile::TempDir,
    /// The CA of the receiver's certificate (for `localhost`).
    pub ca_pem: String,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/aiosmtpd/bin/python");
    assert!(
        python.exists(),
        "aiosmtpd not at {}: run scripts/setup.sh",
        python.display()
    );
    python
}

/// A CA and a certificate for `localhost` signed by it: (CA PEM, cert, key).
pub fn pki() -> (String, String, String) {
    let (ca_pem, leaf, key) = super::private_ca_and_leaf("test SMTP CA", "localhost");
    (ca_pem, leaf.pem(), key.serialize_pem())
}

/// A receiver requiring STARTTLS and AUTH as `alerts` / `s3cret`,
/// answering 451 to the first `fail_first` messages.
pub fn start(fail_first: u32) -> Receiver {
    start_as(fail_first, false)
}

/// Starts the receiver on a free port; a port taken between our pick and
/// its bind (another test) makes it exit, and it is started again.
pub fn start_as(fail_first: u32, plain: bool) -> Receiver {
    let (ca_pem, cert, key) = pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), key).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp/receiver.py");
    for _ in 0..5 {
        let out = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new(python())
            .arg(&script)
            .arg(dir.path().join("cert.pem"))
            .arg(dir.path().join("key.pem"))
            .arg(port.to_string())
            .arg(out.path())
            .args(["alerts", "s3cret", &fail_first.to_string()])
            .args(plain.then_some("plain"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        if line.trim() == "ready" {
            return Receiver {
                child,
                port,
                out,
                _pki: dir,
                ca_pem,
            };
        }
        let _ = child.wait();
    }
    panic!("the SMTP receiver did not start in 5 tries");
}

/// The mails received so far, each with what the session said (TLS, login, recipients).
pub fn received(r: &Receiver) -> Vec<(String, serde_json::Value)> {
    let mut mails = Vec::new();
    for n in 0.. {
        let Ok(mail) = std::fs::read_to_string(r.out.path().join(format!("{n}.eml"))) else {
            break;
        };
        let meta = std::fs::read_to_string(r.out.path().join(format!("{n}.json"))).unwrap();
        mails.push((mail, serde_json::from_str(&meta).unwrap()));
    }
    mails
}
