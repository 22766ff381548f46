//! The wire types of the mover protocol and of the restore routes, shared by the drainer's
//! endpoints (`http::mover_protocol`, `http::volumes`) and the clients that call them (`mover`,
//! `remote`), so neither side imports the other. The mover's paths are under
//! `/v1/drains/{id}`, a restore's under `/v1/volumes/{ns}/{pvc}`; see the `http` modules for
//! the routes and what each checks.

pub mod batch;

use crate::snapshot::compress::{Codec, Compressed, Compression};
use crate::snapshot::manifest::Content;
use crate::snapshot::{Listed, PartialUpload, StoredFile, UploadedPart, part_hash};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

/// The header in which a mover names itself as the owner of its copy run (see
/// `ledger::runs`): a second mover of the same drain gets `409 run_busy` while the first holds
/// the run. Movers that do not send it share the owner `mover-of-DRAIN`.
pub const OWNER_HEADER: &str = "x-drainer-run-owner";

/// A file stored by a run, as it crosses the wire.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireStoredFile {
    /// The path, base64.
    pub path_b64: String,
    /// Size.
    pub size: u64,
    /// Modification time.
    pub mtime_ns: i64,
    /// Change time.
    pub ctime_ns: i64,
    /// Inode.
    pub ino: u64,
    /// Content hash.
    pub blake3: String,
    /// Object key relative to the volume.
    pub object: String,
    /// How the object is compressed (`zstd`); absent for a raw object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Codec>,
    /// The object's size in the store, with `compression`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_size: Option<u64>,
}

impl From<&StoredFile> for WireStoredFile {
    fn from(f: &StoredFile) -> Self {
        Self {
            path_b64: BASE64.encode(&f.path),
            size: f.size,
            mtime_ns: f.mtime_ns,
            ctime_ns: f.ctime_ns,
            ino: f.ino,
            blake3: f.content.blake3.clone(),
            object: f.content.object.clone(),
            compression: f.content.compressed.map(|c| c.codec),
            stored_size: f.content.compressed.map(|c| c.stored_size),
        }
    }
}

impl TryFrom<WireStoredFile> for StoredFile {
    type Error = String;

    fn try_from(w: WireStoredFile) -> Result<Self, Self::Error> {
        let compressed = match (w.compression, w.stored_size) {
            (Some(codec), Some(stored_size)) => Some(Compressed { codec, stored_size }),
            (None, None) => None,
            _ => return Err("compression and stored_size come together".into()),
        };
        Ok(Self {
            path: BASE64.decode(w.path_b64).map_err(|e| e.to_string())?,
            size: w.size,
            mtime_ns: w.mtime_ns,
            ctime_ns: w.ctime_ns,
            ino: w.ino,
            content: Content {
                blake3: w.blake3,
                object: w.object,
                compressed,
            },
        })
    }
}

/// An unfinished upload of a large file, as it crosses the wire (the mover resumes it part by
/// part after its own death or a drainer replica's).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WirePartial {
    /// The file's path, base64.
    pub path_b64: String,
    /// The relayed upload's id.
    pub upload_id: String,
    /// Size of every part but the last.
    pub part_size: u64,
    /// File size when the upload started.
    pub size: u64,
    /// File mtime when the upload started.
    pub mtime_ns: i64,
    /// File ctime when the upload started.
    pub ctime_ns: i64,
    /// File inode when the upload started.
    pub ino: u64,
    /// The stored parts in order: their ids and BLAKE3 chaining values (hex).
    pub parts: Vec<(String, String)>,
    /// How the parts are compressed (`zstd:LEVEL`); absent for raw parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
}

impl From<&PartialUpload> for WirePartial {
    fn from(u: &PartialUpload) -> Self {
        Self {
            path_b64: BASE64.encode(&u.path),
            upload_id: u.upload_id.clone(),
            part_size: u.part_size,
            size: u.size,
            mtime_ns: u.mtime_ns,
            ctime_ns: u.ctime_ns,
            ino: u.ino,
            parts: u
                .parts
                .iter()
                .map(|p| (p.id.clone(), part_hash::to_hex(&p.chaining_value)))
                .collect(),
            compression: (u.compression != Compression::Off).then(|| u.compression.to_string()),
        }
    }
}

