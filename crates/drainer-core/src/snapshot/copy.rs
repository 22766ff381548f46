//! The copy pipeline: walk → plan → store → manifest, with checkpoints.
//!
//! ```text
//! walk (blocking thread, path order)
//!   └► plan: unchanged since the parent snapshot? stored earlier by this run? → reuse
//!        └► store: read + upload what is new, `concurrency` at once, order kept
//!             └► sink: manifest line; every second: flush store, then record progress
//! end: flush → manifest complete → flush → snapshot.json → flush → latest → run finished
//! ```
//!
//! Durable before recorded: progress is recorded only after the store has been flushed, and
//! the snapshot is marked complete only after every object, then the manifest, are durable.
//!
//! Hard links: the first entry of a file with several links (same device and inode) is read
//! and stored as usual; every later entry of the same file is neither read nor stored again,
//! and names the first one in its `link` field (see `manifest`), with the first one's content
//! and metadata (one inode has one of each).
//! Everything here works in path order, so merging with the parent manifest and the ledger's
//! progress is a streaming merge with bounded memory.

use super::catalog::{self, SnapshotSummary};
use super::checkpoint::{Checkpoint, Run, StoredFile};
use super::layout::{SnapshotId, VolumeLayout};
use super::manifest::{self, Content, Entry, EntryKind, Header, Totals, path_order};
use super::progress::Progress;
use super::upload::{Resume, Uploader};
use super::{Error, Result, part_hash, scan};
use crate::store::Store;
use crate::volume::VolumeId;
use futures::stream::{self, BoxStream, StreamExt};
use futures::{FutureExt, TryStreamExt};
use object_store::ObjectStoreExt;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// When a copy starts counting the source for its progress totals.
const COUNT_AFTER: Duration = Duration::from_secs(1);
/// How often progress is checkpointed (each checkpoint flushes the store, so not too often).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// Most files recorded in one checkpoint: at most this many are sent again after a crash.
const CHECKPOINT_FILES: usize = 500;

/// Tuning of a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Files in flight at once.
    pub concurrency: usize,
    /// Multipart part size; files up to this size are one request.
    pub part_size: u64,
    /// Memory budget for file data in flight.
    pub buffer_bytes: u64,
    /// Compare unchanged-looking files by hash rather than by metadata.
    pub check_hash: bool,
    /// The drain this copy is made for, recorded in the snapshot's summary.
    pub origin: Option<catalog::DrainOrigin>,
    /// Whether objects are compressed where it pays (see `compress`).
    pub compression: super::Compression,
}

/// What a finished copy did.
#[derive(Debug, Clone)]
pub struct CopySummary {
    /// The snapshot written.
    pub snapshot: SnapshotSummary,
    /// Whether an interrupted run was resumed.
    pub resumed: bool,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for CopySummary {
    /// The one-line summary the commands print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.snapshot;
        write!(
            f,
            "snapshot {} of {}: {} files, {} bytes ({} files, {} bytes uploaded), {} skipped, {}{:.2} s{}",
            s.snapshot,
            s.volume,
            s.files,
            s.bytes,
            s.uploaded_files,
            s.uploaded_bytes,
            s.skipped,
            if s.unreadable > 0 {
                format!("{} UNREADABLE (not in the snapshot), ", s.unreadable)
            } else {
                String::new()
            },
            self.elapsed.as_secs_f64(),
            if self.resumed { ", resumed" } else { "" }
        )
    }
}

/// The snapshot a copy builds on: the volume's latest, unless both it and this copy name the
/// claim they copied and those differ (a claim deleted and made again under the same name: its
/// copy must not refer to the earlier claim's objects, which another namespace's life may own).
async fn parent_of(
    store: &Store,
    volume: &VolumeId,
    origin: Option<&catalog::DrainOrigin>,
) -> Result<Option<SnapshotId>> {
    let Some(claim) = origin.and_then(|o| o.claim_uid.as_deref()) else {
        return catalog::read_latest(store, volume).await;
    };
    let Some(latest) = catalog::latest(store, volume).await? else {
        return Ok(None);
    };
    if latest.of_another_claim(claim) {
        tracing::info!(latest = %latest.snapshot, "the latest snapshot is of an earlier claim of this name: copying without a parent");
        return Ok(None);
    }
    Ok(latest.snapshot.parse().ok())
}

