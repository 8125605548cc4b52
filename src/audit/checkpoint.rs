//! Checkpoints (collection `audit_checkpoints`): HMAC seals over the audit
//! chain, `{_id: seq, seq, hash, time, prev_seq, prev_mac, follows, key_id,
//! mac}`.
//!
//! - The MAC key is a KEK-sealed secret. It is created with the first
//!   checkpoint and never again: once any checkpoint exists, a missing key
//!   is an error, not a reason to make a new one (a database writer who
//!   deletes it must not get the next checkpoint sealed under a fresh key).
//! - Checkpoints are chained: each MAC covers the previous checkpoint's seq
//!   and MAC, so removing one from the middle breaks the chain, and
//!   `key_id` names the key each was made under.
//! - Before sealing, housekeeping walks the records since the last
//!   checkpoint ([`next`]): a chain that does not verify is not sealed.
//! - Each checkpoint is also appended to the log as an `audit.checkpoint`
//!   record, so the SIEM sinks hold an outside copy of every MAC.
//! - One checkpoint follows each: `follows` (the previous checkpoint's seq,
//!   0 for the first) has a unique index, so when housekeeping in two
//!   processes seals onto the same checkpoint at once, the second insert
//!   fails and that run leaves the sealing to the first ([`is_sealed_by_another`])
//!   instead of forking the chain.
//! - Housekeeping's own records (a checkpoint's copy, its job's outcome) do
//!   not call for a new checkpoint: an idle installation is not sealed anew
//!   at every run ([`next`]).
//!
//! Checkpoints written before chaining (`v1`: no `key_id`) are accepted at
//! the start of the chain only.

use std::sync::Mutex;

use futures::TryStreamExt;
use hmac::{Hmac, Mac};
use mongodb::bson::{doc, DateTime, Document};
use mongodb::error::Error as MongoError;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{hex, recompute, Audit, AUDIT_COLLECTION, GENESIS_HASH};
use crate::crypto::secrets::{SecretError, SecretRef, Secrets};
use crate::domain::jobs::JobKind;
use crate::store::{is_duplicate_key, Store};

pub const CHECKPOINTS_COLLECTION: &str = "audit_checkpoints";
/// The secret holding the checkpoint MAC key.
pub const CHECKPOINT_KEY_SECRET: &str = "audit-checkpoint-key";
/// The action of the record that copies a checkpoint into the log.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";
/// The action of the record housekeeping appends when it refuses to seal.
pub const SEAL_REFUSED_ACTION: &str = "audit.seal_refused";
/// The field holding the seq of the checkpoint a checkpoint follows (the
/// migration makes it unique; checkpoints sealed before carry none).
pub const FOLLOWS_FIELD: &str = "follows";

/// Whether a failed checkpoint insert failed because another run sealed
/// first: onto the same checkpoint (`follows` is taken), or the same seq.
pub fn is_sealed_by_another(e: &MongoError) -> bool {
    is_duplicate_key(e)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("the audit checkpoint key (secret {CHECKPOINT_KEY_SECRET}) is missing although checkpoints exist: refusing to make a new one; restore it from a backup")]
    Gone,
    #[error("database error: {}", crate::store::short(.0))]
    Db(#[from] MongoError),
}

/// The checkpoint MAC key: read, or created when no checkpoint exists yet.
pub async fn key(secrets: &Secrets) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let secret = SecretRef::system(CHECKPOINT_KEY_SECRET);
    match secrets.get(&secret).await {
        Err(SecretError::NotFound(_)) => {}
        found => return Ok(found?),
    }
    if latest(secrets.store()).await?.is_some() || copied(secrets.store()).await? {
        return Err(KeyError::Gone);
    }
    Ok(secrets
        .get_or_create(&secret, || crate::crypto::kek::random_key().to_vec())
        .await?)
}