impl TryFrom<WirePartial> for PartialUpload {
    type Error = String;

    fn try_from(w: WirePartial) -> Result<Self, Self::Error> {
        let parts = w
            .parts
            .into_iter()
            .map(|(id, cv)| {
                Ok(UploadedPart {
                    id,
                    chaining_value: part_hash::from_hex(&cv)
                        .ok_or("a chaining value is not 32 bytes of hex")?,
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            path: BASE64.decode(w.path_b64).map_err(|e| e.to_string())?,
            upload_id: w.upload_id,
            part_size: w.part_size,
            size: w.size,
            mtime_ns: w.mtime_ns,
            ctime_ns: w.ctime_ns,
            ino: w.ino,
            parts,
            compression: match w.compression {
                Some(text) => text.parse()?,
                None => Compression::Off,
            },
        })
    }
}

/// `POST …/run`: the run the mover writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRun {
    /// Run id.
    pub id: String,
    /// Snapshot id.
    pub snapshot: String,
    /// Resumed?
    pub resumed: bool,
}

/// `GET …/store`: what a mover must know of the store it writes through the drainer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreInfo {
    /// Size of every part of a large file but the last.
    pub part_size: u64,
    /// The drainer's compression setting (`off`, `zstd:LEVEL`), which its movers follow
    /// unless told otherwise; absent from drainers older than compression (then: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Whether the drainer signs URLs with which a mover stores the parts of large files
    /// straight into the store (`POST …/uploads/{upload}/{part}/url`); absent (older
    /// drainers) or false: every part is relayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_parts: Option<bool>,
    /// Whether the drainer also signs several parts' URLs per request (`POST
    /// …/uploads/{upload}/urls`) and takes several stored parts per report (`POST
    /// …/parts/stored`); absent (older drainers) or false: one request per part for each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_batches: Option<bool>,
    /// Whether `POST …/parts/stored` also takes an unfinished upload's progress
    /// ([`StoredParts::progress`]), recorded in the same ledger transaction as the parts, so
    /// that a durability barrier and the record of a file's progress after it are one request;
    /// absent (older drainers) or false: a barrier, then `PUT …/run/{run}/partial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts_with_progress: Option<bool>,
}

/// `GET /v1/drains/{id}`, the fields a mover reads.
#[derive(Debug, Clone, Deserialize)]
pub struct DrainInfo {
    /// `namespace/pvc`.
    pub volume: String,
    /// The drain's state.
    pub state: String,
}

/// `POST …/objects/batch` answers each object's error, or `null`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchAnswer {
    /// One entry per object, in order.
    pub errors: Vec<Option<String>>,
}

/// `POST …/uploads` answers the relayed upload's id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedUpload {
    /// The upload, for the part and completion requests.
    pub upload: String,
    /// The part size parts must have.
    pub part_size: u64,
}

/// The query of `POST …/uploads/{upload}/{part}/url`: the key the upload writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartUrlParam {
    /// The key, relative to the store's root.
    pub key: String,
}

/// A URL the drainer signed for one request straight to the store, until it expires:
/// `POST …/uploads/{upload}/{part}/url` (a `PUT` of the part's bytes stores the part) and
/// `GET /v1/volumes/{ns}/{pvc}/objects/url` (a `GET`, with a `Range`, reads the object).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedUrl {
    /// The URL to `PUT` the part to.
    pub url: String,
    /// Seconds the URL stays valid.
    pub expires_in_s: u64,
}

/// The query of `POST …/uploads/{upload}/urls`: the key the upload writes, and the parts
/// `first .. first + count` to sign.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartUrlsParam {
    /// The key, relative to the store's root.
    pub key: String,
    /// The first part's index (from 0).
    pub first: usize,
    /// How many parts, 1 to [`MAX_SIGNED_PER_REQUEST`].
    pub count: usize,
}

/// The most part URLs one `POST …/uploads/{upload}/urls` signs.
pub const MAX_SIGNED_PER_REQUEST: usize = 64;

/// The answer of `POST …/uploads/{upload}/urls`: the URL of part `first + i` at `urls[i]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignedUrls {
    /// The index of the first part signed.
    pub first: usize,
    /// One URL per part, in order; each `PUT` of a part's bytes stores that part.
    pub urls: Vec<String>,
    /// Seconds the URLs stay valid.
    pub expires_in_s: u64,
}