/// What to do with one scanned entry.
enum Plan {
    /// Nothing to store: directories, symlinks, special files, files already stored.
    Ready(Entry),
    /// Read and store the file.
    Store(Entry),
    /// Hash the file; reuse the parent's object if the hash matches.
    Compare(Entry, Content),
    /// Stored earlier by this run: reuse the object if the store still has it.
    Stored(Entry, Content),
}

/// Takes a snapshot of `source` as `volume` into `store`, resuming an interrupted run.
#[tracing::instrument(skip_all, fields(volume = %volume, store = %store.url()))]
pub async fn copy(
    source: &Path,
    store: &Store,
    volume: &VolumeId,
    checkpoint: &dyn Checkpoint,
    options: &CopyOptions,
    progress: Arc<Progress>,
) -> Result<CopySummary> {
    let source = check_source(source)?;
    if !part_hash::is_valid_part_size(options.part_size) {
        return Err(Error::PartSize(options.part_size));
    }
    store.probe_writable().await?;
    let layout = VolumeLayout::new(store.root(), volume);
    let parent = parent_of(store, volume, options.origin.as_ref()).await?;
    let run = checkpoint
        .begin(store.url(), volume, &SnapshotId::generate())
        .await?;
    tracing::info!(snapshot = %run.snapshot, resumed = run.resumed, parent = ?parent, "copy started");
    // Totals only matter for progress of copies that last: count them once a copy has run a
    // while, so short (incremental) copies do not stat the tree twice.
    let counter = {
        let (root, progress) = (source.clone(), Arc::clone(&progress));
        tokio::spawn(async move {
            tokio::time::sleep(COUNT_AFTER).await;
            let count = tokio::task::spawn_blocking(move || scan::count(&root));
            if let Ok((files, bytes)) = count.await {
                progress.set_totals(files, bytes);
            }
        })
    };
    let job = Job {
        source,
        volume,
        store,
        layout,
        parent,
        run: &run,
        checkpoint,
        options,
        progress,
    };
    let result = tokio::select! {
        result = job.run() => result,
        lost = heartbeat(checkpoint, &run) => Err(lost),
    };
    counter.abort();
    if let Err(err) = &result {
        let _ = checkpoint.interrupted(&run, &err.to_string()).await;
    }
    result
}

/// How often a copy renews its hold on its run while it runs (the lease is longer; see
/// `ledger::RUN_LEASE`), whether or not it has progress to record.
const RENEW_EVERY: Duration = Duration::from_secs(10);

/// Renews the run's lease until the copy ends; returns only when the run was lost to another
/// copy. A renewal that fails for another reason (a busy database) is tried again later.
async fn heartbeat(checkpoint: &dyn Checkpoint, run: &Run) -> Error {
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match checkpoint.renew(run).await {
            Ok(()) => {}
            Err(e) if e.is_run_lost() => return Error::Checkpoint(e),
            Err(e) => tracing::warn!(run = %run.id, error = %e, "cannot renew the run's lease"),
        }
    }
}

/// Checks that `source` is a readable directory; returns its absolute path.
pub fn check_source(source: &Path) -> Result<PathBuf> {
    let problem = |reason: String| Error::Source {
        path: source.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(source).map_err(|e| problem(e.to_string()))?;
    if !meta.is_dir() {
        return Err(problem("not a directory".into()));
    }
    std::fs::read_dir(source).map_err(|e| problem(format!("cannot be read: {e}")))?;
    std::path::absolute(source).map_err(|e| problem(e.to_string()))
}

struct Job<'a> {
    source: PathBuf,
    volume: &'a VolumeId,
    store: &'a Store,
    layout: VolumeLayout,
    parent: Option<SnapshotId>,
    run: &'a Run,
    checkpoint: &'a dyn Checkpoint,
    options: &'a CopyOptions,
    progress: Arc<Progress>,
}

