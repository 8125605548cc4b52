//! The shell scripts under `chaos/` and `scripts/`: every one passes
//! `shellcheck` (installed by `scripts/setup.sh`), and the chaos harness's
//! kubernetes mode, `chaos/kubernetes/run.sh`, answers what it can without a
//! cluster: `--help` names every scenario, an unknown scenario and bad
//! options are usage errors (exit 2), the scenarios kubectl cannot fault
//! portably exit 3 saying why, and what it reads from the binary (metric
//! names, audit actions) exists. No cluster runs here, so no scenario runs:
//! `KUBECONFIG` points at nothing, and any kubectl call would fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The scenario names of issue 13, in its order.
const SCENARIOS: [&str; 8] = [
    "rolling-restart",
    "rolling-upgrade",
    "zone-loss",
    "worker-partition",
    "leader-pause",
    "db-stepdown-storm",
    "db-kill",
    "kill-storm",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn kubernetes_run() -> PathBuf {
    root().join("chaos/kubernetes/run.sh")
}

fn shellcheck() -> Command {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join("shellcheck").is_file())
    });
    assert!(found, "shellcheck is missing: run scripts/setup.sh");
    Command::new("shellcheck")
}

/// Shell scripts below `dir`: a `.sh` file, or a file whose first line is a
/// shebang naming sh or bash.
fn shell_scripts(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "target") {
                shell_scripts(&path, out);
            }
            continue;
        }
        let first_line = std::fs::read(&path)
            .ok()
            .and_then(|bytes| {
                let line = bytes.split(|b| *b == b'\n').next()?.to_vec();
                String::from_utf8(line).ok()
            })
            .unwrap_or_default();
        let shebang = first_line.starts_with("#!")
            && (first_line.ends_with("sh") || first_line.contains("bash"));
        if path.extension().is_some_and(|e| e == "sh") || shebang {
            out.push(path);
        }
    }
}

/// `chaos/kubernetes/run.sh` with `args`, away from any cluster.
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out: Output = Command::new(kubernetes_run())
        .args(args)
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", kubernetes_run().display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shell_script_under_chaos_and_scripts_passes_shellcheck() {
    let mut scripts = Vec::new();
    shell_scripts(&root().join("chaos"), &mut scripts);
    shell_scripts(&root().join("scripts"), &mut scripts);
    scripts.sort();
    for expected in [
        "chaos/kubernetes/run.sh",
        "scripts/setup.sh",
        "scripts/run-local.sh",
    ] {
        assert!(
            scripts.contains(&root().join(expected)),
            "{expected} not among the scripts found: {scripts:?}"
        );
    }
    let out = shellcheck()
        .arg("--external-sources")
        .args(&scripts)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shellcheck has findings in {} scripts:\n{}{}",
        scripts.len(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn shellcheck_reports_an_unquoted_expansion() {
    // The check above means something only if shellcheck fails a script
    // with a finding: an unquoted "$1" is SC2086.
    let mut child = shellcheck()
        .args(["--shell=bash", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"#!/bin/bash\nrm $1\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "shellcheck passed `rm $1`: {text}");
    assert!(text.contains("SC2086"), "{text}");
}

#[test]
fn kubernetes_mode_help_names_every_scenario_and_exits_0() {
    let (code, out, err) = run(&["--help"]);
    assert_eq!(code, Some(0), "--help: {out}{err}");
    for scenario in SCENARIOS {
        assert!(
            out.contains(scenario),
            "--help does not name {scenario}:\n{out}"
        );
    }
    // Also after a scenario, before anything is checked.
    let (code, out, _) = run(&["zone-loss", "-h"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("usage: chaos/kubernetes/run.sh SCENARIO"),
        "{out}"
    );
}

#[test]
fn kubernetes_mode_refuses_an_unknown_scenario_and_bad_options_with_exit_2() {
    let (code, out, err) = run(&[
        "no-such-scenario",
        "--api",
        "http://127.0.0.1:9",
        "--token-file",
        "/dev/null",
    ]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("unknown scenario 'no-such-scenario'"), "{err}");
    for scenario in SCENARIOS {
        assert!(
            err.contains(scenario),
            "the refusal does not list {scenario}: {err}"
        );
    }
    let cases: [(&[&str], &str); 6] = [
        (&[], "no scenario given"),
        (&["kill-storm", "--bogus"], "unknown option --bogus"),
        (&["kill-storm", "--duration"], "--duration needs a value"),
        (
            &["kill-storm", "--duration", "1m"],
            "--duration must be a whole number",
        ),
        (
            &["kill-storm", "--token-file", "/dev/null"],
            "--api URL is required",
        ),
        (
            &["rolling-upgrade", "--api", "http://127.0.0.1:9"],
            "needs --image-tag",
        ),
    ];
    for (args, says) in cases {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?} does not say {says:?}: {err}");
    }
}

#[test]
fn kubernetes_mode_says_which_scenarios_it_cannot_run_with_exit_3() {
    let common = ["--api", "http://127.0.0.1:9", "--token-file", "/dev/null"];
    for (scenario, why) in [
        ("worker-partition", "NetworkPolicy"),
        ("leader-pause", "SIGSTOP"),
        ("db-kill", "--mongo-pod"),
        ("db-stepdown-storm", "--mongo-pod"),
    ] {
        let mut args = vec![scenario];
        args.extend(common);
        let (code, out, err) = run(&args);
        assert_eq!(code, Some(3), "{scenario}: {out}{err}");
        assert!(
            err.contains(&format!("{scenario}: not supported in kubernetes mode: "))
                && err.contains(why),
            "{scenario}: {err}"
        );
    }
}

#[test]
fn kubernetes_mode_reads_metrics_and_audit_actions_the_binary_has() {
    let script = std::fs::read_to_string(kubernetes_run()).unwrap();
    let metrics = std::fs::read_to_string(root().join("src/observe/metrics.rs")).unwrap();
    let mut names: Vec<&str> = script
        .match_indices("certautopilot_")
        .map(|(i, _)| {
            let rest = &script[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 3, "the metrics it reads: {names:?}");
    for name in names {
        assert!(
            metrics.contains(&format!("\"{name}\"")),
            "run.sh reads {name}, which src/observe/metrics.rs does not register"
        );
    }
    let src = |path: &str| std::fs::read_to_string(root().join(path)).unwrap();
    for (action, file) in [
        ("project.created", "src/http/api/projects.rs"),
        ("certificate.issued", "src/actors/order.rs"),
        ("leader.takeover", "src/actors/lease.rs"),
    ] {
        assert!(script.contains(action), "run.sh no longer reads {action}");
        assert!(
            src(file).contains(&format!("\"{action}\"")),
            "{file} no longer records {action}"
        );
    }
    // Job outcomes are audited as job.{outcome}.
    let claim = src("src/actors/claim.rs");
    assert!(
        claim.contains("&format!(\"job.{outcome}\")"),
        "src/actors/claim.rs"
    );
    for outcome in ["\"completed\"", "\"retrying\"", "\"dead\""] {
        assert!(claim.contains(outcome), "claim.rs has no outcome {outcome}");
    }
}
