//! The SIEM as a second witness (`audit verify --witness FILE`): the audit
//! records a SIEM received from our syslog forwarder, as rsyslog writes
//! them to a file, compared with the audit log in the database.
//!
//! After a restore the two part ways at the restore: the database goes on
//! from the snapshot's last record with a `snapshot.restored` record, while
//! the SIEM also holds what the lost installation wrote after the snapshot.
//! Those records (the lost branch: the SIEM's chain that starts from the
//! snapshot's last record beside the restore record) are listed, not
//! flagged, but only for a restore record that `snapshot restore` wrote:
//! one whose MAC under the audit checkpoint key ([`restore_mac`]) verifies.
//! Anyone who can write the database can append a `snapshot.restored`
//! record; only a KEK holder can authenticate one. Every other record the
//! SIEM holds that the database lacks is flagged (the log was cut back or
//! rewritten), and so is every sequence number the two hold with different
//! hashes.
//!
//! Each line is read where the record is: the JSON body our forwarder puts
//! last on the line (whatever rsyslog template printed the line, `%rawmsg%`
//! or one that keeps only the message), else the `audit@32473` structured
//! data. Lines that are neither (other programs' messages) are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::Error as MongoError;
use serde::Serialize;
use sha2::Sha256;

use super::checkpoint::{key_id, CHECKPOINT_KEY_SECRET};
use super::{hex, recompute, AUDIT_COLLECTION};
use crate::store::Store;

pub const RESTORED_ACTION: &str = "snapshot.restored";
/// The fields of a `snapshot.restored` record's details that its MAC
/// covers, with the record's `seq`, `prev_hash` and `actor`.
const RESTORE_MAC_FIELDS: [&str; 8] = [
    "taken_at",
    "created_by",
    "from_database",
    "audit_head_seq",
    "audit_head_hash",
    "documents",
    "restored_at",
    "restored_into",
];
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

/// The MAC `snapshot restore` puts in its `snapshot.restored` record
/// (`details.mac`, beside `details.key_id`), under the audit checkpoint
/// key: over the record's place in the chain (`seq` and `prev_hash`: the
/// record's own hash covers the MAC, so it cannot cover the hash), its
/// actor, and what the restore loaded ([`RESTORE_MAC_FIELDS`], among them
/// the database's time of the restore and the database restored into). A
/// MAC moved to another place or another database, or details edited, no
/// longer verify. `None` when a covered field is
/// missing.
pub fn restore_mac(
    key: &[u8],
    seq: i64,
    prev_hash: &str,
    actor: &str,
    details: &Document,
) -> Option<String> {
    // BSON in a fixed order: no two sets of fields give the same bytes.
    let mut covered = doc! {
        "purpose": "certautopilot audit restore v1",
        "seq": seq,
        "prev_hash": prev_hash,
        "actor": actor,
    };
    for field in RESTORE_MAC_FIELDS {
        covered.insert(field, details.get(field)?.clone());
    }
    let bytes = mongodb::bson::to_vec(&covered).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(&bytes);
    Some(hex(&mac.finalize().into_bytes()))
}

