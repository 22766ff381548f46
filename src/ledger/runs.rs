//! Copy runs and per-file progress: the ledger side of [`crate::snapshot::Checkpoint`].
//!
//! A run is `running` until its snapshot is complete; its `copy_files` rows say which files it
//! has durably stored, keyed so that byte order is manifest path order (the copy merges them
//! as a stream). Completing a run deletes its file rows: from then on the manifest is the
//! record.

use super::{Error, Ledger, Result, now_ms, on_pool, query_error};
use crate::snapshot::manifest::Content;
use crate::snapshot::{
    Checkpoint, PartialUpload, Run, SnapshotId, SnapshotSummary, StoredFile, UploadedPart,
    part_hash,
};
use crate::volume::VolumeId;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use sqlx::Row;

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
    /// `running` or `completed`.
    pub state: String,
    /// Attempts so far (1 + resumes).
    pub attempts: i64,
    /// Why the last attempt stopped, if it did.
    pub last_error: Option<String>,
    /// When the run completed (ms since the epoch).
    pub finished_ms: Option<i64>,
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
        const SQL: &str = "SELECT id, store_url, volume, snapshot_id, state, attempts, last_error, finished_at \
                           FROM copy_runs WHERE volume = $1 ORDER BY started_at DESC, id DESC";
        on_pool!(self, |pool, DB| {
            let rows = sqlx::query(SQL)
                .bind(volume.to_string())
                .fetch_all(pool)
                .await
                .map_err(query_error("list runs"))?;
            rows.iter()
                .map(|r| {
                    Ok(RunRecord {
                        id: r.try_get("id")?,
                        store_url: r.try_get("store_url")?,
                        volume: r.try_get("volume")?,
                        snapshot: r.try_get("snapshot_id")?,
                        state: r.try_get("state")?,
                        attempts: r.try_get("attempts")?,
                        last_error: r.try_get("last_error")?,
                        finished_ms: r.try_get("finished_at")?,
                    })
                })
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

#[async_trait::async_trait]
impl Checkpoint for Ledger {
    async fn begin(&self, store: &str, volume: &VolumeId, fresh: &SnapshotId) -> Result<Run> {
        let (store, volume, fresh) = (store.to_owned(), volume.clone(), fresh.clone());
        self.write_redoable(move |l| async move { l.begin_tx(&store, &volume, &fresh).await })
            .await
    }

    fn stored_files<'a>(&'a self, run: &'a Run) -> BoxStream<'a, Result<StoredFile>> {
        const SQL: &str = "SELECT sort_key, size, mtime_ns, ctime_ns, ino, blake3, object \
                           FROM copy_files WHERE run_id = $1 ORDER BY sort_key";
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
                    },
                })
            })
            .boxed())
    }

    async fn record(&self, run: &Run, files: &[StoredFile]) -> Result<()> {
        let (run, files) = (run.clone(), files.to_vec());
        self.write_redoable(move |l| async move { l.record_tx(&run, &files).await })
            .await
    }

    async fn finish(&self, run: &Run, summary: &SnapshotSummary) -> Result<()> {
        let (run, summary) = (run.clone(), summary.clone());
        self.write(move |l| async move { l.finish_tx(&run, &summary).await })
            .await
    }

    async fn partial_upload(&self, run: &Run, path: &[u8]) -> Result<Option<PartialUpload>> {
        self.load_partial(run, path).await
    }

    async fn record_partial(&self, run: &Run, upload: &PartialUpload) -> Result<()> {
        let (run, upload) = (run.clone(), upload.clone());
        self.write_redoable(move |l| async move { l.save_partial(&run, &upload).await })
            .await
    }

    async fn forget_partial(&self, run: &Run, path: &[u8]) -> Result<()> {
        let (run, path) = (run.clone(), path.to_vec());
        self.write_redoable(move |l| async move { l.drop_partial(&run, &path).await })
            .await
    }

    async fn interrupted(&self, run: &Run, error: &str) -> Result<()> {
        let (run, error) = (run.clone(), error.to_owned());
        self.write_redoable(move |l| async move { l.interrupted_tx(&run, &error).await })
            .await
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
        const SQL: &str = "SELECT upload_id, part_size, size, mtime_ns, ctime_ns, ino, parts \
                           FROM copy_uploads WHERE run_id = $1 AND sort_key = $2";
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
            }))
        })
    }

    async fn save_partial(&self, run: &Run, u: &PartialUpload) -> Result<()> {
        const SQL: &str = "INSERT INTO copy_uploads (run_id, sort_key, upload_id, part_size, size, mtime_ns, ctime_ns, ino, parts) \
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                           ON CONFLICT (run_id, sort_key) DO UPDATE SET upload_id = excluded.upload_id, \
                           part_size = excluded.part_size, size = excluded.size, mtime_ns = excluded.mtime_ns, \
                           ctime_ns = excluded.ctime_ns, ino = excluded.ino, parts = excluded.parts";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(run.id.as_str())
            .bind(sort_key(&u.path))
            .bind(u.upload_id.as_str())
            .bind(u.part_size as i64)
            .bind(u.size as i64)
            .bind(u.mtime_ns)
            .bind(u.ctime_ns)
            .bind(u.ino as i64)
            .bind(encode_parts(&u.parts))
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("record upload")))
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
    async fn begin_tx(&self, store: &str, volume: &VolumeId, fresh: &SnapshotId) -> Result<Run> {
        const FIND: &str = "SELECT id, snapshot_id FROM copy_runs \
                            WHERE store_url = $1 AND volume = $2 AND state = 'running'";
        const RESUME: &str =
            "UPDATE copy_runs SET attempts = attempts + 1, updated_at = $2 WHERE id = $1";
        const START: &str = "INSERT INTO copy_runs (id, store_url, volume, snapshot_id, state, started_at, updated_at) \
                             VALUES ($1, $2, $3, $4, 'running', $5, $5)";
        let now = now_ms();
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("begin run"))?;
            let found: Option<(String, String)> = sqlx::query_as(FIND)
                .bind(store)
                .bind(volume.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_error("find run"))?;
            let run = match found {
                Some((id, snapshot)) => {
                    sqlx::query(RESUME)
                        .bind(&id)
                        .bind(now)
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
                    let id = format!("run-{}", fresh);
                    sqlx::query(START)
                        .bind(&id)
                        .bind(store)
                        .bind(volume.to_string())
                        .bind(fresh.as_str())
                        .bind(now)
                        .execute(&mut *tx)
                        .await
                        .map_err(query_error("start run"))?;
                    Run {
                        id,
                        snapshot: fresh.clone(),
                        resumed: false,
                    }
                }
            };
            tx.commit().await.map_err(query_error("commit run"))?;
            Ok(run)
        })
    }

    async fn record_tx(&self, run: &Run, files: &[StoredFile]) -> Result<()> {
        on_pool!(self, |pool, DB| {
            let mut tx = pool
                .begin_with(<DB as super::Dialect>::BEGIN_WRITE)
                .await
                .map_err(query_error("record progress"))?;
            for chunk in files.chunks(1000) {
                let mut insert = sqlx::QueryBuilder::<DB>::new(
                    "INSERT INTO copy_files (run_id, sort_key, size, mtime_ns, ctime_ns, ino, blake3, object) ",
                );
                insert.push_values(chunk, |mut row, f| {
                    row.push_bind(run.id.as_str())
                        .push_bind(sort_key(&f.path))
                        .push_bind(f.size as i64)
                        .push_bind(f.mtime_ns)
                        .push_bind(f.ctime_ns)
                        .push_bind(f.ino as i64)
                        .push_bind(f.content.blake3.as_str())
                        .push_bind(f.content.object.as_str());
                });
                insert.push(
                    " ON CONFLICT (run_id, sort_key) DO UPDATE SET size = excluded.size, \
                     mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, ino = excluded.ino, \
                     blake3 = excluded.blake3, object = excluded.object",
                );
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("record progress"))?;
            }
            sqlx::query("UPDATE copy_runs SET updated_at = $2 WHERE id = $1")
                .bind(run.id.as_str())
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(query_error("record progress"))?;
            tx.commit().await.map_err(query_error("record progress"))
        })
    }

    async fn finish_tx(&self, run: &Run, summary: &SnapshotSummary) -> Result<()> {
        const DONE: &str = "UPDATE copy_runs SET state = 'completed', finished_at = $2, updated_at = $2, \
                            files = $3, bytes = $4, uploaded_files = $5, uploaded_bytes = $6, last_error = NULL \
                            WHERE id = $1";
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

    async fn interrupted_tx(&self, run: &Run, error: &str) -> Result<()> {
        const SQL: &str = "UPDATE copy_runs SET last_error = $2, updated_at = $3 WHERE id = $1";
        on_pool!(self, |pool, DB| sqlx::query(SQL)
            .bind(run.id.as_str())
            .bind(error)
            .bind(now_ms())
            .execute(pool)
            .await
            .map(drop)
            .map_err(query_error("note error")))
    }
}
