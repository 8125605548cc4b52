//! Snapshots of a whole installation: [`save`] reads every collection at
//! one point in time ([`crate::store::snapshot`]) into one compressed file
//! with a manifest ([`format`]); [`restore`] checks a file end to end and
//! only then loads it into an empty database.
//!
//! Secrets stay as they are stored, ciphertext and wrapped data keys: a
//! snapshot is useless without the KEK, which is backed up apart from it
//! (`certautopilot kek export`). Indexes are not in the file: `migrate`
//! creates them on the restored data.

pub mod format;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mongodb::bson::{doc, RawDocument, RawDocumentBuf};

use crate::audit::checkpoint::{self, key_id};
use crate::audit::witness::{restore_mac, RESTORED_ACTION};
use crate::audit::{Audit, Event, AUDIT_HEAD_COLLECTION, GENESIS_HASH};
use crate::crypto::kek::KekProvider;
use crate::crypto::secrets::Secrets;
use crate::store::kek_versions::KEK_VERSIONS;
use crate::store::keys::KEYS;
use crate::store::schema::{self, known_version, SCHEMA_COLLECTION};
use crate::store::{short, snapshot, Store};
use format::{
    AuditHead, Item, KekVersionNeeded, Manifest, SnapshotError, SnapshotReader, SnapshotWriter,
};

/// Documents per insert while restoring, and the most bytes one holds.
const RESTORE_BATCH: usize = 1000;
const RESTORE_BATCH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("database error: {0}")]
    Db(String),
    #[error("{0}")]
    File(String),
    #[error("{0}")]
    Refused(String),
}

impl From<mongodb::error::Error> for BackupError {
    fn from(e: mongodb::error::Error) -> Self {
        BackupError::Db(short(&e))
    }
}

/// What the manifest says beyond counts and digests, gathered from the
/// documents as they stream past.
#[derive(Default)]
struct Observed {
    audit_head: Option<AuditHead>,
    schema: Option<(i64, i64)>,
    data_keys: BTreeMap<i64, i64>,
    check_values: BTreeMap<i64, String>,
}

impl Observed {
    fn see(&mut self, collection: &str, d: &RawDocument) {
        let int = |field: &str| {
            d.get_i64(field)
                .ok()
                .or_else(|| d.get_i32(field).ok().map(i64::from))
        };
        match collection {
            AUDIT_HEAD_COLLECTION if d.get_str("_id") == Ok("head") => {
                self.audit_head = Some(AuditHead {
                    seq: int("seq").unwrap_or(0),
                    hash: d.get_str("hash").unwrap_or(GENESIS_HASH).to_string(),
                });
            }
            SCHEMA_COLLECTION if d.get_str("_id") == Ok("version") => {
                let version = int("version").unwrap_or(0);
                self.schema = Some((version, int("floor").unwrap_or(version).min(version)));
            }
            KEYS => {
                if let Some(v) = int("kek_version") {
                    *self.data_keys.entry(v).or_default() += 1;
                }
            }
            KEK_VERSIONS => {
                if let (Some(v), Ok(value)) = (int("_id"), d.get_binary("check_value")) {
                    self.check_values.insert(v, format::hex(value.bytes));
                }
            }
            _ => {}
        }
    }

    fn kek_versions(&self) -> Vec<KekVersionNeeded> {
        self.data_keys
            .iter()
            .map(|(v, n)| KekVersionNeeded {
                version: *v,
                data_keys: *n,
                check_value: self.check_values.get(v).cloned(),
            })
            .collect()
    }
}

/// Progress on a terminal: one line, rewritten at most every 200 ms.
pub struct Progress {
    what: &'static str,
    tty: bool,
    started: Instant,
    shown: Instant,
}

impl Progress {
    pub fn new(what: &'static str) -> Progress {
        Progress {
            what,
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            shown: Instant::now() - Duration::from_secs(1),
        }
    }

    pub fn show(&mut self, done: u64, total: u64, unit: &str) {
        if !self.tty || self.shown.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.shown = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        eprint!(
            "\r{}: {done} of ~{total} {unit} ({rate:.0}/s)   ",
            self.what
        );
    }

    pub fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}

