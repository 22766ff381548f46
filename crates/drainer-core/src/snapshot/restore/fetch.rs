//! Bringing one file's bytes back: reading its object by ranges, writing and hashing them, and
//! checking a file that is already in place.
//!
//! A dense file up to the part size is one request. A larger one is read in parts of the part
//! size (a power of two), [`PARTS_AT_ONCE`] at a time: each part is written at its offset and
//! hashed on its own as a subtree of the file's BLAKE3 tree (see `part_hash`), so the parts
//! need not arrive in order and the file's hash is combined from theirs. A sparse file's object
//! (its data extents back to back) is read in ranges too, in order, each piece written at its
//! extent's offset into a file of the full size, so its holes stay holes. Every byte in flight
//! is paid for from one memory budget. The object's size is checked on every answer (a range
//! read names the whole object's size), so a truncated or longer object is an error that says
//! so, like a hash that differs.
//!
//! Reads go through the `ObjectStore` of the [`Store`], so the same code restores from a store
//! directly or through a drainer's API. A dense file's answer is hashed and written as its
//! pieces arrive, a megabyte at a time, never gathered into a buffer of the whole range first
//! (through the API, that took restoring 4 × 256 MiB from about 1.7 s to 1.3-1.4 s). One
//! exception: a dense file of a local-directory store is copied from its object's file a small
//! piece at a time, hashed on the way, without the `ObjectStore` layer at all (with its
//! buffers, restoring 4 × 256 MiB took 1.13× the time of `cp -a && sync`; without, 0.86×).

use super::super::compress::{Compressed, Inflater};
use super::super::manifest::Entry;
use super::super::{Error, Result, part_hash, sparse};
use crate::store::Store;
use bytes::Bytes;
use filetime::FileTime;
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path as Key;
use object_store::{GetOptions, GetRange, GetResult, ObjectStore};
use std::fs::{File, OpenOptions, Permissions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Parts of one file read at once.
pub(crate) const PARTS_AT_ONCE: usize = 4;
/// Unit of the memory budget.
const BUDGET_UNIT: u64 = 64 * 1024;
/// Piece of a copy from a local store's object: small enough to stay in the CPU's cache
/// between reading, hashing and writing it.
const COPY_PIECE: usize = 256 * 1024;
/// Bytes of a streamed read gathered before they are hashed and written in one blocking call.
const WRITE_BATCH: u64 = 1 << 20;
/// Buffer of a check of a file already in place.
const CHECK_BUFFER: usize = 1 << 20;

/// Reads objects into files, within one memory budget.
#[derive(Debug, Clone)]
pub(crate) struct Fetcher {
    store: Store,
    part_size: u64,
    budget: Arc<Semaphore>,
    units: u32,
}

/// One file to bring back: where its bytes are and where they go.
pub(crate) struct Wanted<'a> {
    /// The object.
    pub key: &'a Key,
    /// The new file to write (in the staging directory).
    pub temp: &'a Path,
    /// The file's final path (for messages).
    pub path: &'a Path,
    /// Its manifest entry.
    pub entry: &'a Entry,
    /// Its BLAKE3 hash, hex.
    pub expected: &'a str,
}

impl Fetcher {
    /// A fetcher reading `part_size` bytes at a time (a power of two of at least 1 KiB) with
    /// at most `budget_bytes` in flight.
    pub fn new(store: Store, part_size: u64, budget_bytes: u64) -> Result<Self> {
        if !part_hash::is_valid_part_size(part_size) {
            return Err(Error::PartSize(part_size));
        }
        let units = (budget_bytes / BUDGET_UNIT)
            .max(part_size / BUDGET_UNIT)
            .max(1) as u32;
        Ok(Self {
            store,
            part_size,
            budget: Arc::new(Semaphore::new(units as usize)),
            units,
        })
    }

    async fn reserve(&self, bytes: u64) -> OwnedSemaphorePermit {
        let units = bytes.div_ceil(BUDGET_UNIT).clamp(1, u64::from(self.units)) as u32;
        Arc::clone(&self.budget)
            .acquire_many_owned(units)
            .await
            .expect("budget semaphore is never closed")
    }

