//! The rules a distribution target's settings obey, in one place: the API
//! refuses a target that breaks any of them, and a worker checks them
//! again just before it uses a stored target (DESIGN.md invariant 14:
//! nothing the database supplies reaches a command line, a batch file, a
//! path or a header unchecked at the point of use).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::distribution::{Delivery, Target};
use super::drift::endpoint_problems;
use super::validate::{self, FieldError, Reasons};

/// A user name on an SSH host.
pub const SSH_USER_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$";
/// A remote directory: absolute, nothing that needs quoting.
pub const SSH_DIRECTORY_PATTERN: &str = "^/[A-Za-z0-9._/@+-]{0,1023}$";
/// The longest SSH private key and host key taken, in characters.
pub const MAX_SSH_KEY_LEN: usize = 16 * 1024;
/// The longest reload command, in characters.
pub const MAX_RELOAD_COMMAND_LEN: usize = 1024;

/// The host key types taken, with the algorithms that verify each.
pub const HOST_KEY_TYPES: [(&str, &str); 5] = [
    ("ssh-ed25519", "ssh-ed25519"),
    ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256"),
    ("ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384"),
    ("ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521"),
    ("ssh-rsa", "rsa-sha2-512,rsa-sha2-256"),
];

/// What is wrong with `target`'s settings, field by field (the API's field
/// names: `ssh.directory`, `webhook.url`, …); empty when nothing is.
pub fn problems(target: &Target) -> Vec<FieldError> {
    let mut reasons = Reasons::default();
    match &target.delivery {
        Delivery::Agent => {}
        Delivery::Ssh {
            host,
            port,
            user,
            host_key,
            directory,
            reload_command,
        } => {
            if host.len() > validate::MAX_DNS_NAME_LEN
                || !validate::matches(&validate::host_pattern(), host)
            {
                reasons.add("ssh.host", "must be a DNS name or an IPv4 address");
            }
            if *port == 0 {
                reasons.add("ssh.port", "must be 1 to 65535");
            }
            if !validate::matches(SSH_USER_PATTERN, user) {
                reasons.add(
                    "ssh.user",
                    "must be 1 to 32 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                );
            }
            if let Some(problem) = host_key_problem(host_key) {
                reasons.add("ssh.host_key", problem);
            }
            if let Some(problem) = directory_problem(directory) {
                reasons.add("ssh.directory", problem);
            }
            if let Some(command) = reload_command {
                if let Some(problem) = reload_command_problem(command) {
                    reasons.add("ssh.reload_command", problem);
                }
            }
        }
        Delivery::KubernetesSecret {
            namespace,
            secret_name,
            ..
        } => {
            if let Some(problem) = kubernetes_name_problem(namespace) {
                reasons.add("kubernetes_secret.namespace", problem);
            }
            if let Some(problem) = kubernetes_name_problem(secret_name) {
                reasons.add("kubernetes_secret.secret_name", problem);
            }
        }
        Delivery::Webhook { url, include_key } => {
            if let Some((field, problem)) = webhook_url_problem(url, *include_key) {
                reasons.add(field, problem);
            }
        }
    }
    if let Some(endpoint) = &target.validate {
        for (field, reason) in endpoint_problems(std::slice::from_ref(endpoint)) {
            reasons.add(field.replacen("endpoints[0]", "validate", 1), reason);
        }
    }
    reasons.0
}

/// Why `url` is not where a webhook target may post (and, with the key,
/// not https://): the field and the reason.
pub fn webhook_url_problem(url: &str, include_key: bool) -> Option<(&'static str, String)> {
    match url::Url::parse(url) {
        Ok(u) if u.host().is_none() || !["https", "http"].contains(&u.scheme()) => {
            Some(("webhook.url", "must be an https:// or http:// URL".into()))
        }
        Ok(u) if include_key && u.scheme() != "https" => Some((
            "webhook.include_key",
            "the private key is only sent to an https:// URL".into(),
        )),
        Ok(_) if !validate::matches(&validate::webhook_url_pattern(), url) => Some((
            "webhook.url",
            "must be https:// or http:// then a host name or IPv4 address, an optional port and a path".into(),
        )),
        Ok(_) => None,
        Err(e) => Some(("webhook.url", format!("is not a URL: {e}"))),
    }
}

/// `scheme://host[:port]` of `url`, as a webhook's settings keep it in the
/// clear and views show it (its path and query may hold a token), or
/// `(not a URL)`.
pub fn origin(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|_| "(not a URL)".into())
}

/// Why `command` may not be a reload command: too long, blank, or holding
/// a control character (a newline would be a second command).
pub fn reload_command_problem(command: &str) -> Option<String> {
    if command.chars().count() > MAX_RELOAD_COMMAND_LEN {
        Some(format!(
            "is longer than {MAX_RELOAD_COMMAND_LEN} characters"
        ))
    } else if !validate::matches(&validate::name_pattern(), command) {
        Some("must not be blank nor contain control characters".into())
    } else {
        None
    }
}

/// Why `line` is not a host key to pin: one OpenSSH public key of a type
/// taken, on one line.
pub fn host_key_problem(line: &str) -> Option<String> {
    if line.chars().count() > MAX_SSH_KEY_LEN {
        return Some(format!("is longer than {MAX_SSH_KEY_LEN} characters"));
    }
    if line.contains(['\n', '\r']) {
        return Some("must be one line".into());
    }
    parse_host_key(line).err()
}

