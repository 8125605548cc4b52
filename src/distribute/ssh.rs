//! An `ssh` target: the certificate files uploaded over SFTP to
//! `<directory>/<certificate id>/` on a host whose key is pinned, the
//! previous set kept beside them as `*.previous`, and a reload command run
//! over SSH (docs/distribution.md).
//!
//! The transfers are made by OpenSSH's own `sftp` and `ssh`, not an SSH
//! library: the maintained Rust client would bring 47 crates of its own
//! cryptography and 19 second versions of ours for one delivery kind
//! (docs/supply-chain.md), where OpenSSH is the client every such host is
//! administered with. Each run gets a private directory (0700, under
//! `$TMPDIR`: on Kubernetes the chart's memory-backed `/tmp`) holding the
//! target's private key, the pinned key as the only known host, the batch
//! and the files to upload; it is removed when the run ends. No
//! configuration file is read (`-F /dev/null`), no agent, proxy,
//! forwarding or password is used, and the host is reached at the address
//! the egress policy judged, so a name cannot resolve elsewhere.
//!
//! The live files are only ever replaced by a rename, so a reader sees the
//! old set or the new, never a missing file; `*.previous` are hard links to
//! what was live, made once per serial, so a retried upload does not take
//! the new files for the old.

use std::net::IpAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use tokio::process::Command;

use super::http::{egress_failure, DeliveryError};
use crate::domain::target_settings::{
    directory_problem, host_key_problem, parse_host_key, reload_command_problem, HOST_KEY_TYPES,
    SSH_USER_PATTERN,
};
use crate::net::egress::EgressPolicy;

/// The files written, in the order they are replaced (the key last, so a
/// reader never pairs a new key with an old certificate for long).
pub const FILE_NAMES: [&str; 4] = ["cert.pem", "chain.pem", "fullchain.pem", "key.pem"];
/// Their modes: the key readable by its owner only.
const CERT_MODE: &str = "644";
const KEY_MODE: &str = "600";
/// The suffix of the kept set.
pub const PREVIOUS_SUFFIX: &str = ".previous";
/// OpenSSH's client, where Debian (and the image) puts it.
pub const SSH: &str = "/usr/bin/ssh";
pub const SFTP: &str = "/usr/bin/sftp";
/// How long one `sftp` or `ssh` run may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The name the pinned key is filed under (the host is reached by address).
const HOST_ALIAS: &str = "certautopilot-target";
/// Where an `ssh` target's files go, and as whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The host's public key as OpenSSH writes it (`ssh-ed25519 AAAA…`).
    pub host_key: String,
}

/// Why `pem` is not a private key the client can use without a prompt.
pub fn private_key_problem(pem: &str) -> Option<String> {
    let pem = pem.trim();
    const OPENSSH: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
    const OTHERS: [&str; 3] = [
        "-----BEGIN PRIVATE KEY-----",
        "-----BEGIN EC PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----",
    ];
    if pem.starts_with(OPENSSH) {
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .concat();
        let bytes = match BASE64.decode(body.trim()) {
            Ok(b) => b,
            Err(e) => return Some(format!("the key is not base64: {e}")),
        };
        const MAGIC: &[u8] = b"openssh-key-v1\0";
        let Some(rest) = bytes.strip_prefix(MAGIC) else {
            return Some("not an OpenSSH private key".into());
        };
        let cipher = rest
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| rest.get(4..4 + n));
        return match cipher {
            Some(b"none") => None,
            Some(_) => {
                Some("the key has a passphrase: give it without one (ssh-keygen -p -N '')".into())
            }
            None => Some("not an OpenSSH private key".into()),
        };
    }
    if OTHERS.iter().any(|armor| pem.starts_with(armor)) {
        if pem.contains("ENCRYPTED") {
            return Some("the key has a passphrase: give it without one".into());
        }
        return None;
    }
    Some("expected a PEM private key (-----BEGIN OPENSSH PRIVATE KEY----- …)".into())
}

