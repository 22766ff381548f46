//! Restoring a snapshot into a directory, byte for byte with its metadata.
//!
//! Safety first: every manifest path is checked before anything is written — no `..`, no
//! absolute paths, no empty components, and every entry's parent must be a directory entry
//! seen earlier in the manifest, so no path can go through a symlink (or a file) that the
//! restore created. Files are created with `O_NOFOLLOW`, each hash is verified while writing,
//! and directory metadata is applied last, children first.

use super::layout::VolumeLayout;
use super::manifest::{Entry, EntryKind};
use super::{Error, Result, catalog, scan};
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
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
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
    prepare_destination(dest, options.force)?;
    let layout = VolumeLayout::new(store.root(), volume);
    let id = summary.snapshot.parse().expect("resolved ids are valid");
    let entries = catalog::read_manifest(store, &layout, &id).await?;
    let mut guard = PathGuard::default();
    let mut dirs = Vec::new();
    let mut report = RestoreSummary {
        snapshot: summary.snapshot.clone(),
        ..RestoreSummary::default()
    };
    let root_owner = rustix::process::geteuid().is_root();
    let writes = entries
        .and_then(|entry| {
            let prepared = guard
                .admit(&entry)
                .and_then(|()| prepare(dest, entry, options.force, root_owner));
            futures::future::ready(prepared)
        })
        .map_ok(|prepared| write_prepared(store, &layout, dest, prepared, root_owner).boxed())
        .try_buffered(options.concurrency);
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
        }
    }
    for entry in dirs.iter().rev() {
        apply_metadata(&scan::absolute(dest, &entry.path), entry, root_owner, false)?;
    }
    sync_filesystem(dest)?;
    Ok(report)
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

/// Admits manifest paths only if they stay inside the destination and their parent is a
/// directory entry seen earlier (a stack of the current directory chain; bounded by depth).
#[derive(Default)]
struct PathGuard {
    dirs: Vec<Vec<u8>>,
    seen_root: bool,
}

impl PathGuard {
    fn admit(&mut self, entry: &Entry) -> Result<()> {
        let refuse = |reason: &str| Error::UnsafePath {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            reason: reason.to_owned(),
        };
        if entry.path == b"." {
            if self.seen_root || entry.kind != EntryKind::Dir {
                return Err(refuse("the root must come first, once, as a directory"));
            }
            self.seen_root = true;
            return Ok(());
        }
        if !self.seen_root {
            return Err(refuse("entry before the root directory"));
        }
        let components: Vec<&[u8]> = entry.path.split(|b| *b == b'/').collect();
        if components
            .iter()
            .any(|c| c.is_empty() || *c == b"." || *c == b".." || c.contains(&0))
        {
            return Err(refuse("empty, '.', '..' or NUL path component"));
        }
        let parent = &entry.path[..entry.path.len() - components.last().map_or(0, |c| c.len())];
        let parent = parent.strip_suffix(b"/").unwrap_or(parent);
        while let Some(top) = self.dirs.last() {
            if top.as_slice() == parent {
                break;
            }
            self.dirs.pop();
        }
        let parent_known =
            parent.is_empty() || self.dirs.last().is_some_and(|d| d.as_slice() == parent);
        if !parent_known {
            return Err(refuse(
                "its parent is not a directory of the snapshot (a link, a file, or out of order)",
            ));
        }
        if entry.kind == EntryKind::Dir {
            self.dirs.push(entry.path.clone());
        }
        Ok(())
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

async fn write_prepared(
    store: &Store,
    layout: &VolumeLayout,
    dest: &Path,
    prepared: Prepared,
    root_owner: bool,
) -> Result<Written> {
    let entry = match prepared {
        Prepared::Done(written) => return Ok(written),
        Prepared::File(entry) => entry,
    };
    let path = scan::absolute(dest, &entry.path);
    let content = entry.content.clone().expect("file entries have content");
    let key = layout
        .object(&content.object)
        .ok_or_else(|| Error::UnsafePath {
            path: String::from_utf8_lossy(&entry.path).into_owned(),
            reason: format!(
                "object key {:?} is outside the volume's snapshots",
                content.object
            ),
        })?;
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
        .map_err(|e| Error::write(&path, e))?;
    let objects = store.objects().clone();
    let body = store
        .call("get", &key, objects.get(&key))
        .await?
        .into_stream();
    futures::pin_mut!(body);
    let mut writer = Some((file, blake3::Hasher::new()));
    let mut written = 0u64;
    while let Some(chunk) = store
        .call("read", &key, body.next().map(|c| c.transpose()))
        .await?
    {
        let (mut file, mut hasher) = writer.take().expect("writer returned");
        let target = path.clone();
        written += chunk.len() as u64;
        writer = Some(
            tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                file.write_all(&chunk)
                    .map_err(|e| Error::write(&target, e))?;
                Ok::<_, Error>((file, hasher))
            })
            .await
            .expect("write task panicked")?,
        );
    }
    let (file, hasher) = writer.expect("writer returned");
    let actual = hasher.finalize().to_hex().to_string();
    if actual != content.blake3 || written != entry.size {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Err(Error::HashMismatch {
            path: path.display().to_string(),
            object: key.to_string(),
            expected: content.blake3,
            actual,
        });
    }
    tokio::task::spawn_blocking(move || {
        set_file_metadata(&file, &path, &entry, root_owner)?;
        Ok(Written::File(entry.size))
    })
    .await
    .expect("metadata task panicked")
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
