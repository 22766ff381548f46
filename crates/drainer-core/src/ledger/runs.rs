//! Copy runs and per-file progress: the ledger side of [`crate::snapshot::Checkpoint`].
//!
//! A run is `running` until its snapshot is complete; its `copy_files` rows say which files it
//! has durably stored, keyed so that byte order is manifest path order (the copy merges them
//! as a stream). Completing a run deletes its file rows: from then on the manifest is the
//! record.
//!
//! One live copy per volume and store: a run has an owner (the copying process,
//! `HOST:PID:RANDOM`, or a mover's own id) and a lease ([`RUN_LEASE`]) that the owner renews
//! with every checkpoint and a heartbeat. A second copy finds the run held and gets
//! [`Error::RunBusy`] naming the holder (a 409 through the mover API); it takes the run over
//! once the lease has passed, or at once when the holder is a process of this host that no
//! longer exists (a killed copy is resumed by the next one without waiting). A copy whose run
//! was taken over gets [`Error::RunLost`] at its next checkpoint and stops. A run also records
//! the drain it copies for, so callers find "the run of drain D" without comparing clocks.

use super::relay::RelayPart;
use super::{Error, Ledger, Result, now_ms, on_pool, query_error};
use crate::snapshot::compress::{Codec, Compressed, Compression};
use crate::snapshot::manifest::Content;
use crate::snapshot::{
    Checkpoint, CheckpointError, CheckpointResult, PartialUpload, Run, SnapshotId, SnapshotSummary,
    StoredFile, UploadedPart, part_hash,
};
use crate::volume::VolumeId;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use sqlx::Row;

/// Renews `owner`'s lease on `run` inside the write transaction `tx` (an expression of type
/// `sqlx::Transaction`); [`Error::RunLost`] when another copy holds the run now.
macro_rules! renew_in {
    ($tx:expr, $run:expr, $owner:expr) => {{
        const RENEW: &str = "UPDATE copy_runs SET updated_at = $2, lease_until = $3 \
                             WHERE id = $1 AND state = 'running' AND (owner = $4 OR owner IS NULL)";
        let now = now_ms();
        let renewed = sqlx::query(RENEW)
            .bind($run.id.as_str())
            .bind(now)
            .bind(now + RUN_LEASE.as_millis() as i64)
            .bind($owner)
            .execute(&mut *$tx)
            .await
            .map_err(query_error("renew run"))?;
        if renewed.rows_affected() == 0 {
            let holder: Option<(Option<String>,)> =
                sqlx::query_as("SELECT owner FROM copy_runs WHERE id = $1")
                    .bind($run.id.as_str())
                    .fetch_optional(&mut *$tx)
                    .await
                    .map_err(query_error("renew run"))?;
            return Err(Error::RunLost {
                run: $run.id.clone(),
                holder: holder
                    .and_then(|(h,)| h)
                    .unwrap_or_else(|| "nobody (the run ended)".into()),
            });
        }
    }};
}

/// Parts recorded by one statement (four values each, well within SQLite's limit).
const PARTS_PER_STATEMENT: usize = 200;

/// The query that records (or replaces) the unfinished upload `$u` of run `$run`, bound, for
/// either database.
macro_rules! save_partial_query {
    ($run:expr, $u:expr) => {{
        const SQL: &str = "INSERT INTO copy_uploads (run_id, sort_key, upload_id, part_size, size, mtime_ns, ctime_ns, ino, parts, compression) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                           ON CONFLICT (run_id, sort_key) DO UPDATE SET upload_id = excluded.upload_id, \
                           part_size = excluded.part_size, size = excluded.size, mtime_ns = excluded.mtime_ns, \
                           ctime_ns = excluded.ctime_ns, ino = excluded.ino, parts = excluded.parts, \
                           compression = excluded.compression";
        let (run, u): (&Run, &PartialUpload) = ($run, $u);
        sqlx::query(SQL)
            .bind(run.id.as_str())
            .bind(sort_key(&u.path))
            .bind(u.upload_id.as_str())
            .bind(u.part_size as i64)
            .bind(u.size as i64)
            .bind(u.mtime_ns)
            .bind(u.ctime_ns)
            .bind(u.ino as i64)
            .bind(encode_parts(&u.parts))
            .bind((u.compression != Compression::Off).then(|| u.compression.to_string()))
    }};
}