/// One file to put in place.
pub struct Upload<'a> {
    pub name: &'a str,
    pub contents: &'a [u8],
}

/// A connection's worth of settings: the private directory with the key,
/// the pinned host key and the address to reach. Removed when dropped.
pub struct SshClient {
    work: tempfile::TempDir,
    address: IpAddr,
    /// What verifies the pinned key's type (`HostKeyAlgorithms`).
    host_key_algorithms: &'static str,
    host: SshHost,
    timeout: Duration,
}

impl SshClient {
    /// Resolves the host through the egress policy and lays out the
    /// private directory. Nothing is sent yet.
    pub async fn new(
        egress: &EgressPolicy,
        host: &SshHost,
        private_key: &[u8],
        timeout: Duration,
    ) -> Result<SshClient, DeliveryError> {
        let refused = |e: std::io::Error| DeliveryError::Transient(format!("local files: {e}"));
        let addrs = egress
            .resolve(&host.host, host.port)
            .await
            .map_err(egress_failure)?;
        let address = addrs
            .first()
            .map(|a| a.ip())
            .ok_or_else(|| DeliveryError::Transient(format!("{}: no address", host.host)))?;
        if let Some(problem) = host_key_problem(&host.host_key) {
            return Err(DeliveryError::Refused(format!(
                "the pinned host key {problem}"
            )));
        }
        if !crate::domain::validate::matches(SSH_USER_PATTERN, &host.user) {
            return Err(DeliveryError::Refused(format!(
                "the user {:?} is not a user name",
                host.user
            )));
        }
        let (kind, blob) = parse_host_key(&host.host_key)
            .map_err(|e| DeliveryError::Refused(format!("the pinned host key: {e}")))?;
        let host_key_algorithms = HOST_KEY_TYPES
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or("ssh-ed25519", |(_, algorithms)| *algorithms);
        let work = tempfile::Builder::new()
            .prefix("certautopilot-ssh-")
            .tempdir()
            .map_err(refused)?;
        let mut key = private_key.to_vec();
        if !key.ends_with(b"\n") {
            key.push(b'\n');
        }
        write_private(&work.path().join("identity"), &key).map_err(refused)?;
        zeroize::Zeroize::zeroize(&mut key);
        // Written from the parsed key, not the stored text: one line, one key.
        std::fs::write(
            work.path().join("known_hosts"),
            format!("{HOST_ALIAS} {kind} {}\n", BASE64.encode(&blob)),
        )
        .map_err(refused)?;
        std::fs::create_dir(work.path().join("upload")).map_err(refused)?;
        Ok(SshClient {
            work,
            address,
            host_key_algorithms,
            host: host.clone(),
            timeout,
        })
    }

    /// Keeps the live set as `*.previous` (hard links), replacing an older
    /// kept set; a file not there yet keeps nothing.
    pub async fn keep_previous(&self, dir: &str) -> Result<(), DeliveryError> {
        let mut batch = Batch::default();
        for name in FILE_NAMES {
            let live = format!("{dir}/{name}");
            let kept = format!("{live}{PREVIOUS_SUFFIX}");
            // `-`: go on when it fails (nothing kept yet, nothing live yet).
            batch.line("-rm", &[&kept])?;
            batch.line("-ln", &[&live, &kept])?;
        }
        self.sftp(&batch).await.map(|_| ())
    }