/// The most parts one `POST …/parts/stored` reports.
pub const MAX_REPORTED_PER_REQUEST: usize = 1000;

/// `POST /v1/drains/{id}/parts/stored`: parts the mover stored with signed URLs, of one or
/// more of its uploads, reported at once (before, or with, the progress that counts on
/// them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredParts {
    /// The parts, 1 to [`MAX_REPORTED_PER_REQUEST`] (none when `progress` is given).
    pub parts: Vec<StoredPart>,
    /// An unfinished upload's progress to record with the parts, after the drainer flushed its
    /// store: what `PUT …/run/{run}/partial` records (where `StoreInfo::parts_with_progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RunPartial>,
}

/// The progress of an unfinished upload of run `run` (see [`StoredParts::progress`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunPartial {
    /// The run's id.
    pub run: String,
    /// The upload, with the parts stored so far.
    pub upload: WirePartial,
}

/// One part of [`StoredParts`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPart {
    /// The upload it belongs to.
    pub upload: String,
    /// The key that upload writes, relative to the store's root.
    pub key: String,
    /// The part's index (from 0).
    pub part: usize,
    /// The `ETag` the store answered the part's `PUT` with.
    pub etag: String,
    /// The part's length in bytes.
    pub len: u64,
}

/// `POST …/uploads/{upload}/{part}/stored`: a part the mover stored with a signed URL, as the
/// store acknowledged it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectPart {
    /// The `ETag` the store answered the part's `PUT` with.
    pub etag: String,
    /// The part's length in bytes.
    pub len: u64,
}

/// `POST …/run/{run}/interrupted`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interrupted {
    /// Why the attempt stopped.
    pub error: String,
}

/// `PUT …/run/{run}/totals`: the size of the volume the mover copies, once its copy has
/// counted it, so the drainer shows the copy against its total.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunTotals {
    /// Regular files in the volume.
    pub files: u64,
    /// Bytes in them.
    pub bytes: u64,
}

/// The `?key=` of the object and upload endpoints: a key relative to the store's root.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyParam {
    /// The key.
    pub key: String,
}

/// The `?path=` of the partial-upload endpoints: a file's manifest path, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathParam {
    /// The path, base64.
    pub path_b64: String,
}

impl PathParam {
    /// The parameter for `path`.
    pub fn of(path: &[u8]) -> Self {
        Self {
            path_b64: BASE64.encode(path),
        }
    }

    /// The path it names.
    pub fn decode(&self) -> Result<Vec<u8>, String> {
        BASE64
            .decode(&self.path_b64)
            .map_err(|e| format!("bad path: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_uploads_cross_the_wire_intact() {
        let upload = PartialUpload {
            path: b"big/\xff.bin".to_vec(),
            upload_id: "u-1".into(),
            part_size: 8 << 20,
            size: 20 << 20,
            mtime_ns: -3,
            ctime_ns: 7,
            ino: 42,
            compression: Compression::Zstd { level: 5 },
            parts: vec![
                UploadedPart {
                    id: "0".into(),
                    chaining_value: [0xab; 32],
                },
                UploadedPart {
                    id: "1".into(),
                    chaining_value: [0x01; 32],
                },
            ],
        };
        let wire = WirePartial::from(&upload);
        let json = serde_json::to_string(&wire).unwrap();
        let back: WirePartial = serde_json::from_str(&json).unwrap();
        assert_eq!(PartialUpload::try_from(back).unwrap(), upload);
        let mut bad = wire.clone();
        bad.parts[0].1 = "zz".into();
        assert!(PartialUpload::try_from(bad).is_err());
    }
}

/// What `GET /v1/volumes/{ns}/{pvc}/snapshots` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    /// `namespace/pvc`.
    pub volume: String,
    /// Its snapshots, oldest first (damaged ones with the reason).
    pub snapshots: Vec<Listed>,
    /// The snapshot `latest` means (the pointer, or the newest complete one when the pointer
    /// cannot be trusted); `None` when the volume has no complete snapshot.
    #[serde(default)]
    pub latest: Option<String>,
}
