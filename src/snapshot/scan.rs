//! Walking a source directory in manifest order, without following symlinks.
//!
//! The walk runs on a blocking thread and hands entries over a bounded channel, so memory
//! stays bounded by the channel and the widest directory, whatever the tree's size. It reads
//! metadata only (and symlink targets); file contents are read by the copy pipeline.

use super::manifest::{Entry, EntryKind};
use super::{Error, Result};
use std::ffi::OsStr;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

/// Entries buffered between the walk and the copy pipeline.
const WALK_QUEUE: usize = 1024;

/// Starts walking `root` on a blocking thread; entries arrive in [`super::manifest::path_order`].
/// The last item is an error if the walk failed.
pub fn walk(root: PathBuf) -> mpsc::Receiver<Result<Entry>> {
    let (tx, rx) = mpsc::channel(WALK_QUEUE);
    tokio::task::spawn_blocking(move || {
        let walker = walkdir::WalkDir::new(&root)
            .follow_links(false)
            .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
        for item in walker {
            let entry = item
                .map_err(|err| walk_error(&root, err))
                .and_then(|dirent| scanned_entry(&root, dirent.path(), dirent.metadata()));
            let failed = entry.is_err();
            if tx.blocking_send(entry).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Counts regular files and their bytes under `root` (for progress totals); errors are left
/// for the real walk to report.
pub fn count(root: &Path) -> (u64, u64) {
    walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(files, bytes), m| (files + 1, bytes + m.len()))
}

fn scanned_entry(
    root: &Path,
    path: &Path,
    meta: std::result::Result<Metadata, impl Into<std::io::Error>>,
) -> Result<Entry> {
    let meta = meta.map_err(|e| Error::read(path, e.into()))?;
    let kind = entry_kind(&meta);
    let target = match kind {
        EntryKind::Symlink => Some(
            std::fs::read_link(path)
                .map_err(|e| Error::read(path, e))?
                .into_os_string()
                .into_vec(),
        ),
        _ => None,
    };
    Ok(Entry {
        path: relative_bytes(root, path),
        kind,
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        size: if kind == EntryKind::Dir {
            0
        } else {
            meta.len()
        },
        ino: meta.ino(),
        content: None,
        target,
    })
}

fn entry_kind(meta: &Metadata) -> EntryKind {
    let t = meta.file_type();
    if t.is_dir() {
        EntryKind::Dir
    } else if t.is_symlink() {
        EntryKind::Symlink
    } else if t.is_fifo() {
        EntryKind::Fifo
    } else if t.is_socket() {
        EntryKind::Socket
    } else if t.is_char_device() {
        EntryKind::CharDevice
    } else if t.is_block_device() {
        EntryKind::BlockDevice
    } else {
        EntryKind::File
    }
}

/// The manifest path of `path` under `root`: slash-separated bytes, `.` for the root.
fn relative_bytes(root: &Path, path: &Path) -> Vec<u8> {
    match path.strip_prefix(root) {
        Ok(rel) if rel.as_os_str().is_empty() => b".".to_vec(),
        Ok(rel) => rel.as_os_str().as_bytes().to_vec(),
        Err(_) => path.as_os_str().as_bytes().to_vec(),
    }
}

/// The absolute path of a manifest path under `root`.
pub fn absolute(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." {
        root.to_owned()
    } else {
        root.join(OsStr::from_bytes(rel))
    }
}

fn walk_error(root: &Path, err: walkdir::Error) -> Error {
    let path = err.path().unwrap_or(root).to_owned();
    let io = err
        .into_io_error()
        .unwrap_or_else(|| std::io::Error::other("filesystem loop"));
    Error::read(&path, io)
}

use std::os::unix::ffi::OsStringExt;
