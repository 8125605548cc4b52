//! The snapshot file: one zstd stream (with its content checksum) of
//! frames, each a tag byte and one BSON document:
//!
//! - `H` the header: the format's name and version, the release that wrote it;
//! - `C` a collection begins (its name), then `D` each of its documents,
//!   byte for byte as the database returned them;
//! - `M` the [`Manifest`]: schema version, time, per-collection document
//!   counts and SHA-256 digests, the audit head, the KEK versions needed;
//! - `T` the trailer: the SHA-256 of every byte before it (uncompressed).
//!
//! Nothing follows the trailer. The reader checks all of it as it goes, so
//! reading a file to its end ([`verify`]) says whether it is whole and
//! matches its manifest; a newer format is refused at its first frame. The
//! digests make damage evident, not forgery impossible: whoever can write
//! the file can recompute them. Authenticity comes after the restore, from
//! the audit chain's checkpoints (keyed from the KEK) and the SIEM's copy.

use std::io::{self, BufReader, Read, Write};

use mongodb::bson::{self, doc, Document};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "certautopilot-snapshot";
/// The format version this release writes, and the newest it reads.
pub const FORMAT_VERSION: i64 = 1;
/// A BSON document is at most 16 MiB; a longer frame is damage.
const MAX_FRAME: usize = 16 * 1024 * 1024 + 16 * 1024;
const ZSTD_LEVEL: i32 = 3;

const HEADER: u8 = b'H';
const COLLECTION: u8 = b'C';
const DOCUMENT: u8 = b'D';
const MANIFEST: u8 = b'M';
const TRAILER: u8 = b'T';

/// What a snapshot holds, written after its last document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: i64,
    /// The schema the snapshot's data is at, and its floor.
    pub schema_version: i64,
    pub schema_floor: i64,
    /// The database's time just before the snapshot's read began (RFC
    /// 3339): the data is as of that moment or a few milliseconds later.
    pub taken_at: String,
    /// The release that wrote it.
    pub created_by: String,
    /// The database it was read from.
    pub database: String,
    pub collections: Vec<CollectionDigest>,
    pub audit_head: AuditHead,
    /// Every KEK version a stored data key is wrapped with, with the count
    /// of such keys and the version's recorded check value (hex).
    pub kek_versions: Vec<KekVersionNeeded>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionDigest {
    pub name: String,
    pub documents: i64,
    /// SHA-256 over the collection's documents' bytes, in file order.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekVersionNeeded {
    pub version: i64,
    pub data_keys: i64,
    pub check_value: Option<String>,
}

impl Manifest {
    pub fn documents(&self) -> i64 {
        self.collections.iter().map(|c| c.documents).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{0}")]
    Io(String),
    #[error("not a certautopilot snapshot: {0}")]
    NotASnapshot(String),
    #[error("the snapshot is in format version {found}, newer than the {FORMAT_VERSION} this release reads: restore it with the release that wrote it ({created_by}) or a later one")]
    NewerFormat { found: i64, created_by: String },
    #[error("the snapshot is truncated: it ends {0}")]
    Truncated(String),
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    #[error("the snapshot does not match its manifest: {0}")]
    Mismatch(String),
}

impl From<io::Error> for SnapshotError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::UnexpectedEof => {
                SnapshotError::Truncated("in the middle of a frame".into())
            }
            // zstd reports a damaged stream as invalid data.
            io::ErrorKind::InvalidData | io::ErrorKind::Other => {
                SnapshotError::Damaged(format!("its compressed stream does not decode ({e})"))
            }
            _ => SnapshotError::Io(e.to_string()),
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a snapshot to `W`, digesting as it goes.
pub struct SnapshotWriter<W: Write> {
    out: zstd::Encoder<'static, W>,
    whole: Sha256,
    current: Option<(String, i64, Sha256)>,
    done: Vec<CollectionDigest>,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, created_by: &str) -> io::Result<Self> {
        let mut encoder = zstd::Encoder::new(out, ZSTD_LEVEL)?;
        encoder.include_checksum(true)?;
        let mut writer = SnapshotWriter {
            out: encoder,
            whole: Sha256::new(),
            current: None,
            done: Vec::new(),
        };
        let header =
            doc! { "format": FORMAT, "format_version": FORMAT_VERSION, "created_by": created_by };
        writer.frame(HEADER, &bson::to_vec(&header).map_err(io::Error::other)?)?;
        Ok(writer)
    }

