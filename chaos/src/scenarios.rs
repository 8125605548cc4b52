//! The scenarios: each starts an installation, puts the steady workload on
//! it, breaks something on purpose, waits until the installation is
//! consistent again and reports what held.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, Bson, DateTime, Document};
use nix::sys::signal::Signal;
use rand::Rng;
use tokio::sync::watch;

use crate::load::{Load, Target};
use crate::procs::Role;
use crate::report::{self, Report};
use crate::stack::{Settings, Stack, DOMAIN};
use crate::topology::{self, LinkFault, DB_IP};

pub const SCENARIOS: [&str; 8] = [
    "rolling-restart",
    "rolling-upgrade",
    "zone-loss",
    "worker-partition",
    "leader-pause",
    "db-stepdown-storm",
    "db-kill",
    "kill-storm",
];

/// Certificates declared (and issued) before the load starts.
const SEED_CERTIFICATES: usize = 6;
/// The longest the installation may take to be consistent again.
const CONSISTENT_WITHIN: Duration = Duration::from_secs(300);
/// How long a certificate may be overdue for renewal and still count as
/// consistent: a few renewal scans and one issuance.
const RENEWAL_SLACK: Duration = Duration::from_secs(30);
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What a scenario's fault phase hands back.
struct Fault {
    /// When the last fault was lifted.
    ended: Instant,
    /// Checks of its own, beyond the common figures.
    checks: Vec<(String, bool, String)>,
}

pub struct Options {
    pub duration: Duration,
    /// The previous release's binary, for `rolling-upgrade`.
    pub previous_bin: Option<std::path::PathBuf>,
}

pub async fn run(name: &str, settings: Settings, options: &Options) -> Result<Report, String> {
    let mut settings = settings;
    let upgrade_to = if name == "rolling-upgrade" {
        let previous = options
            .previous_bin
            .clone()
            .ok_or("rolling-upgrade needs the previous release (chaos/run builds it)")?;
        Some(std::mem::replace(&mut settings.bin, previous))
    } else {
        None
    };
    let started_at = DateTime::now();
    let mut stack = Stack::start(settings).await?;
    let result = drive(name, &mut stack, options, upgrade_to, started_at).await;
    stack.stop().await;
    result
}