impl Job<'_> {
    async fn run(&self) -> Result<CopySummary> {
        let started = Instant::now();
        let created = chrono::Utc::now().to_rfc3339();
        let mut uploader = Uploader::new(
            self.store.clone(),
            self.options.part_size,
            self.options.buffer_bytes,
            Arc::clone(&self.progress),
        );
        uploader.compression = self.options.compression;
        let uploader = Arc::new(uploader);
        let parent_entries = Cursor::new(self.parent_entries().await?);
        let stored = Cursor::new(if self.run.resumed {
            self.checkpoint
                .stored_files(self.run)
                .map_err(Error::from)
                .map_ok(|f| (f.path.clone(), f))
                .boxed()
        } else {
            stream::empty().boxed()
        });
        let check_hash = self.options.check_hash;
        let walk = scan::walk(self.source.clone());
        let planner = Planner {
            walk,
            parent: parent_entries,
            stored,
            check_hash,
            links: HashMap::new(),
        };
        let planned = stream::unfold(planner, Planner::next).boxed();
        let done = planned
            .map_ok(|plan| self.execute(plan, Arc::clone(&uploader)))
            .try_buffered(self.options.concurrency);
        let mut sink = Sink::open(self, &created).await?;
        futures::pin_mut!(done);
        // One checkpoint at a time runs beside the copy instead of pausing it.
        let mut checkpointing: Option<futures::future::BoxFuture<'_, Result<()>>> = None;
        loop {
            let next = match checkpointing.as_mut() {
                Some(running) => tokio::select! {
                    ended = running => {
                        ended?;
                        checkpointing = None;
                        continue;
                    }
                    next = done.try_next() => next?,
                },
                None => done.try_next().await?,
            };
            let Some((entry, uploaded)) = next else {
                break;
            };
            sink.push(self, entry, uploaded).await?;
            if checkpointing.is_none()
                && let Some(files) = sink.due_checkpoint()
            {
                checkpointing = Some(self.checkpoint(files).boxed());
            }
        }
        if let Some(running) = checkpointing {
            running.await?;
        }
        let (summary, unreadable) = sink.finish(self, created).await?;
        let summary = CopySummary {
            snapshot: summary,
            resumed: self.run.resumed,
            elapsed: started.elapsed(),
        };
        if unreadable.is_empty() {
            Ok(summary)
        } else {
            Err(Error::Incomplete {
                summary: Box::new(summary),
                unreadable,
            })
        }
    }

    async fn parent_entries(&self) -> Result<BoxStream<'static, Result<(Vec<u8>, Entry)>>> {
        let Some(parent) = &self.parent else {
            return Ok(stream::empty().boxed());
        };
        let entries = catalog::read_manifest(self.store, &self.layout, parent).await?;
        Ok(entries.map_ok(|e| (e.path.clone(), e)).boxed())
    }

    /// Runs one plan; yields the finished entry and whether its bytes were uploaded. A file
    /// that cannot be read for lack of permission is recorded as unreadable (see
    /// [`unreadable`]); every other failure fails the copy.
    fn execute(
        &self,
        plan: Plan,
        uploader: Arc<Uploader>,
    ) -> futures::future::BoxFuture<'_, Result<(Entry, bool)>> {
        let (entry, reuse) = match plan {
            Plan::Ready(entry) => return futures::future::ready(Ok((entry, false))).boxed(),
            Plan::Stored(entry, content) => (entry, Reuse::IfStillStored(content)),
            Plan::Store(entry) => (entry, Reuse::No),
            Plan::Compare(entry, content) => (entry, Reuse::IfSameHash(content)),
        };
        async move {
            let scanned = entry.clone();
            unreadable(scanned, self.read_and_store(entry, reuse, uploader).await)
        }
        .boxed()
    }

    /// Reuses an object when `reuse` allows it, else reads and stores the file.
    async fn read_and_store(
        &self,
        entry: Entry,
        reuse: Reuse,
        uploader: Arc<Uploader>,
    ) -> Result<(Entry, bool)> {
        let resume = Resume {
            checkpoint: self.checkpoint,
            run: self.run,
        };
        let (path, key, object) = self.targets(&entry)?;
        let entry = match reuse {
            Reuse::IfStillStored(content) => {
                if self.still_stored(&content, entry.size).await? {
                    return Ok((with_content(entry, content), false));
                }
                entry
            }
            Reuse::IfSameHash(content) => {
                // The parent's extents (if sparse) describe its object; they go with it.
                let parent_extents = entry.extents.clone();
                let (entry, hash) = uploader.hash_file(path.clone(), entry).await?;
                if hash == content.blake3 {
                    let entry = Entry {
                        extents: parent_extents,
                        ..entry
                    };
                    return Ok((with_content(entry, content), false));
                }
                Entry {
                    extents: None,
                    ..entry
                }
            }
            Reuse::No => entry,
        };
        let stored = uploader.store_file(path, entry, key, object, resume);
        Ok((stored.await?, true))
    }

    /// Durable before recorded: flushes the store, then records what it now holds.
    async fn checkpoint(&self, files: Vec<StoredFile>) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        self.store.flush().await?;
        let flushed = started.elapsed();
        self.checkpoint.record(self.run, &files).await?;
        tracing::debug!(
            files = files.len(),
            flush_ms = flushed.as_millis() as u64,
            record_ms = (started.elapsed() - flushed).as_millis() as u64,
            "checkpoint"
        );
        Ok(())
    }

    fn targets(&self, entry: &Entry) -> Result<(PathBuf, object_store::path::Path, String)> {
        let path = scan::absolute(&self.source, &entry.path);
        let object = VolumeLayout::file_key(&self.run.snapshot, &entry.path);
        let key = self.layout.object(&object).ok_or_else(|| Error::Source {
            path: path.clone(),
            reason: format!("its name cannot be an object key ({object:?})"),
        })?;
        Ok((path, key, object))
    }

    /// Whether the store still holds the object this run recorded for a file, at its size.
    /// A resumed run trusts its ledger only this far: one `head` per file it reuses (a stat
    /// on a local store), so objects that vanished since they were recorded are stored
    /// again. A store that cannot answer (a mover's relay) is trusted.
    async fn still_stored(&self, content: &Content, size: u64) -> Result<bool> {
        let Some(key) = self.layout.object(&content.object) else {
            return Ok(false);
        };
        let objects = self.store.objects();
        match self.store.call("head", &key, objects.head(&key)).await {
            Ok(meta) => Ok(meta.size == size),
            Err(e) if e.is_not_found() => {
                tracing::warn!(key = %key, "an object this run stored has vanished; storing it again");
                Ok(false)
            }
            Err(crate::store::Error::Backend {
                source: object_store::Error::NotSupported { .. },
                ..
            }) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

/// When an object may stand for a file instead of reading it.
enum Reuse {
    No,
    IfStillStored(Content),
    IfSameHash(Content),
}

fn with_content(entry: Entry, content: Content) -> Entry {
    Entry {
        content: Some(content),
        ..entry
    }
}

/// A file that cannot be read for lack of permission becomes an entry without content that
/// says why, so one unreadable file does not cost the rest of the volume; the snapshot then
/// says it is incomplete (see [`Error::Incomplete`]). Other errors stay errors.
fn unreadable(scanned: Entry, result: Result<(Entry, bool)>) -> Result<(Entry, bool)> {
    match result {
        Err(Error::Read { path, source })
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            tracing::warn!(path = %path.display(), error = %source, "cannot read this file; it is recorded as unreadable");
            let entry = Entry {
                content: None,
                unreadable: Some(source.to_string()),
                ..scanned
            };
            Ok((entry, false))
        }
        other => other,
    }
}

/// Turns walked entries into plans, in walk order.
struct Planner<'a> {
    walk: tokio::sync::mpsc::Receiver<Result<Entry>>,
    parent: Cursor<'static, (Vec<u8>, Entry)>,
    stored: Cursor<'a, (Vec<u8>, StoredFile)>,
    check_hash: bool,
    /// The first path of each file with hard links seen so far, by device and inode.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl Planner<'_> {
    async fn next(mut self) -> Option<(Result<Plan>, Self)> {
        let plan = match self.walk.recv().await? {
            Ok(mut entry) => match self.first_of(&entry) {
                Some(first) => {
                    entry.link = Some(first);
                    Ok(Plan::Ready(entry))
                }
                None => plan(entry, &mut self.parent, &mut self.stored, self.check_hash).await,
            },
            Err(e) => Err(e),
        };
        Some((plan, self))
    }

    /// For a later entry of a file with hard links, the first entry's path (nothing to read:
    /// the sink gives it the first one's content); the first entry of such a file is
    /// remembered.
    fn first_of(&mut self, entry: &Entry) -> Option<Vec<u8>> {
        if entry.kind != EntryKind::File || entry.nlink < 2 {
            return None;
        }
        let inode = (entry.dev, entry.ino);
        if let Some(first) = self.links.get(&inode) {
            return Some(first.clone());
        }
        self.links.insert(inode, entry.path.clone());
        None
    }
}