    fn frame(&mut self, tag: u8, bytes: &[u8]) -> io::Result<()> {
        self.whole.update([tag]);
        self.whole.update(bytes);
        self.out.write_all(&[tag])?;
        self.out.write_all(bytes)
    }

    fn close_collection(&mut self) {
        if let Some((name, documents, digest)) = self.current.take() {
            self.done.push(CollectionDigest {
                name,
                documents,
                sha256: hex(&digest.finalize()),
            });
        }
    }

    pub fn begin_collection(&mut self, name: &str) -> io::Result<()> {
        self.close_collection();
        self.frame(
            COLLECTION,
            &bson::to_vec(&doc! { "name": name }).map_err(io::Error::other)?,
        )?;
        self.current = Some((name.to_string(), 0, Sha256::new()));
        Ok(())
    }

    /// One document of the current collection: its BSON bytes.
    pub fn document(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (_, count, digest) = self
            .current
            .as_mut()
            .expect("a document belongs to a collection begun before it");
        *count += 1;
        digest.update(bytes);
        self.frame(DOCUMENT, bytes)
    }

    /// The digests of the collections written so far (the last one open).
    pub fn collections(&mut self) -> Vec<CollectionDigest> {
        self.close_collection();
        self.done.clone()
    }

    /// Writes `manifest` (its collections replaced by what was written) and
    /// the trailer, and returns the output and the manifest.
    pub fn finish(mut self, mut manifest: Manifest) -> io::Result<(W, Manifest)> {
        manifest.collections = self.collections();
        let document = bson::to_document(&manifest).map_err(io::Error::other)?;
        self.frame(
            MANIFEST,
            &bson::to_vec(&document).map_err(io::Error::other)?,
        )?;
        let whole = hex(&std::mem::take(&mut self.whole).finalize());
        self.frame(
            TRAILER,
            &bson::to_vec(&doc! { "sha256": whole }).map_err(io::Error::other)?,
        )?;
        Ok((self.out.finish()?, manifest))
    }
}

/// One thing read from a snapshot.
#[derive(Debug)]
pub enum Item {
    Collection(String),
    Document(Vec<u8>),
    /// The manifest, checked against everything before it and the trailer;
    /// nothing comes after it.
    End(Manifest),
}

/// Reads a snapshot, checking each frame, every digest and the trailer.
pub struct SnapshotReader<R: Read> {
    input: zstd::Decoder<'static, BufReader<R>>,
    whole: Sha256,
    created_by: String,
    current: Option<(String, i64, Sha256)>,
    seen: Vec<CollectionDigest>,
    finished: bool,
    /// Uncompressed bytes read so far.
    pub bytes: u64,
}

