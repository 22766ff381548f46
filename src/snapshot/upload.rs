//! Reading one source file consistently and storing its bytes as one object.
//!
//! A file is read between two `fstat`s of the open handle; if size, mtime or ctime moved, the
//! read is torn and is done again (a bounded number of times) — torn content is never stored.
//! Small files are one request; large ones are uploaded in parts, at most two parts of a file
//! in flight, and every buffer is paid for from a shared memory budget so the process stays
//! bounded whatever the file sizes.

use super::manifest::{Content, Entry};
use super::{Error, Result};
use crate::store::Store;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many times a file that changes while it is read is read again.
const READ_ATTEMPTS: u32 = 3;
/// Unit of the memory budget.
const BUDGET_UNIT: u64 = 64 * 1024;
/// Parts of one file uploaded at once.
const PARTS_IN_FLIGHT: usize = 2;

/// Shared settings and the memory budget of one copy.
#[derive(Debug)]
pub(crate) struct Uploader {
    pub store: Store,
    pub part_size: u64,
    budget: Arc<Semaphore>,
    budget_units: u32,
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
    pub fn new(store: Store, part_size: u64, buffer_bytes: u64) -> Self {
        let budget_units = (buffer_bytes / BUDGET_UNIT).max(1) as u32;
        Self {
            store,
            part_size,
            budget: Arc::new(Semaphore::new(budget_units as usize)),
            budget_units,
        }
    }

    async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = bytes
            .div_ceil(BUDGET_UNIT)
            .clamp(1, self.budget_units as u64) as u32;
        Arc::clone(&self.budget)
            .acquire_many_owned(units)
            .await
            .expect("budget semaphore is never closed")
    }

    /// Reads `path` and stores it at `key`; returns `entry` with its content and the metadata
    /// of the bytes actually stored.
    pub async fn store_file(
        &self,
        path: PathBuf,
        mut entry: Entry,
        key: Key,
        object: String,
    ) -> Result<Entry> {
        let (hash, stat) = if entry.size <= self.part_size {
            self.store_small(&path, &key, entry.size).await?
        } else {
            self.store_large(&path, &key).await?
        };
        stat.apply(&mut entry);
        entry.content = Some(Content {
            blake3: hash.to_hex().to_string(),
            object,
        });
        Ok(entry)
    }

    /// Hashes `path` without storing it (for `--check-hash`).
    pub async fn hash_file(&self, path: PathBuf, mut entry: Entry) -> Result<(Entry, String)> {
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
        .expect("hash task panicked")?;
        consistent.stat.apply(&mut entry);
        Ok((entry, consistent.hash.finalize().to_hex().to_string()))
    }

    async fn store_small(
        &self,
        path: &std::path::Path,
        key: &Key,
        size: u64,
    ) -> Result<(blake3::Hash, Stat)> {
        let _permit = self.reserve(size).await;
        let limit = self.part_size;
        let owned = path.to_owned();
        let (consistent, bytes) = tokio::task::spawn_blocking(move || {
            let mut data = Vec::new();
            let consistent = read_consistent(&owned, |file, hasher| {
                data.clear();
                file.take(limit + 1)
                    .read_to_end(&mut data)
                    .map_err(|e| Error::read(&owned, e))?;
                hasher.update(&data);
                Ok(())
            })?;
            Ok::<_, Error>((consistent, data))
        })
        .await
        .expect("read task panicked")?;
        if bytes.len() as u64 > limit {
            // Grew past one part between the walk and the read: store it in parts instead.
            return Box::pin(self.store_large(path, key)).await;
        }
        self.store.put_bytes(key, PutPayload::from(bytes)).await?;
        Ok((consistent.hash.finalize(), consistent.stat))
    }

    async fn store_large(&self, path: &std::path::Path, key: &Key) -> Result<(blake3::Hash, Stat)> {
        for _ in 0..READ_ATTEMPTS {
            if let Some(done) = self.try_store_large(path, key).await? {
                return Ok(done);
            }
            tracing::info!(path = %path.display(), "file changed while it was uploaded; reading it again");
        }
        Err(Error::Changed {
            path: path.to_owned(),
            attempts: READ_ATTEMPTS,
        })
    }

    /// One attempt at a multipart upload; `None` when the file changed during it.
    async fn try_store_large(
        &self,
        path: &std::path::Path,
        key: &Key,
    ) -> Result<Option<(blake3::Hash, Stat)>> {
        let objects = self.store.objects();
        let mut upload = self
            .store
            .call("create multipart upload", key, objects.put_multipart(key))
            .await?;
        let file = File::open(path).map_err(|e| Error::read(path, e))?;
        let before = Stat::of(&file, path)?;
        let mut reader = Some((file, blake3::Hasher::new()));
        let mut inflight: FuturesOrdered<tokio::task::JoinHandle<Result<()>>> =
            FuturesOrdered::new();
        let outcome: Result<()> = async {
            loop {
                while inflight.len() >= PARTS_IN_FLIGHT {
                    inflight
                        .next()
                        .await
                        .expect("non-empty")
                        .expect("part upload task panicked")?;
                }
                let permit = self.reserve(self.part_size).await;
                let (file, hasher) = reader.take().expect("reader is returned after each chunk");
                let (file, chunk, hasher) = read_chunk(file, path, self.part_size, hasher).await?;
                reader = Some((file, hasher));
                if chunk.is_empty() {
                    break;
                }
                // Spawned, so the part makes progress while this task waits for memory.
                let part = upload.put_part(PutPayload::from(chunk));
                let store = self.store.clone();
                let key = key.clone();
                inflight.push_back(tokio::spawn(async move {
                    let result = store.call("upload part", &key, part).await;
                    drop(permit);
                    result.map_err(Error::from)
                }));
            }
            while let Some(result) = inflight.next().await {
                result.expect("part upload task panicked")?;
            }
            Ok(())
        }
        .await;
        let Some((file, hasher)) = reader else {
            let _ = self
                .store
                .call("abort multipart upload", key, upload.abort())
                .await;
            return Err(outcome.expect_err("the reader is only lost on error"));
        };
        let after = Stat::of(&file, path);
        match (outcome, after) {
            (Ok(()), Ok(after)) if after == before => {
                self.store
                    .call("complete multipart upload", key, upload.complete())
                    .await?;
                Ok(Some((hasher.finalize(), before)))
            }
            (Ok(()), Ok(_)) => {
                let _ = self
                    .store
                    .call("abort multipart upload", key, upload.abort())
                    .await;
                Ok(None)
            }
            (Err(e), _) | (Ok(()), Err(e)) => {
                let _ = self
                    .store
                    .call("abort multipart upload", key, upload.abort())
                    .await;
                Err(e)
            }
        }
    }
}

/// Reads the next chunk of `file` on a blocking thread, hashing it on the way.
async fn read_chunk(
    mut file: File,
    path: &std::path::Path,
    size: u64,
    mut hasher: blake3::Hasher,
) -> Result<(File, Vec<u8>, blake3::Hasher)> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0; size as usize];
        let n = read_full(&mut file, &mut buf).map_err(|e| Error::read(&owned, e))?;
        buf.truncate(n);
        hasher.update(&buf);
        Ok((file, buf, hasher))
    })
    .await
    .expect("read task panicked")
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