async fn drive(
    name: &str,
    stack: &mut Stack,
    options: &Options,
    upgrade_to: Option<std::path::PathBuf>,
    started_at: DateTime,
) -> Result<Report, String> {
    seed(stack).await?;
    let start_seq = report::audit_seq(stack).await;
    let since_term = wait_for_leader(stack, Duration::from_secs(60)).await?.1;
    let (watch_stop, watched) = watch::channel(false);
    let renewals = tokio::spawn(watch_leases(stack.mongo.clone(), watched));
    let load = Load::start(Target {
        front: stack.front.clone(),
        token: stack.token.clone(),
        project: stack.project.clone(),
        issuer: stack.issuer.clone(),
        // About 30 new certificates a run, however long: each renews every
        // two thirds of the validity, so more would outgrow two cores.
        certificate_every: (options.duration / 30).max(Duration::from_secs(5)),
    });
    let began = Instant::now();
    let deadline = began + options.duration;
    let warm = (options.duration / 6).min(Duration::from_secs(10));
    tokio::time::sleep(warm).await;

    let fault = match name {
        "rolling-restart" => rolling_restart(stack, None).await?,
        "rolling-upgrade" => rolling_restart(stack, upgrade_to).await?,
        "zone-loss" => zone_loss(stack, options.duration).await?,
        "worker-partition" => worker_partition(stack, options.duration).await?,
        "leader-pause" => leader_pause(stack).await?,
        "db-stepdown-storm" => stepdown_storm(stack, options.duration).await?,
        "db-kill" => db_kill(stack, options.duration).await?,
        "kill-storm" => kill_storm(stack, deadline).await?,
        other => return Err(format!("unknown scenario {other:?}")),
    };
    // Measured from the fault's end, under the load, which goes on until
    // the run's end whatever the answer.
    let recovery = consistent_since(stack, &load, fault.ended).await;
    if let Some(rest) = deadline.checked_duration_since(Instant::now()) {
        tokio::time::sleep(rest).await;
    }
    let record = load.stop().await;
    let _ = watch_stop.send(true);
    let renewed = renewals.await.unwrap_or_default();
    let record = std::mem::take(&mut *record.lock().unwrap());

    let mut r = Report {
        scenario: name.to_string(),
        mode: "local",
        started_at: started_at.try_to_rfc3339_string().unwrap_or_default(),
        duration_secs: began.elapsed().as_secs_f64(),
        machine: machine(),
        ..Report::default()
    };
    r.requests = report::requests(&record);
    r.writes = report::writes(stack, &record).await?;
    let totals = report::jobs(stack, start_seq).await?;
    r.jobs = totals.figures;
    r.jobs_completed_twice = totals.completed_twice;
    r.renewed_twice = totals.renewed_twice;
    r.dead_jobs = report::dead_jobs(stack).await;
    r.max_holders_at_once = Some(report::max_holders(stack));
    r.acme = report::acme(stack).await;
    r.leader_takeovers = report::takeovers(stack, since_term, &renewed).await;
    r.recovery_secs = recovery.map(|d| d.as_secs_f64());

    // What every scenario must keep.
    r.check(
        "no acknowledged write lost",
        r.writes.lost == 0
            && r.writes.checked == r.writes.acknowledged
            && r.writes.acknowledged > 0,
        format!(
            "{} of {} found",
            r.writes.checked - r.writes.lost,
            r.writes.acknowledged
        ),
    );
    r.check(
        "no job completed twice",
        r.jobs_completed_twice == 0,
        format!(
            "{} jobs with more than one completion",
            r.jobs_completed_twice
        ),
    );
    r.check(
        "no renewal done twice",
        r.renewed_twice == 0,
        format!("{} serials renewed by two jobs", r.renewed_twice),
    );
    r.check(
        "consistent within 5 minutes",
        recovery.is_some(),
        match recovery {
            Some(d) => format!(
                "every certificate issued, no renewal overdue, {:.1} s after the fault",
                d.as_secs_f64()
            ),
            None => "not after 300 s".to_string(),
        },
    );
    let renewal = r.jobs.get("renewal").cloned().unwrap_or_default();
    let issuance = r.jobs.get("issuance").cloned().unwrap_or_default();
    r.check(
        "renewals ran",
        renewal.run > 0,
        format!("{} renewal attempts", renewal.run),
    );
    let no_failed_jobs = |r: &mut Report| {
        r.check(
            "0 failed renewal and issuance jobs",
            renewal.failed == 0 && issuance.failed == 0,
            format!(
                "{} renewal and {} issuance attempts failed",
                renewal.failed, issuance.failed
            ),
        );
    };
    let all_answered_2xx = |r: &mut Report| {
        r.check(
            "0 non-2xx answers through the balancer",
            r.requests.non_2xx == 0 && r.requests.errors == 0,
            format!(
                "{} non-2xx, {} unanswered",
                r.requests.non_2xx, r.requests.errors
            ),
        );
    };
    match name {
        "rolling-restart" | "rolling-upgrade" => {
            no_failed_jobs(&mut r);
            all_answered_2xx(&mut r);
        }
        "zone-loss" => {
            r.check(
                "API availability >= 99.95 %",
                r.requests.availability >= 0.9995,
                format!("{:.4} %", r.requests.availability * 100.0),
            );
        }
        "db-stepdown-storm" => {
            no_failed_jobs(&mut r);
            let five_xx = record
                .requests
                .iter()
                .filter(|(_, s)| matches!(s, Some(500..=599) | None))
                .count();
            r.check(
                "0 5xx answers",
                five_xx == 0,
                format!("{five_xx} 5xx or unanswered"),
            );
        }
        "db-kill" => {
            let verify = stack.cli(&["audit", "verify"]);
            r.check(
                "audit chain verifies",
                verify.is_ok(),
                verify.map_or_else(
                    |e| e,
                    |out| out.lines().last().unwrap_or_default().to_string(),
                ),
            );
        }
        "worker-partition" => {
            // The order in flight at the end may be the one unmatched.
            r.check(
                "no order opened twice at the CA",
                r.acme.orders_opened <= r.acme.certificates_issued + 1,
                format!(
                    "{} orders for {} certificates",
                    r.acme.orders_opened, r.acme.certificates_issued
                ),
            );
        }
        "kill-storm" => {
            r.check(
                "no job dead",
                r.dead_jobs == 0,
                format!("{} dead jobs", r.dead_jobs),
            );
            // A worker killed holding an order leaves it recorded and
            // unfinished until a peer resumes it: under way, not doubled.
            let allowed = r.acme.certificates_issued
                + r.acme.orders_in_flight
                + r.acme.certificates_issued.div_ceil(100);
            r.check(
                "ACME orders opened <= certificates issued + orders under way + 1 %",
                r.acme.orders_opened <= allowed,
                format!(
                    "{} orders for {} certificates, {} under way",
                    r.acme.orders_opened, r.acme.certificates_issued, r.acme.orders_in_flight
                ),
            );
        }
        _ => {}
    }
    for (name, ok, detail) in fault.checks {
        r.check(&name, ok, detail);
    }
    r.finish();
    Ok(r)
}

