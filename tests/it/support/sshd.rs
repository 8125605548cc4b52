//! Debian's OpenSSH server on loopback, as the host an `ssh` target
//! uploads to: a host key of its own, one authorized client key, the
//! internal SFTP server, logins as the user the tests run as. Stopped when
//! dropped.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub struct Sshd {
    pub port: u16,
    /// Who logs in: the user the tests run as.
    pub user: String,
    /// The host's public key, as the target pins it.
    pub host_key: String,
    /// What `ssh-keygen -lf` prints for it.
    pub host_key_sha256: String,
    /// The client's private key (OpenSSH, no passphrase), authorized.
    pub client_key: String,
    child: Child,
}

/// A fresh ed25519 key pair in `dir` as `name` and `name.pub`: (private,
/// public line).
pub fn key_pair(dir: &Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen (scripts/setup.sh installs openssh-client)");
    assert!(made.success());
    (
        std::fs::read_to_string(&path).unwrap(),
        std::fs::read_to_string(path.with_extension("pub"))
            .unwrap()
            .trim()
            .to_string(),
    )
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        let (_, host_key) = key_pair(dir, "host");
        let (client_key, client_pub) = key_pair(dir, "client");
        std::fs::write(dir.join("authorized_keys"), format!("{client_pub}\n")).unwrap();
        let printed = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(dir.join("host.pub"))
            .output()
            .unwrap();
        let host_key_sha256 = String::from_utf8_lossy(&printed.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string();
        let port = super::free_addr().port();
        let d = dir.display();
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n\
                 AuthorizedKeysFile {d}/authorized_keys\nPidFile none\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
            ),
        )
        .unwrap();
        // Run as root, sshd wants its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd (scripts/setup.sh installs openssh-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd listens on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_string();
        Sshd {
            port,
            user,
            host_key,
            host_key_sha256,
            client_key,
            child,
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
