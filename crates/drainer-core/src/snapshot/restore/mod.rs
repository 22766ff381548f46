//! Restoring a snapshot into a directory, byte for byte with its metadata; resumable.
//!
//! Safety first: the manifest is downloaded whole, checked against the size and hash that
//! `snapshot.json` records (a manifest changed after the snapshot completed is refused), and
//! validated entry by entry — the same check `verify` applies (see `validate`) — before
//! anything is written: no `..`, no absolute paths, no empty components, walk order without
//! duplicates, every entry's parent a directory entry seen earlier (so no path can go through
//! a symlink or a file that the restore created), and hard links only to files listed before.
//!
//! Files never appear under their final name before they are right: each is written into the
//! staging directory at the destination's root (see [`destination`]), its size and hash
//! checked, its owner, mode and mtime set, and only then renamed into place. Large files are
//! read several parts at once (see [`fetch`]). Hard links are made once every file is in
//! place (a link into the staging directory, renamed into place), and directory metadata is
//! applied last, children first.
//!
//! **Resumption.** A restore killed at any point (SIGKILL included), or one that failed, leaves
//! its staging directory with its marker; the same command continues it: directories and
//! symlinks already there are kept, a file already under its final name is kept when its size
//! and content hash are the entry's (its metadata is set again), anything else is written
//! again, and the marker goes only when everything, metadata included, is in place. A
//! destination holding anything else is written into only with `--force`, which replaces
//! what the snapshot names and leaves the rest.

mod destination;
mod fetch;

pub use destination::{Found, Marker, inspect};

use super::catalog::CheckedManifest;
use super::layout::{SnapshotSelector, VolumeLayout};
use super::manifest::{Entry, EntryKind};
use super::progress::Progress;
use super::{Error, Result, catalog, scan};
use crate::store::Store;
use crate::volume::VolumeId;
use destination::{Lock, Staging};
use fetch::{Fetcher, Wanted};
use futures::FutureExt;
use futures::stream::TryStreamExt;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Tuning of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Restore into a directory that holds something else, replacing entries the snapshot
    /// holds.
    pub force: bool,
    /// Bytes read in one request of a large file (a power of two).
    pub part_size: u64,
    /// Memory for file data in flight.
    pub buffer_bytes: u64,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: String,
    /// Whether it continued an unfinished restore.
    pub resumed: bool,
    /// Regular files in place (written, or found already right).
    pub files: u64,
    /// Bytes in those files.
    pub bytes: u64,
    /// Files that were already in place with the right size and hash (not written again).
    pub kept: u64,
    /// Hard links made (further names of files restored).
    pub hard_links: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Special files the snapshot lists as skipped.
    pub skipped: u64,
    /// Files the snapshot lists as unreadable at copy time (it has no content for them).
    pub unreadable: u64,
}

/// The snapshot a restore into `dest` means: the one an unfinished restore of `volume` there
/// was restoring (unless `selector` names another by id), otherwise `selector`.
pub fn continuing(
    dest: &Path,
    volume: &VolumeId,
    selector: &SnapshotSelector,
) -> Result<SnapshotSelector> {
    let Found::Unfinished { marker, .. } = inspect(dest)? else {
        return Ok(selector.clone());
    };
    if marker.volume != volume.to_string() {
        return Ok(selector.clone());
    }
    match selector {
        SnapshotSelector::Id(id) if id.as_str() != marker.snapshot => Ok(selector.clone()),
        _ => {
            tracing::info!(dest = %dest.display(), snapshot = %marker.snapshot, "continuing the unfinished restore");
            marker
                .snapshot
                .parse()
                .map(SnapshotSelector::Id)
                .map_err(|reason| Error::Destination {
                    path: dest.to_owned(),
                    reason: format!("its unfinished restore names no snapshot: {reason}"),
                })
        }
    }
}