/// A copy run as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Run id.
    pub id: String,
    /// Store URL.
    pub store_url: String,
    /// `namespace/pvc`.
    pub volume: String,
    /// Snapshot written.
    pub snapshot: String,
    /// Whether it is still copying.
    pub state: RunState,
    /// Attempts so far (1 + resumes).
    pub attempts: i64,
    /// Why the last attempt stopped, if it did.
    pub last_error: Option<String>,
    /// When the run completed (ms since the epoch).
    pub finished_ms: Option<i64>,
    /// The drain the run copies for (none for command-line copies).
    pub drain: Option<String>,
    /// Who holds the run while it is running (none once released).
    pub owner: Option<String>,
}

/// Where a copy run is: the `state` column of `copy_runs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Copying (or stopped mid-copy, to be resumed).
    Running,
    /// Its snapshot is committed.
    Completed,
}

impl RunState {
    /// The column's value.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Completed => "completed",
        }
    }
}

impl std::str::FromStr for RunState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "running" => Ok(RunState::Running),
            "completed" => Ok(RunState::Completed),
            other => Err(format!("unknown copy run state {other:?}")),
        }
    }
}

/// How long a copy run's lease lasts without being renewed.
pub const RUN_LEASE: std::time::Duration = std::time::Duration::from_secs(30);

