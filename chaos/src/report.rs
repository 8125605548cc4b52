//! A scenario's figures, read afterwards from what the installation left:
//! the client's record, the database (the ledger's writes, the audit log's
//! job records, the scheduler's terms), the workers' logs and Pebble's.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use serde::Serialize;

use crate::load::Record;
use crate::procs::Role;
use crate::stack::Stack;

#[derive(Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub mode: &'static str,
    pub started_at: String,
    pub duration_secs: f64,
    pub machine: String,
    pub requests: Requests,
    pub writes: Writes,
    /// `issuance` and `renewal` (issue-certificate jobs, by key).
    pub jobs: BTreeMap<String, JobFigures>,
    /// Dead jobs of any kind in the queue at the end.
    pub dead_jobs: u64,
    /// The most claims of one job open at once in the workers' logs (a
    /// paused or cut-off holder counts until it notices: fencing refuses
    /// its writes, which `jobs_completed_twice` checks).
    pub max_holders_at_once: Option<u64>,
    pub jobs_completed_twice: u64,
    /// Serials replaced by more than one completed renewal.
    pub renewed_twice: u64,
    pub acme: Acme,
    pub leader_takeovers: Vec<Takeover>,
    /// From the fault's end until every certificate was issued and no
    /// renewal overdue.
    pub recovery_secs: Option<f64>,
    pub checks: Vec<Check>,
    pub passed: bool,
}

#[derive(Serialize, Default)]
pub struct Requests {
    pub total: u64,
    pub ok: u64,
    pub non_2xx: u64,
    /// No answer at all (refused, reset, timed out).
    pub errors: u64,
    /// ok / total.
    pub availability: f64,
    pub p99_ms: f64,
}

#[derive(Serialize, Default)]
pub struct Writes {
    pub acknowledged: u64,
    pub checked: u64,
    pub lost: u64,
}

#[derive(Serialize, Default, Clone)]
pub struct JobFigures {
    /// Attempts that ended (completed, retrying or dead).
    pub run: u64,
    /// Attempts that failed (retrying or dead).
    pub failed: u64,
    pub dead: u64,
}

#[derive(Serialize, Default)]
pub struct Acme {
    pub orders_opened: u64,
    pub certificates_issued: u64,
    /// Orders recorded and not finished when the run ended: a killed
    /// worker's, which a peer resumes once its lease runs out. Not
    /// duplicates (one opened but never recorded is not among them).
    pub orders_in_flight: u64,
}

#[derive(Serialize, Clone)]
pub struct Takeover {
    pub term: i64,
    pub holder: String,
    /// From the previous term's end (or last renewal) to this one's start.
    pub gap_secs: Option<f64>,
}