/// Restores `selector` of `volume` into `dest` (continuing an unfinished restore there).
pub async fn restore(
    store: &Store,
    volume: &VolumeId,
    selector: &SnapshotSelector,
    dest: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    restore_with_progress(store, volume, selector, dest, options, &Progress::default()).await
}

/// [`restore`], counting into `progress` each regular file as it is in place (written, or
/// found already right) with its bytes, against the snapshot's totals (set once its summary is
/// read), for a caller that shows how far the restore has got.
#[tracing::instrument(skip_all, fields(volume = %volume, dest = %dest.display()))]
pub async fn restore_with_progress(
    store: &Store,
    volume: &VolumeId,
    selector: &SnapshotSelector,
    dest: &Path,
    options: &RestoreOptions,
    progress: &Progress,
) -> Result<RestoreSummary> {
    let selector = continuing(dest, volume, selector)?;
    let summary = catalog::resolve(store, volume, &selector).await?;
    progress.set_totals(summary.files, summary.bytes);
    let layout = VolumeLayout::new(store.root(), volume);
    let manifest = CheckedManifest::open(store, &layout, &summary).await?;
    let _lock = Lock::take(dest)?;
    let marker = Marker {
        volume: volume.to_string(),
        snapshot: summary.snapshot.clone(),
    };
    let staging = Staging::open(dest, &marker, &manifest.root_names, options.force)?;
    let target = Target {
        layout: &layout,
        dest,
        staging: &staging,
        root_owner: rustix::process::geteuid().is_root(),
        fetcher: Fetcher::new(store.clone(), options.part_size, options.buffer_bytes)?,
    };
    let mut report = RestoreSummary {
        snapshot: summary.snapshot.clone(),
        resumed: staging.resumed(),
        ..RestoreSummary::default()
    };
    let (dirs, links) = target
        .write_entries(&manifest, options.concurrency, &mut report, progress)
        .await?;
    report.hard_links = target.link_all(links).await?;
    let root_owner = target.root_owner;
    finish(dest, root_owner, staging, &dirs).await?;
    Ok(report)
}

/// Where and how a restore writes.
struct Target<'a> {
    layout: &'a VolumeLayout,
    dest: &'a Path,
    staging: &'a Staging,
    root_owner: bool,
    fetcher: Fetcher,
}

/// An entry whose place is ready; files still need their bytes, links their file.
enum Prepared {
    File(Entry),
    Link(Entry),
    Done(Written),
}

enum Written {
    File { size: u64, kept: bool },
    Link(Entry),
    Dir(Entry),
    Symlink,
    Skipped,
    Unreadable,
}

