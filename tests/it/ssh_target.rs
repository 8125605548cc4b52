//! The ssh target against Debian's OpenSSH server and nginx on loopback:
//! Pebble issues, a worker uploads the files over SFTP (OpenSSH's own
//! client) into the directory nginx serves, keeps the previous set as
//! `*.previous`, runs nginx's reload over SSH, and the validation finds the
//! new certificate served. A target pinning another host key is refused
//! before authenticating; one whose endpoint serves nothing gets the
//! previous files back.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use crate::support::api::assert_not_stored;
use crate::support::cluster::{Cluster, Role};
use crate::support::nginx::{comes_to_serve, self_signed_set, served, Nginx};
use crate::support::pebble::PebbleOptions;
use crate::support::sshd::{key_pair, Sshd};

const NAME: &str = "www.ssh.example.test";

fn record<'a>(page: &'a Value, target: &str) -> Option<&'a Value> {
    page["items"]
        .as_array()?
        .iter()
        .find(|d| d["target"] == target)
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[actix_web::test]
async fn files_reach_an_ssh_host_with_a_pinned_key_and_are_put_back_when_not_served() {
    let cluster = Cluster::builder("ssh-target")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .env(Role::Worker, "CAP_DISTRIBUTE_VALIDATE_ATTEMPTS", "10")
        .env(Role::Worker, "CAP_DISTRIBUTE_VALIDATE_INTERVAL_SECS", "1")
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("pushing", cluster.pebble()).await;
    api.grant(&p, &["ssh.example.test"]).await;

    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(work.path());
    let (_, impostor_key) = key_pair(work.path(), "impostor");
    let served_dir = work.path().join("served");
    let unserved_dir = work.path().join("unserved");
    std::fs::create_dir_all(&served_dir).unwrap();
    std::fs::create_dir_all(&unserved_dir).unwrap();
    let nginx_port = support::free_addr().port();
    let nobody = support::free_addr().port();

    let ssh = |dir: &std::path::Path, host_key: &str, reload: Option<String>| {
        let mut settings = json!({ "host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                                   "host_key": host_key, "directory": dir, "private_key": sshd.client_key });
        if let Some(reload) = reload {
            settings["reload_command"] = json!(reload);
        }
        settings
    };

    // Bad settings are refused, each with its reason.
    let mut bad = ssh(&served_dir, "ssh-ed25519 AAAA", None);
    bad["directory"] = json!("relative/dir");
    bad["private_key"] = json!("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAACmFlczI1Ni1jdHIAAAAGYmNyeXB0\n-----END OPENSSH PRIVATE KEY-----\n");
    let (status, problem) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "bad", "kind": "ssh", "ssh": bad }),
        )
        .await;
    assert_eq!(status, 422, "{problem}");
    let text = problem.to_string();
    for field in ["ssh.host_key", "ssh.directory", "ssh.private_key"] {
        assert!(text.contains(field), "{field}: {problem}");
    }
    assert!(text.contains("passphrase"), "{problem}");

    // The certificate first: its id names the directory nginx serves.
    let (path, issued) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": [NAME], "issuer_id": issuer }),
            Duration::from_secs(60),
        )
        .await;
    let cert_id = issued["id"].as_str().unwrap().to_string();
    let fingerprint = issued["fingerprint_sha256"].as_str().unwrap().to_string();
    let live = served_dir.join(&cert_id);
    let old = self_signed_set(&live, NAME);
    let kept = self_signed_set(&unserved_dir.join(&cert_id), NAME);
    let nginx = Nginx::start(work.path(), &live, nginx_port);
    assert!(
        support::wait_until(Duration::from_secs(10), || async {
            served(nginx_port, NAME).await.is_some()
        })
        .await,
        "nginx serves"
    );

    let reload = nginx.reload_command().join(" ");
    let targets = [
        (
            "edge",
            ssh(&served_dir, &sshd.host_key, Some(reload)),
            nginx_port,
        ),
        (
            "impostor",
            ssh(&served_dir, &impostor_key, None),
            nginx_port,
        ),
        (
            "unserved",
            ssh(
                &unserved_dir,
                &format!("{} host comment", sshd.host_key),
                None,
            ),
            nobody,
        ),
    ];
    for (name, settings, port) in &targets {
        let (status, target) = api
            .post(
                &format!("/projects/{p}/targets"),
                json!({ "name": name, "kind": "ssh", "ssh": settings,
                        "validate": { "host": "127.0.0.1", "port": port, "sni": NAME } }),
            )
            .await;
        assert_eq!(status, 201, "{target}");
        assert_eq!(target["credential_set"], true, "{target}");
        assert!(!target.to_string().contains("PRIVATE KEY"), "{target}");
        if *name == "edge" {
            assert_eq!(
                target["ssh"]["host_key_sha256"],
                sshd.host_key_sha256.as_str(),
                "{target}"
            );
        }
    }
    assert_not_stored(&cluster.db.store().await, &sshd.client_key).await;

    let (status, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("{path}/targets"),
            Some(json!({ "targets": ["edge", "impostor", "unserved"] })),
        )
        .await;
    assert_eq!(status, 200);
    let done = api
        .wait_for(
            &format!("{path}/distributions"),
            Duration::from_secs(90),
            "every delivery finished",
            |d| {
                ["edge", "impostor", "unserved"].iter().all(|t| {
                    record(d, t).is_some_and(|r| {
                        ["validated", "rolled_back", "failed"]
                            .contains(&r["state"].as_str().unwrap_or(""))
                    })
                })
            },
        )
        .await;

    // The pinned host got the files, nginx reloaded and serves them.
    let edge = record(&done, "edge").unwrap();
    assert_eq!(edge["state"], "validated", "{edge}");
    assert!(comes_to_serve(nginx_port, NAME, &fingerprint).await);
    let chain = issued["chain_pem"].as_str().unwrap();
    assert_eq!(read(&live.join("fullchain.pem")), chain);
    assert!(chain.starts_with(&read(&live.join("cert.pem"))));
    assert_eq!(
        read(&live.join("fullchain.pem.previous")),
        old,
        "the previous set is kept"
    );
    let key_mode = std::fs::metadata(live.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    assert!(
        std::fs::read_dir(&live).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("certautopilot")),
        "no staged file is left behind"
    );

    // Another key at that address is refused before logging in.
    let impostor = record(&done, "impostor").unwrap();
    assert_eq!(impostor["state"], "failed", "{impostor}");
    assert!(
        impostor["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not the pinned one") && e.contains(&sshd.host_key_sha256)),
        "{impostor}"
    );

    // Not served: the previous files are back.
    let unserved = record(&done, "unserved").unwrap();
    assert_eq!(unserved["state"], "rolled_back", "{unserved}");
    assert!(
        unserved["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{unserved}"
    );
    assert_eq!(
        read(&unserved_dir.join(&cert_id).join("fullchain.pem")),
        kept
    );

    let actions = api.audit_actions(&p).await;
    for action in [
        "distribution.validated",
        "distribution.failed",
        "distribution.rolled_back",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }
    drop(nginx);
    drop(sshd);
}