/// Collections in the order a snapshot holds them: by name, with `schema`
/// last, so that a restore cut short leaves a database without a schema
/// version, which no workload runs against.
fn snapshot_order(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    if let Some(at) = names.iter().position(|n| n == SCHEMA_COLLECTION) {
        let schema = names.remove(at);
        names.push(schema);
    }
    names
}

/// Writes a snapshot of the whole database to `out` (refusing to replace a
/// file), through `out.partial` renamed at the end, so `out` exists only
/// when it is complete. Returns its manifest.
pub async fn save(store: &Store, out: &Path) -> Result<Manifest, BackupError> {
    if out.exists() {
        return Err(BackupError::Refused(format!(
            "{} exists: snapshots are never overwritten; name a new file",
            out.display()
        )));
    }
    let names = snapshot_order(snapshot::collections(store).await?);
    let total = snapshot::estimated_total(store, &names).await;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let file = create_private(&partial)?;
    let written = write(store, &names, total, file).await;
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // A link, not a rename: it fails if `out` appeared meanwhile, so no
    // snapshot is ever replaced.
    let linked = std::fs::hard_link(&partial, out);
    let _ = std::fs::remove_file(&partial);
    linked.map_err(|e| BackupError::File(format!("creating {}: {e}", out.display())))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(manifest)
}

const SCHEDULED_PREFIX: &str = "certautopilot-";
const SCHEDULED_SUFFIX: &str = ".snap";

/// The name of a scheduled snapshot taken at `now` (UTC), which sorts by time:
/// `certautopilot-20261202T031700Z.snap`.
pub fn scheduled_name(now: std::time::SystemTime) -> String {
    let ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let iso = mongodb::bson::DateTime::from_millis(ms)
        .try_to_rfc3339_string()
        .unwrap_or_default();
    // 2026-12-02T03:17:00.123Z -> 20261202T031700Z
    let compact: String = iso
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    format!("{SCHEDULED_PREFIX}{compact}Z{SCHEDULED_SUFFIX}")
}

/// Deletes the scheduled snapshots in `dir` beyond the newest `keep`, and
/// what runs cut short left behind (`*.snap.partial` untouched for a day);
/// returns what it deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let listing = std::fs::read_dir(dir)
        .map_err(|e| BackupError::File(format!("cannot list {}: {e}", dir.display())))?;
    let mut snapshots = Vec::new();
    let mut partials = Vec::new();
    for entry in listing.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.starts_with(SCHEDULED_PREFIX) {
            continue;
        }
        if name.ends_with(SCHEDULED_SUFFIX) {
            snapshots.push(entry.path());
        } else if name.ends_with(".snap.partial") && stale(&entry) {
            partials.push(entry.path());
        }
    }
    snapshots.sort();
    let excess = snapshots.len().saturating_sub(keep);
    let mut deleted = Vec::new();
    for path in snapshots.into_iter().take(excess).chain(partials) {
        std::fs::remove_file(&path)
            .map_err(|e| BackupError::File(format!("cannot delete {}: {e}", path.display())))?;
        deleted.push(path);
    }
    Ok(deleted)
}

/// A partial file untouched for a day: left by a run that died (another
/// run's file in progress is written every moment).
fn stale(entry: &std::fs::DirEntry) -> bool {
    entry
        .metadata()
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > Duration::from_secs(86_400))
}

fn create_private(path: &Path) -> Result<File, BackupError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BackupError::File(format!("cannot create {}: {e}", path.display())))
}

