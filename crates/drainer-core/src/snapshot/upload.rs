//! Reading one source file consistently and storing its bytes as one object.
//!
//! A file is read between two `fstat`s of the open handle; if size, mtime or ctime moved, the
//! read is torn and is done again (a bounded number of times) — torn content is never stored.
//! Small files are one request; large ones are uploaded in parts, at most two parts of a file
//! in flight, and every buffer is paid for from a shared memory budget so the process stays
//! bounded whatever the file sizes.
//!
//! A file with holes (see `sparse`) is stored as the bytes of its data extents only, read with
//! `pread` and hashed with its holes as zeros; it is one streamed upload (not resumable part
//! by part), which costs only its data. Whether a file may have holes comes from the block
//! count of the `stat` the copy makes anyway, so dense files cost no extra system call.

use super::checkpoint::{Checkpoint, PartialUpload, Run, UploadedPart};
use super::compress::{self, Codec, Compressed, Compression};
use packed::Packed;

mod packed;
use super::manifest::{Content, Entry};
use super::progress::Progress;
use super::sparse::{self, Extent};
use super::{Error, Result, part_hash};
use crate::store::Store;
use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use object_store::PutPayload;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use std::fs::File;
use std::io::{Read, Seek};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many times a file that changes while it is read is read again.
const READ_ATTEMPTS: u32 = 3;
/// Unit of the memory budget.
const BUDGET_UNIT: u64 = 64 * 1024;
/// Parts stored between two records of a resumable upload's progress.
const PARTS_PER_RECORD: usize = 4;
/// Parts of one file uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Shared settings and the memory budget of one copy.
#[derive(Debug)]
pub(crate) struct Uploader {
    pub store: Store,
    pub part_size: u64,
    budget: Arc<Semaphore>,
    budget_units: u32,
    progress: Arc<Progress>,
    buffers: Arc<BufferPool>,
    /// Whether objects stored in one request are compressed where it pays.
    pub compression: Compression,
}

/// Where a large file's upload records its parts, so that a rerun continues it.
#[derive(Clone, Copy)]
pub(crate) struct Resume<'a> {
    pub checkpoint: &'a dyn Checkpoint,
    pub run: &'a Run,
}

/// What reading a file found: its bytes' hash and the metadata they belong to.
struct Consistent {
    hash: blake3::Hasher,
    stat: Stat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

impl Stat {
    fn of(file: &File, path: &std::path::Path) -> Result<Self> {
        let m = file.metadata().map_err(|e| Error::read(path, e))?;
        Ok(Self {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        })
    }

    fn apply(self, entry: &mut Entry) {
        entry.size = self.size;
        entry.mtime_ns = self.mtime_ns;
        entry.ctime_ns = self.ctime_ns;
        entry.ino = self.ino;
    }
}

impl Uploader {
    pub fn new(store: Store, part_size: u64, buffer_bytes: u64, progress: Arc<Progress>) -> Self {
        let budget_units = (buffer_bytes / BUDGET_UNIT).max(1) as u32;
        Self {
            store,
            part_size,
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
            progress,
            buffers: Arc::default(),
            compression: Compression::Off,
        }
    }

    fn sent(&self, bytes: u64) {
        self.progress
            .bytes_uploaded
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits until `bytes` of data (with their sealed copies, for a sealed store) fit in the
    /// memory budget; the permit gives them back.
    async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = (bytes * self.store.buffer_copies())
            .div_ceil(BUDGET_UNIT)
            .clamp(1, self.budget_units as u64) as u32;
        Arc::clone(&self.budget)
            .acquire_many_owned(units)
            .await
            .expect("budget semaphore is never closed")
    }

