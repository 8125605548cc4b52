//! `certautopilot health`: is this installation working?
//!
//! Healthy (exit 0) when the primary answers, the schema fits this binary, a
//! scheduler leader is live, and the KEK passes its canary, is the
//! installation's (each version's check value matches the recorded one) and
//! holds every version a stored data key needs. Replica-set members, queue depth and dead jobs
//! are reported too; dead jobs are a warning, not a failure, because a
//! restored or long-running installation may keep old ones an operator has
//! yet to look at, and they do not stop new work.

use std::time::Duration;

use mongodb::bson::{doc, Document};
use serde::Serialize;

use std::sync::Arc;

use crate::audit::checkpoint::{self, Next};
use crate::crypto::kek::KekProvider;
use crate::crypto::secrets::Secrets;
use crate::queue::jobs::JobQueue;
use crate::queue::lease::{Leases, SCHEDULER_LEASE};
use crate::store::keys::data_keys_by_version;
use crate::store::schema::{self, SchemaFit};
use crate::store::{short, Store};

const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub healthy: bool,
    pub checks: Vec<Check>,
    pub members: Vec<Member>,
    pub queue: Vec<QueueRow>,
    pub dead_jobs: i64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub name: String,
    pub state: String,
    pub healthy: bool,
}

#[derive(Debug, Serialize)]
pub struct QueueRow {
    pub kind: String,
    pub state: String,
    pub jobs: i64,
}

pub async fn check(store: &Store, kek: Result<Arc<dyn KekProvider>, String>) -> HealthReport {
    let mut checks = Vec::new();
    let primary = store.ping_primary(DEADLINE).await;
    let reachable = primary.is_ok();
    checks.push(Check {
        name: "database",
        ok: reachable,
        detail: match &primary {
            Ok(hello) => format!(
                "primary {} answers",
                hello
                    .get_str("primary")
                    .or(hello.get_str("me"))
                    .unwrap_or("?")
            ),
            Err(e) => e.clone(),
        },
    });
    if !reachable {
        return HealthReport {
            healthy: false,
            checks,
            members: vec![],
            queue: vec![],
            dead_jobs: 0,
        };
    }
    let members = members(store).await;

    match tokio::time::timeout(DEADLINE, schema::read_state(store)).await {
        Ok(Ok(state)) => {
            let fit = SchemaFit::of(state);
            checks.push(Check {
                name: "schema",
                ok: fit.runs(),
                detail: fit.describe(),
            });
        }
        Ok(Err(e)) => checks.push(Check {
            name: "schema",
            ok: false,
            detail: short(&e),
        }),
        Err(_) => checks.push(Check {
            name: "schema",
            ok: false,
            detail: "timed out".into(),
        }),
    }

    match tokio::time::timeout(
        DEADLINE,
        Leases::new(store.clone()).live_holder(SCHEDULER_LEASE),
    )
    .await
    {
        Ok(Ok(Some(term))) => checks.push(Check {
            name: "scheduler leader",
            ok: true,
            detail: format!("{} leads (term {})", term.holder, term.term),
        }),
        Ok(Ok(None)) => checks.push(Check {
            name: "scheduler leader",
            ok: false,
            detail: "no live leader".into(),
        }),
        Ok(Err(e)) => checks.push(Check {
            name: "scheduler leader",
            ok: false,
            detail: short(&e),
        }),
        Err(_) => checks.push(Check {
            name: "scheduler leader",
            ok: false,
            detail: "timed out".into(),
        }),
    }

    checks.push(audit_check(store, kek.clone()).await);
    checks.push(kek_check(store, kek).await);
    checks.push(transaction_lifetime_check(store).await);

    let mut queue = Vec::new();
    let mut dead_jobs = 0;
    match tokio::time::timeout(DEADLINE, JobQueue::new(store.clone()).depth()).await {
        Ok(Ok(rows)) => {
            for (kind, state, jobs) in rows {
                if state == "dead" {
                    dead_jobs += jobs;
                }
                queue.push(QueueRow { kind, state, jobs });
            }
            queue.sort_by(|a, b| (&a.kind, &a.state).cmp(&(&b.kind, &b.state)));
            checks.push(Check {
                name: "queue",
                ok: true,
                detail: if dead_jobs > 0 {
                    format!("warning: {dead_jobs} dead job(s) keep their last error for inspection")
                } else {
                    "no dead jobs".into()
                },
            });
        }
        Ok(Err(e)) => checks.push(Check {
            name: "queue",
            ok: false,
            detail: short(&e),
        }),
        Err(_) => checks.push(Check {
            name: "queue",
            ok: false,
            detail: "timed out".into(),
        }),
    }
    let healthy = checks.iter().all(|c| c.ok);
    HealthReport {
        healthy,
        checks,
        members,
        queue,
        dead_jobs,
    }
}