impl<R: Read> SnapshotReader<R> {
    /// Opens a snapshot: refuses at once what is not one, or is newer.
    pub fn open(input: R) -> Result<Self, SnapshotError> {
        let decoder = zstd::Decoder::new(input).map_err(SnapshotError::from)?;
        let mut reader = SnapshotReader {
            input: decoder,
            whole: Sha256::new(),
            created_by: String::new(),
            current: None,
            seen: Vec::new(),
            finished: false,
            bytes: 0,
        };
        let (tag, bytes) = match reader.frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Err(SnapshotError::NotASnapshot("the file is empty".into())),
            Err(SnapshotError::Damaged(_)) | Err(SnapshotError::Truncated(_)) => {
                return Err(SnapshotError::NotASnapshot(
                    "it does not begin with a snapshot header (is it a zstd stream written by `snapshot save`?)".into(),
                ))
            }
            Err(e) => return Err(e),
        };
        reader.whole.update([tag]);
        reader.whole.update(&bytes);
        let header = (tag == HEADER)
            .then(|| bson::from_slice::<Document>(&bytes).ok())
            .flatten()
            .filter(|h| h.get_str("format") == Ok(FORMAT))
            .ok_or_else(|| {
                SnapshotError::NotASnapshot("its first frame is not a snapshot header".into())
            })?;
        reader.created_by = header.get_str("created_by").unwrap_or("?").to_string();
        let version = header.get_i64("format_version").unwrap_or(0);
        if version > FORMAT_VERSION {
            return Err(SnapshotError::NewerFormat {
                found: version,
                created_by: reader.created_by,
            });
        }
        if version < 1 {
            return Err(SnapshotError::NotASnapshot(format!(
                "format version {version}"
            )));
        }
        Ok(reader)
    }

    /// The release that wrote the snapshot.
    pub fn created_by(&self) -> &str {
        &self.created_by
    }

    /// The next frame's tag and document bytes; `None` at a clean end.
    fn frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, SnapshotError> {
        let mut tag = [0u8; 1];
        if self.input.read(&mut tag)? == 0 {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        self.input.read_exact(&mut len)?;
        let total = i32::from_le_bytes(len);
        if total < 5 || total as usize > MAX_FRAME {
            return Err(SnapshotError::Damaged(format!(
                "a frame claims {total} bytes"
            )));
        }
        let mut bytes = vec![0u8; total as usize];
        bytes[..4].copy_from_slice(&len);
        self.input.read_exact(&mut bytes[4..])?;
        if bytes[bytes.len() - 1] != 0 {
            return Err(SnapshotError::Damaged(
                "a document does not end where its length says".into(),
            ));
        }
        self.bytes += 1 + bytes.len() as u64;
        Ok(Some((tag[0], bytes)))
    }

    fn close_collection(&mut self) {
        if let Some((name, documents, digest)) = self.current.take() {
            self.seen.push(CollectionDigest {
                name,
                documents,
                sha256: hex(&digest.finalize()),
            });
        }
    }

    /// The next item; after [`Item::End`], `None`.
    pub fn next_item(&mut self) -> Result<Option<Item>, SnapshotError> {
        if self.finished {
            return Ok(None);
        }
        let Some((tag, bytes)) = self.frame()? else {
            return Err(SnapshotError::Truncated(
                "before its manifest and trailer".into(),
            ));
        };
        // The trailer covers every frame before it, not itself.
        if tag != TRAILER {
            self.whole.update([tag]);
            self.whole.update(&bytes);
        }
        match tag {
            COLLECTION => {
                self.close_collection();
                let name = bson::from_slice::<Document>(&bytes)
                    .ok()
                    .and_then(|d| d.get_str("name").ok().map(str::to_string))
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| SnapshotError::Damaged("a collection has no name".into()))?;
                self.current = Some((name.clone(), 0, Sha256::new()));
                Ok(Some(Item::Collection(name)))
            }
            DOCUMENT => {
                let Some((_, count, digest)) = self.current.as_mut() else {
                    return Err(SnapshotError::Damaged(
                        "a document comes before any collection".into(),
                    ));
                };
                *count += 1;
                digest.update(&bytes);
                Ok(Some(Item::Document(bytes)))
            }
            MANIFEST => {
                self.close_collection();
                let manifest: Manifest = bson::from_slice(&bytes).map_err(|e| {
                    SnapshotError::Damaged(format!("its manifest does not parse: {e}"))
                })?;
                self.check(&manifest)?;
                let whole = hex(&std::mem::take(&mut self.whole).finalize());
                let trailer = match self.frame()? {
                    Some((TRAILER, bytes)) => bson::from_slice::<Document>(&bytes)
                        .ok()
                        .and_then(|d| d.get_str("sha256").ok().map(str::to_string)),
                    Some(_) => {
                        return Err(SnapshotError::Damaged(
                            "something other than the trailer follows the manifest".into(),
                        ))
                    }
                    None => return Err(SnapshotError::Truncated("before its trailer".into())),
                };
                if trailer.as_deref() != Some(whole.as_str()) {
                    return Err(SnapshotError::Mismatch(
                        "its trailer's digest is not that of its contents".into(),
                    ));
                }
                if self.frame()?.is_some() {
                    return Err(SnapshotError::Damaged("data follows its trailer".into()));
                }
                self.finished = true;
                Ok(Some(Item::End(manifest)))
            }
            HEADER => Err(SnapshotError::Damaged("a second header".into())),
            TRAILER => Err(SnapshotError::Damaged(
                "a trailer without a manifest before it".into(),
            )),
            other => Err(SnapshotError::Damaged(format!(
                "an unknown frame {:?}",
                other as char
            ))),
        }
    }

    /// The manifest names exactly the collections read, with their counts
    /// and digests.
    fn check(&self, manifest: &Manifest) -> Result<(), SnapshotError> {
        if manifest.format_version != FORMAT_VERSION {
            return Err(SnapshotError::Mismatch(format!(
                "its manifest says format version {}",
                manifest.format_version
            )));
        }
        let names = |list: &[CollectionDigest]| {
            list.iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if manifest.collections.len() != self.seen.len() {
            return Err(SnapshotError::Mismatch(format!(
                "the manifest lists the collections [{}], the file holds [{}]",
                names(&manifest.collections),
                names(&self.seen)
            )));
        }
        for (listed, read) in manifest.collections.iter().zip(&self.seen) {
            if listed.name != read.name {
                return Err(SnapshotError::Mismatch(format!(
                    "the manifest lists the collections [{}], the file holds [{}]",
                    names(&manifest.collections),
                    names(&self.seen)
                )));
            }
            if listed.documents != read.documents {
                return Err(SnapshotError::Mismatch(format!(
                    "collection {} holds {} document(s), the manifest says {}",
                    read.name, read.documents, listed.documents
                )));
            }
            if listed.sha256 != read.sha256 {
                return Err(SnapshotError::Mismatch(format!(
                    "collection {}'s SHA-256 is {}, the manifest says {}",
                    read.name, read.sha256, listed.sha256
                )));
            }
        }
        Ok(())
    }
}

