//! The SIEM as a second witness (`audit verify --witness FILE`): the audit
//! records a SIEM received from our syslog forwarder, as rsyslog writes
//! them to a file, compared with the audit log in the database.
//!
//! After a restore the two part ways at the restore: the database goes on
//! from the snapshot's last record with a `snapshot.restored` record, while
//! the SIEM also holds what the lost installation wrote after the snapshot.
//! Those records (at or after the restore's sequence number, with other
//! hashes than the database's) are listed, not flagged. Any other record
//! the two hold under one sequence number with different hashes is flagged,
//! as are records the SIEM holds beyond the database's end when no restore
//! explains them (the log was cut back).
//!
//! Each line is read where the record is: the JSON body our forwarder puts
//! last on the line (whatever rsyslog template printed the line, `%rawmsg%`
//! or one that keeps only the message), else the `audit@32473` structured
//! data. Lines that are neither (other programs' messages) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use futures::TryStreamExt;
use mongodb::bson::doc;
use mongodb::error::Error as MongoError;
use serde::Serialize;

use super::AUDIT_COLLECTION;
use crate::store::Store;

pub const RESTORED_ACTION: &str = "snapshot.restored";
/// At most this many records are listed one by one in each part of the
/// text report (the JSON one holds them all).
const LISTED: usize = 1000;

/// One audit record as the SIEM received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WitnessRecord {
    pub seq: i64,
    pub hash: String,
    pub prev_hash: Option<String>,
    pub time: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
}

/// Reads one line: the record it carries, if any.
pub fn parse_line(line: &str) -> Option<WitnessRecord> {
    json_body(line).or_else(|| structured_data(line))
}