/// The first entries of files with hard links, as stored, for the later entries that share
/// them (bounded by the files that have links).
#[derive(Default)]
struct LinkGroups {
    first: HashMap<Vec<u8>, Entry>,
}

impl LinkGroups {
    /// Gives a later entry of a file with links the first entry's content and metadata (one
    /// inode); remembers first entries. A link to a file that could not be read is unreadable
    /// too.
    fn settle(&mut self, entry: Entry) -> Result<Entry> {
        let Some(first_path) = entry.link.clone() else {
            if entry.kind == EntryKind::File && entry.nlink > 1 {
                self.first.insert(entry.path.clone(), entry.clone());
            }
            return Ok(entry);
        };
        let first = self.first.get(&first_path).ok_or_else(|| Error::Source {
            path: PathBuf::from(String::from_utf8_lossy(&entry.path).into_owned()),
            reason: "a hard link to a file the copy has not stored".into(),
        })?;
        if let Some(reason) = &first.unreadable {
            return Ok(Entry {
                link: None,
                content: None,
                unreadable: Some(reason.clone()),
                ..entry
            });
        }
        Ok(Entry {
            path: entry.path,
            link: Some(first_path),
            ..first.clone()
        })
    }
}

/// Decides what to do with one scanned entry.
async fn plan(
    mut entry: Entry,
    parent: &mut Cursor<'_, (Vec<u8>, Entry)>,
    stored: &mut Cursor<'_, (Vec<u8>, StoredFile)>,
    check_hash: bool,
) -> Result<Plan> {
    let previous = parent.seek(&entry.path).await?;
    let stored = stored.seek(&entry.path).await?;
    if entry.kind != EntryKind::File {
        return Ok(Plan::Ready(entry));
    }
    if let Some(file) = stored.filter(|f| {
        f.size == entry.size
            && f.mtime_ns == entry.mtime_ns
            && f.ctime_ns == entry.ctime_ns
            && f.ino == entry.ino
    }) {
        return Ok(Plan::Stored(entry, file.content));
    }
    match previous {
        Some(prev) if prev.kind == EntryKind::File && prev.content.is_some() => {
            let content = prev.content.clone().expect("checked");
            if check_hash {
                entry.extents = prev.extents.clone();
                Ok(Plan::Compare(entry, content))
            } else if entry.unchanged_since(&prev) {
                entry.content = Some(content);
                entry.extents = prev.extents.clone();
                Ok(Plan::Ready(entry))
            } else {
                Ok(Plan::Store(entry))
            }
        }
        _ => Ok(Plan::Store(entry)),
    }
}

