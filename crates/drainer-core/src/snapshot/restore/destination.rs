//! The restore's destination: what it holds before a restore starts, the lock that keeps two
//! restores out of one directory, and the staging directory where files are written before
//! they are renamed into place.
//!
//! A destination is **empty** (no entry but a `lost+found` directory), holds an **unfinished
//! restore** (a staging directory `.drainer-restore-…` at its root with a marker,
//! `restore.json`, naming the volume and snapshot being restored), or is **occupied** by
//! anything else. A restore starts into an empty destination, continues an unfinished restore
//! of the same snapshot, and writes into anything else only with `--force`. The marker is
//! written (and made durable) before the first entry, and removed only once every entry and
//! its metadata are in place, so a restore that was killed, or failed, leaves a destination
//! that the same command continues. A failed restore removes its temporary files and keeps
//! the marker.
//!
//! Nothing here reads the store; nothing outside the destination is created or changed
//! (except the destination itself, created when missing).

use super::super::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The start of a staging directory's name.
pub(crate) const STAGING_PREFIX: &str = ".drainer-restore-";
/// The marker of an unfinished restore, inside its staging directory.
pub(crate) const MARKER: &str = "restore.json";
/// A directory an empty filesystem has (ext4's), which does not make a destination occupied.
const LOST_AND_FOUND: &str = "lost+found";

/// What an unfinished restore was restoring.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// `namespace/pvc`.
    pub volume: String,
    /// The snapshot id.
    pub snapshot: String,
}

/// What a destination holds before a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// It does not exist yet.
    Missing,
    /// An empty directory (or one with only `lost+found`).
    Empty,
    /// An unfinished restore: its staging directory and what it was restoring.
    Unfinished {
        /// The staging directory.
        staging: PathBuf,
        /// What it was restoring.
        marker: Marker,
    },
    /// Anything else: how many entries, and one of their names.
    Occupied {
        /// Entries at the destination's root (`lost+found` not counted).
        entries: usize,
        /// The first name, for messages.
        example: String,
    },
}

impl Found {
    /// One line saying what the destination holds, for messages.
    pub fn describe(&self) -> String {
        match self {
            Found::Missing => "does not exist".into(),
            Found::Empty => "is empty".into(),
            Found::Unfinished { marker, .. } => format!(
                "holds an unfinished restore of snapshot {} of {}",
                marker.snapshot, marker.volume
            ),
            Found::Occupied { entries, example } => {
                format!("is not empty ({entries} entries, such as {example:?})")
            }
        }
    }
}

fn problem(dest: &Path, reason: impl Into<String>) -> Error {
    Error::Destination {
        path: dest.to_owned(),
        reason: reason.into(),
    }
}

/// Looks at `dest` without changing anything: it must be a directory this process may write
/// into, or not exist.
pub fn inspect(dest: &Path) -> Result<Found> {
    let meta = match std::fs::symlink_metadata(dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::Missing),
        Err(e) => return Err(problem(dest, e.to_string())),
        Ok(meta) => meta,
    };
    if !meta.is_dir() {
        return Err(problem(dest, "not a directory"));
    }
    rustix::fs::access(
        dest,
        rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK,
    )
    .map_err(|e| problem(dest, format!("not writable: {}", std::io::Error::from(e))))?;
    let mut names: Vec<(std::ffi::OsString, bool)> = std::fs::read_dir(dest)
        .map_err(|e| problem(dest, format!("cannot be read: {e}")))?
        .map(|child| {
            let child = child.map_err(|e| problem(dest, format!("cannot be read: {e}")))?;
            let is_dir = child.file_type().is_ok_and(|t| t.is_dir());
            Ok((child.file_name(), is_dir))
        })
        .collect::<Result<_>>()?;
    names.sort();
    for (name, is_dir) in &names {
        if *is_dir && name.to_string_lossy().starts_with(STAGING_PREFIX) {
            let staging = dest.join(name);
            if let Some(marker) = read_marker(&staging) {
                return Ok(Found::Unfinished { staging, marker });
            }
        }
    }
    let others: Vec<&std::ffi::OsString> = names
        .iter()
        .filter(|(name, is_dir)| !(*is_dir && name == LOST_AND_FOUND))
        .map(|(name, _)| name)
        .collect();
    Ok(match others.first() {
        None => Found::Empty,
        Some(first) => Found::Occupied {
            entries: others.len(),
            example: first.to_string_lossy().into_owned(),
        },
    })
}

