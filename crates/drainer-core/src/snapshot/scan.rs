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

/// Directories listed ahead of the walk, at most.
const LISTED_AHEAD: usize = 64;
/// Threads listing directories (reading their entries and each entry's metadata) ahead of the
/// walk: on a cold cache, a directory's inodes are read while the walk emits the one before.
const LISTERS: usize = 4;

/// Starts walking `root` on a blocking thread; entries arrive in [`super::manifest::path_order`].
/// The last item is an error if the walk failed.
pub fn walk(root: PathBuf) -> mpsc::Receiver<Result<Entry>> {
    let (tx, rx) = mpsc::channel(WALK_QUEUE);
    tokio::task::spawn_blocking(move || Walker::new(root, tx).run());
    rx
}

/// A directory's entries, sorted by name, each with its metadata (not following symlinks).
type Listing = std::io::Result<Vec<(std::ffi::OsString, std::io::Result<Metadata>)>>;

fn list(dir: &Path) -> Listing {
    let mut children = std::fs::read_dir(dir)?
        .map(|child| child.map(|c| (c.file_name(), c.metadata())))
        .collect::<std::io::Result<Vec<_>>>()?;
    children.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(children)
}

/// A depth-first walk in name order whose directories are listed ahead by [`LISTERS`] threads.
struct Walker {
    root: PathBuf,
    out: mpsc::Sender<Result<Entry>>,
    jobs: std::sync::mpsc::Sender<(PathBuf, std::sync::mpsc::SyncSender<Listing>)>,
    ahead: std::collections::HashMap<PathBuf, std::sync::mpsc::Receiver<Listing>>,
}

impl Walker {
    fn new(root: PathBuf, out: mpsc::Sender<Result<Entry>>) -> Self {
        let (jobs, queue) = std::sync::mpsc::channel::<(PathBuf, std::sync::mpsc::SyncSender<_>)>();
        let queue = std::sync::Arc::new(std::sync::Mutex::new(queue));
        for _ in 0..LISTERS {
            let queue = std::sync::Arc::clone(&queue);
            std::thread::spawn(move || {
                loop {
                    let job = queue.lock().expect("lister queue").recv();
                    let Ok((dir, listed)) = job else { return };
                    let _ = listed.send(list(&dir));
                }
            });
        }
        Self {
            root,
            out,
            jobs,
            ahead: Default::default(),
        }
    }

    /// Sends one entry; `false` when the walk must stop (it failed, or nobody listens).
    fn send(&self, entry: Result<Entry>) -> bool {
        let failed = entry.is_err();
        self.out.blocking_send(entry).is_ok() && !failed
    }

    /// `dir`'s listing (listed ahead, or now), after asking for its subdirectories' listings.
    fn listing(
        &mut self,
        dir: &Path,
    ) -> Result<Vec<(std::ffi::OsString, std::io::Result<Metadata>)>> {
        let listed = match self.ahead.remove(dir) {
            Some(ready) => ready.recv().unwrap_or_else(|_| list(dir)),
            None => list(dir),
        };
        let children = listed.map_err(|e| Error::read(dir, e))?;
        for (name, meta) in &children {
            if self.ahead.len() >= LISTED_AHEAD {
                break;
            }
            if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                let sub = dir.join(name);
                let (listed, ready) = std::sync::mpsc::sync_channel(1);
                if self.jobs.send((sub.clone(), listed)).is_ok() {
                    self.ahead.insert(sub, ready);
                }
            }
        }
        Ok(children)
    }

    fn run(mut self) {
        let root = self.root.clone();
        let top = std::fs::symlink_metadata(&root);
        if !self.send(scanned_entry(&root, &root, top)) {
            return;
        }
        let mut stack = match self.listing(&root) {
            Ok(children) => vec![(root.clone(), children.into_iter())],
            Err(e) => {
                self.send(Err(e));
                return;
            }
        };
        while let Some((dir, children)) = stack.last_mut() {
            let Some((name, meta)) = children.next() else {
                stack.pop();
                continue;
            };
            let path = dir.join(&name);
            let entry = scanned_entry(&root, &path, meta);
            let is_dir = matches!(&entry, Ok(e) if e.kind == EntryKind::Dir);
            if !self.send(entry) {
                return;
            }
            if is_dir {
                match self.listing(&path) {
                    Ok(children) => stack.push((path, children.into_iter())),
                    Err(e) => {
                        self.send(Err(e));
                        return;
                    }
                }
            }
        }
    }
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
        unreadable: None,
        extents: None,
        blocks: meta.blocks(),
        nlink: if kind == EntryKind::File && meta.nlink() > 1 {
            meta.nlink()
        } else {
            0
        },
        link: None,
        dev: meta.dev(),
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

use std::os::unix::ffi::OsStringExt;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry once, in manifest path order, also where directories outnumber the ones
    /// listed ahead and names sort around the separator (`a`, `a-`, `a.b`, `a/…`).
    #[tokio::test]
    async fn the_walk_lists_every_entry_once_in_path_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("src");
        for top in ["a", "a-", "a.b", "b"] {
            for i in 0..(LISTED_AHEAD + 5) {
                let sub = root.join(top).join(format!("d{i:03}")).join("deeper");
                std::fs::create_dir_all(&sub).unwrap();
                std::fs::write(sub.join("f"), b"x").unwrap();
            }
            std::fs::write(root.join(format!("{top}-file")), b"y").unwrap();
        }
        std::os::unix::fs::symlink("a", root.join("link")).unwrap();
        let mut rx = walk(root.clone());
        let mut paths = Vec::new();
        while let Some(entry) = rx.recv().await {
            paths.push(entry.unwrap().path);
        }
        let expected = 1 + 4 * (1 + (LISTED_AHEAD + 5) * 3 + 1) + 1;
        assert_eq!(paths.len(), expected);
        assert!(
            paths
                .windows(2)
                .all(|w| super::super::manifest::path_order(&w[0], &w[1]).is_lt()),
            "strictly increasing path order"
        );
        assert_eq!(paths[0], b".");
    }
}