async fn write(
    store: &Store,
    names: &[String],
    total: u64,
    file: File,
) -> Result<Manifest, BackupError> {
    let version = env!("CARGO_PKG_VERSION");
    let io = |e: std::io::Error| BackupError::File(format!("writing the snapshot: {e}"));
    let mut writer =
        SnapshotWriter::new(BufWriter::with_capacity(1 << 20, file), version).map_err(io)?;
    let mut observed = Observed::default();
    let mut current = String::new();
    let mut documents: u64 = 0;
    let mut progress = Progress::new("snapshot");
    let taken_at = snapshot::read_at_one_point(store, names, |read| match read {
        snapshot::Read::Collection(name) => {
            current = name.to_string();
            writer.begin_collection(name)
        }
        snapshot::Read::Document(d) => {
            observed.see(&current, d);
            documents += 1;
            progress.show(documents, total, "documents");
            writer.document(d.as_bytes())
        }
    })
    .await
    .map_err(|e| {
        BackupError::Db(format!(
            "{} (the snapshot's read was interrupted; nothing was kept: run it again)",
            short(&e)
        ))
    })?
    .map_err(io)?;
    progress.done();
    let (schema_version, schema_floor) = observed.schema.unwrap_or((0, 0));
    let manifest = Manifest {
        format_version: format::FORMAT_VERSION,
        schema_version,
        schema_floor,
        taken_at: taken_at
            .try_to_rfc3339_string()
            .unwrap_or_else(|_| taken_at.to_string()),
        created_by: version.to_string(),
        database: store.db().name().to_string(),
        collections: Vec::new(),
        audit_head: observed.audit_head.clone().unwrap_or(AuditHead {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }),
        kek_versions: observed.kek_versions(),
    };
    let (out, manifest) = writer.finish(manifest).map_err(io)?;
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(manifest)
}

fn open(path: &Path) -> Result<BufReader<File>, BackupError> {
    File::open(path)
        .map(|f| BufReader::with_capacity(1 << 20, f))
        .map_err(|e| BackupError::File(format!("cannot read {}: {e}", path.display())))
}

/// Reads `path` to its end and returns its manifest when it is whole and
/// matches it. Writes nothing.
pub fn inspect(path: &Path) -> Result<Manifest, BackupError> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut progress = Progress::new("checking the snapshot");
    let manifest = format::verify(open(path)?, |bytes| {
        progress.show(
            bytes >> 20,
            (size >> 20).max(1),
            "MiB (uncompressed, of the compressed size)",
        )
    })?;
    progress.done();
    Ok(manifest)
}

/// Refuses a target database that holds any document.
pub async fn ensure_empty(store: &Store) -> Result<(), BackupError> {
    let found = snapshot::non_empty(store).await?;
    if found.is_empty() {
        return Ok(());
    }
    let list = found
        .iter()
        .map(|(n, c)| format!("{n} ({c})"))
        .collect::<Vec<_>>()
        .join(", ");
    let interrupted = !found.iter().any(|(n, _)| n == SCHEMA_COLLECTION);
    Err(BackupError::Refused(format!(
        "database {} is not empty: it holds documents in {list}; restore only into an empty database{}",
        store.db().name(),
        if interrupted {
            " (it has no schema version: if an earlier restore was cut short, drop the database and restore again)"
        } else {
            " (name another database in the URI, or drop this one if it is a scratch copy)"
        }
    )))
}

/// A restore that happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub manifest: Manifest,
    pub documents: i64,
    /// The `snapshot.restored` audit record the restore appended.
    pub audit_seq: i64,
}

/// Checks `path` end to end and `kek` against it, then loads it into
/// `store`'s database, which must be empty, and records the restore in the
/// audit log, authenticated with the KEK (see [`restore_inspected`]).
pub async fn restore(
    store: &Store,
    path: &Path,
    actor: &str,
    kek: Arc<dyn KekProvider>,
) -> Result<Restored, BackupError> {
    ensure_empty(store).await?;
    let manifest = inspect(path)?;
    // An HSM call blocks: off the async threads.
    let (checked, kek) = tokio::task::spawn_blocking(move || {
        let checked = check_kek(&manifest, kek.as_ref()).map(|()| manifest);
        (checked, kek)
    })
    .await
    .map_err(|_| BackupError::Refused("checking the KEK panicked".into()))?;
    let manifest = checked?;
    restore_inspected(store, path, &manifest, actor, Some(kek)).await
}