/// Whether `record` (a stored `snapshot.restored` record of `database`)
/// was written by `snapshot restore` into this database with the KEK;
/// `Err` says why not.
pub fn authenticate_restore(
    record: &Document,
    key: Option<&[u8]>,
    database: &str,
) -> Result<(), String> {
    let Some(key) = key else {
        return Err(format!(
            "the audit checkpoint key (secret {CHECKPOINT_KEY_SECRET}) does not exist, so no restore can be authenticated"
        ));
    };
    let details = record.get_document("details").ok();
    let Some(mac) = details.and_then(|d| d.get_str("mac").ok()) else {
        return Err("it carries no MAC: `snapshot restore` did not write it with the KEK (or anyone who can write the database did)".into());
    };
    let details = details.expect("a MAC was found in them");
    let named = details.get_str("key_id").unwrap_or_default();
    if named != key_id(key) {
        return Err(format!(
            "it names another checkpoint key (key id {named:?}, the stored key is {})",
            key_id(key)
        ));
    }
    let hash = record.get_str("hash").unwrap_or_default();
    if recompute(record).as_deref() != Some(hash) {
        return Err("its contents do not match its hash".into());
    }
    let seq = record.get_i64("_id").unwrap_or(-1);
    let prev_hash = record.get_str("prev_hash").unwrap_or_default();
    let expected = restore_mac(
        key,
        seq,
        prev_hash,
        record.get_str("actor").unwrap_or_default(),
        details,
    );
    if expected.as_deref() != Some(mac) {
        return Err(
            "its MAC does not match (forged, edited, or moved from where the restore wrote it)"
                .into(),
        );
    }
    // Not copied from a restore of the same snapshot into another database.
    let into = details.get_str("restored_into").unwrap_or_default();
    if into != database {
        return Err(format!(
            "it records a restore into database {into:?}, not this one ({database:?})"
        ));
    }
    // It continues the chain from the snapshot's last record.
    let head_seq = details.get("audit_head_seq").and_then(Bson::as_i64);
    if head_seq != Some(seq - 1) || details.get_str("audit_head_hash") != Ok(prev_hash) {
        return Err("it does not follow the snapshot's last record".into());
    }
    Ok(())
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
    /// Whether `snapshot restore` wrote it ([`authenticate_restore`]): only
    /// then does it explain records the database lacks.
    pub authenticated: bool,
    /// Why it is not authenticated.
    pub not_authenticated: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WitnessReport {
    pub witness_records: usize,
    pub unreadable_lines: usize,
    /// Every `snapshot.restored` record in the database, in order.
    pub restores: Vec<RestorePoint>,
    /// Records both hold with the same hash.
    pub agreed: usize,
    /// Records the SIEM holds that the database lacks, explained by an
    /// authenticated restore: the lost installation wrote them after the
    /// snapshot (the work to redo).
    pub written_after_snapshot: Vec<WitnessRecord>,
    pub written_after_snapshot_total: usize,
    /// Records the SIEM holds that the database lacks and no authenticated
    /// restore explains: the log was cut back or rewritten.
    pub missing_from_database: Vec<WitnessRecord>,
    pub missing_from_database_total: usize,
    /// Sequence numbers the two hold with different hashes (each SIEM
    /// record here is also in `missing_from_database`).
    pub disagreements: Vec<Disagreement>,
    /// Records the database holds that the SIEM has not received.
    pub missing_from_witness: usize,
    /// Whether the SIEM confirms the database: no record of the SIEM's is
    /// missing from the database unless an authenticated restore explains it.
    pub confirmed: bool,
}

/// Reads the SIEM's file and compares it with the audit log; `restore_key`
/// (the audit checkpoint key) authenticates restores. The SIEM's records
/// are held in memory, one entry per record (a few hundred bytes).
pub async fn compare(
    store: &Store,
    restore_key: Option<&[u8]>,
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
    let restore_records: Vec<Document> = audit
        .find(doc! { "action": RESTORED_ACTION })
        .sort(doc! { "_id": 1 })
        .await?
        .try_collect()
        .await?;
    // Where each lost branch starts: the record at the restore's seq that
    // links to the snapshot's last record, beside the restore record.
    let mut branch_roots: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut restores = Vec::new();
    for r in &restore_records {
        let seq = r.get_i64("_id").unwrap_or(0);
        let authenticated = authenticate_restore(r, restore_key, store.db().name());
        if authenticated.is_ok() {
            branch_roots
                .entry(seq)
                .or_default()
                .insert(r.get_str("prev_hash").unwrap_or_default().to_string());
        }
        restores.push(RestorePoint {
            seq,
            taken_at: r
                .get_document("details")
                .ok()
                .and_then(|d| d.get_str("taken_at").ok())
                .map(str::to_string),
            authenticated: authenticated.is_ok(),
            not_authenticated: authenticated.err(),
        });
    }

    // What both hold goes; what is left of the SIEM's, the database lacks.
    let mut agreed = 0;
    let mut missing_from_witness = 0;
    let mut database_hash_at: BTreeMap<i64, String> = BTreeMap::new();
    let mut records = audit
        .find(doc! {})
        .projection(doc! { "hash": 1 })
        .sort(doc! { "_id": 1 })
        .batch_size(5000)
        .await?;
    while let Some(r) = records.try_next().await? {
        let Ok(seq) = r.get_i64("_id") else { continue };
        let hash = r.get_str("hash").unwrap_or_default();
        let Some(hashes) = received.get_mut(&seq) else {
            missing_from_witness += 1;
            continue;
        };
        if hashes.remove(hash).is_some() {
            agreed += 1;
        }
        if hashes.is_empty() {
            received.remove(&seq);
        } else {
            database_hash_at.insert(seq, hash.to_string());
        }
    }

    let SortedOut {
        explained,
        missing,
        disagreements,
    } = sort_out(received, &database_hash_at, branch_roots);
    let confirmed = missing.is_empty();
    Ok(Ok(WitnessReport {
        witness_records,
        unreadable_lines: unreadable,
        restores,
        agreed,
        written_after_snapshot_total: explained.len(),
        written_after_snapshot: explained,
        missing_from_database_total: missing.len(),
        missing_from_database: missing,
        disagreements,
        missing_from_witness,
        confirmed,
    }))
}

/// The SIEM's records the database lacks, sorted out.
struct SortedOut {
    explained: Vec<WitnessRecord>,
    missing: Vec<WitnessRecord>,
    disagreements: Vec<Disagreement>,
}

/// Sorts out the SIEM's records the database lacks (`left`), given the
/// database's hash at each of their sequence numbers it holds and the
/// roots of the lost branches (per authenticated restore's seq, the hash
/// of the snapshot's last record). A record is explained when it is on a
/// lost branch: at a root's seq linking to the root, or linking to an
/// explained record at the seq before. The database's own records are not
/// in `left`, so nothing that descends from them (a record cut off the
/// log) is explained.
fn sort_out(
    left: BTreeMap<i64, BTreeMap<String, WitnessRecord>>,
    database_hash_at: &BTreeMap<i64, String>,
    mut branch_roots: BTreeMap<i64, BTreeSet<String>>,
) -> SortedOut {
    let mut out = SortedOut {
        explained: Vec::new(),
        missing: Vec::new(),
        disagreements: Vec::new(),
    };
    let mut tips: (i64, BTreeSet<String>) = (i64::MIN, BTreeSet::new());
    for (seq, hashes) in left {
        let mut links = branch_roots.remove(&seq).unwrap_or_default();
        if tips.0 == seq - 1 {
            links.append(&mut tips.1);
        }
        let mut on_branch = BTreeSet::new();
        for (hash, record) in hashes {
            if record.prev_hash.as_ref().is_some_and(|p| links.contains(p)) {
                on_branch.insert(hash);
                out.explained.push(record);
                continue;
            }
            if let Some(database_hash) = database_hash_at.get(&seq) {
                out.disagreements.push(Disagreement {
                    seq,
                    witness_hash: hash,
                    database_hash: Some(database_hash.clone()),
                });
            }
            out.missing.push(record);
        }
        tips = (seq, on_branch);
    }
    out
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
        for r in &self.restores {
            let taken = r.taken_at.as_deref().unwrap_or("at an unknown time");
            match &r.not_authenticated {
                None => out.push_str(&format!(
                    "the database was restored at record {} from a snapshot taken {taken}\n",
                    r.seq
                )),
                Some(why) => out.push_str(&format!(
                    "NOT AUTHENTICATED: the restore record at record {} (a snapshot taken {taken}) explains nothing: {why}\n",
                    r.seq
                )),
            }
        }
        out.push_str(&format!(
            "agree: {} record(s) held by both with the same hash\n",
            self.agreed
        ));
        let list = |out: &mut String, records: &[WitnessRecord], total: usize| {
            for r in records.iter().take(LISTED) {
                out.push_str(&format!(
                    "  record {:>8}  {}  {}  {}\n",
                    r.seq,
                    r.time.as_deref().unwrap_or("-"),
                    r.action.as_deref().unwrap_or("-"),
                    r.target.as_deref().unwrap_or("-")
                ));
            }
            if LISTED < total {
                out.push_str(&format!(
                    "  … and {} more (all of them in --json)\n",
                    total - LISTED
                ));
            }
        };
        if self.written_after_snapshot_total > 0 {
            out.push_str(&format!(
                "the SIEM holds {} record(s) the lost installation wrote after the snapshot (the work to redo):\n",
                self.written_after_snapshot_total
            ));
            list(
                &mut out,
                &self.written_after_snapshot,
                self.written_after_snapshot_total,
            );
        }
        if self.missing_from_database_total > 0 {
            out.push_str(&format!(
                "MISSING: the SIEM holds {} record(s) the database lacks that no authenticated restore explains (the log was cut back or rewritten):\n",
                self.missing_from_database_total
            ));
            list(
                &mut out,
                &self.missing_from_database,
                self.missing_from_database_total,
            );
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

    fn record(seq: i64, hash: &str, prev: &str) -> WitnessRecord {
        WitnessRecord {
            seq,
            hash: hash.into(),
            prev_hash: Some(prev.into()),
            time: None,
            action: None,
            target: None,
        }
    }

    fn left(records: &[WitnessRecord]) -> BTreeMap<i64, BTreeMap<String, WitnessRecord>> {
        let mut map: BTreeMap<i64, BTreeMap<String, WitnessRecord>> = BTreeMap::new();
        for r in records {
            map.entry(r.seq)
                .or_default()
                .insert(r.hash.clone(), r.clone());
        }
        map
    }

    fn seqs(records: &[WitnessRecord]) -> Vec<i64> {
        records.iter().map(|r| r.seq).collect()
    }

    /// The database: records 1..=10 (`d1`…), restored at 11 from a
    /// snapshot whose last record was 10. The SIEM also holds the lost
    /// installation's 11..=13 (`l11`…).
    #[test]
    fn an_authenticated_restore_explains_its_lost_branch_and_nothing_else() {
        let lost = [
            record(11, "l11", "d10"),
            record(12, "l12", "l11"),
            record(13, "l13", "l12"),
        ];
        let database_hash_at = BTreeMap::from([(11, "restore".to_string())]);
        let roots = BTreeMap::from([(11, BTreeSet::from(["d10".to_string()]))]);
        let out = sort_out(left(&lost), &database_hash_at, roots.clone());
        assert_eq!(seqs(&out.explained), [11, 12, 13]);
        assert!(out.missing.is_empty() && out.disagreements.is_empty());

        // Without an authenticated restore, the same records are missing.
        let out = sort_out(left(&lost), &database_hash_at, BTreeMap::new());
        assert_eq!(seqs(&out.missing), [11, 12, 13]);
        assert_eq!(out.disagreements.len(), 1);
    }

    /// After a genuine restore at 11, the database's records 12..=14 were
    /// removed (the SIEM holds them): they descend from the restore record,
    /// not from the lost branch, so the restore does not explain them.
    #[test]
    fn records_cut_off_after_a_genuine_restore_are_missing() {
        let cut = [
            record(12, "d12", "restore"),
            record(13, "d13", "d12"),
            record(14, "d14", "d13"),
        ];
        let lost = [record(11, "l11", "d10"), record(12, "l12", "l11")];
        let all: Vec<_> = cut.iter().chain(&lost).cloned().collect();
        let roots = BTreeMap::from([(11, BTreeSet::from(["d10".to_string()]))]);
        let out = sort_out(left(&all), &BTreeMap::new(), roots);
        assert_eq!(seqs(&out.explained), [11, 12]);
        assert_eq!(seqs(&out.missing), [12, 13, 14]);
    }

    fn restore_record(key: &[u8], seq: i64, prev_hash: &str) -> Document {
        let mut details = doc! {
            "taken_at": "2026-12-02T03:17:00Z",
            "created_by": "1.0.0",
            "from_database": "certautopilot",
            "audit_head_seq": seq - 1,
            "audit_head_hash": prev_hash,
            "documents": 10_i64,
            "restored_at": mongodb::bson::DateTime::from_millis(1_796_181_420_000),
            "restored_into": "certautopilot",
        };
        let mac = restore_mac(key, seq, prev_hash, "op", &details).unwrap();
        details.insert("key_id", key_id(key));
        details.insert("mac", mac);
        let event = super::super::Event::new("op", RESTORED_ACTION, "snapshot").with(details);
        super::super::record(seq, mongodb::bson::DateTime::now(), &event, prev_hash)
    }

    #[test]
    fn a_restore_record_authenticates_only_as_written_and_under_its_key() {
        let key = [7u8; 32];
        let genuine = restore_record(&key, 11, "d10");
        assert_eq!(
            authenticate_restore(&genuine, Some(&key), "certautopilot"),
            Ok(())
        );
        assert!(authenticate_restore(&genuine, None, "certautopilot")
            .unwrap_err()
            .contains("does not exist"));
        // Copied from a restore of the same snapshot into a scratch database.
        assert!(authenticate_restore(&genuine, Some(&key), "drill")
            .unwrap_err()
            .contains("not this one"));
        assert!(
            authenticate_restore(&genuine, Some(&[8u8; 32]), "certautopilot")
                .unwrap_err()
                .contains("another checkpoint key")
        );

        // Moved to another place in the chain, and rehashed there.
        let mut moved = genuine.clone();
        moved.insert("_id", 20_i64);
        moved.insert("seq", 20_i64);
        moved.insert("prev_hash", "d19");
        moved.insert("hash", recompute(&moved).unwrap());
        assert!(authenticate_restore(&moved, Some(&key), "certautopilot")
            .unwrap_err()
            .contains("MAC does not match"));

        // Plain-hashed, as a database writer appends one.
        let event = super::super::Event::new("op", RESTORED_ACTION, "snapshot")
            .with(doc! { "taken_at": "2026-12-02T03:17:00Z" });
        let forged = super::super::record(11, mongodb::bson::DateTime::now(), &event, "d10");
        assert!(authenticate_restore(&forged, Some(&key), "certautopilot")
            .unwrap_err()
            .contains("no MAC"));
    }
}