/// Above this, a process killed inside a transaction blocks the documents it
/// touched (a job, the audit head) for too long; see README "Operations".
pub const MAX_RECOMMENDED_TRANSACTION_LIFETIME_SECS: i64 = 15;

/// A warning, not a failure: the server's `transactionLifetimeLimitSeconds`.
async fn transaction_lifetime_check(store: &Store) -> Check {
    let admin = store.client().database("admin");
    let asked = admin.run_command(doc! { "getParameter": 1, "transactionLifetimeLimitSeconds": 1 });
    let detail = match tokio::time::timeout(DEADLINE, asked).await {
        Ok(Ok(d)) => match d.get_i32("transactionLifetimeLimitSeconds").map(i64::from).or(d.get_i64("transactionLifetimeLimitSeconds")) {
            Ok(secs) if secs > MAX_RECOMMENDED_TRANSACTION_LIFETIME_SECS => format!(
                "warning: transactionLifetimeLimitSeconds is {secs}: a process killed mid-transaction blocks a job for that long; set it to 10"
            ),
            Ok(secs) => format!("transactionLifetimeLimitSeconds is {secs}"),
            Err(_) => "transactionLifetimeLimitSeconds not reported".into(),
        },
        _ => "transactionLifetimeLimitSeconds not readable (getParameter refused)".into(),
    };
    Check {
        name: "transactions",
        ok: true,
        detail,
    }
}

/// The audit records since the last checkpoint verify: the check
/// housekeeping makes before it seals, so a failure here is also why the
/// chain is no longer being sealed (`certautopilot_audit_seal_refused`).
async fn audit_check(store: &Store, kek: Result<Arc<dyn KekProvider>, String>) -> Check {
    let result = |ok: bool, detail: String| Check {
        name: "audit",
        ok,
        detail,
    };
    let kek = match kek {
        Ok(kek) => kek,
        Err(_) => {
            return result(
                false,
                "not checked: the checkpoint key needs the KEK".into(),
            )
        }
    };
    let secrets = Secrets::new(store.clone(), kek);
    let checked = async {
        let Some(key) = checkpoint::existing_key(&secrets)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(
                match checkpoint::latest(store).await.map_err(|e| short(&e))? {
                    None => result(true, "no checkpoint yet".into()),
                    Some(_) => result(false, checkpoint::KeyError::Gone.to_string()),
                },
            );
        };
        if let Some(problem) = checkpoint::refusal_since_last(store)
            .await
            .map_err(|e| short(&e))?
        {
            return Ok(result(
                false,
                format!("housekeeping refuses to seal the chain: {problem}"),
            ));
        }
        let now = store.server_now().await.map_err(|e| short(&e))?;
        Ok::<_, String>(
            match checkpoint::next(store, &key, None, now)
                .await
                .map_err(|e| short(&e))?
            {
                Next::UpToDate(seq) => result(true, format!("sealed up to record {seq}")),
                Next::Seal(next) => result(
                    true,
                    format!(
                        "records up to {} verify; sealed up to record {}",
                        next.seq,
                        next.prev.map(|p| p.0).unwrap_or(0)
                    ),
                ),
                Next::Refused(problem) => result(
                    false,
                    format!("the chain since its last checkpoint does not verify, and is not being sealed: {problem}"),
                ),
            },
        )
    };
    match tokio::time::timeout(DEADLINE, checked).await {
        Ok(Ok(check)) => check,
        Ok(Err(e)) => result(false, e),
        Err(_) => result(
            false,
            "verifying since the last checkpoint timed out".into(),
        ),
    }
}