    /// Writes the object into `wanted.temp` (a new file), checks its size and hash, and returns
    /// the open file.
    pub async fn write(&self, wanted: &Wanted<'_>) -> Result<File> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .mode(0o600)
            .open(wanted.temp)
            .map_err(|e| Error::write(wanted.path, e))?;
        let file = Arc::new(file);
        let compressed = wanted.entry.content.as_ref().and_then(|c| c.compressed);
        let hash = match (&wanted.entry.extents, compressed) {
            (_, Some(compressed)) => self.write_compressed(wanted, &file, compressed).await?,
            (Some(extents), None) => self.write_sparse(wanted, &file, extents).await?,
            (None, None) => self.write_dense(wanted, &file).await?,
        };
        if hash.to_hex().as_str() != wanted.expected {
            return Err(Error::HashMismatch {
                path: wanted.path.display().to_string(),
                object: wanted.key.to_string(),
                expected: wanted.expected.to_owned(),
                actual: hash.to_hex().to_string(),
            });
        }
        Arc::try_unwrap(file).map_err(|_| {
            Error::write(
                wanted.path,
                std::io::Error::other("a part of the file is still being written"),
            )
        })
    }

    /// Asks for `range` of the object (all of it when `None`), checking that the object holds
    /// `object_len` bytes.
    async fn get(
        &self,
        wanted: &Wanted<'_>,
        range: Option<std::ops::Range<u64>>,
        object_len: u64,
    ) -> Result<GetResult> {
        let key = wanted.key;
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let get = self.store.objects().get_opts(key, options);
        let got = self.store.call("get", key, get).await?;
        if got.meta.size != object_len {
            return Err(size_mismatch(wanted, object_len, got.meta.size));
        }
        Ok(got)
    }

    /// Reads `range` of an object of `object_len` bytes into one buffer.
    async fn read(
        &self,
        wanted: &Wanted<'_>,
        range: std::ops::Range<u64>,
        object_len: u64,
    ) -> Result<Bytes> {
        let expected = range.end - range.start;
        let got = self.get(wanted, Some(range), object_len).await?;
        let bytes = self.store.call("get", wanted.key, got.bytes()).await?;
        if bytes.len() as u64 != expected {
            return Err(size_mismatch(wanted, object_len, bytes.len() as u64));
        }
        Ok(bytes)
    }

    /// A dense file: one request, or parts at once, each hashed as a subtree.
    async fn write_dense(&self, wanted: &Wanted<'_>, file: &Arc<File>) -> Result<blake3::Hash> {
        let size = wanted.entry.size;
        if size <= self.part_size {
            let _permit = self.reserve(size).await;
            if let Some(copied) = self.copy_local(wanted, file, 0..size).await {
                return Ok(copied?.finalize());
            }
            return Ok(self.stream_into(wanted, file, 0..size).await?.finalize());
        }
        let parts = size.div_ceil(self.part_size);
        let mut values = stream::iter(0..parts)
            .map(|index| self.write_part(wanted, file, index))
            .buffer_unordered(PARTS_AT_ONCE)
            .try_collect::<Vec<(u64, part_hash::PartHash)>>()
            .await?;
        values.sort_by_key(|(index, _)| *index);
        let chaining: Vec<_> = values.iter().map(|(_, h)| h.chaining_value).collect();
        part_hash::combine(&chaining, self.part_size, size).ok_or_else(|| {
            Error::write(
                wanted.path,
                std::io::Error::other("the parts' hashes cannot be combined"),
            )
        })
    }

    async fn write_part(
        &self,
        wanted: &Wanted<'_>,
        file: &Arc<File>,
        index: u64,
    ) -> Result<(u64, part_hash::PartHash)> {
        let start = index * self.part_size;
        let end = (start + self.part_size).min(wanted.entry.size);
        let _permit = self.reserve(end - start).await;
        if let Some(copied) = self.copy_local(wanted, file, start..end).await {
            return Ok((index, part_hash::finish_part(&copied?, start)));
        }
        let hasher = self.stream_into(wanted, file, start..end).await?;
        Ok((index, part_hash::finish_part(&hasher, start)))
    }

