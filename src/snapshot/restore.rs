//! Restoring a snapshot into a directory, byte for byte with its metadata.
//!
//! Safety first: the manifest is downloaded whole, checked against the size and hash that
//! `snapshot.json` records (a manifest changed after the snapshot completed is refused), and
//! validated entry by entry — the same check `verify` applies (see `validate`) — before
//! anything is written: no `..`, no absolute paths, no empty components, walk order without
//! duplicates, and every entry's parent a directory entry seen earlier, so no path can go
//! through a symlink (or a file) that the restore created.
//!
//! Files never appear under their final name before they are right: each is written into a
//! staging directory at the destination's root (a name no root entry of the manifest has,
//! created with `O_EXCL`), its hash and size checked, its owner, mode and mtime set, and only
//! then renamed into place. A failed restore (a bad object, a full disk) leaves no wrong file
//! that looks right, and its staging directory is removed. Directory metadata is applied last,
//! children first. A later resumable restore can trust any file under its final name.

use super::catalog::CheckedManifest;
use super::layout::VolumeLayout;
use super::manifest::{Entry, EntryKind};
use super::{Error, Result, catalog, scan, sparse};
use crate::store::Store;
use crate::volume::VolumeId;
use filetime::FileTime;
use futures::FutureExt;
use futures::stream::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use std::ffi::OsStr;
use std::fs::{File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Tuning of a restore.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Restore into a non-empty directory, replacing entries the snapshot holds.
    pub force: bool,
}

/// What a restore did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// The snapshot restored.
    pub snapshot: String,
    /// Regular files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Special files the snapshot lists as skipped.
    pub skipped: u64,
    /// Files the snapshot lists as unreadable at copy time (it has no content for them).
    pub unreadable: u64,
}

/// Restores `selector` of `volume` into `dest`.
#[tracing::instrument(skip_all, fields(volume = %volume, dest = %dest.display()))]
pub async fn restore(
    store: &Store,
    volume: &VolumeId,
    selector: &super::SnapshotSelector,
    dest: &Path,
    options: &RestoreOptions,
) -> Result<RestoreSummary> {
    let summary = catalog::resolve(store, volume, selector).await?;
    let layout = VolumeLayout::new(store.root(), volume);
    let manifest = CheckedManifest::open(store, &layout, &summary).await?;
    prepare_destination(dest, options.force)?;
    let staging = Staging::create(dest, &manifest.root_names)?;
    let mut report = RestoreSummary {
        snapshot: summary.snapshot.clone(),
        ..RestoreSummary::default()
    };
    let root_owner = rustix::process::geteuid().is_root();
    let target = Target {
        store,
        layout: &layout,
        dest,
        staging: &staging,
        force: options.force,
        root_owner,
    };
    let dirs = target
        .write_entries(&manifest, options.concurrency, &mut report)
        .await?;
    staging.remove()?;
    for entry in dirs.iter().rev() {
        apply_metadata(&scan::absolute(dest, &entry.path), entry, root_owner, false)?;
    }
    sync_filesystem(dest)?;
    Ok(report)
}

/// Where and how a restore writes.
struct Target<'a> {
    store: &'a Store,
    layout: &'a VolumeLayout,
    dest: &'a Path,
    staging: &'a Staging,
    force: bool,
    root_owner: bool,
}

impl Target<'_> {
    /// Creates directories and symlinks in manifest order and writes files (several at
    /// once); returns the directory entries, whose metadata is applied once all is in place.
    async fn write_entries(
        &self,
        manifest: &CheckedManifest,
        concurrency: usize,
        report: &mut RestoreSummary,
    ) -> Result<Vec<Entry>> {
        let mut dirs = Vec::new();
        let writes = manifest
            .entries()?
            .and_then(|entry| {
                futures::future::ready(prepare(self.dest, entry, self.force, self.root_owner))
            })
            .map_ok(|prepared| write_prepared(self, prepared).boxed())
            .try_buffered(concurrency);
        futures::pin_mut!(writes);
        while let Some(done) = writes.try_next().await? {
            match done {
                Written::File(size) => {
                    report.files += 1;
                    report.bytes += size;
                }
                Written::Dir(entry) => {
                    report.dirs += 1;
                    dirs.push(entry);
                }
                Written::Symlink => report.symlinks += 1,
                Written::Skipped => report.skipped += 1,
                Written::Unreadable => report.unreadable += 1,
            }
        }
        Ok(dirs)
    }
}

/// The directory at the destination's root where files are written before they are renamed
/// into place; removed when dropped (a failed restore leaves nothing of it).
struct Staging {
    dir: std::path::PathBuf,
    next: std::sync::atomic::AtomicU64,
}