/// This process's name as a run owner: `HOST:PID:RANDOM`.
pub fn process_owner() -> String {
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWNER
        .get_or_init(|| {
            format!(
                "{}:{}:{:08x}",
                this_host(),
                std::process::id(),
                rand::random::<u32>()
            )
        })
        .clone()
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// Whether `owner` names a process of this host that no longer exists (so its run can be
/// taken over at once). Owners of other hosts, or whose process is alive, are not.
fn holder_gone(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (_, pid, host) = (parts.next(), parts.next(), parts.next());
    let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    host == Some(this_host().as_str())
        && pid != std::process::id()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A ledger as the checkpoint of one copier: its owner name and the drain it copies for.
#[derive(Debug, Clone)]
pub struct RunCheckpoint {
    ledger: Ledger,
    owner: String,
    drain: Option<String>,
}

impl Ledger {
    /// The checkpoint of a copy by `owner` (this process when `None`) for `drain`, if any.
    pub fn run_checkpoint(&self, owner: Option<String>, drain: Option<String>) -> RunCheckpoint {
        RunCheckpoint {
            ledger: self.clone(),
            owner: owner.unwrap_or_else(process_owner),
            drain,
        }
    }

    /// The newest copy run of drain `drain`, if one has begun.
    pub async fn run_of_drain(&self, drain: &str) -> Result<Option<RunRecord>> {
        const SQL: &str = "SELECT id, store_url, volume, snapshot_id, state, attempts, last_error, finished_at, drain_id, owner \
                           FROM copy_runs WHERE drain_id = $1 ORDER BY started_at DESC, id DESC LIMIT 1";
        on_pool!(self, |pool, DB| {
            let row = sqlx::query(SQL)
                .bind(drain)
                .fetch_optional(pool)
                .await
                .map_err(query_error("find run of drain"))?;
            row.as_ref()
                .map(run_record)
                .transpose()
                .map_err(query_error("read run of drain"))
        })
    }

    /// The snapshot drain `drain`'s copy run completed, if it has.
    pub async fn completed_snapshot_of_drain(&self, drain: &str) -> Result<Option<String>> {
        Ok(self
            .run_of_drain(drain)
            .await?
            .filter(|r| r.state == RunState::Completed)
            .map(|r| r.snapshot))
    }

    /// What drain `drain`'s running copy run has recorded so far (`None` when none of its runs
    /// is running). Movers record each file as it is stored, through whichever replica they
    /// reach, so this is a mover's progress as every replica sees it.
    pub async fn copied_so_far(&self, drain: &str) -> Result<Option<CopiedSoFar>> {
        const SQL: &str = "SELECT COUNT(f.size), CAST(COALESCE(SUM(f.size), 0) AS BIGINT), \
                           r.files_total, r.bytes_total \
                           FROM copy_runs r LEFT JOIN copy_files f ON f.run_id = r.id \
                           WHERE r.drain_id = $1 AND r.state = 'running' \
                           GROUP BY r.id, r.started_at, r.files_total, r.bytes_total \
                           ORDER BY r.started_at DESC LIMIT 1";
        type Row = (i64, i64, Option<i64>, Option<i64>);
        let row: Option<Row> = on_pool!(self, |pool, DB| sqlx::query_as(SQL)
            .bind(drain)
            .fetch_optional(pool)
            .await
            .map_err(query_error("read the progress of a drain's run")))?;
        let count = |n: i64| n.max(0) as u64;
        Ok(
            row.map(|(files, bytes, files_total, bytes_total)| CopiedSoFar {
                files: count(files),
                bytes: count(bytes),
                totals: files_total
                    .zip(bytes_total)
                    .map(|(f, b)| (count(f), count(b))),
            }),
        )
    }

    /// Records the size of the volume running run `run` copies, as its copy counted it (files,
    /// bytes); nothing when the run is not running.
    pub async fn set_run_totals(&self, run: &str, files: u64, bytes: u64) -> Result<()> {
        const SQL: &str = "UPDATE copy_runs SET files_total = $2, bytes_total = $3 \
                           WHERE id = $1 AND state = 'running'";
        let (files, bytes) = (
            files.min(i64::MAX as u64) as i64,
            bytes.min(i64::MAX as u64) as i64,
        );
        let run = run.to_owned();
        self.write(move |l| async move {
            on_pool!(l, |pool, DB| sqlx::query(SQL)
                .bind(&run)
                .bind(files)
                .bind(bytes)
                .execute(pool)
                .await
                .map(drop)
                .map_err(query_error("record a run's totals")))
        })
        .await
    }
}

/// The files a running copy run has recorded, and their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CopiedSoFar {
    /// Files recorded.
    pub files: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// Files and bytes in the volume, once its copy has counted them and said so.
    pub totals: Option<(u64, u64)>,
}

fn run_record<R: Row>(r: &R) -> Result<RunRecord, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'d> String: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> Option<String>: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> i64: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
    for<'d> Option<i64>: sqlx::Decode<'d, R::Database> + sqlx::Type<R::Database>,
{
    Ok(RunRecord {
        id: r.try_get("id")?,
        store_url: r.try_get("store_url")?,
        volume: r.try_get("volume")?,
        snapshot: r.try_get("snapshot_id")?,
        state: r
            .try_get::<String, _>("state")?
            .parse()
            .map_err(|e: String| sqlx::Error::Decode(e.into()))?,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        finished_ms: r.try_get("finished_at")?,
        drain: r.try_get("drain_id")?,
        owner: r.try_get("owner")?,
    })
}

fn sort_key(path: &[u8]) -> Vec<u8> {
    path.iter()
        .map(|b| if *b == b'/' { 0 } else { *b })
        .collect()
}

fn path_of(sort_key: &[u8]) -> Vec<u8> {
    sort_key
        .iter()
        .map(|b| if *b == 0 { b'/' } else { *b })
        .collect()
}

impl Ledger {
    /// Every run of `volume`, newest first.
    pub async fn runs(&self, volume: &VolumeId) -> Result<Vec<RunRecord>> {
        const SQL: &str = "SELECT id, store_url, volume, snapshot_id, state, attempts, last_error, finished_at, drain_id, owner \
                           FROM copy_runs WHERE volume = $1 ORDER BY started_at DESC, id DESC";
        on_pool!(self, |pool, DB| {
            let rows = sqlx::query(SQL)
                .bind(volume.to_string())
                .fetch_all(pool)
                .await
                .map_err(query_error("list runs"))?;
            rows.iter()
                .map(run_record)
                .collect::<Result<_, sqlx::Error>>()
                .map_err(query_error("read runs"))
        })
    }

    /// How many parts of unfinished uploads `run` has recorded as stored.
    pub async fn recorded_partial_parts(&self, run: &str) -> Result<u64> {
        const SQL: &str = "SELECT parts FROM copy_uploads WHERE run_id = $1";
        let lists: Vec<String> = on_pool!(self, |pool, DB| sqlx::query_scalar(SQL)
            .bind(run)
            .fetch_all(pool)
            .await
            .map_err(query_error("count parts")))?;
        Ok(lists
            .iter()
            .map(|parts| parts.lines().filter(|l| !l.is_empty()).count() as u64)
            .sum())
    }

    /// How many file rows `run` has recorded.
    pub async fn recorded_files(&self, run: &str) -> Result<i64> {
        const SQL: &str = "SELECT COUNT(*) FROM copy_files WHERE run_id = $1";
        on_pool!(self, |pool, DB| sqlx::query_scalar(SQL)
            .bind(run)
            .fetch_one(pool)
            .await
            .map_err(query_error("count files")))
    }
}

/// The checkpoint's operations with the ledger's own errors (for the API's handlers); the
/// [`Checkpoint`] implementation below maps them into the engine's [`CheckpointError`].
impl RunCheckpoint {
    /// Begins or resumes the volume's run for this owner ([`Error::RunBusy`] if another holds it).
    pub async fn begin(&self, store: &str, volume: &VolumeId, fresh: &SnapshotId) -> Result<Run> {
        let claim = Claim {
            store: store.to_owned(),
            volume: volume.clone(),
            fresh: fresh.clone(),
            owner: self.owner.clone(),
            drain: self.drain.clone(),
        };
        self.ledger
            .write_redoable(move |l| async move { l.begin_tx(&claim).await })
            .await
    }

    pub fn stored_files<'a>(&'a self, run: &'a Run) -> BoxStream<'a, Result<StoredFile>> {
        self.ledger.stored(run)
    }

    pub async fn record(&self, run: &Run, files: &[StoredFile]) -> Result<()> {
        let (run, files, owner) = (run.clone(), files.to_vec(), self.owner.clone());
        self.ledger
            .write_redoable(move |l| async move { l.record_tx(&run, &files, &owner).await })
            .await
    }

    pub async fn renew(&self, run: &Run) -> Result<()> {
        let (run, owner) = (run.clone(), self.owner.clone());
        self.ledger
            .write_redoable(move |l| async move { l.renew_tx(&run, &owner).await })
            .await
    }

    pub async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> Result<()> {
        let (run, summary) = (run.clone(), summary.clone());
        self.ledger
            .write(move |l| async move { l.finish_tx(&run, &summary).await })
            .await
    }

    pub async fn partial_upload(&self, run: &Run, path: &[u8]) -> Result<Option<PartialUpload>> {
        self.ledger.load_partial(run, path).await
    }

    pub async fn record_partial(&self, run: &Run, upload: &PartialUpload) -> Result<()> {
        let (run, upload) = (run.clone(), upload.clone());
        self.ledger
            .write_redoable(move |l| async move { l.save_partial(&run, &upload).await })
            .await
    }

    pub async fn forget_partial(&self, run: &Run, path: &[u8]) -> Result<()> {
        let (run, path) = (run.clone(), path.to_vec());
        self.ledger
            .write_redoable(move |l| async move { l.drop_partial(&run, &path).await })
            .await
    }

    pub async fn interrupted(&self, run: &Run, error: &str) -> Result<()> {
        let (run, error, owner) = (run.clone(), error.to_owned(), self.owner.clone());
        self.ledger
            .write_redoable(move |l| async move { l.interrupted_tx(&run, &error, &owner).await })
            .await
    }
}

/// The ledger itself checkpoints copies made by this process for no drain; these are its
/// operations with the ledger's own errors.
impl Ledger {
    /// Begins or resumes the volume's run for this process.
    pub async fn begin(&self, store: &str, volume: &VolumeId, fresh: &SnapshotId) -> Result<Run> {
        self.run_checkpoint(None, None)
            .begin(store, volume, fresh)
            .await
    }

    pub fn stored_files<'a>(&'a self, run: &'a Run) -> BoxStream<'a, Result<StoredFile>> {
        self.stored(run)
    }

    pub async fn record(&self, run: &Run, files: &[StoredFile]) -> Result<()> {
        self.run_checkpoint(None, None).record(run, files).await
    }

    pub async fn renew(&self, run: &Run) -> Result<()> {
        self.run_checkpoint(None, None).renew(run).await
    }

    pub async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> Result<()> {
        self.run_checkpoint(None, None).finish(run, summary).await
    }

    pub async fn partial_upload(&self, run: &Run, path: &[u8]) -> Result<Option<PartialUpload>> {
        self.load_partial(run, path).await
    }

    pub async fn record_partial(&self, run: &Run, upload: &PartialUpload) -> Result<()> {
        self.run_checkpoint(None, None)
            .record_partial(run, upload)
            .await
    }

    pub async fn forget_partial(&self, run: &Run, path: &[u8]) -> Result<()> {
        self.run_checkpoint(None, None)
            .forget_partial(run, path)
            .await
    }

    pub async fn interrupted(&self, run: &Run, error: &str) -> Result<()> {
        self.run_checkpoint(None, None)
            .interrupted(run, error)
            .await
    }
}

macro_rules! checkpoint_via {
    ($ty:ty) => {
        #[async_trait::async_trait]
        impl Checkpoint for $ty {
            async fn begin(
                &self,
                store: &str,
                volume: &VolumeId,
                fresh: &SnapshotId,
            ) -> CheckpointResult<Run> {
                Ok(<$ty>::begin(self, store, volume, fresh).await?)
            }

            fn stored_files<'a>(
                &'a self,
                run: &'a Run,
            ) -> BoxStream<'a, CheckpointResult<StoredFile>> {
                <$ty>::stored_files(self, run)
                    .map_err(CheckpointError::from)
                    .boxed()
            }

            async fn record(&self, run: &Run, files: &[StoredFile]) -> CheckpointResult<()> {
                Ok(<$ty>::record(self, run, files).await?)
            }

            async fn renew(&self, run: &Run) -> CheckpointResult<()> {
                Ok(<$ty>::renew(self, run).await?)
            }

            async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> CheckpointResult<()> {
                Ok(<$ty>::finish(self, run, summary).await?)
            }

            async fn interrupted(&self, run: &Run, error: &str) -> CheckpointResult<()> {
                Ok(<$ty>::interrupted(self, run, error).await?)
            }

            async fn partial_upload(
                &self,
                run: &Run,
                path: &[u8],
            ) -> CheckpointResult<Option<PartialUpload>> {
                Ok(<$ty>::partial_upload(self, run, path).await?)
            }

            async fn record_partial(
                &self,
                run: &Run,
                upload: &PartialUpload,
            ) -> CheckpointResult<()> {
                Ok(<$ty>::record_partial(self, run, upload).await?)
            }

            async fn forget_partial(&self, run: &Run, path: &[u8]) -> CheckpointResult<()> {
                Ok(<$ty>::forget_partial(self, run, path).await?)
            }
        }
    };
}