    /// Reads `path` and stores it at `key`; returns `entry` with its content and the metadata
    /// of the bytes actually stored.
    pub(crate) async fn store_file(
        &self,
        path: PathBuf,
        mut entry: Entry,
        key: Key,
        object: String,
        resume: Resume<'_>,
    ) -> Result<Entry> {
        let scanned = (entry.size, entry.blocks);
        let stored = self
            .store_any(&path, &key, resume, &entry.path, scanned)
            .await?;
        stored.stat.apply(&mut entry);
        entry.extents = stored.extents;
        entry.content = Some(Content {
            blake3: stored.hash.to_hex().to_string(),
            object,
            compressed: stored.compressed,
        });
        Ok(entry)
    }

    /// Hashes `path` without storing it (for `--check-hash`).
    pub(crate) async fn hash_file(
        &self,
        path: PathBuf,
        mut entry: Entry,
    ) -> Result<(Entry, String)> {
        let task_path = path.clone();
        let _permit = self.reserve(self.part_size).await;
        let chunk = self.part_size as usize;
        let consistent = tokio::task::spawn_blocking(move || {
            read_consistent(&path, |file, hasher| {
                let mut buf = vec![0; chunk];
                loop {
                    let n = read_full(file, &mut buf).map_err(|e| Error::read(&path, e))?;
                    if n == 0 {
                        return Ok(());
                    }
                    hasher.update(&buf[..n]);
                }
            })
        })
        .await
        .map_err(|e| task_failed(&task_path, e))??;
        consistent.stat.apply(&mut entry);
        Ok((entry, consistent.hash.finalize().to_hex().to_string()))
    }

    /// Stores a file in one request or in parts, whichever its size is when it is opened: a
    /// file that grows past one part, shrinks below it, or changes while it is read is read
    /// again, a bounded number of times, and then fails with [`Error::Changed`] (retryable).
    async fn store_any(
        &self,
        path: &std::path::Path,
        key: &Key,
        resume: Resume<'_>,
        rel: &[u8],
        scanned: (u64, u64),
    ) -> Result<Stored> {
        for attempt in 0..READ_ATTEMPTS {
            // The walk's size and block count decide the first attempt (no extra stat); a
            // file that changed is looked at again.
            let (size, blocks) = if attempt == 0 {
                scanned
            } else {
                let meta = std::fs::symlink_metadata(path).map_err(|e| Error::read(path, e))?;
                (meta.len(), meta.blocks())
            };
            // Allocated blocks that cover less than the size: the file may have holes.
            if blocks.saturating_mul(512) < size
                && let Some(sparse) = self.sparse_extents(path).await?
            {
                if let Some((hash, stat)) = self.try_store_sparse(path, key, sparse.clone()).await?
                {
                    let extents = Some(sparse.1);
                    return Ok(Stored::raw(hash, stat, extents));
                }
                tracing::info!(path = %path.display(), "file changed while it was uploaded; reading it again");
                continue;
            }
            let attempt = if size <= self.part_size {
                self.try_store_small(path, key, size).await?
            } else {
                let compression = self.large_compression(path, resume, rel).await?;
                self.try_store_large(path, key, resume, rel, compression)
                    .await?
            };
            if let Some(stored) = attempt {
                return Ok(stored);
            }
            tracing::info!(path = %path.display(), "file changed while it was uploaded; reading it again");
        }
        Err(Error::Changed {
            path: path.to_owned(),
            attempts: READ_ATTEMPTS,
        })
    }

