//! A local-directory store's object as a response body, and the reads behind it.
//!
//! A body is read [`CHUNK`] bytes at a time on the blocking pool, with direct I/O (`O_DIRECT`)
//! where the filesystem has it: the disk writes each chunk straight into the buffer that is
//! sent. A restore reads each object once, so a read through the page cache would copy every
//! byte once more and fill the drainer's memory (in Kubernetes, page cache counts against the
//! pod's memory limit) with data nobody reads again; for a 1 GiB restore through the API,
//! direct reads cut the drainer's system time by about a third. Where direct I/O is refused
//! (tmpfs, some network filesystems) the file is read through the page cache, as it is for
//! the small reads of a batch.
//!
//! No buffer is zeroed only to be overwritten, and a file shorter than its metadata said is
//! an error, never bytes that were not read.

use axum::body::Bytes;
use futures::stream::{BoxStream, StreamExt, TryStreamExt};
use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Bytes read at a time for a response body.
pub(crate) const CHUNK: u64 = 1 << 20;
/// Offsets, lengths and buffers of direct reads are multiples of this (the largest logical
/// block size of common disks).
const ALIGN: u64 = 4096;

/// The bytes `range` of `file` (opened at `path`) as a body, `CHUNK` bytes at a time; the
/// file is opened again for direct reads on the blocking pool, with the first chunk.
pub fn body(
    file: File,
    path: &Path,
    range: std::ops::Range<u64>,
) -> BoxStream<'static, io::Result<Bytes>> {
    let path = path.to_owned();
    let opened = async move {
        tokio::task::spawn_blocking(move || Arc::new(Reader::new(file, &path)))
            .await
            .map_err(io::Error::other)
    };
    futures::stream::once(opened)
        .map_ok(move |reader| chunks(reader, range.clone()))
        .try_flatten()
        .boxed()
}

/// The bytes `range` of `reader`'s file, `CHUNK` bytes at a time, each read on the blocking
/// pool.
fn chunks(
    reader: Arc<Reader>,
    range: std::ops::Range<u64>,
) -> impl futures::Stream<Item = io::Result<Bytes>> {
    let starts = (range.start..range.end).step_by(CHUNK as usize);
    futures::stream::iter(starts).then(move |at| {
        let reader = Arc::clone(&reader);
        let len = (range.end - at).min(CHUNK);
        async move {
            tokio::task::spawn_blocking(move || reader.read(at, len))
                .await
                .map_err(io::Error::other)?
        }
    })
}

/// One object's file, opened for direct reads too when the filesystem allows.
struct Reader {
    buffered: File,
    direct: Option<File>,
}

impl Reader {
    /// `file` as opened, and `path` opened again for direct reads if that works and is the
    /// same file.
    fn new(file: File, path: &Path) -> Self {
        let same = |other: &File| match (file.metadata(), other.metadata()) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        let direct = open_direct(path).ok().filter(same);
        Self {
            buffered: file,
            direct,
        }
    }

    /// Exactly `len` bytes at `at`: a direct read, or a buffered one where the direct read is
    /// refused.
    fn read(&self, at: u64, len: u64) -> io::Result<Bytes> {
        if let Some(direct) = &self.direct {
            match read_direct(direct, at, len) {
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {}
                read => return read,
            }
        }
        read_at(&self.buffered, at, len)
    }
}

/// `path` opened read-only for direct I/O.
fn open_direct(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
}