checkpoint_via!(RunCheckpoint);
checkpoint_via!(Ledger);

/// What a copy asks for when it begins.
struct Claim {
    store: String,
    volume: VolumeId,
    fresh: SnapshotId,
    owner: String,
    drain: Option<String>,
}

impl Ledger {
    fn stored<'a>(&'a self, run: &'a Run) -> BoxStream<'a, Result<StoredFile>> {
        const SQL: &str = "SELECT sort_key, size, mtime_ns, ctime_ns, ino, blake3, object, \
                           compression, stored_size FROM copy_files WHERE run_id = $1 ORDER BY sort_key";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(run.id.as_str())
            .fetch(pool)
            .map_err(query_error("read progress"))
            .and_then(|row| async move {
                let key: Vec<u8> = row
                    .try_get("sort_key")
                    .map_err(query_error("read progress"))?;
                let get = |col: &str| {
                    row.try_get::<i64, _>(col)
                        .map_err(query_error("read progress"))
                };
                Ok(StoredFile {
                    path: path_of(&key),
                    size: get("size")? as u64,
                    mtime_ns: get("mtime_ns")?,
                    ctime_ns: get("ctime_ns")?,
                    ino: get("ino")? as u64,
                    content: Content {
                        blake3: row
                            .try_get("blake3")
                            .map_err(query_error("read progress"))?,
                        object: row
                            .try_get("object")
                            .map_err(query_error("read progress"))?,
                        compressed: compressed_of(
                            row.try_get("compression")
                                .map_err(query_error("read progress"))?,
                            row.try_get("stored_size")
                                .map_err(query_error("read progress"))?,
                        )?,
                    },
                })
            })
            .boxed())
    }
}