fn read_marker(staging: &Path) -> Option<Marker> {
    let text = std::fs::read(staging.join(MARKER)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// The destination, created if missing and locked (`flock`) for one restore: a second restore
/// into the same directory fails at once instead of mixing files. The lock goes with the
/// process, however it ends.
#[derive(Debug)]
pub(crate) struct Lock {
    _dir: File,
}

impl Lock {
    /// Creates `dest` if missing (its parents too), and locks it.
    pub fn take(dest: &Path) -> Result<Self> {
        if !dest.exists() {
            std::fs::create_dir_all(dest).map_err(|e| Error::write(dest, e))?;
        }
        let dir = File::open(dest).map_err(|e| problem(dest, e.to_string()))?;
        let flock = rustix::fs::FlockOperation::NonBlockingLockExclusive;
        rustix::fs::flock(&dir, flock).map_err(|e| {
            problem(
                dest,
                format!(
                    "another restore is writing into it ({})",
                    std::io::Error::from(e)
                ),
            )
        })?;
        Ok(Self { _dir: dir })
    }
}

/// The directory at the destination's root where files are written before they are renamed
/// into place, with the marker of the restore. Dropped before [`Staging::finish`] (a failed
/// restore), it removes its temporary files and keeps the marker.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: PathBuf,
    next: AtomicU64,
    resumed: bool,
}

impl Staging {
    /// The staging directory for restoring `marker` into the locked `dest`: the unfinished
    /// restore's when it restores the same snapshot (emptied of its temporary files), else a
    /// new one (for a destination that is not empty or holds another restore, only with
    /// `force`).
    pub fn open(
        dest: &Path,
        marker: &Marker,
        root_names: &HashSet<Vec<u8>>,
        force: bool,
    ) -> Result<Self> {
        let (dir, resumed) = match inspect(dest)? {
            Found::Unfinished { staging, marker: m } if m == *marker => (staging, true),
            Found::Unfinished { staging, .. } if force => (staging, false),
            Found::Missing | Found::Empty => (Self::create(dest, root_names)?, false),
            Found::Occupied { .. } if force => (Self::create(dest, root_names)?, false),
            found @ Found::Unfinished { .. } => {
                return Err(problem(
                    dest,
                    format!(
                        "{}; run the same restore again to finish it, or use --force to restore snapshot {} of {} over it",
                        found.describe(),
                        marker.snapshot,
                        marker.volume
                    ),
                ));
            }
            found @ Found::Occupied { .. } => {
                return Err(problem(
                    dest,
                    format!(
                        "{} (use --force to restore into it anyway, or --if-empty to leave it alone)",
                        found.describe()
                    ),
                ));
            }
        };
        let staging = Self {
            dir,
            next: AtomicU64::new(0),
            resumed,
        };
        staging.remove_temporary()?;
        if !resumed {
            staging.write_marker(marker)?;
        }
        Ok(staging)
    }

    /// Creates a staging directory whose name no root entry of the manifest has.
    fn create(dest: &Path, root_names: &HashSet<Vec<u8>>) -> Result<PathBuf> {
        let mut last = None;
        for _ in 0..16 {
            let name = format!("{STAGING_PREFIX}{:016x}", rand::random::<u64>());
            if root_names.contains(name.as_bytes()) {
                continue;
            }
            let dir = dest.join(&name);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(dir),
                Err(e) => last = Some(Error::write(&dir, e)),
            }
        }
        Err(last.unwrap_or_else(|| problem(dest, "no free name for a staging directory")))
    }

    /// Writes the marker and makes it durable before anything else is written.
    fn write_marker(&self, marker: &Marker) -> Result<()> {
        let path = self.dir.join(MARKER);
        let body = serde_json::to_vec(marker).map_err(|e| Error::write(&path, e.into()))?;
        let file = File::create(&path).map_err(|e| Error::write(&path, e))?;
        std::io::Write::write_all(&mut &file, &body).map_err(|e| Error::write(&path, e))?;
        file.sync_all().map_err(|e| Error::write(&path, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::write(&self.dir, e))
    }

    /// Whether this restore continues an unfinished one.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// A fresh temporary path inside the staging directory.
    pub(crate) fn temp_path(&self) -> PathBuf {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("t{n}"))
    }

    /// Removes every temporary file (what a killed or failed restore left), not the marker. A
    /// file gone meanwhile (a write of a failed restore still finishing renamed it into place)
    /// is not an error, so the others still go.
    fn remove_temporary(&self) -> Result<()> {
        let children = std::fs::read_dir(&self.dir).map_err(|e| Error::write(&self.dir, e))?;
        for child in children {
            let child = child.map_err(|e| Error::write(&self.dir, e))?;
            if child.file_name() != MARKER {
                let path = child.path();
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(Error::write(&path, e));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The restore is complete: removes the staging directory with its marker.
    pub fn finish(self) -> Result<()> {
        std::fs::remove_dir_all(&self.dir).map_err(|e| Error::write(&self.dir, e))
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.remove_temporary();
        }
    }
}

/// Makes a directory the restore must write into writable by its owner, when this process is
/// not root (a read-only directory of the snapshot gets its mode back at the end).
pub(crate) fn writable_dir(path: &Path, root: bool) -> Result<()> {
    if root {
        return Ok(());
    }
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::write(path, e))?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o300 != 0o300 && meta.uid() == rustix::process::geteuid().as_raw() {
        let writable = std::fs::Permissions::from_mode(mode | 0o700);
        std::fs::set_permissions(path, writable).map_err(|e| Error::write(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_is_empty_unfinished_or_occupied() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        assert_eq!(inspect(&dest).unwrap(), Found::Missing);
        std::fs::create_dir(&dest).unwrap();
        assert_eq!(inspect(&dest).unwrap(), Found::Empty);
        std::fs::create_dir(dest.join("lost+found")).unwrap();
        assert_eq!(inspect(&dest).unwrap(), Found::Empty, "lost+found is empty");
        let marker = Marker {
            volume: "shop/data-web-1".into(),
            snapshot: "20261201T000000000Z-abcd".into(),
        };
        let _lock = Lock::take(&dest).unwrap();
        assert!(Lock::take(&dest).is_err(), "one restore at a time");
        let staging = Staging::open(&dest, &marker, &HashSet::new(), false).unwrap();
        std::fs::write(staging.temp_path(), b"partial").unwrap();
        std::fs::write(dest.join("restored"), b"x").unwrap();
        drop(staging);
        let found = inspect(&dest).unwrap();
        let Found::Unfinished { staging, marker: m } = &found else {
            panic!("{found:?}");
        };
        assert_eq!(*m, marker);
        let left: Vec<_> = std::fs::read_dir(staging).unwrap().collect();
        assert_eq!(left.len(), 1, "only the marker is left");
        let again = Staging::open(&dest, &marker, &HashSet::new(), false).unwrap();
        assert!(again.resumed());
        let other = Marker {
            snapshot: "20261202T000000000Z-abcd".into(),
            ..marker.clone()
        };
        drop(again);
        let refused = Staging::open(&dest, &other, &HashSet::new(), false).unwrap_err();
        assert!(
            refused.to_string().contains("unfinished restore"),
            "{refused}"
        );
        let forced = Staging::open(&dest, &other, &HashSet::new(), true).unwrap();
        assert!(!forced.resumed());
        forced.finish().unwrap();
        let found = inspect(&dest).unwrap();
        assert!(
            matches!(&found, Found::Occupied { entries: 1, example } if example == "restored"),
            "{found:?}"
        );
        let not_dir = dest.join("restored");
        assert!(
            inspect(&not_dir)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }
}