/// Refuses a KEK that lacks a version the snapshot's data keys need, or
/// whose check value differs from the one the snapshot recorded (another
/// installation's key ring): before anything is written.
pub fn check_kek(manifest: &Manifest, kek: &dyn KekProvider) -> Result<(), BackupError> {
    let held = kek.versions();
    for need in &manifest.kek_versions {
        let version = need.version as u32;
        if !held.contains(&version) {
            return Err(BackupError::Refused(format!(
                "the snapshot's data keys need KEK version {} ({} data key(s)), which {} does not hold (it holds {held:?}): configure the installation's KEK (`certautopilot kek import`) and restore again",
                need.version,
                need.data_keys,
                kek.describe()
            )));
        }
        let Some(recorded) = &need.check_value else {
            continue;
        };
        let value = kek
            .check_value(version)
            .map_err(|e| BackupError::Refused(format!("KEK version {version}: {e}")))?;
        if format::hex(&value) != *recorded {
            return Err(BackupError::Refused(format!(
                "KEK version {version} of {} is not the snapshot's (its check value differs): configure the installation's KEK and restore again",
                kek.describe()
            )));
        }
    }
    Ok(())
}

/// [`restore`], for a file [`inspect`] has just checked (its manifest given).
/// With `kek`, the `snapshot.restored` record carries a MAC under the audit
/// checkpoint key, so `audit verify --witness` trusts it to explain what
/// the SIEM holds beyond the snapshot; without (the DR drill's scratch copy,
/// which supplies its KEK after the restore), the record is plain and
/// explains nothing.
pub async fn restore_inspected(
    store: &Store,
    path: &Path,
    manifest: &Manifest,
    actor: &str,
    kek: Option<Arc<dyn KekProvider>>,
) -> Result<Restored, BackupError> {
    ensure_empty(store).await?;
    if manifest.schema_version > known_version() {
        return Err(BackupError::Refused(format!(
            "the snapshot is at schema version {}, newer than the {} this release knows, which cannot create that schema's indexes: restore it with release {} or later",
            manifest.schema_version,
            known_version(),
            manifest.created_by
        )));
    }
    let mut reader = SnapshotReader::open(open(path)?)?;
    let total = manifest.documents() as u64;
    let mut progress = Progress::new("restore");
    let mut current: Option<String> = None;
    let mut batch: Vec<RawDocumentBuf> = Vec::new();
    let mut batch_bytes = 0;
    let mut documents: i64 = 0;
    let mut audit_seq = None;
    loop {
        let item = reader.next_item()?;
        let ends_collection = matches!(item, Some(Item::Collection(_)) | Some(Item::End(_)));
        if ends_collection || batch.len() >= RESTORE_BATCH || batch_bytes >= RESTORE_BATCH_BYTES {
            if let Some(Item::End(m)) = &item {
                // The last batch holds the schema version: write it only
                // if the file is the one that was checked.
                if m != manifest {
                    return Err(BackupError::Refused(format!(
                        "{} changed while it was being restored: drop the database and restore again",
                        path.display()
                    )));
                }
            }
            if let Some(name) = &current {
                snapshot::load(store, name, &std::mem::take(&mut batch)).await?;
            }
            batch_bytes = 0;
            progress.show(documents as u64, total, "documents");
        }
        match item {
            Some(Item::Collection(name)) => {
                if name == SCHEMA_COLLECTION {
                    // Everything but the schema version is in: build the
                    // indexes (no workload may run on the copy without its
                    // unique indexes) and record the restore; a restore cut
                    // short from here on still has no schema version.
                    schema::create_indexes_up_to(store, manifest.schema_version).await?;
                    audit_seq =
                        Some(record_restore(store, manifest, documents, actor, kek.clone()).await?);
                }
                snapshot::create_collection(store, &name).await?;
                current = Some(name);
            }
            Some(Item::Document(bytes)) => {
                batch_bytes += bytes.len();
                batch.push(
                    RawDocumentBuf::from_bytes(bytes).map_err(|e| {
                        SnapshotError::Damaged(format!("a document is not BSON: {e}"))
                    })?,
                );
                documents += 1;
            }
            Some(Item::End(_)) | None => break,
        }
    }
    progress.done();
    let audit_seq = match audit_seq {
        Some(seq) => seq,
        // A snapshot without a schema collection (never migrated).
        None => record_restore(store, manifest, documents, actor, kek).await?,
    };
    Ok(Restored {
        manifest: manifest.clone(),
        documents,
        audit_seq,
    })
}