/// The compression a `copy_files` row records: both columns or neither (a raw object).
fn compressed_of(codec: Option<String>, stored_size: Option<i64>) -> Result<Option<Compressed>> {
    match (codec, stored_size) {
        (None, None) => Ok(None),
        (Some(name), Some(size)) => match Codec::from_name(&name) {
            Some(codec) => Ok(Some(Compressed {
                codec,
                stored_size: size as u64,
            })),
            None => Err(undecodable(format!(
                "copy_files names an unknown compression {name:?}"
            ))),
        },
        _ => Err(undecodable(
            "copy_files has a compression without a stored size, or the reverse".into(),
        )),
    }
}

fn undecodable(reason: String) -> Error {
    Error::Query {
        op: "read progress",
        source: sqlx::Error::Decode(reason.into()),
    }
}

/// Stored parts as the ledger keeps them: a line per part, its chaining value in hex, a space,
/// and the store's part id.
fn encode_parts(parts: &[UploadedPart]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {}", part_hash::to_hex(&p.chaining_value), p.id))
        .collect::<Vec<_>>()
        .join("\n")
}

fn decode_parts(text: &str) -> Option<Vec<UploadedPart>> {
    text.lines()
        .map(|line| {
            let (hex, id) = line.split_once(' ')?;
            Some(UploadedPart {
                id: id.to_owned(),
                chaining_value: part_hash::from_hex(hex)?,
            })
        })
        .collect()
}