/// Reads a whole snapshot and returns its manifest when every check passes.
/// `progress(bytes)` is told the uncompressed bytes read, now and then.
pub fn verify<R: Read>(input: R, mut progress: impl FnMut(u64)) -> Result<Manifest, SnapshotError> {
    let mut reader = SnapshotReader::open(input)?;
    let mut items: u64 = 0;
    loop {
        match reader.next_item()? {
            Some(Item::End(manifest)) => {
                progress(reader.bytes);
                return Ok(manifest);
            }
            Some(_) => {
                items += 1;
                if items.is_multiple_of(4096) {
                    progress(reader.bytes);
                }
            }
            None => unreachable!("the end is the manifest"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            schema_version: 14,
            schema_floor: 12,
            taken_at: "2026-12-02T00:00:00Z".into(),
            created_by: "test".into(),
            database: "db".into(),
            collections: vec![],
            audit_head: AuditHead {
                seq: 2,
                hash: "ab".into(),
            },
            kek_versions: vec![],
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), "test").unwrap();
        w.begin_collection("a").unwrap();
        for i in 0..100 {
            w.document(&bson::to_vec(&doc! { "_id": i, "v": "x".repeat(i as usize) }).unwrap())
                .unwrap();
        }
        w.begin_collection("empty").unwrap();
        w.begin_collection("b").unwrap();
        w.document(&bson::to_vec(&doc! { "_id": "only" }).unwrap())
            .unwrap();
        w.finish(manifest()).unwrap().0
    }

    #[test]
    fn a_snapshot_reads_back_with_its_manifest() {
        let m = verify(&sample()[..], |_| {}).unwrap();
        let counts: Vec<_> = m
            .collections
            .iter()
            .map(|c| (c.name.as_str(), c.documents))
            .collect();
        assert_eq!(counts, [("a", 100), ("empty", 0), ("b", 1)]);
        assert_eq!(m.audit_head.seq, 2);
    }

    #[test]
    fn every_truncation_is_refused() {
        let file = sample();
        for cut in [0, 1, 10, file.len() / 2, file.len() - 1] {
            assert!(verify(&file[..cut], |_| {}).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn an_edited_document_is_refused_even_when_recompressed() {
        // Decompress, change one byte of a document, compress again: the
        // stream is valid zstd, the digest is not.
        let plain = zstd::decode_all(&sample()[..]).unwrap();
        let at = plain.windows(3).position(|w| w == b"xxx").unwrap();
        let mut edited = plain.clone();
        edited[at] = b'y';
        let file = zstd::encode_all(&edited[..], 3).unwrap();
        let err = verify(&file[..], |_| {}).unwrap_err();
        assert!(matches!(err, SnapshotError::Mismatch(_)), "{err}");
        assert!(err.to_string().contains("collection a"), "{err}");
    }

    #[test]
    fn a_newer_format_is_refused_at_its_header() {
        let mut plain = Vec::new();
        plain.push(HEADER);
        plain.extend(
            bson::to_vec(&doc! { "format": FORMAT, "format_version": 2i64, "created_by": "9.9.9" })
                .unwrap(),
        );
        let file = zstd::encode_all(&plain[..], 3).unwrap();
        let err = verify(&file[..], |_| {}).unwrap_err();
        assert!(
            matches!(err, SnapshotError::NewerFormat { found: 2, .. }),
            "{err}"
        );
    }
}