    /// Stores a file of at most one part in one request, compressed when that is on and
    /// pays; `None` when it grew past one part while it was read. With compression on, the
    /// compressed copy is paid for from the budget too.
    async fn try_store_small(
        &self,
        path: &std::path::Path,
        key: &Key,
        size: u64,
    ) -> Result<Option<Stored>> {
        let compression = self.compression;
        let copies = if compression == Compression::Off {
            1
        } else {
            2
        };
        let _permit = self.reserve(size.saturating_mul(copies)).await;
        let limit = self.part_size;
        let owned = path.to_owned();
        let (consistent, bytes, packed) = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            let consistent = read_consistent(&owned, |file, hasher| {
                data.clear();
                file.take(limit + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| Error::read(&owned, e))?;
                hasher.update(&data);
                Ok(())
            })?;
            let packed = if data.len() as u64 <= limit {
                compress::shrink(&data, compression)
            } else {
                None
            };
            Ok::<_, Error>((consistent, data, packed))
        })
        .await
        .map_err(|e| task_failed(path, e))??;
        if bytes.len() as u64 > limit || consistent.stat.size > limit {
            return Ok(None);
        }
        let raw_len = bytes.len() as u64;
        let (payload, compressed) = match packed {
            Some(packed) => {
                drop(bytes);
                let compressed = Compressed {
                    codec: Codec::Zstd,
                    stored_size: packed.len() as u64,
                };
                tracing::debug!(key = %key, raw = raw_len, stored = packed.len(), "compressed");
                (packed, Some(compressed))
            }
            None => (bytes, None),
        };
        let sent = payload.len() as u64;
        self.store.put_bytes(key, PutPayload::from(payload)).await?;
        self.sent(sent);
        let hash = consistent.hash.finalize();
        Ok(Some(Stored {
            hash,
            stat: consistent.stat,
            extents: None,
            compressed,
        }))
    }
}

impl Uploader {
    /// One attempt at a multipart upload. An upload that the store no longer has (its parts
    /// vanished: the store was emptied, the upload expired or was aborted) is forgotten, so
    /// the next attempt starts a new one instead of failing on it forever; so is a continued
    /// upload that the store refuses, whatever its error, while it answers (an earlier copy
    /// completed it and died before it forgot its record: see [`Store::upload_refused`]). A
    /// new upload that fails is an error: the file is started again at most once per attempt.
    async fn try_store_large(
        &self,
        path: &std::path::Path,
        key: &Key,
        resume: Resume<'_>,
        rel: &[u8],
        compression: Compression,
    ) -> Result<Option<Stored>> {
        let parts = self.store.multipart();
        let attempt = match compression {
            Compression::Off => self
                .try_store_resumable(parts, path, key, resume, rel)
                .await
                .map(|stored| stored.map(|(hash, stat)| Stored::raw(hash, stat, None))),
            Compression::Zstd { level } => {
                let at = Packed { key, resume, rel };
                self.try_store_packed(parts, path, at, level).await
            }
        };
        match attempt {
            Err(Failed::Upload(upload, e)) if e.is_not_found() => {
                tracing::warn!(path = %path.display(), key = %key, upload = %upload, error = %e, "the store no longer has this upload; starting it again");
                resume.checkpoint.forget_partial(resume.run, rel).await?;
                Ok(None)
            }
            Err(Failed::Continued(upload, e)) => {
                if !self.store.upload_refused(key, &e).await {
                    return Err(Error::Store(e));
                }
                tracing::warn!(path = %path.display(), key = %key, upload = %upload, error = %e, "the store refuses the interrupted upload (completed or unknown); starting it again");
                let abort = parts.abort_multipart(key, &upload);
                let _ = self.store.call("abort multipart upload", key, abort).await;
                resume.checkpoint.forget_partial(resume.run, rel).await?;
                Ok(None)
            }
            Err(Failed::Upload(_, e)) => Err(Error::Store(e)),
            Err(Failed::Other(e)) => Err(e),
            Ok(stored) => Ok(stored),
        }
    }