/// The KEK answers a canary round trip, and every data key's version is
/// one it holds (after a restore, this is what says the right KEK was given).
async fn kek_check(store: &Store, kek: Result<Arc<dyn KekProvider>, String>) -> Check {
    let failed = |detail: String| Check {
        name: "kek",
        ok: false,
        detail,
    };
    let kek = match kek {
        Ok(kek) => kek,
        Err(e) => return failed(e),
    };
    if let Err(e) = crate::actors::readiness::kek_canary(kek.clone()).await {
        return failed(e);
    }
    if let Err(e) = crate::actors::readiness::kek_identity(store, kek.clone()).await {
        return failed(e.to_string());
    }
    let counts = match tokio::time::timeout(DEADLINE, data_keys_by_version(store)).await {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => return failed(short(&e)),
        Err(_) => return failed("counting data keys timed out".into()),
    };
    let held = kek.versions();
    let missing: Vec<String> = counts
        .iter()
        .filter(|(v, _)| !held.contains(v))
        .map(|(v, n)| format!("{n} data key(s) need KEK version {v}"))
        .collect();
    if !missing.is_empty() {
        return failed(format!(
            "{}, which {} does not hold",
            missing.join(", "),
            kek.describe()
        ));
    }
    let total: i64 = counts.values().sum();
    Check {
        name: "kek",
        ok: true,
        detail: format!(
            "{} answers (current version {}); all {total} data key(s) can be unwrapped",
            kek.describe(),
            kek.current_version()
        ),
    }
}

/// Replica-set members and their states, where the server reports them.
async fn members(store: &Store) -> Vec<Member> {
    let admin = store.client().database("admin");
    let status =
        tokio::time::timeout(DEADLINE, admin.run_command(doc! { "replSetGetStatus": 1 })).await;
    let Ok(Ok(status)) = status else {
        return Vec::new();
    };
    let Ok(members) = status.get_array("members") else {
        return Vec::new();
    };
    members
        .iter()
        .filter_map(|m| m.as_document())
        .map(|m: &Document| Member {
            name: m.get_str("name").unwrap_or("?").to_string(),
            state: m.get_str("stateStr").unwrap_or("?").to_string(),
            healthy: m
                .get_f64("health")
                .map(|h| h >= 1.0)
                .or(m.get_i32("health").map(|h| h >= 1))
                .unwrap_or(false),
        })
        .collect()
}

impl HealthReport {
    pub fn render_human(&self) -> String {
        let mut out = String::new();
        out.push_str(if self.healthy {
            "HEALTHY\n"
        } else {
            "UNHEALTHY\n"
        });
        for c in &self.checks {
            out.push_str(&format!(
                "  [{}] {:<17} {}\n",
                if c.ok { " ok " } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        if !self.members.is_empty() {
            out.push_str("replica set:\n");
            for m in &self.members {
                out.push_str(&format!(
                    "  {:<28} {:<10} {}\n",
                    m.name,
                    m.state,
                    if m.healthy { "healthy" } else { "unhealthy" }
                ));
            }
        }
        if !self.queue.is_empty() {
            out.push_str("queue:\n");
            for q in &self.queue {
                out.push_str(&format!("  {:<20} {:<8} {}\n", q.kind, q.state, q.jobs));
            }
        }
        out
    }
}

/// `certautopilot health [--json]`: exit 0 only when healthy.
pub async fn run(
    common: super::config::CommonArgs,
    json: bool,
) -> Result<std::process::ExitCode, super::Failure> {
    let store = super::connect(&common).await?;
    let kek = super::open_kek(&common).map_err(|e| match e {
        super::Failure::Config(e) => e.to_string(),
        super::Failure::Runtime(e) => e,
    });
    let report = check(&store, kek).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.render_human());
    }
    Ok(if report.healthy {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