/// Exactly `len` bytes at `at` of a file opened for direct I/O: the aligned span around them
/// read into an aligned window of one buffer, which the answer is a slice of.
fn read_direct(file: &File, at: u64, len: u64) -> io::Result<Bytes> {
    let start = at - at % ALIGN;
    let end = (at + len).div_ceil(ALIGN) * ALIGN;
    let span = (end - start) as usize;
    let mut buffer = vec![0u8; span + ALIGN as usize];
    let window = buffer.as_ptr().align_offset(ALIGN as usize);
    let wanted = (at + len - start) as usize;
    let mut filled = 0;
    while filled < wanted {
        let into = &mut buffer[window + filled..window + span];
        match rustix::io::pread(file, into, start + filled as u64) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            // A short read is the file's end: the next offset would not be aligned.
            Ok(n) if !(n as u64).is_multiple_of(ALIGN) && filled + n < wanted => {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let first = window + (at - start) as usize;
    Ok(Bytes::from(buffer).slice(first..first + len as usize))
}

/// Exactly `len` bytes at `at`, through the page cache, into a new buffer that is not zeroed
/// first.
pub(crate) fn read_at(file: &File, at: u64, len: u64) -> io::Result<Bytes> {
    let len = len as usize;
    let mut buffer = Vec::with_capacity(len);
    while buffer.len() < len {
        let offset = at + buffer.len() as u64;
        match rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buffer), offset) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    buffer.truncate(len);
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    /// A file of `len` bytes that differ from their neighbours, in a new directory of `dir`.
    fn pattern_file(dir: &Path, len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
        let dir = tempfile::tempdir_in(dir).unwrap();
        let path = dir.path().join("object");
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (dir, path, data)
    }

    /// Bodies of ranges that start, end and lie anywhere relative to the alignment and to the
    /// chunks hold exactly the range's bytes, read directly (the temporary directory is on a
    /// disk, or tmpfs, which has direct I/O since Linux 6.6) and through the page cache.
    #[tokio::test]
    async fn bodies_hold_exactly_their_ranges_read_directly_or_not() {
        let len = 2 * CHUNK as usize + 3 * ALIGN as usize + 100;
        let (_keep, path, data) = pattern_file(&std::env::temp_dir(), len);
        let direct = Reader::new(File::open(&path).unwrap(), &path);
        assert!(
            direct.direct.is_some(),
            "no direct reads in the temporary directory"
        );
        let buffered = Reader {
            buffered: File::open(&path).unwrap(),
            direct: None,
        };
        let ranges = [
            0..1,
            1..ALIGN + 1,
            ALIGN - 1..2 * ALIGN + 1,
            CHUNK - 5..CHUNK + 5,
            len as u64 - 3..len as u64,
            7..len as u64 - 7,
        ];
        for (reader, how) in [(direct, "direct"), (buffered, "buffered")] {
            let reader = Arc::new(reader);
            for range in ranges.clone() {
                let read = |at| reader.read(at, (range.end - at).min(CHUNK)).unwrap();
                let got: Vec<u8> = range
                    .clone()
                    .step_by(CHUNK as usize)
                    .flat_map(read)
                    .collect();
                let (start, end) = (range.start as usize, range.end as usize);
                assert!(got == data[start..end], "{how} {range:?}");
            }
        }
        let file = File::open(&path).unwrap();
        let chunks: Vec<Bytes> = body(file, &path, 0..len as u64)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            chunks.iter().map(Bytes::len).collect::<Vec<_>>(),
            [1 << 20, 1 << 20, 12388]
        );
        assert!(chunks.concat() == data);
    }

    /// A range past the file's end (a file shorter than its metadata said) is an error, both
    /// directly and through the page cache, never a buffer of bytes that were not read.
    #[test]
    fn a_read_past_the_end_fails() {
        let (_keep, path, _) = pattern_file(&std::env::temp_dir(), 10_000);
        let reader = Reader::new(File::open(&path).unwrap(), &path);
        let direct = reader
            .direct
            .as_ref()
            .expect("direct reads in the temporary directory");
        for (at, len) in [(9_000, 2_000), (10_000, 1), (8_192, 4_096)] {
            let e = read_direct(direct, at, len).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "direct {at}+{len}");
            let e = read_at(&reader.buffered, at, len).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::UnexpectedEof,
                "buffered {at}+{len}"
            );
        }
    }
}
