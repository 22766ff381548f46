//! What a copy records as it goes, and where: the [`Checkpoint`] trait (the ledger, or in a
//! mover the drainer over HTTP), the records it keeps (runs, stored files, unfinished
//! uploads), and its error. The engine owns these types; the ledger and the mover implement
//! the trait and map their own errors into [`CheckpointError`], so the engine imports neither.

use super::Result;
use super::catalog::{self, SnapshotSummary};
use super::layout::{SnapshotId, VolumeLayout};
use super::manifest::Content;
use crate::store::Store;
use crate::volume::VolumeId;
use futures::stream::BoxStream;

/// A checkpoint that could not be made: what was being done, whether trying again later may
/// succeed, and whether this copy lost its run to another copy.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct CheckpointError {
    /// What was being recorded (`begin run`, `record progress`, …).
    pub op: &'static str,
    /// Whether trying again later may succeed (an outage, a timeout, a busy run).
    pub transient: bool,
    /// Whether another copy has taken the run over: this copy must stop.
    pub run_lost: bool,
    /// The underlying error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

impl CheckpointError {
    /// An error that may go away when tried again.
    pub fn transient(
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            op,
            transient: true,
            run_lost: false,
            source: source.into(),
        }
    }

    /// An error that will not go away by itself.
    pub fn permanent(
        op: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            op,
            transient: false,
            run_lost: false,
            source: source.into(),
        }
    }

    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        self.transient
    }

    /// Whether another copy holds the run now.
    pub(crate) fn is_run_lost(&self) -> bool {
        self.run_lost
    }
}

/// Result of a checkpoint.
pub type CheckpointResult<T> = std::result::Result<T, CheckpointError>;

/// A copy run as the ledger knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run's id in the ledger.
    pub id: String,
    /// The snapshot the run writes.
    pub snapshot: SnapshotId,
    /// Whether the run was started earlier and is being resumed.
    pub resumed: bool,
}

/// A file this run has already stored, as recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Manifest path.
    pub path: Vec<u8>,
    /// Size at the time it was stored.
    pub size: u64,
    /// Modification time at the time it was stored.
    pub mtime_ns: i64,
    /// Change time at the time it was stored.
    pub ctime_ns: i64,
    /// Inode at the time it was stored.
    pub ino: u64,
    /// Where the bytes are.
    pub content: Content,
}

/// A multipart upload of a large file that can be continued: which parts are stored, and the
/// file metadata they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialUpload {
    /// Manifest path of the file.
    pub path: Vec<u8>,
    /// The store's id of the upload.
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
    /// The parts stored so far, in order.
    pub parts: Vec<UploadedPart>,
    /// How the file's bytes are compressed into the upload (`Off`: its parts are the file's
    /// raw parts). A compressed upload's parts are its zstd stream cut in parts of the part
    /// size, and each part's recorded value is the BLAKE3 hash of its stored bytes.
    pub compression: super::Compression,
}

/// One stored part of a multipart upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadedPart {
    /// The store's id of the part.
    pub id: String,
    /// The part's BLAKE3 chaining value (see `part_hash`): the file's hash is computed from
    /// these, so stored parts are never read again. For a compressed upload: the BLAKE3 hash
    /// of the part's stored (compressed) bytes, which a rerun checks before it skips the part.
    pub chaining_value: [u8; 32],
}

/// Where a copy records its progress (the ledger, or in a mover, the drainer over HTTP).
#[async_trait::async_trait]
pub trait Checkpoint: Send + Sync {
    /// Resumes the unfinished run of `volume` into `store`, or starts one writing `fresh`.
    async fn begin(
        &self,
        store: &str,
        volume: &VolumeId,
        fresh: &SnapshotId,
    ) -> CheckpointResult<Run>;
    /// The files `run` has stored so far, in manifest path order.
    fn stored_files<'a>(&'a self, run: &'a Run) -> BoxStream<'a, CheckpointResult<StoredFile>>;
    /// Records files stored (their objects are durable).
    async fn record(&self, run: &Run, files: &[StoredFile]) -> CheckpointResult<()>;
    /// Renews this copy's hold on `run` (a heartbeat while nothing else is recorded); fails
    /// when another copy has taken the run over.
    async fn renew(&self, _run: &Run) -> CheckpointResult<()> {
        Ok(())
    }
    /// Marks the run finished: its snapshot is complete.
    async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> CheckpointResult<()>;
    /// Notes why an attempt of the run stopped; the run stays resumable.
    async fn interrupted(&self, run: &Run, error: &str) -> CheckpointResult<()>;
    /// The multipart upload of `path` that `run` left unfinished, if any.
    async fn partial_upload(
        &self,
        _run: &Run,
        _path: &[u8],
    ) -> CheckpointResult<Option<PartialUpload>> {
        Ok(None)
    }
    /// Records the parts of an unfinished upload (its parts are durable in the store).
    async fn record_partial(&self, _run: &Run, _upload: &PartialUpload) -> CheckpointResult<()> {
        Ok(())
    }
    /// Makes the parts of `upload` stored so far durable (`store`'s flush), then records them
    /// ([`Checkpoint::record_partial`]). A checkpoint that can do both in one step overrides
    /// it: a mover's, whose drainer flushes its store and records, in one request and one
    /// transaction, the parts the mover stored itself and the progress that counts on them.
    async fn flush_and_record_partial(
        &self,
        store: &Store,
        run: &Run,
        upload: &PartialUpload,
    ) -> Result<()> {
        store.flush().await?;
        self.record_partial(run, upload).await?;
        Ok(())
    }
    /// Forgets an upload that was completed or abandoned.
    async fn forget_partial(&self, _run: &Run, _path: &[u8]) -> CheckpointResult<()> {
        Ok(())
    }
    /// Makes the written snapshot complete and `latest` (its summary, then the pointer). A
    /// mover's checkpoint leaves this to the drainer, which commits after its own checks when
    /// the run finishes.
    async fn commit(
        &self,
        store: &Store,
        layout: &VolumeLayout,
        summary: &SnapshotSummary,
    ) -> Result<()> {
        catalog::commit(store, layout, summary).await
    }
}