    /// One attempt at an upload that records each stored part, continuing the upload that an
    /// earlier, interrupted run left if the file is unchanged since; `None` when the file
    /// changed during the attempt.
    async fn try_store_resumable(
        &self,
        parts_api: &Arc<dyn MultipartStore>,
        path: &std::path::Path,
        key: &Key,
        resume: Resume<'_>,
        rel: &[u8],
    ) -> Result<Option<(blake3::Hash, Stat)>, Failed> {
        let file = File::open(path).map_err(|e| Error::read(path, e))?;
        let before = Stat::of(&file, path)?;
        let (mut upload, continued) = self
            .start_or_continue(
                parts_api.as_ref(),
                key,
                resume,
                rel,
                (before, Compression::Off),
            )
            .await?;
        let id = upload.upload_id.clone();
        let failed = |e: crate::store::Error| {
            if continued {
                Failed::Continued(id.clone(), e)
            } else {
                Failed::Upload(id.clone(), e)
            }
        };
        // Parts already stored are skipped: the file's hash is made from their chaining values.
        let mut offset = upload.parts.len() as u64 * self.part_size;
        let mut file = file;
        file.seek(std::io::SeekFrom::Start(offset))
            .map_err(|e| Error::read(path, e))?;
        let mut whole = None;
        let mut inflight: FuturesOrdered<tokio::task::JoinHandle<Result<(UploadedPart, u64)>>> =
            FuturesOrdered::new();
        loop {
            while inflight.len() >= PARTS_IN_FLIGHT {
                if let Some(stored) = inflight.next().await {
                    self.part_stored(&mut upload, stored, resume, path, &failed)
                        .await?;
                }
            }
            let permit = self.reserve(self.part_size).await;
            let (f, chunk, hash) =
                read_part(file, path, self.part_size, offset, &self.buffers).await?;
            file = f;
            let Some(hash) = hash else { break };
            if offset == 0 {
                whole = hash.whole;
            }
            // A short part is the last one: reading on after the file grew would start a part
            // off its boundary. The stat comparison below sees the growth and reads again.
            let last = (chunk.len() as u64) < self.part_size;
            // Spawned, so parts travel while the next one is read.
            let (store, parts, key) = (self.store.clone(), Arc::clone(parts_api), key.clone());
            let (id, index) = (upload.upload_id.clone(), (offset / self.part_size) as usize);
            offset += chunk.len() as u64;
            inflight.push_back(tokio::spawn(async move {
                let sent = chunk.len() as u64;
                let put = parts.put_part(&key, &id, index, PutPayload::from(chunk));
                let part: Result<PartId> = store
                    .call("upload part", &key, put)
                    .await
                    .map_err(Error::from);
                drop(permit);
                let stored = UploadedPart {
                    id: part?.content_id,
                    chaining_value: hash.chaining_value,
                };
                Ok((stored, sent))
            }));
            if last {
                break;
            }
        }
        while let Some(stored) = inflight.next().await {
            self.part_stored(&mut upload, stored, resume, path, &failed)
                .await?;
        }
        let hash = self.file_hash(&upload, offset, whole);
        let unchanged = Stat::of(&file, path)? == before && offset == before.size && hash.is_some();
        self.finish_upload(parts_api, key, &upload, unchanged, &failed)
            .await?;
        resume
            .checkpoint
            .forget_partial(resume.run, rel)
            .await
            .map_err(Error::from)?;
        Ok(hash.filter(|_| unchanged).map(|hash| (hash, before)))
    }

    /// The hash of a file of `len` bytes stored as `upload`'s parts; `whole` is the first
    /// part's hash as a file of its own. `None` for an empty file (it changed: it was large).
    fn file_hash(
        &self,
        upload: &PartialUpload,
        len: u64,
        whole: Option<blake3::Hash>,
    ) -> Option<blake3::Hash> {
        if len <= self.part_size {
            return whole;
        }
        let parts: Vec<_> = upload.parts.iter().map(|p| p.chaining_value).collect();
        part_hash::combine(&parts, self.part_size, len)
    }