fn json_body(line: &str) -> Option<WitnessRecord> {
    let line = line.trim_end();
    for (at, _) in line.match_indices('{') {
        let Ok(serde_json::Value::Object(body)) = serde_json::from_str(&line[at..]) else {
            continue;
        };
        let seq = body.get("seq").and_then(serde_json::Value::as_i64)?;
        let hash = body.get("hash").and_then(|h| h.as_str())?.to_string();
        let text = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let time = match body.get("time") {
            Some(serde_json::Value::String(t)) => Some(t.clone()),
            Some(serde_json::Value::Object(o)) => o.get("$date").map(|d| match d {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            _ => None,
        };
        return Some(WitnessRecord {
            seq,
            hash,
            prev_hash: text("prev_hash"),
            time,
            action: text("action"),
            target: text("target"),
        });
    }
    None
}

fn structured_data(line: &str) -> Option<WitnessRecord> {
    let sd = &line[line.find("[audit@32473 ")?..];
    let param = |name: &str| {
        let start = sd.find(&format!(" {name}=\""))? + name.len() + 3;
        let rest = &sd[start..];
        // Values are escaped (`\"`, `\\`, `\]`); seq and hash never need it.
        Some(rest[..rest.find('"')?].to_string())
    };
    Some(WitnessRecord {
        seq: param("seq")?.parse().ok()?,
        hash: param("hash")?,
        prev_hash: param("prev_hash"),
        time: None,
        action: None,
        target: param("target"),
    })
}

/// A record under one sequence number with two different hashes.
#[derive(Debug, Clone, Serialize)]
pub struct Disagreement {
    pub seq: i64,
    pub witness_hash: String,
    pub database_hash: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestorePoint {
    /// The `snapshot.restored` record's own sequence number.
    pub seq: i64,
    pub taken_at: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WitnessReport {
    pub witness_records: usize,
    pub unreadable_lines: usize,
    pub restore: Option<RestorePoint>,
    /// Records both hold with the same hash.
    pub agreed: usize,
    /// Records the SIEM holds that the database lacks: written after the
    /// snapshot when a restore explains them (`restore` is set), else lost.
    pub missing_from_database: Vec<WitnessRecord>,
    pub missing_from_database_total: usize,
    pub disagreements: Vec<Disagreement>,
    /// Records the database holds that the SIEM has not received.
    pub missing_from_witness: usize,
    /// Whether the SIEM confirms the database: no disagreement, and nothing
    /// missing that a restore does not explain.
    pub confirmed: bool,
}

/// Reads the SIEM's file and compares it with the audit log. The SIEM's
/// records are held in memory, one entry per record (a few hundred bytes).
pub async fn compare(
    store: &Store,
    witness: impl BufRead,
) -> Result<Result<WitnessReport, std::io::Error>, MongoError> {
    let mut received: BTreeMap<i64, BTreeMap<String, WitnessRecord>> = BTreeMap::new();
    let mut unreadable = 0;
    for line in witness.lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        match parse_line(&line) {
            Some(r) => {
                received
                    .entry(r.seq)
                    .or_default()
                    .entry(r.hash.clone())
                    .or_insert(r);
            }
            None if line.contains("audit@32473") => unreadable += 1,
            None => {}
        }
    }
    let witness_records = received.values().map(BTreeMap::len).sum();
    let audit = store.collection(AUDIT_COLLECTION);
    let restores: Vec<mongodb::bson::Document> = audit
        .find(doc! { "action": RESTORED_ACTION })
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    let restore_seqs: BTreeSet<i64> = restores
        .iter()
        .filter_map(|r| r.get_i64("_id").ok())
        .collect();
    let restore = restores.last().map(|r| RestorePoint {
        seq: r.get_i64("_id").unwrap_or(0),
        taken_at: r
            .get_document("details")
            .ok()
            .and_then(|d| d.get_str("taken_at").ok())
            .map(str::to_string),
    });
    // From the first restore on, the SIEM may hold a lost branch beside the
    // database's. A SIEM record that links to the database's record before
    // it is on the database's branch, though, and must match it (except at
    // a restore, where both branches start from the snapshot's head).
    let forked = |seq: i64| restore_seqs.first().is_some_and(|first| seq >= *first);
    let on_our_branch = |seq: i64, record: &WitnessRecord, prev_db_hash: &str| {
        !restore_seqs.contains(&seq) && record.prev_hash.as_deref() == Some(prev_db_hash)
    };

    let mut agreed = 0;
    let mut disagreements = Vec::new();
    let mut missing = Vec::new();
    let mut missing_from_witness = 0;
    let mut prev_db_hash = super::GENESIS_HASH.to_string();
    let mut records = audit
        .find(doc! {})
        .projection(doc! { "hash": 1 })
        .sort(doc! { "_id": 1 })
        .batch_size(5000)
        .await?;
    while let Some(r) = records.try_next().await? {
        let Ok(seq) = r.get_i64("_id") else { continue };
        let hash = r.get_str("hash").unwrap_or_default().to_string();
        let prev = std::mem::replace(&mut prev_db_hash, hash.clone());
        let Some(mut hashes) = received.remove(&seq) else {
            missing_from_witness += 1;
            continue;
        };
        if hashes.remove(&hash).is_some() {
            agreed += 1;
        }
        for (other, record) in hashes {
            if forked(seq) && !on_our_branch(seq, &record, &prev) {
                missing.push(record);
            } else {
                disagreements.push(Disagreement {
                    seq,
                    witness_hash: other,
                    database_hash: Some(hash.to_string()),
                });
            }
        }
    }
    // What is left has a sequence number the database does not hold.
    // (A record that links to the database's last one was cut off it.)
    for (seq, hashes) in received {
        for (hash, record) in hashes {
            let cut_off = on_our_branch(seq, &record, &prev_db_hash);
            if (forked(seq) && !cut_off) || restore.is_none() {
                missing.push(record);
            } else {
                disagreements.push(Disagreement {
                    seq,
                    witness_hash: hash,
                    database_hash: None,
                });
            }
        }
    }
    missing.sort_by_key(|r| r.seq);
    let missing_total = missing.len();
    let confirmed = disagreements.is_empty() && (restore.is_some() || missing_total == 0);
    Ok(Ok(WitnessReport {
        witness_records,
        unreadable_lines: unreadable,
        restore,
        agreed,
        missing_from_database: missing,
        missing_from_database_total: missing_total,
        disagreements,
        missing_from_witness,
        confirmed,
    }))
}

impl WitnessReport {
    pub fn render_human(&self) -> String {
        let mut out = format!(
            "witness: {} record(s) read from the SIEM's file{}\n",
            self.witness_records,
            if self.unreadable_lines > 0 {
                format!(
                    " ({} line(s) naming audit@32473 could not be read)",
                    self.unreadable_lines
                )
            } else {
                String::new()
            }
        );
        if let Some(r) = &self.restore {
            out.push_str(&format!(
                "the database was restored at record {} from a snapshot taken {}\n",
                r.seq,
                r.taken_at.as_deref().unwrap_or("at an unknown time")
            ));
        }
        out.push_str(&format!(
            "agree: {} record(s) held by both with the same hash\n",
            self.agreed
        ));
        if self.missing_from_database_total > 0 {
            out.push_str(&format!(
                "the SIEM holds {} record(s) the database lacks{}:\n",
                self.missing_from_database_total,
                if self.restore.is_some() {
                    ", written after the snapshot"
                } else {
                    " (no restore explains them: the log was cut back)"
                }
            ));
            for r in self.missing_from_database.iter().take(LISTED) {
                out.push_str(&format!(
                    "  record {:>8}  {}  {}  {}\n",
                    r.seq,
                    r.time.as_deref().unwrap_or("-"),
                    r.action.as_deref().unwrap_or("-"),
                    r.target.as_deref().unwrap_or("-")
                ));
            }
            if LISTED < self.missing_from_database_total {
                out.push_str(&format!(
                    "  … and {} more (all of them in --json)\n",
                    self.missing_from_database_total - LISTED
                ));
            }
        }
        for d in self.disagreements.iter().take(LISTED) {
            out.push_str(&format!(
                "DIFFERS: record {}: the SIEM holds hash {}, the database {}\n",
                d.seq,
                d.witness_hash,
                d.database_hash.as_deref().unwrap_or("no such record")
            ));
        }
        if self.missing_from_witness > 0 {
            out.push_str(&format!(
                "the SIEM lacks {} record(s) the database holds (not forwarded yet, or lost on the way)\n",
                self.missing_from_witness
            ));
        }
        out.push_str(if self.confirmed {
            "the SIEM confirms the database\n"
        } else {
            "the SIEM CONTRADICTS the database\n"
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"<110>1 2026-12-02T10:00:00.123Z host certautopilot - project.created [audit@32473 seq="7" hash="abc" prev_hash="def" actor="op" target="projects/p{1}"] {"seq":7,"time":{"$date":"2026-12-02T10:00:00.123Z"},"actor":"op","action":"project.created","target":"projects/p{1}","details":{"name":"a {b}"},"prev_hash":"def","hash":"abc"}"#;

    #[test]
    fn a_raw_line_reads_from_its_json_body() {
        let r = parse_line(RAW).unwrap();
        assert_eq!((r.seq, r.hash.as_str()), (7, "abc"));
        assert_eq!(r.action.as_deref(), Some("project.created"));
        assert_eq!(r.time.as_deref(), Some("2026-12-02T10:00:00.123Z"));
    }

    #[test]
    fn a_traditional_file_line_reads_too() {
        let body = &RAW[RAW.find("] {").unwrap() + 2..];
        let line = format!("Dec  2 10:00:00 host certautopilot {body}");
        assert_eq!(parse_line(&line).unwrap().seq, 7);
    }

    #[test]
    fn structured_data_alone_is_enough() {
        let sd_only = &RAW[..RAW.find("] {").unwrap() + 1];
        let r = parse_line(sd_only).unwrap();
        assert_eq!((r.seq, r.hash.as_str()), (7, "abc"));
    }

    #[test]
    fn other_lines_are_not_records() {
        assert!(parse_line("Dec  2 10:00:00 host sshd[1]: Accepted {publickey}").is_none());
        assert!(parse_line("").is_none());
    }
}