    /// Uploads `files` into `dir` (created if need be), each under a
    /// temporary name, then renames them over the live ones; then runs
    /// `reload`. When the reload fails the kept set is put back (and
    /// reloaded) before the error is answered.
    pub async fn install(
        &self,
        dir: &str,
        files: &[Upload<'_>],
        reload: Option<&str>,
    ) -> Result<(), DeliveryError> {
        let upload = self.work.path().join("upload");
        let mut batch = Batch::default();
        batch.line("-mkdir", &[dir])?;
        for file in files {
            let local = upload.join(file.name);
            write_private(&local, file.contents)
                .map_err(|e| DeliveryError::Transient(format!("local files: {e}")))?;
            let mode = if file.name == "key.pem" {
                KEY_MODE
            } else {
                CERT_MODE
            };
            let staged = format!("{dir}/.{}.certautopilot-new", file.name);
            batch.line("put", &[&local.display().to_string(), &staged])?;
            batch.mode(mode, &staged)?;
        }
        for file in files {
            batch.line(
                "rename",
                &[
                    &format!("{dir}/.{}.certautopilot-new", file.name),
                    &format!("{dir}/{}", file.name),
                ],
            )?;
        }
        let sent = self.sftp(&batch).await;
        for file in files {
            let _ = std::fs::remove_file(upload.join(file.name));
        }
        match sent {
            Ok(_) => {}
            // A retry uploads the whole set again.
            Err(e) if e.is_transient() => return Err(e),
            // Some files may be renamed already: never leave a new
            // certificate beside an old key.
            Err(e) => {
                let undone = match self.roll_back(dir, None).await {
                    Ok(()) => "the previous files were put back".to_string(),
                    Err(back) => format!("and the previous files are not back: {back}"),
                };
                return Err(DeliveryError::Refused(format!("{e}; {undone}")));
            }
        }
        let why = match self.reload(reload).await {
            Ok(()) => return Ok(()),
            // The host away: a retry uploads again (the kept set stays as
            // it was) and reloads again.
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => e,
        };
        let undone = match self.roll_back(dir, reload).await {
            Ok(()) => "the previous files were put back".to_string(),
            Err(e) => format!("and they could not be put back: {e}"),
        };
        Err(DeliveryError::Refused(format!("{why}; {undone}")))
    }

    /// Puts the kept set back over the live files (the kept set stays, so
    /// this can be repeated), then runs `reload`. Refused, changing
    /// nothing, when any kept file is missing (a first delivery has
    /// nothing to put back).
    pub async fn roll_back(&self, dir: &str, reload: Option<&str>) -> Result<(), DeliveryError> {
        let mut listing = Batch::default();
        listing.line("ls -1a", &[dir])?;
        let listed = self.sftp(&listing).await?;
        let present: Vec<&str> = listed
            .lines()
            .map(|l| l.trim().rsplit('/').next().unwrap_or_default())
            .collect();
        if let Some(missing) = FILE_NAMES
            .iter()
            .map(|n| format!("{n}{PREVIOUS_SUFFIX}"))
            .find(|kept| !present.contains(&kept.as_str()))
        {
            return Err(DeliveryError::Refused(format!(
                "nothing to roll back to: {dir}/{missing} is missing"
            )));
        }
        let mut batch = Batch::default();
        for name in FILE_NAMES {
            let restored = format!("{dir}/.{name}.certautopilot-old");
            let live = format!("{dir}/{name}");
            batch.line("-rm", &[&restored])?;
            batch.line("ln", &[&format!("{live}{PREVIOUS_SUFFIX}"), &restored])?;
            batch.line("rename", &[&restored, &live])?;
        }
        self.sftp(&batch).await?;
        self.reload(reload).await
    }

    async fn reload(&self, command: Option<&str>) -> Result<(), DeliveryError> {
        let Some(command) = command else {
            return Ok(());
        };
        // One argument to ssh, run by the login shell of the target's own
        // account on its own host: checked again here so that a command
        // the database supplies cannot carry a second line.
        if let Some(problem) = reload_command_problem(command) {
            return Err(DeliveryError::Refused(format!(
                "the reload command {problem}"
            )));
        }
        let mut ssh = Command::new(SSH);
        ssh.args(self.options())
            .arg(HOST_ALIAS)
            .arg("--")
            .arg(command);
        self.run(ssh, "the reload command").await.map(|_| ())
    }

    /// Runs `batch` in `sftp -b`; answers what it printed.
    async fn sftp(&self, batch: &Batch) -> Result<String, DeliveryError> {
        let path = self.work.path().join("batch");
        std::fs::write(&path, &batch.0)
            .map_err(|e| DeliveryError::Transient(format!("local files: {e}")))?;
        let mut sftp = Command::new(SFTP);
        // Not -q: it would silence why a connection was refused too.
        sftp.arg("-b")
            .arg(&path)
            .arg("-S")
            .arg(SSH)
            .args(self.options())
            .arg(HOST_ALIAS);
        self.run(sftp, "sftp").await
    }

    /// What every `ssh` and `sftp` run is given: nothing from the
    /// environment, the pinned key only, the judged address, no prompts.
    fn options(&self) -> Vec<String> {
        let file = |name: &str| self.work.path().join(name).display().to_string();
        let algorithms = self.host_key_algorithms;
        let mut args = vec!["-F".to_string(), "/dev/null".to_string()];
        for option in [
            format!("Hostname={}", self.address),
            format!("Port={}", self.host.port),
            format!("User={}", self.host.user),
            format!("HostKeyAlias={HOST_ALIAS}"),
            format!("UserKnownHostsFile={}", file("known_hosts")),
            "GlobalKnownHostsFile=/dev/null".into(),
            "StrictHostKeyChecking=yes".into(),
            "CheckHostIP=no".into(),
            "UpdateHostKeys=no".into(),
            format!("HostKeyAlgorithms={algorithms}"),
            format!("IdentityFile={}", file("identity")),
            "IdentitiesOnly=yes".into(),
            "IdentityAgent=none".into(),
            "BatchMode=yes".into(),
            "PasswordAuthentication=no".into(),
            "KbdInteractiveAuthentication=no".into(),
            "PreferredAuthentications=publickey".into(),
            "ProxyCommand=none".into(),
            "ProxyJump=none".into(),
            "ControlMaster=no".into(),
            "ControlPath=none".into(),
            "ForwardAgent=no".into(),
            "ForwardX11=no".into(),
            "ClearAllForwardings=yes".into(),
            "PermitLocalCommand=no".into(),
            "ConnectTimeout=15".into(),
            "ServerAliveInterval=15".into(),
            "ServerAliveCountMax=2".into(),
            "LogLevel=ERROR".into(),
        ] {
            args.push("-o".into());
            args.push(option);
        }
        args
    }

    async fn run(&self, mut command: Command, what: &str) -> Result<String, DeliveryError> {
        // Nothing of the worker's environment (its database URI, its KEK
        // settings) reaches the client or the host.
        command
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().map_err(|e| {
            DeliveryError::Refused(format!(
                "cannot run {what} (OpenSSH's client must be installed): {e}"
            ))
        })?;
        let at = format!("{}@{}:{}", self.host.user, self.host.host, self.host.port);
        // Read while it runs, each stream up to its cap: the host (and a
        // reload command a tenant wrote) decides how much is printed.
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let finished = tokio::time::timeout(self.timeout, async {
            let (out, err) = tokio::try_join!(
                read_capped(stdout, "standard output"),
                read_capped(stderr, "standard error"),
            )?;
            let status = child.wait().await.map_err(CappedRead::Io)?;
            Ok::<_, CappedRead>((status, out, err))
        })
        .await;
        let (status, stdout, stderr) = match finished {
            Ok(Ok(done)) => done,
            Ok(Err(failed)) => {
                let _ = child.kill().await;
                return Err(match failed {
                    CappedRead::Over(stream) => DeliveryError::Refused(format!(
                        "{what} on {at} printed more than {OUTPUT_CAP} bytes on its {stream}; \
                         it was stopped (output is capped at {} KiB)",
                        OUTPUT_CAP / 1024
                    )),
                    CappedRead::Io(e) => DeliveryError::Transient(format!("{what}: {e}")),
                });
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err(DeliveryError::Transient(format!(
                    "{what}: no answer from {} within {:?}",
                    self.host.host, self.timeout
                )));
            }
        };
        if status.success() {
            return Ok(String::from_utf8_lossy(&stdout).into_owned());
        }
        let stderr = String::from_utf8_lossy(&stderr);
        Err(classify(what, &self.host, status.code(), stderr.trim()))
    }
}

/// The most read of each of an `ssh` or `sftp` run's output streams.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// Why a run's output was not read whole.
enum CappedRead {
    /// The stream named went past [`OUTPUT_CAP`].
    Over(&'static str),
    Io(std::io::Error),
}

/// `stream` to its end, or [`CappedRead::Over`] as soon as it passes
/// [`OUTPUT_CAP`]: never more than that is held.
async fn read_capped(
    stream: impl tokio::io::AsyncRead + Unpin,
    name: &'static str,
) -> Result<Vec<u8>, CappedRead> {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    stream
        .take(OUTPUT_CAP as u64 + 1)
        .read_to_end(&mut read)
        .await
        .map_err(CappedRead::Io)?;
    if read.len() > OUTPUT_CAP {
        return Err(CappedRead::Over(name));
    }
    Ok(read)
}

/// A failed `ssh` or `sftp` run as an error: one a retry can mend (the
/// host away) or not (the key refused, a command that failed).
fn classify(what: &str, host: &SshHost, code: Option<i32>, stderr: &str) -> DeliveryError {
    let at = format!("{}@{}:{}", host.user, host.host, host.port);
    let tail: String = stderr
        .chars()
        .rev()
        .take(400)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    if stderr.contains("Host key verification failed")
        || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("No matching host key")
        || stderr.contains("no matching host key")
    {
        // OpenSSH names the key it was shown: say it, to compare.
        let shown = stderr
            .split_once("sent by the remote host is")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|f| format!(" (it showed {})", f.trim_end_matches('.')))
            .unwrap_or_default();
        return DeliveryError::Refused(format!(
            "{at}: the host's key is not the pinned one{shown}; refused before authenticating"
        ));
    }
    if stderr.contains("Permission denied (") || stderr.contains("Too many authentication failures")
    {
        return DeliveryError::Refused(format!("{at}: the key was refused: {tail}"));
    }
    // The host and the client agree on nothing, the account has no SFTP,
    // or its shell prints text at login ("message too long"): the same
    // again next time.
    if [
        "Unable to negotiate",
        "subsystem request failed",
        "command-line line",
        "message too long",
    ]
    .iter()
    .any(|s| stderr.contains(s))
    {
        return DeliveryError::Refused(format!("{what} on {at}: {tail}"));
    }
    // 255 is OpenSSH's own failure (no connection, or it broke), and also
    // what a remote command may exit with: that is taken for the host
    // away only when OpenSSH says so.
    let away = [
        "Connection refused",
        "Connection timed out",
        "Connection reset",
        "Connection closed",
        "No route to host",
        "Network is unreachable",
        "timed out",
        "Broken pipe",
        "closed by remote host",
        "not responding",
        "kex_exchange_identification",
    ];
    // An empty stderr at 255 is a link that died quietly (the keep-alive's
    // message is below LogLevel=ERROR).
    let remote_command = what != "sftp";
    let said_away = stderr.is_empty() || away.iter().any(|s| stderr.contains(s));
    if code == Some(255) && (!remote_command || said_away) {
        return DeliveryError::Transient(format!("{what} to {at}: {tail}"));
    }
    DeliveryError::Refused(format!(
        "{what} on {at} failed (exit {}): {tail}",
        code.map_or("signal".to_string(), |c| c.to_string())
    ))
}

/// An `sftp -b` batch, built one command at a time from checked
/// arguments, never from free text.
///
/// OpenSSH's `sftp` reads a batch line by line, splitting each on
/// whitespace and honouring quotes, backslashes, globs, `#` comments and
/// `!` shell escapes. Every argument here is a path we compose (the
/// target's directory, the certificate's id, fixed file names, our own
/// temporary directory), so each is required to be an absolute path of
/// letters, digits and `._/@+-` only, and is written double-quoted: nothing
/// in it can end the line, start a comment or a shell escape, or expand.
/// An argument outside that set is refused rather than escaped. (An SFTP
/// library would avoid the batch altogether, but the maintained Rust one
/// brings its own SSH stack: docs/supply-chain.md.)
#[derive(Default)]
struct Batch(String);

impl Batch {
    /// Appends `command` (one of ours: `put`, `-rm`, …) with `args`.
    fn line(&mut self, command: &str, args: &[&str]) -> Result<(), DeliveryError> {
        self.0.push_str(command);
        for arg in args {
            if let Some(problem) = directory_problem(arg) {
                return Err(DeliveryError::Refused(format!(
                    "the path {arg:?} {problem}: not sent to sftp"
                )));
            }
            self.0.push_str(&format!(" \"{arg}\""));
        }
        self.0.push('\n');
        Ok(())
    }

