//! The snapshot engine: copies a directory into durable storage as an immutable, incremental,
//! resumable snapshot, and restores, lists, verifies and prunes snapshots.
//!
//! A snapshot is every regular file stored as a plain object, plus a manifest (see
//! [`manifest`]) that says where each entry's bytes are, plus a summary whose presence marks
//! the snapshot complete; the volume's `latest` pointer moves only after that (see [`layout`]).
//! Progress is recorded through the [`Checkpoint`] trait, so a killed copy resumes from its
//! last recorded file. The engine never decides *when* to copy (that is the scheduler's job)
//! and never talks to Kubernetes.

pub mod catalog;
mod checkpoint;
pub mod compress;
mod copy;
pub mod layout;
pub mod manifest;
pub mod part_hash;
mod progress;
mod restore;
pub mod retention;
mod scan;
pub mod select;
mod sparse;
mod upload;
mod validate;
mod verify;

pub use catalog::{
    DrainOrigin, Listed, PruneReport, SnapshotSummary, list_snapshots, list_volumes, prune,
    prune_by, resolve,
};
pub use checkpoint::{
    Checkpoint, CheckpointError, CheckpointResult, PartialUpload, Run, StoredFile, UploadedPart,
};
pub use compress::Compression;
pub use copy::{CopyOptions, CopySummary, check_source, copy};
pub use layout::{SnapshotId, SnapshotSelector, VolumeLayout};
pub use progress::{Progress, ProgressView, report as progress_report};
pub use restore::{
    Found, RestoreOptions, RestoreSummary, continuing, inspect as inspect_destination, restore,
    restore_with_progress,
};
pub use retention::{Plan, Policy};
pub(crate) use upload::BufferPool;
pub use verify::{Problem, VerifyReport, verify};

use std::path::{Path, PathBuf};