impl Target<'_> {
    /// Creates directories and symlinks in manifest order and writes files (several at
    /// once); returns the directory entries, whose metadata is applied once all is in place,
    /// and the hard links to make once every file is.
    async fn write_entries(
        &self,
        manifest: &CheckedManifest,
        concurrency: usize,
        report: &mut RestoreSummary,
        progress: &Progress,
    ) -> Result<(Vec<Entry>, Vec<Entry>)> {
        let (mut dirs, mut links) = (Vec::new(), Vec::new());
        let writes = manifest
            .entries()?
            .and_then(|entry| futures::future::ready(self.prepare(entry)))
            .map_ok(|prepared| self.write_prepared(prepared).boxed())
            .try_buffered(concurrency);
        futures::pin_mut!(writes);
        while let Some(done) = writes.try_next().await? {
            match done {
                Written::File { size, kept } => {
                    progress.file_done(size, !kept);
                    report.files += 1;
                    report.bytes += size;
                    report.kept += u64::from(kept);
                }
                Written::Link(entry) => links.push(entry),
                Written::Dir(entry) => {
                    report.dirs += 1;
                    dirs.push(entry);
                }
                Written::Symlink => report.symlinks += 1,
                Written::Skipped => report.skipped += 1,
                Written::Unreadable => report.unreadable += 1,
            }
        }
        Ok((dirs, links))
    }

    /// Creates directories and symlinks in manifest order, and clears the way for files.
    fn prepare(&self, entry: Entry) -> Result<Prepared> {
        let path = scan::absolute(self.dest, &entry.path);
        match entry.kind {
            EntryKind::Dir => {
                if entry.path != b"." {
                    ensure_dir(&path)?;
                }
                destination::writable_dir(&path, self.root_owner)?;
                Ok(Prepared::Done(Written::Dir(entry)))
            }
            EntryKind::Symlink => {
                let target = OsStr::from_bytes(entry.target.as_deref().unwrap_or_default());
                let same = std::fs::read_link(&path).is_ok_and(|t| t.as_os_str() == target);
                if !same {
                    clear_non_dir(&path)?;
                    std::os::unix::fs::symlink(target, &path)
                        .map_err(|e| Error::write(&path, e))?;
                }
                fetch::apply_metadata(&path, &entry, self.root_owner, true)?;
                Ok(Prepared::Done(Written::Symlink))
            }
            EntryKind::File if entry.content.is_none() => {
                tracing::warn!(path = %path.display(), reason = ?entry.unreadable, "not restored: the file could not be read when the snapshot was taken");
                Ok(Prepared::Done(Written::Unreadable))
            }
            EntryKind::File => {
                refuse_dir(&path)?;
                if entry.link.is_some() {
                    Ok(Prepared::Link(entry))
                } else {
                    Ok(Prepared::File(entry))
                }
            }
            _ => Ok(Prepared::Done(Written::Skipped)),
        }
    }

    async fn write_prepared(&self, prepared: Prepared) -> Result<Written> {
        let entry = match prepared {
            Prepared::Done(written) => return Ok(written),
            Prepared::Link(entry) => return Ok(Written::Link(entry)),
            Prepared::File(entry) => entry,
        };
        let path = scan::absolute(self.dest, &entry.path);
        let Some(content) = entry.content.clone() else {
            return Err(Error::UnsafePath {
                path: String::from_utf8_lossy(&entry.path).into_owned(),
                reason: "a file entry without content".into(),
            });
        };
        let size = entry.size;
        let (file, temp) = match fetch::already_in_place(&path, &entry, &content.blake3).await? {
            Some(file) => (file, None),
            None => {
                let (file, temp) = self.fetch(&entry, &path, &content).await?;
                (file, Some(temp))
            }
        };
        let (root_owner, kept) = (self.root_owner, temp.is_none());
        tokio::task::spawn_blocking(move || {
            let placed = fetch::set_file_metadata(&file, &path, &entry, root_owner).and_then(
                |()| match &temp {
                    Some(temp) => std::fs::rename(temp, &path).map_err(|e| Error::write(&path, e)),
                    None => Ok(()),
                },
            );
            if placed.is_err()
                && let Some(temp) = &temp
            {
                let _ = std::fs::remove_file(temp);
            }
            placed.map(|()| Written::File { size, kept })
        })
        .await
        .map_err(|e| Error::write(self.dest, std::io::Error::other(e)))?
    }

    /// Writes the file's object into a new temporary file, checked; returns it open, and its
    /// path.
    async fn fetch(
        &self,
        entry: &Entry,
        path: &Path,
        content: &super::manifest::Content,
    ) -> Result<(File, PathBuf)> {
        let key = self
            .layout
            .object(&content.object)
            .ok_or_else(|| Error::UnsafePath {
                path: String::from_utf8_lossy(&entry.path).into_owned(),
                reason: format!(
                    "object key {:?} is outside the volume's snapshots",
                    content.object
                ),
            })?;
        let temp = self.staging.temp_path();
        let wanted = Wanted {
            key: &key,
            temp: &temp,
            path,
            entry,
            expected: &content.blake3,
        };
        match self.fetcher.write(&wanted).await {
            Ok(file) => Ok((file, temp)),
            Err(e) => {
                let _ = std::fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Makes every hard link (a link of its first file into the staging directory, renamed
    /// into place; a copy where the filesystem has no hard links). Returns how many.
    async fn link_all(&self, links: Vec<Entry>) -> Result<u64> {
        let (dest, root_owner) = (self.dest.to_owned(), self.root_owner);
        let temps: Vec<PathBuf> = links.iter().map(|_| self.staging.temp_path()).collect();
        tokio::task::spawn_blocking(move || {
            for (entry, temp) in links.iter().zip(temps) {
                link_one(&dest, entry, &temp, root_owner)?;
            }
            Ok(links.len() as u64)
        })
        .await
        .map_err(|e| Error::write(self.dest, std::io::Error::other(e)))?
    }
}

/// Applies directory metadata (children first), removes the staging directory and its marker,
/// sets the root's metadata again (the removal changed its mtime), and makes the tree durable
/// in one `syncfs(2)`.
async fn finish(dest: &Path, root_owner: bool, staging: Staging, dirs: &[Entry]) -> Result<()> {
    let apply = |entry: &Entry| {
        fetch::apply_metadata(&scan::absolute(dest, &entry.path), entry, root_owner, false)
    };
    for entry in dirs.iter().rev() {
        apply(entry)?;
    }
    staging.finish()?;
    if let Some(root) = dirs.iter().find(|e| e.path == b".") {
        apply(root)?;
    }
    let owned = dest.to_owned();
    tokio::task::spawn_blocking(move || sync_filesystem(&owned))
        .await
        .map_err(|e| Error::write(dest, std::io::Error::other(e)))?
}

/// Makes the hard link `entry` to its first file, unless it is already that file.
fn link_one(dest: &Path, entry: &Entry, temp: &Path, root_owner: bool) -> Result<()> {
    let first = scan::absolute(dest, entry.link.as_deref().unwrap_or_default());
    let path = scan::absolute(dest, &entry.path);
    if fetch::same_file(&first, &path) {
        return Ok(());
    }
    refuse_dir(&path)?;
    match std::fs::hard_link(&first, temp) {
        Ok(()) => {}
        Err(e) if no_hard_links(&e) => {
            tracing::warn!(path = %path.display(), error = %e, "the filesystem refuses a hard link; restoring a copy");
            fetch::copy_of(&first, &temp.to_owned(), entry, root_owner)?;
        }
        Err(e) => return Err(Error::write(&path, e)),
    }
    std::fs::rename(temp, &path).map_err(|e| {
        let _ = std::fs::remove_file(temp);
        Error::write(&path, e)
    })
}

/// Whether a failed `link(2)` means the filesystem cannot make this hard link at all.
fn no_hard_links(e: &std::io::Error) -> bool {
    use rustix::io::Errno;
    let errno = e.raw_os_error().map(Errno::from_raw_os_error);
    matches!(
        errno,
        Some(Errno::PERM | Errno::NOTSUP | Errno::MLINK | Errno::XDEV)
    )
}

/// Makes the restored tree durable in one `syncfs(2)` rather than one fsync per file.
fn sync_filesystem(dest: &Path) -> Result<()> {
    let dir = File::open(dest).map_err(|e| Error::write(dest, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::write(dest, e.into()))
}

/// A directory at `path`: kept if there, created if not; anything else in the way is
/// replaced (the destination was empty, holds this restore, or `--force` was given).
fn ensure_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => {
            std::fs::remove_file(path).map_err(|e| Error::write(path, e))?;
            std::fs::create_dir(path).map_err(|e| Error::write(path, e))
        }
        Err(_) => std::fs::create_dir(path).map_err(|e| Error::write(path, e)),
    }
}

/// Refuses a directory where a file or link goes (it is never the restore's own).
fn refuse_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Error::write(
            path,
            std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "a directory is in the way",
            ),
        )),
        _ => Ok(()),
    }
}

/// Clears the way for a symlink: a directory is refused, anything else removed.
fn clear_non_dir(path: &Path) -> Result<()> {
    refuse_dir(path)?;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::write(path, e)),
        _ => Ok(()),
    }
}