impl Staging {
    /// Creates a staging directory whose name no root entry of the manifest has.
    fn create(dest: &Path, root_names: &std::collections::HashSet<Vec<u8>>) -> Result<Self> {
        let mut last = None;
        for _ in 0..16 {
            let name = format!(".drainer-restore-{:016x}", rand::random::<u64>());
            if root_names.contains(name.as_bytes()) {
                continue;
            }
            let dir = dest.join(&name);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    return Ok(Self {
                        dir,
                        next: Default::default(),
                    });
                }
                Err(e) => last = Some(Error::write(&dir, e)),
            }
        }
        Err(last.unwrap_or_else(|| Error::Destination {
            path: dest.to_owned(),
            reason: "no free name for a staging directory".into(),
        }))
    }

    /// A fresh temporary path inside the staging directory.
    fn temp_path(&self) -> std::path::PathBuf {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir.join(n.to_string())
    }

    /// Removes the (empty) staging directory once every file is in place.
    fn remove(&self) -> Result<()> {
        std::fs::remove_dir(&self.dir).map_err(|e| Error::write(&self.dir, e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes the restored tree durable in one `syncfs(2)` rather than one fsync per file.
fn sync_filesystem(dest: &Path) -> Result<()> {
    let dir = File::open(dest).map_err(|e| Error::write(dest, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| Error::write(dest, e.into()))
}

fn prepare_destination(dest: &Path, force: bool) -> Result<()> {
    let problem = |reason: &str| Error::Destination {
        path: dest.to_owned(),
        reason: reason.to_owned(),
    };
    match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dest).map_err(|e| Error::write(dest, e))
        }
        Err(e) => Err(problem(&e.to_string())),
        Ok(meta) if !meta.is_dir() => Err(problem("not a directory")),
        Ok(_) => {
            let mut children = std::fs::read_dir(dest).map_err(|e| problem(&e.to_string()))?;
            if children.next().is_some() && !force {
                Err(problem("not empty (use --force to restore into it anyway)"))
            } else {
                Ok(())
            }
        }
    }
}

/// An entry whose place is ready; files still need their bytes.
enum Prepared {
    File(Entry),
    Done(Written),
}

enum Written {
    File(u64),
    Dir(Entry),
    Symlink,
    Skipped,
    Unreadable,
}

/// Creates directories and symlinks in manifest order, and clears the way for files.
fn prepare(dest: &Path, entry: Entry, force: bool, root_owner: bool) -> Result<Prepared> {
    let path = scan::absolute(dest, &entry.path);
    match entry.kind {
        EntryKind::Dir => {
            if entry.path != b"." {
                ensure_dir(&path, force)?;
            }
            Ok(Prepared::Done(Written::Dir(entry)))
        }
        EntryKind::Symlink => {
            clear_non_dir(&path, force)?;
            let target = OsStr::from_bytes(entry.target.as_deref().unwrap_or_default());
            std::os::unix::fs::symlink(target, &path).map_err(|e| Error::write(&path, e))?;
            apply_metadata(&path, &entry, root_owner, true)?;
            Ok(Prepared::Done(Written::Symlink))
        }
        EntryKind::File if entry.content.is_none() => {
            tracing::warn!(path = %path.display(), reason = ?entry.unreadable, "not restored: the file could not be read when the snapshot was taken");
            Ok(Prepared::Done(Written::Unreadable))
        }
        EntryKind::File => {
            clear_non_dir(&path, force)?;
            Ok(Prepared::File(entry))
        }
        _ => Ok(Prepared::Done(Written::Skipped)),
    }
}

fn ensure_dir(path: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) if force => {
            std::fs::remove_file(path).map_err(|e| Error::write(path, e))?;
            std::fs::create_dir(path).map_err(|e| Error::write(path, e))
        }
        _ => std::fs::create_dir(path).map_err(|e| Error::write(path, e)),
    }
}

fn clear_non_dir(path: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Error::write(
            path,
            std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "a directory is in the way",
            ),
        )),
        Ok(_) if force => std::fs::remove_file(path).map_err(|e| Error::write(path, e)),
        _ => Ok(()),
    }
}