    /// Completes the upload if the file did not change, else aborts it.
    async fn finish_upload(
        &self,
        parts_api: &Arc<dyn MultipartStore>,
        key: &Key,
        upload: &PartialUpload,
        unchanged: bool,
        failed: &impl Fn(crate::store::Error) -> Failed,
    ) -> Result<(), Failed> {
        if !unchanged {
            let abort = parts_api.abort_multipart(key, &upload.upload_id);
            let _ = self.store.call("abort multipart upload", key, abort).await;
            return Ok(());
        }
        let parts = upload
            .parts
            .iter()
            .map(|part| PartId {
                content_id: part.id.clone(),
            })
            .collect();
        let complete = parts_api.complete_multipart(key, &upload.upload_id, parts);
        self.store
            .call("complete multipart upload", key, complete)
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// Notes a part stored (parts complete in order); every few parts, makes them durable and
    /// records them, so an interrupted copy continues after them. A part the store refused is
    /// the upload's failure (`failed`).
    async fn part_stored(
        &self,
        upload: &mut PartialUpload,
        stored: std::result::Result<Result<(UploadedPart, u64)>, tokio::task::JoinError>,
        resume: Resume<'_>,
        path: &std::path::Path,
        failed: &impl Fn(crate::store::Error) -> Failed,
    ) -> Result<(), Failed> {
        let (part, sent) = match stored.map_err(|e| task_failed(path, e))? {
            Ok(stored) => stored,
            Err(Error::Store(e)) => return Err(failed(e)),
            Err(e) => return Err(e.into()),
        };
        self.sent(sent);
        upload.parts.push(part);
        if upload.parts.len().is_multiple_of(PARTS_PER_RECORD) {
            resume
                .checkpoint
                .flush_and_record_partial(&self.store, resume.run, upload)
                .await?;
        }
        Ok(())
    }

    /// The interrupted upload of this file if it is still valid and has stored parts to
    /// skip (`true`: continued), else a new recorded one. A record without a part gains
    /// nothing by being continued and may have outlived its upload (an earlier copy completed
    /// it and died before it forgot the record): its upload is aborted and a new one started.
    async fn start_or_continue(
        &self,
        parts_api: &dyn MultipartStore,
        key: &Key,
        resume: Resume<'_>,
        rel: &[u8],
        (now, compression): (Stat, Compression),
    ) -> Result<(PartialUpload, bool)> {
        let earlier = resume.checkpoint.partial_upload(resume.run, rel).await?;
        if let Some(upload) = &earlier
            && upload.part_size == self.part_size
            && upload.compression == compression
            && Stat::from_partial(upload) == now
            && !upload.parts.is_empty()
        {
            tracing::info!(key = %key, parts = upload.parts.len(), "continuing an interrupted upload");
            return Ok((earlier.expect("checked"), true));
        }
        if let Some(stale) = earlier {
            tracing::info!(key = %key, upload = %stale.upload_id, parts = stale.parts.len(), "an interrupted upload with no part to skip, or of another version of the file: starting it again");
            let abort = parts_api.abort_multipart(key, &stale.upload_id);
            let _ = self.store.call("abort multipart upload", key, abort).await;
        }
        let create = parts_api.create_multipart(key);
        let upload = PartialUpload {
            path: rel.to_vec(),
            upload_id: self
                .store
                .call("create multipart upload", key, create)
                .await?,
            part_size: self.part_size,
            size: now.size,
            mtime_ns: now.mtime_ns,
            ctime_ns: now.ctime_ns,
            ino: now.ino,
            parts: Vec::new(),
            compression,
        };
        resume
            .checkpoint
            .record_partial(resume.run, &upload)
            .await?;
        Ok((upload, false))
    }
}

/// What storing a file did: its content's hash, the metadata it belongs to, and how its object
/// holds it.
struct Stored {
    hash: blake3::Hash,
    stat: Stat,
    extents: Option<Vec<Extent>>,
    compressed: Option<Compressed>,
}

impl Stored {
    /// A file stored as its raw bytes (its data extents when `extents`).
    fn raw(hash: blake3::Hash, stat: Stat, extents: Option<Vec<Extent>>) -> Self {
        Self {
            hash,
            stat,
            extents,
            compressed: None,
        }
    }
}

/// How an attempt at a multipart upload failed.
#[derive(Debug)]
enum Failed {
    /// A call on the upload this attempt started (its id).
    Upload(String, crate::store::Error),
    /// A call on an upload an earlier attempt started, which this one continued (its id).
    Continued(String, crate::store::Error),
    /// Anything else: reading the file, starting the upload, recording progress.
    Other(Error),
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Other(e)
    }
}