/// Declares the seed certificates and waits until they are issued.
async fn seed(stack: &Stack) -> Result<(), String> {
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for n in 0..SEED_CERTIFICATES {
        let body = serde_json::json!({
            "name": format!("seed{n}"),
            "dns_names": [format!("seed{n}.{DOMAIN}")],
            "issuer_id": stack.issuer,
            "key_algorithm": "ecdsa-p256",
        });
        let (status, body) = stack
            .call(
                &client,
                "POST",
                &format!("/v1/projects/{}/certificates", stack.project),
                Some(body),
            )
            .await?;
        if status != 201 {
            return Err(format!("declaring a seed certificate: {status} {body}"));
        }
        ids.push(body["id"].as_str().unwrap_or_default().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let issued = stack
            .mongo
            .collection::<Document>("certificates")
            .count_documents(doc! { "_id": { "$in": &ids }, "status": "issued" })
            .await
            .unwrap_or(0);
        if issued as usize == ids.len() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {issued} of {} seed certificates issued in 120 s; see the logs",
                ids.len()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn wait_for_leader(stack: &Stack, timeout: Duration) -> Result<(String, i64), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(leader) = stack.leader().await {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            return Err("no scheduler became leader".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last renewal seen of each scheduler term (a killed leader leaves no
/// `ended_at`), polled until told to stop.
async fn watch_leases(
    mongo: mongodb::Database,
    mut stop: watch::Receiver<bool>,
) -> HashMap<i64, Bson> {
    let mut renewed = HashMap::new();
    let leases = mongo.collection::<Document>("leases");
    loop {
        if let Ok(Some(lease)) = leases.find_one(doc! { "_id": "scheduler" }).await {
            if let (Ok(term), Some(at)) = (lease.get_i64("term"), lease.get("renewed_at")) {
                renewed.insert(term, at.clone());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return renewed,
        }
    }
}

/// The time from `since` until every certificate of the fixture project is
/// issued and none overdue for renewal, checked every second for up to 5
/// minutes; `None` if that never came.
async fn consistent_since(stack: &Stack, load: &Load, since: Instant) -> Option<Duration> {
    let certificates = stack.mongo.collection::<Document>("certificates");
    loop {
        let requested = load.certificates();
        let overdue_before = DateTime::from_millis(
            DateTime::now().timestamp_millis() - RENEWAL_SLACK.as_millis() as i64,
        );
        let not_issued = certificates
            .count_documents(doc! { "project_id": &stack.project, "status": { "$ne": "issued" } })
            .await;
        // Overdue for renewal by more than the slack, or expired outright.
        let overdue = certificates
            .count_documents(doc! { "project_id": &stack.project, "$or": [
                { "renewal_due_at": { "$lt": overdue_before } },
                { "current.not_after": { "$lt": DateTime::now() } },
            ] })
            .await;
        let known = certificates
            .count_documents(doc! { "_id": { "$in": &requested } })
            .await;
        if let (Ok(0), Ok(0), Ok(known)) = (not_issued, overdue, known) {
            if known as usize == requested.len() {
                return Some(since.elapsed());
            }
        }
        if since.elapsed() > CONSISTENT_WITHIN {
            return None;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every workload in the chart's order — the apis one at a time, each
/// waited for until ready, then the workers, the schedulers last — stopped
/// with SIGTERM and started again; with `upgrade_to`, started as that binary
/// after `migrate` has run with it.
async fn rolling_restart(
    stack: &mut Stack,
    upgrade_to: Option<std::path::PathBuf>,
) -> Result<Fault, String> {
    let mut checks = Vec::new();
    // `fleet wait` for the new release's version: what the chart's scheduler
    // init container runs before the schedulers roll.
    let fleet_wait =
        |bin: &std::path::Path, stack: &Stack, timeout: &str| -> Result<String, String> {
            let version = std::process::Command::new(bin)
                .arg("--version")
                .output()
                .map_err(|e| e.to_string())?;
            let version = String::from_utf8_lossy(&version.stdout);
            let version = version
                .split_whitespace()
                .last()
                .unwrap_or_default()
                .to_string();
            crate::stack::cli_with(
                bin,
                stack,
                &[
                    "fleet",
                    "wait",
                    "--roles",
                    "api,worker",
                    "--version",
                    &version,
                    "--timeout",
                    timeout,
                ],
            )
        };
    if let Some(bin) = &upgrade_to {
        let behind = fleet_wait(bin, stack, "1");
        checks.push((
            "the previous release was running".to_string(),
            behind.as_ref().is_err_and(|e| e.contains("older than")),
            behind.map_or_else(
                |e| e.lines().last().unwrap_or_default().to_string(),
                |_| "every instance already new".into(),
            ),
        ));
        // The pre-upgrade Job: the new release's migrations, under the old
        // release's running processes.
        let before = schema_version(stack).await;
        let out = crate::stack::cli_with(bin, stack, &["migrate"]);
        let after = schema_version(stack).await;
        checks.push((
            "migrations ran under the old release".to_string(),
            out.is_ok(),
            out.map_or_else(
                |e| e,
                |_| format!("migrate exited 0; schema version {before} before, {after} after"),
            ),
        ));
        stack.settings.bin = bin.clone();
    }
    for role in [Role::Api, Role::Worker, Role::Scheduler] {
        if let (Some(bin), Role::Scheduler) = (&upgrade_to, role) {
            let caught_up = fleet_wait(bin, stack, "60");
            checks.push((
                "every api and worker on the new release before the schedulers roll".to_string(),
                caught_up.is_ok(),
                caught_up.map_or_else(|e| e, |_| "fleet wait exited 0".into()),
            ));
        }
        for i in 0..stack.procs_mut(role).len() {
            let p = &mut stack.procs_mut(role)[i];
            let code = p.terminate(SHUTDOWN_GRACE).await;
            checks.push((
                format!("{} exited by itself on SIGTERM", p.id),
                code == Some(0),
                format!("exit code {code:?}"),
            ));
            if let Some(bin) = &upgrade_to {
                p.program = bin.clone();
            }
            p.start()?;
            stack.wait_ready(role, i, Duration::from_secs(60)).await?;
        }
    }
    Ok(Fault {
        ended: Instant::now(),
        checks,
    })
}

/// The zone holding the scheduler leader: every process SIGKILLed and every
/// host cut off at once, for a third of the run; then healed and restarted.
async fn zone_loss(stack: &mut Stack, duration: Duration) -> Result<Fault, String> {
    let leader = stack.leader().await.map(|(holder, _)| holder);
    let zone = stack
        .app_procs()
        .find(|p| Some(&p.id) == leader.as_ref())
        .map_or(1, |p| p.host.zone);
    let hosts: Vec<_> = crate::stack::hosts(stack.settings.workers_per_zone)
        .into_iter()
        .filter(|h| h.zone == zone)
        .collect();
    for h in &hosts {
        topology::impair(h, LinkFault::Cut)?;
    }
    for role in [Role::Api, Role::Worker, Role::Scheduler] {
        for p in stack
            .procs_mut(role)
            .iter_mut()
            .filter(|p| p.host.zone == zone)
        {
            p.kill();
        }
    }
    let lost = Instant::now();
    let lost_at = DateTime::now();
    // Longer than the scheduler's lease, so that the standby takes over.
    tokio::time::sleep((duration / 3).max(Duration::from_secs(30))).await;
    let renewed_meanwhile = stack
        .mongo
        .collection::<Document>("audit")
        .count_documents(doc! {
            "action": "job.completed",
            "details.key": { "$regex": "^renew:" },
            "time": { "$gte": lost_at },
        })
        .await
        .unwrap_or(0);
    for h in &hosts {
        topology::heal(h);
    }
    for role in [Role::Api, Role::Worker, Role::Scheduler] {
        for i in 0..stack.procs_mut(role).len() {
            if stack.procs_mut(role)[i].host.zone == zone {
                stack.procs_mut(role)[i].start()?;
                stack.wait_ready(role, i, Duration::from_secs(60)).await?;
            }
        }
    }
    Ok(Fault {
        ended: Instant::now(),
        checks: vec![
            (
                format!("zone {zone} lost and back"),
                true,
                format!("down for {:.0} s", lost.elapsed().as_secs_f64()),
            ),
            (
                "renewals continued while the zone was down".into(),
                renewed_meanwhile > 0,
                format!("{renewed_meanwhile} renewals completed meanwhile"),
            ),
        ],
    })
}

/// One worker cut off from the database while it holds an issue job;
/// healed once a peer has finished that job (or after a third of the run).
async fn worker_partition(stack: &mut Stack, duration: Duration) -> Result<Fault, String> {
    let jobs = stack.mongo.collection::<Document>("jobs");
    let workers: Vec<String> = stack.workers.iter().map(|w| w.id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let held = loop {
        if let Ok(Some(job)) = jobs
            .find_one(doc! { "kind": "issue-certificate", "state": "running", "holder": { "$in": &workers } })
            .await
        {
            break job;
        }
        if Instant::now() > deadline {
            return Err("no worker held an issue job within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let job_id = held.get_object_id("_id").map_err(|e| e.to_string())?;
    let token = held.get_i64("token").unwrap_or(0);
    let victim = held.get_str("holder").unwrap_or_default().to_string();
    let host = stack
        .workers
        .iter()
        .find(|w| w.id == victim)
        .map(|w| w.host.clone())
        .ok_or("the holder is not one of the workers")?;
    topology::impair(&host, LinkFault::CutFrom(DB_IP))?;
    let cut = Instant::now();
    let heal_by = cut + (duration / 3).max(Duration::from_secs(30));
    let mut finished_in = None;
    while Instant::now() < heal_by {
        if finished_in.is_none() {
            if let Ok(Some(job)) = jobs.find_one(doc! { "_id": job_id, "state": "done" }).await {
                if job.get_str("holder") != Ok(victim.as_str()) {
                    finished_in = Some(cut.elapsed());
                }
            }
        }
        if finished_in.is_some() && cut.elapsed() > Duration::from_secs(15) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    topology::heal(&host);
    // Its writes, once it reaches the database again, carry a stale token.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let healed = Instant::now();
    let orders = stack
        .mongo
        .collection::<Document>("orders")
        .count_documents(doc! { "job_id": job_id })
        .await
        .unwrap_or(0);
    let completed: Vec<Document> = {
        use futures::TryStreamExt;
        stack
            .mongo
            .collection::<Document>("audit")
            .find(doc! { "action": "job.completed", "target": format!("jobs/{job_id}") })
            .await
            .map_err(|e| e.to_string())?
            .try_collect()
            .await
            .map_err(|e| e.to_string())?
    };
    let by_victim = completed
        .iter()
        .filter(|c| {
            c.get_document("details")
                .ok()
                .and_then(|d| d.get_i64("token").ok())
                == Some(token)
        })
        .count();
    let victim_log = stack
        .workers
        .iter()
        .find(|w| w.id == victim)
        .map(|w| w.log_text())
        .unwrap_or_default();
    let refused = victim_log.lines().any(|l| {
        l.contains(&job_id.to_hex()) && (l.contains("lease_lost") || l.contains("lease lost"))
    });
    Ok(Fault {
        ended: healed,
        checks: vec![
            (
                "its job finished by a peer within seconds".into(),
                finished_in.is_some_and(|d| d < Duration::from_secs(30)),
                finished_in.map_or("not finished while cut off".into(), |d| format!("{victim} cut off; job done by a peer {:.1} s later", d.as_secs_f64())),
            ),
            (
                "its late writes refused".into(),
                by_victim == 0 && completed.len() == 1 && refused,
                format!("{} completions, {by_victim} under the cut-off holder's token {token}; its log shows the lease lost: {refused}", completed.len()),
            ),
            ("no duplicate ACME order".into(), orders <= 1, format!("{orders} orders for job {job_id}")),
        ],
    })
}

/// The scheduler leader SIGSTOPped until the standby has taken over and
/// its lease is long past, then resumed.
async fn leader_pause(stack: &mut Stack) -> Result<Fault, String> {
    let (holder, term) = wait_for_leader(stack, Duration::from_secs(30)).await?;
    let i = stack
        .schedulers
        .iter()
        .position(|s| s.id == holder)
        .ok_or("the leader is not one of the schedulers")?;
    let before = stack.schedulers[i].log_text().len();
    stack.schedulers[i].signal(Signal::SIGSTOP);
    let paused = Instant::now();
    let mut took_over = None;
    while paused.elapsed() < Duration::from_secs(60) {
        if let Some((h, t)) = stack.leader().await {
            if t > term && h != holder {
                took_over = Some(paused.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Past its lease: the default lease is 15 s.
    tokio::time::sleep(Duration::from_secs(5)).await;
    stack.schedulers[i].signal(Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = stack.schedulers[i].log_text();
    let after = &after[before.min(after.len())..];
    let noticed = after.contains("stepping down") || after.contains("lease lost");
    Ok(Fault {
        ended: Instant::now(),
        checks: vec![
            (
                "the standby took over within 30 s".into(),
                took_over.is_some_and(|d| d <= Duration::from_secs(30)),
                took_over.map_or("no takeover in 60 s".into(), |d| {
                    format!("{:.1} s after the pause", d.as_secs_f64())
                }),
            ),
            (
                "the paused leader stood down when resumed".into(),
                noticed,
                format!("{holder} logged a step-down: {noticed}"),
            ),
        ],
    })
}

/// The primary stepped down for 2 s every 5 s for half the run (at most a
/// minute). The single-node database has no other member to elect: it is
/// without a primary for the step-down's 2 s, about what a replica set's
/// election after a step-down takes. Longer outages, step-downs back to
/// back, are tests/it/election.rs's.
async fn stepdown_storm(stack: &mut Stack, duration: Duration) -> Result<Fault, String> {
    let admin = stack.mongo.client().database("admin");
    let until = Instant::now() + (duration / 2).min(Duration::from_secs(60));
    let mut n = 0;
    while Instant::now() < until {
        if admin
            .run_command(doc! { "replSetStepDown": 2, "force": true })
            .await
            .is_ok()
        {
            n += 1;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    Ok(Fault {
        ended: Instant::now(),
        checks: vec![(
            "primary stepped down".into(),
            n > 0,
            format!("{n} step-downs"),
        )],
    })
}

/// The database SIGKILLed under load and restarted 3 s later, twice.
async fn db_kill(stack: &mut Stack, duration: Duration) -> Result<Fault, String> {
    for _ in 0..2 {
        stack.db.kill();
        tokio::time::sleep(Duration::from_secs(3)).await;
        stack.db.start()?;
        tokio::time::sleep((duration / 4).max(Duration::from_secs(5))).await;
    }
    Ok(Fault {
        ended: Instant::now(),
        checks: vec![],
    })
}

/// Until `deadline`, every 1–4 s one random process (never the database)
/// SIGKILLed and restarted, or SIGSTOPped and resumed, 1–5 s later; every
/// third fault instead makes one random host's link lossy (30 % of packets
/// dropped) or slow (128 kbit/s) for as long.
async fn kill_storm(stack: &mut Stack, deadline: Instant) -> Result<Fault, String> {
    let mut faults = 0;
    let hosts: Vec<_> = crate::stack::hosts(stack.settings.workers_per_zone)
        .into_iter()
        .filter(|h| h.zone > 0)
        .collect();
    while Instant::now() < deadline {
        if rand::rng().random_range(0..3) == 0 {
            let host = &hosts[rand::rng().random_range(0..hosts.len())];
            if rand::rng().random_bool(0.5) {
                topology::impair(host, LinkFault::Lossy(30))?;
            } else {
                topology::slow(host, 128)?;
            }
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1000..5000))).await;
            topology::heal(host);
            faults += 1;
            tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1000..4000))).await;
            continue;
        }
        let (role, count) = {
            let roles = [
                (Role::Api, stack.apis.len()),
                (Role::Worker, stack.workers.len()),
                (Role::Scheduler, stack.schedulers.len()),
            ];
            roles[rand::rng().random_range(0..roles.len())]
        };
        let i = rand::rng().random_range(0..count);
        let down = Duration::from_millis(rand::rng().random_range(1000..5000));
        let kill = rand::rng().random_bool(0.5);
        {
            let p = &mut stack.procs_mut(role)[i];
            if kill {
                p.kill();
            } else {
                p.signal(Signal::SIGSTOP);
            }
        }
        tokio::time::sleep(down).await;
        {
            let p = &mut stack.procs_mut(role)[i];
            if kill {
                p.start()?;
            } else {
                p.signal(Signal::SIGCONT);
            }
        }
        faults += 1;
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(1000..4000))).await;
    }
    // Everything back before the recovery clock starts.
    for role in [Role::Api, Role::Worker, Role::Scheduler] {
        for i in 0..stack.procs_mut(role).len() {
            stack.wait_ready(role, i, Duration::from_secs(60)).await?;
        }
    }
    Ok(Fault {
        ended: Instant::now(),
        checks: vec![(
            "faults injected".into(),
            faults > 0,
            format!("{faults} kills, pauses and bad links"),
        )],
    })
}

fn machine() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} ({cores} cores)", host.trim())
}

/// The schema version the database records (0 when unreadable).
async fn schema_version(stack: &Stack) -> i64 {
    stack
        .mongo
        .collection::<Document>("schema")
        .find_one(doc! { "_id": "version" })
        .await
        .ok()
        .flatten()
        .and_then(|d| d.get_i64("version").ok())
        .unwrap_or(0)
}