    /// `chmod <mode> <path>`: the mode is one of ours, in octal.
    fn mode(&mut self, mode: &str, path: &str) -> Result<(), DeliveryError> {
        debug_assert!(mode.bytes().all(|b| (b'0'..=b'7').contains(&b)));
        self.line(&format!("chmod {mode}"), &[path])
    }
}

/// Writes `contents` to a new file only its owner can read.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)
}

/// The remote directory of `certificate_id` under `base`.
pub fn certificate_dir(base: &str, certificate_id: &str) -> String {
    format!("{}/{certificate_id}", base.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPNVuX+imp58Tmi8TOMHWdBamWSZB+EPgi033VJry3Og";

    #[test]
    fn a_private_key_with_a_passphrase_or_no_armor_is_refused() {
        // Made by ssh-keygen for this test, without and with a passphrase.
        let plain = concat!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
            "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n",
            "QyNTUxOQAAACDzVbl/opqefE5ovEzjB1nQWplkmQfhD4ItN91Sa8tzoAAAAIgaWg80GloP\n",
            "NAAAAAtzc2gtZWQyNTUxOQAAACDzVbl/opqefE5ovEzjB1nQWplkmQfhD4ItN91Sa8tzoA\n",
            "AAAEBpW5oAXVdD74uGs4/qR5Gkm9vRRW0SWUc6CqiO2EMX3PNVuX+imp58Tmi8TOMHWdBa\n",
            "mWSZB+EPgi033VJry3OgAAAABHRlc3QB\n",
            "-----END OPENSSH PRIVATE KEY-----\n",
        );
        assert_eq!(private_key_problem(plain), None);
        let locked = concat!(
            "-----BEGIN OPENSSH PRIVATE KEY-----\n",
            "b3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0AAAAGAAAABAkF9fTOd\n",
            "6GtJkc3/n0XXlaAAAAEAAAAAEAAAAzAAAAC3NzaC1lZDI1NTE5AAAAINs3jhwnLEJKl1ED\n",
            "SU3ON9dgVtqcA3j+36voL/bp49LnAAAAkKi+KL5DdtJIYYBzy0/xfUVgxlarP+89jL4QvI\n",
            "yOrPorN4kn9Y5iDLN8DiRc3F9BNjZM2ydZIVtM6d9zFJsNov8DkgCrbWCN9iJ4Kmwtzhi3\n",
            "bJ3iry4GQA06JQl4zf65eRZgBu+WJacSN22mpdGN4xVLljkstXiwvE0+PFCPxsR5+7ZkS2\n",
            "y7Z2DzGKowVMQrnw==\n",
            "-----END OPENSSH PRIVATE KEY-----\n",
        );
        assert!(private_key_problem(locked).unwrap().contains("passphrase"));
        assert!(private_key_problem("ssh-ed25519 AAAA")
            .unwrap()
            .contains("PEM"));
        assert!(private_key_problem(
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n-----END RSA PRIVATE KEY-----"
        )
        .unwrap()
        .contains("passphrase"));
    }

    #[test]
    fn a_batch_takes_only_absolute_paths_that_need_no_quoting() {
        let mut batch = Batch::default();
        batch
            .line(
                "put",
                &[
                    "/tmp/x/upload/key.pem",
                    "/srv/certs/crt_1/.key.pem.certautopilot-new",
                ],
            )
            .unwrap();
        batch.mode("600", "/srv/certs/crt_1/key.pem").unwrap();
        assert_eq!(
            batch.0,
            "put \"/tmp/x/upload/key.pem\" \"/srv/certs/crt_1/.key.pem.certautopilot-new\"\nchmod 600 \"/srv/certs/crt_1/key.pem\"\n"
        );
        for bad in [
            "/srv/certs\n!cp /kek /tmp",
            "/srv/\"x",
            "/srv/x y",
            "relative",
            "-P",
            "/srv/*",
            "/srv/#x",
            "/srv/../etc",
        ] {
            assert!(Batch::default().line("-rm", &[bad]).is_err(), "{bad:?}");
        }
        assert_eq!(certificate_dir("/srv/certs/", "crt_1"), "/srv/certs/crt_1");
    }

    #[tokio::test]
    async fn output_is_read_up_to_its_cap_and_no_further() {
        use tokio::io::AsyncReadExt;
        let endless = read_capped(tokio::io::repeat(0), "standard output").await;
        assert!(matches!(endless, Err(CappedRead::Over("standard output"))));
        let at_the_cap = read_capped(tokio::io::repeat(b'y').take(OUTPUT_CAP as u64), "x").await;
        assert!(matches!(at_the_cap, Ok(read) if read.len() == OUTPUT_CAP));
        let short = read_capped(&b"ok\n"[..], "x").await;
        assert!(matches!(short, Ok(read) if read == b"ok\n"));
    }

    #[test]
    fn failures_are_told_apart() {
        let host = SshHost {
            host: "edge.example.com".into(),
            port: 22,
            user: "deploy".into(),
            host_key: ED25519.into(),
        };
        let refused = classify(
            "sftp",
            &host,
            Some(255),
            "Host key verification failed.\r\nConnection closed",
        );
        assert!(
            !refused.is_transient() && refused.to_string().contains("pinned"),
            "{refused}"
        );
        let denied = classify(
            "sftp",
            &host,
            Some(255),
            "deploy@certautopilot-target: Permission denied (publickey).",
        );
        assert!(!denied.is_transient(), "{denied}");
        let away = classify(
            "sftp",
            &host,
            Some(255),
            "ssh: connect to host 10.0.0.1 port 22: Connection refused",
        );
        assert!(away.is_transient(), "{away}");
        let failed = classify(
            "sftp",
            &host,
            Some(1),
            "remote open(\"/srv/x\"): Permission denied",
        );
        assert!(!failed.is_transient(), "{failed}");
        let no_sftp = classify(
            "sftp",
            &host,
            Some(255),
            "subsystem request failed on channel 0\r\nConnection closed",
        );
        assert!(!no_sftp.is_transient(), "{no_sftp}");
        let reload_255 = classify("the reload command", &host, Some(255), "nginx: [emerg] bad");
        assert!(!reload_255.is_transient(), "{reload_255}");
        let reload_away = classify(
            "the reload command",
            &host,
            Some(255),
            "ssh: connect to host 10.0.0.1 port 22: Connection timed out",
        );
        assert!(reload_away.is_transient(), "{reload_away}");
        let cut_off = classify(
            "the reload command",
            &host,
            Some(255),
            "Connection to 10.0.0.1 closed by remote host.",
        );
        assert!(cut_off.is_transient(), "{cut_off}");
        assert!(classify("the reload command", &host, Some(255), "").is_transient());
        let chatty = classify(
            "sftp",
            &host,
            Some(255),
            "Received message too long 1349281121",
        );
        assert!(!chatty.is_transient(), "{chatty}");
    }
}