/// The key, for `audit verify`: `None` when it does not exist.
pub async fn existing_key(secrets: &Secrets) -> Result<Option<Zeroizing<Vec<u8>>>, SecretError> {
    match secrets.get(&SecretRef::system(CHECKPOINT_KEY_SECRET)).await {
        Ok(key) => Ok(Some(key)),
        Err(SecretError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Names a key without revealing it.
pub fn key_id(key: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(b"certautopilot audit checkpoint key id");
    hex(&mac.finalize().into_bytes()[..8])
}

/// A checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: i64,
    pub hash: String,
    pub time: DateTime,
    /// The checkpoint before this one (`None` for a `v1` checkpoint, which
    /// names none); `(0, "")` for the first.
    pub prev: Option<(i64, String)>,
    /// `None` for a `v1` checkpoint.
    pub key_id: Option<String>,
    pub mac: String,
}

impl Checkpoint {
    /// The checkpoint sealing `seq`/`hash`, after `prev`.
    pub fn seal(
        key: &[u8],
        seq: i64,
        hash: &str,
        time: DateTime,
        prev: Option<&Checkpoint>,
    ) -> Checkpoint {
        let prev = prev
            .map(|p| (p.seq, p.mac.clone()))
            .unwrap_or((0, String::new()));
        let mut checkpoint = Checkpoint {
            seq,
            hash: hash.to_string(),
            time,
            prev: Some(prev),
            key_id: Some(key_id(key)),
            mac: String::new(),
        };
        checkpoint.mac = checkpoint.expected_mac(key);
        checkpoint
    }

    pub fn parse(d: &Document) -> Checkpoint {
        let prev = match (d.get_i64("prev_seq"), d.get_str("prev_mac")) {
            (Ok(seq), Ok(mac)) => Some((seq, mac.to_string())),
            _ => None,
        };
        Checkpoint {
            seq: d.get_i64("_id").unwrap_or(i64::MAX),
            hash: d.get_str("hash").unwrap_or_default().to_string(),
            time: d.get_datetime("time").copied().unwrap_or(DateTime::MIN),
            prev,
            key_id: d.get_str("key_id").ok().map(str::to_string),
            mac: d.get_str("mac").unwrap_or_default().to_string(),
        }
    }

    /// The stored fields (without `_id`).
    pub fn fields(&self) -> Document {
        let mut d = doc! {
            "seq": self.seq,
            "hash": &self.hash,
            "time": self.time,
            "mac": &self.mac,
        };
        if let Some((seq, mac)) = &self.prev {
            d.insert("prev_seq", *seq);
            d.insert("prev_mac", mac);
            // Unique: no second checkpoint follows the same one.
            d.insert(FOLLOWS_FIELD, *seq);
        }
        if let Some(id) = &self.key_id {
            d.insert("key_id", id);
        }
        d
    }

    pub fn is_chained(&self) -> bool {
        self.key_id.is_some()
    }

    fn expected_mac(&self, key: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        match &self.prev {
            // v1: the seal alone.
            None => mac.update(
                format!("certautopilot audit checkpoint {} {}", self.seq, self.hash).as_bytes(),
            ),
            Some((prev_seq, prev_mac)) => mac.update(
                format!(
                    "certautopilot audit checkpoint v2 {} {} {} {} {}",
                    self.seq,
                    self.hash,
                    self.time.timestamp_millis(),
                    prev_seq,
                    prev_mac
                )
                .as_bytes(),
            ),
        }
        hex(&mac.finalize().into_bytes())
    }

    /// Whether this checkpoint was made with `key`; `Err` says why not.
    pub fn authenticate(&self, key: &[u8]) -> Result<(), String> {
        if let Some(id) = &self.key_id {
            if *id != key_id(key) {
                return Err(format!(
                    "it was made under another key (key id {id}, the stored key is {})",
                    key_id(key)
                ));
            }
        }
        if self.mac != self.expected_mac(key) {
            return Err("its MAC does not match (forged, or sealed with another KEK)".into());
        }
        Ok(())
    }

    /// Whether this checkpoint follows `before` in the chain (`None`: it is
    /// the first); `Err` says how it does not.
    pub fn follows(&self, before: Option<&Checkpoint>) -> Result<(), String> {
        let Some((prev_seq, prev_mac)) = &self.prev else {
            return match before {
                Some(b) if b.is_chained() => {
                    Err("an unchained checkpoint follows chained ones".into())
                }
                _ => Ok(()),
            };
        };
        match before {
            None if *prev_seq == 0 => Ok(()),
            None => Err(format!(
                "it follows a checkpoint at record {prev_seq} that is gone"
            )),
            Some(b) if b.seq == *prev_seq && b.mac == *prev_mac => Ok(()),
            Some(b) if b.seq == *prev_seq => Err(format!(
                "it follows another checkpoint at record {prev_seq} than the one stored"
            )),
            Some(b) => Err(format!(
                "it follows a checkpoint at record {prev_seq}, but the one before it is at record {}: checkpoints between them were removed",
                b.seq
            )),
        }
    }

    /// The record that copies this checkpoint into the log (and so to the
    /// SIEM sinks).
    pub fn event(&self, actor: &str) -> super::Event {
        super::Event::new(actor, CHECKPOINT_ACTION, format!("audit/{}", self.seq)).with(doc! {
            "seq": self.seq,
            "hash": &self.hash,
            "mac": &self.mac,
            "key_id": self.key_id.as_deref().unwrap_or_default(),
            "prev_seq": self.prev.as_ref().map(|p| p.0).unwrap_or(0),
        })
    }
}

/// Whether the log holds a copy of any checkpoint (an `audit.checkpoint`
/// record, found through the `target` index): then checkpoints were made,
/// whatever the collection says now.
pub async fn copied(store: &Store) -> Result<bool, MongoError> {
    Ok(store
        .collection(AUDIT_COLLECTION)
        .find_one(doc! { "target": { "$regex": "^audit/" }, "action": CHECKPOINT_ACTION })
        .await?
        .is_some())
}

/// The last checkpoint, if any.
pub async fn latest(store: &Store) -> Result<Option<Checkpoint>, MongoError> {
    Ok(store
        .collection(CHECKPOINTS_COLLECTION)
        .find_one(doc! {})
        .sort(doc! { "_id": -1 })
        .await?
        .map(|d| Checkpoint::parse(&d)))
}

/// The checkpoint at `seq`, if any.
pub async fn at(store: &Store, seq: i64) -> Result<Option<Checkpoint>, MongoError> {
    Ok(store
        .collection(CHECKPOINTS_COLLECTION)
        .find_one(doc! { "_id": seq })
        .await?
        .map(|d| Checkpoint::parse(&d)))
}

/// The problem housekeeping last refused to seal over, when it refused
/// since the last checkpoint (its `audit.seal_refused` records stay
/// unsealed after it).
pub async fn refusal_since_last(store: &Store) -> Result<Option<String>, MongoError> {
    let after = latest(store).await?.map(|c| c.seq).unwrap_or(0);
    Ok(store
        .collection(AUDIT_COLLECTION)
        .find_one(doc! { "_id": { "$gt": after }, "action": SEAL_REFUSED_ACTION })
        .sort(doc! { "_id": -1 })
        .await?
        .and_then(|r| {
            r.get_document("details")
                .ok()?
                .get_str("problem")
                .ok()
                .map(str::to_string)
        }))
}

/// What [`next`] decided.
#[derive(Debug)]
pub enum Next {
    /// Nothing was appended since the last checkpoint.
    UpToDate(i64),
    /// The checkpoint to write.
    Seal(Checkpoint),
    /// The chain since the last checkpoint does not verify: seal nothing.
    Refused(String),
}

/// The latest checkpoint a process has seen (sealed, or found authentic):
/// if the chain is ever cut back behind it, the process notices even though
/// every remaining checkpoint is authentic.
#[derive(Default)]
pub struct Witness(Mutex<Option<Checkpoint>>);

impl Witness {
    pub fn saw(&self, checkpoint: &Checkpoint) {
        *self.0.lock().unwrap() = Some(checkpoint.clone());
    }

    fn last(&self) -> Option<Checkpoint> {
        self.0.lock().unwrap().clone()
    }
}

/// Decides the next checkpoint: the last one must be authentic (and still
/// hold what `witness` saw), and every record from it to the head must
/// hash, link and end at the head. `now` is the database's time.
pub async fn next(
    store: &Store,
    key: &[u8],
    witness: Option<&Witness>,
    now: DateTime,
) -> Result<Next, MongoError> {
    let last = latest(store).await?;
    if let Some(cp) = &last {
        if let Err(why) = cp.authenticate(key) {
            return Ok(Next::Refused(format!(
                "the last checkpoint (record {}) is not authentic: {why}",
                cp.seq
            )));
        }
    }
    if let Some(seen) = witness.and_then(Witness::last) {
        let still = at(store, seen.seq).await?;
        if still.as_ref().map(|c| &c.mac) != Some(&seen.mac) {
            return Ok(Next::Refused(format!(
                "the checkpoint at record {} that this process saw sealed is gone: the checkpoints were cut back",
                seen.seq
            )));
        }
    }
    if let (Some(witness), Some(cp)) = (witness, &last) {
        witness.saw(cp);
    }
    if last.is_none() && copied(store).await? {
        return Ok(Next::Refused(
            "every checkpoint is gone, but the log holds copies of them: the checkpoints were deleted".into(),
        ));
    }
    let (head_seq, head_hash) = Audit::new(store.clone()).head().await?;
    let (from_seq, from_hash) = last
        .as_ref()
        .map(|c| (c.seq, c.hash.clone()))
        .unwrap_or((0, GENESIS_HASH.to_string()));
    if head_seq < from_seq {
        return Ok(Next::Refused(format!(
            "the head is at record {head_seq}, behind the checkpoint at record {from_seq}"
        )));
    }
    if head_seq == from_seq {
        return Ok(Next::UpToDate(head_seq));
    }
    let mut records = store
        .collection(AUDIT_COLLECTION)
        .find(doc! { "_id": { "$gt": from_seq, "$lte": head_seq } })
        .sort(doc! { "_id": 1 })
        .batch_size(2000)
        .await?;
    let mut chain = Links::from(from_seq, &from_hash);
    let mut news = false;
    while let Some(r) = records.try_next().await? {
        if let Err(why) = chain.next(&r) {
            return Ok(Next::Refused(why));
        }
        news |= !is_housekeepings_own(&r);
    }
    if let Err(why) = chain.ends_at(head_seq, &head_hash) {
        return Ok(Next::Refused(why));
    }
    // Verified, but nothing happened since the last checkpoint except
    // housekeeping's own records: sealing them would only append more.
    if !news && last.is_some() {
        return Ok(Next::UpToDate(from_seq));
    }
    Ok(Next::Seal(Checkpoint::seal(
        key,
        head_seq,
        &head_hash,
        now,
        last.as_ref(),
    )))
}

/// Whether `record` is one housekeeping appends at every run: a
/// checkpoint's copy, or its own job's outcome.
fn is_housekeepings_own(record: &Document) -> bool {
    match record.get_str("action").unwrap_or_default() {
        CHECKPOINT_ACTION => true,
        "job.completed" => record
            .get_document("details")
            .and_then(|d| d.get_str("kind"))
            .is_ok_and(|kind| kind == JobKind::Housekeeping.as_str()),
        _ => false,
    }
}

/// Follows records from the one after `seq`: each must be the next
/// number, hash to its own hash and link to the one before.
struct Links {
    last_seq: i64,
    last_hash: String,
}

impl Links {
    fn from(seq: i64, hash: &str) -> Links {
        Links {
            last_seq: seq,
            last_hash: hash.to_string(),
        }
    }

    fn next(&mut self, r: &Document) -> Result<(), String> {
        let expected = self.last_seq + 1;
        let id = r.get_i64("_id").unwrap_or(-1);
        if id != expected {
            return Err(format!("record {expected} is missing"));
        }
        let hash = r.get_str("hash").unwrap_or_default();
        if recompute(r).as_deref() != Some(hash) {
            return Err(format!("record {id} does not match its hash"));
        }
        if r.get_str("prev_hash").unwrap_or_default() != self.last_hash {
            return Err(format!("record {id} does not link to the record before it"));
        }
        self.last_seq = id;
        self.last_hash = hash.to_string();
        Ok(())
    }

    /// The records ended where the head says the chain ends.
    fn ends_at(&self, head_seq: i64, head_hash: &str) -> Result<(), String> {
        if self.last_seq != head_seq {
            return Err(format!(
                "the head is at record {head_seq}, but the records end at {}",
                self.last_seq
            ));
        }
        if self.last_hash != head_hash {
            return Err(format!("the head's hash does not match record {head_seq}"));
        }
        Ok(())
    }
}