/// A forward-only cursor over a stream sorted in manifest path order.
struct Cursor<'a, T> {
    items: std::pin::Pin<Box<stream::Peekable<BoxStream<'a, Result<T>>>>>,
}

impl<'a, T: KeyedByPath> Cursor<'a, T> {
    fn new(items: BoxStream<'a, Result<T>>) -> Self {
        Self {
            items: Box::pin(items.peekable()),
        }
    }

    /// Skips items before `path`; returns the item at `path`, if any.
    async fn seek(&mut self, path: &[u8]) -> Result<Option<T::Value>> {
        loop {
            let order = match self.items.as_mut().peek().await {
                None => return Ok(None),
                Some(Err(_)) => Ordering::Less,
                Some(Ok(item)) => path_order(item.path(), path),
            };
            match order {
                Ordering::Greater => return Ok(None),
                Ordering::Less => {
                    self.items.next().await.expect("peeked")?;
                }
                Ordering::Equal => {
                    return Ok(Some(self.items.next().await.expect("peeked")?.into_value()));
                }
            }
        }
    }
}

trait KeyedByPath {
    type Value;
    fn path(&self) -> &[u8];
    fn into_value(self) -> Self::Value;
}

impl<V> KeyedByPath for (Vec<u8>, V) {
    type Value = V;
    fn path(&self) -> &[u8] {
        &self.0
    }
    fn into_value(self) -> V {
        self.1
    }
}

/// Writes manifest lines and checkpoints progress as entries finish, in order.
struct Sink {
    manifest: object_store::buffered::BufWriter,
    manifest_hash: blake3::Hasher,
    manifest_size: u64,
    line: Vec<u8>,
    totals: Totals,
    pending: Vec<StoredFile>,
    last_checkpoint: Instant,
    snapshot: SnapshotId,
    /// Files that could not be read: path and reason.
    unreadable: Vec<(String, String)>,
    /// Files with hard links.
    links: LinkGroups,
}