/// Unfinished multipart uploads of large files.
impl Ledger {
    async fn load_partial(&self, run: &Run, path: &[u8]) -> Result<Option<PartialUpload>> {
        const SQL: &str = "SELECT upload_id, part_size, size, mtime_ns, ctime_ns, ino, parts, \
                           compression FROM copy_uploads WHERE run_id = $1 AND sort_key = $2";
        on_pool!(self, |pool, DB| {
            let row = sqlx::query(SQL)
                .bind(run.id.as_str())
                .bind(sort_key(path))
                .fetch_optional(pool)
                .await
                .map_err(query_error("read upload"))?;
            let Some(row) = row else { return Ok(None) };
            let get = |col: &str| {
                row.try_get::<i64, _>(col)
                    .map_err(query_error("read upload"))
            };
            let parts: String = row.try_get("parts").map_err(query_error("read upload"))?;
            let Some(parts) = decode_parts(&parts) else {
                tracing::warn!(run = %run.id, "unreadable record of an upload in progress; starting it again");
                return Ok(None);
            };
            let compression: Option<String> = row
                .try_get("compression")
                .map_err(query_error("read upload"))?;
            let Ok(compression) = compression.as_deref().unwrap_or("off").parse() else {
                tracing::warn!(run = %run.id, compression = ?compression, "record of an upload in progress with an unknown compression; starting it again");
                return Ok(None);
            };
            Ok(Some(PartialUpload {
                path: path.to_vec(),
                upload_id: row
                    .try_get("upload_id")
                    .map_err(query_error("read upload"))?,
                part_size: get("part_size")? as u64,
                size: get("size")? as u64,
                mtime_ns: get("mtime_ns")?,
                ctime_ns: get("ctime_ns")?,
                ino: get("ino")? as u64,
                parts,
                compression,
            }))
        })
    }