    /// Writes `range` of the object into `file` at the same offsets as its pieces arrive,
    /// [`WRITE_BATCH`] bytes at a time, hashing them on the way (a part hasher of
    /// `range.start`): no buffer of the whole range is gathered first. Checks the object's size
    /// and that the answer holds exactly the range; each piece must come within the store's
    /// time bound. (A drainer's API resumes a read that breaks off midway; object stores retry
    /// their own.)
    async fn stream_into(
        &self,
        wanted: &Wanted<'_>,
        file: &Arc<File>,
        range: std::ops::Range<u64>,
    ) -> Result<blake3::Hasher> {
        let object_len = wanted.entry.size;
        let mismatch = |actual| size_mismatch(wanted, object_len, actual);
        // A range even for a whole object: a drainer's API resumes a ranged read.
        let asked = (!range.is_empty()).then(|| range.clone());
        let got = self.get(wanted, asked, object_len).await?;
        let mut body = got.into_stream();
        let mut hasher = part_hash::part_hasher(range.start);
        let (mut written, mut batch, mut gathered) = (range.start, Vec::new(), 0);
        loop {
            let piece = self.store.call("get", wanted.key, body.try_next()).await?;
            let done = piece.is_none();
            if let Some(piece) = piece {
                gathered += piece.len() as u64;
                if written + gathered > range.end {
                    return Err(mismatch(written + gathered));
                }
                batch.push(piece);
            }
            if gathered >= WRITE_BATCH || (done && gathered > 0) {
                let pieces = std::mem::take(&mut batch);
                hasher = write_pieces(wanted.path, file, written, pieces, hasher).await?;
                (written, gathered) = (written + gathered, 0);
            }
            if done {
                break;
            }
        }
        if written != range.end {
            return Err(mismatch(written));
        }
        Ok(hasher)
    }

    /// Copies `range` of a local store's object into `file` at the same offsets, a piece at a
    /// time through one small buffer, hashing on the way (a part hasher of `range.start`): the
    /// bytes are copied once in and once out, with no buffer of the whole range to fill, zero
    /// and page in first. `None` when the store is not a local directory or the object cannot
    /// be opened there: the `ObjectStore` read then says why.
    async fn copy_local(
        &self,
        wanted: &Wanted<'_>,
        file: &Arc<File>,
        range: std::ops::Range<u64>,
    ) -> Option<Result<blake3::Hasher>> {
        let source_path = self.store.local_file(wanted.key)?;
        let (file, object_len) = (Arc::clone(file), wanted.entry.size);
        let (path, object) = (wanted.path.to_owned(), wanted.key.to_string());
        let copied = tokio::task::spawn_blocking(move || {
            let source = File::open(&source_path).ok()?;
            let size = match source.metadata() {
                Ok(meta) => meta.len(),
                Err(e) => {
                    let path = source_path;
                    return Some(Err(Error::Read { path, source: e }));
                }
            };
            if size != object_len {
                return Some(Err(Error::SizeMismatch {
                    path: path.display().to_string(),
                    object,
                    expected: object_len,
                    actual: size,
                }));
            }
            Some(copy_hashing((&source, &source_path), (&file, &path), range))
        })
        .await;
        copied.unwrap_or_else(|e| Some(Err(Error::write(wanted.path, std::io::Error::other(e)))))
    }

    /// A sparse file: the full size first (all hole), then the stored extents at their places,
    /// read in order and hashed with the holes as zeros.
    async fn write_sparse(
        &self,
        wanted: &Wanted<'_>,
        file: &Arc<File>,
        extents: &[sparse::Extent],
    ) -> Result<blake3::Hash> {
        let size = wanted.entry.size;
        let stored = sparse::stored_len(extents);
        file.set_len(size)
            .map_err(|e| Error::write(wanted.path, e))?;
        let ranges: Vec<std::ops::Range<u64>> = (0..stored.div_ceil(self.part_size))
            .map(|i| i * self.part_size..((i + 1) * self.part_size).min(stored))
            .collect();
        let mut chunks = stream::iter(ranges)
            .map(|range| async move {
                let permit = self.reserve(range.end - range.start).await;
                let data = self.read(wanted, range, stored).await?;
                Ok::<_, Error>((data, permit))
            })
            .buffered(PARTS_AT_ONCE);
        let mut hasher = sparse::LogicalHasher::new(extents);
        while let Some((data, _permit)) = chunks.try_next().await? {
            let file = Arc::clone(file);
            let path = wanted.path.to_owned();
            hasher = blocking(&path, move || {
                for (offset, piece) in hasher.data(&data) {
                    file.write_all_at(piece, offset)?;
                }
                Ok(hasher)
            })
            .await?;
        }
        let path = wanted.path.to_owned();
        blocking(&path, move || Ok(hasher.finalize(size))).await
    }
}