#[derive(Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Report {
    pub fn check(&mut self, name: &str, ok: bool, detail: String) {
        self.checks.push(Check {
            name: name.to_string(),
            ok,
            detail,
        });
    }

    pub fn finish(&mut self) {
        self.passed = self.checks.iter().all(|c| c.ok);
    }

    pub fn text(&self) -> String {
        let mut out = format!(
            "scenario {} ({}), {:.0} s, {}\n",
            self.scenario, self.mode, self.duration_secs, self.machine
        );
        let r = &self.requests;
        out += &format!(
            "  requests through the balancer: {} ({} ok, {} non-2xx, {} unanswered): availability {:.4} %, p99 {:.1} ms\n",
            r.total,
            r.ok,
            r.non_2xx,
            r.errors,
            r.availability * 100.0,
            r.p99_ms
        );
        let w = &self.writes;
        out += &format!(
            "  acknowledged writes: {} checked of {}, {} lost\n",
            w.checked, w.acknowledged, w.lost
        );
        for (kind, j) in &self.jobs {
            out += &format!(
                "  {kind} jobs: {} run, {} failed, {} dead\n",
                j.run, j.failed, j.dead
            );
        }
        out += &format!(
            "  dead jobs at the end: {}; jobs completed twice: {}; most holders of one job at once (claim logs): {}\n",
            self.dead_jobs,
            self.jobs_completed_twice,
            self.max_holders_at_once
                .map_or("n/a".to_string(), |n| n.to_string())
        );
        out += &format!(
            "  ACME orders opened: {}, certificates issued: {}, still under way: {}\n",
            self.acme.orders_opened, self.acme.certificates_issued, self.acme.orders_in_flight
        );
        for t in &self.leader_takeovers {
            out += &format!(
                "  leader term {} to {}: {}\n",
                t.term,
                t.holder,
                t.gap_secs.map_or("first term".to_string(), |g| format!(
                    "{g:.1} s without a leader"
                ))
            );
        }
        out += &format!(
            "  consistent again: {}\n",
            self.recovery_secs
                .map_or("never".to_string(), |s| format!("{s:.1} s after the fault"))
        );
        for c in &self.checks {
            out += &format!(
                "  [{}] {}: {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        out += &format!("  {}\n", if self.passed { "PASSED" } else { "FAILED" });
        out
    }
}

pub fn requests(record: &Record) -> Requests {
    let total = record.requests.len() as u64;
    let ok = record
        .requests
        .iter()
        .filter(|(_, s)| matches!(s, Some(200..=299)))
        .count() as u64;
    let errors = record.requests.iter().filter(|(_, s)| s.is_none()).count() as u64;
    let mut latencies: Vec<Duration> = record.requests.iter().map(|(l, _)| *l).collect();
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default();
    Requests {
        total,
        ok,
        non_2xx: total - ok - errors,
        errors,
        availability: if total == 0 {
            0.0
        } else {
            ok as f64 / total as f64
        },
        p99_ms: p99.as_secs_f64() * 1000.0,
    }
}

/// Every project and certificate the API answered 201 for, looked up in
/// the database.
pub async fn writes(stack: &Stack, record: &Record) -> Result<Writes, String> {
    let mut checked = 0;
    let mut found = 0;
    for (collection, ids) in [
        ("projects", &record.projects),
        ("certificates", &record.certificates),
    ] {
        for chunk in ids.chunks(500) {
            let n = stack
                .mongo
                .collection::<Document>(collection)
                .count_documents(doc! { "_id": { "$in": chunk.to_vec() } })
                .await
                .map_err(|e| format!("reading {collection}: {e}"))?;
            checked += chunk.len() as u64;
            found += n;
        }
    }
    Ok(Writes {
        acknowledged: (record.projects.len() + record.certificates.len()) as u64,
        checked,
        lost: checked - found,
    })
}

/// The highest audit sequence number now: job records after it are this run's.
pub async fn audit_seq(stack: &Stack) -> i64 {
    stack
        .mongo
        .collection::<Document>("audit")
        .find_one(doc! {})
        .sort(doc! { "seq": -1 })
        .await
        .ok()
        .flatten()
        .and_then(|d| d.get_i64("seq").ok())
        .unwrap_or(0)
}

pub struct JobTotals {
    pub figures: BTreeMap<String, JobFigures>,
    /// Jobs with more than one `job.completed` record.
    pub completed_twice: u64,
    /// Serials replaced by more than one completed renewal.
    pub renewed_twice: u64,
}

/// issue-certificate job attempts since `after_seq`, from the audit log.
pub async fn jobs(stack: &Stack, after_seq: i64) -> Result<JobTotals, String> {
    let records: Vec<Document> = stack
        .mongo
        .collection::<Document>("audit")
        .find(doc! {
            "seq": { "$gt": after_seq },
            "action": { "$in": ["job.completed", "job.retrying", "job.dead"] },
        })
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut figures: BTreeMap<String, JobFigures> = BTreeMap::new();
    figures.insert("issuance".into(), JobFigures::default());
    figures.insert("renewal".into(), JobFigures::default());
    let mut completions: HashMap<String, u64> = HashMap::new();
    // renew:<certificate>:<serial replaced>:<consecutive failures>: the same
    // serial renewed by two jobs (whatever their failure counts) is a renewal
    // done twice.
    let mut renewals: HashMap<String, u64> = HashMap::new();
    for r in &records {
        let details = r.get_document("details").cloned().unwrap_or_default();
        if r.get_str("action") == Ok("job.completed") {
            *completions
                .entry(r.get_str("target").unwrap_or_default().to_string())
                .or_default() += 1;
            if let Some((serial, _)) = details
                .get_str("key")
                .ok()
                .filter(|k| k.starts_with("renew:"))
                .and_then(|k| k.rsplit_once(':'))
            {
                *renewals.entry(serial.to_string()).or_default() += 1;
            }
        }
        if details.get_str("kind") != Ok("issue-certificate") {
            continue;
        }
        let which = match details.get_str("key") {
            Ok(key) if key.starts_with("renew:") => "renewal",
            _ => "issuance",
        };
        let f = figures.get_mut(which).expect("both inserted");
        f.run += 1;
        match r.get_str("action") {
            Ok("job.retrying") => f.failed += 1,
            Ok("job.dead") => {
                f.failed += 1;
                f.dead += 1;
            }
            _ => {}
        }
    }
    Ok(JobTotals {
        figures,
        completed_twice: completions.values().filter(|n| **n > 1).count() as u64,
        renewed_twice: renewals.values().filter(|n| **n > 1).count() as u64,
    })
}

pub async fn dead_jobs(stack: &Stack) -> u64 {
    stack
        .mongo
        .collection::<Document>("jobs")
        .count_documents(doc! { "state": "dead" })
        .await
        .unwrap_or(0)
}

/// Pebble's own log: orders it created and certificates it issued; and
/// from the database, the orders still under way.
pub async fn acme(stack: &Stack) -> Acme {
    let log = std::fs::read_to_string(&stack.pebble_log).unwrap_or_default();
    // The open stages of domain::order::Stage::OPEN.
    let open = [
        "created",
        "challenges_published",
        "validating",
        "finalizing",
    ];
    let orders_in_flight = stack
        .mongo
        .collection::<Document>("orders")
        .count_documents(doc! { "stage": { "$in": open.to_vec() } })
        .await
        .unwrap_or(0);
    Acme {
        orders_in_flight,
        orders_opened: log.lines().filter(|l| l.contains("Added order")).count() as u64,
        certificates_issued: log
            .lines()
            .filter(|l| l.contains("Issued certificate serial"))
            .count() as u64,
    }
}

/// The most claims of one job open at once, from the workers' JSON logs: a
/// claim opens at `job claimed` and closes at its `job finished`, or at the
/// last line its process wrote (a killed process holds nothing).
pub fn max_holders(stack: &Stack) -> u64 {
    // (job, token) -> (opened, closed), as RFC 3339 timestamps (UTC, fixed
    // width, so they compare as strings).
    let mut intervals: Vec<(String, String, String)> = Vec::new();
    for p in stack.app_procs().filter(|p| p.role == Role::Worker) {
        let text = p.log_text();
        let mut open: HashMap<(String, i64), String> = HashMap::new();
        let mut last = String::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let ts = v["timestamp"].as_str().unwrap_or_default().to_string();
            // tracing's JSON puts an event's fields at the top level.
            let fields = if v["fields"].is_object() {
                &v["fields"]
            } else {
                &v
            };
            let message = fields["message"].as_str().unwrap_or_default();
            if message == "started" {
                // A new run of this process: the old one's claims ended with it.
                for ((job, _), opened) in open.drain() {
                    intervals.push((job, opened, last.clone()));
                }
            }
            let key = || {
                (
                    fields["job"].as_str().unwrap_or_default().to_string(),
                    fields["token"].as_i64().unwrap_or(-1),
                )
            };
            match message {
                "job claimed" => {
                    open.insert(key(), ts.clone());
                }
                "job finished" => {
                    if let Some(opened) = open.remove(&key()) {
                        intervals.push((key().0, opened, ts.clone()));
                    }
                }
                _ => {}
            }
            last = ts;
        }
        for ((job, _), opened) in open.drain() {
            intervals.push((job, opened, last.clone()));
        }
    }
    let mut by_job: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (job, a, b) in intervals {
        by_job.entry(job).or_default().push((a, b));
    }
    by_job
        .values()
        .map(|spans| {
            let mut events: Vec<(&str, i32)> = Vec::new();
            for (a, b) in spans {
                events.push((a, 1));
                events.push((b, -1));
            }
            // Ends before starts at the same instant.
            events.sort();
            let (mut now, mut most) = (0i32, 0i32);
            for (_, d) in events {
                now += d;
                most = most.max(now);
            }
            most as u64
        })
        .max()
        .unwrap_or(0)
}