impl Sink {
    async fn open(job: &Job<'_>, created: &str) -> Result<Self> {
        let key = job.layout.manifest(&job.run.snapshot);
        let manifest = object_store::buffered::BufWriter::with_capacity(
            Arc::clone(job.store.objects()),
            key,
            job.options.part_size as usize,
        );
        let mut sink = Self {
            manifest,
            manifest_hash: blake3::Hasher::new(),
            manifest_size: 0,
            line: Vec::with_capacity(512),
            totals: Totals::default(),
            pending: Vec::new(),
            last_checkpoint: Instant::now(),
            snapshot: job.run.snapshot.clone(),
            unreadable: Vec::new(),
            links: LinkGroups::default(),
        };
        let header = manifest::encode_header(&Header {
            drainer_manifest: manifest::FORMAT_VERSION,
            volume: job.volume.to_string(),
            snapshot: job.run.snapshot.to_string(),
            parent: job.parent.as_ref().map(ToString::to_string),
            created: created.to_owned(),
        });
        sink.write(job, &header).await?;
        Ok(sink)
    }

    async fn write(&mut self, job: &Job<'_>, bytes: &[u8]) -> Result<()> {
        self.manifest_hash.update(bytes);
        self.manifest_size += bytes.len() as u64;
        let key = job.layout.manifest(&self.snapshot);
        job.store
            .call(
                "write manifest",
                &key,
                self.manifest
                    .write_all(bytes)
                    .map(|r| r.map_err(io_to_store)),
            )
            .await?;
        Ok(())
    }

    async fn push(&mut self, job: &Job<'_>, entry: Entry, uploaded: bool) -> Result<()> {
        let entry = self.links.settle(entry)?;
        self.line.clear();
        manifest::encode_entry(&entry, &mut self.line);
        let line = std::mem::take(&mut self.line);
        self.write(job, &line).await?;
        self.line = line;
        self.totals.add(&entry);
        if let Some(reason) = &entry.unreadable {
            let path = String::from_utf8_lossy(&entry.path).into_owned();
            self.unreadable.push((path, reason.clone()));
        }
        if entry.kind == EntryKind::File {
            job.progress.file_done(entry.size, uploaded);
        }
        // A sparse file's extents are in the manifest only: it is not recorded as stored, so
        // a resumed run stores it again (cheaply: only its data).
        if uploaded && entry.extents.is_none() {
            self.pending.push(StoredFile {
                size: entry.size,
                mtime_ns: entry.mtime_ns,
                ctime_ns: entry.ctime_ns,
                ino: entry.ino,
                content: entry.content.expect("stored files have content"),
                path: entry.path,
            });
        }
        Ok(())
    }

    /// The files to record now, if a checkpoint is due.
    fn due_checkpoint(&mut self) -> Option<Vec<StoredFile>> {
        let due = self.pending.len() >= CHECKPOINT_FILES
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL;
        if !due || self.pending.is_empty() {
            return None;
        }
        self.last_checkpoint = Instant::now();
        Some(std::mem::take(&mut self.pending))
    }

    /// Completes the manifest and the snapshot; returns its summary and the unreadable files.
    async fn finish(
        mut self,
        job: &Job<'_>,
        created: String,
    ) -> Result<(SnapshotSummary, Vec<(String, String)>)> {
        job.checkpoint(std::mem::take(&mut self.pending)).await?;
        let end = manifest::encode_end(&self.totals);
        self.write(job, &end).await?;
        let key = job.layout.manifest(&self.snapshot);
        job.store
            .call(
                "complete manifest",
                &key,
                self.manifest.shutdown().map(|r| r.map_err(io_to_store)),
            )
            .await?;
        job.store.flush().await?;
        let summary = SnapshotSummary {
            snapshot: self.snapshot.to_string(),
            volume: job.volume.to_string(),
            parent: job.parent.as_ref().map(ToString::to_string),
            created,
            completed: chrono::Utc::now().to_rfc3339(),
            entries: self.totals.entries,
            files: self.totals.files,
            bytes: self.totals.bytes,
            skipped: self.totals.skipped,
            unreadable: self.totals.unreadable,
            uploaded_files: job
                .progress
                .files_uploaded
                .load(std::sync::atomic::Ordering::Relaxed),
            uploaded_bytes: job
                .progress
                .bytes_uploaded
                .load(std::sync::atomic::Ordering::Relaxed),
            manifest_blake3: self.manifest_hash.finalize().to_hex().to_string(),
            manifest_size: self.manifest_size,
            drain: job.options.origin.clone().map(Box::new),
        };
        job.checkpoint
            .commit(job.store, &job.layout, &summary)
            .await?;
        job.checkpoint.finish(job.run, &summary).await?;
        Ok((summary, self.unreadable))
    }
}

fn io_to_store(e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "manifest",
        source: Box::new(e),
    }
}