async fn write_prepared(target: &Target<'_>, prepared: Prepared) -> Result<Written> {
    let Target {
        store,
        layout,
        dest,
        staging,
        root_owner,
        ..
    } = *target;
    let entry = match prepared {
        Prepared::Done(written) => return Ok(written),
        Prepared::File(entry) => entry,
    };
    let path = scan::absolute(dest, &entry.path);
    let Some(content) = entry.content.clone() else {
        return Err(Error::UnsafePath {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            reason: "a file entry without content".into(),
        });
    };
    let key = layout
        .object(&content.object)
        .ok_or_else(|| Error::UnsafePath {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            reason: format!(
                "object key {:?} is outside the volume's snapshots",
                content.object
            ),
        })?;
    let temp = staging.temp_path();
    let written = write_verified(store, &key, &temp, &path, &entry, &content.blake3).await;
    let file = match written {
        Ok(file) => file,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    tokio::task::spawn_blocking(move || {
        let placed = set_file_metadata(&file, &path, &entry, root_owner)
            .and_then(|()| std::fs::rename(&temp, &path).map_err(|e| Error::write(&path, e)));
        if placed.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        placed.map(|()| Written::File(entry.size))
    })
    .await
    .map_err(|e| Error::write(dest, std::io::Error::other(e)))?
}

/// Writes the object at `key` into `temp` (a new file), checking its size and hash against
/// the entry of `path`; returns the open file.
async fn write_verified(
    store: &Store,
    key: &object_store::path::Path,
    temp: &Path,
    path: &Path,
    entry: &Entry,
    expected: &str,
) -> Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .mode(0o600)
        .open(temp)
        .map_err(|e| Error::write(path, e))?;
    let mut content = match &entry.extents {
        Some(extents) => {
            // A sparse file: the full size first (all hole), then each extent at its place.
            file.set_len(entry.size)
                .map_err(|e| Error::write(path, e))?;
            Content::Sparse(sparse::LogicalHasher::new(extents))
        }
        None => Content::Dense(blake3::Hasher::new()),
    };
    let stored_len = entry
        .extents
        .as_deref()
        .map_or(entry.size, sparse::stored_len);
    let objects = store.objects().clone();
    let body = store
        .call("get", key, objects.get(key))
        .await?
        .into_stream();
    futures::pin_mut!(body);
    let mut writer = (file, content);
    let mut written = 0u64;
    while let Some(chunk) = store
        .call("read", key, body.next().map(|c| c.transpose()))
        .await?
    {
        let (file, content) = writer;
        let target = path.to_owned();
        written += chunk.len() as u64;
        writer = tokio::task::spawn_blocking(move || {
            let mut file = file;
            let mut content = content;
            content
                .write(&mut file, &chunk)
                .map_err(|e| Error::write(&target, e))?;
            Ok::<_, Error>((file, content))
        })
        .await
        .map_err(|e| Error::write(path, std::io::Error::other(e)))??;
    }
    let (file, last) = writer;
    content = last;
    if written != stored_len {
        return Err(Error::SizeMismatch {
            path: path.display().to_string(),
            object: key.to_string(),
            expected: stored_len,
            actual: written,
        });
    }
    let size = entry.size;
    let actual = tokio::task::spawn_blocking(move || content.finalize(size))
        .await
        .map_err(|e| Error::write(path, std::io::Error::other(e)))?
        .to_hex()
        .to_string();
    if actual != expected {
        return Err(Error::HashMismatch {
            path: path.display().to_string(),
            object: key.to_string(),
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(file)
}

/// How a restored file's bytes are written and hashed: in order (a plain object), or at their
/// extents' offsets with the holes hashed as zeros (a sparse file).
enum Content {
    Dense(blake3::Hasher),
    Sparse(sparse::LogicalHasher),
}

impl Content {
    fn write(&mut self, file: &mut File, chunk: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        match self {
            Content::Dense(hasher) => {
                hasher.update(chunk);
                file.write_all(chunk)
            }
            Content::Sparse(hasher) => hasher
                .data(chunk)
                .into_iter()
                .try_for_each(|(offset, piece)| file.write_all_at(piece, offset)),
        }
    }

    fn finalize(self, size: u64) -> blake3::Hash {
        match self {
            Content::Dense(hasher) => hasher.finalize(),
            Content::Sparse(hasher) => hasher.finalize(size),
        }
    }
}

fn set_file_metadata(file: &File, path: &Path, entry: &Entry, root_owner: bool) -> Result<()> {
    let io = |e| Error::write(path, e);
    if root_owner {
        std::os::unix::fs::fchown(file, Some(entry.uid), Some(entry.gid)).map_err(io)?;
    }
    file.set_permissions(Permissions::from_mode(entry.mode & 0o7777))
        .map_err(io)?;
    let mtime = FileTime::from_unix_time(
        entry.mtime_ns.div_euclid(1_000_000_000),
        entry.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    filetime::set_file_handle_times(file, None, Some(mtime)).map_err(io)
}

/// Owner, mode and mtime of a directory or symlink (symlinks have no mode of their own).
fn apply_metadata(path: &Path, entry: &Entry, root_owner: bool, is_link: bool) -> Result<()> {
    let io = |e| Error::write(path, e);
    if root_owner {
        std::os::unix::fs::lchown(path, Some(entry.uid), Some(entry.gid)).map_err(io)?;
    }
    let mtime = FileTime::from_unix_time(
        entry.mtime_ns.div_euclid(1_000_000_000),
        entry.mtime_ns.rem_euclid(1_000_000_000) as u32,
    );
    if is_link {
        return filetime::set_symlink_file_times(path, mtime, mtime).map_err(io);
    }
    std::fs::set_permissions(path, Permissions::from_mode(entry.mode & 0o7777)).map_err(io)?;
    filetime::set_file_mtime(path, mtime).map_err(io)
}