impl Fetcher {
    /// A compressed object: read whole and in order (a compressed object has no ranges of
    /// the file), decoded as its pieces arrive, [`WRITE_BATCH`] bytes at a time, each raw piece
    /// hashed and written at its offset. Checks the object's stored size, that it decodes,
    /// and that it decodes to the entry's size.
    async fn write_compressed(
        &self,
        wanted: &Wanted<'_>,
        file: &Arc<File>,
        compressed: Compressed,
    ) -> Result<blake3::Hash> {
        let (size, stored) = (wanted.entry.size, compressed.stored_size);
        let _permit = self.reserve(2 * WRITE_BATCH).await;
        let asked = (stored > 0).then_some(0..stored);
        let mut body = self.get(wanted, asked, stored).await?.into_stream();
        let inflater = Inflater::new(compressed.codec, size).map_err(|e| corrupt(wanted, e))?;
        let mut state = Inflating {
            inflater,
            hasher: blake3::Hasher::new(),
            written: 0,
        };
        let (mut batch, mut gathered, mut received) = (Vec::new(), 0, 0);
        loop {
            let piece = self.store.call("get", wanted.key, body.try_next()).await?;
            let done = piece.is_none();
            if let Some(piece) = piece {
                gathered += piece.len() as u64;
                received += piece.len() as u64;
                if received > stored {
                    return Err(size_mismatch(wanted, stored, received));
                }
                batch.push(piece);
            }
            if gathered >= WRITE_BATCH || (done && gathered > 0) {
                let pieces = std::mem::take(&mut batch);
                state = inflate_pieces(wanted, file, pieces, state).await?;
                gathered = 0;
            }
            if done {
                break;
            }
        }
        if received != stored {
            return Err(size_mismatch(wanted, stored, received));
        }
        let produced = state.inflater.finish().map_err(|e| corrupt(wanted, e))?;
        if produced != size {
            return Err(corrupt(
                wanted,
                std::io::Error::other(format!(
                    "it decompresses to {produced} bytes, its manifest entry says {size}"
                )),
            ));
        }
        Ok(state.hasher.finalize())
    }
}

/// A compressed object being decoded into a file: the decoder, the raw content's hash so far,
/// and the raw bytes written.
struct Inflating {
    inflater: Inflater,
    hasher: blake3::Hasher,
    written: u64,
}

/// Decodes `pieces` (in order) and writes the raw bytes into `file` where the last ones ended,
/// hashing them on the way. A decoding error is the object's, a write error the file's.
async fn inflate_pieces(
    wanted: &Wanted<'_>,
    file: &Arc<File>,
    pieces: Vec<Bytes>,
    state: Inflating,
) -> Result<Inflating> {
    let file = Arc::clone(file);
    let Inflating {
        mut inflater,
        mut hasher,
        mut written,
    } = state;
    let mut write_error = None;
    let decoded = tokio::task::spawn_blocking(move || {
        let mut sink = |raw: &[u8]| {
            hasher.update(raw);
            let at = written;
            written += raw.len() as u64;
            file.write_all_at(raw, at).inspect_err(|e| {
                write_error = Some(std::io::Error::new(e.kind(), e.to_string()));
            })
        };
        let fed = pieces
            .iter()
            .try_for_each(|piece| inflater.feed(piece, &mut sink));
        (
            fed,
            write_error,
            Inflating {
                inflater,
                hasher,
                written,
            },
        )
    })
    .await
    .map_err(|e| Error::write(wanted.path, std::io::Error::other(e)))?;
    match decoded {
        (Ok(()), _, state) => Ok(state),
        (Err(_), Some(write), _) => Err(Error::write(wanted.path, write)),
        (Err(e), None, _) => Err(corrupt(wanted, e)),
    }
}

/// The error of a compressed object that does not decode to the file's bytes.
fn corrupt(wanted: &Wanted<'_>, e: std::io::Error) -> Error {
    Error::Read {
        path: PathBuf::from(wanted.key.to_string()),
        source: std::io::Error::new(
            e.kind(),
            format!("compressed object of {}: {e}", wanted.path.display()),
        ),
    }
}

/// Copies `range` of `source` into `target` at the same offsets through one buffer of
/// [`COPY_PIECE`] bytes, which stays in the CPU's cache while it is hashed and written. Each
/// file comes with its path, for the error.
fn copy_hashing(
    (source, source_path): (&File, &Path),
    (target, target_path): (&File, &Path),
    range: std::ops::Range<u64>,
) -> Result<blake3::Hasher> {
    let mut hasher = part_hash::part_hasher(range.start);
    let mut buffer = vec![0u8; COPY_PIECE.min((range.end - range.start) as usize)];
    let mut offset = range.start;
    while offset < range.end {
        let piece = &mut buffer[..COPY_PIECE.min((range.end - offset) as usize)];
        source
            .read_exact_at(piece, offset)
            .map_err(|e| Error::Read {
                path: source_path.to_owned(),
                source: e,
            })?;
        hasher.update(piece);
        target
            .write_all_at(piece, offset)
            .map_err(|e| Error::write(target_path, e))?;
        offset += piece.len() as u64;
    }
    Ok(hasher)
}