/// Scheduler terms begun since `since_term`, with the time without a leader
/// before each; `renewed` is the last renewal the harness saw of each term.
pub async fn takeovers(
    stack: &Stack,
    since_term: i64,
    renewed: &HashMap<i64, Bson>,
) -> Vec<Takeover> {
    let terms: Vec<Document> = match stack
        .mongo
        .collection::<Document>("lease_terms")
        .find(doc! { "lease": "scheduler", "term": { "$gte": since_term } })
        .sort(doc! { "term": 1 })
        .await
    {
        Ok(cursor) => cursor.try_collect().await.unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let millis = |b: Option<&Bson>| b.and_then(Bson::as_datetime).map(|d| d.timestamp_millis());
    let mut out = Vec::new();
    let mut previous: Option<&Document> = None;
    for t in &terms {
        let term = t.get_i64("term").unwrap_or(0);
        let gap = previous.and_then(|p| {
            let prev_term = p.get_i64("term").unwrap_or(0);
            let prev_end = millis(p.get("ended_at")).or_else(|| millis(renewed.get(&prev_term)))?;
            let start = millis(t.get("started_at"))?;
            Some(((start - prev_end).max(0)) as f64 / 1000.0)
        });
        if term > since_term {
            out.push(Takeover {
                term,
                holder: t.get_str("holder").unwrap_or_default().to_string(),
                gap_secs: gap,
            });
        }
        previous = Some(t);
    }
    out
}