/// Peak resident memory of process `pid`, in bytes (`VmHWM`).
fn peak_memory(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kib * 1024
}

/// The attack: a tenant's reload command that prints without end (`cat
/// /dev/zero`) on a host of its own, to take the memory of the worker that
/// runs the delivery, and of every worker after it that claims the job.
/// Against Debian's sshd: the output is read no further than its cap, the
/// client is stopped there, the delivery fails with an error naming the
/// cap well within the run's timeout, the worker lives with its memory
/// bounded, and nothing is left running on the host.
#[actix_web::test]
async fn a_reload_command_that_prints_without_end_fails_the_delivery_and_the_worker_lives() {
    let mut cluster = Cluster::builder("ssh-endless-output")
        .pebble(PebbleOptions {
            nonce_reject_percent: 0,
            ..PebbleOptions::default()
        })
        .workers(1)
        .scheduler()
        .env(Role::Scheduler, "CAP_RENEWAL_SCAN_SECS", "1")
        .start()
        .await;
    let api = &cluster.api;
    let (p, issuer) = api.project_with_issuer("endless", cluster.pebble()).await;
    api.grant(&p, &["ssh.example.test"]).await;
    let work = tempfile::tempdir().unwrap();
    let sshd = Sshd::start(work.path());
    let dir = work.path().join("endless");
    std::fs::create_dir_all(&dir).unwrap();
    let (status, target) = api
        .post(
            &format!("/projects/{p}/targets"),
            json!({ "name": "endless", "kind": "ssh",
                    "ssh": { "host": "127.0.0.1", "port": sshd.port, "user": sshd.user,
                             "host_key": sshd.host_key, "directory": dir,
                             "private_key": sshd.client_key, "reload_command": "cat /dev/zero" } }),
        )
        .await;
    assert_eq!(status, 201, "{target}");

    let (path, _) = api
        .issue(
            &p,
            json!({ "name": "www", "dns_names": [NAME], "issuer_id": issuer,
                    "targets": ["endless"] }),
            Duration::from_secs(60),
        )
        .await;
    let started = std::time::Instant::now();
    let done = api
        .wait_for(
            &format!("{path}/distributions"),
            Duration::from_secs(60),
            "the delivery failed",
            |d| record(d, "endless").is_some_and(|r| r["state"] == "failed"),
        )
        .await;
    let failed = record(&done, "endless").unwrap();
    let error = failed["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the reload command on")
            && error.contains("printed more than 65536 bytes on its standard output")
            && error.contains("capped at 64 KiB"),
        "{failed}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );

    let worker = &mut cluster.workers[0];
    assert_eq!(worker.child.try_wait().unwrap(), None, "the worker died");
    worker.wait_alive().await;
    let peak = peak_memory(worker.pid());
    assert!(
        peak < 256 << 20,
        "the worker's memory peaked at {} MiB",
        peak >> 20
    );
    let gone = support::wait_until(Duration::from_secs(10), || async {
        !std::process::Command::new("pgrep")
            .args(["-f", "-x", "cat /dev/zero"])
            .status()
            .unwrap()
            .success()
    })
    .await;
    assert!(gone, "the reload command still runs on the host");
    drop(sshd);
}