impl Stat {
    fn from_partial(u: &PartialUpload) -> Self {
        Self {
            size: u.size,
            mtime_ns: u.mtime_ns,
            ctime_ns: u.ctime_ns,
            ino: u.ino,
        }
    }
}

/// Reads the part of `file` at `offset` (where the file is positioned) on a blocking thread,
/// hashing it on the way.
async fn read_part(
    mut file: File,
    path: &std::path::Path,
    size: u64,
    offset: u64,
    buffers: &Arc<BufferPool>,
) -> Result<(File, Bytes, Option<part_hash::PartHash>)> {
    let owned = path.to_owned();
    let buffers = Arc::clone(buffers);
    tokio::task::spawn_blocking(move || {
        let mut buf = buffers.take(size as usize);
        buf.resize(size as usize, 0);
        let n = read_full(&mut file, &mut buf).map_err(|e| Error::read(&owned, e))?;
        buf.truncate(n);
        let hash = (n > 0).then(|| part_hash::part(offset, &buf));
        let chunk = buf.split().freeze();
        buffers.give(buf);
        Ok((file, chunk, hash))
    })
    .await
    .map_err(|e| task_failed(path, e))?
}

impl Uploader {
    /// The data extents of `path` and the metadata they were found with, if it has holes.
    async fn sparse_extents(&self, path: &std::path::Path) -> Result<Option<(Stat, Vec<Extent>)>> {
        let owned = path.to_owned();
        tokio::task::spawn_blocking(move || {
            let file = File::open(&owned).map_err(|e| Error::read(&owned, e))?;
            let meta = file.metadata().map_err(|e| Error::read(&owned, e))?;
            let stat = Stat::of(&file, &owned)?;
            let extents = sparse::data_extents(&file, meta.len(), meta.blocks())
                .map_err(|e| Error::read(&owned, e))?;
            Ok(extents.map(|extents| (stat, extents)))
        })
        .await
        .map_err(|e| task_failed(path, e))?
    }

    /// Stores a sparse file: its object holds only the bytes of its data extents, read with
    /// `pread` while the holes are hashed as zeros; `None` when the file changed meanwhile.
    async fn try_store_sparse(
        &self,
        path: &std::path::Path,
        key: &Key,
        (before, extents): (Stat, Vec<Extent>),
    ) -> Result<Option<(blake3::Hash, Stat)>> {
        let _permit = self.reserve(self.part_size).await;
        let file = Arc::new(File::open(path).map_err(|e| Error::read(path, e))?);
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(self.store.objects()),
            key.clone(),
            self.part_size as usize,
        );
        let mut hasher = sparse::LogicalHasher::new(&extents);
        for [offset, len] in extents.iter().copied() {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(SPARSE_CHUNK);
                let (file, owned) = (Arc::clone(&file), path.to_owned());
                let (chunk, h) = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; n as usize];
                    std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, offset + done)
                        .map_err(|e| Error::read(&owned, e))?;
                    hasher.data(&buf);
                    Ok::<_, Error>((Bytes::from(buf), hasher))
                })
                .await
                .map_err(|e| task_failed(path, e))??;
                hasher = h;
                let write = writer.write_all(&chunk);
                let written = self.store.call(
                    "write sparse object",
                    key,
                    write.map(|r| r.map_err(io_error)),
                );
                if let Err(e) = written.await {
                    let _ = writer.abort().await;
                    return Err(e.into());
                }
                done += n;
            }
        }
        let after = Stat::of(&file, path)?;
        if after != before {
            let _ = writer.abort().await;
            return Ok(None);
        }
        let size = before.size;
        let hash = tokio::task::spawn_blocking(move || hasher.finalize(size))
            .await
            .map_err(|e| task_failed(path, e))?;
        self.store
            .call(
                "complete sparse object",
                key,
                writer.shutdown().map(|r| r.map_err(io_error)),
            )
            .await?;
        self.sent(sparse::stored_len(&extents));
        Ok(Some((hash, before)))
    }
}