/// The host key's type and its key blob, if `line` is an OpenSSH public
/// key of a type taken (a trailing comment is allowed).
pub fn parse_host_key(line: &str) -> Result<(&'static str, Vec<u8>), String> {
    let mut parts = line.split_whitespace();
    let (Some(kind), Some(blob)) = (parts.next(), parts.next()) else {
        return Err("expected an OpenSSH public key: \"<type> <base64>\" (as in /etc/ssh/ssh_host_ed25519_key.pub or `ssh-keyscan`)".into());
    };
    let Some((kind, _)) = HOST_KEY_TYPES.iter().find(|(k, _)| *k == kind) else {
        let taken: Vec<&str> = HOST_KEY_TYPES.iter().map(|(k, _)| *k).collect();
        return Err(format!("key type {kind:?}: expected one of {taken:?}"));
    };
    let bytes = BASE64
        .decode(blob)
        .map_err(|e| format!("the key is not base64: {e}"))?;
    // The blob starts with its own type, as an SSH string.
    let named = bytes
        .get(..4)
        .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
        .and_then(|n| bytes.get(4..4 + n));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key blob is not a {kind} key"));
    }
    Ok((kind, bytes))
}

/// The fingerprint `ssh-keygen -l` prints for a public key line.
pub fn fingerprint(line: &str) -> Option<String> {
    let (_, blob) = parse_host_key(line).ok()?;
    let digest = Sha256::digest(&blob);
    Some(format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    ))
}

/// A path the SFTP batch and the remote shell read as written: absolute,
/// and only letters, digits and `._/@+-` (no quoting is ever needed, and
/// no `..` climbs out of it).
pub fn directory_problem(dir: &str) -> Option<String> {
    if !dir.starts_with('/') {
        return Some("must be an absolute path".into());
    }
    if dir.len() > 1024 {
        return Some("is longer than 1024 characters".into());
    }
    if !dir
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._/@+-".contains(&b))
    {
        return Some("may hold only letters, digits and ._/@+-".into());
    }
    if dir.split('/').any(|part| part == "..") {
        return Some("must not climb with ..".into());
    }
    None
}

/// Why `name` is not a Kubernetes name (a DNS-1123 label or subdomain):
/// nothing that could change a request's path.
pub fn kubernetes_name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        format!("{name:?} is not a Kubernetes name (lower-case letters, digits, '-' and '.')")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::distribution::Delivery;

    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPNVuX+imp58Tmi8TOMHWdBamWSZB+EPgi033VJry3Og";

    fn ssh_target(directory: &str, host_key: &str, reload: Option<&str>) -> Target {
        Target {
            id: "tgt_1".into(),
            project_id: "prj_1".into(),
            name: "edge".into(),
            delivery: Delivery::Ssh {
                host: "edge.example.com".into(),
                port: 22,
                user: "deploy".into(),
                host_key: host_key.into(),
                directory: directory.into(),
                reload_command: reload.map(str::to_string),
            },
            validate: None,
            disabled: None,
        }
    }

    #[test]
    fn a_host_key_is_taken_by_type_and_blob_and_fingerprinted_as_ssh_keygen_does() {
        let (kind, blob) = parse_host_key(&format!("{ED25519} root@host")).unwrap();
        assert_eq!(kind, "ssh-ed25519");
        assert_eq!(blob.len(), 51);
        // What `ssh-keygen -lf` printed for that key.
        assert_eq!(
            fingerprint(ED25519).unwrap(),
            "SHA256:nbFO3eNxi+YKqp/Qo1S6aoid8PxwkNd3uDLMNmKrSJo"
        );
        for bad in [
            "",
            "ssh-ed25519",
            "ssh-dss AAAAB3NzaC1kc3MAAACBAP",
            "ssh-ed25519 !!!",
            // An RSA blob filed as ed25519.
            "ssh-ed25519 AAAAB3NzaC1yc2EAAAADAQABAAABAQ==",
        ] {
            assert!(parse_host_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn directories_need_no_quoting() {
        assert_eq!(directory_problem("/etc/nginx/certautopilot"), None);
        for bad in [
            "etc/x",
            "/etc/x y",
            "/etc/'x'",
            "/etc/$(id)",
            "/etc/x\n",
            "/etc/*",
            "/srv/../etc",
        ] {
            assert!(directory_problem(bad).is_some(), "{bad:?}");
        }
    }

    /// What a database writer would store to run commands on the worker
    /// (a second batch line) or to pin a second host key is refused by the
    /// same rules the API applies.
    #[test]
    fn stored_settings_that_would_inject_lines_are_refused() {
        assert!(problems(&ssh_target(
            "/srv/certs",
            ED25519,
            Some("systemctl reload nginx")
        ))
        .is_empty());
        let injected = ssh_target("/srv/certs\n!cp /kek /tmp/x", ED25519, None);
        assert_eq!(problems(&injected)[0].field, "ssh.directory");
        let two_keys = ssh_target(
            "/srv/certs",
            &format!("{ED25519}\ncertautopilot-target {ED25519}"),
            None,
        );
        assert_eq!(problems(&two_keys)[0].field, "ssh.host_key");
        let two_commands = ssh_target("/srv/certs", ED25519, Some("true\nrm -rf /"));
        assert_eq!(problems(&two_commands)[0].field, "ssh.reload_command");
        let webhook = Target {
            delivery: Delivery::Webhook {
                url: "http://hooks.example.com/x".into(),
                include_key: true,
            },
            ..ssh_target("/srv", ED25519, None)
        };
        assert_eq!(problems(&webhook)[0].field, "webhook.include_key");
        let kubernetes = Target {
            delivery: Delivery::KubernetesSecret {
                namespace: "../kube-system".into(),
                secret_name: "tls".into(),
                include_ca: false,
                kubeconfig: true,
            },
            ..ssh_target("/srv", ED25519, None)
        };
        assert_eq!(
            problems(&kubernetes)[0].field,
            "kubernetes_secret.namespace"
        );
    }
}