    async fn save_partial(&self, run: &Run, u: &PartialUpload) -> Result<()> {
        on_pool!(self, |pool, DB| save_partial_query!(run, u)
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("record upload")))
    }

    /// Records relayed parts (each of its upload, by the upload's id) and then, if given, an
    /// unfinished upload's progress, in one transaction: all or none.
    pub(super) async fn save_parts_and_partial(
        &self,
        parts: &[(String, RelayPart)],
        partial: Option<&(Run, PartialUpload)>,
    ) -> Result<()> {
        // One row per part (the last report of a part wins, as in the store): a row that
        // one statement would change twice is an error on PostgreSQL.
        let mut last = std::collections::HashMap::new();
        for (i, (upload, part)) in parts.iter().enumerate() {
            last.insert((upload.as_str(), part.idx), i);
        }
        let rows: Vec<&(String, RelayPart)> = parts
            .iter()
            .enumerate()
            .filter(|(i, (upload, part))| last.get(&(upload.as_str(), part.idx)) == Some(i))
            .map(|(_, row)| row)
            .collect();
        on_pool!(self, |pool, DB| {
            let mut tx = pool.begin().await.map_err(query_error("record parts"))?;
            for chunk in rows.chunks(PARTS_PER_STATEMENT) {
                let mut insert = sqlx::QueryBuilder::<DB>::new(
                    "INSERT INTO relay_parts (upload_id, idx, part_id, len, cv, alone) ",
                );
                insert.push_values(chunk, |mut row, (upload, part)| {
                    row.push_bind(upload.as_str())
                        .push_bind(part.idx as i64)
                        .push_bind(part.part_id.as_str())
                        .push_bind(part.len as i64)
                        .push_bind(part.cv.as_deref())
                        .push_bind(part.alone.as_deref());
                });
                insert.push(
                    " ON CONFLICT (upload_id, idx) DO UPDATE SET part_id = excluded.part_id, \
                     len = excluded.len, cv = excluded.cv, alone = excluded.alone",
                );
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("record parts"))?;
            }
            if let Some((run, upload)) = partial {
                save_partial_query!(run, upload)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("record upload"))?;
            }
            tx.commit().await.map_err(query_error("record parts"))
        })
    }

    async fn drop_partial(&self, run: &Run, path: &[u8]) -> Result<()> {
        const SQL: &str = "DELETE FROM copy_uploads WHERE run_id = $1 AND sort_key = $2";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(run.id.as_str())
            .bind(sort_key(path))
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("forget upload")))
    }
}