/// Bytes of a sparse file's data read at once.
const SPARSE_CHUNK: u64 = 1024 * 1024;

fn io_error(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "sparse object",
        source: Box::new(e),
    }
}

/// A blocking read or an upload task of `path` that panicked or was cancelled: an error of
/// that file (the copy fails cleanly and can be retried), never a panic of the engine.
fn task_failed(path: &std::path::Path, e: tokio::task::JoinError) -> Error {
    Error::read(
        path,
        std::io::Error::other(format!("read task failed: {e}")),
    )
}

/// Part buffers, reused once the upload that borrowed one has dropped it. Allocating a fresh
/// 8 MiB buffer per part made glibc keep the freed ones in per-thread arenas, which more than
/// doubled peak memory on large files; reuse keeps it at the budget.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: std::sync::Mutex<Vec<BytesMut>>,
}

/// Most idle buffers kept.
const POOLED_BUFFERS: usize = 16;

impl BufferPool {
    /// A buffer with room for `size` bytes, reused when one is free.
    pub(crate) fn take(&self, size: usize) -> BytesMut {
        let mut free = self.free.lock().expect("pool lock");
        match free.iter_mut().position(|b| b.try_reclaim(size)) {
            Some(i) => {
                let mut buf = free.swap_remove(i);
                buf.clear();
                buf
            }
            None => BytesMut::with_capacity(size),
        }
    }

    /// Returns a buffer whose contents were split off; it is reusable once they are dropped.
    pub(crate) fn give(&self, buf: BytesMut) {
        let mut free = self.free.lock().expect("pool lock");
        if free.len() < POOLED_BUFFERS {
            free.push(buf);
        }
    }
}

/// Opens `path` and runs `read` between two `fstat`s, again while they differ.
fn read_consistent(
    path: &std::path::Path,
    mut read: impl FnMut(&mut File, &mut blake3::Hasher) -> Result<()>,
) -> Result<Consistent> {
    for _ in 0..READ_ATTEMPTS {
        let mut file = File::open(path).map_err(|e| Error::read(path, e))?;
        let before = Stat::of(&file, path)?;
        let mut hash = blake3::Hasher::new();
        read(&mut file, &mut hash)?;
        if Stat::of(&file, path)? == before {
            return Ok(Consistent { hash, stat: before });
        }
        tracing::info!(path = %path.display(), "file changed while it was read; reading it again");
    }
    Err(Error::Changed {
        path: path.to_owned(),
        attempts: READ_ATTEMPTS,
    })
}

/// Fills `buf` as far as the file allows; returns how many bytes were read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn append(path: &std::path::Path, data: &[u8]) {
        let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(data).unwrap();
    }

    fn read_all(
        path: &std::path::Path,
        reads: &mut u32,
        change_on: impl Fn(u32) -> bool,
    ) -> Result<Consistent> {
        read_consistent(path, |file, hasher| {
            *reads += 1;
            let mut data = Vec::new();
            file.read_to_end(&mut data).unwrap();
            if change_on(*reads) {
                append(path, b"+more");
            }
            hasher.update(&data);
            Ok(())
        })
    }

    #[test]
    fn a_file_changed_while_read_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"v1").unwrap();
        let mut reads = 0;
        let consistent = read_all(&path, &mut reads, |n| n == 1).unwrap();
        assert_eq!(reads, 2);
        assert_eq!(consistent.stat.size, 7);
        assert_eq!(consistent.hash.finalize(), blake3::hash(b"v1+more"));
    }

    #[test]
    fn a_file_that_keeps_changing_is_never_stored_torn() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"v1").unwrap();
        let mut reads = 0;
        let err = read_all(&path, &mut reads, |_| true)
            .err()
            .expect("must fail");
        assert!(
            matches!(
                err,
                Error::Changed {
                    attempts: READ_ATTEMPTS,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("changed while it was read"));
    }
}