/// Errors of the snapshot engine. Each carries the path, key or id it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source is not a readable directory.
    #[error("source {path}: {reason}")]
    Source {
        /// The source path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The volume no longer exists (its directory, or its claim, is gone): nothing is left
    /// to copy.
    #[error("volume {volume} is gone: {reason}")]
    Gone {
        /// The volume.
        volume: String,
        /// How it went.
        reason: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file kept changing while it was read.
    #[error("{path} changed while it was read, {attempts} times; not storing torn content")]
    Changed {
        /// The path.
        path: PathBuf,
        /// How many reads were tried.
        attempts: u32,
    },
    /// The object store failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Progress could not be recorded.
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    /// A manifest could not be read.
    #[error("manifest {key}: {reason}")]
    Manifest {
        /// The manifest's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The volume has no snapshot at all.
    #[error("volume {volume} has no snapshot in {store}")]
    NoSnapshot {
        /// The volume.
        volume: String,
        /// The store URL.
        store: String,
    },
    /// The requested snapshot's summary cannot be trusted.
    #[error("snapshot {snapshot} of volume {volume} is damaged: {reason}")]
    Damaged {
        /// The volume.
        volume: String,
        /// The snapshot id.
        snapshot: String,
        /// What is wrong.
        reason: String,
    },
    /// The volume has snapshots, but none completed before the time asked for.
    #[error("volume {volume} has no snapshot completed before {before}")]
    NoneBefore {
        /// The volume.
        volume: String,
        /// The time, RFC 3339.
        before: String,
    },
    /// The requested snapshot does not exist (or is not complete).
    #[error("snapshot {snapshot} of volume {volume} does not exist in {store}")]
    SnapshotNotFound {
        /// The volume.
        volume: String,
        /// The snapshot id.
        snapshot: String,
        /// The store URL.
        store: String,
    },
    /// A restored file's content does not match the manifest's hash.
    #[error(
        "{path}: content of {object} does not match its manifest hash (expected {expected}, got {actual})"
    )]
    HashMismatch {
        /// The restored path.
        path: String,
        /// The object key.
        object: String,
        /// The hash the manifest records.
        expected: String,
        /// The hash of the bytes read.
        actual: String,
    },
    /// A restored file's object does not have the size the manifest records.
    #[error("{path}: {object} holds {actual} bytes, but its manifest entry says {expected} bytes")]
    SizeMismatch {
        /// The restored path.
        path: String,
        /// The object key.
        object: String,
        /// The size the manifest records.
        expected: u64,
        /// The bytes the object holds.
        actual: u64,
    },
    /// The snapshot was stored, but some files could not be read (permission denied): they
    /// are listed in its manifest without content. Not retried: the files must be made
    /// readable first.
    #[error("{}", incomplete_message(summary, unreadable))]
    Incomplete {
        /// What was stored.
        summary: Box<CopySummary>,
        /// Each unreadable file (path in the volume) and why.
        unreadable: Vec<(String, String)>,
    },
    /// Whatever copies a drain outside this process (a mover, and what runs it) failed; whether
    /// it may pass by itself is decided where it happened.
    #[error("drain {drain}: {reason}")]
    Executor {
        /// The drain.
        drain: String,
        /// What happened.
        reason: String,
        /// Whether trying again may succeed without anything else changing.
        transient: bool,
    },
    /// The part size cannot be hashed part by part.
    #[error("part size of {0} bytes: it must be a power of two of at least 1 KiB")]
    PartSize(u64),
    /// A manifest entry would write outside the destination or through a link.
    #[error("refusing manifest entry {path:?}: {reason}")]
    UnsafePath {
        /// The entry's path, lossily decoded.
        path: String,
        /// Why it is refused.
        reason: String,
    },
    /// The restore destination is not usable.
    #[error("destination {path}: {reason}")]
    Destination {
        /// The destination path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Writing a restored entry failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn incomplete_message(summary: &CopySummary, unreadable: &[(String, String)]) -> String {
    let shown = &unreadable[..unreadable.len().min(UNREADABLE_NAMED)];
    format!(
        "snapshot {} of {} is stored but incomplete: {}",
        summary.snapshot.snapshot,
        summary.snapshot.volume,
        unreadable_list(unreadable.len() as u64, shown)
    )
}

/// How many unreadable files an error names at most (the manifest lists them all).
pub const UNREADABLE_NAMED: usize = 5;

/// `N files could not be read and are listed in it without content: "a" (why), … and M
/// more`: `total` unreadable files, of which `named` (path, why) are named, each cut to a
/// readable length, so an error stays one bounded line however many there are.
pub fn unreadable_list(total: u64, named: &[(String, String)]) -> String {
    let cut = |text: &str, most: usize| -> String {
        if text.chars().count() <= most {
            text.to_owned()
        } else {
            format!("{}…", text.chars().take(most).collect::<String>())
        }
    };
    let shown: Vec<String> = named
        .iter()
        .map(|(path, reason)| format!("{:?} ({})", cut(path, 160), cut(reason, 100)))
        .collect();
    let more = total.saturating_sub(shown.len() as u64);
    if shown.is_empty() {
        return format!("{total} files could not be read and are listed in it without content");
    }
    format!(
        "{total} files could not be read and are listed in it without content: {}{}",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

impl Error {
    pub(crate) fn read(path: &Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn write(path: &Path, source: std::io::Error) -> Self {
        Self::Write {
            path: path.to_owned(),
            source,
        }
    }

    /// What kind of failure this is for a drain: a gone volume, something that may pass by
    /// itself, or something that will not.
    pub fn failure_kind(&self) -> crate::lifecycle::FailureKind {
        use crate::lifecycle::FailureKind;
        match self {
            Error::Gone { .. } => FailureKind::VolumeGone,
            e if e.is_transient() => FailureKind::Transient,
            _ => FailureKind::Permanent,
        }
    }

    /// Whether retrying the copy later may succeed (store outages, timeouts, busy ledger,
    /// files that kept changing); bad input and missing data are permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::Checkpoint(e) => e.is_transient(),
            Error::Changed { .. } => true,
            Error::Executor { transient, .. } => *transient,
            _ => false,
        }
    }
}

/// Result alias for the snapshot engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_named_in_one_bounded_line() {
        let file = |p: &str| (p.to_owned(), "Permission denied (os error 13)".to_owned());
        // (total, named, the line)
        let cases = [
            (
                1,
                vec![file("secret.key")],
                r#"1 files could not be read and are listed in it without content: "secret.key" (Permission denied (os error 13))"#.to_owned(),
            ),
            (
                7,
                vec![file("a"), file("new\nline")],
                r#"7 files could not be read and are listed in it without content: "a" (Permission denied (os error 13)), "new\nline" (Permission denied (os error 13)) and 5 more"#.to_owned(),
            ),
            (
                3,
                vec![],
                "3 files could not be read and are listed in it without content".to_owned(),
            ),
        ];
        for (total, named, line) in cases {
            assert_eq!(unreadable_list(total, &named), line);
        }
        let long = vec![("d/".repeat(1000), "why ".repeat(100))];
        let line = unreadable_list(1, &long);
        assert!(line.chars().count() < 400, "{line}");
        assert!(line.contains('…'), "{line}");
    }
}