/// Appends `snapshot.restored`: where the restored log forks from the one
/// the SIEM holds (`audit verify --witness` reads it). With the KEK, its
/// details carry a MAC under the audit checkpoint key (read from the
/// restored secrets, or made when no checkpoint exists yet) over its place
/// in the chain, which is known before the append: nothing else writes to
/// a database being restored.
async fn record_restore(
    store: &Store,
    manifest: &Manifest,
    documents: i64,
    actor: &str,
    kek: Option<Arc<dyn KekProvider>>,
) -> Result<i64, BackupError> {
    let not_recorded = |what: String| {
        BackupError::Db(format!(
            "{what} (the data is loaded but the restore is not recorded: drop the database and restore again)"
        ))
    };
    let audit = Audit::new(store.clone());
    let mut details = doc! {
        "taken_at": &manifest.taken_at,
        "created_by": &manifest.created_by,
        "from_database": &manifest.database,
        "audit_head_seq": manifest.audit_head.seq,
        "audit_head_hash": &manifest.audit_head.hash,
        "documents": documents,
        "restored_at": store.server_now().await?,
        "restored_into": store.db().name(),
    };
    let (head_seq, head_hash) = audit.head().await?;
    if let Some(kek) = kek {
        let key = checkpoint::key(&Secrets::new(store.clone(), kek))
            .await
            .map_err(|e| not_recorded(format!("opening the audit checkpoint key: {e}")))?;
        let mac = restore_mac(&key, head_seq + 1, &head_hash, actor, &details)
            .expect("every covered field is set above");
        details.insert("key_id", key_id(&key));
        details.insert("mac", mac);
    }
    let event = Event::new(actor, RESTORED_ACTION, "snapshot").with(details);
    let seq = audit.append(&event).await.map_err(|e| {
        not_recorded(format!(
            "recording the restore in the audit log: {}",
            short(&e)
        ))
    })?;
    if seq != head_seq + 1 {
        return Err(not_recorded(format!(
            "something else appended to the audit log during the restore (the restore record is at {seq}, not {})",
            head_seq + 1
        )));
    }
    Ok(seq)
}

/// The manifest, for people.
pub fn describe(m: &Manifest) -> String {
    let mut out = format!(
        "snapshot taken {} by certautopilot {} from database {}\nformat version {}, schema version {} (floor {})\naudit head: record {} ({})\n",
        m.taken_at, m.created_by, m.database, m.format_version, m.schema_version, m.schema_floor,
        m.audit_head.seq, m.audit_head.hash
    );
    if m.kek_versions.is_empty() {
        out.push_str("KEK versions needed: none (no data keys)\n");
    }
    for k in &m.kek_versions {
        out.push_str(&format!(
            "KEK version {} needed by {} data key(s)\n",
            k.version, k.data_keys
        ));
    }
    out.push_str("collection                  documents  sha256\n");
    for c in &m.collections {
        out.push_str(&format!(
            "{:<26} {:>10}  {}\n",
            c.name, c.documents, c.sha256
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_names_sort_by_time() {
        let at = |secs| std::time::UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(
            scheduled_name(at(1_796_181_420)),
            "certautopilot-20261202T031700Z.snap"
        );
        assert!(scheduled_name(at(1_796_181_420)) < scheduled_name(at(1_796_267_820)));
    }

    #[test]
    fn prune_keeps_the_newest_and_nothing_else_of_ours() {
        let dir = std::env::temp_dir().join(format!("cap-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in [
            "certautopilot-20261201T031700Z.snap",
            "certautopilot-20261202T031700Z.snap",
            "certautopilot-20261203T031700Z.snap",
            "certautopilot-20261130T031700Z.snap.partial",
            "notes.txt",
        ] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        let deleted = prune(&dir, 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(deleted.len(), 1);
        // A partial written just now may be another run's: it stays.
        assert_eq!(
            left,
            [
                "certautopilot-20261130T031700Z.snap.partial",
                "certautopilot-20261202T031700Z.snap",
                "certautopilot-20261203T031700Z.snap",
                "notes.txt"
            ]
        );
    }

    #[test]
    fn schema_comes_last() {
        let names = ["schema", "audit", "jobs", "keys"]
            .map(String::from)
            .to_vec();
        assert_eq!(snapshot_order(names), ["audit", "jobs", "keys", "schema"]);
    }
}