/// Transactions run through [`Ledger::write`].
impl Ledger {
    async fn begin_tx(&self, claim: &Claim) -> Result<Run> {
        const FIND: &str = "SELECT id, snapshot_id, owner, lease_until FROM copy_runs \
                            WHERE store_url = $1 AND volume = $2 AND state = 'running'";
        const FIND_LOCKED: &str = "SELECT id, snapshot_id, owner, lease_until FROM copy_runs \
                            WHERE store_url = $1 AND volume = $2 AND state = 'running' FOR UPDATE";
        const TAKE: &str = "UPDATE copy_runs SET attempts = attempts + 1, updated_at = $2, owner = $3, \
                            lease_until = $4, drain_id = COALESCE($5, drain_id) WHERE id = $1";
        const START: &str = "INSERT INTO copy_runs (id, store_url, volume, snapshot_id, state, started_at, updated_at, owner, lease_until, drain_id) \
                             VALUES ($1, $2, $3, $4, 'running', $5, $5, $6, $7, $8)";
        let now = now_ms();
        let lease_until = now + RUN_LEASE.as_millis() as i64;
        let volume = claim.volume.to_string();
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("begin run"))?;
            let find = if <DB as super::Dialect>::LOCKS_ROWS {
                FIND_LOCKED
            } else {
                FIND
            };
            let found: Option<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(find)
                .bind(&claim.store)
                .bind(&volume)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_error("find run"))?;
            let run = match found {
                Some((id, snapshot, holder, until)) => {
                    if let Some(holder) = holder.filter(|h| *h != claim.owner)
                        && until.is_some_and(|t| t > now)
                        && !holder_gone(&holder)
                    {
                        return Err(Error::RunBusy {
                            volume,
                            store: claim.store.clone(),
                            run: id,
                            holder,
                            lease_until: rfc3339(until.unwrap_or_default()),
                        });
                    }
                    sqlx::query(TAKE)
                        .bind(&id)
                        .bind(now)
                        .bind(&claim.owner)
                        .bind(lease_until)
                        .bind(claim.drain.as_deref())
                        .execute(&mut *tx)
                        .await
                        .map_err(query_error("resume run"))?;
                    let snapshot = snapshot.parse().map_err(|e: String| Error::Query {
                        op: "resume run",
                        source: sqlx::Error::Decode(e.into()),
                    })?;
                    Run {
                        id,
                        snapshot,
                        resumed: true,
                    }
                }
                None => {
                    let id = format!("run-{}", claim.fresh);
                    sqlx::query(START)
                        .bind(&id)
                        .bind(&claim.store)
                        .bind(&volume)
                        .bind(claim.fresh.as_str())
                        .bind(now)
                        .bind(&claim.owner)
                        .bind(lease_until)
                        .bind(claim.drain.as_deref())
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| started_elsewhere(e, claim, &id))?;
                    Run {
                        id,
                        snapshot: claim.fresh.clone(),
                        resumed: false,
                    }
                }
            };
            tx.commit().await.map_err(query_error("commit run"))?;
            Ok(run)
        })
    }

    async fn renew_tx(&self, run: &Run, owner: &str) -> Result<()> {
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("renew run"))?;
            renew_in!(tx, run, owner);
            tx.commit().await.map_err(query_error("renew run"))
        })
    }

    async fn record_tx(&self, run: &Run, files: &[StoredFile], owner: &str) -> Result<()> {
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("record progress"))?;
            for chunk in files.chunks(1000) {
                let mut insert = sqlx::QueryBuilder::<DB>::new(
                    "INSERT INTO copy_files (run_id, sort_key, size, mtime_ns, ctime_ns, ino, blake3, object, compression, stored_size) ",
                );
                insert.push_values(chunk, |mut row, f| {
                    row.push_bind(run.id.as_str())
                        .push_bind(sort_key(&f.path))
                        .push_bind(f.size as i64)
                        .push_bind(f.mtime_ns)
                        .push_bind(f.ctime_ns)
                        .push_bind(f.ino as i64)
                        .push_bind(f.content.blake3.as_str())
                        .push_bind(f.content.object.as_str())
                        .push_bind(f.content.compressed.map(|c| c.codec.name()))
                        .push_bind(f.content.compressed.map(|c| c.stored_size as i64));
                });
                insert.push(
                    " ON CONFLICT (run_id, sort_key) DO UPDATE SET size = excluded.size, \
                     mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, ino = excluded.ino, \
                     blake3 = excluded.blake3, object = excluded.object, \
                     compression = excluded.compression, stored_size = excluded.stored_size",
                );
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("record progress"))?;
            }
            renew_in!(tx, run, owner);
            tx.commit().await.map_err(query_error("record progress"))
        })
    }

    async fn finish_tx(&self, run: &Run, summary: &SnapshotSummary) -> Result<()> {
        const DONE: &str = "UPDATE copy_runs SET state = 'completed', finished_at = $2, updated_at = $2, \
                            files = $3, bytes = $4, uploaded_files = $5, uploaded_bytes = $6, last_error = NULL, \
                            owner = NULL, lease_until = NULL WHERE id = $1";
        const FORGET: &str = "DELETE FROM copy_files WHERE run_id = $1";
        const FORGET_UPLOADS: &str = "DELETE FROM copy_uploads WHERE run_id = $1";
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("finish run"))?;
            sqlx::query(DONE)
                .bind(run.id.as_str())
                .bind(now_ms())
                .bind(summary.files as i64)
                .bind(summary.bytes as i64)
                .bind(summary.uploaded_files as i64)
                .bind(summary.uploaded_bytes as i64)
                .execute(&mut *tx)
                .await
                .map_err(query_error("finish run"))?;
            for sql in [FORGET, FORGET_UPLOADS] {
                sqlx::query(sql)
                    .bind(run.id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("finish run"))?;
            }
            tx.commit().await.map_err(query_error("finish run"))
        })
    }

    /// Notes why an attempt stopped, and releases the run if this copy holds it, so the next
    /// copy resumes it at once.
    async fn interrupted_tx(&self, run: &Run, error: &str, owner: &str) -> Result<()> {
        const SQL: &str = "UPDATE copy_runs SET last_error = $2, updated_at = $3, \
                           lease_until = CASE WHEN owner = $4 THEN NULL ELSE lease_until END, \
                           owner = CASE WHEN owner = $4 THEN NULL ELSE owner END WHERE id = $1";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(run.id.as_str())
            .bind(error)
            .bind(now_ms())
            .bind(owner)
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("note error")))
    }
}

/// A run that another copy inserted between our look and our insert (PostgreSQL: both saw
/// none): busy, not a failure of the ledger.
fn started_elsewhere(e: sqlx::Error, claim: &Claim, id: &str) -> Error {
    let unique = matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation());
    if unique {
        return Error::RunBusy {
            volume: claim.volume.to_string(),
            store: claim.store.clone(),
            run: id.to_owned(),
            holder: "another copy that began at the same moment".into(),
            lease_until: rfc3339(now_ms() + RUN_LEASE.as_millis() as i64),
        };
    }
    query_error("start run")(e)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339())
        .unwrap_or_else(|| ms.to_string())
}