/// The error of an object that does not hold the bytes its manifest entry says.
fn size_mismatch(wanted: &Wanted<'_>, expected: u64, actual: u64) -> Error {
    Error::SizeMismatch {
        path: wanted.path.display().to_string(),
        object: wanted.key.to_string(),
        expected,
        actual,
    }
}

/// Hashes `pieces` (in order) and writes them into `file` from `offset` on.
async fn write_pieces(
    path: &Path,
    file: &Arc<File>,
    offset: u64,
    pieces: Vec<Bytes>,
    mut hasher: blake3::Hasher,
) -> Result<blake3::Hasher> {
    let file = Arc::clone(file);
    blocking(path, move || {
        let mut at = offset;
        for piece in &pieces {
            hasher.update(piece);
            file.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        Ok(hasher)
    })
    .await
}

/// Runs blocking file work on the blocking pool; its I/O errors name `path`.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::write(path, std::io::Error::other(e)))?
        .map_err(|e| Error::write(path, e))
}

/// The file at `path`, if it is already the entry's: a regular file (not followed through a
/// link) of the entry's size whose content has its hash. Opened for setting its metadata.
pub(crate) async fn already_in_place(
    path: &Path,
    entry: &Entry,
    expected: &str,
) -> Result<Option<File>> {
    let (path, size, expected) = (path.to_owned(), entry.size, expected.to_owned());
    let shown = path.clone();
    blocking(&shown, move || {
        let file = match OpenOptions::new()
            .read(true)
            .custom_flags(
                (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32,
            )
            .open(&path)
        {
            Ok(file) => file,
            Err(_) => return Ok(None),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() != size {
            return Ok(None);
        }
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; CHECK_BUFFER];
        let mut reader = &file;
        loop {
            match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buffer[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return Ok(None),
            }
        }
        let same = hasher.finalize().to_hex().as_str() == expected;
        Ok(same.then_some(file))
    })
    .await
}

/// The mtime of an entry.
fn mtime(entry: &Entry) -> FileTime {
    FileTime::from_unix_time(
        entry.mtime_ns.div_euclid(1_000_000_000),
        entry.mtime_ns.rem_euclid(1_000_000_000) as u32,
    )
}

/// Owner (when root), mode and mtime of a file, through its open handle.
pub(crate) fn set_file_metadata(
    file: &File,
    path: &Path,
    entry: &Entry,
    root_owner: bool,
) -> Result<()> {
    let io = |e| Error::write(path, e);
    if root_owner {
        std::os::unix::fs::fchown(file, Some(entry.uid), Some(entry.gid)).map_err(io)?;
    }
    file.set_permissions(Permissions::from_mode(entry.mode & 0o7777))
        .map_err(io)?;
    filetime::set_file_handle_times(file, None, Some(mtime(entry))).map_err(io)
}

/// Owner (when root), mode and mtime of a directory or symlink (symlinks have no mode of
/// their own).
pub(crate) fn apply_metadata(
    path: &Path,
    entry: &Entry,
    root_owner: bool,
    is_link: bool,
) -> Result<()> {
    let io = |e| Error::write(path, e);
    if root_owner {
        std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).map_err(io)?;
    }
    if is_link {
        return filetime::set_symlink_file_times(path, mtime(entry), mtime(entry)).map_err(io);
    }
    std::fs::set_permissions(path, Permissions::from_mode(entry.mode & 0o7777)).map_err(io)?;
    filetime::set_file_mtime(path, mtime(entry)).map_err(io)
}

/// Whether `a` and `b` are the same file (a hard link of each other).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A copy of `first` at `temp` with the entry's metadata, where a hard link cannot be made.
pub(crate) fn copy_of(first: &Path, temp: &PathBuf, entry: &Entry, root_owner: bool) -> Result<()> {
    std::fs::copy(first, temp).map_err(|e| Error::write(temp, e))?;
    let file = OpenOptions::new()
        .read(true)
        .open(temp)
        .map_err(|e| Error::write(temp, e))?;
    set_file_metadata(&file, temp, entry, root_owner)
}
